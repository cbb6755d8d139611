"""The transformations that carry the source task toward the target task.

Parameters are one pytree, :class:`Transforms`, of unconstrained arrays:

* ``D = softmax(d_logits)`` -- class prior over the ``K_s`` source classes, ``(K_s,)``;
* ``B = softmax(b_logits, axis=0)`` -- label map ``(K_t, K_s)``: column ``s`` is a distribution over target
  classes, the target label of a source sample of class ``s`` is drawn from ``B[:, s]``;
* ``z -> A z + b`` -- feature map, ``A (d, d)``, ``b (d,)``, with a learned approximate inverse ``A_bar (d, d)``.

The transformed source classifier is ``h_T(z) = B softmax(h_S(A_bar (z - b)))`` (probabilities ``(K_t,)``).
A *setting* names which parameters are learned; any subset can be frozen on top.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Transforms", "SETTINGS", "PARAM_NAMES", "trainable_names", "random_label_map", "matched_prior",
    "class_centroids", "centroid_plans", "label_map_from_plan", "centroid_label_map",
    "init_transforms", "feature_map", "inverse_map",
]

PARAM_NAMES = ("d_logits", "b_logits", "A", "b", "A_bar")

#: Which parameters each setting learns (the reference code's names).
SETTINGS = {
    "fixed_all": (),
    "learned_a": ("A", "b", "A_bar"),
    "learned_all": PARAM_NAMES,
}

_LOG_FLOOR = -30.0  # logit of a probability-zero entry: exp(-30) ~ 1e-13, finite gradients


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Transforms:
  """The learnable transformations (a pytree; every field is an array leaf)."""

  d_logits: jax.Array  # (K_s,)
  b_logits: jax.Array  # (K_t, K_s)
  A: jax.Array  # (d, d)
  b: jax.Array  # (d,)
  A_bar: jax.Array  # (d, d)

  @property
  def D(self) -> jax.Array:
    """Class prior over source classes, ``(K_s,)``, sums to 1."""
    return jax.nn.softmax(self.d_logits)

  @property
  def B(self) -> jax.Array:
    """Label map ``(K_t, K_s)``, each column sums to 1."""
    return jax.nn.softmax(self.b_logits, axis=0)


def trainable_names(setting: str = "learned_all", freeze: Iterable[str] = ()) -> tuple[str, ...]:
  """Names of the learned parameters for a setting, minus ``freeze``."""
  if setting not in SETTINGS:
    raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
  freeze = tuple(freeze)
  unknown = set(freeze) - set(PARAM_NAMES)
  if unknown:
    raise ValueError(f"cannot freeze unknown parameter(s) {sorted(unknown)}; parameters are {PARAM_NAMES}")
  return tuple(n for n in SETTINGS[setting] if n not in freeze)


def random_label_map(key: jax.Array, num_source: int, num_target: int) -> np.ndarray:
  """A random hard label map ``(K_t, K_s)``: source classes in random order assigned round-robin to target classes.

  It is a permutation when ``K_s == K_t``; onto when ``K_s > K_t``; one-to-one (not onto) when ``K_s < K_t``.
  """
  order = np.asarray(jax.random.permutation(key, num_source))
  targets = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), num_target))
  b = np.zeros((num_target, num_source), np.float32)
  b[targets[np.arange(num_source) % num_target], order] = 1.0
  return b


def matched_prior(label_map: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
  """The source prior ``D`` that makes ``B D`` closest to ``p_T`` for a hard ``B``: split ``p_T(t)`` evenly over
  the source classes mapped to ``t`` (target classes no source maps to get no mass; ``D`` is renormalised)."""
  label_map = np.asarray(label_map, np.float64)
  hard = label_map.argmax(0)
  fan_in = np.bincount(hard, minlength=label_map.shape[0])
  d = np.asarray(target_prior, np.float64)[hard] / fan_in[hard]
  return (d / d.sum()).astype(np.float32)


def class_centroids(z, y, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Class means ``(K, d)`` and class frequencies ``(K,)`` of a labelled feature set (float32)."""
  y = np.asarray(y)
  p = np.bincount(y, minlength=num_classes) / len(y)
  mu = jax.ops.segment_sum(jnp.asarray(z), jnp.asarray(y), num_classes) / (p * len(y))[:, None]
  return np.asarray(mu), p.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("epsilon",))
def centroid_plans(mu_s: jax.Array, mu_t: jax.Array, ps: jax.Array, pt: jax.Array, epsilon: float = 0.1):
  """Entropic OT plans between class centroids for ``P`` pairs in one compiled program: ``mu_s (P, K_s, d)``,
  ``mu_t (P, K_t, d)``, priors ``ps (P, K_s)``, ``pt (P, K_t)`` -> ``(P, K_s, K_t)``.

  ``P = argmin <P, C> - eps H(P)`` over couplings of ``(p_S, p_T)``, ``C_st = ||mu_s - nu_t||``, ott-jax Sinkhorn
  with ``eps = epsilon * mean(C)``. Pairs run one after another (``lax.map``): a ``vmap`` would run every pair
  until the slowest converges, and its different float rounding (~1e-7) would reach the learned ``B`` via Adam.
  """
  from ttjax import ot  # local: transforms are otherwise OT-free
  solve = lambda args: ot.sinkhorn(ot.euclidean(args[0], args[1]), args[2], args[3], epsilon=epsilon,
                                   num_iters=2000, threshold=1e-6).matrix
  return jax.lax.map(solve, (mu_s, mu_t, ps, pt))


