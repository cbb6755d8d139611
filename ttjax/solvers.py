"""The certified per-class ``W`` solvers, a strategy of the evaluation: dense (one rounded Sinkhorn plan per class,
jitted) or blocked (a block partition, for large tasks: no ``n_s x n_t`` cost matrix).

Both take every class problem of a label-split ``W`` at once, ``classes(x (n, k), a (K_t, n), y (K_t, m, k),
b (K_t, m), cost_fn) -> (K_t,)``: the transported points (feature space: ``A z + b``; logit space: the tempered
source logits), their weights in each target class's problem, the target points of each class and their weights.
:func:`ttjax.bound.evaluate` picks one by ``BoundConfig.block_size`` (``None``: dense).

**Large tasks** (tens of thousands of points per task).

Training never needs the full data: :func:`ttjax.bound.fit` draws class-stratified minibatches of
``config.batch_size`` points, so its cost does not grow with ``n``. What grows is the *evaluation*: the certified
``W`` solves one OT problem per target class between all ``n_s`` transformed source points and the class's ``n_t``
target points. Dense, that is an ``n_s x n_t,k`` matrix per class (50k x 5k floats = 1 GB, and 3,000 Sinkhorn
passes over it); ott-jax's online geometry (``PointCloud(batch_size=...)``) avoids the memory but recomputes the
``d = 768`` cost at every iteration (``~n_s n_t d`` flops per pass), far too slow on a CPU.

**Block partition (certified).** Split one problem ``(mu = sum_i a_i delta_{x_i}, nu = sum_j b_j delta_{y_j})`` into
blocks ``(mu_k, nu_k)`` with ``sum_k mu_k = mu``, ``sum_k nu_k = nu`` and ``mass(mu_k) = mass(nu_k)``. Any couplings
``P_k in U(mu_k, nu_k)`` add up to a coupling ``P = sum_k P_k in U(mu, nu)``, so

    W(mu, nu)  <=  <P, C>  =  sum_k <P_k, C_k>,

and with each ``P_k`` the rounded Sinkhorn plan of block ``k`` (:func:`ttjax.ot.certified_value`) the sum is the
cost of a feasible coupling: an upper bound of the exact ``W``, like the dense certified value. It is tight when
the blocks follow the optimal plan (mass that should travel between blocks is the only loss). The blocks come from
a recursive *bisection*: project both point sets on the principal axis of their union, cut the measure with more
atoms at its count median and the other at the same mass (the atom on that cut is split in two), pair the two
lower parts and the two upper parts, recurse until a block has at most ``block_size`` atoms per side. That is a
k-d tree built on both measures at once; it sends mass between spatially matched regions. Cutting by count, not
at half the mass, keeps the depth at ``~log2(n / block_size)`` when a few atoms carry most of the mass (a class
problem's source side: every transformed source point, most with a tiny ``B[t, y_i]``). Cost: the partition is
``O(n d log(n / block_size))`` on the host; the blocks' Sinkhorn is ``O(n_t * block_size)`` per iteration in all,
so the evaluation is linear in ``n``, with memory one ``block_size^2`` matrix at a time (``lax.map`` over blocks,
grouped by padded shape -- :func:`padded_size`, eight sizes per octave -- so a small block is not padded to the
largest).

The uniform *minibatch* estimator (mean of ``W`` over random equal-size minibatches, Fatras et al. 2020) is the
special case of random blocks: also an upper bound (the averaged minibatch plans are a coupling) but much looser,
because random blocks ignore geometry.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ttjax import ot

__all__ = ["dense_classes", "blocked_classes", "partition", "padded_size", "blocked_value"]


def dense_classes(x, a, y, b, cost_fn, *, epsilon, num_iters: int, threshold: Optional[float]) -> jax.Array:
  """Every class's certified value ``<round(P_t), C_t>``, ``C_t = cost_fn(x, y_t)``, one class at a time
  (``lax.map``: memory ``n x m``, and each Sinkhorn stops at its own marginal-error threshold). Jittable."""
  one = lambda args: ot.certified_value(cost_fn(x, args[0]), args[1], args[2], epsilon=epsilon, num_iters=num_iters,
                                        threshold=threshold)
  return jax.lax.map(one, (y, a, b))


def blocked_classes(x, a, y, b, cost_fn, *, epsilon, num_iters: int, threshold: Optional[float],
                    block_size: int = 2048, seed: int = 0) -> jax.Array:
  """Every class's certified value by the block partition (:func:`blocked_value`, on the host): an upper bound of
  the exact ``W_t`` like the dense value, never more than one ``block_size``-ish cost matrix at a time."""
  x, a, y, b = (np.asarray(v) for v in (x, a, y, b))
  values = [blocked_value(x, a[t], y[t][b[t] > 0], b[t][b[t] > 0], cost_fn=cost_fn, block_size=block_size,
                          epsilon=float(epsilon), num_iters=num_iters, threshold=threshold, seed=seed + t)[0]
            for t in range(y.shape[0])]
  return jnp.asarray(values, jnp.float32)


def _principal_axis(points: np.ndarray, rng: np.random.Generator, sample: int = 2048, iters: int = 20):
  """Top principal direction of ``points (n, d)`` (power iteration on at most ``sample`` rows)."""
  if points.shape[0] > sample:
    points = points[rng.choice(points.shape[0], sample, replace=False)]
  centred = points - points.mean(0)
  v = rng.normal(size=points.shape[1])
  for _ in range(iters):
    v = centred.T @ (centred @ v)
    norm = np.linalg.norm(v)
    if norm == 0:
      return rng.normal(size=points.shape[1])
    v /= norm
  return v


def _cut(idx: np.ndarray, mass: np.ndarray, proj: np.ndarray, half: float):
  """Split atoms ``idx`` with masses ``mass`` at cumulative mass ``half`` along ``proj`` (atom on the cut split)."""
  order = np.argsort(proj, kind="stable")
  idx, mass = idx[order], mass[order]
  cum = np.cumsum(mass)
  k = int(min(np.searchsorted(cum, half), len(idx) - 1))
  below = half - (cum[k - 1] if k > 0 else 0.0)  # the part of atom k that goes left
  left_i, left_m = np.append(idx[:k], idx[k]), np.append(mass[:k], below)
  right_i, right_m = np.append(idx[k], idx[k + 1:]), np.append(mass[k] - below, mass[k + 1:])
  keep_l, keep_r = left_m > 0, right_m > 0
  return (left_i[keep_l], left_m[keep_l]), (right_i[keep_r], right_m[keep_r])


def partition(x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray, *, block_size: int = 2048,
              seed: int = 0, max_depth: int = 40) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """Matching-mass blocks of ``(x (n, d), a (n,))`` and ``(y (m, d), b (m,))`` by recursive bisection: the side
  with more atoms is cut at its count median along the principal axis of the union, the other at the same mass.

  Returns ``[(ix, ax, iy, by), ...]``: atom indices and masses of each block, ``sum(ax) == sum(by)`` per block, the
  masses of every atom summing (over the blocks it appears in) to its ``a_i`` / ``b_j``; at most ``block_size``
  atoms per side (unless ``max_depth`` is hit). Zero-mass atoms are dropped (they carry nothing).
  """
  rng = np.random.default_rng(seed)
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  b = b * (a.sum() / b.sum())  # equal total mass exactly (float32 inputs may differ by ~1e-7)
  todo = [(np.nonzero(a > 0)[0], a[a > 0], np.nonzero(b > 0)[0], b[b > 0], 0)]
  leaves = []
  while todo:
    ix, ax, iy, by, depth = todo.pop()
    if (len(ix) <= block_size and len(iy) <= block_size) or depth >= max_depth or len(ix) < 2 or len(iy) < 2:
      leaves.append((ix, ax, iy, by))
      continue
    v = _principal_axis(np.concatenate([x[ix], y[iy]]), rng)
    px, py = x[ix] @ v, y[iy] @ v
    # halve the larger side by count (so the depth is ~log2(n / block_size) even when a few atoms carry most of
    # the mass), and cut the other side at the same mass
    median_mass = lambda m, p: np.cumsum(m[np.argsort(p, kind="stable")])[len(m) // 2 - 1]
    if len(ix) >= len(iy):
      left_x = median_mass(ax, px)
      left_y = left_x * (by.sum() / ax.sum())
    else:
      left_y = median_mass(by, py)
      left_x = left_y * (ax.sum() / by.sum())
    (lx, lax_), (rx, rax) = _cut(ix, ax, px, left_x)
    (ly, lay), (ry, ray) = _cut(iy, by, py, left_y)
    todo.append((lx, lax_, ly, lay, depth + 1))
    todo.append((rx, rax, ry, ray, depth + 1))
  return leaves


def _pack(blocks, dtype=np.float32, shape=None):
  """Blocks -> padded arrays ``(num_blocks, S)`` of indices and masses (padding: index 0, mass 0); ``shape``:
  ``(S_x, S_y)``, default the largest block's."""
  sx, sy = shape or (max(len(ix) for ix, _, _, _ in blocks), max(len(iy) for _, _, iy, _ in blocks))
  nb = len(blocks)
  bix, bax = np.zeros((nb, sx), np.int32), np.zeros((nb, sx), dtype)
  biy, bay = np.zeros((nb, sy), np.int32), np.zeros((nb, sy), dtype)
  for k, (ix, ax, iy, by) in enumerate(blocks):
    bix[k, :len(ix)], bax[k, :len(ix)] = ix, ax
    biy[k, :len(iy)], bay[k, :len(iy)] = iy, by
  return bix, bax, biy, bay


