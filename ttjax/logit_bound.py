"""The certified TTA bound in the source head's logit space (ttjax's default, ``BoundConfig(space="logit")``).

The transformed classifier only sees a target point through the source head's logits, so the transport can be done
there. With the source head ``h_S(z) = W z + c`` (``K_s`` logits), a temperature ``s > 0``, a target feature map
``z' -> A_bar (z' - b)`` and a label map:

* source points ``u_i = s h_S(z_i)``, target points ``v_j = s h_S(A_bar (z'_j - b))`` in ``R^{K_s}``;
* ``h_T(z') = B softmax(v)``, loss ``l(v, t) = -log max((B softmax v)_t, 1e-12)``.

**Lemma (certified constant).** For every ``B``, ``t`` and ``u, v``: ``|l(v, t) - l(u, t)| <= rho(v - u)`` with
``rho(x) = max_k x_k - min_k x_k`` (:func:`ttjax.ot.logit_range`). Proof: ``grad_u l = p - r`` with
``p = softmax(u)`` and ``r_k = p_k B_tk / (B p)_t``, two probability vectors, so
``<p - r, x> <= max_k x_k - min_k x_k``; integrate along the segment (the floor is a ``min`` with a constant,
which keeps the constant). No sample point, no measured gradient: the constant is 1 everywhere.

**The label map has exact marginals.** The learned object is ``P(s | t)`` (``p_logits``, softmax over ``s``); with
the target prior ``p_T`` of the split at hand, ``J = diag(p_T) P``, ``D = J^T 1``, ``B = J diag(D)^{-1}``. Then
``B D = p_T`` exactly, no mass crosses labels, and the label-split coupling is ``sum_t p_t pi_t`` with ``pi_t`` a
coupling of ``mu_t = sum_i P(y_i | t) / n_{y_i} delta_{u_i}`` and ``nu_t`` (class ``t``'s target points).

**The bound.** For the empirical distributions of the *evaluation* split,

    R_T(h_T) = E_{T'} l + sum_t p_t E_{pi_t}[l(v, t) - l(u, t)]       (pi: any coupling with these marginals)
             <= E_{T'} l + sum_t p_t <pi_t, C_t>,                         C_t = rho(v_j - u_i)
             <= sum_s D_s Lbar_s(s h_S) + H(B | D) + sum_t p_t <pi_t, C_t>

where ``E_{T'} l`` -- the loss of ``h_T`` on the transformed source, an exact empirical number -- is at most
``sum_s D_s Lbar_s + H`` because ``-log (B p)_t <= -log B_ts - log p_s``. The certificate is the first line
(``bound = source_loss + entropy - merge_gain + wasserstein``, ``merge_gain`` the slack of the last step, large
when ``B`` merges several source classes into one target class); the second line is the paper's decomposition,
reported term by term. With ``pi_t`` the rounded Sinkhorn plan (a feasible coupling,
:func:`ttjax.ot.certified_value`) every number is computed, none estimated. The dimension of the transport is
``K_s`` whatever the encoder's ``d``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ttjax import head as hd
from ttjax import ot
from ttjax import solvers
from ttjax.sampling import Batch, TaskPair

__all__ = [
    "LogitTransforms", "PARAM_NAMES", "SETTINGS", "trainable_names", "label_transforms", "init_logit_transforms",
    "source_logits", "target_logits", "transformed_probs", "weighted_source_loss", "conditional_entropy",
    "transport_problems", "class_wasserstein", "wasserstein", "map_penalty", "evaluation_terms", "certified_terms",
    "with_wasserstein",
    "transformed_nll",
]

_TINY = 1e-30
_PROB_FLOOR = 1e-12
_LOG_FLOOR = -30.0

PARAM_NAMES = ("p_logits", "A_bar", "b", "log_temperature")

#: What each setting learns in logit space (``learned_a``: the feature side only, the label map stays fixed).
SETTINGS = {
    "fixed_all": (),
    "learned_a": ("A_bar", "b", "log_temperature"),
    "learned_all": PARAM_NAMES,
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LogitTransforms:
  """The learnable transformations of the logit-space bound (a pytree of array leaves)."""

  p_logits: jax.Array  # (K_t, K_s): logits of P(s | t), softmax over s
  A_bar: jax.Array  # (d, d): target feature map z' -> A_bar (z' - b)
  b: jax.Array  # (d,)
  log_temperature: jax.Array  # (): log s, the head's logit scale

  @property
  def temperature(self) -> jax.Array:
    return jnp.exp(self.log_temperature)

  @property
  def reverse_map(self) -> jax.Array:
    """``P(s | t)`` ``(K_t, K_s)``, rows sum to 1."""
    return jax.nn.softmax(self.p_logits, axis=1)


def trainable_names(setting: str, freeze=()) -> tuple[str, ...]:
  if setting not in SETTINGS:
    raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
  unknown = set(freeze) - set(PARAM_NAMES)
  if unknown:
    raise ValueError(f"cannot freeze unknown parameter(s) {sorted(unknown)} of the logit-space bound; "
                     f"parameters are {PARAM_NAMES}")
  return tuple(n for n in SETTINGS[setting] if n not in freeze)


def label_transforms(params: LogitTransforms, pt: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(D (K_s,), B (K_t, K_s))`` from ``P(s | t)`` and the target prior ``pt (K_t,)``: ``J = diag(pt) P``,
  ``D = J^T 1``, ``B = J / D`` (so ``B D = pt`` exactly)."""
  joint = pt[:, None] * params.reverse_map
  prior = jnp.sum(joint, axis=0)
  return prior, joint / jnp.maximum(prior, _TINY)[None, :]


