"""``ttjax demo``: the main job on its offline default, real encoders on real corpora (``--synthetic``: toy tasks).

Real: a 20 Newsgroups subset as source, R8 and election tweets as targets and R8 with shuffled labels as a control,
per encoder: the bound and its terms, the scores, the fine-tuned ground truth and the encoders ranked per target.
Then a short image part (unless ``--no-images``): EfficientNet-Lite0/1/2 (ImageNet classifiers) with an MNIST-5k
subset as the bound's reference task and a scikit-learn digits subset (8x8) as the target; LEEP / NCE use the
models' own ImageNet head. When the encoders or corpora cannot be fetched, it falls back to the synthetic demo.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from ttjax import synthetic as syn
from ttjax.app import report as rp
from ttjax.app import steps
from ttjax.app.commands import (bound_config, bound_entry, bound_with_truth, ground_truth_for, pair_name,
                                print_ranking, rank_rows, resolve, score_entry, write_outputs)
from ttjax.app.journal import Journal
from ttjax.app.resolve import TaskData, parse_list, resolve_task
from ttjax.assets import AssetUnavailableError
from ttjax.progress import progress

__all__ = ["cmd_demo", "demo_real", "demo_synthetic", "demo_images", "pair_row", "DEMO_SOURCE", "DEMO_TARGETS",
           "DEMO_MODELS", "DEMO_SOURCE_LIMIT", "DEMO_TARGET_LIMIT", "DEMO_TARGET_TEST_LIMIT", "DEMO_IMAGE_MODELS",
           "DEMO_IMAGE_SOURCE", "DEMO_IMAGE_TARGET", "DEMO_IMAGE_LIMIT", "DEMO_IMAGE_TEST_LIMIT"]

DEMO_SOURCE = "20ng"
DEMO_TARGETS = ("r8", "tweets")
DEMO_MODELS = "minilm-l6,minilm-l3,wordllama-l2-256"
DEMO_SOURCE_LIMIT = 200  # 10 documents per class of 20 Newsgroups
DEMO_TARGET_LIMIT = 400  # train rows: more than every encoder's width (n > d), so covariance scores are informative
DEMO_TARGET_TEST_LIMIT = 160  # test rows: R8 20 per class (fewer in its smallest test classes), tweets 80
SHUFFLED = "r8 (shuffled)"
DEMO_FIGURES = "ttjax_demo_figures"  # the folder the demo writes its figures into (unless --plot)
DEMO_IMAGE_MODELS = ("effnet-lite0", "effnet-lite1", "effnet-lite2")
DEMO_IMAGE_SOURCE = "mnist5k"  # the bound's reference task (digits: not in ImageNet's label space)
DEMO_IMAGE_TARGET = "digits"  # small and local: a first run fetches and decodes no large corpus
DEMO_IMAGE_LIMIT = 160  # train images per task (16 per class; 5 extraction batches of 32)
DEMO_IMAGE_TEST_LIMIT = 60  # test images per task (6 per class, as a stratified limit takes limit // K; 2 batches)


def demo_synthetic(args) -> int:
  """Built-in synthetic tasks: a related target and a shuffled-label one (no downloads)."""
  start = time.perf_counter()
  print("ttjax demo --synthetic: built-in synthetic tasks. Source: 5 Gaussian classes in R^32.\n"
        "Targets, embedded by the same (imaginary) encoder: the source relabelled, shifted and perturbed "
        "(related), and the same points with shuffled labels (unrelated).\n")
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 1000, 32, 5, separation=6.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, 5, shift=1.0, noise=0.5, rotate=False)
  y_rand = np.asarray(jax.random.permutation(jax.random.PRNGKey(2), yt))
  config = bound_config(args, 500)
  src = TaskData("synthetic source", "synthetic", np.asarray(zs), np.asarray(ys), [str(i) for i in range(5)])
  rows = []
  for name, y in (("synthetic: related target", yt), ("synthetic: shuffled-label target", y_rand)):
    tgt = TaskData(name, "synthetic", np.asarray(zt), np.asarray(y), [str(i) for i in range(5)])
    rows.append(bound_with_truth(args, src, tgt, config, name))
  print()
  print(rp.bound_table(rows))
  print(f"\ndone in {time.perf_counter() - start:.1f}s")
  write_outputs(args, "demo", rows, plot=lambda d: [rp.plot_bound_terms(rows, str(d / "bound_terms.png"))])
  return 0


def _demo_tasks(args, models, src_limit: int, tgt_limit: int, tgt_test_limit: int) -> dict:
  """``{model: {"source" | target: TaskData}}``: the features (the only slow step of a first run; cached)."""
  tasks = {}
  for model in models:
    tasks[model] = {"source": resolve(args, DEMO_SOURCE, model, with_test=True, limit=src_limit)}
    for t in DEMO_TARGETS:
      tasks[model][t] = resolve_task(t, model, limit=tgt_limit, test_limit=tgt_test_limit, seed=args.seed,
                                     progress=not args.quiet, max_length=args.max_length)
    tasks[model][SHUFFLED] = steps.shuffled(tasks[model]["r8"], args.seed)
  return tasks


def pair_row(args, source: TaskData, target: TaskData, config, names, model: str, salt: int) -> dict:
  """One demo row: the bound ``source -> target`` with its terms, the scores of ``target`` and the fine-tuned
  ground truth (``{}`` with ``--no-ground-truth``)."""
  row = bound_entry(args, source, target, config, pair_name(source, target, model))
  scored = score_entry(args, target, source, names, salt=salt)
  row.update({k: scored[k] for k in ("scores", "n", "dim", "score_errors", "source_classifier") if k in scored})
  row["ground_truth"] = ground_truth_for(args, target, salt=salt) or {}
  return row


def demo_images(args, config, names, *, models=DEMO_IMAGE_MODELS, limit: int = DEMO_IMAGE_LIMIT,
                test_limit: int = DEMO_IMAGE_TEST_LIMIT, journal: Optional[Journal] = None) -> tuple[list, dict]:
  """The image part: the image encoders ``models`` on ``DEMO_IMAGE_SOURCE -> DEMO_IMAGE_TARGET`` subsets
  (class-stratified, ``limit`` train / ``test_limit`` test images per task); prints the bound table, the scores
  and the ranking; returns ``(rows, {target: ranking})``."""
  models = list(models)
  print(f"\nImages: frozen ImageNet classifiers {', '.join(models)} (1280-d pooled features); reference task "
        f"{DEMO_IMAGE_SOURCE}, target {DEMO_IMAGE_TARGET} ({limit} train / {test_limit} test "
        "images each, grey -> RGB, resized to each model's resolution). LEEP / NCE use each model's own ImageNet "
        f"head; the bound's source head is trained on {DEMO_IMAGE_SOURCE} (its digits are not ImageNet classes).")
  rows = []
  bar = progress(models, desc="demo images", unit="model", disable=args.quiet)
  for i, model in enumerate(bar):
    bar.set_postfix_str(f"{model}: {DEMO_IMAGE_SOURCE} -> {DEMO_IMAGE_TARGET}")
    key = f"image:{model}:{DEMO_IMAGE_SOURCE}->{DEMO_IMAGE_TARGET}:{limit}/{test_limit}"
    row = journal.get(key) if journal is not None else None
    if row is None:
      source, target = (resolve_task(t, model, limit=limit, test_limit=test_limit, seed=args.seed,
                                     progress=not args.quiet) for t in (DEMO_IMAGE_SOURCE, DEMO_IMAGE_TARGET))
      row = pair_row(args, source, target, config, names, model, salt=100 + i)
      row = journal.put(key, row) if journal is not None else row
    rows.append(row)
  bar.close()
  ranking = {DEMO_IMAGE_TARGET: rank_rows(rows, names)} if rows and all(r["ground_truth"] for r in rows) else {}
  for t, rep in ranking.items():
    print("  " + rp.ranking_summary(t, rows, rep))
  print(rp.bound_table(rows))
  print_ranking(rows, names, f"\nscores on {DEMO_IMAGE_TARGET} (higher = more transferable)", ranking.get(
      DEMO_IMAGE_TARGET), f"ranking the {len(models)} image encoders on {DEMO_IMAGE_TARGET} (Kendall / weighted tau "
      "vs FT accuracy)")
  return rows, ranking


def demo_real(args) -> int:
  """Real encoders on real corpora: 20NG subset -> R8, tweets and shuffled-label R8, per encoder."""
  start = time.perf_counter()
  models = parse_list(args.models)
  config = bound_config(args, 300)
  names, _ = steps.score_names(args.scores, True)
  src_limit = args.limit or DEMO_SOURCE_LIMIT
  tgt_limit = args.target_limit or DEMO_TARGET_LIMIT
  tgt_test_limit = args.target_test_limit or DEMO_TARGET_TEST_LIMIT
  print(f"ttjax demo: frozen encoders {', '.join(models)}; source {DEMO_SOURCE} ({src_limit} train / "
        f"{args.test_limit or src_limit} test documents, class-stratified); targets {', '.join(DEMO_TARGETS)} "
        f"({tgt_limit} train / {tgt_test_limit} test documents) and R8 with shuffled labels (control). Bound "
        f"({config.space} space, {config.setting}, {config.steps} full-batch steps) and h_T learned on the train "
        f"splits; the bound, its terms, h_T's loss and the actual transfer (linear head fine-tuned on the target "
        f"train split) all on the test splits; seed {args.seed}.\n")
  tasks = _demo_tasks(args, models, src_limit, tgt_limit, tgt_test_limit)
  targets = list(DEMO_TARGETS) + [SHUFFLED]
  rows = []
  journal = Journal("demo", args, enabled=not args.no_resume)  # an interrupted demo resumes from its finished pairs
  bar = progress([(m, t) for m in models for t in targets], desc="demo", unit="pair", disable=args.quiet)
  for i, (model, t) in enumerate(bar):
    bar.set_postfix_str(f"{model}: {DEMO_SOURCE} -> {t}")
    row = journal.get(f"text:{model}:{t}")
    if row is None:
      row = journal.put(f"text:{model}:{t}", pair_row(args, tasks[model]["source"], tasks[model][t], config, names,
                                                      model, salt=i))
    rows.append(row)
  bar.close()
  trows = {t: [r for r in rows if r["target"] == tasks[r["model"]][t].name] for t in targets}
  ranking = {}
  for t in targets:
    if len(models) >= 2 and t != SHUFFLED:
      try:
        ranking[t] = rank_rows(trows[t], names)
      except ValueError:
        pass
  print("\nIn short (every number on the test splits):")
  for t, rep in ranking.items():
    print("  " + rp.ranking_summary(t, trows[t], rep))
  print("\nTTA bound (nats; bounds the target cross-entropy of the transformed source classifier h_T) vs the "
        "actual transfer (FT: fine-tuned linear head, test split)")
  print(rp.bound_table(rows))
  for t in targets:
    print_ranking(trows[t], names, f"\nscores on {tasks[models[0]][t].name} (higher = more transferable)",
                  ranking.get(t), f"ranking the {len(models)} encoders on {t} (Kendall / weighted tau vs FT accuracy"
                  + ("; with 2 encoders every tau is +-1: does the score pick the better one?)" if len(models) == 2
                     else ")"))
  image_rows, image_ranking = [], {}
  if not getattr(args, "no_images", False):
    try:
      image_rows, image_ranking = demo_images(args, config, names, journal=journal)
    except (AssetUnavailableError, OSError) as e:
      print(f"\nImages skipped: the image encoders / corpora are not available offline ({str(e).splitlines()[0]})")
  print(f"\ndone in {time.perf_counter() - start:.1f}s")

  def plots(d: Path):
    out = [rp.plot_bound_terms(rows, str(d / "bound_terms.png"), title="TTA bound by term: 20NG subset -> targets")]
    for t, rep in ranking.items():
      out.append(rp.plot_score_scatter(trows[t], rep, str(d / f"scores_vs_accuracy_{t}.png"),
                                       title=f"{t}: scores vs fine-tuned accuracy across encoders"))
    if image_rows:
      out.append(rp.plot_bound_terms(image_rows, str(d / "bound_terms_images.png"),
                                     title=f"TTA bound by term: {DEMO_IMAGE_SOURCE} subset -> {DEMO_IMAGE_TARGET}"))
    for t, rep in image_ranking.items():
      out.append(rp.plot_score_scatter(image_rows, rep, str(d / f"scores_vs_accuracy_{t}.png"),
                                       title=f"{t}: scores vs fine-tuned accuracy across image encoders"))
    return out

  if not getattr(args, "plot", None):
    args.plot = DEMO_FIGURES  # the demo draws its figures by default
  write_outputs(args, "demo", rows + image_rows, plot=plots, ranking={**ranking, **image_ranking})
  print(f"figures in {Path(args.plot).resolve()}")
  journal.done()
  return 0


def cmd_demo(args) -> int:
  if args.synthetic:
    return demo_synthetic(args)
  try:
    return demo_real(args)
  except (AssetUnavailableError, OSError) as e:
    print(f"ttjax demo: the real encoders / corpora are not available offline ({str(e).splitlines()[0]}).\n"
          "Falling back to the built-in synthetic demo (ttjax demo --synthetic).\n", file=sys.stderr)
    return demo_synthetic(args)
