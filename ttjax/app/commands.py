"""The ``ttjax`` commands ``bound``, ``score``, ``rank`` and ``features`` (``demo``: :mod:`ttjax.app.demo`).

Each ``cmd_*`` takes the parsed arguments (:mod:`ttjax.app.parser`), resolves its TASKs (:mod:`ttjax.app.resolve`),
runs the analysis steps (:mod:`ttjax.app.steps`), prints tables and writes the outputs (:mod:`ttjax.app.report`);
it returns the exit status. The public helpers below are the pieces the demo shares with the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

from ttjax import batch as bt
from ttjax.app import report as rp
from ttjax.app import steps
from ttjax.app.journal import Journal
from ttjax.app.resolve import (TaskData, TaskError, builtin_dataset, check_model, check_same_encoder, dataset_split,
                               is_feature_file, join_tasks, parse_list, resolve_task, split_task_list)
from ttjax.bound import BoundConfig, BoundResult
from ttjax.features.zoo import source_head
from ttjax.progress import progress
from ttjax.selection import rank_report

__all__ = ["cmd_bound", "cmd_score", "cmd_rank", "cmd_features", "fail", "load_npz_task", "bound_config", "run_key",
           "resolve", "bound_entry", "bound_with_truth", "score_entry", "ground_truth_for", "pair_name",
           "rank_rows", "print_ranking", "write_outputs", "label_free", "relatedness_entry"]


def fail(msg: str):
  """Stop the command with the one-line message ``ttjax: error: MSG`` (its first line)."""
  raise SystemExit(f"ttjax: error: {str(msg).strip().splitlines()[0] if str(msg).strip() else msg}")


def load_npz_task(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Read ``features`` (n, d) and ``labels`` (n,) from an ``.npz`` file, with errors that name the file."""
  try:
    t = resolve_task(path, with_test=False)
  except TaskError as e:
    fail(str(e))
  return t.features, t.labels


# ------------------------------------------------------------------------------------------------------------------
# Shared pieces (the demo uses them too).
# ------------------------------------------------------------------------------------------------------------------


def bound_config(args, default_steps: int) -> BoundConfig:
  """The :class:`BoundConfig` of the bound options (``--steps`` default ``default_steps``)."""
  try:
    return BoundConfig(setting=args.setting, steps=args.steps or default_steps,
                       batch_size=None if args.batch_size <= 0 else args.batch_size, tau=args.tau)
  except ValueError as e:
    fail(str(e))


def _config_dict(config: BoundConfig) -> dict:
  return dict(setting=config.setting, steps=config.steps, batch_size=config.batch_size, tau=config.tau)


def run_key(seed: int, *salt: int) -> jax.Array:
  """``PRNGKey(seed)`` folded with each ``salt``: one independent key per step and pair of a run."""
  k = jax.random.PRNGKey(seed)
  for s in salt:
    k = jax.random.fold_in(k, s)
  return k


def resolve(args, spec: str, model: Optional[str], *, with_test: bool, limit=None,
            labels_optional: bool = False) -> TaskData:
  """TASK ``spec`` under ``model`` with the task options of ``args`` (``limit`` overrides ``--limit``, per task;
  ``labels_optional``: an ``.npz`` of features only resolves, with ``labels=None``).

  A comma-separated list of TASKs (``"20ng,r52"``, :func:`ttjax.app.resolve.split_task_list`) is joined into one
  task with disjoint labels (:func:`ttjax.app.resolve.join_tasks`): e.g. a broad reference task for the bound.
  """
  return join_tasks([resolve_task(s, model, limit=args.limit if limit is None else limit, test_limit=args.test_limit,
                                  seed=args.seed, data_dir=args.data_dir, with_test=with_test,
                                  progress=not args.quiet, max_length=args.max_length,
                                  labels_optional=labels_optional)
                     for s in split_task_list(spec)])


def _settings(args, **extra) -> dict:
  keep = ("source", "target", "model", "models", "setting", "steps", "batch_size", "tau", "limit", "test_limit",
          "seed", "scores", "finetune_steps", "max_length")
  out = {k: getattr(args, k) for k in keep if hasattr(args, k)}
  out.update(extra)
  return out