def init_logit_transforms(label_map, source_prior, dim: int) -> LogitTransforms:
  """Start from a label map ``B (K_t, K_s)`` and a source prior ``D``: ``P(s | t) ~ B_ts D_s`` (a target class no
  source class maps to starts uniform); ``A_bar = I``, ``b = 0``, temperature 1."""
  joint = np.asarray(label_map, np.float64) * np.asarray(source_prior, np.float64)[None, :]
  rows = joint.sum(1, keepdims=True)
  cond = np.where(rows > 0, joint / np.where(rows > 0, rows, 1.0), 1.0 / joint.shape[1])
  p_logits = np.where(cond > 0, np.log(np.maximum(cond, 1e-300)), _LOG_FLOOR)
  eye = jnp.eye(dim, dtype=jnp.float32)
  return LogitTransforms(p_logits=jnp.asarray(p_logits, jnp.float32), A_bar=eye, b=jnp.zeros((dim,), jnp.float32),
                         log_temperature=jnp.zeros((), jnp.float32))


def source_logits(head: hd.LinearHead, params: LogitTransforms, z: jax.Array) -> jax.Array:
  """``u = s h_S(z)``: ``(..., d) -> (..., K_s)``."""
  return params.temperature * hd.logits(head, z)


def target_logits(head: hd.LinearHead, params: LogitTransforms, z: jax.Array) -> jax.Array:
  """``v = s h_S(A_bar (z - b))`` with ``W A_bar`` folded first (``K_s d^2``, not ``n d^2``): ``(..., d) -> (..., K_s)``."""
  return params.temperature * hd.logits(hd.precompose(head, params.A_bar), z - params.b)


def transformed_probs(head: hd.LinearHead, params: LogitTransforms, pt: jax.Array, z: jax.Array) -> jax.Array:
  """``h_T(z) = B softmax(v(z))`` for the label map of target prior ``pt``: ``(n, d) -> (n, K_t)``."""
  _, label_map = label_transforms(params, pt)
  return jax.nn.softmax(target_logits(head, params, z), axis=-1) @ label_map.T


def transformed_nll(head, params, pt, z, y) -> jax.Array:
  """``l(v(z_j), y_j) = -log max(h_T(z_j)_{y_j}, 1e-12)``: ``(n,)``."""
  probs = transformed_probs(head, params, pt, z)
  return -jnp.log(jnp.maximum(jnp.take_along_axis(probs, y[:, None], 1)[:, 0], _PROB_FLOOR))


# ------------------------------------------------------------------------------------------------------ terms
# Each term: fn(params, batch, head) -> scalar; hyper-parameters are bound by a constructor (wasserstein).


