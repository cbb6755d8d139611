"""One process of tests/test_distributed.py: ``bound_batch`` over 8 pairs (ragged, or a zoo's), its bounds as JSON.

    python tests/distributed_worker.py                                  # one process (its host devices)
    python tests/distributed_worker.py --coordinator 127.0.0.1:PORT --num-processes 2 --process-id 0

``--devices N`` exposes N host devices (set before jax starts); ``--die-after-join ID``: process ``ID`` exits right
after joining (a process that dies mid-run); ``--timeout``: :func:`ttjax.batch.join_processes`' join / heartbeat
timeout. Run from the repository root.
"""
import argparse
import json
import os
import sys

import numpy as np

FIELDS = ("bound", "wasserstein", "tau_hat", "source_loss", "entropy", "target_loss", "target_accuracy", "split")


def pairs(num=8, dim=5, seed=0, ragged=True):
  """``num`` (source, target) pairs of standardised numpy features: ragged (n and K differ from pair to pair), or a
  zoo's case (the same balanced n and K, widths ``dim + i % 3``)."""
  from ttjax.tasks import make_task
  rng = np.random.default_rng(seed)

  def task(n, k, d=dim):
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)]) if ragged else np.arange(n) % k
    z = 4.0 * rng.normal(size=(k, d))[y] + rng.normal(size=(n, d))
    return make_task(((z - z.mean(0)) / z.std(0)).astype(np.float32), y, standardise=False)

  if not ragged:
    return [(task(48, 3, dim + i % 3), task(40, 4, dim + i % 3)) for i in range(num)]
  return [(task(40 + 6 * i, 3 + i % 2), task(36 + 4 * (i % 3), 3 + (i + 1) % 2)) for i in range(num)]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--coordinator")
  ap.add_argument("--num-processes", type=int)
  ap.add_argument("--process-id", type=int)
  ap.add_argument("--devices", type=int, default=1)
  ap.add_argument("--timeout", type=float, default=60.0)
  ap.add_argument("--die-after-join", type=int, metavar="ID", help="process ID exits right after joining")
  ap.add_argument("--space", choices=("feature", "logit"), default="feature",
                  help="feature: the paper's in-sample bound on ragged pairs; logit: the default certified bound on a "
                  "zoo's pairs (one batched group)")
  args = ap.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"  # tiny programs: compile fast (~35% less time)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  from ttjax import batch as bt, bound as bd
  group = bt.process_group(args.coordinator, args.num_processes, args.process_id)
  if group is not None:
    bt.join_processes(group, timeout=args.timeout)
  if args.die_after_join == jax.process_index():
    os._exit(9)
  cfg = bd.BoundConfig(steps=8, batch_size=24, head_steps=8, eval_iters=60, space="feature", holdout=0.0)
  if args.space == "logit":
    cfg = bd.BoundConfig(steps=8, batch_size=24, head_steps=8, eval_iters=60)
  src, tgt = zip(*pairs(ragged=args.space == "feature"))
  res = bt.bound_batch(jax.random.PRNGKey(0), list(src), list(tgt), cfg)
  print(json.dumps(dict(process=jax.process_index(), processes=jax.process_count(), devices=len(jax.devices()),
                        results=[{f: getattr(r, f) for f in FIELDS} for r in res])), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
