"""ttjax.scores against independent numpy/scipy implementations written here from each paper's formula.

Every reference below is float64 numpy/scipy/scikit-learn/POT code and never calls ttjax; ttjax runs in float32.
All tasks share one shape (n=60, d=8, K=3) so each jitted kernel compiles once for this file.
"""

import jax
import numpy as np
import ot as pot
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
from sklearn.covariance import LedoitWolf

import ttjax.scores as S
from score_tasks import make_task, ref_disco

N, D, K = 60, 8, 3
RTOL, ATOL = 1e-4, 1e-6
PARC_ATOL = 1e-3  # PARC is 100 rho: 1e-5 in rho, the float32 feature dissimilarities ranked against float64 ones




TASKS = {"random0": make_task(0, 0.0), "random1": make_task(1, 0.0), "clustered2": make_task(2, 3.0),
         "clustered3": make_task(3, 1.5)}
CLUSTERED = ["clustered2", "clustered3"]


def close(got, want, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(float(got), float(want), rtol=rtol, atol=atol)


def f64(z):
  return np.asarray(z, dtype=np.float64)


def onehot(y, k):
  return np.eye(k)[y]


def pca_ref(z, dim):
  """PCA by SVD; each axis signed so its largest-|loading| entry is positive."""
  zc = z - z.mean(0)
  _, _, vt = np.linalg.svd(zc, full_matrices=False)
  vt = vt[:dim]
  sign = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
  return zc @ (vt * sign[:, None]).T


# ----------------------------------------------------------------------------------------------- references


def ref_hscore(z, y):
  """Bao et al. 2019: tr(pinv(cov f) cov(E[f|y]))."""
  z = f64(z)
  g = np.zeros_like(z)
  for c in np.unique(y):
    g[y == c] = z[y == c].mean(0)
  covf = np.cov(z, rowvar=False, bias=True)
  covg = np.cov(g, rowvar=False, bias=True)
  return np.trace(np.linalg.pinv(covf, rcond=1e-10) @ covg)


def ref_reg_hscore(z, y):
  """tllib ranking/hscore.py regularized_h_score steps: centre, scikit-learn LedoitWolf (1/n), np.cov (1/(n-1))."""
  f = f64(z)
  f = f - f.mean(0, keepdims=True)
  lw = LedoitWolf(assume_centered=False).fit(f)
  g = np.zeros_like(f)
  for c in range(y.max() + 1):
    g[y == c] = f[y == c].mean(0)
  covg = np.cov(g, rowvar=False)
  return np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-15) @ ((1 - lw.shrinkage_) * covg))


def ref_logme(z, y, tol=1e-12):
  """You et al. 2021, per-class fixed point from one SVD (numpy, python loop over classes)."""
  f = f64(z)
  n, d = f.shape
  u, s, _ = np.linalg.svd(f, full_matrices=False)
  sigma = s ** 2
  out = []
  for c in range(y.max() + 1):
    t_ = (y == c).astype(np.float64)
    x2 = (u.T @ t_) ** 2
    res_x2 = t_ @ t_ - x2.sum()
    alpha, beta = 1.0, 1.0
    for _ in range(10000):
      t = alpha / beta
      gamma = (sigma / (sigma + t)).sum()
      m2 = (sigma * x2 / (t + sigma) ** 2).sum()
      res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
      alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
      if abs(alpha / beta - t) / t <= tol:
        break
    t = alpha / beta
    m2 = (sigma * x2 / (t + sigma) ** 2).sum()
    res2 = (x2 / (1 + sigma / t) ** 2).sum() + res_x2
    logdet = np.log(alpha + beta * sigma).sum() + (d - sigma.size) * np.log(alpha)
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * logdet - beta / 2 * res2 - alpha / 2 * m2
          - n / 2 * np.log(2 * np.pi))
    out.append(ev / n)
  return np.mean(out)


def ref_transrate(z, y, eps=1e-4):
  """Huang et al. 2022 (public code): R(Z) - mean_k R(Z_k), R = 1/2 logdet(I + Z^T Z / (n eps))."""
  z = f64(z)
  z = z - z.mean(0)

  def rate(a):
    n_, d_ = a.shape
    return 0.5 * np.linalg.slogdet(np.eye(d_) + a.T @ a / (n_ * eps))[1]

  return rate(z) - np.mean([rate(z[y == c]) for c in range(y.max() + 1)])


