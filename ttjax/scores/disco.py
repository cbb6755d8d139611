"""DISCO: transferability from the Distribution of Spectral Components (Zhang et al., AAAI 2025)."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from ttjax.scores._common import class_stats, one_hot, pick, prepare

__all__ = ["disco"]


@functools.partial(jax.jit, static_argnames=("num_classes", "num_groups", "center", "batch_size"))
def _disco_kernel(z: jax.Array, y: jax.Array, num_classes: int, num_groups: int, center: bool, reg: float,
                  batch_size: int) -> jax.Array:
  n, d = z.shape
  x = z - jnp.mean(z, axis=0) if center else z
  u, s, _ = jnp.linalg.svd(x, full_matrices=False)  # x = U S V^T, r = min(n, d) triplets, s decreasing
  r = s.shape[0]
  keep = s > r * jnp.finfo(s.dtype).eps * s[0]  # numerically zero singular directions: no weight, no coordinate
  s = jnp.where(keep, s, 0.0)
  proj = u * s[None, :]  # x V = U S: the coordinates of the spectral components
  size = -(-r // num_groups)
  pad = num_groups * size - r
  s = jnp.pad(s, (0, pad))
  proj = jnp.pad(proj, ((0, 0), (0, pad)))
  keep = jnp.pad(keep, (0, pad))
  ratio = jnp.sum(s.reshape(num_groups, size), axis=1) / jnp.maximum(jnp.sum(s), jnp.finfo(s.dtype).tiny)

  counts = jnp.sum(one_hot(y, num_classes, z.dtype), axis=0)
  log_prior = jnp.log(counts / n)

  def group_score(args):
    p, m = args  # (n, size) coordinates of group g, (size,) real (not padded / not null) directions
    _, _, mu = class_stats(p, y, num_classes)
    res = p - mu[y]
    w = res.T @ res / n  # pooled within-class covariance (shared by the classes)
    tau = reg * jnp.sum(jnp.where(m, jnp.diag(w), 0.0)) / jnp.maximum(jnp.sum(m), 1)
    w = w + jnp.diag(jnp.where(m, tau, 1.0))
    chol = jnp.linalg.cholesky(w)
    solve = lambda a: jax.scipy.linalg.solve_triangular(chol, a.T, lower=True).T
    pw, muw = solve(p), solve(mu)  # whitened: Mahalanobis distances become Euclidean
    q = jnp.sum(pw * pw, axis=1)[:, None] - 2.0 * pw @ muw.T + jnp.sum(muw * muw, axis=1)[None, :]
    logit = -0.5 * q + log_prior[None, :]
    return jnp.mean(jnp.exp(pick(logit, y) - jax.nn.logsumexp(logit, axis=1)))  # S_ncc^g

  groups = proj.T.reshape(num_groups, size, n).transpose(0, 2, 1)  # (G, n, size), contiguous singular indices
  s_ncc = jax.lax.map(group_score, (groups, keep.reshape(num_groups, size)), batch_size=batch_size)
  return jnp.sum(ratio * s_ncc)


def disco(features, labels, *, num_classes: Optional[int] = None, num_groups: int = 8, center: bool = False,
          reg: float = 1e-6, batch_size: int = 8) -> jax.Array:
  """DISCO for classification (Zhang, Shu, Chen, Long, Guo & Yang, 2025, "Assessing Pre-trained Models for Transfer
  Learning through Distribution of Spectral Components", AAAI; arXiv:2412.19085). No official code exists.

  ``features (n, d)``, ``labels (n,)`` -> scalar in ``[0, 1]``, higher is better. The paper's steps:

  1. SVD of the feature matrix, ``F = U S V^T = sum_i s_i u_i v_i^T``; each ``s_i u_i v_i^T`` is a spectral
     component.
  2. The ``r = min(n, d)`` components, by decreasing singular value, are cut into ``G = num_groups`` consecutive
     groups; group ``g`` has the singular value ratio ``S_ratio^g = sum_{i in g} s_i / sum_i s_i``.
  3. The transferability of group ``g``, ``S_ncc^g``, is a nearest-class-centre classifier with Gaussian classes
     sharing one covariance (the NCC of NCTI, Wang et al. CVPR 2023, that DISCO builds on):
     ``p(c | f) = softmax_c(-1/2 (f - mu_c)^T Sigma^{-1} (f - mu_c) + log pi_c)`` on the group's features
     ``F_g = U_g S_g V_g^T``, and ``S_ncc^g = (1/n) sum_i p(y_i | f_i^g)``.
  4. ``DISCO = sum_g S_ratio^g * S_ncc^g``.

  Only the paper's abstract and Figure 3 caption (S_ratio^g, S_ncc^g, S_lr^g; weighted sum over the spectral
  components) could be read when this was written, not its method section: no equation numbers are cited, and
  step 3's form is NCTI's. Choices, where the paper leaves room or its text could not be confirmed:

  * ``num_groups=8`` groups of ``ceil(r / G)`` components (the last may be shorter, or empty when
    ``G`` does not divide ``r`` well: e.g. ``r = 9``, ``G = 8`` gives
    five groups: four of 2 and one of 1);
  * features are not centred before the SVD (``center=False``): the paper decomposes the extracted features;
  * ``Sigma`` is the pooled within-class covariance ``(1/n) sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T``, ``mu_c``
    the class means and ``pi_c = n_c / n``, all fitted on the same ``n`` samples that are scored (resubstitution,
    like NCTI); ``Sigma`` gets ``reg`` times its mean diagonal added so it stays invertible;
  * the classifier runs on the group's coordinates ``F V_g = U_g S_g``, which gives the same posteriors as on
    ``F_g`` in ``d`` dimensions (orthonormal ``V_g``; ``Sigma`` restricted to the group's span);
  * the probability of the true class is averaged (not the 0/1 accuracy), no temperature;
  * singular values below ``r * eps * s_1`` count as 0 (no weight, no coordinate);
  * no hard-example subsampling (the paper's optional speed-up for large ``n``) and no regression variant
    (``S_lr^g``): all ``n`` samples, classification only.

  Groups are scored ``batch_size`` at a time by ``lax.map``. The last group is padded with unit-variance zero
  coordinates, which leave its posteriors unchanged.
  """
  z, y, k = prepare(features, labels, num_classes, name="disco")
  if int(num_groups) < 1:
    raise ValueError(f"disco: num_groups must be >= 1, got {num_groups}")
  if not reg >= 0:
    raise ValueError(f"disco: reg must be >= 0, got {reg}")
  groups = min(int(num_groups), min(z.shape))
  return _disco_kernel(z, y, k, groups, bool(center), float(reg), int(batch_size))
