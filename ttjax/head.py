"""The source head ``h_S``, its Lipschitz control, and the transformed classifier ``h_T``.

``h_S(z) = W z + c`` is a linear classifier on (standardised) source features, trained with cross-entropy plus a
gradient penalty (Gulrajani et al. 2017 style, one-sided):

    L(W, c) = CE + mu * E[ relu(||grad_z CE(h_S(z), y)|| - tau)^2 + relu(||grad_z CE(h_S(z), y~)|| - tau)^2 ]

with ``y`` the true and ``y~`` uniformly random labels, so the loss stays ~``tau``-Lipschitz in the input for any
label. The bound does not trust ``tau``: it *measures* ``tau_hat``, the largest input-gradient norm of the
transformed classifier's loss ``l(z, t) = -log h_T(z)_t`` over the points that enter the bound.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ttjax import transforms as tf

__all__ = [
    "LinearHead", "precompose", "logits", "cross_entropy", "gradient_norms", "penalised_loss", "adamw_scan", "fit_head", "transformed_probs",
    "transformed_loss", "label_gradients", "tau_hat", "transfer_metrics",
]

_PROB_FLOOR = 1e-12


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearHead:
  """Linear classifier ``z -> W z + c``; ``W (K, d)``, ``c (K,)``."""

  W: jax.Array
  c: jax.Array


def precompose(head: LinearHead, matrix: jax.Array) -> LinearHead:
  """The head of ``z -> h(M z)``: ``W M`` and ``c``. For ``M = A_bar A`` this is ``(W A_bar) A`` -- ``O(K d^2)``
  instead of ``O(n d^2)`` for transforming every point first."""
  return LinearHead(W=head.W @ matrix, c=head.c)


def logits(head: LinearHead, z: jax.Array) -> jax.Array:
  """``(n, d) -> (n, K)``."""
  return z @ head.W.T + head.c


def cross_entropy(head: LinearHead, z: jax.Array, y: jax.Array) -> jax.Array:
  """Per-sample ``-log softmax(h(z))_y``: ``(n, d), (n,) -> (n,)``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits(head, z), y)


def gradient_norms(head: LinearHead, z: jax.Array, y: jax.Array) -> jax.Array:
  """``||grad_z CE(h(z_i), y_i)||_2`` for each row: ``(n,)``, in closed form.

  ``grad_z CE(Wz + c, y) = W^T (softmax(Wz + c) - e_y)``: one ``(n, K) @ (K, d)`` product instead of a per-row
  autodiff pass (the head is trained through this, so it is differentiated once more in ``W, c``).
  """
  g = (jax.nn.softmax(logits(head, z), axis=-1) - jax.nn.one_hot(y, head.W.shape[0], dtype=z.dtype)) @ head.W
  return jnp.sqrt(jnp.sum(g * g, axis=-1) + 1e-12)  # differentiable at 0 (the zero-initialised head)


def penalised_loss(head: LinearHead, z: jax.Array, y: jax.Array, y_rand: jax.Array, tau, penalty,
                   weights=None) -> jax.Array:
  """``CE + mu * (relu(||grad CE(y)|| - tau)^2 + relu(||grad CE(y~)|| - tau)^2)``, averaged over rows (or summed
  with ``weights (n,)`` that sum to one, so padded rows can be weighted 0): the head's training loss."""
  mean = jnp.mean if weights is None else (lambda v: jnp.sum(weights * v))
  excess = lambda labels: mean(jax.nn.relu(gradient_norms(head, z, labels) - tau) ** 2)
  return mean(cross_entropy(head, z, y)) + penalty * (excess(y) + excess(y_rand))


def adamw_scan(loss, head: LinearHead, key: jax.Array, steps: int, learning_rate, weight_decay, draw):
  """``steps`` AdamW steps on ``loss(head, idx, k_rand)`` in one ``lax.scan``; each step's key splits into
  ``(k_idx, k_rand)`` and ``idx = draw(k_idx)`` picks its minibatch. Returns the trained head."""
  opt = optax.adamw(learning_rate, weight_decay=weight_decay)

  def step(carry, key):
    head, state = carry
    k_idx, k_rand = jax.random.split(key)
    grads = jax.grad(loss)(head, draw(k_idx), k_rand)
    updates, state = opt.update(grads, state, head)
    return (optax.apply_updates(head, updates), state), None

  (head, _), _ = jax.lax.scan(step, (head, opt.init(head)), jax.random.split(key, steps))
  return head


def fit_head(key: jax.Array, features: jax.Array, labels: jax.Array, num_classes: int, *, tau: float = 1.0,
             penalty: float = 10.0, steps: int = 300, learning_rate: float = 0.05, batch_size: int = 1024,
             weight_decay: float = 1e-4) -> LinearHead:
  """Train the source head with Adam(W) on minibatches drawn inside one jitted ``lax.scan``.

  Args:
    features: ``(n, d)`` standardised source features; ``labels`` ``(n,)`` in ``[0, num_classes)``.
    tau: target Lipschitz constant of the cross-entropy in ``z``; ``penalty``: its weight ``mu``.
  """
  return _fit_head(key, features, labels, num_classes, tau, penalty, steps, learning_rate,
                   min(batch_size, features.shape[0]), weight_decay)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def _fit_head(key, features, labels, num_classes, tau, penalty, steps, learning_rate, batch_size, weight_decay):
  n, d = features.shape
  head = LinearHead(W=jnp.zeros((num_classes, d), features.dtype), c=jnp.zeros((num_classes,), features.dtype))

  def loss(head, idx, k_rand):
    y = labels[idx]
    y_rand = jax.random.randint(k_rand, y.shape, 0, num_classes)
    return penalised_loss(head, features[idx], y, y_rand, tau, penalty)

  draw = lambda k: jax.random.choice(k, n, (batch_size,), replace=False)
  return adamw_scan(loss, head, key, steps, learning_rate, weight_decay, draw)