def ref_gbc(z, y, pca_dim=64, gaussian_type="spherical"):
  """google-research stable_transfer gbc.py get_gbc_score, on its pipeline's exact PCA (sklearn, svd_solver='full')."""
  from sklearn.decomposition import PCA
  x = f64(z) if pca_dim is None else PCA(n_components=min(pca_dim, *z.shape), svd_solver="full").fit_transform(f64(z))
  stats = {}
  for c in np.unique(y):
    xc = x[y == c]
    stats[c] = (xc.mean(0), np.maximum(xc.var(0), 1e-4))
  total = 0.0
  for c1 in stats:
    for c2 in stats:
      if c1 != c2:
        (m1, s1), (m2, s2) = stats[c1], stats[c2]
        if gaussian_type == "spherical":
          s1, s2 = np.mean(s1), np.mean(s2)  # scalars: the log terms below are then summed once
        avg = (s1 + s2) / 2
        first = np.sum((m1 - m2) ** 2 / avg) / 8
        second = np.sum(np.log(avg)) - 0.5 * np.sum(np.log(s1)) - 0.5 * np.sum(np.log(s2))
        total += np.exp(-(first + 0.5 * second))
  return -total


def ref_parc(z, y, pca_dim=32):
  """Bolya et al. 2021 as defined: exact PCA, z-score, 100 spearman(1 - corrcoef(feats), clean 0 / K/(K-1) labels)."""
  x = f64(z) if pca_dim is None else pca_ref(f64(z), min(pca_dim, *z.shape))
  sd = x.std(0)
  x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
  rdm1 = 1 - np.corrcoef(x)
  k = y.max() + 1
  rdm2 = (y[:, None] != y[None, :]) * (k / (k - 1.0))
  tri = np.triu_indices(len(y), 1)
  return 100 * scipy.stats.spearmanr(rdm1[tri], rdm2[tri])[0]


def ref_parc_score(x, y, n_dims=32):
  """TencentARC/SFDA metrics.py PARC_Score steps: sklearn randomized PCA (random_state=1919, iterated_power=1),
  StandardScaler, 1 - np.corrcoef of features and of one-hot labels, upper triangles, 100 * spearmanr."""
  from sklearn.decomposition import PCA
  from sklearn.preprocessing import StandardScaler
  if n_dims is not None:
    x = PCA(n_components=min(n_dims, *x.shape), svd_solver="randomized", random_state=1919,
            iterated_power=1).fit_transform(x)
  labels = np.eye(len(np.unique(y)))[y]
  x = StandardScaler().fit_transform(x)
  rdm1, rdm2 = 1 - np.corrcoef(x), 1 - np.corrcoef(labels)
  tri = np.triu_indices(len(y), 1)
  return scipy.stats.spearmanr(rdm1[tri], rdm2[tri])[0] * 100


def ref_sfda(x, y):
  """TencentARC/SFDA metrics.py SFDA_Score steps (SFDA class, utils.iterative_A): float64 statistics, generalised
  eigh(S_b, shrunk S_w), second softmax, ConfMix towards the other classes' mean, refit with the first lambda. The
  mixed features are written into the caller's array, so they keep its dtype."""
  x = np.array(x)
  k = y.max() + 1

  def iterative_a(a):
    v = a.sum(axis=1)
    for _ in range(3):
      t = a @ v
      u = t / np.linalg.norm(t, 2)
      t = a @ u
      v = t / np.linalg.norm(t, 2)
    return v @ a @ u

  def shrunk(cov, lam):
    out = (1 - lam) * cov
    out.flat[::cov.shape[0] + 1] += lam * np.trace(cov) / cov.shape[0]
    return out

  def class_means(x):
    means = np.zeros((k, x.shape[1]))
    np.add.at(means, y, x)
    return means / np.bincount(y)[:, None]

  def fit_predict(x, lam):
    priors = np.bincount(y) / float(len(y))
    means = class_means(x)
    sw = sum(priors[c] * np.atleast_2d(np.cov(x[y == c].T, bias=1)) for c in range(k))
    if lam is None:
      lam = max(np.exp(-5 * iterative_a(sw)), 1e-10)
    st = shrunk(np.cov(np.asarray(x).T, bias=1), lam)
    ssw = shrunk(sw, lam)
    evals, evecs = scipy.linalg.eigh(st - ssw, ssw)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    scores = x @ coef.T - 0.5 * np.diag(means @ coef.T) + np.log(priors)
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), lam

  prob, lam = fit_predict(x, None)
  prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
  means = class_means(x)
  for c in range(k):
    idx = np.where(y == c)[0]
    p = prob[idx, c][:, None]
    x[idx] = p * x[idx] + (1 - p) * (means.sum(0) - means[c]) / (k - 1)
  prob, _ = fit_predict(x, lam)
  return prob[np.arange(len(y)), y].mean()


