"""ttjax.selection (model-selection metrics) against scipy.stats on random inputs, with and without ties; regret;
rank_report; errors."""

import warnings

import numpy as np
import pytest
import scipy.stats as ss

from ttjax import selection as sel

TOL = 1e-10


def _random_pairs(seed: int, count: int, ties: bool):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    m = int(rng.integers(2, 25))
    if ties:  # few distinct values -> many ties, sometimes in both inputs at once
      x = rng.integers(0, 4, m).astype(float)
      y = rng.integers(0, 3, m).astype(float) if rng.random() < 0.5 else rng.normal(size=m)
      if rng.random() < 0.5:
        x, y = y, x
    else:
      x, y = rng.normal(size=m), rng.normal(size=m)
    yield x, y


def _close(ours: float, ref: float):
  if np.isnan(ref):
    assert np.isnan(ours), (ours, ref)
  else:
    assert abs(ours - ref) <= TOL, (ours, ref)


def _scipy(fn, x, y):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return float(fn(x, y)[0])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("ours,ref", [
    (sel.kendall_tau, ss.kendalltau),
    (sel.weighted_tau, ss.weightedtau),
    (sel.pearson, ss.pearsonr),
    (sel.spearman, ss.spearmanr),
], ids=["kendall", "weighted", "pearson", "spearman"])
def test_matches_scipy(ours, ref, ties):
  for x, y in _random_pairs(seed=1 + ties, count=300, ties=ties):
    want = _scipy(ref, x, y)
    _close(ours(x, y), want)


def test_rankdata_matches_scipy():
  rng = np.random.default_rng(3)
  for _ in range(50):
    v = rng.integers(0, 5, int(rng.integers(1, 30))).astype(float)
    np.testing.assert_array_equal(sel.rankdata(v), ss.rankdata(v))


def test_constant_input_is_nan_and_known_values():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  for fn in (sel.kendall_tau, sel.weighted_tau, sel.pearson, sel.spearman):
    assert np.isnan(fn(x, np.ones(4)))
    assert fn(x, 2 * x + 1) == pytest.approx(1.0, abs=1e-12)
    assert fn(x, -x) == pytest.approx(-1.0, abs=1e-12)
  # Weighted tau punishes a swap at the top more than the same swap at the bottom.
  top_swap = np.array([1.0, 2.0, 4.0, 3.0])
  bottom_swap = np.array([2.0, 1.0, 3.0, 4.0])
  assert sel.kendall_tau(x, top_swap) == pytest.approx(sel.kendall_tau(x, bottom_swap))
  assert sel.weighted_tau(x, top_swap) < sel.weighted_tau(x, bottom_swap)


def test_regret():
  truth = np.array([0.70, 0.90, 0.80, 0.60])
  assert sel.top1_regret([0.1, 0.9, 0.2, 0.0], truth) == 0.0
  assert sel.top1_regret([0.1, 0.2, 0.9, 0.0], truth) == pytest.approx(0.10)
  assert sel.relative_regret([0.1, 0.2, 0.9, 0.0], truth) == pytest.approx(0.10 / 0.90)
  assert sel.top1_regret([5.0, 1.0, 1.0, 9.0], truth) == pytest.approx(0.30)
  # Tie for the top score: expected regret of a random pick among the tied models.
  assert sel.top1_regret([3.0, 3.0, 1.0, 0.0], truth) == pytest.approx(0.90 - 0.80)
  with pytest.raises(ValueError, match="positive"):
    sel.relative_regret([1.0, 0.0], [0.0, -1.0])


def test_rank_report():
  truth = {"vit": 0.91, "resnet": 0.85, "clip": 0.95, "mlp": 0.40}
  scores = {
      "perfect": {"mlp": -3.0, "resnet": 0.1, "vit": 0.5, "clip": 2.0},
      "reversed": {"vit": 0.0, "resnet": 1.0, "clip": -1.0, "mlp": 5.0},
  }
  rep = sel.rank_report(scores, truth)
  assert set(rep) == {"perfect", "reversed"}
  p, r = rep["perfect"], rep["reversed"]
  for key in ("kendall_tau", "weighted_tau", "spearman"):
    assert p[key] == pytest.approx(1.0) and r[key] == pytest.approx(-1.0)
  assert p["top1_regret"] == 0.0 and p["top1_model"] == "clip" and p["best_model"] == "clip"
  assert r["top1_model"] == "mlp" and r["top1_regret"] == pytest.approx(0.55)
  assert r["relative_regret"] == pytest.approx(0.55 / 0.95)
  assert p["num_models"] == 4
  # Same numbers as the array functions, in truth's model order.
  models = list(truth)
  s = [scores["reversed"][k] for k in models]
  a = [truth[k] for k in models]
  assert r["pearson"] == pytest.approx(sel.pearson(s, a), abs=1e-15)


@pytest.mark.parametrize("x,y,match", [
    ([1.0, 2.0, 3.0], [1.0, 2.0], "length mismatch"),
    ([1.0], [2.0], "at least 2 models"),
    ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0], "NaN"),
    ([1.0, 2.0, 3.0], [1.0, np.inf, 3.0], "inf"),
    ([[1.0, 2.0]], [[1.0, 2.0]], "1-D"),
    (["a", "b"], [1.0, 2.0], "real numbers"),
])
def test_bad_input(x, y, match):
  for fn in (sel.kendall_tau, sel.weighted_tau, sel.pearson, sel.spearman, sel.top1_regret):
    with pytest.raises(ValueError, match=match):
      fn(x, y)


def test_rank_report_bad_input():
  truth = {"a": 0.5, "b": 0.7, "c": 0.6}
  with pytest.raises(ValueError, match="missing"):
    sel.rank_report({"s": {"a": 1.0, "b": 2.0}}, truth)
  with pytest.raises(ValueError, match="extra"):
    sel.rank_report({"s": {"a": 1.0, "b": 2.0, "c": 0.0, "d": 1.0}}, truth)
  with pytest.raises(ValueError, match="NaN"):
    sel.rank_report({"s": {"a": 1.0, "b": float("nan"), "c": 0.0}}, truth)
  with pytest.raises(ValueError, match="NaN"):
    sel.rank_report({"s": {"a": 1.0, "b": 2.0, "c": 0.0}}, {**truth, "c": float("nan")})
  with pytest.raises(ValueError, match="at least 2 models"):
    sel.rank_report({"s": {"a": 1.0}}, {"a": 0.5})
