"""The ``ttjax`` command. ``ttjax COMMAND --help`` for each.

  ttjax bound     the TTA bound source -> target (+ the fine-tuned ground truth)
  ttjax score     transferability scores of a target task (+ ground truth)
  ttjax rank      rank a zoo of encoders by every score and by the bound, against the ground truth
  ttjax features  extract and cache features of a dataset split
  ttjax demo      the main job on its offline default: real encoders on real corpora (``--synthetic``: toy tasks)

TASK: an ``.npz`` of ``features``/``labels`` (any encoder), a built-in dataset (``20ng``, ``r8``, ``tweets``,
``20ng:comp-vs-rec`` ...) or a tfds dataset in ``--data-dir``. MODEL: a zoo encoder (``minilm-l6``, ``minilm-l3``,
``wordllama-l2-256``) or a local checkpoint folder. Errors exit with one line ``ttjax: error: ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ttjax import report as rp
from ttjax.registry import TaskData, TaskError, is_feature_file, parse_list, resolve_task

__all__ = ["main", "build_parser", "load_npz_task", "SCHEMA_VERSION"]

SCHEMA_VERSION = rp.SCHEMA_VERSION

DEMO_SOURCE = "20ng"
DEMO_TARGETS = ("r8", "tweets")
DEMO_MODELS = "minilm-l6,minilm-l3"
DEMO_SOURCE_LIMIT = 200  # 10 documents per class of 20 Newsgroups
DEMO_TARGET_LIMIT = 160  # per split: R8 20 per class (fewer in its smallest test classes), tweets 80


def _fail(msg: str):
  raise SystemExit(f"ttjax: error: {str(msg).strip().splitlines()[0] if str(msg).strip() else msg}")


def load_npz_task(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Read ``features`` (n, d) and ``labels`` (n,) from an ``.npz`` file, with errors that name the file."""
  try:
    t = resolve_task(path, with_test=False)
  except TaskError as e:
    _fail(str(e))
  return t.features, t.labels


# ------------------------------------------------------------------------------------------------------------------
# Shared pieces.
# ------------------------------------------------------------------------------------------------------------------


def _config(args, default_steps: int):
  from ttjax.bound import BoundConfig  # pylint: disable=import-outside-toplevel
  try:
    return BoundConfig(setting=args.setting, steps=args.steps or default_steps,
                       batch_size=None if args.batch_size <= 0 else args.batch_size, tau=args.tau)
  except ValueError as e:
    _fail(str(e))


def _config_dict(config) -> dict:
  return dict(setting=config.setting, steps=config.steps, batch_size=config.batch_size, tau=config.tau)


def _key(seed: int, *salt: int):
  import jax  # pylint: disable=import-outside-toplevel
  k = jax.random.PRNGKey(seed)
  for s in salt:
    k = jax.random.fold_in(k, s)
  return k


def _resolve(args, spec: str, model: Optional[str], *, with_test: bool, limit=None) -> TaskData:
  return resolve_task(spec, model, limit=args.limit if limit is None else limit, test_limit=args.test_limit,
                      seed=args.seed, data_dir=args.data_dir, with_test=with_test, progress=not args.quiet,
                      max_length=args.max_length)


def _settings(args, **extra) -> dict:
  keep = ("source", "target", "model", "models", "setting", "steps", "batch_size", "tau", "limit", "test_limit",
          "seed", "scores", "finetune_steps", "max_length")
  out = {k: getattr(args, k) for k in keep if hasattr(args, k)}
  out.update(extra)
  return out


def _outputs(args, command: str, rows: list, *, csv_rows: Optional[list] = None, plot=None, **extra) -> None:
  doc = rp.payload(command, rows, settings=_settings(args), **extra)
  if getattr(args, "out", None):
    rp.write_json(args.out, doc)
    print(f"wrote {args.out}")
  if getattr(args, "csv", None):
    rp.write_csv(args.csv, csv_rows if csv_rows is not None else rows)
    print(f"wrote {args.csv}")
    if "ranking" in extra and extra["ranking"]:
      ranking_csv = str(Path(args.csv).with_suffix("")) + "_ranking.csv"
      rp.write_csv(ranking_csv, _ranking_rows(extra["ranking"]))
      print(f"wrote {ranking_csv}")
  if getattr(args, "plot", None) and plot is not None:
    Path(args.plot).mkdir(parents=True, exist_ok=True)
    for path in plot(Path(args.plot)):
      print(f"wrote {path}")