def ref_ncc(z, y):
  """Leave-one-out nearest class centroid (explicit loop)."""
  z = f64(z)
  k = y.max() + 1
  correct = 0
  for i in range(len(y)):
    keep = np.arange(len(y)) != i
    dists = []
    for c in range(k):
      m = keep & (y == c)
      dists.append(np.sum((z[i] - z[m].mean(0)) ** 2) if m.any() else np.inf)
    correct += int(np.argmin(dists) == y[i])
  return correct / len(y)


def ref_knn(z, y, k):
  """Leave-one-out kNN; vote ties go to the class whose first neighbour is nearest."""
  z = f64(z)
  d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  correct = 0
  for i in range(len(y)):
    nb = y[np.argsort(d2[i], kind="stable")[:k]]
    counts = {c: int((nb == c).sum()) for c in set(nb)}
    best = max(counts.values())
    pred = next(c for c in nb if counts[c] == best)
    correct += int(pred == y[i])
  return correct / len(y)


def ref_leep(probs, y):
  """Nguyen et al. 2020."""
  probs = f64(probs)
  k = y.max() + 1
  joint = np.stack([probs[y == c].sum(0) for c in range(k)]) / len(y)
  cond = joint / joint.sum(0, keepdims=True)
  return np.mean(np.log((probs @ cond.T)[np.arange(len(y)), y]))


def ref_nce(probs, y):
  """Tran et al. 2019: -H(Y | Z) with Z the source argmax labels."""
  zlab = np.argmax(probs, 1)
  joint = np.zeros((y.max() + 1, probs.shape[1]))
  np.add.at(joint, (y, zlab), 1.0)
  joint /= len(y)
  pz = joint.sum(0, keepdims=True)
  nz = joint > 0
  return np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1))[nz]))


def ref_nleep(z, y, key, num_iters=100, tol=1e-3, ratio=0.8, reg_covar=1e-6, component_ratio=5):
  """Li et al. 2021: PCA keeping 80% variance, 5 K-component diagonal GMM by EM (same init rule; stops when the
  mean log-likelihood changes by <= tol, scikit-learn's rule), then LEEP."""
  zc = f64(z) - f64(z).mean(0)
  s = np.linalg.svd(zc, compute_uv=False) ** 2
  p = int(np.searchsorted(np.cumsum(s) / s.sum(), ratio) + 1)
  x = pca_ref(f64(z), p)
  n = len(y)
  c = min(component_ratio * (y.max() + 1), n)
  reg = reg_covar * x.var(0).mean()
  idx = np.asarray(jax.random.choice(key, n, (c,), replace=False))
  mu, var, w = x[idx].copy(), np.tile(x.var(0) + reg, (c, 1)), np.full(c, 1.0 / c)

  def log_joint(w, mu, var):
    return (-0.5 * (((x[:, None] - mu[None]) ** 2) / var[None]).sum(-1)
            - 0.5 * np.log(2 * np.pi * var).sum(-1)[None] + np.log(w)[None])

  prev = -np.inf
  for _ in range(num_iters):
    lp = log_joint(w, mu, var)
    lse = scipy.special.logsumexp(lp, axis=1, keepdims=True)
    r = np.exp(lp - lse)
    nk = r.sum(0)
    mu = r.T @ x / nk[:, None]
    var = np.maximum(r.T @ (x * x) / nk[:, None] - mu * mu, 0) + reg
    w = nk / nk.sum()
    ll = lse.mean()
    if abs(ll - prev) <= tol:
      break
    prev = ll
  lp = log_joint(w, mu, var)
  return ref_leep(np.exp(lp - scipy.special.logsumexp(lp, axis=1, keepdims=True)), y)


