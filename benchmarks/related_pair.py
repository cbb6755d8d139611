"""How tight can a certified bound be on a perfectly related real pair, and what limits it?

Pair: 20 Newsgroups (MiniLM-L6 features) split in two stratified halves; the reference task is half A, the target
half B with its labels permuted (the target *is* the source task, relabelled). For growing sizes ``n`` (rows per
split and half) it prints the default certified bound (transforms learned on the train halves, every number on
the test halves) next to ``log K_t`` and the fine-tuned loss, and the same bound with the *true* label map given
(``setting="learned_a"``: only the temperature and the feature map are learned, ``H = 0``). In the second row the
transform has nothing left to find, so its ``W`` is the finite-sample distance between two samples of one
distribution in the head's ``K_s``-dimensional logit space: the floor a certified ``W`` on finite samples cannot go
below, whatever the optimiser.

    python benchmarks/related_pair.py    # halves of 100, 200, 500 rows per split (20NG features: cached after a first run)
    python benchmarks/related_pair.py --limit 4000 --sizes 1000,2000    # where the bound goes below log K_t (12 min)
"""

from __future__ import annotations

import argparse
import math

import jax
import numpy as np

from ttjax import BoundConfig
from ttjax.app.resolve import TaskData, resolve_task, stratified_limit
from ttjax.app.steps import ground_truth
from ttjax.bound import tta

import real_pairs  # the related pair's construction (same folder)


def _subset(task, n: int, seed: int):
  """A class-stratified ``n``-row subset of each split of ``task``."""
  keep = stratified_limit(task.labels, n, seed)
  keep_t = stratified_limit(task.test_labels, n, seed)
  sel = lambda a, k: a if k is None else a[k]
  return TaskData(task.name, task.model, sel(task.features, keep), sel(task.labels, keep), task.class_names,
                  sel(task.test_features, keep_t), sel(task.test_labels, keep_t))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="minilm-l6")
  ap.add_argument("--limit", type=int, default=1000, help="20NG rows per split embedded (class-stratified)")
  ap.add_argument("--sizes", default="100,200,500", help="rows per split of each half")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  full = resolve_task("20ng", args.model, limit=args.limit, seed=args.seed)
  ref, tgt = real_pairs.related_pair(full, args.seed)
  perm = real_pairs.relabelling(full.num_classes, args.seed)  # target label = perm[source label]
  true_map = np.zeros((full.num_classes, full.num_classes))
  true_map[perm, np.arange(full.num_classes)] = 1.0  # B[t, s] = 1 iff t = perm[s]
  print(f"20NG [{args.model}] halves, target labels permuted; K_s = K_t = {full.num_classes}, log K_t = "
        f"{math.log(full.num_classes):.3f}; every number on the test halves\n")
  print(f"{'n/half':>7s} {'variant':>18s} {'bound':>7s} {'src loss':>8s} {'H':>6s} {'W':>6s} {'temp':>6s} "
        f"{'h_T loss':>8s} {'FT loss':>8s}")
  key = jax.random.PRNGKey(args.seed)
  for n in [int(v) for v in args.sizes.split(",")]:
    s, t = _subset(ref, n, args.seed), _subset(tgt, n, args.seed)
    ft = ground_truth(jax.random.fold_in(key, 1), t)
    for name, cfg, kw in (("learned_all", BoundConfig(steps=args.steps, batch_size=None), {}),
                          ("true label map", BoundConfig(steps=args.steps, batch_size=None, setting="learned_a"),
                           {"label_map": true_map})):
      r = tta(s.features, s.labels, t.features, t.labels, key=key, config=cfg,
              source_test=(s.test_features, s.test_labels), target_test=(t.test_features, t.test_labels),
              **kw).result
      print(f"{s.labels.shape[0]:7d} {name:>18s} {r.bound:7.3f} {r.source_loss:8.3f} {r.entropy:6.3f} "
            f"{r.wasserstein:6.3f} {r.temperature:6.3f} {r.target_loss:8.3f} {ft['loss']:8.3f}", flush=True)


if __name__ == "__main__":
  main()