def _ranking_rows(ranking: dict) -> list[dict]:
  """``{target: {score: metrics}}`` or ``{score: metrics}`` -> one CSV row per (target, score)."""
  if all(isinstance(v, dict) and "kendall_tau" in v for v in ranking.values()):
    return [dict(score=s, **m) for s, m in ranking.items()]
  rows = []
  for tgt, rep in ranking.items():
    rows += [dict(target=tgt, score=s, **m) for s, m in rep.items()]
  return rows


def _ground_truth(args, task: TaskData, salt: int = 0) -> Optional[dict]:
  if args.no_ground_truth:
    return None
  from ttjax.pipeline import ground_truth  # pylint: disable=import-outside-toplevel
  return ground_truth(_key(args.seed, 1, salt), task, steps=args.finetune_steps)


def _bound(args, source: TaskData, target: TaskData, config, name: str, salt: int = 0) -> dict:
  from ttjax.pipeline import bound_row  # pylint: disable=import-outside-toplevel
  row = bound_row(_key(args.seed) if salt == 0 else _key(args.seed, 2, salt), source, target, config)
  return dict(name=name, source=source.name, target=target.name, model=target.model, seed=args.seed,
              config=_config_dict(config), **row)


def _pair_name(source: TaskData, target: TaskData, model: Optional[str]) -> str:
  return f"{source.name} -> {target.name}" + (f" [{model}]" if model else "")


# ------------------------------------------------------------------------------------------------------------------
# Commands.
# ------------------------------------------------------------------------------------------------------------------


def cmd_bound(args) -> int:
  config = _config(args, 500)
  source = _resolve(args, args.source, args.model, with_test=False)
  target = _resolve(args, args.target, args.model, with_test=not args.no_ground_truth)
  row = _bound(args, source, target, config, _pair_name(source, target, args.model))
  from ttjax.bound import BoundResult  # pylint: disable=import-outside-toplevel
  fields = set(BoundResult.__dataclass_fields__)
  print(BoundResult(**{k: v for k, v in row.items() if k in fields}))
  gt = _ground_truth(args, target)
  if gt is not None:
    row["ground_truth"] = gt
  print()
  print(rp.bound_table([row]))
  if gt is not None:
    print(f"(FT = actual transfer: linear head fine-tuned on {target.name} train [{gt['n_train']}], "
          f"evaluated on {gt['held_out']} [{gt['n_test']}]; lr={gt['lr']:g}, wd={gt['wd']:g})")
  _outputs(args, "bound", [row], plot=lambda d: [rp.plot_bound_terms([row], str(d / "bound_terms.png"))])
  return 0


def _score_one(args, target: TaskData, source: Optional[TaskData], names, salt: int = 0) -> dict:
  from ttjax.pipeline import compute_scores  # pylint: disable=import-outside-toplevel
  if source is not None and source.dim != target.dim:
    raise TaskError(f"target feature dimension {target.dim} does not match the source's {source.dim}")
  values, errors = compute_scores(_key(args.seed, 3, salt), target, names, source)
  row = dict(name=target.name, target=target.name, model=target.model,
             source=None if source is None else source.name, seed=args.seed, n=int(target.features.shape[0]),
             dim=target.dim, num_classes=target.num_classes, scores=values)
  if errors:
    row["score_errors"] = errors
  return row


