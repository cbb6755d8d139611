"""The bound on the built-in real pairs: tightness, validity and the ranking of the zoo's encoders, in one run.

For every zoo text encoder and every built-in text target (R8, R52, election tweets), with 20 Newsgroups as the
reference task, and for a *related* control pair (20 Newsgroups split in two halves, the second half's labels
permuted): the head and the transforms are learned on the train splits, and every number below is on the data
sets' own **test splits** (the target's is also the fine-tuned ground truth's):

* the certified bound (default, ``space="logit"``) and each of its terms, the paper's feature-space variant
  (``space="feature"``: a *measured* ``tau_hat``, an estimate), the held-out loss / accuracy of ``h_T``, the
  fine-tuned linear head's test loss / accuracy (the actual transfer) and ``log K_t`` (the uniform guess);
* per target, the weighted tau (Vigna, hyperbolic weights) of ``-bound``, ``-bound estimate``, LogME and H-score
  against the fine-tuned accuracy across the encoders, and their mean over the targets.

Checks printed (not asserted away): the bound >= the held-out loss of ``h_T`` on every pair.

    python benchmarks/real_pairs.py                               # 3 encoders x 3 targets + related pair
    python benchmarks/real_pairs.py --models minilm-l6 --targets r8 --source-limit 400 --target-limit 200

Features are embedded once and cached (``~/.cache/ttjax/features``); a first run spends most of its time there.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from ttjax import BoundConfig
from ttjax.app.resolve import TaskData, resolve_task
from ttjax.app.steps import bound_row, compute_scores, ground_truth
from ttjax.data import train_test_split
from ttjax.features import zoo_entry, zoo_names
from ttjax.selection import weighted_tau

RANKED = ("bound", "bound_estimate", "logme", "hscore")  # higher = predicted better (bounds negated)


def relabelling(num_classes: int, seed: int) -> np.ndarray:
  """The related pair's label permutation: target label = ``perm[source label]``."""
  return np.random.default_rng(seed).permutation(num_classes)


def related_pair(source: TaskData, seed: int) -> tuple[TaskData, TaskData]:
  """``source``'s train and test splits each cut in two stratified halves: the first halves are the reference
  task, the second halves (labels permuted by one random permutation) the target: a perfectly related pair."""
  key = jax.random.PRNGKey(seed)
  a, b = train_test_split(jax.random.fold_in(key, 1), source.labels, 0.5)
  at, bt = train_test_split(jax.random.fold_in(key, 2), source.test_labels, 0.5)
  perm = relabelling(source.num_classes, seed)
  half = lambda i, it, y, yt, name: TaskData(name, source.model, source.features[i], y, source.class_names,
                                             source.test_features[it], yt)
  ref = half(a, at, source.labels[a], source.test_labels[at], f"{source.name} (half A)")
  tgt = half(b, bt, perm[source.labels[b]], perm[source.test_labels[bt]], f"{source.name} (half B, permuted)")
  return ref, tgt


def analyse_pair(source: TaskData, target: TaskData, steps: int, seed: int) -> dict:
  key = jax.random.PRNGKey(seed)
  row = bound_row(key, source, target, BoundConfig(steps=steps, batch_size=None))
  est = bound_row(key, source, target, BoundConfig(steps=steps, batch_size=None, space="feature"))
  gt = ground_truth(jax.random.fold_in(key, 1), target)
  scores, _ = compute_scores(jax.random.fold_in(key, 3), target, ("logme", "hscore"))
  return dict(model=target.model, target=target.name, k_t=target.num_classes, d=target.dim,
              n_fit=row["n_target_fit"], n_eval=row["n_target_eval"], bound=row["bound"],
              source_loss=row["source_loss"], entropy=row["entropy"], merge_gain=row["merge_gain"],
              wasserstein=row["wasserstein"],
              temperature=row["temperature"], h_t_loss=row["target_loss"], h_t_acc=row["target_accuracy"],
              bound_estimate=est["bound"], estimate_tau_w=est["tau_hat"] * est["wasserstein"],
              ft_loss=gt["loss"], ft_acc=gt["accuracy"], split=row["split_target"],
              logme=scores.get("logme", float("nan")), hscore=scores.get("hscore", float("nan")),
              seconds=row["seconds"] + est["seconds"])