def transformed_probs(head: LinearHead, params: tf.Transforms, z: jax.Array) -> jax.Array:
  """``h_T(z) = B softmax(h_S(A_bar (z - b)))`` for each row: ``(n, d) -> (n, K_t)``."""
  return jax.nn.softmax(logits(head, tf.inverse_map(params, z)), axis=-1) @ params.B.T


def transformed_loss(head: LinearHead, params: tf.Transforms, z: jax.Array) -> jax.Array:
  """``l(z, t) = -log h_T(z)_t`` for every target label: ``(n, d) -> (n, K_t)``."""
  return -jnp.log(jnp.maximum(transformed_probs(head, params, z), _PROB_FLOOR))


def label_gradients(head: LinearHead, params: tf.Transforms, z: jax.Array) -> jax.Array:
  """``grad_z l(z_i, t)`` for every row and target label, in closed form: ``(n, d) -> (n, K_t, d)``.

  With ``V = W A_bar`` (:func:`precompose`), ``p = softmax(V (z - b) + c)`` ``(K_s,)`` and ``q = B p`` ``(K_t,)``:
  ``d q_t / d u_s = p_s (B_ts - q_t)``, so ``grad_z l(z, t) = -(1 / q_t) sum_s p_s (B_ts - q_t) V_s``. Where
  ``q_t`` is below the probability floor of :func:`transformed_loss` the loss is constant and the gradient is 0.
  """
  v = precompose(head, params.A_bar)
  p = jax.nn.softmax(logits(v, z - params.b), axis=-1)  # (n, K_s)
  q = p @ params.B.T  # (n, K_t)
  live = q > _PROB_FLOOR
  m = -p[:, None, :] * (params.B[None] - q[:, :, None]) / jnp.where(live, q, 1.0)[:, :, None]  # dl/du (n, K_t, K_s)
  return jnp.where(live[:, :, None], m @ v.W, 0.0)


def _label_gradient_norms(head, params, z):
  """``||grad_z l(z_i, t)||`` for every row and label: ``(n, K_t)``."""
  return jnp.linalg.norm(label_gradients(head, params, z), axis=-1)


def tau_hat(head: LinearHead, params: tf.Transforms, source_z: jax.Array, source_y: jax.Array,
            target_z: jax.Array, target_y: jax.Array, *, min_label_mass: float = 1e-3,
            chunk: int = 1024) -> jax.Array:
  """Measured Lipschitz constant of ``l(., t)`` over the points that enter the bound.

  ``tau_hat = max( max_j ||grad l(z^T_j, y^T_j)||,  max_{i, t: B[t, y_i] >= min_label_mass} ||grad l(A z^S_i + b, t)|| )``

  i.e. over every target sample with its label and every transformed source sample with each target label it
  carries non-negligible mass to (``B[t, y_i] >= min_label_mass``). Gradients from :func:`label_gradients`
  (closed form), ``chunk`` rows at a time (memory ``chunk x K_t x d``).
  """
  per_point = lambda z: jax.lax.map(lambda zi: _label_gradient_norms(head, params, zi[None])[0], z,
                                    batch_size=chunk)
  tgt = jnp.take_along_axis(per_point(target_z), target_y[:, None], axis=1)
  src = per_point(tf.feature_map(params, source_z))  # (n_s, K_t)
  carried = params.B.T[source_y] >= min_label_mass  # (n_s, K_t)
  return jnp.maximum(jnp.max(tgt), jnp.max(jnp.where(carried, src, 0.0)))


def transfer_metrics(nll: jax.Array, probs: jax.Array, target_labels: jax.Array, head: LinearHead,
                     source_features: jax.Array, source_labels: jax.Array, source_mask=None, target_mask=None) -> dict:
  """The metrics every bound reports next to its terms: the loss of ``h_T`` (mean and max of ``nll (n_t,)``), its
  accuracy from ``probs (n_t, K_t)``, and the accuracy of ``h_S`` on the source features ``(n_s, d)``. Boolean
  masks mark the real rows of padded data: means run over them (maxes see padding, which repeats real rows)."""
  def mean(v, mask):
    return jnp.mean(v) if mask is None else jnp.sum(jnp.where(mask, v, 0.0)) / jnp.sum(mask)

  return dict(target_loss=mean(nll, target_mask), max_target_loss=jnp.max(nll),
              target_accuracy=mean(jnp.argmax(probs, -1) == target_labels, target_mask),
              source_accuracy=mean(jnp.argmax(logits(head, source_features), -1) == source_labels, source_mask))

