"""Throughput of batch evaluation: P pairs as one vmapped program vs a Python loop of single-pair runs, same run.

Both compute the full analysis of every pair (centroid-OT start of ``B``, head training, ``config.steps`` fit steps
in ``lax.scan``, certified evaluation) with the same keys: :func:`ttjax.batch.bound_batch` (one compiled program
for all pairs, sharded over the devices present) against ``[ttjax.bound.analyse(k_i, s_i, t_i) for i ...]`` (one
jitted call per pair, the executable reused). Compilation is excluded from both (one warm-up call each). Prints
pairs/s and the ratio, for the batch on every host device and on one device.

The script exposes one XLA host device per CPU core (``--xla_force_host_platform_device_count``, unless
``XLA_FLAGS`` already sets it) so the batch's shards run concurrently; the single-pair loop runs on device 0 with
XLA's usual intra-op threads.

    python benchmarks/batch_speed.py [--space logit|feature]   # default: the certified bound
    python benchmarks/batch_speed.py            # 256 pairs, n = 256, d = 64, K = 5, 300 steps; then n = 1000,
                                                # d = 384, K = 10 with 8 pairs
    python benchmarks/batch_speed.py --quick    # 32 pairs, 100 steps; 4 large pairs
    python benchmarks/batch_speed.py --processes 2   # 32 pairs (--pairs), 100 steps: 1 process x C devices,
                                                     # then 2 processes x C/2 devices (jax.distributed on
                                                     # 127.0.0.1), C = CPU cores; pairs/s and equal bounds

``--processes P`` starts this script as worker processes (``--coordinator`` ... ``--process-id``, which join with
:func:`ttjax.batch.join_processes`), first one process, then ``P``; each worker times ``bound_batch`` after one
warm-up call, and the parent kills every worker of a group that outlives ``--deadline`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
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


def bound_config(space: str, n: int, steps: int) -> bd.BoundConfig:
  """The measured analysis: the default certified bound (``logit``: held-out halves, L-BFGS head per pair, fit and
  certification batched) or the paper's in-sample feature-space bound (``feature``: the ragged vmapped program)."""
  if space == "logit":
    return bd.BoundConfig(steps=steps, batch_size=n, head_steps=steps)
  return bd.BoundConfig(steps=steps, batch_size=n, head_steps=steps, space="feature", holdout=0.0)


def measure(num, n, d, k, steps, loop_pairs, space="logit"):
  cfg = bound_config(space, n, steps)
  pairs = make_pairs(num, n, d, k)
  sources, targets = [p[0] for p in pairs], [p[1] for p in pairs]
  keys = jax.random.split(jax.random.PRNGKey(0), num)
  print(f"space={space} pairs={num} n={n} d={d} K={k} steps={steps} devices={len(jax.devices())}", flush=True)
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


SIZES = dict(n=256, d=64, k=5, steps=100)  # the --processes comparison (the --quick batch)


def worker(args) -> None:
  """One process of a ``--processes`` group: join, time ``bound_batch`` (after a warm-up), print JSON."""
  group = bt.process_group(args.coordinator, args.num_processes, args.process_id)
  if group is not None:
    bt.join_processes(group, timeout=120)
  n, d, k, steps = SIZES["n"], SIZES["d"], SIZES["k"], SIZES["steps"]
  cfg = bound_config(args.space, n, steps)
  sources, targets = zip(*make_pairs(args.pairs, n, d, k))
  keys = jax.random.split(jax.random.PRNGKey(0), args.pairs)
  t = time.perf_counter()
  bt.bound_batch(keys, list(sources), list(targets), cfg)
  first = time.perf_counter() - t
  t = time.perf_counter()
  res = bt.bound_batch(keys, list(sources), list(targets), cfg)
  seconds = time.perf_counter() - t
  print(json.dumps(dict(process=jax.process_index(), processes=jax.process_count(), devices=len(jax.devices()),
                        seconds=seconds, first=first, bounds=[r.bound for r in res])), flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_group(num: int, pairs: int, deadline: float, space: str) -> list[dict]:
  """``num`` worker processes of this script on 127.0.0.1 (cores split evenly into host devices); their JSON."""
  devices = max(1, (os.cpu_count() or 1) // num)
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--pairs", str(pairs), "--space", space,
                             "--coordinator",
                             f"127.0.0.1:{port}", "--num-processes", str(num), "--process-id", str(i)],
                            stdout=subprocess.PIPE, text=True, env=env) for i in range(num)]
  try:
    end = time.monotonic() + deadline
    outs = [p.communicate(timeout=max(1.0, end - time.monotonic()))[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  if any(p.returncode != 0 for p in procs):
    raise SystemExit(f"batch_speed: a worker of the {num}-process group failed: {[p.returncode for p in procs]}")
  return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def compare_processes(num: int, pairs: int, deadline: float, space: str) -> None:
  """Pairs/s of 1 process vs ``num`` processes over the same pairs, and whether their bounds are equal."""
  print(f"space={space} pairs={pairs} n={SIZES['n']} d={SIZES['d']} K={SIZES['k']} steps={SIZES['steps']} "
        f"cores={os.cpu_count()}", flush=True)
  bounds = {}
  for procs in (1, num):
    runs = run_group(procs, pairs, deadline, space)
    slowest = max(r["seconds"] for r in runs)  # the batch is done when every process has its results
    bounds[procs] = [r["bounds"] for r in runs]
    print(f"  {procs} process(es) x {runs[0]['devices'] // procs} device(s): {slowest:8.2f} s -> "
          f"{pairs / slowest:8.2f} pairs/s  (first call incl. compile {max(r['first'] for r in runs):.1f} s)",
          flush=True)
  same = all(b == bounds[1][0] for b in bounds[num])
  rel = max(abs(a / b - 1) for a, b in zip(bounds[num][0], bounds[1][0]))
  print(f"  bounds of every process identical to the 1-process run: {same} (max rel. diff {rel:.1e})", flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--loop-pairs", type=int, default=None, help="pairs in the loop baseline (default: all)")
  ap.add_argument("--processes", type=int, default=None, help="compare 1 process with this many (jax.distributed)")
  ap.add_argument("--pairs", type=int, default=32, help="pairs of the --processes comparison (default 32)")
  ap.add_argument("--deadline", type=float, default=1200, help="seconds a --processes group may take")
  ap.add_argument("--space", choices=("logit", "feature"), default="logit",
                  help="logit: the default certified bound; feature: the paper's in-sample bound (ragged program)")
  ap.add_argument("--coordinator", help=argparse.SUPPRESS)  # a worker of a --processes group
  ap.add_argument("--num-processes", type=int, help=argparse.SUPPRESS)
  ap.add_argument("--process-id", type=int, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.num_processes is not None:
    worker(args)
  elif args.processes:
    compare_processes(args.processes, args.pairs, args.deadline, args.space)
  elif args.quick:
    measure(32, 256, 64, 5, 100, args.loop_pairs or 32, args.space)
    measure(4, 1000, 384, 10, 50, args.loop_pairs or 4, args.space)
  else:
    measure(256, 256, 64, 5, 300, args.loop_pairs or 256, args.space)
    measure(8, 1000, 384, 10, 300, args.loop_pairs or 8, args.space)


if __name__ == "__main__":
  main()
