"""SFDA: Self-challenging Fisher Discriminant Analysis (Shao, Zhao, Ge, Wang, Li & Luo, 2022)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from ttjax.scores._common import class_stats, pick, prepare, run_float64

__all__ = ["sfda"]

_MIN_SHRINKAGE = 1e-10  # floor of the adaptive shrinkage, as in the reference code


def _largest_eig_power(a: jax.Array, iters: int = 3) -> jax.Array:
  """The reference code's ``lambda_max(A)`` estimate: 3 double power steps from ``A 1``, returning ``x^T A y``."""
  x = jnp.sum(a, axis=1)
  y = x
  for _ in range(iters):
    t = a @ x
    y = t / jnp.linalg.norm(t)
    t = a @ y
    x = t / jnp.linalg.norm(t)
  return x @ (a @ y)


def _fda_fit(x: jax.Array, y: jax.Array, k: int, lam: Optional[jax.Array]):
  """Regularised Fisher discriminant on ``x (n, d)``: ``(posteriors (n, K), class means (K, d), lam)``.

  ``S_w = sum_k pi_k cov_k`` (``1/n_k`` covariances); ``lam = max(exp(-5 lambda_max(S_w)), 1e-10)`` unless given;
  ``S = (1 - lam) S_w + lam (tr S_w / d) I``; logits ``x^T S^{-1} mu_k - mu_k^T S^{-1} mu_k / 2 + log pi_k``.
  """
  n, d = x.shape
  _, counts, means = class_stats(x, y, k)
  resid = x - means[y]
  s_w = resid.T @ resid / n
  if lam is None:
    lam = jnp.maximum(jnp.exp(-5.0 * _largest_eig_power(s_w)), _MIN_SHRINKAGE)
  s = (1.0 - lam) * s_w + lam * (jnp.trace(s_w) / d) * jnp.eye(d, dtype=x.dtype)
  coef = jsl.solve(s, means.T, assume_a="pos").T  # mu_k S^{-1}, (K, d)
  intercept = -0.5 * jnp.sum(means * coef, axis=1) + jnp.log(counts / n)
  return jax.nn.softmax(x @ coef.T + intercept[None, :], axis=1), means, lam


@functools.partial(jax.jit, static_argnames=("num_classes", "store_dtype"))
def _sfda_kernel(z: jax.Array, y: jax.Array, num_classes: int, store_dtype: str) -> jax.Array:
  probs, means, lam = _fda_fit(z, y, num_classes, None)
  conf = pick(jax.nn.softmax(probs, axis=1), y)[:, None]  # second softmax, on probabilities
  others = (jnp.sum(means, axis=0)[None, :] - means) / (num_classes - 1)  # mean of the other classes' means
  z_mix = (conf * z + (1.0 - conf) * others[y]).astype(store_dtype).astype(z.dtype)
  probs, _, _ = _fda_fit(z_mix, y, num_classes, lam)
  return jnp.mean(pick(probs, y))


def sfda(features, labels, *, num_classes: Optional[int] = None) -> jax.Array:
  """SFDA score (Shao et al., 2022, "Not All Models Are Equal: Predicting Model Transferability in a
  Self-challenging Fisher Space", ECCV), following the authors' code: TencentARC/SFDA, ``metrics.py``,
  ``SFDA_Score`` (with its ``SFDA`` class and ``utils.iterative_A``).

  1. Regularised Fisher discriminant: ``S_w = sum_k pi_k cov_k`` (``1/n_k``), shrunk as
     ``(1 - lam) S_w + lam (tr S_w / d) I`` with ``lam = max(exp(-5 lambda_max(S_w)), 1e-10)`` (``lambda_max`` by
     the reference's 3 power steps); ``p(y=k|x) = softmax_k(x^T S^{-1} mu_k - mu_k^T S^{-1} mu_k / 2 + log pi_k)``.
  2. ConfMix: ``p_i = softmax(p(.|x_i))[y_i]`` (the reference applies a second softmax to the probabilities) and
     ``x_i <- p_i x_i + (1 - p_i) mbar_{y_i}``, ``mbar_k`` the mean of the *other* classes' means.
  3. Refit on the mixed features with the *same* ``lam``; ``SFDA = (1/n) sum_i p(y_i | x_i)`` (no log).

  The reference projects onto all ``d`` generalised eigenvectors ``V`` of ``(S_b, S)``; as ``V^T S V = I``,
  ``V V^T = S^{-1}``, applied here by a Cholesky solve. Quirks kept: the mixed features are stored in the input
  dtype (the reference writes them into the caller's array, float32 for float32 features). Computed in float64
  (:func:`run_float64`), like the reference; under the caller's ``jit``/``vmap`` in the input dtype. Range
  ``(0, 1]``; higher is better.
  """
  z, y, k = prepare(features, labels, num_classes, name="sfda")
  return run_float64(_sfda_kernel, z, y, num_classes=k, store_dtype=np.dtype(z.dtype).name)
