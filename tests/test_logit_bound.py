"""The certified logit-space bound: its Lipschitz lemma, its W against an exact solver, the inequality on held-out
data re-derived in numpy, and the paper variant's results pinned to the values main computed before the change."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

import ttjax
from ttjax import batch as bt, bound as bd, logit_bound as lb, ot, synthetic as syn
from ttjax.tasks import make_task

K, D, N = 4, 8, 400  # as the shared `tasks` fixture (conftest.py)
CFG = bd.BoundConfig(steps=150, batch_size=None, head_steps=100)


def _loss(u, b_map, t):
  return -np.log(np.maximum((b_map @ np.exp(u - u.max()) / np.exp(u - u.max()).sum())[t], 1e-12))


def test_the_loss_is_1_lipschitz_for_the_logit_range_everywhere():
  rng = np.random.default_rng(0)
  worst = 0.0
  for _ in range(3000):
    k_s, k_t = rng.integers(2, 7), rng.integers(2, 5)
    b_map = rng.dirichlet(np.full(k_t, rng.choice([0.05, 1.0])), size=k_s).T  # (K_t, K_s), sparse or spread
    scale = rng.choice([0.1, 3.0, 30.0])
    u, v = scale * rng.normal(size=k_s), scale * rng.normal(size=k_s)
    t = rng.integers(k_t)
    gap = abs(_loss(v, b_map, t) - _loss(u, b_map, t))
    rng_dist = (v - u).max() - (v - u).min()
    worst = max(worst, gap / rng_dist)
  assert worst <= 1.0 + 1e-6
  assert worst > 0.5  # the constant is not loose by orders of magnitude


def test_gradient_ascent_finds_no_point_beyond_the_certified_constant():
  # maximise <grad_u l, x> / rho(x) over u, x and the label map: the lemma says it never exceeds 1
  def ratio(args):
    u, x, logits = args
    b_map = jax.nn.softmax(logits, axis=0)
    g = jax.grad(lambda w: -jnp.log((b_map @ jax.nn.softmax(w))[0]))(u)
    return jnp.dot(g, x) / (jnp.max(x) - jnp.min(x))

  step = jax.jit(lambda args: jax.tree.map(lambda p, g: p + 0.1 * g, args, jax.grad(ratio)(args)))
  best = 0.0
  for seed in range(8):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    args = (3 * jax.random.normal(k[0], (5,)), jax.random.normal(k[1], (5,)), 3 * jax.random.normal(k[2], (3, 5)))
    for _ in range(200):
      args = step(args)
    best = max(best, float(ratio(args)))
  assert best <= 1.0 + 1e-5
  assert best > 0.8  # the search comes close to the constant: it is nearly tight


def test_logit_range_matches_its_formula():
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
  want = np.array([[np.ptp(vj - ui) for vj in v] for ui in u])
  np.testing.assert_allclose(np.asarray(ot.logit_range(jnp.asarray(u), jnp.asarray(v))), want, rtol=1e-6)


@pytest.fixture(scope="module")
def runs(tasks):
  key = jax.random.PRNGKey(2)
  return {name: bd.analyse(key, tasks["source"], tasks[name], CFG) for name in ("related", "random")}


def _numpy_bound(run):
  """The held-out bound re-derived from the learned transforms with numpy and POT's exact emd."""
  p, head, pair = run.params, run.head, run.pair
  zs, ys = np.asarray(pair.source.features, np.float64), np.asarray(pair.source.labels)
  zt, yt = np.asarray(pair.target.features, np.float64), np.asarray(pair.target.labels)
  w, c, s = np.asarray(head.W, np.float64), np.asarray(head.c, np.float64), float(np.exp(p.log_temperature))
  a_bar, b = np.asarray(p.A_bar, np.float64), np.asarray(p.b, np.float64)
  u = s * (zs @ w.T + c)
  v = s * ((zt - b) @ (w @ a_bar).T + c)
  k_s, k_t = w.shape[0], int(yt.max()) + 1
  pt = np.bincount(yt, minlength=k_t) / len(yt)
  cond = np.exp(np.asarray(p.p_logits, np.float64))
  cond /= cond.sum(1, keepdims=True)
  joint = pt[:, None] * cond
  prior = joint.sum(0)
  b_map = joint / prior
  n_s = np.bincount(ys, minlength=k_s)
  log_p = u - u.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  source_loss = np.sum(prior[ys] / n_s[ys] * -log_p[np.arange(len(ys)), ys])
  entropy = -np.sum(prior * np.sum(b_map * np.log(b_map), 0))
  w_exact = 0.0
  for t in range(k_t):
    a = cond[t, ys] / n_s[ys]
    vt = v[yt == t]
    cost = np.array([[np.ptp(vj - ui) for vj in vt] for ui in u])
    w_exact += pt[t] * pot.emd2(a / a.sum(), np.full(len(vt), 1.0 / len(vt)), cost)
  probs = np.exp(v - v.max(1, keepdims=True))
  probs = (probs / probs.sum(1, keepdims=True)) @ b_map.T
  target_loss = np.mean(-np.log(np.maximum(probs[np.arange(len(yt)), yt], 1e-12)))
  # E_{T'} l: source point i carries label t with mass D_{y_i} B_{t y_i} / n_{y_i}
  probs_s = np.exp(log_p) @ b_map.T
  weight = (prior[ys] / n_s[ys])[:, None] * b_map.T[ys]
  transformed = np.sum(weight * -np.log(np.maximum(probs_s, 1e-12)))
  return dict(source_loss=source_loss, entropy=entropy, w_exact=w_exact, target_loss=target_loss,
              transformed=transformed, prior=prior, b_map=b_map, pt=pt)


