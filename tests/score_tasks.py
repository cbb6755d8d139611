"""Small classification tasks and the DISCO re-derivation shared by the score tests."""
import numpy as np
import scipy.special

N, D, K = 60, 8, 3


def make_task(seed, sep, n=N, d=D, k=K):
  """Balanced labels; features = class centre * sep + anisotropic Gaussian noise (float32)."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  rng.shuffle(y)
  centres = rng.normal(size=(k, d)) * sep
  z = centres[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + rng.normal(size=d)
  return z.astype(np.float32), y.astype(np.int32)


def ref_disco(z, y, num_groups=8, center=False, reg=1e-6):
  """DISCO from its formula, float64: SVD F = U S V^T; G consecutive groups of ceil(r / G) singular triplets (the
  numerically zero ones given no weight and no coordinate); S_ratio^g = sum_{i in g} s_i / sum s; S_ncc^g =
  mean_i p(y_i | f_i^g), Gaussian classes with one shared (pooled within-class) covariance + reg * its mean diagonal
  on the group's features F V_g = U_g S_g; DISCO = sum_g S_ratio^g S_ncc^g."""
  z = np.asarray(z, np.float64)
  if center:
    z = z - z.mean(0)
  u, s, _ = np.linalg.svd(z, full_matrices=False)
  keep = s > len(s) * np.finfo(np.float32).eps * s[0]
  r = len(s)
  size = -(-r // min(num_groups, r))
  k = y.max() + 1
  log_prior = np.log(np.bincount(y, minlength=k) / len(y))
  total = 0.0
  for lo in range(0, r, size):
    idx = [i for i in range(lo, min(lo + size, r)) if keep[i]]
    if not idx:
      continue
    p = u[:, idx] * s[idx]
    mu = np.stack([p[y == c].mean(0) for c in range(k)])
    w = sum((p[y == c] - mu[c]).T @ (p[y == c] - mu[c]) for c in range(k)) / len(y)
    w = w + reg * np.trace(w) / len(idx) * np.eye(len(idx))
    diff = p[:, None, :] - mu[None, :, :]  # (n, K, group size)
    q = np.einsum("ncs,st,nct->nc", diff, np.linalg.inv(w), diff)
    post = scipy.special.softmax(-0.5 * q + log_prior[None, :], axis=1)
    total += s[idx].sum() / s[keep].sum() * post[np.arange(len(y)), y].mean()
  return total
