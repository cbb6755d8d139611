"""Batch evaluation: many pairs in one program equal the single runs; padding; sharding over 8 (fake) devices."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ttjax import batch as bt, bound as bd, head as hd, synthetic as syn
from ttjax.sampling import make_pair, sample_batch
from ttjax.tasks import make_task

D = 6
CFG = bd.BoundConfig(steps=40, batch_size=48, head_steps=40, eval_iters=400, space="feature", holdout=0.0)


def _task(seed, n, k, separation=5.0):
  prior = np.linspace(1.0, 2.0, k)  # unbalanced on purpose: with exactly balanced classes the head's bias gradient
  # is 0 up to float noise, which Adam normalises to +-lr -- any reassociation then shows (in the unpadded run too)
  z, y = syn.clustered(jax.random.PRNGKey(seed), n, D, k, separation=separation, prior=prior / prior.sum())
  return make_task(z, y)


def _close(batch_results, single_results, rtol, fields=("bound", "wasserstein", "tau_hat", "source_loss",
                                                        "entropy", "target_loss", "target_accuracy")):
  for rb, rs in zip(batch_results, single_results):
    for f in fields:
      np.testing.assert_allclose(getattr(rb, f), getattr(rs, f), rtol=rtol, atol=rtol * 1e-2, err_msg=f)


@pytest.fixture(scope="module")
def zoo():
  """One target against three 'encoders' (equal shapes), and ragged pairs (n and K differ)."""
  target = _task(10, 120, 4)
  sources = [_task(s, n, 4, separation=sep) for s, n, sep in ((1, 150, 6.0), (2, 150, 3.0), (3, 100, 1.0))]
  ragged_s = [_task(4, 150, 4), _task(5, 100, 3), _task(6, 130, 5)]
  ragged_t = [_task(7, 120, 4), _task(8, 90, 5), _task(9, 60, 3)]
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  return dict(target=target, sources=sources, ragged_s=ragged_s, ragged_t=ragged_t, keys=keys)


def test_zoo_matches_single_runs(zoo):
  # two sources of equal shapes and one with fewer points (padded): the minibatch shapes are the same (same K,
  # batch_size), so nothing in training is padded and every pair equals its single run to float precision
  batch = bt.analyse_batch(zoo["keys"], zoo["sources"], zoo["target"], CFG)
  single = [bd.analyse(k, s, zoo["target"], CFG) for k, s in zip(zoo["keys"], zoo["sources"])]
  # The vmapped and the single programs are compiled differently (fusion, summation order); Adam slowly amplifies
  # that float noise. Measured (2026-11-22): bounds within 1e-4..1e-3 of the single runs.
  _close([a.result for a in batch], [a.result for a in single], rtol=3e-3,
         fields=("bound", "wasserstein", "source_loss", "target_loss"))
  _close([a.result for a in batch], [a.result for a in single], rtol=2e-2, fields=("entropy", "tau_hat", "target_accuracy"))
  for a, b in zip(batch, single):
    np.testing.assert_allclose(np.asarray(a.params.B), np.asarray(b.params.B), atol=1e-2)
    np.testing.assert_allclose(np.asarray(a.head.W), np.asarray(b.head.W), atol=1e-4)
    # the same objective step by step until float noise, amplified by Adam, shows (measured: after 6-15 steps)
    np.testing.assert_allclose(a.history["objective"][:5], b.history["objective"][:5], rtol=1e-5)
  # a better-separated source transfers better: the zoo's bounds are ordered
  bounds = [a.result.bound for a in batch]
  assert bounds[0] < bounds[2]


def test_padded_sampler_and_head_reproduce_the_unpadded_draws(zoo):
  pairs = list(zip(zoo["ragged_s"], zoo["ragged_t"]))[1:]
  stacked = bt.stack_pairs(pairs, CFG.batch_size)
  key = jax.random.PRNGKey(5)
  for i, (s, t) in enumerate(pairs):
    pp = jax.tree.map(lambda x: x[i], stacked)
    ref = sample_batch(key, make_pair(s, t), int(pp.m_s), int(pp.m_t))
    got = pp.draw_batch(key)
    m_s, m_t, ks, kt = int(pp.m_s), int(pp.m_t), s.num_classes, t.num_classes
    zs = np.asarray(got.zs).reshape(-1, pp.m_s_max, D)[:ks, :m_s].reshape(-1, D)
    np.testing.assert_array_equal(zs, np.asarray(ref.zs))
    np.testing.assert_array_equal(np.asarray(got.zt)[:kt, :m_t], np.asarray(ref.zt))
    assert float(np.asarray(got.ws).sum()) == pytest.approx(ks) and float(np.asarray(got.wt).sum()) == pytest.approx(kt)
    head = hd.fit_head(key, s.features, s.labels, s.num_classes, steps=25)
    padded = jax.jit(lambda k, p: bt.fit_head_padded(k, p, tau=1.0, penalty=10.0, steps=25, learning_rate=0.05))(
        key, pp)
    np.testing.assert_allclose(np.asarray(padded.W)[:s.num_classes], np.asarray(head.W), atol=2e-5)
    assert np.all(np.asarray(padded.c)[s.num_classes:] < -1e8)


def test_padding_is_exact_without_training(zoo):
  # fixed_all: nothing learned, so the head (padding-exact draws) and the certified evaluation (epsilon from the
  # pair's own block of each cost matrix) are all there is: padded = unpadded to float precision
  cfg = CFG.replace(setting="fixed_all")
  batch = bt.bound_batch(zoo["keys"], zoo["ragged_s"], zoo["ragged_t"], cfg, chunk=2)  # lax.map, 2 pairs a block
  single = [bd.analyse(k, s, t, cfg).result for k, s, t in zip(zoo["keys"], zoo["ragged_s"], zoo["ragged_t"])]
  _close(batch, single, rtol=1e-4)
  assert [r.num_source_classes for r in batch] == [4, 3, 5] and np.asarray(batch[1].B).shape == (5, 3)


@pytest.mark.slow
def test_padding_with_training_matches_single_runs(zoo):
  # Ragged pairs (different K_s, K_t) are padded in training too. The padded objective is exact: the first steps'
  # objective equals the single runs' to float precision (zero-weight atoms change neither the cost reduction nor
  # epsilon of a fixed-iteration Sinkhorn; the smoothed label-split ramp keeps float noise at B D = p_T from
  # flipping the first gradient). What remains is summation-order noise, slowly amplified by Adam: perturbing a
  # single run's source features by 1e-6 (relative) moves its final bound by up to ~0.15% on these pairs.
  batch = bt.analyse_batch(zoo["keys"], zoo["ragged_s"], zoo["ragged_t"], CFG)
  single = [bd.analyse(k, s, t, CFG) for k, s, t in zip(zoo["keys"], zoo["ragged_s"], zoo["ragged_t"])]
  for a, b in zip(batch, single):
    np.testing.assert_allclose(a.history["objective"][:3], b.history["objective"][:3], rtol=1e-4)
  _close([a.result for a in batch], [b.result for b in single], rtol=1e-2,
         fields=("bound", "wasserstein", "source_loss", "entropy"))
  for a in batch:
    r = a.result
    assert np.isfinite(r.bound) and r.bound >= r.target_loss
    np.testing.assert_allclose(np.sum(r.B, 0), 1.0, atol=1e-5)  # no mass leaked to padded target classes


_SHARDED = textwrap.dedent("""
    import json, jax, numpy as np
    from ttjax import batch as bt, bound as bd, synthetic as syn
    from ttjax.tasks import make_task
    assert len(jax.devices()) == 8, jax.devices()
    def task(seed, n, k):
      p = np.linspace(1.0, 2.0, k)
      z, y = syn.clustered(jax.random.PRNGKey(seed), n, 6, k, separation=5.0, prior=p / p.sum())
      return make_task(z, y)
    cfg = bd.BoundConfig(steps=20, batch_size=32, head_steps=20, eval_iters=200, space="feature", holdout=0.0)
    src = [task(s, 80 + 10 * s, 3 + s % 2) for s in range(5)]
    tgt = [task(20 + s, 70, 3) for s in range(5)]
    key = jax.random.PRNGKey(0)
    many = bt.bound_batch(key, src, tgt, cfg)                           # 5 pairs padded to 8, one per device
    one = bt.bound_batch(key, src, tgt, cfg, devices=jax.devices()[:1])
    mesh = bt.pair_mesh()
    print(json.dumps(dict(many=[r.bound for r in many], one=[r.bound for r in one], mesh=int(mesh.devices.size))))
