"""Shared plumbing for the transferability scores: host-side validation and small pure linear-algebra kernels.

Every public score validates its inputs on the host with :func:`ttjax.tasks.check_features` and
:func:`ttjax.tasks.check_labels` (clear ``ValueError`` for NaN/inf, bad shapes, labels out of range, empty
classes) and then calls a pure, jitted kernel. When the inputs are JAX tracers (the score is being ``jit``-ed or
``vmap``-ed by the caller) validation is skipped -- it cannot look at traced values -- and ``num_classes`` must be
given as a static Python int.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.tasks import check_features, check_labels

__all__ = [
    "is_traced", "prepare", "prepare_probs", "probs_stats", "check_probs_stats", "float_dtype", "one_hot",
    "class_stats", "eigh_desc", "pinv_eigh", "pca_project", "safe_log", "pick", "run_float64",
]


def is_traced(*xs) -> bool:
  """True if any argument is a JAX tracer (i.e. we are inside ``jit``/``vmap``/``grad``)."""
  return any(isinstance(x, jax.core.Tracer) for x in xs)


def float_dtype(x) -> jnp.dtype:
  """Float dtype for computation: at least float32, float64 only when the input is float64 and x64 is on."""
  return jnp.result_type(jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, jnp.float32)


def run_float64(kernel, *arrays, **static):
  """``kernel(*arrays, **static)`` computed in float64, for scores whose reference code runs in float64.

  Host (non-traced) inputs: floating arrays are cast to float64 and the kernel runs inside a ``jax.enable_x64``
  scope local to this call (x64 need not be on globally); the result is a float64 array. Under the caller's
  ``jit``/``vmap`` the precision cannot be switched, so the kernel runs in the inputs' dtype.
  """
  if is_traced(*arrays):
    return kernel(*arrays, **static)
  with jax.enable_x64(True):
    cast = [jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a)
            for a in arrays]
    return kernel(*cast, **static)


def prepare(features, labels, num_classes: Optional[int], *, name: str,
            min_classes: int = 2) -> tuple[jax.Array, jax.Array, int]:
  """Validate ``features (n, d)`` and ``labels (n,)`` on the host; return ``(Z, y int32, K)`` as JAX arrays.

  Under tracing (``jit``/``vmap`` by the caller) nothing can be checked: ``num_classes`` must be a static int.
  """
  if is_traced(features, labels):
    if num_classes is None:
      raise ValueError(f"{name}: pass num_classes=K (a static int) when calling under jit/vmap")
    z = jnp.asarray(features)
    return z.astype(float_dtype(z)), jnp.asarray(labels).astype(jnp.int32), int(num_classes)
  z = check_features(features, name=f"{name} features")
  y, k = check_labels(labels, z.shape[0], num_classes=num_classes, name=f"{name} labels",
                      min_classes=min_classes)
  zj = jnp.asarray(z)
  return zj.astype(float_dtype(zj)), jnp.asarray(y), k


def prepare_probs(probs, n: int, *, name: str) -> jax.Array:
  """Source-classifier probabilities as a float array ``(n, K_s)``; host-side shape/dtype checks only.

  The content checks (finite, non-negative, rows summing to 1) need a pass over ``n * K_s`` values, so they are
  fused into the score's kernel (:func:`probs_stats`) and enforced afterwards by :func:`check_probs_stats`.
  """
  if is_traced(probs):
    p = jnp.asarray(probs)
    return p.astype(float_dtype(p))
  p = check_probs_shape(probs, n, name)
  pj = jnp.asarray(p)
  return pj.astype(float_dtype(pj))


def check_probs_shape(probs, n: int, name: str) -> np.ndarray:
  """Host-side shape/dtype checks of source probabilities ``(n, K_s)``; returns them as a numpy array."""
  p = np.asarray(probs)
  if p.ndim != 2 or p.shape[1] == 0:
    raise ValueError(f"{name}: expected a 2-D array (n, K_s) of probabilities, got shape {p.shape}")
  if p.shape[0] != n:
    raise ValueError(f"{name}: {p.shape[0]} rows of probabilities for {n} labels")
  if not np.issubdtype(p.dtype, np.floating):
    raise ValueError(f"{name}: expected floating-point probabilities, got dtype {p.dtype}")
  return p


def probs_stats(p: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(# non-finite entries, min entry, max_i |sum_j p_ij - 1|)``, to be fused into a score kernel."""
  finite = jnp.isfinite(p)
  return (jnp.sum(~finite), jnp.min(jnp.where(finite, p, 0.0)),
          jnp.max(jnp.abs(jnp.sum(jnp.where(finite, p, 0.0), axis=1) - 1.0)))