def cmd_score(args) -> int:
  from ttjax.pipeline import score_names  # pylint: disable=import-outside-toplevel
  names, skipped = score_names(args.scores, args.source is not None)
  target = _resolve(args, args.target, args.model, with_test=not args.no_ground_truth)
  source = _resolve(args, args.source, args.model, with_test=False) if args.source else None
  t0 = time.perf_counter()
  row = _score_one(args, target, source, names)
  row["seconds"] = time.perf_counter() - t0
  gt = _ground_truth(args, target)
  if gt is not None:
    row["ground_truth"] = gt
  if skipped:
    row["skipped"] = skipped
  print(f"scores of {target.name} [{target.model}] (n={row['n']}, d={row['dim']}, K={row['num_classes']}; "
        "higher = more transferable)")
  width = max(len(n) for n in names) if names else 8
  for n in names:
    v = row["scores"].get(n)
    print(f"  {n:<{width}s}  {rp.format_value(v, '.6g') if v is not None else 'failed: ' + row['score_errors'][n]}")
  for n, why in skipped.items():
    print(f"  {n:<{width}s}  skipped ({why})")
  if gt is not None:
    print(f"actual transfer (fine-tuned linear head): test accuracy {gt['accuracy']:.4f}, test loss "
          f"{gt['loss']:.4f} [{gt['n_train']} train / {gt['n_test']} test]")
  _outputs(args, "score", [row])
  return 0


def _rank_entries(args) -> list[tuple[str, str, Optional[str]]]:
  """``(label, target spec, source spec)`` per model entry of ``--models``."""
  models = parse_list(args.models)
  if len(models) < 2:
    _fail(f"--models needs at least 2 models to rank, got {len(models)}")
  if len(set(models)) != len(models):
    _fail("--models lists a model twice")
  out = []
  for m in models:
    if m.endswith(".npz"):
      label = Path(m).stem
      if args.source and not is_feature_file(args.source):
        _fail(f"model {m!r} is a feature file, so --source must be an .npz too (or a '{{model}}' template)")
      out.append((label, m, args.source))
    else:
      if not args.target:
        _fail("--target is required unless every model is an .npz of target features")
      out.append((m, args.target, args.source))
  return out


