"""The OT kernels against POT's exact solver (a test-only oracle) and against finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import ot as pot
import pytest

from ttjax import ot, terms, transforms as tf
from ttjax.bound import BoundConfig, certified_w
from ttjax.sampling import full_batch, make_pair
from ttjax.tasks import make_task


def _clouds(n=40, m=30, d=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (rng.normal(size=(m, d)) + 0.7).astype(np.float32)
  a = rng.random(n) + 0.1
  return x, y, (a / a.sum()).astype(np.float32), np.full(m, 1.0 / m, np.float32)


def test_euclidean_cost_matches_numpy():
  x, y, _, _ = _clouds()
  ref = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
  np.testing.assert_allclose(np.asarray(ot.euclidean(x, y)), ref, rtol=1e-4, atol=1e-3)


def test_kernel_mode_sinkhorn_matches_log_domain_and_numpy():
  """Kernel mode (the Gibbs kernel formed once, ``ot._GibbsGeometry``) = ott's log-domain solve = numpy scaling."""
  x, y, a, b = _clouds()
  c, _, _ = ot.reduce_cost(ot.euclidean(x, y))
  kw = dict(epsilon=0.1, relative_epsilon="mean", num_iters=200)
  kernel = ot.sinkhorn(c, a, b, lse_mode=False, **kw)
  log = ot.sinkhorn(c, a, b, lse_mode=True, **kw)
  np.testing.assert_allclose(np.asarray(kernel.matrix), np.asarray(log.matrix), atol=1e-6)
  cn = np.asarray(c, np.float64)
  k = np.exp(-cn / (0.1 * cn.mean()))
  u, v = np.ones(len(a)), np.ones(len(b))
  for _ in range(200):  # Sinkhorn-Knopp scalings, g update first as ott does
    v = b / (k.T @ u)
    u = a / (k @ v)
  np.testing.assert_allclose(np.asarray(kernel.matrix), u[:, None] * k * v[None, :], atol=1e-6)


def test_zero_weight_atoms_do_not_change_a_fixed_iteration_solve():
  """Padding (zero-weight rows and columns, far away and on top of the other side's points) leaves the 10-iteration
  training value and its gradients unchanged: cost reduction and relative epsilon look at positive weights only."""
  x, y, a, b = _clouds(n=30, m=20)
  rng = np.random.default_rng(3)
  xp = np.concatenate([x, 5.0 * rng.normal(size=(7, x.shape[1])).astype(np.float32), y[:3]])
  yp = np.concatenate([y, 5.0 * rng.normal(size=(4, y.shape[1])).astype(np.float32), x[:2]])
  ap = np.concatenate([a, np.zeros(10, np.float32)])
  bp = np.concatenate([b, np.zeros(6, np.float32)])
  value = lambda x, y, a, b: ot.entropic_value(ot.euclidean(x, y), a, b, epsilon=0.05, num_iters=10)
  np.testing.assert_allclose(float(value(xp, yp, ap, bp)), float(value(x, y, a, b)), rtol=1e-5)
  gx, ga = jax.grad(value, argnums=(0, 2))(x, y, a, b)
  gxp, gap = jax.grad(value, argnums=(0, 2))(xp, yp, ap, bp)
  np.testing.assert_allclose(np.asarray(gxp)[:len(x)], np.asarray(gx), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gap)[:len(a)], np.asarray(ga), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gxp)[len(x):], 0.0)


