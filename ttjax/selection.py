"""Model-selection metrics: how well a transferability score ranks pre-trained models.

Given ``m`` candidate models, a score ``s in R^m`` (one value per model, larger = predicted to transfer better)
and the ground truth ``a in R^m`` (e.g. the test accuracy of fine-tuning each model, see
:func:`ttjax.finetune.finetune`), this module measures the agreement of the two rankings:

* :func:`kendall_tau` -- Kendall's tau-b (ties handled),
* :func:`weighted_tau` -- Vigna's weighted tau with additive hyperbolic weights, the metric of the
  model-selection literature (LogME, NCE, LEEP, ... papers report it),
* :func:`pearson` and :func:`spearman` -- linear and rank correlation,
* :func:`top1_regret` -- the accuracy lost by picking the model the score ranks first,
* :func:`rank_report` -- all of the above for several scores at once.

The inputs are tiny (tens of models): the correlations are ``scipy.stats``' (``kendalltau``, ``weightedtau``,
``pearsonr``, ``spearmanr``), behind one validation of the inputs (1-D, real, finite, equal length, ``m >= 2``).
Ties count as ties in every tau; a correlation that is undefined (an input is constant, e.g. a saturated score)
is ``nan``, and a top-1 pick shared by tied models is reported as the tie.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import warnings

import numpy as np
from scipy import stats

__all__ = [
    "kendall_tau",
    "weighted_tau",
    "pearson",
    "spearman",
    "top1_regret",
    "relative_regret",
    "rank_report",
]


def _check_vector(v, name: str) -> np.ndarray:
  """Validate a 1-D sequence of finite real numbers (one per model); return it as a float64 array."""
  a = np.asarray(v)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D sequence (one value per model), got shape {a.shape}")
  if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.issubdtype(a.dtype, np.complexfloating):
    raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
  a = a.astype(np.float64)
  bad = ~np.isfinite(a)
  if bad.any():
    kind = "NaN" if np.isnan(a).any() else "inf"
    raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) ({kind}), first at position "
                     f"{int(np.nonzero(bad)[0][0])}")
  if a.shape[0] < 2:
    raise ValueError(f"{name}: need at least 2 models to compare rankings, got {a.shape[0]}")
  return a


def _check_pair(x, y, *, names: tuple[str, str] = ("scores", "truth")) -> tuple[np.ndarray, np.ndarray]:
  """Validate two 1-D real sequences of equal length ``m >= 2``; return them as float64 arrays."""
  a, b = np.asarray(x), np.asarray(y)
  if a.ndim == 1 and b.ndim == 1 and a.shape[0] != b.shape[0]:
    raise ValueError(f"length mismatch: {a.shape[0]} {names[0]} vs {b.shape[0]} {names[1]}")
  return _check_vector(a, names[0]), _check_vector(b, names[1])


def _statistic(fn, x: np.ndarray, y: np.ndarray) -> float:
  """``fn(x, y).statistic`` of a ``scipy.stats`` correlation; ``nan`` (no warning) when ``x`` or ``y`` is
  constant, where the correlation is undefined."""
  if np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", stats.ConstantInputWarning)  # near-constant after rounding
    return float(fn(x, y)[0])


def kendall_tau(x, y) -> float:
  r"""Kendall's tau-b between two sequences of length ``m`` (``scipy.stats.kendalltau``).

  .. math::

    \tau_b = \frac{\sum_{i<j} \mathrm{sgn}(x_i - x_j)\,\mathrm{sgn}(y_i - y_j)}
                  {\sqrt{(n_0 - n_x)(n_0 - n_y)}},

  with ``n_0 = m(m-1)/2`` pairs, ``n_x`` (``n_y``) pairs tied in ``x`` (``y``): a tied pair counts neither for nor
  against. ``nan`` when ``x`` or ``y`` is constant.
  """
  x, y = _check_pair(x, y, names=("x", "y"))
  return _statistic(stats.kendalltau, x, y)


def weighted_tau(x, y) -> float:
  r"""Vigna's weighted tau with additive hyperbolic weights (``scipy.stats.weightedtau`` defaults).

  Each element ``i`` gets a rank ``r_i in {0, ..., m-1}`` (0 = most important) and a weight
  ``w_i = 1 / (r_i + 1)``; a pair ``(i, j)`` weighs ``w_ij = w_i + w_j``, and

  .. math::

    \tau_w(r) = \frac{\sum_{i<j} w_{ij}\,\mathrm{sgn}(x_i - x_j)\,\mathrm{sgn}(y_i - y_j)}
                     {\sqrt{\sum_{i<j,\,x_i \ne x_j} w_{ij} \cdot \sum_{i<j,\,y_i \ne y_j} w_{ij}}},

  averaged over the decreasing lexicographic ranks by ``(x, y)`` and by ``(y, x)``: disagreements among the
  top-ranked models cost more than among the bottom ones -- what matters for model selection. Ties count as
  ties; ``nan`` when ``x`` or ``y`` is constant.
  """
  x, y = _check_pair(x, y, names=("x", "y"))
  return _statistic(stats.weightedtau, x, y)


def pearson(x, y) -> float:
  r"""Pearson's ``r = <x - mean(x), y - mean(y)> / (||x - mean(x)|| ||y - mean(y)||)`` (``scipy.stats.pearsonr``);
  ``nan`` if constant."""
  x, y = _check_pair(x, y, names=("x", "y"))
  return _statistic(stats.pearsonr, x, y)


def spearman(x, y) -> float:
  """Spearman's rho: Pearson's r of the average ranks of ``x`` and ``y`` (``scipy.stats.spearmanr``)."""
  x, y = _check_pair(x, y, names=("x", "y"))
  return _statistic(stats.spearmanr, x, y)


def _top1(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
  """``(best truth, truth of the score's top pick)``; ties for the top score average their truths."""
  top = scores == scores.max()
  return float(truth.max()), float(truth[top].mean())


def top1_regret(scores, truth) -> float:
  r"""Top-1 regret ``max_j a_j - a_{\hat\jmath}``, ``\hat\jmath = argmax_j s_j`` (``>= 0``, 0 is perfect).

  ``scores`` (m,) are the predicted transferabilities, ``truth`` (m,) the ground-truth accuracies. When several
  models tie for the top score, ``a_{\hat\jmath}`` is the mean of their accuracies (the expected regret of
  breaking the tie at random).
  """
  s, a = _check_pair(scores, truth)
  best, picked = _top1(s, a)
  return best - picked


def relative_regret(scores, truth) -> float:
  r"""Relative top-1 regret ``(max_j a_j - a_{\hat\jmath}) / max_j a_j`` (see :func:`top1_regret`).

  The fraction of the best attainable accuracy lost by trusting the score; raises ``ValueError`` when the best
  ground-truth value is not positive (the ratio is then meaningless).
  """
  s, a = _check_pair(scores, truth)
  best, picked = _top1(s, a)
  if best <= 0:
    raise ValueError(f"truth: relative regret needs a positive best ground-truth value, got {best}")
  return (best - picked) / best


def rank_report(scores: Mapping[str, Mapping[Hashable, float]],
                truth: Mapping[Hashable, float]) -> dict[str, dict[str, Any]]:
  """Every metric of this module for each named score against the ground truth.

  Args:
    scores: ``{score name: {model: predicted transferability}}``; each inner mapping must cover exactly the
      models of ``truth``.
    truth: ``{model: ground-truth accuracy}`` with at least 2 models.

  Returns:
    ``{score name: {"kendall_tau", "weighted_tau", "pearson", "spearman", "top1_regret", "relative_regret"
    (floats; relative regret is ``nan`` when the best truth is not positive), "top1_model" (the model the score
    ranks first; tied models joined by ``" = "``), "best_model" (the model with the best truth),
    "num_models" (int)}}``.

  Raises:
    ValueError: a score misses a model of ``truth`` or has an extra one, fewer than 2 models, NaN/inf values.
  """
  if not isinstance(truth, Mapping):
    raise ValueError(f"truth: expected a mapping {{model: accuracy}}, got {type(truth).__name__}")
  if not isinstance(scores, Mapping):
    raise ValueError(f"scores: expected a mapping {{score name: {{model: score}}}}, got {type(scores).__name__}")
  models = list(truth)
  a = _check_vector([truth[k] for k in models], "truth")
  report: dict[str, dict[str, Any]] = {}
  for name, per_model in scores.items():
    if not isinstance(per_model, Mapping):
      raise ValueError(f"scores[{name!r}]: expected a mapping {{model: score}}, got {type(per_model).__name__}")
    missing = [k for k in models if k not in per_model]
    extra = [k for k in per_model if k not in truth]
    if missing or extra:
      raise ValueError(f"scores[{name!r}]: models do not match truth (missing: {missing[:5]}, "
                       f"extra: {extra[:5]})")
    s, _ = _check_pair([per_model[k] for k in models], a, names=(f"scores[{name!r}]", "truth"))
    best, picked = _top1(s, a)
    report[name] = {
        "kendall_tau": kendall_tau(s, a),
        "weighted_tau": weighted_tau(s, a),
        "pearson": pearson(s, a),
        "spearman": spearman(s, a),
        "top1_regret": best - picked,
        "relative_regret": (best - picked) / best if best > 0 else float("nan"),
        "top1_model": " = ".join(m for m, v in zip(models, s) if v == s.max()),  # a tie names every tied model
        "best_model": models[int(np.argmax(a))],
        "num_models": len(models),
    }
  return report