@pytest.mark.parametrize("name", ["related", "random"])
def test_held_out_bound_is_a_certificate_rederived_in_numpy(runs, name):
  run = runs[name]
  r, ref = run.result, _numpy_bound(run)
  assert r.split == "held-out" and r.certified and r.tau_hat == 1.0 and r.space == "logit"
  assert r.n_source_eval + r.n_source_fit == N and r.n_target_eval + r.n_target_fit == N
  np.testing.assert_allclose(r.source_loss, ref["source_loss"], rtol=1e-4)
  np.testing.assert_allclose(r.entropy, ref["entropy"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(r.target_loss, ref["target_loss"], rtol=1e-4)
  # the reported W is a feasible coupling's cost: >= the exact OT value, and close to it
  assert r.wasserstein >= ref["w_exact"] - 1e-5
  assert r.wasserstein <= ref["w_exact"] * 1.02 + 1e-3
  # the chain of inequalities, on the held-out split: loss <= E_T' l + W_exact <= reported bound, and
  # E_T' l <= L + H (the paper's first term; the gap is the label-merging gain)
  np.testing.assert_allclose(r.transformed_source_loss, ref["transformed"], rtol=1e-4)
  assert ref["target_loss"] <= ref["transformed"] + ref["w_exact"] + 1e-6
  assert ref["transformed"] <= ref["source_loss"] + ref["entropy"] + 1e-6
  assert r.bound >= r.target_loss
  np.testing.assert_allclose(r.merge_gain, r.source_loss + r.entropy - r.transformed_source_loss, atol=1e-6)
  np.testing.assert_allclose(r.bound, r.transformed_source_loss + r.wasserstein, rtol=1e-6)
  # exact label marginals on the evaluation split: no label mismatch to pay for
  np.testing.assert_allclose(np.asarray(r.B) @ np.asarray(r.D), ref["pt"], atol=1e-6)
  assert r.label_mismatch == 0.0


def test_related_target_gets_a_low_bound_random_labels_a_high_one(runs):
  rel, rnd = runs["related"].result, runs["random"].result
  assert rel.bound < np.log(K) < rnd.bound
  assert rel.target_accuracy > 0.9 and rnd.target_accuracy < 0.45
  b_map = np.asarray(rel.B)
  assert sorted(np.argmax(b_map, 0)) == list(range(K))  # a permutation is recovered


def test_explicit_test_splits_are_used_and_standardised_with_train_statistics(tasks):
  zs, ys = syn.clustered(jax.random.PRNGKey(3), 300, D, K, separation=6.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(4), zs, ys, K, shift=1.0)
  cfg = CFG.replace(steps=20)
  run = ttjax.tta(zs[:200], ys[:200], zt[:200], yt[:200], config=cfg, source_test=(zs[200:], ys[200:]),
                  target_test=(zt[200:] + 100.0, yt[200:]))
  r = run.result
  assert (r.n_source_fit, r.n_target_fit, r.n_source_eval, r.n_target_eval) == (200, 200, 100, 100)
  # the shifted test split is standardised with the training split's mean: it stays far away
  assert float(np.mean(np.asarray(run.pair.target.features))) > 10.0


def test_holdout_refuses_a_class_with_one_sample():
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 60, D, 3)
  ys = np.asarray(ys).copy()
  ys[ys == 2] = 0
  ys[0] = 2  # class 2 has a single sample
  with pytest.raises(ValueError, match="class 2 has 1 sample"):
    ttjax.tta(zs, ys, zs, ys, config=CFG.replace(steps=2))


# Fixed-seed results of the paper's feature-space bound (space="feature", holdout=0) computed on main before the
# logit-space default was added (commit e13134e): single, batched and large paths must reproduce them. They were
# computed on one CPU; XLA's CPU kernels round differently on another CPU type, and 60 Adam + Sinkhorn steps
# amplify that (measured on a second machine: 0.8% on the entropy, 0.1% on W; the shifted statistics of
# tasks.standardize moved the small entropy term by another 1e-3), hence rtol 1e-2 / atol 2e-3, not bit equality.
PINNED = {"single": [2.4084142942203925, 0.3706986904144287, 0.08644083142280579, 2.198535919189453,
                     0.8875337243080139, 0.7358611822128296],
          "batch": [[2.429118775959523, 2.200375556945801, 0.903566837310791],
                    [2.431741594463631, 2.198056936264038, 0.9048278331756592]],
          "large": [2.461591380637117, 2.2003159523010254, 0.9197567701339722]}


def test_feature_space_results_are_unchanged_from_before_the_refactor():
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 240, 8, 4, separation=6.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, 4, shift=1.0)
  s, t = make_task(zs, ys, name="s"), make_task(zt, yt, name="t")
  cfg = bd.BoundConfig(steps=60, batch_size=64, head_steps=60, eval_iters=500, space="feature", holdout=0.0)
  r = bd.analyse(jax.random.PRNGKey(3), s, t, cfg).result
  assert r.lipschitz == "measured" and r.split == "in-sample"
  got = [r.bound, r.source_loss, r.entropy, r.wasserstein, r.tau_hat, r.target_loss]
  np.testing.assert_allclose(got, PINNED["single"], rtol=1e-2, atol=2e-3)
  rb = bt.bound_batch(jax.random.PRNGKey(4), [s, s], [t, t], cfg)
  np.testing.assert_allclose([[x.bound, x.wasserstein, x.tau_hat] for x in rb], PINNED["batch"], rtol=1e-2)
  rl = bd.analyse(jax.random.PRNGKey(5), s, t, cfg.replace(block_size=64)).result
  np.testing.assert_allclose([rl.bound, rl.wasserstein, rl.tau_hat], PINNED["large"], rtol=1e-2)


