"""ttjax.app.report: tables, versioned JSON, CSV with the JSON's numbers, PNG figures."""
import csv
import json
import math

import numpy as np
import pytest

from ttjax.app import report


def _row(name, bound, acc, **scores):
  return dict(name=name, model=name, source="s", target="t", bound=bound, source_loss=0.1, entropy=0.2,
              wasserstein=(bound - 0.3) / 0.5, tau_hat=0.5, target_loss=0.9, target_accuracy=0.7, seconds=1.5,
              num_target_classes=4, D=[0.5, 0.5], B=[[1.0, 0.0], [0.0, 1.0]],
              ground_truth=dict(accuracy=acc, loss=1.0 - acc, lr=0.01, n_test=20, held_out="test split"),
              scores=scores)


def test_flatten_keeps_scalars_and_joins_keys():
  flat = report.flatten(_row("a", 1.0, 0.8, logme=0.3))
  assert flat["ground_truth.accuracy"] == 0.8 and flat["scores.logme"] == 0.3 and flat["ground_truth.held_out"]
  assert "D" not in flat and "B" not in flat


def test_table_shows_every_value_with_its_format():
  rows = [_row("src -> a", 1.23456, 0.812), _row("src -> b", 2.5, 0.25)]
  text = report.bound_table(rows)
  lines = text.splitlines()
  assert len(lines) == 4 and "bound" in lines[0] and "FT acc" in lines[0]
  assert "1.2346" in lines[2] and "0.812" in lines[2] and lines[2].startswith("src -> a")
  assert len({len(l) for l in lines}) == 1  # aligned


def test_json_is_versioned_strict_and_atomic(tmp_path):
  doc = report.payload("rank", [_row("a", float("nan"), 0.5)], settings={"seed": 0}, ranking={})
  path = tmp_path / "out.json"
  report.write_json(str(path), doc)
  back = json.loads(path.read_text())
  assert back["schema_version"] == report.SCHEMA_VERSION and back["command"] == "rank"
  assert back["results"][0]["bound"] is None  # NaN -> null (strict JSON)
  assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


def test_csv_round_trips_the_json_numbers(tmp_path):
  rows = [_row("a", 1.0 / 3.0, 0.8, logme=np.float32(0.1)), _row("b", 2.0, 0.6, logme=-1e-9, leep=-2.0)]
  path = tmp_path / "out.csv"
  report.write_csv(str(path), rows)
  with open(path, newline="") as f:
    table = list(csv.DictReader(f))
  assert float(table[0]["bound"]) == 1.0 / 3.0
  assert float(table[1]["scores.logme"]) == -1e-9 and table[0]["scores.leep"] == ""
  assert float(table[0]["scores.logme"]) == float(np.float32(0.1))


def test_ranking_table_lists_every_score():
  rep = {"logme": dict(kendall_tau=1.0, weighted_tau=1.0, pearson=0.9, spearman=1.0, top1_regret=0.0,
                       top1_model="a", best_model="a"),
         "bound": dict(kendall_tau=-1 / 3, weighted_tau=-0.2, pearson=-0.5, spearman=-0.5, top1_regret=0.1,
                       top1_model="b", best_model="a")}
  text = report.ranking_table(rep)
  assert "logme" in text and "-0.333" in text and "+1.000" in text


def test_figures_are_png(tmp_path):
  rows = [_row("a", 1.0, 0.8, logme=0.3, ncc=0.9), _row("b", 2.0, 0.5, logme=0.1, ncc=0.5),
          _row("c", 1.5, 0.6, logme=0.2, ncc=0.7)]
  p1 = report.plot_bound_terms(rows, str(tmp_path / "terms.png"))
  from ttjax.selection import rank_report
  truth = {r["model"]: r["ground_truth"]["accuracy"] for r in rows}
  rep = rank_report({"logme": {r["model"]: r["scores"]["logme"] for r in rows},
                     "ncc": {r["model"]: r["scores"]["ncc"] for r in rows},
                     "bound": {r["model"]: -r["bound"] for r in rows}}, truth)
  p2 = report.plot_score_scatter(rows, rep, str(tmp_path / "scatter.png"), title="t")
  for p in (p1, p2):
    data = open(p, "rb").read()
    assert data[:4] == b"\x89PNG" and len(data) > 5000
  assert math.isclose(rep["logme"]["kendall_tau"], 1.0)


def test_ranking_summary_names_the_best_encoder_and_who_picked_it():
  from ttjax.selection import rank_report
  rows = [dict(model=m, ground_truth=dict(accuracy=a)) for m, a in (("a", 0.9), ("b", 0.8), ("c", 0.5))]
  truth = {r["model"]: r["ground_truth"]["accuracy"] for r in rows}
  rep = rank_report({"bound": {"a": -1.0, "b": -2.0, "c": -3.0}, "logme": {"a": 0.0, "b": 1.0, "c": 0.5},
                     "hscore": {"a": 7.0, "b": 7.0, "c": 7.0}}, truth)
  line = report.ranking_summary("r8", rows, rep)
  assert line.startswith("r8: a transfers best (FT acc 0.900; b 0.800; c 0.500).")
  assert "The bound picks a (right; weighted tau +1.00)." in line
  assert line.endswith("0/2 scores pick it.")  # logme picks b, the saturated hscore a three-way tie


def test_transport_legend_names_the_constant():
  certified = [{"lipschitz": "certified"}, {"lipschitz": "certified"}]
  measured = [{"lipschitz": "measured"}]
  assert "certified" in report.transport_label(certified) and "hat" not in report.transport_label(certified)
  assert "measured" in report.transport_label(measured) and r"\hat\tau" in report.transport_label(measured)
  assert "certified" in report.transport_label(certified + measured)