""")


def test_sharded_over_eight_devices_equals_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",  # opt level 0: tiny programs compile faster, in both runs
             XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-3000:]
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["mesh"] == 8
  np.testing.assert_allclose(res["many"], res["one"], rtol=1e-5)


def test_centroid_label_maps_equal_the_single_calls(zoo):
  # one compiled program per (K_s, K_t, d) group, equal to transforms.centroid_label_map up to float rounding
  # (bit-equal for the zoo's group; ~1e-7 for a one-pair group, compiled differently)
  from ttjax import transforms as tf
  pairs = list(zip(zoo["ragged_s"], zoo["ragged_t"])) + [(s, zoo["target"]) for s in zoo["sources"]]
  got = bt.centroid_label_maps(pairs)
  for (s, t), b in zip(pairs, got):
    want = tf.centroid_label_map(s.features, s.labels, t.features, t.labels, s.num_classes, t.num_classes)
    assert b.shape == (t.num_classes, s.num_classes)
    np.testing.assert_allclose(b, want, rtol=1e-5, atol=1e-7)


def _encoder_zoo(dims=(6, 9, 13), n_s=120, n_t=100, seed=0):
  """One (source, target) task pair seen through encoders of different widths: the zoo's case (same rows)."""
  rng = np.random.default_rng(seed)
  y_s = np.concatenate([np.arange(4), rng.integers(0, 4, n_s - 4)])
  y_t = np.concatenate([np.arange(3), rng.integers(0, 3, n_t - 3)])
  out = []
  for d in dims:
    c_s, c_t = 3.0 * rng.normal(size=(4, d)), 3.0 * rng.normal(size=(3, d))
    out.append((make_task(c_s[y_s] + rng.normal(size=(n_s, d)), y_s),
                make_task(c_t[y_t] + rng.normal(size=(n_t, d)), y_t)))
  return out


def test_default_certified_bound_of_a_zoo_is_one_batched_program_equal_to_the_single_runs():
  """The default (logit space, held out): encoders of different widths are zero-padded to the widest (exact) and
  fitted / certified as one group; every result equals ``analyse`` of the same key."""
  pairs = _encoder_zoo()
  cfg = bd.BoundConfig(steps=40, batch_size=None, head_steps=50, eval_iters=500)
  keys = jax.random.split(jax.random.PRNGKey(0), len(pairs))
  batch = bt.analyse_batch(keys, [s for s, _ in pairs], [t for _, t in pairs], cfg)
  single = [bd.analyse(keys[i], *pairs[i], cfg) for i in range(len(pairs))]
  _close([a.result for a in batch], [a.result for a in single], rtol=1e-4)
  for a, b in zip(batch, single):
    assert a.result.split == "held-out" and a.result.certified
    assert a.params.A_bar.shape == b.params.A_bar.shape  # unpadded
    np.testing.assert_allclose(np.asarray(a.params.A_bar), np.asarray(b.params.A_bar), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.result.B), np.asarray(b.result.B), atol=1e-5)
