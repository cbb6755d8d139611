"""PARC: Pairwise Annotation Representation Comparison (Bolya, Mittapalli & Hoffman, 2021)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ttjax.scores._common import is_traced, pca_project, prepare
from ttjax.tasks import standardize

__all__ = ["parc", "spearman_binary", "spearman_levels", "randomized_pca", "randomized_pca_draws",
           "reference_label_ranks"]


def _two_stage_sum(x: jax.Array) -> jax.Array:
  """Sum of a 2-D array row-wise then over rows (keeps float32 error small for ``n^2`` terms)."""
  return jnp.sum(jnp.sum(x, axis=1))


def _centred_midranks(value: jax.Array, valid: jax.Array, m_f: jax.Array) -> jax.Array:
  """Mid-ranks (ties averaged, ``scipy.stats.rankdata``) of a *sorted* 1-D ``value`` whose ``m`` valid entries come
  first, centred and scaled to ``[-1/2, 1/2]`` (0 at invalid entries). Tie groups by cumulative max/min, no
  scatter."""
  size = value.shape[0]
  pos = jnp.arange(size, dtype=jnp.int32)
  same = value[1:] == value[:-1]
  start = lax.cummax(jnp.where(jnp.concatenate([jnp.ones((1,), bool), ~same]), pos, 0))
  end = lax.cummin(jnp.where(jnp.concatenate([~same, jnp.ones((1,), bool)]), pos, size), reverse=True)
  r = ((start + end).astype(m_f.dtype) * 0.5 + 1.0 - 0.5 * (m_f + 1.0)) / m_f
  return jnp.where(valid, r, 0.0)


def _pearson(r: jax.Array, b: jax.Array, m_f: jax.Array) -> jax.Array:
  """Pearson correlation of two 2-D arrays over their ``m`` valid entries (both 0 elsewhere, ``r`` centred)."""
  mean_r = _two_stage_sum(r) / m_f
  mean_b = _two_stage_sum(b) / m_f
  cov = _two_stage_sum(r * b) / m_f - mean_r * mean_b
  var_r = _two_stage_sum(r * r) / m_f - mean_r * mean_r
  var_b = _two_stage_sum(b * b) / m_f - mean_b * mean_b
  den = jnp.sqrt(jnp.maximum(var_r * var_b, 0.0))
  return jnp.where(den > 0, cov / jnp.where(den > 0, den, 1.0), 0.0)


def spearman_binary(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """Spearman correlation between the entries of a non-negative ``a`` and a binary ``b`` over ``mask``.

  All three are 2-D arrays of one shape. Ranks of ``a`` are averaged over ties (``scipy.stats.rankdata``). As
  ``b`` takes two values its ranks are an increasing affine function of ``b``, so Spearman's rho equals Pearson's
  correlation between the ranks of ``a`` and ``b`` itself. One sort does it all: each entry becomes a ``uint32``
  key, the bit pattern of ``a`` (monotone for ``a >= 0``) with its last mantissa bit replaced by ``b`` -- integer
  keys sort several times faster than floats on CPU -- so ``a`` is compared to 23 instead of 24 bits (values
  1 ulp apart count as tied). Masked entries get the largest key and sort last; all sums stay in sorted order.
  """
  shape = a.shape
  bits = lax.bitcast_convert_type(jnp.maximum(a, 0.0).astype(jnp.float32), jnp.uint32)
  key = (bits & jnp.uint32(0xFFFFFFFE)) | b.astype(jnp.uint32)
  key = jnp.sort(jnp.where(mask, key, jnp.uint32(0xFFFFFFFF)).reshape(-1))
  valid = key != jnp.uint32(0xFFFFFFFF)
  m_f = jnp.sum(jnp.sum(mask.astype(jnp.int32), axis=1)).astype(a.dtype)
  r = _centred_midranks(key >> 1, valid, m_f).reshape(shape)
  bf = jnp.where(valid, key & jnp.uint32(1), 0).astype(a.dtype).reshape(shape)
  return _pearson(r, bf, m_f)


def spearman_levels(a: jax.Array, b_rank: jax.Array, mask: jax.Array) -> jax.Array:
  """Spearman correlation between a non-negative ``a`` and a ``b`` given by its ranks ``b_rank``, over ``mask``.

  For a ``b`` with few distinct values whose (mid-)ranks are known in advance (a label dissimilarity with a
  handful of levels). ``a`` is ranked on its full float32 bit pattern (one integer sort carrying ``b_rank``).
  """
  shape = a.shape
  bits = lax.bitcast_convert_type(jnp.maximum(a, 0.0).astype(jnp.float32), jnp.uint32)
  key, rb = lax.sort((jnp.where(mask, bits, jnp.uint32(0xFFFFFFFF)).reshape(-1),
                      jnp.where(mask, b_rank, 0.0).reshape(-1)), num_keys=1)
  valid = key != jnp.uint32(0xFFFFFFFF)
  m_f = jnp.sum(jnp.sum(mask.astype(jnp.int32), axis=1)).astype(a.dtype)
  r = _centred_midranks(key, valid, m_f).reshape(shape)
  return _pearson(r, rb.astype(a.dtype).reshape(shape), m_f)


def _packed_lower_triangle(n: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Indices ``(i, j)`` of the strictly lower triangle of an ``n x n`` matrix packed into a rectangle.

  With ``n' = n`` rounded up to even, packed row ``r < n'/2`` holds row ``r``'s ``r`` entries ``(r, c < r)``
  followed by row ``n'-1-r``'s ``n'-1-r`` entries: ``n'/2 x (n'-1)`` cells, every pair exactly once. Cells
  touching the padding row (odd ``n``) are flagged invalid. Built from ``iota`` (no large constants).
  """
  n2 = n + (n % 2)
  r = lax.broadcasted_iota(jnp.int32, (n2 // 2, n2 - 1), 0)
  c = lax.broadcasted_iota(jnp.int32, (n2 // 2, n2 - 1), 1)
  lower = c < r
  i = jnp.where(lower, r, n2 - 1 - r)
  j = jnp.where(lower, c, c - r)
  valid = (i < n) & (j < n)
  return jnp.minimum(i, n - 1), jnp.minimum(j, n - 1), valid


def randomized_pca_draws(n: int, d: int, dim: int, *, seed: int = 1919, n_oversamples: int = 10) -> np.ndarray:
  """The Gaussian test matrix of scikit-learn's randomized PCA for an ``(n, d)`` input (host side, numpy).

  ``np.random.RandomState(seed).normal(size=(cols, dim + n_oversamples))`` with ``cols = d``, or ``n`` when
  ``n < d`` (scikit-learn then factorises the transpose) -- the draws ``PCA(svd_solver='randomized',
  random_state=seed)`` makes.
  """
  cols = n if n < d else d
  return np.random.RandomState(seed).normal(size=(cols, dim + n_oversamples))


def randomized_pca(z: jax.Array, omega: jax.Array, dim: int, *, n_iter: int = 1) -> jax.Array:
  """scikit-learn's ``PCA(n_components=dim, svd_solver='randomized', iterated_power=n_iter).fit_transform(z)``.

  Halko et al.'s range finder on the centred ``M = z - mean`` (``M^T`` when ``n < d``) with the test matrix
  ``omega`` (:func:`randomized_pca_draws`): ``n_iter`` un-normalised power steps ``Q <- M^T (M Q)`` (scikit-learn's
  ``'auto'`` normaliser for ``n_iter <= 2``), ``Q = qr(M Q)``, ``svd(Q^T M) = U_hat S V^T``; the result is
  ``U S`` with ``U = Q U_hat`` -- the projection of ``M`` onto the sampled subspace expressed in its top ``dim``
  singular directions, not ``M V`` -- each axis signed so its largest-magnitude loading in ``V`` is positive
  (``svd_flip(u_based_decision=False)``). Shapes: ``z (n, d)``, ``omega (cols, r)`` -> ``(n, dim)``.
  """
  zc = z - jnp.mean(z, axis=0)
  transpose = z.shape[0] < z.shape[1]
  m = zc.T if transpose else zc
  q = omega.astype(z.dtype)
  for _ in range(n_iter):
    q = m.T @ (m @ q)
  q, _ = jnp.linalg.qr(m @ q)
  u_hat, s, vt = jnp.linalg.svd(q.T @ m, full_matrices=False)
  u = q @ u_hat
  if transpose:
    left, right = vt[:dim].T, u[:, :dim].T
  else:
    left, right = u[:, :dim], vt[:dim]
  idx = jnp.argmax(jnp.abs(right), axis=1)
  sign = jnp.sign(right[jnp.arange(dim), idx])
  return left * (s[:dim] * jnp.where(sign == 0, 1.0, sign))[None, :]


def reference_label_ranks(y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The label dissimilarity exactly as the reference computes it, ``1 - np.corrcoef(onehot)`` (host, float64).

  Its float64 rounding leaves values like ``2.2e-16`` instead of ``0`` for some same-class pairs (which exactly
  depends on the BLAS), and Spearman ranks them as separate levels. Returns ``(codes (n, n) int32, ranks (L,))``:
  each entry's level among the ``L`` distinct upper-triangle values and that level's mid-rank.
  """
  rdm = 1.0 - np.corrcoef(np.eye(k)[y])
  upper = rdm[np.triu_indices(len(y), 1)]
  levels, counts = np.unique(upper, return_counts=True)
  codes = np.searchsorted(levels, rdm).clip(0, len(levels) - 1).astype(np.int32)
  ends = np.cumsum(counts)
  return codes, (ends - (counts - 1) / 2.0).astype(np.float64)


@functools.partial(jax.jit, static_argnames=("num_classes", "pca_dim"))
def _parc_kernel(z: jax.Array, y: jax.Array, num_classes: int, pca_dim: Optional[int], omega: Optional[jax.Array],
                 label_codes: Optional[jax.Array], level_ranks: Optional[jax.Array]) -> jax.Array:
  if omega is not None:
    x = randomized_pca(z, omega, pca_dim)
  else:
    x = pca_project(z, pca_dim) if pca_dim is not None else z
  x = standardize(x)
  xr = x - jnp.mean(x, axis=1, keepdims=True)
  norm = jnp.sqrt(jnp.sum(xr * xr, axis=1, keepdims=True))
  xr = xr / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)
  dist = 1.0 - xr @ xr.T  # feature RDM: 1 - Pearson correlation between samples
  i, j, valid = _packed_lower_triangle(z.shape[0])  # i > j
  if label_codes is None:
    rho = spearman_binary(dist[i, j], y[i] != y[j], valid)  # label RDM: 0 within a class, K/(K-1) across
  else:
    rho = spearman_levels(dist[i, j], level_ranks[label_codes[j, i]].astype(x.dtype), valid)  # upper triangle
  return 100.0 * rho


def parc(features, labels, *, num_classes: Optional[int] = None, pca_dim: Optional[int] = 32,
         reference: bool = False) -> jax.Array:
  """PARC (Bolya et al., 2021, "Scalable Diverse Model Selection for Accessible Transfer Learning", NeurIPS), on
  the scale of TencentARC/SFDA ``metrics.py``, ``PARC_Score`` (``100 rho``).

  ``PARC = 100 Spearman( triu(1 - corr(Z_hat)), triu(1 - corr(Y)) )``: the Spearman rank correlation between the
  pairwise dissimilarity matrices of the features and of the one-hot labels, over the ``n (n-1) / 2`` distinct
  pairs. ``corr`` is the Pearson correlation between *samples* (rows). The features are PCA-reduced to
  ``pca_dim`` dimensions (32 in the paper; ``None`` to skip; capped at ``min(n, d)``) and z-scored per dimension.
  Range ``[-100, 100]``; higher is better.

  Default (``reference=False``): exact PCA (axes signed as in :func:`pca_project`) and the exact label
  dissimilarity, ``0`` within a class and ``K/(K-1)`` across -- what the paper defines.

  ``reference=True`` reproduces ``PARC_Score`` itself: scikit-learn's *randomized* PCA with
  ``random_state=1919, iterated_power=1`` (:func:`randomized_pca`; numpy draws, no scikit-learn needed), and the
  label dissimilarity as ``1 - np.corrcoef(onehot)`` computes it in float64 (:func:`reference_label_ranks`: its
  round-off levels near 0 are ranked apart, as scipy's ``spearmanr`` does). This builds an ``n x n`` float64
  matrix on the host, like the reference. Differences that remain: the reference caps ``pca_dim`` at ``n`` only
  (scikit-learn then fails for ``d < 32``), and its PCA runs in the input dtype, as ours does.

  Cost: one integer sort of the ``n (n-1) / 2`` dissimilarities (see :func:`spearman_binary`), packed into a
  rectangle -- ``O(n^2 log n)`` time, ``O(n^2)`` memory.
  """
  z, y, k = prepare(features, labels, num_classes, name="parc")
  if pca_dim is not None:
    pca_dim = int(min(pca_dim, z.shape[0], z.shape[1]))
  omega = codes = ranks = None
  if reference:
    if is_traced(z, y):
      raise ValueError("parc: reference=True builds the label dissimilarity on the host; call it outside jit/vmap")
    if pca_dim is not None:
      omega = jnp.asarray(randomized_pca_draws(z.shape[0], z.shape[1], pca_dim), z.dtype)
    codes, ranks = reference_label_ranks(np.asarray(y), k)
    m = z.shape[0] * (z.shape[0] - 1) / 2.0
    codes, ranks = jnp.asarray(codes), jnp.asarray((ranks - 0.5 * (m + 1.0)) / m, z.dtype)  # centred, scaled
  return _parc_kernel(z, y, k, pca_dim, omega, codes, ranks)