def weighted_source_loss(params: LogitTransforms, batch: Batch, head: hd.LinearHead) -> jax.Array:
  """``sum_s D_s Lbar_s(s h_S)``: class-mean cross-entropy of the tempered source head, weighted by ``D``."""
  prior, _ = label_transforms(params, batch.pt)
  ce = optax.softmax_cross_entropy_with_integer_labels(source_logits(head, params, batch.zs), batch.ys)
  return jnp.sum(prior[batch.ys] * batch.ws * ce)


def conditional_entropy(params: LogitTransforms, batch: Batch, head=None) -> jax.Array:
  """``H(B | D) = -sum_s D_s sum_t B_ts log B_ts`` (nats)."""
  prior, label_map = label_transforms(params, batch.pt)
  return -jnp.sum(prior * jnp.sum(label_map * jnp.log(jnp.maximum(label_map, _TINY)), axis=0))


def class_weights(params: LogitTransforms, batch: Batch) -> jax.Array:
  """``a[t, i] = P(y_i | t) ws_i``: source point ``i``'s weight in class ``t``'s problem ``(K_t, n_s)`` (rows sum
  to 1, since ``ws`` sums to 1 within each source class)."""
  return params.reverse_map[:, batch.ys] * batch.ws[None, :]


def transport_problems(params: LogitTransforms, batch: Batch, head: hd.LinearHead):
  """Every target class's transport problem: source logits ``u (n_s, K_s)``, their weights ``a (K_t, n_s)`` in
  each class's problem (:func:`class_weights`), and the target logits per class ``v (K_t, m, K_s)`` (weights:
  ``batch.wt``)."""
  return source_logits(head, params, batch.zs), class_weights(params, batch), target_logits(head, params, batch.zt)


def class_wasserstein(params: LogitTransforms, batch: Batch, head: hd.LinearHead, solve) -> jax.Array:
  """``W_rho(mu_t, nu_t)`` of every target class ``(K_t,)``, each from ``solve(C_t (n_s, m), a_t, b_t)`` with
  ``C_t = rho(v_j - u_i)``, ``vmap``-ped over the classes (the training term's layout)."""
  u, a, v = transport_problems(params, batch, head)
  return jax.vmap(lambda vt, at, bt: solve(ot.logit_range(u, vt), at, bt))(v, a, batch.wt)


def wasserstein(*, epsilon=0.05, num_iters: int = 10, lse_mode: bool = False, transport_classes=None):
  """The training term ``sum_t p_t W_rho(mu_t, nu_t)``: each ``W`` the primal cost of an entropic Sinkhorn plan
  (``num_iters`` fixed iterations, ``epsilon`` relative to the mean cost), envelope gradients
  (:func:`ttjax.ot.entropic_value`). Returns ``fn(params, batch, head) -> scalar``.

  ``transport_classes = k`` (on class-major minibatches, :attr:`ttjax.sampling.Batch.per_class_source`): class
  ``t``'s problem keeps the source rows of its ``k`` most likely source classes under ``P(s | t)`` and moves every
  other source class's mass from one atom, its class-mean logits -- a training surrogate of ``W`` whose range
  tensor (most of a step's work) has ``k m_s + K_s`` rows instead of ``K_s m_s``, and which still prices every
  entry of ``P``. The certified evaluation always transports every source point."""
  solve = lambda c, a, b: ot.entropic_value(c, a, b, epsilon=epsilon, num_iters=num_iters, lse_mode=lse_mode)

  def term(params, batch, head):
    k_s, m_s = params.p_logits.shape[1], batch.per_class_source
    if transport_classes is None or m_s == 0 or transport_classes >= k_s:
      return jnp.sum(batch.pt * class_wasserstein(params, batch, head, solve))
    u = source_logits(head, params, batch.zs).reshape(k_s, m_s, k_s)
    ws = batch.ws.reshape(k_s, m_s)
    centres = jnp.einsum("cm,cmk->ck", ws, u) / jnp.maximum(jnp.sum(ws, 1), _TINY)[:, None]  # (K_s, K_s)
    v = target_logits(head, params, batch.zt)  # (K_t, m, K_s)
    cond = params.reverse_map  # (K_t, K_s)
    _, top = jax.lax.top_k(jax.lax.stop_gradient(cond), transport_classes)  # (K_t, k)

    def one(vt, top_t, cond_t, b):
      kept = jnp.zeros((k_s,), bool).at[top_t].set(True)
      atoms = jnp.concatenate([u[top_t].reshape(-1, k_s), centres])
      a = jnp.concatenate([(cond_t[top_t][:, None] * ws[top_t]).reshape(-1), jnp.where(kept, 0.0, cond_t)])
      return solve(ot.logit_range(atoms, vt), a, b)

    return jnp.sum(batch.pt * jax.vmap(one)(v, top, cond, batch.wt))

  return term


