"""TransRate (Huang, Huang, Li, Xie & Wei, 2022): the coding-rate gain of the features from knowing the labels."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.scores._common import is_traced, prepare

__all__ = ["transrate", "coding_rate", "group_by_class"]


def coding_rate(gram: jax.Array, scale: jax.Array) -> jax.Array:
  """``R = 1/2 logdet(I + scale * G)`` for a PSD Gram matrix ``G`` (``Z^T Z`` or ``Z Z^T``: same non-zero
  spectrum), by Cholesky: ``I + scale G`` has all eigenvalues ``>= 1``, so this is stable in float32."""
  m = gram.shape[-1]
  a = jnp.eye(m, dtype=gram.dtype) + scale[..., None, None] * 0.5 * (gram + jnp.swapaxes(gram, -1, -2))
  chol = jnp.linalg.cholesky(a)
  return jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def group_by_class(z: jax.Array, y: jax.Array, num_classes: int, max_class_size: int) -> jax.Array:
  """Rows of ``z (n, d)`` grouped by class into ``(K, max_class_size, d)``, zero-padded (static shapes).

  Requires ``max_class_size >= max_k n_k``; rows beyond it would be dropped.
  """
  n = z.shape[0]
  order = jnp.argsort(y, stable=True)
  ys = y[order]
  counts = jnp.bincount(y, length=num_classes)
  start = jnp.cumsum(counts) - counts
  pos = jnp.arange(n) - start[ys]
  idx = jnp.full((num_classes, max_class_size), n, dtype=jnp.int32).at[ys, pos].set(order.astype(jnp.int32),
                                                                        mode="drop")
  zp = jnp.concatenate([z, jnp.zeros((1, z.shape[1]), z.dtype)], axis=0)
  return zp[idx]


@functools.partial(jax.jit, static_argnames=("num_classes", "max_class_size"))
def _transrate_kernel(z: jax.Array, y: jax.Array, num_classes: int, eps: float, max_class_size: int) -> jax.Array:
  n, d = z.shape
  zc = z - jnp.mean(z, axis=0)
  gram = zc.T @ zc if n >= d else zc @ zc.T
  r_z = coding_rate(gram, jnp.asarray(1.0 / (n * eps), z.dtype))
  groups = group_by_class(zc, y, num_classes, max_class_size)  # (K, m, d)
  counts = jnp.bincount(y, length=num_classes).astype(z.dtype)
  if max_class_size <= d:
    grams = jnp.einsum("kmd,kpd->kmp", groups, groups)  # zero padding rows add identity blocks: logdet 0
  else:
    grams = jnp.einsum("kmd,kme->kde", groups, groups)
  r_zy = coding_rate(grams, 1.0 / (counts * eps))
  return r_z - jnp.mean(r_zy)


def transrate(features, labels, *, num_classes: Optional[int] = None, eps: float = 1e-4,
              max_class_size: Optional[int] = None) -> jax.Array:
  """TransRate (Huang et al., 2022, "Frustratingly Easy Transferability Estimation", ICML).

  ``TrR(Z, Y) = R(Z, eps) - R(Z | Y, eps)`` on centred features, with the coding rate
  ``R(Z, eps) = 1/2 logdet(I_d + Z^T Z / (n eps))`` and ``R(Z | Y, eps) = (1/K) sum_k R(Z_k, eps)``, ``Z_k`` the
  ``n_k`` rows of class ``k`` (coding rate with ``1/(n_k eps)``). These are the formulas of the authors' public
  code (scale ``1/(n eps)``, ``eps = 1e-4``, plain average over classes).

  Each log-determinant is taken on the smaller Gram matrix (``logdet(I + A^T A) = logdet(I + A A^T)``) by
  Cholesky. The per-class terms are batched over classes by grouping rows into a zero-padded
  ``(K, max_class_size, d)`` array; ``max_class_size`` (static) is the largest class count, computed on the host
  (pass it explicitly under ``jit``/``vmap``, else ``n`` is used). Higher is better.
  """
  z, y, k = prepare(features, labels, num_classes, name="transrate")
  if max_class_size is None:
    max_class_size = z.shape[0] if is_traced(y) else int(np.bincount(np.asarray(y), minlength=k).max())
  return _transrate_kernel(z, y, k, eps, int(max_class_size))
