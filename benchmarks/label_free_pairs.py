"""Label-free relatedness on the built-in real pairs, next to the labelled bound and the fine-tuned accuracy.

For every zoo text encoder and the built-in targets R8 and election tweets, with a 20 Newsgroups subset as the
reference task: the certified bound with the target's labels (head and transforms learned on the train splits,
numbers on the test splits), the label-free relatedness with ``K_t`` given and with ``K_t`` chosen by the silhouette
(the target's train features clustered; learned on half of each train split, evaluated on the other half), and the
fine-tuned accuracy (a linear head on the target's train split, its test split). Then, per target, the weighted tau
of ``-bound`` and ``-relatedness`` against the fine-tuned accuracy across the encoders, and the Pearson correlation
of the relatedness with the bound.

    python benchmarks/label_free_pairs.py                 # 3 encoders x {r8, tweets}
    python benchmarks/label_free_pairs.py --source-limit 200 --target-limit 150 --steps 100
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from ttjax import BoundConfig
from ttjax.app.resolve import resolve_task
from ttjax.app.steps import bound_row, ground_truth, relatedness_row
from ttjax.features import zoo_entry, zoo_names
from ttjax.selection import pearson, weighted_tau


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default=",".join(n for n in zoo_names() if zoo_entry(n).modality == "text"))
  ap.add_argument("--source", default="20ng")
  ap.add_argument("--targets", default="r8,tweets")
  ap.add_argument("--source-limit", type=int, default=400, help="rows per split of the source (class-stratified)")
  ap.add_argument("--target-limit", type=int, default=300, help="rows per split of each target")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  start = time.perf_counter()
  config = BoundConfig(steps=args.steps, batch_size=None)
  key = jax.random.PRNGKey(args.seed)
  rows = []
  for model in args.models.split(","):
    source = resolve_task(args.source, model, limit=args.source_limit, seed=args.seed)
    for name in args.targets.split(","):
      target = resolve_task(name, model, limit=args.target_limit, seed=args.seed)
      given = relatedness_row(key, source, target, config, num_classes=target.num_classes)
      chosen = relatedness_row(key, source, target, config)
      rows.append(dict(target=name, model=model, bound=bound_row(key, source, target, config)["bound"],
                       given=given["relatedness"], chosen=chosen["relatedness"], k=chosen["num_target_classes"],
                       k_true=target.num_classes, ft=ground_truth(jax.random.fold_in(key, 1), target)["accuracy"]))
      print(f"{model} -> {name}: bound {rows[-1]['bound']:.3f}, relatedness {rows[-1]['given']:.3f} (K_t given), "
            f"{rows[-1]['chosen']:.3f} (silhouette K={rows[-1]['k']}), FT acc {rows[-1]['ft']:.3f}", flush=True)
  print(f"\njax {jax.__version__} on {jax.devices()[0].device_kind}; source {args.source} ({args.source_limit} rows per "
        f"split), targets {args.target_limit} rows per split, {args.steps} full-batch steps, seed {args.seed}\n")
  print("| target | encoder | bound | relatedness (K_t given) | relatedness (silhouette, K) | FT acc |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['target']} | {r['model']} | {r['bound']:.3f} | {r['given']:.3f} | {r['chosen']:.3f} ({r['k']}) | "
          f"{r['ft']:.3f} |")
  print("\n| target | −bound | −relatedness (K_t given) | −relatedness (silhouette) | Pearson(relatedness, bound) |")
  print("|---|---|---|---|---|")
  for name in args.targets.split(","):
    t = [r for r in rows if r["target"] == name]
    truth = [r["ft"] for r in t]
    tau = lambda field: weighted_tau([-r[field] for r in t], truth)
    print(f"| {name} | {tau('bound'):+.2f} | {tau('given'):+.2f} | {tau('chosen'):+.2f} | "
          f"{pearson([r['given'] for r in t], [r['bound'] for r in t]):+.2f} |")
  print(f"\n{time.perf_counter() - start:.0f}s in all")


if __name__ == "__main__":
  main()