def map_penalty(params: LogitTransforms, batch=None, head=None) -> jax.Array:
  """``||A_bar - I||_F^2``: keeps the target map near the identity (training only, not part of the bound)."""
  return jnp.sum((params.A_bar - jnp.eye(params.A_bar.shape[0], dtype=params.A_bar.dtype)) ** 2)


# ----------------------------------------------------------------------------------------- certified evaluation


@jax.jit
def evaluation_terms(params: LogitTransforms, pair: TaskPair, batch: Batch, head: hd.LinearHead) -> dict:
  """Every reported number of the bound but ``W`` on the data of ``pair`` (the evaluation split; ``batch``: its
  :func:`ttjax.sampling.full_batch`): the weighted source loss, ``H``, ``E_{T'} l`` (``transformed_source_loss``),
  the loss / accuracy of ``h_T`` and ``h_S``, ``D`` and ``B``."""
  src, tgt = pair.source, pair.target
  nll = transformed_nll(head, params, batch.pt, tgt.features, tgt.labels)
  probs = transformed_probs(head, params, batch.pt, tgt.features)
  prior, label_map = label_transforms(params, batch.pt)
  # loss of h_T on the transformed source T' (labels t ~ B[:, y_i]): <= source_loss + entropy
  soft = jax.nn.softmax(source_logits(head, params, batch.zs), -1) @ label_map.T  # (n_s, K_t)
  t_loss = -jnp.log(jnp.maximum(soft, _PROB_FLOOR))
  weight = (prior[batch.ys] * batch.ws)[:, None] * label_map.T[batch.ys]
  return dict(
      source_loss=weighted_source_loss(params, batch, head),
      entropy=conditional_entropy(params, batch),
      **hd.transfer_metrics(nll, probs, tgt.labels, head, src.features, src.labels),
      transformed_source_loss=jnp.sum(weight * t_loss),
      D=prior, B=label_map,
  )


@jax.jit
def certified_terms(params: LogitTransforms, pair: TaskPair, batch: Batch, head: hd.LinearHead, config) -> dict:
  """:func:`evaluation_terms` and the certified ``W`` with the dense per-class solver
  (:func:`ttjax.solvers.dense_classes`): ``wasserstein = sum_t p_t <round(P_t), C_t>``, class ``t``'s rounded
  Sinkhorn plan (feasible), one class at a time (memory ``n_s x m x K_s``). The Lipschitz constant is 1 (module
  docstring), so ``bound = transformed_source_loss + wasserstein <= source_loss + entropy + wasserstein``.
  ``config``: a resolved :class:`ttjax.bound.BoundConfig`."""
  u, a, v = transport_problems(params, batch, head)
  class_w = solvers.dense_classes(u, a, v, batch.wt, ot.logit_range, epsilon=config.eval_epsilon,
                                  num_iters=config.eval_iters, threshold=config.eval_threshold)
  return with_wasserstein(evaluation_terms(params, pair, batch, head), class_w, batch.pt)


def with_wasserstein(terms: dict, class_w, pt) -> dict:
  """:func:`evaluation_terms` ``terms`` with the certified per-class ``W_t`` (``class_wasserstein (K_t,)``, from
  any certified solver) and ``wasserstein = sum_t p_t W_t``."""
  return dict(terms, wasserstein=jnp.sum(pt * class_w), class_wasserstein=class_w)