def check_probs_stats(stats, *, name: str, atol: float = 1e-3) -> None:
  """Raise ``ValueError`` if :func:`probs_stats` shows non-finite, negative or unnormalised probabilities."""
  if any(is_traced(s) for s in stats):
    return
  bad, pmin, dev = (float(s) for s in stats)
  if bad:
    raise ValueError(f"{name}: non-finite value(s) (NaN/inf) in {int(bad)} probabilities/rows")
  if pmin < 0:
    raise ValueError(f"{name}: negative probabilities (min {pmin:.3g}); pass softmax outputs")
  if dev > atol:
    raise ValueError(f"{name}: rows do not sum to 1 (max deviation {dev:.3g}); pass probabilities, not logits")


def one_hot(y: jax.Array, k: int, dtype) -> jax.Array:
  """``(n,)`` int labels -> ``(n, k)`` one-hot matrix."""
  return jax.nn.one_hot(y, k, dtype=dtype)


def class_stats(z: jax.Array, y: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(onehot (n, K), counts (K,), class means (K, d))`` -- one matmul, no scatter."""
  oh = one_hot(y, k, z.dtype)
  counts = jnp.sum(oh, axis=0)
  means = (oh.T @ z) / jnp.maximum(counts, 1.0)[:, None]
  return oh, counts, means


def eigh_desc(s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigen-decomposition of a symmetric PSD matrix, eigenvalues in *descending* order, clipped at 0."""
  w, v = jnp.linalg.eigh(0.5 * (s + s.T))
  return jnp.maximum(w[::-1], 0.0), v[:, ::-1]


def pinv_eigh(w: jax.Array, rcond: Optional[float] = None) -> jax.Array:
  """Pseudo-inverse of eigenvalues ``w``: ``1/w`` where ``w > rcond * max(w)``, else 0.

  ``rcond`` defaults to ``len(w) * eps(dtype)`` (the ``numpy.linalg.matrix_rank`` tolerance).
  """
  if rcond is None:
    rcond = w.shape[0] * float(jnp.finfo(w.dtype).eps)
  keep = w > rcond * jnp.max(w)
  return jnp.where(keep, 1.0 / jnp.where(keep, w, 1.0), 0.0)


def pca_project(z: jax.Array, dim: int) -> jax.Array:
  """Project centred ``z (n, d)`` onto its top-``dim`` principal axes -> ``(n, dim)``.

  Axes come from ``eigh`` of the ``d x d`` covariance (or of the ``n x n`` Gram matrix when ``n < d``). Sign
  convention (deterministic, like scikit-learn's ``svd_flip``): each axis is oriented so that its loading of
  largest magnitude is positive. ``dim`` is static; when it exceeds the rank the extra coordinates are 0.
  """
  n, d = z.shape
  zc = z - jnp.mean(z, axis=0)
  if n >= d:
    w, v = eigh_desc(zc.T @ zc)
    v = v[:, :dim]
  else:
    w, u = eigh_desc(zc @ zc.T)
    s = jnp.sqrt(w[:dim])
    v = (zc.T @ u[:, :dim]) / jnp.where(s > 0, s, 1.0)[None, :]
  if v.shape[1] < dim:  # dim > d: pad with zero axes
    v = jnp.pad(v, ((0, 0), (0, dim - v.shape[1])))
  idx = jnp.argmax(jnp.abs(v), axis=0)
  sign = jnp.sign(v[idx, jnp.arange(v.shape[1])])
  v = v * jnp.where(sign == 0, 1.0, sign)[None, :]
  return zc @ v


def safe_log(x: jax.Array) -> jax.Array:
  """``log(max(x, tiny))``: finite for ``x = 0``."""
  return jnp.log(jnp.maximum(x, jnp.finfo(x.dtype).tiny))


def pick(m: jax.Array, y: jax.Array) -> jax.Array:
  """``m[i, y_i]`` for ``m (n, K)``."""
  return jnp.take_along_axis(m, y[:, None], axis=1)[:, 0]
