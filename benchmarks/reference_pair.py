"""The certified logit-space bound on the reference implementation's own kind of synthetic pair, against the
reference approach's speed, in the same run.

Pair: n = 3000 points, d = 384, K = 20 clustered classes (``ttjax.synthetic.clustered``, separation 8); the target
is the source relabelled by a random permutation, rotated by a Haar rotation and shifted (noise 0.5). ttjax's
default analysis: head and transforms learned on half of each task, the bound certified on the other half.

Baseline: ``benchmarks/bound_speed.py``'s reference approach (an exact POT ``ot.emd`` coupling of a 1000-point
minibatch per side every step, then one Adam step through the feature-space cost), timed here on the same pair.

Two ttjax runs: the default, and ``transport_classes=2`` (the training ``W`` keeps each target class's two most
likely source classes point by point and the others as class-mean atoms; the certificate is unchanged).

    python benchmarks/reference_pair.py              # 2000 ttjax steps, 20 baseline steps
    python benchmarks/reference_pair.py --steps 300  # shorter
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from ttjax import bound as bd, synthetic as syn
from ttjax.sampling import make_pair
from ttjax.tasks import make_task

import bound_speed  # the emd baseline (same folder)

REFERENCE_BOUND = 3.42  # the reference implementation's certified-W bound after 2,001 steps (issue 11)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--baseline-steps", type=int, default=20)
  ap.add_argument("--transport-classes", type=int, default=2,
                  help="the second ttjax run's BoundConfig.transport_classes (training surrogate)")
  args = ap.parse_args()
  n, d, k = 3000, 384, 20
  zs, ys = syn.clustered(jax.random.PRNGKey(1), n, d, k, separation=8.0)
  zt, yt, _ = syn.related_target(jax.random.PRNGKey(2), zs, ys, k, shift=1.0, noise=0.5, rotate=True)
  source, target = make_task(zs, ys, name="source"), make_task(zt, yt, name="target")
  key = jax.random.PRNGKey(0)
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; n = {n}, d = {d}, K_s = K_t = {k}")

  runs = {}
  for label, extra in (("default", {}), (f"transport_classes={args.transport_classes}",
                                         dict(transport_classes=args.transport_classes))):
    config = bd.BoundConfig(steps=args.steps, batch_size=1000, **extra)
    # bd.analyse's steps (split, prepare, fit, evaluate), with the fit compiled first and timed alone
    fit_pair, eval_pair, split = bd.split_pair(key, source, target, config)
    cfg, head, params0, k_fit = bd.prepare(key, fit_pair.source, fit_pair.target, config)
    data = bd.fit_data(fit_pair, cfg)
    compiled = bd.fit_resolved.lower(k_fit, params0, data, head, cfg).compile()
    t = time.perf_counter()
    params, _ = jax.block_until_ready(compiled(k_fit, params0, data, head, cfg))
    sps = args.steps / (time.perf_counter() - t)
    runs[label] = (sps, bd.evaluate(params, eval_pair, head, cfg, split=split,
                                    fit_sizes=(fit_pair.source.n, fit_pair.target.n)))

  feature_cfg = bd.BoundConfig(steps=args.baseline_steps, batch_size=1000, space="feature", holdout=0.0).resolved(d)
  pair = make_pair(source, target)
  f_cfg, f_head, f_params, _ = bd.prepare(key, source, target, feature_cfg)
  baseline = bound_speed.make_baseline(pair, f_head, f_cfg)
  baseline(key, f_params, 2)  # compile its jitted pieces
  t = time.perf_counter()
  baseline(key, f_params)
  base_sps = args.baseline_steps / (time.perf_counter() - t)

  print(f"\nbaseline (emd, feature space): {base_sps:.2f} steps/s")
  for label, (sps, result) in runs.items():
    print(f"\nttjax, {label}: {sps:.2f} steps/s = {sps / base_sps:.1f}x the baseline (target >= 15x)")
    print(f"  certified held-out bound @ {args.steps} steps: {result.bound:.4f}   (reference: {REFERENCE_BOUND} after "
          f"2,001 steps; ratio {result.bound / REFERENCE_BOUND:.3f}, target <= 1)")
    print(f"  = source loss {result.source_loss:.4f} + H {result.entropy:.4f} - gain {result.merge_gain:.4f} + W "
          f"{result.wasserstein:.4f};  "
          f"log K_t = {math.log(k):.4f}")
    print(f"  held-out target loss of h_T {result.target_loss:.4f}, accuracy {result.target_accuracy:.3f} "
          f"(split: {result.split}, n_s = {result.n_source_eval}, n_t = {result.n_target_eval})")
    assert result.bound >= result.target_loss


if __name__ == "__main__":
  main()