def _rank_models(args, entries, names, config) -> tuple[list[dict], dict]:
  """Per model: target (and source) features, scores, bound, ground truth; then the ranking report."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  rows = []
  bar = tqdm(entries, desc="rank", unit="model", disable=args.quiet)
  for i, (label, tspec, sspec) in enumerate(bar):
    bar.set_postfix_str(label)
    model = label
    target = _resolve(args, tspec, model, with_test=True)
    source = _resolve(args, sspec, model, with_test=False) if sspec else None
    row = _score_one(args, target, source, names, salt=i)
    row.update(name=label, model=label)
    if source is not None and not args.no_bound:
      b = _bound(args, source, target, config, _pair_name(source, target, label))
      row["bound"] = b["bound"]
      row["bound_terms"] = {k: b[k] for k in ("source_loss", "entropy", "wasserstein", "tau_hat",
                                              "target_accuracy", "target_loss", "seconds")}
    gt = _ground_truth(args, target, salt=i)
    if gt is None:
      _fail("rank needs the ground truth (drop --no-ground-truth)")
    row["ground_truth"] = gt
    rows.append(row)
  return rows, _ranking(rows, names)


def _ranking(rows: list[dict], names) -> dict:
  from ttjax.evaluate import rank_report  # pylint: disable=import-outside-toplevel
  truth = {r["model"]: r["ground_truth"]["accuracy"] for r in rows}
  by_score = {}
  for n in names:
    if all(n in r["scores"] for r in rows):
      by_score[n] = {r["model"]: r["scores"][n] for r in rows}
  if all("bound" in r for r in rows):
    by_score["bound"] = {r["model"]: -r["bound"] for r in rows}  # lower bound = better
  return rank_report(by_score, truth) if by_score else {}


def _print_rank(rows, ranking, names, title: str) -> None:
  print(title)
  print(rp.scores_table(rows, [n for n in names if any(n in r["scores"] for r in rows)], label_key="model"))
  if ranking:
    print("\nranking against the ground truth (FT acc; the bound ranks lower = better)")
    print(rp.ranking_table(ranking))


def cmd_rank(args) -> int:
  from ttjax.pipeline import score_names  # pylint: disable=import-outside-toplevel
  names, skipped = score_names(args.scores, args.source is not None)
  entries = _rank_entries(args)
  config = _config(args, 300)
  rows, ranking = _rank_models(args, entries, names, config)
  title = f"target {args.target or 'features'}" + (f", source {args.source}" if args.source else "")
  _print_rank(rows, ranking, names, title)
  if skipped:
    print("skipped: " + ", ".join(f"{n} ({w})" for n, w in skipped.items()))

  def plots(d: Path):
    out = []
    if ranking:
      out.append(rp.plot_score_scatter(rows, ranking, str(d / "scores_vs_accuracy.png"), title=title))
    return out

  _outputs(args, "rank", rows, plot=plots, ranking=ranking)
  return 0


def cmd_features(args) -> int:
  from ttjax.registry import _dataset_split, check_model  # pylint: disable=import-outside-toplevel
  model = check_model(args.model)
  dataset, _, sub = args.dataset.partition(":")
  from ttjax.registry import builtin_dataset  # pylint: disable=import-outside-toplevel
  if builtin_dataset(dataset) is None and args.data_dir is None:
    resolve_task(args.dataset, model)  # raises the standard "unknown task" message
  t0 = time.perf_counter()
  splits = ["train", "test"] if args.split == "all" else [args.split]
  for split in splits:
    z, y, names, meta = _dataset_split(dataset, split, model, sub, args.limit, args.seed, args.data_dir,
                                       not args.quiet, {"max_length": args.max_length})
    print(f"{model} / {args.dataset} / {split}: features {z.shape[0]} x {z.shape[1]}, {len(names)} classes "
          f"({meta.get('cache')}; {time.perf_counter() - t0:.1f}s)")
    if args.out:
      out = args.out if len(splits) == 1 else str(Path(args.out).with_suffix("")) + f"_{split}.npz"
      np.savez(out, features=z, labels=y, class_names=np.asarray(names, dtype=str))
      print(f"wrote {out}")
  return 0


# ------------------------------------------------------------------------------------------------------------------
# Demo.
# ------------------------------------------------------------------------------------------------------------------


def _demo_synthetic(args) -> int:
  """Built-in synthetic tasks: a related target and a shuffled-label one (no downloads)."""
  import jax  # pylint: disable=import-outside-toplevel
  from ttjax import synthetic as syn  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  print("ttjax demo --synthetic: built-in synthetic tasks. Source: 5 Gaussian classes in R^32.\n"
        "Targets, embedded by the same (imaginary) encoder: the source relabelled, shifted and perturbed "
        "(related), and the same points with shuffled labels (unrelated).\n")
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 1000, 32, 5, separation=6.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, 5, shift=1.0, noise=0.5, rotate=False)
  y_rand = np.asarray(jax.random.permutation(jax.random.PRNGKey(2), yt))
  config = _config(args, 500)
  src = TaskData("synthetic source", "synthetic", np.asarray(zs), np.asarray(ys), [str(i) for i in range(5)])
  rows = []
  for name, y in (("synthetic: related target", yt), ("synthetic: shuffled-label target", y_rand)):
    tgt = TaskData(name, "synthetic", np.asarray(zt), np.asarray(y), [str(i) for i in range(5)])
    row = _bound(args, src, tgt, config, name)
    from ttjax.bound import BoundResult  # pylint: disable=import-outside-toplevel
    print(BoundResult(**{k: v for k, v in row.items() if k in BoundResult.__dataclass_fields__}))
    gt = _ground_truth(args, tgt)
    if gt is not None:
      row["ground_truth"] = gt
    rows.append(row)
  print()
  print(rp.bound_table(rows))
  print(f"\ndone in {time.perf_counter() - start:.1f}s")
  _outputs(args, "demo", rows, plot=lambda d: [rp.plot_bound_terms(rows, str(d / "bound_terms.png"))])
  return 0


def _demo_real(args) -> int:
  """Real encoders on real corpora: 20NG subset -> R8, tweets and shuffled-label R8, per encoder."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  from ttjax.pipeline import score_names, shuffled  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  models = parse_list(args.models)
  config = _config(args, 300)
  names, _ = score_names(args.scores, True)
  src_limit = args.limit or DEMO_SOURCE_LIMIT
  tgt_limit = args.target_limit or DEMO_TARGET_LIMIT
  print(f"ttjax demo: frozen encoders {', '.join(models)}; source {DEMO_SOURCE} ({src_limit} train documents, "
        f"class-stratified); targets {', '.join(DEMO_TARGETS)} ({tgt_limit} train / {tgt_limit} test documents) "
        f"and R8 with shuffled labels (control). Bound: {config.setting}, {config.steps} full-batch steps; "
        f"actual transfer: linear head fine-tuned on the target train split, evaluated on its test split; "
        f"seed {args.seed}.\n")
  rows, tasks = [], {}
  # Features first (the only slow step on a first run; cached afterwards), with progress bars.
  for model in models:
    tasks[model] = {"source": _resolve(args, DEMO_SOURCE, model, with_test=False, limit=src_limit)}
    for t in DEMO_TARGETS:
      tasks[model][t] = resolve_task(t, model, limit=tgt_limit, test_limit=tgt_limit, seed=args.seed,
                                     progress=not args.quiet, max_length=args.max_length)
    tasks[model]["r8 (shuffled)"] = shuffled(tasks[model]["r8"], args.seed)
  targets = list(DEMO_TARGETS) + ["r8 (shuffled)"]
  plan = [(m, t) for m in models for t in targets]
  bar = tqdm(plan, desc="demo", unit="pair", disable=args.quiet)
  for i, (model, t) in enumerate(bar):
    bar.set_postfix_str(f"{model}: {DEMO_SOURCE} -> {t}")
    source, target = tasks[model]["source"], tasks[model][t]
    row = _bound(args, source, target, config, _pair_name(source, target, model))
    scored = _score_one(args, target, source, names, salt=i)
    row["scores"] = scored["scores"]
    if "score_errors" in scored:
      row["score_errors"] = scored["score_errors"]
    row["ground_truth"] = _ground_truth(args, target, salt=i) or {}
    rows.append(row)
  bar.close()
  print("\nTTA bound (nats; bounds the target cross-entropy of the transformed source classifier h_T) vs the "
        "actual transfer (FT: fine-tuned linear head, test split)")
  print(rp.bound_table(rows))
  ranking = {}
  for t in targets:
    trows = [dict(r, model=r["model"]) for r in rows if r["target"] == tasks[r["model"]][t].name]
    print(f"\nscores on {tasks[models[0]][t].name} (higher = more transferable)")
    print(rp.scores_table(trows, names, label_key="model"))
    if len(models) >= 2 and t != "r8 (shuffled)":
      try:
        ranking[t] = _ranking(trows, names)
      except ValueError:
        continue
      print(f"ranking the {len(models)} encoders on {t} (Kendall / weighted tau vs FT accuracy"
            + ("; with 2 encoders every tau is +-1: does the score pick the better one?)" if len(models) == 2
               else ")"))
      print(rp.ranking_table(ranking[t]))
  print(f"\ndone in {time.perf_counter() - start:.1f}s")

  def plots(d: Path):
    out = [rp.plot_bound_terms(rows, str(d / "bound_terms.png"), title="TTA bound by term: 20NG subset -> targets")]
    for t, rep in ranking.items():
      trows = [r for r in rows if r["target"] == tasks[r["model"]][t].name]
      out.append(rp.plot_score_scatter(trows, rep, str(d / f"scores_vs_accuracy_{t}.png"),
                                       title=f"{t}: scores vs fine-tuned accuracy across encoders"))
    return out

  _outputs(args, "demo", rows, plot=plots, ranking=ranking)
  return 0