def ref_otce(zs, ys, zt, yt, eps):
  """Tan et al. 2021 with an entropic (log-domain Sinkhorn, POT) coupling: -(W + CE)."""
  zs, zt = f64(zs), f64(zt)
  c = ((zs[:, None] - zt[None]) ** 2).sum(-1)
  a, b = np.full(len(zs), 1 / len(zs)), np.full(len(zt), 1 / len(zt))
  plan = pot.sinkhorn(a, b, c, eps * c.mean(), method="sinkhorn_log", numItermax=100000, stopThr=1e-12)
  w = np.sum(plan * c)
  joint = np.zeros((ys.max() + 1, yt.max() + 1))
  for i in range(ys.max() + 1):
    for j in range(yt.max() + 1):
      joint[i, j] = plan[np.ix_(ys == i, yt == j)].sum()
  ps = joint.sum(1, keepdims=True)
  nz = joint > 0
  ce = -np.sum(joint[nz] * np.log((joint / ps)[nz]))
  return -(w + ce), w, ce


# ------------------------------------------------------------------------------------------------- agreement

LABEL_REFS = [
    ("hscore", S.hscore, ref_hscore),
    ("regularized_hscore", S.regularized_hscore, ref_reg_hscore),
    ("logme", S.logme, ref_logme),
    ("transrate", S.transrate, ref_transrate),
    ("gbc", S.gbc, ref_gbc),
    ("parc", S.parc, ref_parc),
    ("sfda", S.sfda, ref_sfda),
    ("ncc", S.ncc, ref_ncc),
    ("knn", lambda z, y: S.knn(z, y, k=5), lambda z, y: ref_knn(z, y, 5)),
    ("disco", S.disco, ref_disco),
]


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name,fn,ref", LABEL_REFS, ids=[r[0] for r in LABEL_REFS])
def test_label_scores_match_reference(name, fn, ref, task):
  z, y = TASKS[task]
  close(fn(z, y), ref(z, y), atol=PARC_ATOL if name == "parc" else ATOL)


@pytest.mark.parametrize("task", list(TASKS))
def test_parc_without_pca_matches_reference(task):
  z, y = TASKS[task]
  close(S.parc(z, y, pca_dim=None), ref_parc(z, y, pca_dim=None), atol=PARC_ATOL)


@pytest.mark.parametrize("task", list(TASKS))
def test_knn_k1_matches_reference(task):
  z, y = TASKS[task]
  close(S.knn(z, y, k=1), ref_knn(z, y, 1))


def source_probs(seed, y, ks=5, strength=2.0):
  """A fake source head: logits correlated with the target labels."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(K, ks)) * strength
  logits = w[y] + rng.normal(size=(len(y), ks))
  p = np.exp(logits - logits.max(1, keepdims=True))
  return (p / p.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("task", list(TASKS))
def test_leep_and_nce_match_reference(task):
  _, y = TASKS[task]
  p = source_probs(7, y)
  close(S.leep(p, y), ref_leep(p, y))
  close(S.nce(p, y), ref_nce(p, y))


@pytest.mark.parametrize("task", CLUSTERED)
def test_nleep_matches_reference(task):
  z, y = TASKS[task]
  key = jax.random.key(3)
  close(S.nleep(z, y, key=key), ref_nleep(z, y, key))


@pytest.mark.parametrize("task", ["random0", "clustered2"])
def test_otce_matches_reference(task):
  z, y = TASKS[task]
  zs, ys = TASKS["clustered3"]
  want, w, ce = ref_otce(zs, ys, z, y, eps=0.1)
  got_w, got_ce = S.otce_terms(z, y, zs, ys, epsilon=0.1, threshold=1e-6, num_iters=5000)
  close(got_w, w)
  close(got_ce, ce)
  close(S.otce(z, y, source_features=zs, source_labels=ys, epsilon=0.1, threshold=1e-6, num_iters=5000), want)


def test_float64_opt_in():
  import jax.numpy as jnp
  z, y = TASKS["clustered2"]
  with jax.enable_x64(True):  # float64 is opt-in: inputs stay float64 only with x64 enabled
    z64 = z.astype(np.float64)
    v = S.logme(z64, y, tol=1e-12)
    assert v.dtype == jnp.float64
    close(v, ref_logme(z, y), rtol=1e-9, atol=0)
    close(S.hscore(z64, y), ref_hscore(z, y), rtol=1e-9, atol=0)
    close(S.transrate(z64, y), ref_transrate(z, y), rtol=1e-9, atol=0)


def test_parc_odd_n_matches_reference():
  z, y = make_task(5, 1.0, n=59)  # odd n exercises the padded triangle packing
  close(S.parc(z, y), ref_parc(z, y), atol=PARC_ATOL)


# ------------------------------------------------------------- reference implementations, real-shaped tasks
# n=160, d=96, K=8 float32, like the cached text-encoder tasks (160-200 rows, 256-384 dims), smaller d for speed.

REAL = make_task(7, 1.0, n=160, d=96, k=8)
HARD = make_task(7, 0.25, n=160, d=96, k=8)
SMALL_SCALE = (HARD[0] * 0.05, HARD[1])  # lambda_max(S_w) ~ 0.01: SFDA's shrinkage lam ~ 0.95 is far from 0


@pytest.mark.parametrize("task", [REAL, SMALL_SCALE, TASKS["clustered3"]], ids=["real_shaped", "small_scale", "c3"])
def test_sfda_matches_reference_code(task):
  close(S.sfda(*task), ref_sfda(*task))


@pytest.mark.parametrize("quirk", ["trace_scaled_shrinkage", "second_softmax", "other_class_means",
                                   "first_fit_lambda"])
def test_sfda_reference_quirks_matter(quirk):
  """Each of the reference's four steps changes the value: dropping any one moves SFDA by more than 1e-3."""
  z, y = SMALL_SCALE
  base = float(S.sfda(z, y))
  x = f64(z)
  k = y.max() + 1
  means = np.stack([x[y == c].mean(0) for c in range(k)])
  if quirk == "other_class_means":  # towards the all-ones vector instead
    target = np.ones_like(means)
  else:
    target = (means.sum(0)[None] - means) / (k - 1)
  got = _sfda_steps(x, y, target, trace=quirk != "trace_scaled_shrinkage", soften=quirk != "second_softmax",
                    reuse=quirk != "first_fit_lambda")
  assert abs(got - base) > 1e-3 * base
  close(_sfda_steps(x, y, (means.sum(0)[None] - means) / (k - 1)), base)


