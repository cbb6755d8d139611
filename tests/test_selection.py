"""ttjax.selection (model-selection metrics: scipy.stats behind one input validation): values computed by hand,
ties, constant inputs, regret, rank_report, errors."""

import numpy as np
import pytest

from ttjax import selection as sel

def test_known_values_computed_by_hand():
  # one swap of neighbours among m = 4: 5 concordant, 1 discordant pair -> tau_b = 4/6
  x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 4.0, 3.0])
  assert sel.kendall_tau(x, y) == pytest.approx(4 / 6)
  # a tie in y: pair (3, 4) tied -> tau_b = (5 - 0) / sqrt(6 * 5)
  assert sel.kendall_tau(x, np.array([1.0, 2.0, 3.0, 3.0])) == pytest.approx(5 / np.sqrt(30))
  # Spearman of the swap: 1 - 6 * sum d^2 / (m (m^2 - 1)) = 1 - 12 / 60
  assert sel.spearman(x, y) == pytest.approx(0.8)
  assert sel.pearson([0.0, 1.0, 2.0], [0.0, 1.0, 5.0]) == pytest.approx(
      np.corrcoef([0.0, 1.0, 2.0], [0.0, 1.0, 5.0])[0, 1])
  # weighted tau, hyperbolic additive weights, by hand: ranks by (x, y) decreasing are 3, 2, 1, 0 for x = 1..4;
  # w = 1/(r+1); the only discordant pair is (3, 4) with weight w_3 + w_4 = 1/2 + 1 -> (sum w - 2 * 1.5) / sum w
  w = 1.0 / (np.array([3, 2, 1, 0]) + 1.0)
  total = sum(w[i] + w[j] for i in range(4) for j in range(i + 1, 4))
  by_x = (total - 2 * (w[2] + w[3])) / total
  # ranked by (y, x) instead: y = 1, 2, 4, 3 -> ranks 3, 2, 0, 1; the discordant pair has weight 1 + 1/2 again
  assert sel.weighted_tau(x, y) == pytest.approx(by_x)


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
  # a score tied at the top (e.g. saturated H-score) names the tie and counts its tau as undefined
  tied = sel.rank_report({"flat": {"vit": 7.0, "resnet": 7.0, "clip": 7.0, "mlp": 7.0},
                          "top_tie": {"vit": 2.0, "resnet": 0.0, "clip": 2.0, "mlp": -1.0}}, truth)
  assert np.isnan(tied["flat"]["kendall_tau"]) and tied["flat"]["top1_model"] == "vit = resnet = clip = mlp"
  assert tied["top_tie"]["top1_model"] == "vit = clip" and tied["top_tie"]["top1_regret"] == pytest.approx(0.02)
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