def test_batch_runs_the_logit_bound_through_the_per_pair_pipeline(tasks):
  cfg = CFG.replace(steps=20)
  key = jax.random.PRNGKey(7)
  keys = jax.random.split(key, 2)
  batch = bt.bound_batch(key, [tasks["source"]] * 2, [tasks["related"], tasks["random"]], cfg)
  single = [bd.analyse(keys[i], tasks["source"], t, cfg).result for i, t in enumerate([tasks["related"],
                                                                                        tasks["random"]])]
  np.testing.assert_allclose([r.bound for r in batch], [r.bound for r in single], rtol=1e-6)


def test_the_blocked_solver_certifies_the_default_bound_too(tasks, runs):
  """Large tasks are a choice of W solver: the logit-space bound with the block partition equals the dense one
  with one block per class, and stays a certificate (>= the dense W) with small blocks."""
  run = runs["related"]
  dense = run.result
  whole = bd.evaluate(run.params, run.pair, run.head, CFG.replace(batch_size=64, block_size=10_000))
  assert whole.bound == pytest.approx(dense.bound, rel=1e-4)
  small = bd.evaluate(run.params, run.pair, run.head, CFG.replace(batch_size=64, block_size=32))
  assert small.wasserstein >= dense.wasserstein * (1 - 1e-4) and small.bound >= small.target_loss
  assert small.source_loss == dense.source_loss and small.merge_gain == pytest.approx(dense.merge_gain)
  with pytest.raises(ValueError, match="batch_size"):
    CFG.replace(block_size=64)  # full-batch training would build the n_s x n_t matrices the solver avoids