def test_round_plan_is_feasible():
  x, y, a, b = _clouds()
  out = ot.sinkhorn(ot.euclidean(x, y), a, b, epsilon=0.05, num_iters=3)  # far from converged on purpose
  p = np.asarray(ot.round_plan(out.matrix, a, b))
  assert p.min() >= 0
  np.testing.assert_allclose(p.sum(1), a, atol=1e-6)
  np.testing.assert_allclose(p.sum(0), b, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certified_value_upper_bounds_exact_emd_and_is_tight(seed):
  x, y, a, b = _clouds(seed=seed)
  c = ot.euclidean(x, y)
  exact = pot.emd2(a.astype(np.float64), b.astype(np.float64), np.asarray(c, np.float64))
  loose = float(ot.certified_value(c, a, b, epsilon=0.1, num_iters=5))
  tight = float(ot.certified_value(c, a, b, epsilon=0.002, num_iters=5000, threshold=1e-6))
  assert loose >= exact - 1e-5 and tight >= exact - 1e-5
  assert tight <= exact * 1.002
  assert loose > tight


def _joint_emd(x, ys, ws, d_prior, b_map, zt, yt, label_cost):
  """Exact W between the transformed-source joint (atoms (x_i, t), mass D_y B_ty w_i) and the target joint."""
  kt = b_map.shape[0]
  src_x = np.repeat(x, kt, axis=0)
  src_t = np.tile(np.arange(kt), x.shape[0])
  mass = (d_prior[ys] * ws)[:, None] * b_map.T[ys]
  c = np.sqrt(((src_x[:, None] - zt[None]) ** 2).sum(-1)) + label_cost * (src_t[:, None] != yt[None, :])
  b = np.full(zt.shape[0], 1.0 / zt.shape[0])
  a = mass.reshape(-1).astype(np.float64)
  return pot.emd2(a / a.sum(), b, c)


@pytest.mark.parametrize("matched", [True, False])
def test_label_split_w_against_exact_joint_emd(matched):
  rng = np.random.default_rng(3)
  ks, kt, d = 3, 4, 3
  zs = rng.normal(size=(36, d)).astype(np.float32)
  ys = np.arange(36) % ks
  zt = (rng.normal(size=(32, d)) + 0.5).astype(np.float32)
  yt = np.arange(32) % kt
  src = make_task(zs, ys, standardise=False)
  tgt = make_task(zt, yt, standardise=False)
  pair = make_pair(src, tgt)
  batch = full_batch(pair)
  b_map = rng.dirichlet(np.ones(kt), size=ks).T.astype(np.float32)  # (K_t, K_s), soft
  if matched:  # choose D so that B D = p_T exactly (uniform p_T; solve least squares, check it is exact)
    d_prior = np.linalg.lstsq(b_map, np.full(kt, 1 / kt), rcond=None)[0]
    if np.any(d_prior <= 0) or not np.allclose(b_map @ d_prior, 1 / kt, atol=1e-6):
      b_map = np.full((kt, ks), 1.0 / kt, np.float32)
      d_prior = np.full(ks, 1.0 / ks)
  else:
    d_prior = rng.dirichlet(np.ones(ks))
  params = tf.Transforms(d_logits=jnp.log(jnp.asarray(d_prior, jnp.float32)), b_logits=jnp.log(b_map),
                         A=jnp.eye(d) * 1.1, b=jnp.full((d,), 0.2), A_bar=jnp.eye(d) / 1.1)
  label_cost = 6.0
  cfg = BoundConfig(label_cost=label_cost, eval_epsilon=0.002, eval_iters=20000, eval_threshold=1e-7, space="feature", holdout=0.0)
  w0, _, mismatch = certified_w(params, batch, cfg)
  w = w0 + label_cost * mismatch
  x = np.asarray(tf.feature_map(params, jnp.asarray(zs)))
  exact = _joint_emd(x, ys, 1.0 / np.bincount(ys)[ys], np.asarray(params.D), np.asarray(params.B), zt, yt,
                     label_cost)
  assert float(w) >= exact - 1e-4  # a feasible coupling: never below the exact value
  if matched:
    assert float(mismatch) < 1e-5
    assert float(w) <= exact * 1.01  # and tight when the label marginals match
  else:
    assert float(mismatch) > 1e-3
    assert float(w) <= exact + 2 * float(mismatch) * label_cost  # the cross-label part is bounded, not exact


def test_envelope_gradient_is_the_entropic_value_gradient():
  x, y, a, b = _clouds(n=20, m=15)
  c = ot.euclidean(x, y)
  kw = dict(epsilon=0.5, relative_epsilon=None, num_iters=2000, threshold=1e-9)  # eps fixed, not relative to C
  g = jax.grad(lambda cost: ot.entropic_value(cost, a, b, **kw))(c)
  reg = lambda cost: float(ot.sinkhorn(cost, a, b, **kw).reg_ot_cost)
  delta = np.random.default_rng(0).normal(size=c.shape).astype(np.float32)
  h = 1e-2
  fd = (reg(c + h * delta) - reg(c - h * delta)) / (2 * h)
  np.testing.assert_allclose(float(jnp.sum(g * delta)), fd, rtol=2e-2)
  # and the gradient in the weights is the dual potential (up to a constant, which the simplex ignores)
  ga = jax.grad(lambda w: ot.entropic_value(c, w, b, **kw))(jnp.asarray(a))
  da = np.zeros_like(a)
  da[0], da[1] = 1.0, -1.0
  fd_a = (reg_a := lambda w: float(ot.sinkhorn(c, w, b, **kw).reg_ot_cost))(a + 1e-3 * da) - reg_a(a - 1e-3 * da)
  np.testing.assert_allclose(float(jnp.sum(ga * da)), fd_a / 2e-3, rtol=5e-2)


def test_wasserstein_term_gradient_matches_finite_differences_in_a():
  """d W / d A through the envelope gradient vs a central difference of the converged entropic value."""
  rng = np.random.default_rng(1)
  zs = rng.normal(size=(24, 3)).astype(np.float32)
  zt = (rng.normal(size=(20, 3)) + 0.3).astype(np.float32)
  pair = make_pair(make_task(zs, np.arange(24) % 2, standardise=False),
                   make_task(zt, np.arange(20) % 2, standardise=False))
  batch = full_batch(pair)
  params = tf.init_transforms(jax.random.PRNGKey(0), 2, 2, 3, setting="learned_all")
  w_term = terms.wasserstein(label_cost=5.0, epsilon=0.05, num_iters=3000)
  grad = jax.grad(lambda p: w_term(p, batch, None))(params).A
  direction = rng.normal(size=(3, 3)).astype(np.float32)

  x0, _, _, _ = terms.class_problems(params, batch, ot.euclidean)
  # Training treats eps = 0.05 * mean(C) as a constant at the current point; freeze it the same way here.
  eps = [0.05 * float(jnp.mean(ot.euclidean(x0, yy))) for yy in batch.zt]

  def reg_value(a_mat):  # the same label-split objective, with the entropic (dual) value per class
    p = tf.Transforms(params.d_logits, params.b_logits, jnp.asarray(a_mat), params.b, params.A_bar)
    x, a_hat, mass, src_ref = terms.class_problems(p, batch, ot.euclidean)
    vals = jnp.stack([ot.sinkhorn(ot.euclidean(x, batch.zt[t]), a_hat[t], batch.wt[t], epsilon=eps[t],
                                  relative_epsilon=None, num_iters=3000, threshold=1e-9).reg_ot_cost
                      for t in range(2)])
    return float(terms.label_split(vals, mass, batch.pt, src_ref, terms.target_reference(batch, ot.euclidean), 5.0))

  h = 1e-2
  eye = np.eye(3, dtype=np.float32)
  fd = (reg_value(eye + h * direction) - reg_value(eye - h * direction)) / (2 * h)
  np.testing.assert_allclose(float(jnp.sum(grad * direction)), fd, rtol=3e-2)


def test_online_pointcloud_works_with_the_shim():
  from ott.geometry import pointcloud
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn
  x, y, a, b = _clouds(n=64, m=48)
  online = pointcloud.PointCloud(jnp.asarray(x), jnp.asarray(y), batch_size=16, epsilon=0.5)
  dense = pointcloud.PointCloud(jnp.asarray(x), jnp.asarray(y), epsilon=0.5)
  solve = lambda g: sinkhorn.Sinkhorn(max_iterations=500)(linear_problem.LinearProblem(g, a, b)).reg_ot_cost
  np.testing.assert_allclose(float(solve(online)), float(solve(dense)), rtol=1e-4)