def cmd_demo(args) -> int:
  if args.synthetic:
    return _demo_synthetic(args)
  from ttjax.assets import AssetUnavailableError  # pylint: disable=import-outside-toplevel
  try:
    return _demo_real(args)
  except (AssetUnavailableError, OSError) as e:
    print(f"ttjax demo: the real encoders / corpora are not available offline ({str(e).splitlines()[0]}).\n"
          "Falling back to the built-in synthetic demo (ttjax demo --synthetic).\n", file=sys.stderr)
    return _demo_synthetic(args)


# ------------------------------------------------------------------------------------------------------------------
# Parser.
# ------------------------------------------------------------------------------------------------------------------


def _add_bound_options(p):
  g = p.add_argument_group("bound")
  g.add_argument("--setting", default="learned_all", choices=["fixed_all", "learned_a", "learned_all"])
  g.add_argument("--steps", type=int, default=None, help="optimisation steps (default 500; demo/rank 300)")
  g.add_argument("--batch-size", type=int, default=0, help="points per step per side; 0 = full batch (default)")
  g.add_argument("--tau", type=float, default=None,
                 help="Lipschitz target of the source head (default 2/sqrt(d), d the feature dimension)")


def _add_task_options(p, *, limit_help="class-stratified row limit per task and split (default: all)"):
  g = p.add_argument_group("tasks")
  g.add_argument("--limit", type=int, default=None, help=limit_help)
  g.add_argument("--test-limit", type=int, default=None, help="row limit of test splits (default: --limit)")
  g.add_argument("--seed", type=int, default=0, help="seed of subsets, heads, bound and fine-tuning (default 0)")
  g.add_argument("--data-dir", default=None, help="tfds data_dir for datasets other than the built-in ones")
  g.add_argument("--max-length", type=int, default=None, help="text encoders: max tokens (default: the model's)")
  g.add_argument("--finetune-steps", type=int, default=300, help="ground truth: AdamW steps (default 300)")
  g.add_argument("--no-ground-truth", action="store_true", help="skip the fine-tuning ground truth")
  g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_output_options(p, plot: bool = True):
  g = p.add_argument_group("output")
  g.add_argument("--out", help="write results as JSON here (versioned schema)")
  g.add_argument("--csv", help="write results as CSV here (the JSON's numbers, flattened)")
  if plot:
    g.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")