def pair_table(rows: list[dict]) -> str:
  head = ("| encoder | target | K_t | bound | src loss | H | −gain | W | bound est. (τ̂·W) | h_T loss | h_T acc "
          "| FT loss | FT acc | log K_t | bound ≥ h_T loss |")
  lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['target']} | {r['k_t']} | {r['bound']:.3f} | {r['source_loss']:.3f} | "
                 f"{r['entropy']:.3f} | {r['merge_gain']:.3f} | {r['wasserstein']:.3f} | {r['bound_estimate']:.2f} ({r['estimate_tau_w']:.2f}) "
                 f"| {r['h_t_loss']:.3f} | {r['h_t_acc']:.3f} | {r['ft_loss']:.3f} | {r['ft_acc']:.3f} | "
                 f"{math.log(r['k_t']):.3f} | {'yes' if r['bound'] >= r['h_t_loss'] else 'NO'} |")
  return "\n".join(lines)


def ranking_table(rows: list[dict], targets: list[str]) -> str:
  lines = ["| target | " + " | ".join(RANKED) + " |", "|" + "|".join(["---"] * (len(RANKED) + 1)) + "|"]
  taus = {n: [] for n in RANKED}
  for t in targets:
    trows = [r for r in rows if r["target"] == t]
    truth = [r["ft_acc"] for r in trows]
    cells = []
    for n in RANKED:
      pred = [-r[n] if n.startswith("bound") else r[n] for r in trows]
      tau = weighted_tau(pred, truth) if all(np.isfinite(pred)) else float("nan")
      taus[n].append(tau)
      cells.append(f"{tau:+.3f}")
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  lines.append("| **mean** | " + " | ".join(f"**{np.nanmean(taus[n]):+.3f}**" for n in RANKED) + " |")
  return "\n".join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default=",".join(n for n in zoo_names() if zoo_entry(n).modality == "text"))
  ap.add_argument("--source", default="20ng")
  ap.add_argument("--targets", default="r8,r52,tweets")
  ap.add_argument("--source-limit", type=int, default=1000, help="rows per split of the source (class-stratified)")
  ap.add_argument("--target-limit", type=int, default=500, help="rows per split of each target")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--no-related", action="store_true")
  args = ap.parse_args()
  models, targets = args.models.split(","), args.targets.split(",")
  start = time.perf_counter()
  rows, related = [], []
  for m in models:
    src = resolve_task(args.source, m, limit=args.source_limit, seed=args.seed)
    for t in targets:
      tgt = resolve_task(t, m, limit=args.target_limit, seed=args.seed)
      rows.append(analyse_pair(src, tgt, args.steps, args.seed))
      print(f"{m} {args.source} -> {t}: bound {rows[-1]['bound']:.3f} (h_T loss {rows[-1]['h_t_loss']:.3f}, FT acc "
            f"{rows[-1]['ft_acc']:.3f}; {rows[-1]['seconds']:.1f}s)", flush=True)
    if not args.no_related:
      related.append(analyse_pair(*related_pair(src, args.seed), args.steps, args.seed))
      print(f"{m} related pair: bound {related[-1]['bound']:.3f} vs log K_t {math.log(related[-1]['k_t']):.3f}",
            flush=True)
  print(f"\njax {jax.__version__} on {jax.devices()[0].device_kind}; source {args.source} ({args.source_limit} "
        f"train / test rows), targets {args.target_limit} train / test rows, {args.steps} full-batch steps, seed "
        f"{args.seed}; every number on the test splits\n")
  print(pair_table(rows + related))
  if len(models) >= 2:
    print("\nweighted tau against the fine-tuned accuracy across the encoders (higher = better ranking)\n")
    print(ranking_table(rows, [r["target"] for r in rows[:len(targets)]]))
  valid = sum(r["bound"] >= r["h_t_loss"] for r in rows + related)
  print(f"\nbound >= held-out loss of h_T on {valid} / {len(rows + related)} pairs; "
        f"{time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
  main()