def label_map_from_plan(plan) -> np.ndarray:
  """``B[t, s] = P[s, t] / sum_t' P[s, t']`` for a plan ``(K_s, K_t)``: ``(K_t, K_s)``, columns summing to 1."""
  plan = np.asarray(plan, np.float64)
  b = plan.T / np.maximum(plan.sum(1), 1e-30)[None, :]
  return (b / b.sum(0, keepdims=True)).astype(np.float32)


def centroid_label_map(source_z, source_y, target_z, target_y, num_source: int, num_target: int, *,
                       epsilon: float = 0.1) -> np.ndarray:
  """A data-driven label map: entropic OT between the class centroids (:func:`centroid_plans`).

  With centroids ``mu_s``, ``nu_t`` and priors ``p_S``, ``p_T``, solve the entropic OT plan ``P`` between them and
  return ``B[t, s] = P[s, t] / p_S(s)``, ``(K_t, K_s)``. Then ``B p_S = p_T``. Related tasks start near their label
  correspondence; for unrelated labels the target centroids coincide and ``B`` stays spread.
  """
  (mu_s, ps), (mu_t, pt) = class_centroids(source_z, source_y, num_source), class_centroids(target_z, target_y,
                                                                                            num_target)
  return label_map_from_plan(centroid_plans(mu_s[None], mu_t[None], ps[None], pt[None], epsilon)[0])


def _logits(p: np.ndarray, axis: int = -1) -> jax.Array:
  p = np.asarray(p, np.float64)
  p = p / p.sum(axis=axis, keepdims=True)
  return jnp.asarray(np.where(p > 0, np.log(np.maximum(p, 1e-300)), _LOG_FLOOR), jnp.float32)


def init_transforms(key: jax.Array, num_source: int, num_target: int, dim: int, *, setting: str = "learned_all",
                    source_prior: Optional[np.ndarray] = None, target_prior: Optional[np.ndarray] = None,
                    label_map: Optional[np.ndarray] = None, prior: Optional[np.ndarray] = None,
                    init_scale: float = 0.01) -> Transforms:
  """Initial transforms for a setting.

  * ``fixed_all`` / ``learned_a``: ``B`` is ``label_map`` if given, else :func:`random_label_map`; ``D`` is
    ``prior`` if given, else :func:`matched_prior` (so ``B D`` matches ``p_T`` as well as a hard map can).
  * ``learned_all``: ``D = p_S`` (or ``prior``); ``B`` is ``label_map`` if given (e.g. :func:`centroid_label_map`,
    which :func:`ttjax.bound.analyse` passes by default), else near uniform with ``init_scale`` noise.
  * ``A = A_bar = I``, ``b = 0``.
  """
  k_map, k_noise = jax.random.split(key)
  trainable_names(setting)  # validates the name
  if label_map is not None:
    label_map = np.asarray(label_map, np.float32)
    if label_map.shape != (num_target, num_source):
      raise ValueError(f"label_map: expected shape (K_t, K_s) = {(num_target, num_source)}, got {label_map.shape}")
    if np.any(label_map < 0) or not np.allclose(label_map.sum(0), 1.0, atol=1e-4):
      raise ValueError("label_map: every column must be a probability distribution over target classes")
  if setting == "learned_all":
    b_logits = (_logits(label_map, axis=0) if label_map is not None
                else init_scale * jax.random.normal(k_noise, (num_target, num_source)))
    d0 = prior if prior is not None else (source_prior if source_prior is not None
                                           else np.full(num_source, 1.0 / num_source))
  else:
    if label_map is None:
      label_map = random_label_map(k_map, num_source, num_target)
    b_logits = _logits(label_map, axis=0)
    tp = target_prior if target_prior is not None else np.full(num_target, 1.0 / num_target)
    d0 = prior if prior is not None else matched_prior(label_map, tp)
  eye = jnp.eye(dim, dtype=jnp.float32)
  return Transforms(d_logits=_logits(d0), b_logits=jnp.asarray(b_logits, jnp.float32), A=eye,
                    b=jnp.zeros((dim,), jnp.float32), A_bar=eye)


def feature_map(params: Transforms, z: jax.Array) -> jax.Array:
  """``z -> A z + b`` on rows: ``(n, d) -> (n, d)``."""
  return z @ params.A.T + params.b


def inverse_map(params: Transforms, z: jax.Array) -> jax.Array:
  """``z -> A_bar (z - b)`` on rows: ``(n, d) -> (n, d)``."""
  return (z - params.b) @ params.A_bar.T