_TASK_HELP = ("TASK: .npz with 'features' (n, d) and 'labels' (n,) [optionally 'test_features', 'test_labels'], "
              "a built-in dataset (20ng, r8, r52, tweets, mnist5k, digits, 20ng:comp-vs-rec ...), or a tfds name "
              "with --data-dir")


def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="ttjax", description="Task Transfer Analysis in JAX: bound how well a frozen "
                               "encoder transfers to a classification task, score it, rank encoders, and compare "
                               "with the fine-tuned ground truth.", epilog=_TASK_HELP)
  sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("bound", help="the TTA bound source -> target, with the fine-tuned ground truth",
                     description="The TTA bound from a source task to a target task (same encoder), every term, "
                     "the transformed classifier's target accuracy and the actual transfer (a linear head "
                     "fine-tuned on the target). " + _TASK_HELP)
  p.add_argument("--source", required=True, help="source TASK")
  p.add_argument("--target", required=True, help="target TASK")
  p.add_argument("--model", help="MODEL embedding dataset TASKs: zoo name (minilm-l6, minilm-l3, "
                 "wordllama-l2-256) or a local checkpoint folder; a label for .npz TASKs")
  _add_bound_options(p)
  _add_task_options(p)
  _add_output_options(p)
  p.set_defaults(func=cmd_bound)

  p = sub.add_parser("score", help="transferability scores of a target task",
                     description="Transferability scores (higher = more transferable) of a target TASK under a "
                     "MODEL; with --source also the source-based ones (LEEP, NCE from a linear head trained on "
                     "the source, OTCE). " + _TASK_HELP)
  p.add_argument("--target", required=True, help="target TASK")
  p.add_argument("--model", help="MODEL (zoo name or checkpoint folder; a label for .npz TASKs)")
  p.add_argument("--source", help="source TASK (enables LEEP, NCE, OTCE)")
  p.add_argument("--scores", default="all", help="'all' or comma-separated names (ttjax.scores.list_scores())")
  _add_task_options(p)
  _add_output_options(p, plot=False)
  p.set_defaults(func=cmd_score)

  p = sub.add_parser("rank", help="rank a zoo of encoders by every score and the bound vs the ground truth",
                     description="For each model: target features, every score, the bound (with --source; lower "
                     "= better) and the fine-tuned test accuracy; then Kendall tau, weighted tau, Pearson, "
                     "Spearman and top-1 regret of each score's ranking against the ground truth. A model may be "
                     "an .npz of target features (then --target is optional); TASKs may contain '{model}'. "
                     + _TASK_HELP)
  p.add_argument("--target", help="target TASK")
  p.add_argument("--models", required=True, help="comma-separated MODELs (zoo names, checkpoint folders, .npz)")
  p.add_argument("--source", help="source TASK (enables the bound and LEEP, NCE, OTCE)")
  p.add_argument("--scores", default="all", help="'all' or comma-separated names")
  p.add_argument("--no-bound", action="store_true", help="rank by the scores only")
  _add_bound_options(p)
  _add_task_options(p)
  _add_output_options(p)
  p.set_defaults(func=cmd_rank)

  p = sub.add_parser("features", help="extract (and cache) features of a dataset split",
                     description="Embed a dataset split with a MODEL and cache the features on disk "
                     "(~/.cache/ttjax/features or $TTJAX_CACHE); --out also writes them as .npz (a TASK).")
  p.add_argument("--model", required=True, help="zoo name or local checkpoint folder")
  p.add_argument("--dataset", required=True, help="built-in dataset (20ng, r8, tweets, 20ng:comp-vs-rec ...) or "
                 "tfds name with --data-dir")
  p.add_argument("--split", default="train", help="train, test or all (default train)")
  p.add_argument("--limit", type=int, default=None, help="class-stratified row limit (default: the whole split)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--max-length", type=int, default=None)
  p.add_argument("--out", help="also write features, labels, class_names to this .npz")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_features)

  p = sub.add_parser("demo", help="the main job on its offline default (real encoders and corpora)",
                     description="Real frozen encoders (MiniLM-L6, MiniLM-L3) on real corpora: a 20 Newsgroups "
                     "subset as source, Reuters R8 and election tweets as targets, R8 with shuffled labels as a "
                     "control; for each pair the TTA bound and its terms next to the actual fine-tuned accuracy "
                     "and loss, the scores, and the encoders ranked per target. Small class-stratified subsets "
                     "keep it within minutes on a CPU, feature extraction included. Falls back to --synthetic "
                     "when the assets cannot be fetched.")
  p.add_argument("--synthetic", action="store_true", help="the built-in synthetic demo (no assets)")
  p.add_argument("--models", default=DEMO_MODELS, help=f"encoders (default {DEMO_MODELS})")
  p.add_argument("--scores", default="all", help="'all' or comma-separated names")
  p.add_argument("--target-limit", type=int, default=None, help=f"target rows per split (default "
                 f"{DEMO_TARGET_LIMIT})")
  _add_bound_options(p)
  _add_task_options(p, limit_help=f"source rows (default {DEMO_SOURCE_LIMIT})")
  _add_output_options(p)
  p.set_defaults(func=cmd_demo)
  return ap


