"""Time and peak memory of one bound evaluation on large tasks (d = 768), n = 1k .. 50k points per task.

Each size runs in its own subprocess (so ``ru_maxrss`` is that size's peak): synthetic source/target tasks of ``n``
points (``K`` classes, d = 768), the source head and starting transforms (:func:`ttjax.bound.prepare`), a
fixed-shape fit (``--steps`` minibatch steps of 1,000 points: independent of ``n``), then
:func:`ttjax.bound.evaluate` with ``BoundConfig(block_size=...)`` -- the block-partition certified ``W`` (no
``n_s x n_t`` cost matrix) plus the terms on all points. ``--space logit`` (default) is the certified default bound
(transport in the head's ``K``-dimensional logit space); ``--space feature`` the paper's variant (transport in
``d = 768`` dimensions, ``tau_hat`` measured). Prints seconds per stage and the peak RSS, then the fitted growth
exponent ``k`` of ``time ~ n^k`` (least squares on log-log) for the evaluation and for the whole run.

    python benchmarks/scale.py                     # n = 1000, 5000, 20000, 50000, default bound
    python benchmarks/scale.py --max-n 5000        # stop earlier
    python benchmarks/scale.py --space feature     # the paper's feature-space variant
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

_CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
from ttjax import bound as bd, synthetic as syn
from ttjax.sampling import make_pair
from ttjax.tasks import make_task
n, k, steps, block, space = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
d = 768
zs, ys = syn.clustered(jax.random.PRNGKey(0), n, d, k, separation=8.0)
zt, yt, _ = syn.related_target(jax.random.PRNGKey(1), zs, ys, k, shift=1.0, rotate=False, noise=0.5)
source, target = make_task(zs, ys), make_task(zt, yt)
del zs, zt
cfg = bd.BoundConfig(steps=steps, batch_size=1000, head_steps=300, space=space, holdout=0.0)
t0 = time.perf_counter()
pair = make_pair(source, target)
cfg, head, params, k_fit = bd.prepare(jax.random.PRNGKey(2), source, target, cfg)
jax.block_until_ready((head, params))
t1 = time.perf_counter()
params, _ = bd.fit_resolved(k_fit, params, bd.fit_data(pair, cfg), head, cfg)
jax.block_until_ready(params)
t2 = time.perf_counter()
res = bd.evaluate(params, pair, head, cfg.replace(block_size=block))
t3 = time.perf_counter()
print(json.dumps(dict(n=n, head=t1 - t0, fit=t2 - t1, evaluate=t3 - t2, total=t3 - t0, bound=res.bound,
                      w=res.wasserstein, tau_hat=res.tau_hat,
                      peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)))
"""


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--max-n", type=int, default=50_000)
  ap.add_argument("--classes", type=int, default=10)
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--block-size", type=int, default=2048)
  ap.add_argument("--space", choices=("logit", "feature"), default="logit",
                  help="logit: the certified default bound; feature: the paper's variant (tau_hat measured)")
  args = ap.parse_args()
  print(f"space={args.space}, K={args.classes}, d=768, {args.steps} fit steps, block {args.block_size}", flush=True)
  sizes = [n for n in (1_000, 5_000, 20_000, 50_000) if n <= args.max_n]
  rows = []
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for n in sizes:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(args.classes), str(args.steps),
                          str(args.block_size), args.space], capture_output=True, text=True, cwd=root)
    if out.returncode != 0:
      print(f"n={n}: failed\n{out.stderr[-2000:]}")
      break
    row = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(f"n={n:6d}  head+init {row['head']:7.1f}s  fit {row['fit']:7.1f}s  evaluate {row['evaluate']:7.1f}s  "
          f"total {row['total']:7.1f}s  peak {row['peak_gib']:5.2f} GiB  bound {row['bound']:.3f}  "
          f"W {row['w']:.3f}  tau_hat {row['tau_hat']:.3f}", flush=True)
  if len(rows) >= 2:
    ns = np.log([r["n"] for r in rows])
    for key in ("evaluate", "total"):
      k = np.polyfit(ns, np.log([r[key] for r in rows]), 1)[0]
      print(f"growth exponent ({key}): time ~ n^{k:.2f}")


if __name__ == "__main__":
  main()