def _sfda_steps(x, y, target, trace=True, soften=True, reuse=True):
  """Compact SFDA with switchable steps (S^{-1} by solve; checked equal to ref_sfda with all steps on)."""
  n, d = x.shape
  k = y.max() + 1

  def fit(x, lam):
    priors = np.bincount(y) / n
    means = np.stack([x[y == c].mean(0) for c in range(k)])
    sw = sum(priors[c] * np.cov(x[y == c].T, bias=1) for c in range(k))
    if lam is None:
      v = sw.sum(1)
      for _ in range(3):
        u = sw @ v / np.linalg.norm(sw @ v)
        v = sw @ u / np.linalg.norm(sw @ u)
      lam = max(np.exp(-5 * v @ sw @ u), 1e-10)
    s = (1 - lam) * sw + lam * (np.trace(sw) / d if trace else 1.0) * np.eye(d)
    coef = np.linalg.solve(s, means.T).T
    logits = x @ coef.T - 0.5 * np.sum(means * coef, 1) + np.log(priors)
    return scipy.special.softmax(logits, axis=1), lam

  p, lam = fit(x, None)
  if soften:
    p = scipy.special.softmax(p, axis=1)
  conf = p[np.arange(n), y][:, None]
  x2 = (conf * x + (1 - conf) * target[y]).astype(np.float32).astype(np.float64)
  p, _ = fit(x2, lam if reuse else None)
  return p[np.arange(n), y].mean()


def test_sfda_is_float64_even_without_x64():
  z, y = REAL
  v = S.sfda(z, y)
  assert v.dtype == np.float64
  close(v, ref_sfda(z, y), rtol=1e-9, atol=0)


@pytest.mark.parametrize("task", [REAL, TASKS["random1"]], ids=["real_shaped", "random1"])
def test_regularized_hscore_is_tllib_times_n_over_n_minus_1(task):
  z, y = task
  n = len(y)
  close(S.regularized_hscore(z, y), ref_reg_hscore(z, y))
  # the tllib mix of 1/n (Ledoit-Wolf) and 1/(n-1) (np.cov) normalisations, pinned
  bias_only = ref_reg_hscore(z, y) * (n - 1) / n
  assert abs(float(S.regularized_hscore(z, y)) - bias_only) > 0.5 * bias_only / n


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
@pytest.mark.parametrize("pca_dim", [64, None])
def test_gbc_matches_stable_transfer(gaussian_type, pca_dim):
  z, y = REAL
  close(S.gbc(z, y, pca_dim=pca_dim, gaussian_type=gaussian_type),
        ref_gbc(z, y, pca_dim=pca_dim, gaussian_type=gaussian_type))


