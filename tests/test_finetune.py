"""ttjax.finetune: accuracy on easy/impossible problems, sklearn parity, vmap sweep == single runs, early stopping,
determinism, the validation split, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttjax import finetune as ft
from ttjax.tasks import Task, make_task


def _blobs(seed: int, n: int, d: int, k: int, sep: float):
  """Gaussian clusters: class means ``sep * N(0, I_d)``, unit isotropic noise; balanced-ish random labels."""
  rng = np.random.default_rng(seed)
  mu = rng.normal(size=(k, d)) * sep
  y = rng.integers(0, k, n)
  y[:k] = np.arange(k)  # every class present
  return (mu[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _split(x, y, n_train):
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_separable_clusters_reach_full_accuracy():
  x, y = _blobs(0, 500, 10, 3, sep=4.0)
  r = ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), steps=200)
  assert r.test_accuracy >= 0.99 and r.train_accuracy >= 0.99
  assert r.test_loss < 0.1
  assert r.weights.shape == (3, 10) and r.bias.shape == (3,)
  assert r.sweep_val_loss.shape == (3, 3) and r.val_curve.shape == (200,)
  assert r.val_loss == pytest.approx(float(np.min(r.sweep_val_loss)))
  assert (r.lr, r.wd) in {(a, b) for a in ft.DEFAULT_LRS for b in ft.DEFAULT_WDS}
  # Minibatch mode learns the same easy problem.
  rb = ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), steps=200, batch_size=32, lrs=(1e-2,),
                          wds=(1e-2,))
  assert rb.test_accuracy >= 0.99


def test_random_labels_are_at_chance():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1200, 20)).astype(np.float32)
  y = rng.integers(0, 4, 1200)
  r = ft.finetune_arrays(jax.random.key(1), *_split(x, y, 800), steps=200)
  assert abs(r.test_accuracy - 0.25) < 0.07
  assert r.test_loss > np.log(4) - 0.05  # no better than the uniform predictor, up to noise


def test_matches_sklearn_logistic_regression():
  from sklearn.linear_model import LogisticRegression
  x, y = _blobs(2, 1400, 20, 4, sep=0.35)
  xtr, ytr, xte, yte = _split(x, y, 800)
  r = ft.finetune_arrays(jax.random.key(2), xtr, ytr, xte, yte, steps=300)
  mean, std = xtr.mean(0), xtr.std(0)
  clf = LogisticRegression(C=1.0, max_iter=5000).fit((xtr - mean) / std, ytr)
  sk = clf.score((xte - mean) / std, yte)
  assert 0.45 < sk < 0.9  # a mid-difficulty problem
  assert abs(r.test_accuracy - sk) < 0.04, (r.test_accuracy, sk)


def test_vmap_sweep_equals_single_runs():
  x, y = _blobs(3, 260, 12, 3, sep=0.5)
  lrs, wds = (1e-3, 1e-2, 1e-1), (1e-4, 1e-2, 1.0)
  train = make_task(x[:180], y[:180])
  test = make_task(x[180:], y[180:])
  key = jax.random.key(3)
  r = ft.finetune(key, train, test, steps=120, lrs=lrs, wds=wds)
  # Public path: a one-member grid per (lr, wd) reproduces the sweep entry.
  for i, j in [(0, 0), (1, 2), (2, 1), (2, 2)]:
    one = ft.finetune(key, train, test, steps=120, lrs=(lrs[i],), wds=(wds[j],))
    assert one.val_loss == pytest.approx(float(r.sweep_val_loss[i, j]), abs=1e-5)
    assert one.best_step == r.sweep_best_step[i, j]
  sel = ft.finetune(key, train, test, steps=120, lrs=(r.lr,), wds=(r.wd,))
  for name in ("test_accuracy", "test_loss", "val_loss", "train_accuracy", "train_loss"):
    assert getattr(sel, name) == pytest.approx(getattr(r, name), abs=1e-5), name
  np.testing.assert_allclose(sel.weights, r.weights, atol=1e-5)
  np.testing.assert_allclose(sel.val_curve, r.val_curve, atol=1e-5)

  # train_head directly: vmap over the whole grid vs each member alone, minibatch mode, every leaf to 1e-5.
  zf, yf, zv, yv = (jnp.asarray(a) for a in (x[:120], y[:120], x[120:180], y[120:180]))
  kw = dict(z_fit=zf, y_fit=yf, z_val=zv, y_val=yv, num_classes=3, steps=60, batch_size=32, eval_every=3)
  lg, wg = (jnp.asarray(g.reshape(-1), jnp.float32) for g in np.meshgrid(lrs, wds, indexing="ij"))
  runs = jax.jit(jax.vmap(functools.partial(ft.train_head, key, **kw)))(lg, wg)
  single = jax.jit(functools.partial(ft.train_head, **kw))
  for s in range(lg.shape[0]):
    alone = single(key, lg[s], wg[s])
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(runs)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b[s]), atol=1e-5)


def test_early_stopping_keeps_best_validation_head():
  # Tiny n, large d, weak signal, no weight decay: the head overfits, validation loss turns up.
  x, y = _blobs(4, 260, 150, 2, sep=0.15)
  key = jax.random.key(4)
  kw = dict(lrs=(1e-2,), wds=(0.0,))
  r = ft.finetune_arrays(key, x[:60], y[:60], x[60:], y[60:], steps=200, **kw)
  curve = r.val_curve
  assert 0 < r.best_step < 200
  assert r.val_loss == pytest.approx(float(curve[r.best_step - 1]), abs=1e-6)
  assert r.val_loss <= float(curve.min()) + 1e-7
  assert curve[-1] > r.val_loss + 0.1  # it matters: the last head is much worse on validation
  assert r.train_accuracy == 1.0
  # The returned head is the one after best_step steps: training exactly that long gives the same head.
  short = ft.finetune_arrays(key, x[:60], y[:60], x[60:], y[60:], steps=r.best_step, **kw)
  np.testing.assert_allclose(short.weights, r.weights, atol=1e-5)
  assert short.test_loss == pytest.approx(r.test_loss, abs=1e-5)
  # A coarser validation period stops on a multiple of it.
  coarse = ft.finetune_arrays(key, x[:60], y[:60], x[60:], y[60:], steps=200, eval_every=10, **kw)
  assert coarse.best_step % 10 == 0 and coarse.val_curve.shape == (20,)


def test_same_key_same_result_and_split():
  x, y = _blobs(5, 300, 8, 3, sep=0.6)
  args = _split(x, y, 200)
  a = ft.finetune_arrays(jax.random.key(7), *args, steps=50, batch_size=40)
  b = ft.finetune_arrays(jax.random.key(7), *args, steps=50, batch_size=40)
  c = ft.finetune_arrays(jax.random.key(8), *args, steps=50, batch_size=40)
  assert a.test_loss == b.test_loss and a.val_loss == b.val_loss and a.lr == b.lr and a.wd == b.wd
  np.testing.assert_array_equal(a.weights, b.weights)
  assert not np.array_equal(a.weights, c.weights)

  fit, val = ft.split_train_val(jax.random.key(0), y[:200], 0.25)
  assert np.array_equal(np.sort(np.concatenate([fit, val])), np.arange(200))
  counts, vcounts = np.bincount(y[:200]), np.bincount(y[val], minlength=3)
  np.testing.assert_array_equal(vcounts, np.floor(0.25 * counts + 0.5))  # stratified
  # Tiny classes keep a fitting sample.
  fit, val = ft.split_train_val(jax.random.key(0), np.array([0, 0, 1, 2, 2, 2]), 0.5)
  assert set(np.array([0, 0, 1, 2, 2, 2])[fit]) == {0, 1, 2} and val.size >= 1


def test_bad_input_raises():
  x, y = _blobs(6, 60, 5, 2, sep=1.0)
  train, test = make_task(x[:40], y[:40]), make_task(x[40:], y[40:])
  key = jax.random.key(0)
  cases = [
      (lambda: ft.finetune(key, (x, y), test), "Task"),
      (lambda: ft.finetune(key, train, make_task(x[40:, :4], y[40:])), "dimension"),
      (lambda: ft.finetune(key, train, Task(test.features, test.labels + 5, 7)), "classes"),
      (lambda: ft.finetune(key, train, test, lrs=()), "empty"),
      (lambda: ft.finetune(key, train, test, lrs=(-1.0,)), "positive"),
      (lambda: ft.finetune(key, train, test, wds=(float("nan"),)), "non-negative"),
      (lambda: ft.finetune(key, train, test, val_fraction=1.0), "val_fraction"),
      (lambda: ft.finetune(key, train, test, steps=0), "steps"),
      (lambda: ft.finetune(key, train, test, steps=10, eval_every=3), "eval_every"),
      (lambda: ft.finetune(key, train, test, batch_size=0), "batch_size"),
      (lambda: ft.finetune_arrays(key, np.where(np.eye(40, 5) > 0, np.nan, x[:40]), y[:40], x[40:], y[40:]),
       "NaN"),
      (lambda: ft.finetune_arrays(key, x[:40], y[:39], x[40:], y[40:]), "labels"),
      (lambda: ft.finetune_arrays(key, x[:40], y[:40], x[40:], y[40:] + 2), "out of range"),
      (lambda: ft.finetune_arrays(key, x[:40], np.zeros(40, int), x[40:], y[40:]), "one-class"),
      (lambda: ft.finetune_arrays(key, x[:2], np.array([0, 1]), x[40:], y[40:]), "single sample"),
  ]
  for fn, match in cases:
    with pytest.raises(ValueError, match=match):
      fn()


def test_lbfgs_head_is_the_l2_logistic_regression_optimum():
  """``method="lbfgs"``, one L2 strength: the head equals scikit-learn's L2 logistic regression (an independent
  solver of the same convex problem: ``C = 1 / (n_fit * wd)`` for ``mean CE + wd/2 ||W||^2``, bias unpenalised)."""
  from sklearn.linear_model import LogisticRegression
  x, y = _blobs(3, 300, 6, 3, sep=0.6)
  x = (x - x.mean(0)) / x.std(0)
  wd = 1e-2
  run = ft.train_head(jax.random.key(0), 0.0, wd, jnp.asarray(x), jnp.asarray(y), jnp.asarray(x[:30]),
                      jnp.asarray(y[:30]), num_classes=3, steps=200, eval_every=200, method="lbfgs")
  # eval_every = steps: the kept head is the last one (the only validation check), i.e. the optimum
  clf = LogisticRegression(C=1.0 / (x.shape[0] * wd), tol=1e-10, max_iter=10000).fit(x, y)
  ours = np.asarray(x @ np.asarray(run.params["w"]).T + np.asarray(run.params["c"]))
  theirs = clf.decision_function(x)
  centre = lambda a: a - a.mean(1, keepdims=True)  # softmax logits are defined up to a per-row constant
  np.testing.assert_allclose(centre(ours), centre(theirs), atol=2e-3)


def test_lbfgs_sweep_equals_its_members_trained_one_at_a_time():
  """The L-BFGS sweep (a loop over the L2 strengths inside one program) keeps, per strength, exactly the head that
  strength trains alone, and selects the member with the lowest validation loss."""
  x, y = _blobs(5, 400, 8, 3, sep=0.5)
  wds = (1e-4, 1e-2, 1.0)
  sweep = ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), steps=40, method="lbfgs", wds=wds,
                             standardise=False)
  # the validation split finetune draws from its key (its first split)
  fit_idx, val_idx = ft.split_train_val(jax.random.split(jax.random.key(0))[0], y[:300], 0.2)
  zf, yf, zv, yv = (jnp.asarray(a) for a in (x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]))
  train = jax.jit(lambda wd: ft.train_head(jax.random.key(1), 0.0, wd, zf, yf, zv, yv, num_classes=3, steps=40,
                                          method="lbfgs"))
  alone = [train(jnp.float32(wd)) for wd in wds]
  np.testing.assert_allclose(sweep.sweep_val_loss[0], [float(r.best_val_loss) for r in alone], rtol=1e-5)
  np.testing.assert_array_equal(sweep.sweep_best_step[0], [int(r.best_step) for r in alone])
  s = int(np.argmin([float(r.best_val_loss) for r in alone]))
  assert sweep.wd == wds[s]
  np.testing.assert_allclose(np.asarray(sweep.weights), np.asarray(alone[s].params["w"]), atol=1e-5)


def test_lbfgs_probe_is_rotation_equivariant_and_ignores_nuisance_dimensions():
  """Rotating the features rotates the L-BFGS head (same logits); 120 pure-noise dimensions next to 6 informative
  ones cost it a little (0.925 -> 0.845 here), the AdamW sweep a lot (0.925 -> 0.525): its per-coordinate steps
  spread weight over the noise."""
  x, y = _blobs(4, 500, 6, 3, sep=1.0)
  rng = np.random.default_rng(0)
  wide = np.concatenate([x, rng.normal(size=(x.shape[0], 120)).astype(np.float32)], 1)
  q, _ = np.linalg.qr(rng.normal(size=(126, 126)))
  kw = dict(steps=100, method="lbfgs", standardise=False, wds=(1e-3, 1e-1))
  r = ft.finetune_arrays(jax.random.key(0), *_split(wide, y, 300), **kw)
  rq = ft.finetune_arrays(jax.random.key(0), *_split((wide @ q.T).astype(np.float32), y, 300), **kw)
  logits = wide[300:] @ np.asarray(r.weights).T
  logits_q = (wide[300:] @ q.T) @ np.asarray(rq.weights).T
  np.testing.assert_allclose(logits, logits_q, atol=5e-2 * np.abs(logits).max())
  narrow = ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), **kw)
  adam = ft.finetune_arrays(jax.random.key(0), *_split(wide, y, 300), steps=100, standardise=False)
  assert r.test_accuracy >= narrow.test_accuracy - 0.12
  assert r.test_accuracy > adam.test_accuracy + 0.2
  assert np.isnan(r.lr) and r.wd in (1e-3, 1e-1)
  with pytest.raises(ValueError, match="full-batch"):
    ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), method="lbfgs", batch_size=32)
  with pytest.raises(ValueError, match="method must be one of"):
    ft.finetune_arrays(jax.random.key(0), *_split(x, y, 300), method="sgd")
