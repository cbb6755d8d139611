"""Scores built on a source classifier's predictions: LEEP, NCE, and N-LEEP (LEEP on a Gaussian mixture)."""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ttjax.scores._common import (check_probs_shape, check_probs_stats, is_traced, one_hot, pca_project, pick,
                                  prepare, prepare_probs, probs_stats, safe_log)
from ttjax.tasks import check_labels

__all__ = ["leep", "nce", "nleep", "fit_gmm_diag", "gmm_posteriors", "gmm_log_joint"]


def _labels(labels, n: int, num_classes: Optional[int], name: str):
  if is_traced(labels):
    if num_classes is None:
      raise ValueError(f"{name}: pass num_classes=K (a static int) when calling under jit/vmap")
    return jnp.asarray(labels).astype(jnp.int32), int(num_classes)
  y, k = check_labels(labels, n, num_classes=num_classes, name=f"{name} labels", min_classes=2)
  return jnp.asarray(y), k


def _leep_value(probs: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
  n = probs.shape[0]
  joint = one_hot(y, num_classes, probs.dtype).T @ probs / n  # P(y, z), (K, K_s)
  p_z = jnp.sum(joint, axis=0)
  cond = joint / jnp.where(p_z > 0, p_z, 1.0)[None, :]  # P(y | z)
  eep = probs @ cond.T  # (n, K): sum_z P(y|z) theta(z|x_i)
  return jnp.mean(safe_log(pick(eep, y)))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _leep_kernel(probs: jax.Array, y: jax.Array, num_classes: int):
  return _leep_value(probs, y, num_classes), probs_stats(probs)


def leep(source_probs, labels, *, num_classes: Optional[int] = None) -> jax.Array:
  """LEEP, the Log Expected Empirical Prediction (Nguyen, Hassner, Seeger & Archambeau, 2020, "LEEP: A New
  Measure to Evaluate Transferability of Learned Representations", ICML).

  With ``theta(x_i) (n, K_s)`` the source model's class probabilities on the target inputs:
  ``P(y, z) = (1/n) sum_{i: y_i = y} theta_z(x_i)``, ``P(y | z) = P(y, z) / P(z)`` and
  ``LEEP = (1/n) sum_i log( sum_z P(y_i | z) theta_z(x_i) )`` (log clipped at the smallest normal float).
  ``LEEP <= 0``; higher is better.
  """
  n = int(np.shape(labels)[0])
  y, k = _labels(labels, n, num_classes, "leep")
  p = prepare_probs(source_probs, n, name="leep source_probs")
  value, stats = _leep_kernel(p, y, k)
  check_probs_stats(stats, name="leep source_probs")
  return value


@functools.partial(jax.jit, static_argnames=("num_classes", "num_source_classes"))
def _nce_kernel(z: jax.Array, y: jax.Array, num_classes: int, num_source_classes: int) -> jax.Array:
  """NCE from the source labels ``z (n,)``: ``sum P(y, z) log(P(y, z) / P(z))``."""
  n, ks = y.shape[0], num_source_classes
  joint = jnp.bincount(y * ks + z, length=num_classes * ks).reshape(num_classes, ks) / n  # P(y, z)
  p_z = jnp.sum(joint, axis=0, keepdims=True)
  ratio = joint / jnp.where(p_z > 0, p_z, 1.0)
  return jnp.sum(jnp.where(joint > 0, joint * jnp.log(jnp.where(joint > 0, ratio, 1.0)), 0.0))


def nce(source_probs, labels, *, num_classes: Optional[int] = None) -> jax.Array:
  """NCE, Negative Conditional Entropy (Tran, Nguyen & Hassner, 2019, "Transferability and Hardness of Supervised
  Classification Tasks", ICCV).

  The source task's labels on the target inputs are the source model's argmax predictions
  ``z_i = argmax theta(x_i)``; with the empirical joint ``P(y, z)`` of ``(y_i, z_i)``,
  ``NCE = -H(Y | Z) = sum_{y,z} P(y, z) log( P(y, z) / P(z) )``. ``NCE <= 0``; higher is better.

  The only ``O(n K_s)`` work is the argmax (and the input checks), so for host (numpy) inputs it is done with
  numpy before the jitted ``O(n + K K_s)`` kernel; under ``jit``/``vmap`` it is ``jnp.argmax``.
  """
  n = int(np.shape(labels)[0])
  y, k = _labels(labels, n, num_classes, "nce")
  name = "nce source_probs"
  if is_traced(source_probs):
    p = jnp.asarray(source_probs)
    return _nce_kernel(jnp.argmax(p, axis=1).astype(jnp.int32), y, k, p.shape[1])
  p = check_probs_shape(source_probs, n, name)
  rows = p.sum(axis=1)  # NaN/inf in a row shows up in its sum: one pass instead of isfinite over n * K_s
  check_probs_stats((np.sum(~np.isfinite(rows)), p.min() if np.all(np.isfinite(rows)) else 0.0,
                     np.max(np.abs(rows - 1.0))), name=name)
  return _nce_kernel(jnp.asarray(np.argmax(p, axis=1).astype(np.int32)), y, k, p.shape[1])


def gmm_log_joint(x: jax.Array, weights: jax.Array, means: jax.Array, variances: jax.Array) -> jax.Array:
  """``log(w_c N(x_i; mu_c, diag(var_c)))`` ``(n, C)`` of a diagonal Gaussian mixture."""
  inv = 1.0 / variances  # (C, p)
  quad = (x * x) @ inv.T - 2.0 * x @ (means * inv).T + jnp.sum(means * means * inv, axis=1)[None, :]
  log_norm = -0.5 * (jnp.sum(jnp.log(variances), axis=1) + x.shape[1] * math.log(2.0 * math.pi))
  return -0.5 * quad + log_norm[None, :] + jnp.log(weights)[None, :]


def gmm_posteriors(x: jax.Array, weights: jax.Array, means: jax.Array, variances: jax.Array) -> jax.Array:
  """Posterior ``p(c | x_i)`` ``(n, C)`` of a diagonal Gaussian mixture, by log-sum-exp."""
  return jax.nn.softmax(gmm_log_joint(x, weights, means, variances), axis=1)


def fit_gmm_diag(x: jax.Array, num_components: int, key: jax.Array, *, num_iters: int = 100, tol: float = 1e-3,
                 reg_covar: float = 1e-6, active: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """EM for a diagonal-covariance Gaussian mixture on ``x (n, p)`` in a ``lax.while_loop``.

  Initialisation (deterministic given ``key``): means at the ``num_components`` distinct rows
  ``jax.random.choice(key, n, (C,), replace=False)``, every variance the per-dimension variance of ``x``, equal
  weights. E-step: responsibilities by log-sum-exp; M-step: ``N_c = sum_i r_ic``, ``mu_c = sum_i r_ic x_i / N_c``,
  ``var_c = sum_i r_ic x_i^2 / N_c - mu_c^2 + reg`` with ``reg = reg_covar * mean(var(x))`` (scikit-learn's rule,
  with ``reg_covar`` relative to the data scale). Stops, like scikit-learn, once the mean log-likelihood per sample
  changes by at most ``tol`` between two E-steps (``tol=0``: always ``num_iters`` steps), or after ``num_iters``.
  ``active`` (number of leading columns that are used; the rest must be 0) only sets the mean in ``reg``: zero
  columns add the same constant to every component and leave the posteriors unchanged.
  Returns ``(weights (C,), means (C, p), variances (C, p))``.
  """
  n, p = x.shape
  p_used = p if active is None else active
  reg = reg_covar * jnp.sum(jnp.var(x, axis=0)) / p_used + jnp.finfo(x.dtype).tiny
  idx = jax.random.choice(key, n, (num_components,), replace=False)
  means = x[idx]
  variances = jnp.broadcast_to(jnp.var(x, axis=0) + reg, (num_components, p))
  weights = jnp.full((num_components,), 1.0 / num_components, x.dtype)

  def body(state):
    (w, mu, var), prev, _, it = state
    logp = gmm_log_joint(x, w, mu, var)
    lse = jax.nn.logsumexp(logp, axis=1, keepdims=True)
    resp = jnp.exp(logp - lse)
    nk = jnp.sum(resp, axis=0) + 10.0 * jnp.finfo(x.dtype).eps
    mu = (resp.T @ x) / nk[:, None]
    var = jnp.maximum((resp.T @ (x * x)) / nk[:, None] - mu * mu, 0.0) + reg
    ll = jnp.mean(lse)
    return (nk / jnp.sum(nk), mu, var), ll, jnp.abs(ll - prev), it + 1

  def cond(state):
    _, _, change, it = state
    return (it < num_iters) & (change > tol)

  inf = jnp.asarray(jnp.inf, x.dtype)
  params, _, _, _ = lax.while_loop(cond, body, ((weights, means, variances), -inf, inf, 0))
  return params


@functools.partial(jax.jit, static_argnames=("num_classes", "pca_dim", "num_components", "num_iters"))
def _nleep_kernel(z, y, key, active, num_classes: int, pca_dim: int, num_components: int, num_iters: int,
                  tol: float, reg_covar: float) -> jax.Array:
  x = pca_project(z, pca_dim)
  x = jnp.where(jnp.arange(pca_dim)[None, :] < active, x, 0.0)  # keep the first `active` principal axes
  w, mu, var = fit_gmm_diag(x, num_components, key, num_iters=num_iters, tol=tol, reg_covar=reg_covar,
                            active=active)
  return _leep_value(gmm_posteriors(x, w, mu, var), y, num_classes)


def _bucket(p: int, cap: int) -> int:
  """``p`` rounded up to a power of two, at most ``cap``: the static PCA width the kernel is compiled for."""
  return int(min(1 << max(int(p) - 1, 0).bit_length(), cap))


@jax.jit
def _pca_spectrum(z: jax.Array) -> jax.Array:
  zc = z - jnp.mean(z, axis=0)
  gram = zc.T @ zc if z.shape[0] >= z.shape[1] else zc @ zc.T
  return jnp.maximum(jnp.linalg.eigvalsh(gram)[::-1], 0.0)


def _pca_dim_for_variance(z: jax.Array, ratio: float) -> int:
  """Smallest number of principal axes explaining at least ``ratio`` of the variance (host side)."""
  s = np.asarray(_pca_spectrum(z), dtype=np.float64)
  if s.sum() <= 0:
    return 1
  return int(min(np.searchsorted(np.cumsum(s) / s.sum(), ratio) + 1, s.size))


def nleep(features, labels, *, key: Optional[jax.Array] = None, num_classes: Optional[int] = None,
          variance_ratio: float = 0.8, pca_dim: Optional[int] = None, num_components: Optional[int] = None,
          component_ratio: int = 5, num_iters: int = 100, tol: float = 1e-3, reg_covar: float = 1e-6) -> jax.Array:
  """N-LEEP (Li, Jia, Zhu, Fang, Ng, Kim, Liu & Chen, 2021, "Ranking Neural Checkpoints", CVPR).

  LEEP (:func:`leep`) with the source head replaced by a Gaussian mixture fitted to the target features, so no
  source classifier is needed. As in the paper and its public ports (google-research
  ``stable_transfer/transferability/nleep.py`` ``get_nleep_score``; TencentARC/SFDA ``metrics.py`` ``NLEEP``):
  features PCA-reduced keeping ``variance_ratio`` (80%) of the variance -- or to ``pca_dim`` dimensions if given
  (required under ``jit``/``vmap``) -- and ``num_components = component_ratio * K`` components (``5 K``; capped at
  ``n``). The mixture's posteriors ``p(c | x_i)`` play the role of the source probabilities. Higher is better;
  ``N-LEEP <= 0``.

  Deviations from those references (which call scikit-learn's ``GaussianMixture``): covariances are *diagonal*
  (scikit-learn's default is full), which keeps EM at ``O(n C p)`` per step and stable in float32; the means start
  at ``C`` random samples (:func:`fit_gmm_diag`, explicit PRNG ``key``, ``None`` = ``jax.random.key(0)``; scikit-
  learn starts from k-means); EM stops at scikit-learn's rule (``tol`` on the mean log-likelihood, at most
  ``num_iters`` steps); and the LEEP value keeps the log (the SFDA port drops it). Results therefore match those
  references only in ranking tendency, not in value.

  Compilation: the PCA width is a static shape, so it is rounded up to a power of two (at most ``min(n, d)``)
  and the axes beyond the data-chosen dimension are zeroed, which leaves the diagonal mixture's posteriors
  unchanged; tasks of one shape compile at most ``log2 min(n, d)`` times instead of once per dimension.
  """
  z, y, k = prepare(features, labels, num_classes, name="nleep")
  if key is None:
    key = jax.random.key(0)
  cap = int(min(z.shape[0], z.shape[1]))
  if pca_dim is None:
    if is_traced(z):
      raise ValueError("nleep: pass pca_dim (static) when calling under jit/vmap")
    active = _pca_dim_for_variance(z, variance_ratio)
    width = _bucket(active, cap)
  else:
    active = width = int(min(pca_dim, cap))
  if num_components is None:
    c = int(min(component_ratio * k, z.shape[0]))
  else:
    c = int(num_components)
    if c > z.shape[0]:
      raise ValueError(f"nleep: {c} mixture components for {z.shape[0]} samples")
  return _nleep_kernel(z, y, key, jnp.asarray(active, jnp.int32), k, width, c, int(num_iters), float(tol),
                       reg_covar)