def _enable_compilation_cache() -> None:
  """Persistent XLA compilation cache for command-line runs (repeated runs skip most compile time)."""
  if os.environ.get("TTJAX_NO_COMPILATION_CACHE"):
    return
  try:
    import jax  # pylint: disable=import-outside-toplevel
    from ttjax.assets import get_cache_dir  # pylint: disable=import-outside-toplevel
    jax.config.update("jax_compilation_cache_dir", str(get_cache_dir("jax_compilation_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  except Exception:  # pylint: disable=broad-except  (an optimisation only)
    pass


def main(argv=None) -> int:
  import warnings  # pylint: disable=import-outside-toplevel
  # ott-jax 0.6 imports jaxopt, which warns on import that it is unmaintained: noise for a command-line user
  warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
  args = build_parser().parse_args(argv)
  if argv is None:
    _enable_compilation_cache()
  try:
    return args.func(args)
  except SystemExit:
    raise
  except KeyboardInterrupt:
    raise SystemExit("ttjax: interrupted")
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("TTJAX_DEBUG"):
      raise
    known = (TaskError, ValueError, KeyError, FileNotFoundError, FloatingPointError)
    from ttjax.assets import AssetUnavailableError  # pylint: disable=import-outside-toplevel
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    msg = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    if not isinstance(e, known + (AssetUnavailableError,)):
      msg = f"{type(e).__name__}: {msg} (TTJAX_DEBUG=1 shows the traceback)"
    raise SystemExit(f"ttjax: error: {msg}")


if __name__ == "__main__":
  sys.exit(main())