def test_gbc_variance_floor_and_spherical_log_term():
  z, y = TASKS["clustered2"]
  z = z.copy()
  z[y == 0, 2] = 0.5  # a constant feature within class 0: variance 0, floored at 1e-4 by the reference
  for gt in ("spherical", "diagonal"):
    close(S.gbc(z, y, gaussian_type=gt, pca_dim=None), ref_gbc(z, y, pca_dim=None, gaussian_type=gt))
  # spherical quirk: the log term counts once, not p times (an exact log det of s I_p would differ)
  assert float(S.gbc(z, y, pca_dim=None)) != pytest.approx(float(S.gbc(z, y, pca_dim=None,
                                                                       gaussian_type="diagonal")), rel=1e-2)
  with pytest.raises(ValueError, match="gaussian_type"):
    S.gbc(z, y, gaussian_type="full")


@pytest.mark.parametrize("shape", [(160, 96), (40, 96)], ids=["n>d", "n<d"])
def test_randomized_pca_matches_scikit_learn(shape):
  from sklearn.decomposition import PCA
  from ttjax.scores.parc import randomized_pca, randomized_pca_draws
  n, d = shape
  z = make_task(8, 1.0, n=n, d=d, k=4)[0]
  want = PCA(n_components=32, svd_solver="randomized", random_state=1919, iterated_power=1).fit_transform(f64(z))
  with jax.enable_x64(True):
    got = randomized_pca(jax.numpy.asarray(f64(z)), jax.numpy.asarray(randomized_pca_draws(n, d, 32)), 32)
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("task", [REAL, make_task(9, 1.0, n=100, d=48, k=3)], ids=["real_shaped", "k3"])
def test_parc_reference_variant_matches_parc_score(task):
  z, y = task
  close(S.parc(z, y, reference=True), ref_parc_score(z, y), atol=PARC_ATOL)
  with jax.enable_x64(True):  # float64 PCA and RDM on both sides
    close(S.parc(f64(z), y, reference=True), ref_parc_score(f64(z), y), rtol=1e-5, atol=0)  # float32 rank keys


def test_parc_reference_ranks_corrcoef_round_off_as_levels():
  """1 - np.corrcoef(onehot) leaves ~1e-16 for some same-class pairs; the reference variant ranks those apart."""
  from ttjax.scores.parc import reference_label_ranks
  z, y = TASKS["clustered3"]
  codes, ranks = reference_label_ranks(y, K)
  upper = (1 - np.corrcoef(np.eye(K)[y]))[np.triu_indices(N, 1)]
  assert len(ranks) == len(np.unique(upper))
  np.testing.assert_allclose(ranks[codes[np.triu_indices(N, 1)]], scipy.stats.rankdata(upper))
  close(S.parc(z, y, pca_dim=None, reference=True), ref_parc_score(z, y, n_dims=None), atol=PARC_ATOL)
  if len(ranks) > 2:  # BLAS-dependent: with extra levels the value differs from the clean-label PARC
    assert abs(float(S.parc(z, y, pca_dim=None, reference=True)) - float(S.parc(z, y, pca_dim=None))) > 1e-3


def test_nleep_compiles_once_per_shape_bucket():
  from ttjax.scores import source
  tasks = [make_task(s, sep, n=60, d=24) for s, sep in [(30, 0.0), (31, 3.0), (32, 6.0)]]
  dims = {source._pca_dim_for_variance(jax.numpy.asarray(z), 0.8) for z, _ in tasks}
  before = source._nleep_kernel._cache_size()
  for z, y in tasks:
    S.nleep(z, y)
  buckets = {source._bucket(p, 24) for p in dims}
  assert source._nleep_kernel._cache_size() - before <= len(buckets) < len(dims) + 1


@pytest.mark.parametrize("tol", [1e-3, 0.0])
def test_nleep_zeroed_axes_leave_the_mixture_unchanged(tol):
  from ttjax.scores import source
  z, y = TASKS["clustered2"]
  p = source._pca_dim_for_variance(jax.numpy.asarray(z), 0.8)
  key = jax.random.key(4)
  close(S.nleep(z, y, key=key, tol=tol), S.nleep(z, y, key=key, tol=tol, pca_dim=p), rtol=1e-5)
  close(S.nleep(z, y, key=key, tol=tol), ref_nleep(z, y, key, tol=tol))