@functools.partial(jax.jit, static_argnames=("cost_fn", "num_iters", "threshold"))
def _blocks_value(x, y, bix, bax, biy, bay, epsilon, cost_fn, num_iters, threshold):
  """Sum over blocks of the certified (rounded-plan) cost, one block at a time; ``eps = epsilon * mean(C_k)``
  over the block's real entries."""

  def one(args):
    ix, wa, iy, wb = args
    return ot.certified_value(cost_fn(x[ix], y[iy]), wa, wb, epsilon=epsilon, num_iters=num_iters,
                              threshold=threshold)  # eps relative to the block's real entries (ot.mean_cost)

  return jnp.sum(jax.lax.map(one, (bix, bax, biy, bay)))


def padded_size(k: int) -> int:
  """A block side of ``k`` atoms padded to the next multiple of ``max(2^(bits(k) - 3), 16)``: eight sizes per
  octave above 128, so the padding is less than ``k / 4`` (with powers of two it reached ``k``: a 1250 x 1250
  block ran as 2048 x 2048, 2.7x the Sinkhorn work), while the number of compiled block shapes stays logarithmic
  in ``n``."""
  step = max(1 << max(k.bit_length() - 3, 0), 16)
  return -(-k // step) * step


def blocked_value(x, a, y, b, *, cost_fn=ot.euclidean, block_size: int = 2048, epsilon: float = 0.005,
                  num_iters: int = 3000, threshold: Optional[float] = 1e-5, seed: int = 0) -> tuple[float, int]:
  """Certified upper bound of ``W(sum_i a_i delta_{x_i}, sum_j b_j delta_{y_j})`` by the block partition (module
  docstring). ``x (n, d)``, ``a (n,)``, ``y (m, d)``, ``b (m,)`` with equal total mass. Returns
  ``(value, number of blocks)``. Never builds more than one ``block_size x block_size``-ish cost matrix; blocks
  are solved in groups of equal padded shape (each side padded by :func:`padded_size`)."""
  xn, yn = np.asarray(x), np.asarray(y)
  blocks = partition(xn, np.asarray(a), yn, np.asarray(b), block_size=block_size, seed=seed)
  groups: dict[tuple[int, int], list] = {}
  for blk in blocks:
    groups.setdefault((padded_size(len(blk[0])), padded_size(len(blk[2]))), []).append(blk)
  xj, yj = jnp.asarray(xn), jnp.asarray(yn)
  value = sum(float(_blocks_value(xj, yj, *_pack(g, shape=shape), epsilon, cost_fn, num_iters, threshold))
              for shape, g in groups.items())
  return value, len(blocks)
