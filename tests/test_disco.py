"""DISCO (Zhang et al., AAAI 2025) against a float64 numpy re-derivation of the paper's formula, an independent
scikit-learn LDA for the per-component classifier, and its expected behaviour on synthetic spectra."""

import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

import ttjax.scores as S
from score_tasks import make_task, ref_disco

TASKS = {"random0": make_task(0, 0.0), "clustered2": make_task(2, 3.0), "clustered3": make_task(3, 1.5)}


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("num_groups,center", [(4, False), (3, False), (1, False), (3, True)])  # G=8: test_scores
def test_disco_matches_numpy_rederivation(task, num_groups, center):
  z, y = TASKS[task]
  got = float(S.disco(z, y, num_groups=num_groups, center=center))
  np.testing.assert_allclose(got, ref_disco(z, y, num_groups, center), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("task", list(TASKS))
def test_component_classifier_is_lda(task):
  """With reg=0 each S_ncc^g is scikit-learn's LDA (shared covariance, empirical priors) fitted and scored on the
  group's spectral coordinates: mean predicted probability of the true class."""
  z, y = TASKS[task]
  u, s, _ = np.linalg.svd(np.asarray(z, np.float64), full_matrices=False)
  want = 0.0
  for lo in range(0, 8, 2):  # num_groups=4 over r=8
    p = u[:, lo:lo + 2] * s[lo:lo + 2]
    prob = LinearDiscriminantAnalysis(solver="lsqr").fit(p, y).predict_proba(p)
    want += s[lo:lo + 2].sum() / s.sum() * prob[np.arange(len(y)), y].mean()
  np.testing.assert_allclose(float(S.disco(z, y, num_groups=4, reg=0.0)), want, rtol=1e-5)


def spectral_task(signal_on_top, seed=0, n=60, d=8, k=3):
  """Three strong axes (std 10) and five weak ones (std 0.1). The class centres sit on three axes at 3 noise stds:
  the strong ones, or three weak ones. The two tasks are one linear map apart (swap axes 0-2 with 3-5, rescale), so
  they carry the same class information; only its place in the spectrum differs. Same shape as TASKS."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % k
  base = rng.normal(size=(n, d))
  base[:, :3] += 3.0 * np.eye(k)[y]
  if not signal_on_top:
    base = base[:, [3, 4, 5, 0, 1, 2, 6, 7]]
  z = base * np.r_[np.full(3, 10.0), np.full(5, 0.1)]
  return z.astype(np.float32), y.astype(np.int32)


def test_class_signal_in_top_spectral_components_scores_higher():
  for seed in range(3):
    top = float(S.disco(*spectral_task(True, seed), num_groups=4))
    tiny = float(S.disco(*spectral_task(False, seed), num_groups=4))
    assert top > tiny + 0.3, (seed, top, tiny)
    # one group = LDA on the whole space, invariant to the linear map between the two tasks
    np.testing.assert_allclose(float(S.disco(*spectral_task(True, seed), num_groups=1)),
                               float(S.disco(*spectral_task(False, seed), num_groups=1)), rtol=1e-4)


def test_invariant_to_rotation_and_scale():
  z, y = TASKS["clustered3"]
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(z.shape[1], z.shape[1])))
  base = float(S.disco(z, y, num_groups=4))
  np.testing.assert_allclose(float(S.disco((z @ q).astype(np.float32), y, num_groups=4)), base, rtol=1e-5)
  np.testing.assert_allclose(float(S.disco(7.0 * z, y, num_groups=4)), base, rtol=1e-5)


def test_rank_deficient_features_are_finite_and_match():
  z, y = TASKS["clustered2"]
  z = z.copy()
  z[:, 5:] = z[:, :3] + z[:, 2:5]  # rank 5: three null singular directions
  got = float(S.disco(z, y, num_groups=4))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, ref_disco(z, y, 4), rtol=1e-4)
