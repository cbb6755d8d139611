"""The terms of the Task Transfer Analysis bound, one function each.

Every term has the signature ``term(params, batch, head) -> scalar`` (``params``: :class:`Transforms`,
``batch``: :class:`Batch`, ``head``: the source head); a term with hyper-parameters is built by a constructor that
takes them and returns that function (:func:`wasserstein`), optax-style. The objective in :mod:`ttjax.bound` is
literally a weighted sum of entries of a tuple, and a researcher adds or swaps one without touching the optimiser
or a config class.

The Wasserstein term is *label-split*: with ground cost ``c((x, t), (x', t')) = ||x - x'|| + Lambda 1[t != t']``
the transport only needs to move mass between different labels when the label marginals differ. We use the
coupling that (i) moves ``alpha_t = min(m_t, p_t)`` of class ``t``'s mass within class ``t`` optimally, where
``m = B D`` is the transformed-source label marginal and ``p = p_T`` the target's, and (ii) moves the remaining
``TV = sum_t (m_t - p_t)^+`` across labels with the product coupling. Its cost,

    W_split = sum_t alpha_t W_t  +  sum_t (m_t - p_t)^+ E_{mu_t}||x||  +  sum_t (p_t - m_t)^+ E_{nu_t}||x||
              + Lambda * TV,

(``mu_t``: transformed source points weighted by ``a^t_i ~ D_{y_i} B_{t, y_i} / n_{y_i}``, normalised; ``nu_t``: the
target points of class ``t``; ``W_t = W(mu_t, nu_t)``; the two middle terms bound the feature cost of the product
coupling by the triangle inequality through the origin) is the cost of a feasible coupling, hence
``W_split >= W_Lambda`` exactly, with equality when ``m = p`` and ``Lambda`` is large. The problems are ``K_t``
small, well-conditioned OTs (no huge ``Lambda`` inside a Sinkhorn kernel), batched with ``vmap``, and
differentiable in ``D``, ``B`` through the weights and in ``A``, ``b`` through the cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ttjax import head as hd
from ttjax import ot
from ttjax import transforms as tf
from ttjax.sampling import Batch

__all__ = [
    "weighted_source_loss", "conditional_entropy", "wasserstein", "split_wasserstein", "prior_matching", "invertibility",
    "class_problems", "label_split", "transformed_source_loss",
]

_TINY = 1e-12
_SPLIT_SMOOTHING = 1e-3  # label mass; the training W's ramp width in label_split (the certified W uses 0)


def weighted_source_loss(params: tf.Transforms, batch: Batch, head: hd.LinearHead) -> jax.Array:
  """``sum_s D_s Lbar_s`` with ``Lbar_s = sum_{i: y_i = s} ws_i CE(h_S(A_bar A z_i), s)`` the class-``s`` mean
  cross-entropy (natural log). Equivalently ``sum_s (D_s / p_S(s)) L_s`` with ``L_s = (1/n) sum_{i: y_i=s} CE_i``.

  Evaluated at the reconstructed points ``A_bar A z`` (= ``z`` when ``A_bar = A^{-1}``), which makes
  ``transformed-source loss <= this + H`` hold whether or not ``A_bar`` inverts ``A``.
  """
  # h_S(A_bar A z) with the maps folded into the linear head: (W A_bar) A costs K d^2, not n d^2
  folded = hd.precompose(hd.precompose(head, params.A_bar), params.A)
  ce = hd.cross_entropy(folded, batch.zs, batch.ys)
  return jnp.sum(params.D[batch.ys] * batch.ws * ce)


def conditional_entropy(params: tf.Transforms, batch: Batch = None, head=None) -> jax.Array:
  """``H(Y_T | Y_S) = -sum_s D_s sum_t B_ts log B_ts`` (nats)."""
  log_b = jax.nn.log_softmax(params.b_logits, axis=0)
  return -jnp.sum(params.D * jnp.sum(jnp.exp(log_b) * log_b, axis=0))


def prior_matching(params: tf.Transforms, batch: Batch, head=None) -> jax.Array:
  """``||p_T - B D||_2^2``."""
  return jnp.sum((batch.pt - params.B @ params.D) ** 2)


def invertibility(params: tf.Transforms, batch=None, head=None) -> jax.Array:
  """``||A A_bar - I||_F^2 + ||A_bar A - I||_F^2``."""
  eye = jnp.eye(params.A.shape[0], dtype=params.A.dtype)
  return jnp.sum((params.A @ params.A_bar - eye) ** 2) + jnp.sum((params.A_bar @ params.A - eye) ** 2)


def class_problems(params: tf.Transforms, batch: Batch, cost_fn: ot.CostFn):
  """The ``K_t`` per-class transport problems.

  Returns ``(x, a_hat, mass, src_ref)``: transformed source points ``x = A zs + b (n_s, d)``, their normalised
  weights in each class problem ``a_hat (K_t, n_s)``, the transformed-source label marginal ``mass = B D (K_t,)``
  (as summed weights), and ``src_ref (K_t,)`` = ``E_{mu_t} c(x, 0)``.
  """
  x = tf.feature_map(params, batch.zs)
  a = params.B[:, batch.ys] * (params.D[batch.ys] * batch.ws)[None, :]  # (K_t, n_s)
  mass = jnp.sum(a, axis=1)
  a_hat = a / jnp.maximum(mass, _TINY)[:, None]
  origin = jnp.zeros((1, x.shape[1]), x.dtype)
  src_ref = a_hat @ cost_fn(x, origin)[:, 0]
  return x, a_hat, mass, src_ref


def target_reference(batch: Batch, cost_fn: ot.CostFn) -> jax.Array:
  """``E_{nu_t} c(0, y)`` for each target class: ``(K_t,)``."""
  origin = jnp.zeros((1, batch.zt.shape[-1]), batch.zt.dtype)
  dist = jax.vmap(lambda y: cost_fn(origin, y)[0])(batch.zt)  # (K_t, m)
  return jnp.sum(batch.wt * dist, axis=1)


def label_split(class_w: jax.Array, mass: jax.Array, pt: jax.Array, src_ref: jax.Array, tgt_ref: jax.Array,
                label_cost: float, smoothing: float = 0.0) -> jax.Array:
  """Assemble ``W_split`` (module docstring) from per-class values ``class_w (K_t,)`` and the label marginals.

  ``alpha = mass - (mass - pt)^+``. With ``smoothing = s > 0`` (training only) the excess ``x^+`` is replaced by the
  C^1 ramp ``x^2 / 2s`` on ``[0, s]`` (then ``x - s/2``): its gradient is continuous at ``B D = p_T``, where
  ``learned_all`` starts. With the plain kink, float noise of ~1e-9 in ``B D - p_T`` decides whether the first
  gradient carries ``Lambda``, and Adam turns that into lr-sized differences between equivalent runs.
  """
  x = mass - pt
  excess = jnp.maximum(x, 0.0) if smoothing == 0 else jnp.where(
      x >= smoothing, x - 0.5 * smoothing, jnp.square(jnp.clip(x, 0.0, smoothing)) / (2 * smoothing))
  alpha = mass - excess
  return (jnp.sum(alpha * class_w) + jnp.sum((mass - alpha) * src_ref) + jnp.sum((pt - alpha) * tgt_ref)
          + label_cost * jnp.sum(mass - alpha))


def split_wasserstein(params: tf.Transforms, batch: Batch, cost_fn: ot.CostFn, solve_classes,
                      label_cost=0.0, smoothing: float = 0.0):
  """``W_split`` (module docstring) with the per-class values ``W_t`` from a solver strategy:
  ``solve_classes(x (n_s, d), a_hat (K_t, n_s)) -> (K_t,)`` against the target classes ``batch.zt, batch.wt``.

  Returns ``(W, class_w, mismatch)`` with ``mismatch = sum_t (m_t - p_t)^+``, so ``W`` at another ``Lambda`` is
  ``W(0) + Lambda * mismatch`` (unsmoothed). The training term, the certified evaluation and the blocked solver
  for large tasks are this function with different ``solve_classes``."""
  x, a_hat, mass, src_ref = class_problems(params, batch, cost_fn)
  class_w = solve_classes(x, a_hat)
  w = label_split(class_w, mass, batch.pt, src_ref, target_reference(batch, cost_fn), label_cost,
                  smoothing=smoothing)
  return w, class_w, jnp.sum(jnp.maximum(mass - batch.pt, 0.0))


def wasserstein(*, cost_fn: ot.CostFn = ot.euclidean, label_cost=0.0, epsilon=0.05, num_iters: int = 10,
                lse_mode: bool = False):
  """The training term: ``W_split`` with each ``W_t`` the primal cost of an entropic Sinkhorn plan (ott-jax,
  ``num_iters`` fixed iterations, ``epsilon`` relative to the mean cost) and envelope-theorem gradients, under the
  ground cost ``cost_fn(x, y) + label_cost 1[t != t']``. Returns ``fn(params, batch, head) -> scalar``;
  :func:`ttjax.bound.evaluate` reports the certified version."""
  def solve_classes(x, batch, a_hat):
    # One (n_s, K_t m) cost matrix -- one large matmul instead of K_t thin ones -- viewed as K_t class blocks.
    k_t, m, d = batch.zt.shape
    cost = cost_fn(x, batch.zt.reshape(k_t * m, d)).reshape(x.shape[0], k_t, m)
    solve = lambda c, a, b: ot.entropic_value(c, a, b, epsilon=epsilon, num_iters=num_iters, lse_mode=lse_mode)
    return jax.vmap(solve, in_axes=(1, 0, 0))(cost, a_hat, batch.wt)

  def term(params, batch, head=None):
    return split_wasserstein(params, batch, cost_fn, lambda x, a_hat: solve_classes(x, batch, a_hat), label_cost,
                             smoothing=_SPLIT_SMOOTHING)[0]

  return term


def transformed_source_loss(params: tf.Transforms, batch: Batch, head: hd.LinearHead) -> jax.Array:
  """``E_{(x, t) ~ T'} -log h_T(x)_t``: the loss of ``h_T`` on the transformed source ``T'`` (features
  ``A z + b``, source class drawn by ``D``, target label by ``B``). Always ``<= weighted source loss + H``."""
  loss = hd.transformed_loss(head, params, tf.feature_map(params, batch.zs))  # (n_s, K_t)
  weight = (params.D[batch.ys] * batch.ws)[:, None] * params.B.T[batch.ys]  # (n_s, K_t)
  return jnp.sum(weight * loss)
