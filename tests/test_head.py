"""The Lipschitz head and the measured tau_hat, against a numpy closed form."""
import jax
import jax.numpy as jnp
import numpy as np

from ttjax import head as hd, synthetic as syn, transforms as tf
from ttjax.tasks import make_task


def _numpy_label_grad_norms(w, c, a_bar, b_vec, b_map, z):
  """||grad_z -log (B softmax(W A_bar (z - b) + c))_t|| for every row and t, from the chain rule by hand."""
  u = (z - b_vec) @ a_bar.T
  logits = u @ w.T + c
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  q = p @ b_map.T  # (n, K_t)
  out = np.zeros(q.shape)
  for i in range(z.shape[0]):
    jac_softmax = np.diag(p[i]) - np.outer(p[i], p[i])  # d p / d logits
    for t in range(q.shape[1]):
      g_logits = -(jac_softmax @ b_map[t]) / q[i, t]
      out[i, t] = np.linalg.norm(a_bar.T @ (w.T @ g_logits))
  return out


def test_tau_hat_is_the_max_gradient_norm_over_the_bound_points():
  rng = np.random.default_rng(0)
  ks, kt, d = 3, 4, 5
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 30, d, ks)
  zt, yt = syn.clustered(jax.random.PRNGKey(1), 24, d, kt)
  head = hd.LinearHead(W=jnp.asarray(rng.normal(size=(ks, d)), jnp.float32),
                       c=jnp.asarray(rng.normal(size=ks), jnp.float32))
  b_map = rng.dirichlet(np.ones(kt) * 0.3, size=ks).T.astype(np.float32)
  params = tf.Transforms(d_logits=jnp.zeros(ks), b_logits=jnp.log(jnp.asarray(b_map)),
                         A=jnp.asarray(np.eye(d) + 0.1 * rng.normal(size=(d, d)), jnp.float32),
                         b=jnp.asarray(rng.normal(size=d), jnp.float32),
                         A_bar=jnp.asarray(np.eye(d) + 0.1 * rng.normal(size=(d, d)), jnp.float32))
  got = float(hd.tau_hat(head, params, zs, ys, zt, yt, min_label_mass=1e-2, chunk=7))
  args = (np.asarray(head.W), np.asarray(head.c), np.asarray(params.A_bar), np.asarray(params.b),
          np.asarray(params.B))
  tgt = _numpy_label_grad_norms(*args, zt)[np.arange(len(yt)), yt]
  xs = zs @ np.asarray(params.A).T + np.asarray(params.b)
  src = _numpy_label_grad_norms(*args, xs)
  carried = np.asarray(params.B).T[ys] >= 1e-2
  want = max(tgt.max(), src[carried].max())
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # and it bounds every gradient norm at those points
  assert np.all(tgt <= got * (1 + 1e-5)) and np.all(src[carried] <= got * (1 + 1e-5))


def test_gradient_penalty_keeps_the_head_near_tau():
  z, y = syn.clustered(jax.random.PRNGKey(3), 400, 8, 4, separation=6.0)
  task = make_task(z, y)
  y_rand = np.asarray(jax.random.randint(jax.random.PRNGKey(9), (400,), 0, 4))
  norms = {}
  for tau, penalty in [(0.5, 10.0), (0.5, 0.0)]:
    head = hd.fit_head(jax.random.PRNGKey(0), task.features, task.labels, 4, tau=tau, penalty=penalty, steps=300)
    norms[penalty] = np.asarray(hd.gradient_norms(head, task.features, jnp.asarray(y_rand)))
    acc = float(jnp.mean(jnp.argmax(hd.logits(head, task.features), -1) == task.labels))
    assert acc > 0.95
  # with the penalty, random-label gradient norms stay close to tau; without it they grow well past it
  assert np.quantile(norms[10.0], 0.95) <= 0.5 * 1.25
  assert np.quantile(norms[0.0], 0.95) > np.quantile(norms[10.0], 0.95) * 1.5


def test_closed_form_gradients_match_autodiff():
  # the closed forms (label_gradients, gradient_norms) against jax.jacrev / jax.grad on a few points
  rng = np.random.default_rng(1)
  ks, kt, d = 4, 3, 6
  head = hd.LinearHead(W=jnp.asarray(rng.normal(size=(ks, d)) * 2, jnp.float32),
                       c=jnp.asarray(rng.normal(size=ks), jnp.float32))
  b_map = rng.dirichlet(np.ones(kt) * 0.5, size=ks).T
  params = tf.Transforms(d_logits=jnp.zeros(ks), b_logits=jnp.log(jnp.asarray(b_map, jnp.float32)),
                         A=jnp.eye(d), b=jnp.asarray(rng.normal(size=d), jnp.float32),
                         A_bar=jnp.asarray(np.eye(d) + 0.2 * rng.normal(size=(d, d)), jnp.float32))
  z = jnp.asarray(rng.normal(size=(8, d)) * 2, jnp.float32)
  oracle = jax.vmap(jax.jacrev(lambda zi: hd.transformed_loss(head, params, zi[None])[0]))(z)  # (8, K_t, d)
  got = hd.label_gradients(head, params, z)
  assert got.shape == (8, kt, d)
  np.testing.assert_allclose(np.asarray(got), np.asarray(oracle), rtol=1e-4, atol=1e-5)
  y = jnp.asarray(rng.integers(0, ks, 8))
  ce_grad = jax.vmap(jax.grad(lambda zi, yi: hd.cross_entropy(head, zi[None], yi[None])[0]))(z, y)
  np.testing.assert_allclose(np.asarray(hd.gradient_norms(head, z, y)), np.linalg.norm(np.asarray(ce_grad), axis=-1),
                             rtol=1e-4)