def write_outputs(args, command: str, rows: list, *, csv_rows: Optional[list] = None,
                  plot: Optional[Callable[[Path], list]] = None, **extra) -> None:
  """``--out`` (versioned JSON), ``--csv`` (+ ``_ranking.csv`` with a ranking) and ``--plot`` (``plot(dir)``)."""
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


def ground_truth_for(args, task: TaskData, salt: int = 0) -> Optional[dict]:
  """The fine-tuned ground truth of ``task`` (:func:`ttjax.app.steps.ground_truth`); ``None`` with
  ``--no-ground-truth``."""
  if args.no_ground_truth:
    return None
  return steps.ground_truth(run_key(args.seed, 1, salt), task, steps=args.finetune_steps)


def bound_entry(args, source: TaskData, target: TaskData, config: BoundConfig, name: str, salt: int = 0) -> dict:
  """The result row of the bound ``source -> target``: names, seed, config and every :class:`BoundResult` field."""
  row = steps.bound_row(run_key(args.seed) if salt == 0 else run_key(args.seed, 2, salt), source, target, config)
  return dict(name=name, source=source.name, target=target.name, model=target.model, seed=args.seed,
              config=_config_dict(config), **row)


def bound_with_truth(args, source: TaskData, target: TaskData, config: BoundConfig, name: str) -> dict:
  """:func:`bound_entry`, printed as a :class:`BoundResult`, with its ``ground_truth`` (unless skipped)."""
  row = bound_entry(args, source, target, config, name)
  print(BoundResult(**{k: v for k, v in row.items() if k in BoundResult.__dataclass_fields__}))
  gt = ground_truth_for(args, target)
  if gt is not None:
    row["ground_truth"] = gt
  return row


def label_free(args, target: TaskData) -> bool:
  """Whether the analysis of ``target`` runs without its labels: ``--no-target-labels``, or a target without any."""
  return bool(getattr(args, "no_target_labels", False)) or target.labels is None


def relatedness_entry(args, source: TaskData, target: TaskData, config: BoundConfig, name: str, salt: int = 0) -> dict:
  """The label-free counterpart of :func:`bound_entry`: the row of :func:`ttjax.app.steps.relatedness_row`
  (``relatedness``, its terms, ``label_free``); the target's labels, if any, are not read."""
  key = run_key(args.seed, 4) if salt == 0 else run_key(args.seed, 4, salt)
  row = steps.relatedness_row(key, source, target, config, getattr(args, "num_target_classes", None))
  return dict(name=name, source=source.name, target=target.name, model=target.model, seed=args.seed,
              config=_config_dict(config), **row)


def _evaluation_truth(args, target: TaskData, salt: int = 0) -> Optional[dict]:
  """The fine-tuned ground truth of a label-free run, for evaluation only (``None`` when the target has no labels)."""
  if target.labels is None:
    return None
  gt = ground_truth_for(args, target, salt)
  if gt is not None:
    gt["note"] = "evaluation only: computed from the target labels, which the relatedness did not use"
  return gt


def pair_name(source: TaskData, target: TaskData, model: Optional[str]) -> str:
  return f"{source.name} -> {target.name}" + (f" [{model}]" if model else "")


def score_entry(args, target: TaskData, source: Optional[TaskData], names, salt: int = 0) -> dict:
  """The result row of the scores ``names`` of ``target`` (``source``, of the same encoder, for the source-based
  ones). LEEP / NCE use the model's own classifier when it has one (EfficientNet-Lite's ImageNet head:
  :func:`ttjax.app.steps.model_source_probs`), else a head trained on ``source``; ``source_classifier`` says which."""
  probs = steps.model_source_probs(target)
  values, errors = steps.compute_scores(run_key(args.seed, 3, salt), target, names, source, probs=probs)
  row = dict(name=target.name, target=target.name, model=target.model,
             source=None if source is None else source.name, seed=args.seed, n=int(target.features.shape[0]),
             dim=target.dim, num_classes=target.num_classes, scores=values)
  if any(n in values for n in ("leep", "nce")):
    row["source_classifier"] = (f"{target.model}'s pre-trained head ({probs.shape[1]} classes)" if probs is not None
                                else f"linear head trained on {source.name}")
  if errors:
    row["score_errors"] = errors
  return row


