"""Throughput of batch evaluation: P pairs as one vmapped program vs a Python loop of single-pair runs, same run.

Both compute the full analysis of every pair (centroid-OT start of ``B``, head training, ``config.steps`` fit steps
in ``lax.scan``, certified evaluation) with the same keys: :func:`ttjax.batch.bound_batch` (one compiled program
for all pairs, sharded over the devices present) against ``[ttjax.bound.analyse(k_i, s_i, t_i) for i ...]`` (one
jitted call per pair, the executable reused). Compilation is excluded from both (one warm-up call each). Prints
pairs/s and the ratio, for the batch on every host device and on one device.

The script exposes one XLA host device per CPU core (``--xla_force_host_platform_device_count``, unless
``XLA_FLAGS`` already sets it) so the batch's shards run concurrently; the single-pair loop runs on device 0 with
XLA's usual intra-op threads.

    python benchmarks/batch_speed.py            # 256 pairs, n = 256, d = 64, K = 5, 300 steps; then n = 1000,
                                                # d = 384, K = 10 with 8 pairs
    python benchmarks/batch_speed.py --quick    # 32 pairs, 100 steps; 4 large pairs
"""

from __future__ import annotations

import argparse
import os
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before jax starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={os.cpu_count() or 1}").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ttjax import batch as bt, bound as bd, synthetic as syn  # noqa: E402
from ttjax.tasks import make_task  # noqa: E402


def make_pairs(num, n, d, k, seed=0):
  pairs = []
  for i in range(num):
    zs, ys = syn.clustered(jax.random.PRNGKey(seed + 2 * i), n, d, k, separation=4.0)
    zt, yt, _ = syn.related_target(jax.random.PRNGKey(seed + 2 * i + 1), zs, ys, k, shift=1.0, rotate=False,
                                   noise=0.5)
    pairs.append((make_task(zs, ys), make_task(zt, yt)))
  return pairs


def measure(num, n, d, k, steps, loop_pairs):
  cfg = bd.BoundConfig(steps=steps, batch_size=n, head_steps=steps, space="feature", holdout=0.0)
  pairs = make_pairs(num, n, d, k)
  sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
  keys = jax.random.split(jax.random.PRNGKey(0), num)
  print(f"pairs={num} n={n} d={d} K={k} steps={steps} devices={len(jax.devices())}", flush=True)
  timings = {}
  for name, devices in (("batched", jax.devices()), ("batched, 1 device", jax.devices()[:1])):
    if name != "batched" and len(jax.devices()) == 1:
      continue
    t = time.perf_counter()
    bt.bound_batch(keys, sources, targets, cfg, devices=devices)  # compile + run
    first = time.perf_counter() - t
    t = time.perf_counter()
    batched = bt.bound_batch(keys, sources, targets, cfg, devices=devices)
    timings[name] = time.perf_counter() - t
    print(f"  {name:18s}: {timings[name]:8.2f} s for {num} pairs  -> {num / timings[name]:8.2f} pairs/s  (first "
          f"call incl. compile {first:.1f} s)", flush=True)
  loop_n = min(num, loop_pairs)
  bd.analyse(keys[0], sources[0], targets[0], cfg)  # compile
  t = time.perf_counter()
  single = [bd.analyse(keys[i], sources[i], targets[i], cfg).result for i in range(loop_n)]
  t_loop = time.perf_counter() - t
  rel = max(abs(a.bound / b.bound - 1) for a, b in zip(batched, single))
  print(f"  {'loop':18s}: {t_loop:8.2f} s for {loop_n} pairs  -> {loop_n / t_loop:8.2f} pairs/s")
  for name, t_batch in timings.items():
    print(f"  speed-up (throughput), {name}: {(num / t_batch) / (loop_n / t_loop):.2f}x")
  print(f"  max rel. diff of bounds (batched vs loop): {rel:.1e}", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--loop-pairs", type=int, default=None, help="pairs in the loop baseline (default: all)")
  args = ap.parse_args()
  if args.quick:
    measure(32, 256, 64, 5, 100, args.loop_pairs or 32)
    measure(4, 1000, 384, 10, 50, args.loop_pairs or 4)
  else:
    measure(256, 256, 64, 5, 300, args.loop_pairs or 256)
    measure(8, 1000, 384, 10, 300, args.loop_pairs or 8)


if __name__ == "__main__":
  main()