def test_the_bound_does_not_grow_with_nuisance_feature_dimensions():
  """The same task seen by a wider encoder (8 informative dimensions + 120 of pure noise): the certified bound
  moves little, the paper's feature-space estimate (W in R^d, tau_hat measured) grows several-fold."""
  zs, ys = syn.clustered(jax.random.PRNGKey(0), N, D, K, separation=5.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, K, shift=0.5, noise=0.5, rotate=False)
  rng = np.random.default_rng(0)
  wide = lambda z: np.concatenate([np.asarray(z), rng.normal(size=(z.shape[0], 120))], 1)
  cfg = CFG.replace(steps=100)
  run = lambda a, b, **kw: ttjax.tta(a, ys, b, yt, key=jax.random.PRNGKey(0), config=cfg.replace(**kw)).result
  narrow, broad = run(zs, zt), run(wide(zs), wide(zt))
  assert broad.bound >= broad.target_loss and narrow.bound >= narrow.target_loss
  assert broad.bound <= narrow.bound + 0.5, (narrow.bound, broad.bound)
  est_narrow, est_broad = run(zs, zt, space="feature"), run(wide(zs), wide(zt), space="feature")
  assert est_broad.bound > 2.0 * est_narrow.bound, (est_narrow.bound, est_broad.bound)
  assert broad.bound < est_broad.bound


def test_logit_range_gradient_matches_autodiff_of_its_formula():
  rng = np.random.default_rng(2)
  u, v, w = (jnp.asarray(rng.normal(size=s)) for s in ((6, 4), (5, 4), (6, 5)))
  formula = lambda u, v: jnp.max(v[None] - u[:, None], -1) - jnp.min(v[None] - u[:, None], -1)
  ours = jax.grad(lambda u, v: jnp.sum(w * ot.logit_range(u, v)), argnums=(0, 1))(u, v)
  ref = jax.grad(lambda u, v: jnp.sum(w * formula(u, v)), argnums=(0, 1))(u, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
  # batched as the terms use it (vmap over target classes)
  vb = jnp.stack([v, 2 * v])
  got = jax.grad(lambda vb: jnp.sum(jax.vmap(lambda x: ot.logit_range(u, x))(vb)))(vb)
  want = jax.grad(lambda vb: jnp.sum(jax.vmap(lambda x: formula(u, x))(vb)))(vb)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_the_bound_is_invariant_to_a_global_rescaling_of_the_features(tasks, scale):
  zs, ys = np.asarray(tasks["source"].features), np.asarray(tasks["source"].labels)
  zt, yt = np.asarray(tasks["related"].features), np.asarray(tasks["related"].labels)
  cfg = CFG.replace(steps=20)
  run = lambda a, b: ttjax.tta(a, ys, b, yt, key=jax.random.PRNGKey(0), config=cfg).result
  base, scaled = run(zs, zt), run(scale * zs, scale * zt)
  for name in ("bound", "source_loss", "entropy", "wasserstein", "target_loss"):
    assert getattr(scaled, name) == pytest.approx(getattr(base, name), rel=2e-3, abs=2e-4), name


class _CompileCounter:
  """Counts XLA backend compilations (jax's own monitoring event) while active."""

  def __enter__(self):
    self.count = 0
    self._listener = lambda event, *args, **kw: setattr(self, "count", self.count + (
        event == "/jax/core/compile/backend_compile_duration"))
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)