def rank_rows(rows: list[dict], names) -> dict:
  """:func:`ttjax.selection.rank_report` of each score of ``names`` (and ``-bound``) over the model rows."""
  truth = {r["model"]: r["ground_truth"]["accuracy"] for r in rows}
  by_score = {}
  for n in names:
    if all(n in r["scores"] for r in rows):
      by_score[n] = {r["model"]: r["scores"][n] for r in rows}
  if all("bound" in r for r in rows):
    by_score["bound"] = {r["model"]: -r["bound"] for r in rows}  # lower bound = better
  if all("relatedness" in r for r in rows):
    by_score["relatedness"] = {r["model"]: -r["relatedness"] for r in rows}  # lower = more related
  return rank_report(by_score, truth) if by_score else {}


def print_ranking(rows: list[dict], names, title: str, ranking: dict, ranking_title: str) -> None:
  """The scores table of the model rows under ``title``; the ranking table under ``ranking_title`` (if any)."""
  print(title)
  print(rp.scores_table(rows, names, label_key="model"))
  small = sorted({(r["model"], r["n"], r["dim"]) for r in rows if "n" in r and "dim" in r and r["n"] <= r["dim"]})
  if small:
    print("note: n <= d for " + ", ".join(f"{m} (n={n}, d={d})" for m, n, d in small) + ": covariance-based "
          "scores (H-score saturates at K-1, TransRate, GBC) are uninformative there; a constant score's tau is "
          "nan and its tied top picks are listed")
  if ranking:
    print(ranking_title)
    print(rp.ranking_table(ranking))


# ------------------------------------------------------------------------------------------------------------------
# Commands.
# ------------------------------------------------------------------------------------------------------------------


def cmd_bound(args) -> int:
  config = bound_config(args, 500)
  source = resolve(args, args.source, args.model, with_test=True)
  target = resolve(args, args.target, args.model, with_test=True, labels_optional=True)
  check_same_encoder(source, target)
  if label_free(args, target):
    return _cmd_relatedness(args, source, target, config)
  row = bound_with_truth(args, source, target, config, pair_name(source, target, args.model))
  gt = row.get("ground_truth")
  _print_table(rp.bound_table([row]), gt and f"(FT = actual transfer: linear head fine-tuned on {target.name} train "
               f"[{gt['n_train']}], evaluated on {gt['held_out']} [{gt['n_test']}]; lr={gt['lr']:g}, wd={gt['wd']:g})")
  write_outputs(args, "bound", [row], plot=lambda d: [rp.plot_bound_terms([row], str(d / "bound_terms.png"))])
  return 0


def _print_table(table: str, note: Optional[str]) -> None:
  """A one-row result table, then its ground-truth note (if any)."""
  print()
  print(table)
  if note:
    print(note)


def _cmd_relatedness(args, source: TaskData, target: TaskData, config: BoundConfig) -> int:
  """``ttjax bound`` without target labels: the label-free relatedness, its terms and (target labels permitting)
  the fine-tuned ground truth for evaluation."""
  print(f"label-free: {target.name} is analysed without its labels (k-means pseudo-labels, K_t "
        f"{args.num_target_classes or 'chosen by the silhouette'}); 'relatedness' is an estimate, not a bound on "
        "the true target loss")
  row = relatedness_entry(args, source, target, config, pair_name(source, target, args.model))
  print(f"relatedness {row['relatedness']:.4f} = weighted source loss {row['source_loss']:.4f} + H(B|D) "
        f"{row['entropy']:.4f} - label-merging gain {row.get('merge_gain', 0.0):.4f} + W {row['wasserstein']:.4f}; "
        f"predicted h_T accuracy {row['target_accuracy']:.3f}, "
        f"loss {row['target_loss']:.4f} (against the pseudo-labels); K_t={row['num_target_classes']} "
        f"({row['k_criterion']})")
  gt = _evaluation_truth(args, target)
  if gt is not None:
    row["ground_truth"] = gt
  _print_table(rp.relatedness_table([row]), gt and (
      f"(FT = actual transfer, for evaluation only: linear head fine-tuned on {target.name}'s labels "
      f"[{gt['n_train']}], evaluated on {gt['held_out']} [{gt['n_test']}]; the relatedness did not use them)"))
  write_outputs(args, "bound", [row], label_free=True,
                plot=lambda d: [rp.plot_bound_terms([row], str(d / "relatedness_terms.png"),
                                                    title="label-free relatedness by term")])
  return 0


