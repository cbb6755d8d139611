"""Speed of ttjax.scores against straightforward numpy implementations (public-reference-code style).

Synthetic clustered task: n = 10,000 samples, d = 768 features, K = 100 classes (``--small``: 2,000 / 128 / 20).
ttjax is timed warm (one compile call first, then the best of ``--repeats`` runs, ``block_until_ready``); the numpy
counterpart runs in the same process on the same data. ``ratio = numpy / ttjax`` (> 1: ttjax is faster).

  python benchmarks/scores_speed.py [--small] [--only logme,hscore] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import ot as pot
import scipy.linalg
import scipy.stats

import ttjax.scores as S


def make_data(n, d, k, ks, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.permutation(np.arange(n) % k).astype(np.int32)
  centres = rng.normal(size=(k, d)) * 0.5
  z = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
  logits = rng.normal(size=(k, ks))[y] * 2.0 + rng.normal(size=(n, ks))
  p = np.exp(logits - logits.max(1, keepdims=True))
  p = (p / p.sum(1, keepdims=True)).astype(np.float32)
  ys = rng.permutation(np.arange(n) % k).astype(np.int32)
  zs = (rng.normal(size=(k, d))[ys] * 0.5 + rng.normal(size=(n, d))).astype(np.float32)
  return z, y, p, zs, ys


# ------------------------------------------------------------------------------------- numpy counterparts


def np_class_means(z, y, k):
  m = np.zeros((k, z.shape[1]), z.dtype)
  np.add.at(m, y, z)
  return m / np.bincount(y, minlength=k)[:, None]


def np_hscore(z, y):
  f = z - z.mean(0)
  g = np_class_means(f, y, y.max() + 1)[y]
  covf = np.cov(f, rowvar=False)
  covg = np.cov(g, rowvar=False)
  return np.trace(np.linalg.pinv(covf, rcond=1e-15) @ covg)


def np_reg_hscore(z, y):
  from sklearn.covariance import LedoitWolf
  f = z - z.mean(0)
  lw = LedoitWolf(assume_centered=False).fit(f)
  g = np_class_means(f, y, y.max() + 1)[y]
  covg = np.cov(g, rowvar=False)  # tllib: np.cov's 1/(n-1)
  return np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * covg))


def np_logme(z, y):
  """The public LogME fixed-point code: truncated SVD via f^T f, python loop over classes, float64."""
  f = z.astype(np.float64)
  n, d = f.shape
  u_, s, vh = np.linalg.svd(f.T @ f)
  s = np.sqrt(s)
  keep = int(np.sum(s > 1e-10))
  u = (f @ vh.T)[:, :keep] / s[:keep]
  sigma = s[:keep] ** 2
  evidences = []
  for c in range(y.max() + 1):
    t_ = (y == c).astype(np.float64)
    x2 = (u.T @ t_) ** 2
    res_x2 = t_ @ t_ - x2.sum()
    alpha, beta = 1.0, 1.0
    for _ in range(11):
      t = alpha / beta
      gamma = (sigma / (sigma + t)).sum()
      m2 = (sigma * x2 / ((t + sigma) ** 2)).sum()
      res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
      alpha = gamma / (m2 + 1e-5)
      beta = (n - gamma) / (res2 + 1e-5)
      if abs(alpha / beta - t) / t <= 1e-3:
        break
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
          - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    evidences.append(ev / n)
  return np.mean(evidences)


def np_transrate(z, y, eps=1e-4):
  def rate(a):
    n_, d_ = a.shape
    return 0.5 * np.linalg.slogdet(np.eye(d_) + a.T @ a / (n_ * eps))[1]
  z = z - z.mean(0)
  return rate(z) - np.mean([rate(z[y == c]) for c in range(y.max() + 1)])


def np_pca(z, dim):
  zc = z - z.mean(0)
  w, v = np.linalg.eigh(zc.T @ zc)
  return zc @ v[:, ::-1][:, :dim]


def np_gbc(z, y, dim=64):
  """stable_transfer get_gbc_score (spherical, variances floored at 1e-4) on exact PCA-64 features."""
  x = np_pca(z, dim)
  k = y.max() + 1
  mu = np.stack([x[y == c].mean(0) for c in range(k)])
  var = np.stack([np.maximum(x[y == c].var(0), 1e-4) for c in range(k)]).mean(1)
  total = 0.0
  for i in range(k):
    for j in range(k):
      if i != j:
        s = (var[i] + var[j]) / 2
        db = np.sum((mu[i] - mu[j]) ** 2 / s) / 8 + 0.5 * (np.log(s) - 0.5 * np.log(var[i]) - 0.5 * np.log(var[j]))
        total += np.exp(-db)
  return -total


def np_parc(z, y, dim=32):
  x = np_pca(z, dim)
  x = (x - x.mean(0)) / x.std(0)
  rdm1 = 1 - np.corrcoef(x)
  rdm2 = (y[:, None] != y[None, :]).astype(np.float64)  # clean labels, as ttjax's default
  tri = np.tril_indices(len(y), -1)
  return 100 * scipy.stats.spearmanr(rdm1[tri], rdm2[tri])[0]


def np_sfda(z, y):
  """TencentARC/SFDA SFDA_Score steps (float64, generalised eigh)."""
  def iterative_a(a, iters=3):
    x = a.sum(axis=1)
    for _ in range(iters):
      t = a @ x
      yy = t / np.linalg.norm(t)
      t = a @ yy
      x = t / np.linalg.norm(t)
    return x @ a @ yy

  def shrink(c, lam):
    return (1 - lam) * c + lam * np.trace(c) / c.shape[0] * np.eye(c.shape[0])

  k = y.max() + 1

  def fit_predict(x, lam):
    priors = np.bincount(y) / len(y)
    means = np_class_means(x, y, k)
    sw = np.zeros((x.shape[1], x.shape[1]))
    for c in range(k):
      sw += priors[c] * np.cov(x[y == c], rowvar=False, bias=True)
    if lam is None:
      lam = max(np.exp(-5 * iterative_a(sw)), 1e-10)
    ssw = shrink(sw, lam)
    evals, evecs = scipy.linalg.eigh(shrink(np.cov(x, rowvar=False, bias=True), lam) - ssw, ssw)
    coef = means @ evecs @ evecs.T
    logits = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), lam

  x = z.astype(np.float64)
  prob, lam = fit_predict(x, None)
  prob = np.exp(prob) / np.exp(prob).sum(1, keepdims=True)
  means = np_class_means(x, y, k)
  pc = prob[np.arange(len(y)), y][:, None]
  x = pc * x + (1 - pc) * ((means.sum(0)[None] - means) / (k - 1))[y]
  prob, _ = fit_predict(x, lam)
  return prob[np.arange(len(y)), y].mean()


def np_ncc(z, y):
  x = z - z.mean(0)
  k = y.max() + 1
  counts = np.bincount(y, minlength=k)
  means = np_class_means(x, y, k)
  d2 = (x * x).sum(1)[:, None] - 2 * x @ means.T + (means * means).sum(1)[None]
  own = d2[np.arange(len(y)), y] * (counts[y] / np.maximum(counts[y] - 1, 1)) ** 2
  d2[np.arange(len(y)), y] = np.where(counts[y] > 1, own, np.inf)
  return np.mean(d2.argmin(1) == y)


def np_knn(z, y, k=5):
  sq = (z * z).sum(1)
  d2 = sq[:, None] + sq[None] - 2 * z @ z.T
  np.fill_diagonal(d2, np.inf)
  nb = np.argpartition(d2, k, axis=1)[:, :k]
  order = np.argsort(np.take_along_axis(d2, nb, 1), axis=1)
  ny = y[np.take_along_axis(nb, order, 1)]
  ncls = y.max() + 1
  votes = np.zeros((len(y), ncls), int)
  first = np.full((len(y), ncls), k)
  for j in range(k):
    votes[np.arange(len(y)), ny[:, j]] += 1
    first[np.arange(len(y)), ny[:, j]] = np.minimum(first[np.arange(len(y)), ny[:, j]], j)
  return np.mean((votes * (k + 1) - first).argmax(1) == y)


def np_disco(z, y, num_groups=8, reg=1e-6):
  """DISCO as ttjax defines it (:func:`ttjax.scores.disco`): SVD F = U S V^T, ``num_groups`` consecutive groups of
  ``ceil(r / G)`` components, each scored by Gaussian classes with one pooled within-class covariance (+ ``reg``
  times its mean diagonal) on ``U_g S_g``; the mean posterior of the true class, weighted by the group's share of
  sum(s)."""
  u, s, _ = np.linalg.svd(z, full_matrices=False)
  keep = s > len(s) * np.finfo(np.float32).eps * s[0]
  r, k = len(s), y.max() + 1
  size = -(-r // min(num_groups, r))
  onehot = np.eye(k)[y]
  log_prior = np.log(onehot.mean(0))
  total = 0.0
  for lo in range(0, r, size):
    idx = np.arange(lo, min(lo + size, r))[keep[lo:lo + size]]
    if len(idx) == 0:
      continue
    p = u[:, idx] * s[idx]
    mu = (onehot.T @ p) / onehot.sum(0)[:, None]
    resid = p - mu[y]
    w = resid.T @ resid / len(y)
    w += reg * np.trace(w) / len(idx) * np.eye(len(idx))
    wi = np.linalg.inv(w)
    pw, mw = p @ wi, mu @ wi
    q = (pw * p).sum(1)[:, None] - 2 * pw @ mu.T + (mw * mu).sum(1)[None]
    logit = -0.5 * q + log_prior[None]
    logit -= logit.max(1, keepdims=True)
    e = np.exp(logit)
    total += s[idx].sum() / s[keep].sum() * (e[np.arange(len(y)), y] / e.sum(1)).mean()
  return total


def np_otce(zt, yt, zs, ys, eps=0.01):
  c = (zs * zs).sum(1)[:, None] + (zt * zt).sum(1)[None] - 2 * zs @ zt.T
  a, b = np.full(len(zs), 1 / len(zs)), np.full(len(zt), 1 / len(zt))
  plan = pot.sinkhorn(a, b, c, eps * c.mean(), method="sinkhorn_log", numItermax=2000, stopThr=1e-4)
  w = np.sum(plan * c)
  joint = np.eye(ys.max() + 1)[ys].T @ plan @ np.eye(yt.max() + 1)[yt]
  ratio = joint / joint.sum(1, keepdims=True)
  nz = joint > 0
  return -(w + -np.sum(joint[nz] * np.log(ratio[nz])))


def np_leep_from(probs, y):
  k = y.max() + 1
  joint = np.eye(k)[y].T @ probs / len(y)
  cond = joint / joint.sum(0, keepdims=True)
  return np.mean(np.log((probs @ cond.T)[np.arange(len(y)), y]))


def np_nce(probs, y):
  z = probs.argmax(1)
  joint = np.zeros((y.max() + 1, probs.shape[1]))
  np.add.at(joint, (y, z), 1.0)
  joint /= len(y)
  pz = joint.sum(0, keepdims=True)
  nz = joint > 0
  return np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1))[nz]))


def np_nleep(z, y, iters=100, ratio=0.8, seed=0):
  zc = z - z.mean(0)
  w_, v = np.linalg.eigh(zc.T @ zc)
  w_, v = w_[::-1], v[:, ::-1]
  p = int(np.searchsorted(np.cumsum(w_) / w_.sum(), ratio) + 1)
  x = zc @ v[:, :p]
  k = min(5 * (y.max() + 1), len(y))  # 5 K components, as ttjax's default
  reg = 1e-6 * x.var(0).mean()
  rng = np.random.default_rng(seed)
  mu = x[rng.choice(len(x), k, replace=False)]
  var = np.tile(x.var(0) + reg, (k, 1))
  wt = np.full(k, 1 / k)

  def post():
    inv = 1 / var
    q = (x * x) @ inv.T - 2 * x @ (mu * inv).T + (mu * mu * inv).sum(1)[None]
    lp = -0.5 * q - 0.5 * np.log(2 * np.pi * var).sum(1)[None] + np.log(wt)[None]
    lp -= lp.max(1, keepdims=True)
    r = np.exp(lp)
    return r / r.sum(1, keepdims=True)

  for _ in range(iters):
    r = post()
    nk = r.sum(0) + 1e-10
    mu = r.T @ x / nk[:, None]
    var = np.maximum(r.T @ (x * x) / nk[:, None] - mu * mu, 0) + reg
    wt = nk / nk.sum()
  return np_leep_from(post(), y)


# ------------------------------------------------------------------------------------------------ driver


def timeit(fn, repeats):
  best = np.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best * 1e3


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--small", action="store_true", help="n=2000, d=128, K=20 for a quick run")
  ap.add_argument("--only", default="", help="comma-separated score names")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--numpy-repeats", type=int, default=1)
  args = ap.parse_args()
  n, d, k = (2000, 128, 20) if args.small else (10_000, 768, 100)
  ks = 200 if args.small else 1000
  z, y, p, zs, ys = make_data(n, d, k, ks)
  key = jax.random.key(0)

  cases = {
      "hscore": (lambda: S.hscore(z, y), lambda: np_hscore(z, y)),
      "regularized_hscore": (lambda: S.regularized_hscore(z, y), lambda: np_reg_hscore(z, y)),
      "logme": (lambda: S.logme(z, y), lambda: np_logme(z, y)),
      "transrate": (lambda: S.transrate(z, y), lambda: np_transrate(z, y)),
      "gbc": (lambda: S.gbc(z, y), lambda: np_gbc(z, y)),
      "parc": (lambda: S.parc(z, y), lambda: np_parc(z, y)),
      "sfda": (lambda: S.sfda(z, y), lambda: np_sfda(z, y)),
      "ncc": (lambda: S.ncc(z, y), lambda: np_ncc(z, y)),
      "knn": (lambda: S.knn(z, y, k=5), lambda: np_knn(z, y, 5)),
      "disco": (lambda: S.disco(z, y), lambda: np_disco(z, y)),
      "otce": (lambda: S.otce(z, y, source_features=zs, source_labels=ys),
               lambda: np_otce(z, y, zs, ys)),
      "leep": (lambda: S.leep(p, y), lambda: np_leep_from(p.astype(np.float64), y)),
      "nce": (lambda: S.nce(p, y), lambda: np_nce(p, y)),
      "nleep": (lambda: S.nleep(z, y, key=key), lambda: np_nleep(z, y)),
  }
  names = [s for s in args.only.split(",") if s] or list(cases)
  print(f"n={n} d={d} K={k} (source classes {ks}); jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"{'score':<20}{'ttjax ms':>12}{'numpy ms':>12}{'ratio':>9}   values (ttjax / numpy)")
  for name in names:
    jfn, nfn = cases[name]
    jval = float(jax.block_until_ready(jfn()))  # compile + warm-up
    tj = timeit(jfn, args.repeats)
    t0 = time.perf_counter()
    nval = float(nfn())
    tn = (time.perf_counter() - t0) * 1e3
    if args.numpy_repeats > 1:
      tn = min(tn, timeit(nfn, args.numpy_repeats - 1))
    print(f"{name:<20}{tj:>12.1f}{tn:>12.1f}{tn / tj:>8.1f}x   {jval:.5g} / {nval:.5g}", flush=True)


if __name__ == "__main__":
  main()