def test_a_sweep_over_learning_rates_lambdas_epsilons_and_tau_compiles_once(tasks):
  """The config's numbers are traced (only the program-shaping fields are static): after the first run, runs that
  change only learning rates, lambda's, epsilons or tau compile nothing, yet their results move."""
  source, target = tasks["source"], tasks["related"]
  for base, sweep in (
      (CFG.replace(steps=30, eval_iters=500),
       [dict(lr_features=3e-2), dict(lr_label_map=0.3, lr_prior=0.01), dict(lambda_map=0.5), dict(epsilon=0.1),
        dict(eval_epsilon=0.01)]),
      (bd.BoundConfig(space="feature", holdout=0.0, steps=30, batch_size=None, head_steps=30, eval_iters=500),
       [dict(tau=0.3), dict(lambda_pm=3.0, lambda_ic=0.3), dict(lambda_w=2.0), dict(label_cost=9.0),
        dict(head_penalty=1.0, head_lr=0.1)]),
  ):
    key = jax.random.PRNGKey(0)
    first = bd.analyse(key, source, target, base).result
    bounds = {first.bound}
    with _CompileCounter() as counter:
      for change in sweep:
        bounds.add(bd.analyse(key, source, target, base.replace(**change)).result.bound)
    assert counter.count == 0, f"{base.space} space: {counter.count} compilations in a numbers-only sweep"
    assert len(bounds) == len(sweep) + 1  # every change took effect
    with _CompileCounter() as counter:  # a program-shaping field does recompile (the counter works)
      bd.analyse(key, source, target, base.replace(steps=31))
    assert counter.count > 0


def test_transport_classes_surrogate_prices_every_label_map_entry(tasks):
  """The cheap training W (``transport_classes=k``): equal to the full term when k covers every source class; with
  k < K_s close to it, and every entry of P(s | t) still gets a gradient (the other classes' mass moves from their
  class-mean logits); on a full batch (not class-major) the exact term runs."""
  from ttjax.sampling import full_batch, make_pair, sample_batch
  pair = make_pair(tasks["source"], tasks["related"])
  _, head, params, _ = bd.prepare(jax.random.PRNGKey(0), tasks["source"], tasks["related"], CFG)
  noise = jax.random.normal(jax.random.PRNGKey(1), params.p_logits.shape)
  params = dataclasses.replace(params, p_logits=params.p_logits + noise)  # a spread label map
  batch = sample_batch(jax.random.PRNGKey(2), pair, 30, 30)
  term = lambda **kw: lb.wasserstein(epsilon=0.01, num_iters=300, **kw)
  full = float(term()(params, batch, head))
  np.testing.assert_allclose(float(term(transport_classes=K)(params, batch, head)), full, rtol=1e-6)
  cheap = term(transport_classes=1)
  assert abs(float(cheap(params, batch, head)) - full) < 0.5 * full
  grad = np.asarray(jax.grad(lambda p: cheap(p, batch, head))(params).p_logits)
  assert np.all(np.abs(grad) > 0)
  whole = full_batch(pair)
  np.testing.assert_allclose(float(cheap(params, whole, head)), float(term()(params, whole, head)))