def _have_heads(models) -> bool:
  """Whether every model carries its own pre-trained classifier (LEEP / NCE need no --source then)."""
  return bool(models) and all(source_head(m) is not None for m in models)


def cmd_score(args) -> int:
  names, skipped = steps.score_names(args.scores, args.source is not None, _have_heads([args.model]))
  target = resolve(args, args.target, args.model, with_test=not args.no_ground_truth)
  source = resolve(args, args.source, args.model, with_test=False) if args.source else None
  if source is not None:
    check_same_encoder(source, target)
  t0 = time.perf_counter()
  row = score_entry(args, target, source, names)
  row["seconds"] = time.perf_counter() - t0
  gt = ground_truth_for(args, target)
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
  if "source_classifier" in row:
    print(f"(LEEP / NCE: source classifier = {row['source_classifier']})")
  if gt is not None:
    print(f"actual transfer (fine-tuned linear head): test accuracy {gt['accuracy']:.4f}, test loss "
          f"{gt['loss']:.4f} [{gt['n_train']} train / {gt['n_test']} test]")
  write_outputs(args, "score", [row])
  if names and not row["scores"]:
    fail(f"no score could be computed for {target.name} (see the reasons above)")
  return 0


def _rank_entries(args) -> list[tuple[str, str, Optional[str]]]:
  """``(label, target spec, source spec)`` per model entry of ``--models``."""
  models = parse_list(args.models)
  if len(models) < 2:
    fail(f"--models needs at least 2 models to rank, got {len(models)}")
  if len(set(models)) != len(models):
    fail("--models lists a model twice")
  out = []
  for m in models:
    if m.endswith(".npz"):
      label = Path(m).stem
      if args.source and not is_feature_file(args.source):
        fail(f"model {m!r} is a feature file, so --source must be an .npz too (or a '{{model}}' template)")
      out.append((label, m, args.source))
    else:
      if not args.target:
        fail("--target is required unless every model is an .npz of target features")
      out.append((m, args.target, args.source))
  return out


def _join(args) -> None:
  """Join the other processes of a multi-process run (:func:`ttjax.batch.join_processes`), if one is asked for."""
  try:
    group = bt.process_group(args.coordinator, args.num_processes, args.process_id)
  except ValueError as e:
    fail(str(e))
  if group is not None:
    bt.join_processes(group, timeout=args.process_timeout)


def _rank_models(args, entries, names, config) -> tuple[list[dict], dict, Journal]:
  """Per model (:func:`_rank_row`), each finished row journaled at once (an interrupted run resumes from it); then
  the ranking report. Several processes: process ``p`` of ``P`` does models ``p, p + P, ...`` (its own journal),
  and every process gets every row."""
  rows = []
  mine = list(enumerate(entries))[jax.process_index()::jax.process_count()]
  journal = Journal("rank", args, part=jax.process_index(), parts=jax.process_count(), enabled=not args.no_resume)
  bar = progress(mine, desc="rank", unit="model", disable=args.quiet)
  for i, (label, tspec, sspec) in bar:
    bar.set_postfix_str(label)
    finished = journal.get(f"{i}:{label}")
    if finished is not None:
      rows.append((i, finished))
      continue
    rows.append((i, journal.put(f"{i}:{label}", _rank_row(args, i, label, tspec, sspec, names, config))))
  rows = [row for _, row in sorted((r for part in bt.process_gather(rows) for r in part), key=lambda r: r[0])]
  if not all("ground_truth" in r for r in rows):  # label-free, no target labels: nothing to rank against
    return rows, {}, journal
  return rows, rank_rows(rows, names), journal


def _rank_row(args, i: int, label: str, tspec, sspec, names, config) -> dict:
  """One model's rank row: scores, bound and ground truth (or, without target labels, the relatedness)."""
  model = label
  target = resolve(args, tspec, model, with_test=True, labels_optional=True)
  source = resolve(args, sspec, model, with_test=not args.no_bound) if sspec else None
  if source is not None:
    check_same_encoder(source, target)
  if label_free(args, target):
    return _label_free_rank_row(args, target, source, config, label, i)
  row = score_entry(args, target, source, names, salt=i)
  row.update(name=label, model=label)
  if source is not None and not args.no_bound:
    b = bound_entry(args, source, target, config, pair_name(source, target, label))
    row["bound"] = b["bound"]
    row["bound_terms"] = {k: b[k] for k in ("source_loss", "entropy", "merge_gain", "wasserstein", "tau_hat",
                                            "target_accuracy", "target_loss", "seconds")}
  gt = ground_truth_for(args, target, salt=i)
  if gt is None:
    fail("rank needs the ground truth (drop --no-ground-truth)")
  row["ground_truth"] = gt
  return row


