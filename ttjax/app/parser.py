"""The ``ttjax`` command's argument parser: one sub-command per analysis, with shared option groups."""

from __future__ import annotations

import argparse
import math

from ttjax.app.commands import cmd_bound, cmd_features, cmd_rank, cmd_score
from ttjax.app.demo import DEMO_MODELS, DEMO_SOURCE_LIMIT, DEMO_TARGET_LIMIT, DEMO_TARGET_TEST_LIMIT, cmd_demo
from ttjax.features import zoo_names
from ttjax.transforms import SETTINGS

__all__ = ["build_parser"]


def _checked(cast, kind: str, ok, bounds: str):
  """An argparse type: ``cast(text)`` that satisfies ``ok``, else a one-line error naming the bounds."""
  def parse(text: str):
    try:
      value = cast(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not ok(value):
      raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
    return value
  parse.__name__ = kind  # argparse names the type in its message
  return parse


POSITIVE = _checked(int, "an integer", lambda v: 1 <= v <= 10 ** 7, "between 1 and 10000000")
NON_NEGATIVE = _checked(int, "an integer", lambda v: 0 <= v <= 10 ** 7, "between 0 and 10000000")
POSITIVE_FLOAT = _checked(float, "a number", lambda v: v > 0 and math.isfinite(v), "a finite number > 0")


def _add_bound_options(p):
  g = p.add_argument_group("bound")
  g.add_argument("--setting", default="learned_all", choices=list(SETTINGS))
  g.add_argument("--steps", type=POSITIVE, default=None, help="optimisation steps (default 500; demo/rank 300)")
  g.add_argument("--batch-size", type=NON_NEGATIVE, default=0, help="points per step per side; 0 = full batch (default)")
  g.add_argument("--tau", type=POSITIVE_FLOAT, default=None,
                 help="Lipschitz target of the source head (default 2/sqrt(d), d the feature dimension)")


def _add_task_options(p, *, limit_help="class-stratified row limit per task and split (default: all)"):
  g = p.add_argument_group("tasks")
  g.add_argument("--limit", type=POSITIVE, default=None, help=limit_help)
  g.add_argument("--test-limit", type=POSITIVE, default=None, help="row limit of test splits (default: --limit)")
  g.add_argument("--seed", type=int, default=0, help="seed of subsets, heads, bound and fine-tuning (default 0)")
  g.add_argument("--data-dir", default=None, help="tfds data_dir for datasets other than the built-in ones")
  g.add_argument("--max-length", type=POSITIVE, default=None, help="text encoders: max tokens (default: the model's)")
  g.add_argument("--finetune-steps", type=POSITIVE, default=300, help="ground truth: AdamW steps (default 300)")
  g.add_argument("--no-ground-truth", action="store_true", help="skip the fine-tuning ground truth")
  g.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_output_options(p, plot: bool = True):
  g = p.add_argument_group("output")
  g.add_argument("--out", help="write results as JSON here (versioned schema)")
  g.add_argument("--csv", help="write results as CSV here (the JSON's numbers, flattened)")
  if plot:
    g.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")


def _add_process_options(p):
  g = p.add_argument_group("processes", "one run over several processes (jax.distributed): start the same command "
                           "once per process; each flag defaults to JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
                           "JAX_PROCESS_ID; the models are split over the processes and only process 0 prints and "
                           "writes outputs")
  g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which serves the coordinator")
  g.add_argument("--num-processes", type=POSITIVE, default=None, help="how many processes in all")
  g.add_argument("--process-id", type=NON_NEGATIVE, default=None, help="this process, 0 .. num-processes - 1")
  g.add_argument("--process-timeout", type=POSITIVE_FLOAT, default=60.0, metavar="SECONDS",
                 help="stop when not every process has joined within SECONDS, or when a joined process has been "
                 "silent (dead) for SECONDS (default 60)")


def _add_label_free_options(p):
  g = p.add_argument_group("label-free", "analyse the target without its labels (ttjax.relatedness: k-means "
                           "pseudo-labels; the value is named 'relatedness', an estimate, not a bound on the true "
                           "target loss); a target .npz with only 'features' runs label-free by itself")
  g.add_argument("--no-target-labels", action="store_true",
                 help="ignore the target's labels (a fine-tuned ground truth from them is for evaluation only)")
  g.add_argument("--num-target-classes", type=POSITIVE, default=None, metavar="K",
                 help="K_t, the number of target classes (default: chosen by the silhouette over 2..10)")


def _add_resume_option(p):
  p.add_argument("--no-resume", action="store_true",
                 help="recompute every row (default: an interrupted run with the same arguments reuses the rows it "
                 "finished, from its journal in the ttjax cache)")


def _add_groups(p, func, *, bound: bool = True, plot: bool = True, **task_options):
  """The shared option groups of a sub-command (bound, tasks, output; in this order in its help) and its handler."""
  if bound:
    _add_bound_options(p)
  _add_task_options(p, **task_options)
  _add_output_options(p, plot)
  p.set_defaults(func=func)


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
  p.add_argument("--model", help=f"MODEL embedding dataset TASKs: zoo name ({', '.join(zoo_names())}) or a local "
                 "checkpoint folder; a label for .npz TASKs")
  _add_groups(p, cmd_bound)
  _add_label_free_options(p)

  p = sub.add_parser("score", help="transferability scores of a target task",
                     description="Transferability scores (higher = more transferable) of a target TASK under a "
                     "MODEL; with --source also the source-based ones (LEEP, NCE from a linear head trained on "
                     "the source, OTCE). " + _TASK_HELP)
  p.add_argument("--target", required=True, help="target TASK")
  p.add_argument("--model", help="MODEL (zoo name or checkpoint folder; a label for .npz TASKs)")
  p.add_argument("--source", help="source TASK (enables LEEP, NCE, OTCE)")
  p.add_argument("--scores", default="all", help="'all' or comma-separated names (ttjax.scores.list_scores())")
  _add_groups(p, cmd_score, bound=False, plot=False)

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
  _add_groups(p, cmd_rank)
  _add_label_free_options(p)
  _add_process_options(p)
  _add_resume_option(p)

  p = sub.add_parser("features", help="extract (and cache) features of a dataset split",
                     description="Embed a dataset split with a MODEL and cache the features on disk "
                     "(~/.cache/ttjax/features or $TTJAX_CACHE); --out also writes them as .npz (a TASK).")
  p.add_argument("--model", required=True, help="zoo name or local checkpoint folder")
  p.add_argument("--dataset", required=True, help="built-in dataset (20ng, r8, tweets, 20ng:comp-vs-rec ...) or "
                 "tfds name with --data-dir")
  p.add_argument("--split", default="train", help="train, test or all (default train)")
  p.add_argument("--limit", type=POSITIVE, default=None, help="class-stratified row limit (default: the whole split)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--max-length", type=POSITIVE, default=None)
  p.add_argument("--out", help="also write features, labels, class_names to this .npz")
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_features)

  p = sub.add_parser("demo", help="the main job on its offline default (real encoders and corpora)",
                     description="Real frozen encoders (MiniLM-L6, MiniLM-L3, WordLlama) on real corpora: a 20 Newsgroups "
                     "subset as source, Reuters R8 and election tweets as targets, R8 with shuffled labels as a "
                     "control; for each pair the TTA bound and its terms next to the actual fine-tuned accuracy "
                     "and loss, the scores, and the encoders ranked per target; then the same for three ImageNet "
                     "classifiers (EfficientNet-Lite0/1/2) on MNIST-5k -> digits images. Small "
                     "class-stratified subsets "
                     "keep it within minutes on a CPU, feature extraction included. Falls back to --synthetic "
                     "when the assets cannot be fetched.")
  p.add_argument("--synthetic", action="store_true", help="the built-in synthetic demo (no assets)")
  p.add_argument("--no-images", action="store_true", help="skip the image part (EfficientNet-Lite on MNIST-5k -> "
                 "digits)")
  p.add_argument("--models", default=DEMO_MODELS, help=f"encoders (default {DEMO_MODELS})")
  p.add_argument("--scores", default="all", help="'all' or comma-separated names")
  p.add_argument("--target-limit", type=POSITIVE, default=None, help=f"target train rows (default "
                 f"{DEMO_TARGET_LIMIT})")
  p.add_argument("--target-test-limit", type=POSITIVE, default=None, help=f"target test rows (default "
                 f"{DEMO_TARGET_TEST_LIMIT})")
  _add_groups(p, cmd_demo, limit_help=f"source rows (default {DEMO_SOURCE_LIMIT})")
  _add_resume_option(p)
  return ap
