"""H-score (Bao et al. 2019) and its shrinkage-regularised version (Ibrahim et al. 2022).

Both measure how much of the feature covariance is explained by the class-conditional means -- the quantity a
linear classifier on ``f`` can exploit. Higher is better.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from ttjax.scores._common import class_stats, eigh_desc, pinv_eigh, prepare

__all__ = ["hscore", "regularized_hscore", "ledoit_wolf_shrinkage"]


def _between_term(zc: jax.Array, y: jax.Array, k: int, evecs: jax.Array, inv_w: jax.Array) -> jax.Array:
  """``tr(S^+ cov(E[f|y]))`` with ``cov(E[f|y]) = sum_k p_k m_k m_k^T`` (centred class means ``m_k``)."""
  _, counts, means = class_stats(zc, y, k)
  p = counts / zc.shape[0]
  proj = means @ evecs  # (K, d): class means in the eigenbasis of S
  return jnp.sum(p[:, None] * proj * proj * inv_w[None, :])


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _hscore_kernel(z: jax.Array, y: jax.Array, num_classes: int, rcond: Optional[float]) -> jax.Array:
  zc = z - jnp.mean(z, axis=0)
  w, v = eigh_desc(zc.T @ zc / z.shape[0])
  return _between_term(zc, y, num_classes, v, pinv_eigh(w, rcond))


def hscore(features, labels, *, num_classes: Optional[int] = None, rcond: Optional[float] = None) -> jax.Array:
  """H-score of features for a labelling (Bao et al., 2019, "An information-theoretic approach to transferability
  in task transfer learning", ICIP).

  ``H(f) = tr( cov(f)^+ cov(E[f | y]) )``, with ``cov(f)`` the ``(d, d)`` feature covariance and
  ``cov(E[f|y]) = sum_k p_k (mu_k - mu)(mu_k - mu)^T`` the covariance of the class-conditional means. Both use the
  same ``1/n`` normalisation (the reference code's ``1/(n-1)`` cancels). The pseudo-inverse is taken through
  ``eigh`` with a relative cutoff ``rcond`` (default ``d * eps``), so ``n < d`` and constant features are fine.
  Range ``[0, K-1]``; higher is better.

  Args:
    features: ``(n, d)`` target features ``Z``.
    labels: ``(n,)`` integer labels in ``[0, K)``.
    num_classes: ``K`` (required under ``jit``/``vmap``).
    rcond: relative eigenvalue cutoff of the pseudo-inverse.
  Returns:
    scalar H-score.
  """
  z, y, k = prepare(features, labels, num_classes, name="hscore")
  return _hscore_kernel(z, y, k, rcond)


def ledoit_wolf_shrinkage(zc: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ledoit-Wolf (2004) shrinkage of the covariance of centred ``zc (n, d)`` towards ``mu I``.

  Returns ``(alpha, emp_cov)``: ``alpha = min(b^2, d^2) / d^2`` with ``d^2 = ||S - mu I||_F^2 / d`` and
  ``b^2 = (1/(d n^2)) sum_i ||z_i z_i^T - S||_F^2`` (the estimator of scikit-learn's ``ledoit_wolf_shrinkage``,
  written with row norms: ``sum_i ||z_i||^4`` instead of the ``d x d`` matrix ``(Z^2)^T Z^2``).
  """
  n, d = zc.shape
  emp = zc.T @ zc / n
  mu = jnp.trace(emp) / d
  delta_ = jnp.sum(emp * emp)
  beta_ = jnp.sum(jnp.sum(zc * zc, axis=1) ** 2)
  beta = (beta_ / n - delta_) / (d * n)
  delta = (delta_ - d * mu * mu) / d
  beta = jnp.minimum(beta, delta)
  alpha = jnp.where(beta > 0, beta / jnp.where(delta > 0, delta, 1.0), 0.0)
  return alpha, emp


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _reg_hscore_kernel(z: jax.Array, y: jax.Array, num_classes: int, rcond: Optional[float]) -> jax.Array:
  zc = z - jnp.mean(z, axis=0)
  d = z.shape[1]
  alpha, emp = ledoit_wolf_shrinkage(zc)
  mu = jnp.trace(emp) / d
  w, v = eigh_desc((1.0 - alpha) * emp + alpha * mu * jnp.eye(d, dtype=z.dtype))
  n = z.shape[0]
  between_unbiased = n / (n - 1.0)  # the reference's np.cov (1/(n-1)) of the class means; Ledoit-Wolf uses 1/n
  return between_unbiased * (1.0 - alpha) * _between_term(zc, y, num_classes, v, pinv_eigh(w, rcond))


def regularized_hscore(features, labels, *, num_classes: Optional[int] = None,
                       rcond: Optional[float] = None) -> jax.Array:
  """Shrinkage-regularised H-score (Ibrahim, Ponomareva & Mazumder, 2022, "Newer is not always better: rethinking
  transferability metrics, their peculiarities, stability and performance", ECML-PKDD).

  ``H_alpha(f) = tr( (Sigma_f^(alpha))^{-1} (1 - alpha) cov(E[f | y]) )`` with the Ledoit-Wolf shrinkage estimate
  ``Sigma_f^(alpha) = (1 - alpha) S + alpha (tr(S)/d) I`` and its optimal ``alpha``
  (:func:`ledoit_wolf_shrinkage`); the between-class covariance is shrunk by the same ``(1 - alpha)``. With
  ``alpha > 0`` the covariance is well conditioned even for ``n << d``, which is where the plain H-score is
  unstable. Higher is better.

  Follows thuml/Transfer-Learning-Library ``tllib/ranking/hscore.py``, ``regularized_h_score``: its Ledoit-Wolf
  covariance (scikit-learn's) is the ``1/n`` empirical covariance, while ``cov(E[f|y])`` is ``np.cov``'s
  ``1/(n-1)``; we keep that mix, so the score is ``n/(n-1)`` times the all-``1/n`` formula above.

  Args / returns: as :func:`hscore`.
  """
  z, y, k = prepare(features, labels, num_classes, name="regularized_hscore")
  return _reg_hscore_kernel(z, y, k, rcond)