def _label_free_rank_row(args, target: TaskData, source: Optional[TaskData], config: BoundConfig, label: str,
                         salt: int) -> dict:
  """A model's rank row without target labels: the relatedness and its terms (no label-based score), and the
  fine-tuned ground truth for evaluation only when the target has labels."""
  if source is None or args.no_bound:
    fail("a label-free ranking (--no-target-labels, or a target without labels) needs --source and the bound")
  r = relatedness_entry(args, source, target, config, pair_name(source, target, label), salt=salt)
  row = dict(name=label, target=target.name, model=label, source=source.name, seed=args.seed,
             n=int(target.features.shape[0]), dim=target.dim, scores={}, label_free=True,
             relatedness=r["relatedness"],
             relatedness_terms={k: r[k] for k in ("source_loss", "entropy", "wasserstein", "target_accuracy",
                                                  "target_loss", "num_target_classes", "k_criterion", "seconds")})
  gt = _evaluation_truth(args, target, salt)
  if gt is not None:
    row["ground_truth"] = gt
  return row


def cmd_rank(args) -> int:
  names, skipped = steps.score_names(args.scores, args.source is not None, _have_heads(parse_list(args.models)))
  entries = _rank_entries(args)
  config = bound_config(args, 300)
  _join(args)  # before any JAX computation
  rows, ranking, journal = _rank_models(args, entries, names, config)
  if jax.process_index() != 0:
    journal.done()  # every row has reached process 0
    return 0  # process 0 prints and writes
  title = f"target {args.target or 'features'}" + (f", source {args.source}" if args.source else "")
  print_ranking(rows, [n for n in names if any(n in r["scores"] for r in rows)], title, ranking,
                "\nranking against the ground truth (FT acc; the bound ranks lower = better)")
  if skipped:
    print("skipped: " + ", ".join(f"{n} ({w})" for n, w in skipped.items()))
  heads = sorted({r["source_classifier"] for r in rows if "source_classifier" in r})
  if heads:
    print("LEEP / NCE source classifier: " + "; ".join(heads))
  free = [r for r in rows if r.get("label_free")]
  if free:
    print(f"\nlabel-free: {len(free)} of {len(rows)} model(s) ranked without target labels (relatedness, an "
          "estimate; the label-based scores skipped)" + ("" if ranking else "; no ground truth (no target labels): "
          "by relatedness only"))
    print("by relatedness (lower = more related): " + ", ".join(
        f"{r['model']} {r['relatedness']:.4f}" for r in sorted(free, key=lambda r: r["relatedness"])))
    if ranking:
      print("(FT acc: for evaluation only, from the target labels the relatedness did not use)")
  write_outputs(args, "rank", rows, ranking=ranking, plot=lambda d: [
      rp.plot_score_scatter(rows, ranking, str(d / "scores_vs_accuracy.png"), title=title)] if ranking else [])
  journal.done()
  return 0


def cmd_features(args) -> int:
  model = check_model(args.model)
  dataset, _, sub = args.dataset.partition(":")
  if builtin_dataset(dataset) is None and args.data_dir is None:
    resolve_task(args.dataset, model)  # raises the standard "unknown task" message
  t0 = time.perf_counter()
  splits = ["train", "test"] if args.split == "all" else [args.split]
  for split in splits:
    z, y, names, meta = dataset_split(dataset, split, model, sub, args.limit, args.seed, args.data_dir,
                                      not args.quiet, {"max_length": args.max_length})
    print(f"{model} / {args.dataset} / {split}: features {z.shape[0]} x {z.shape[1]}, {len(names)} classes "
          f"({meta.get('cache')}; {time.perf_counter() - t0:.1f}s)")
    if args.out:
      out = args.out if len(splits) == 1 else str(Path(args.out).with_suffix("")) + f"_{split}.npz"
      np.savez(out, features=z, labels=y, class_names=np.asarray(names, dtype=str))
      print(f"wrote {out}")
  return 0
