"""What the terms consume: a (source, target) pair laid out by class, and class-stratified batches of it.

A :class:`Batch` is a weighted sample of both joint distributions:

* source rows ``zs (n_s, d)`` with labels ``ys (n_s,)`` and *within-class* weights ``ws (n_s,)``
  (``sum_{i: y_i = s} ws_i = 1`` for every source class ``s``);
* target points grouped by class, ``zt (K_t, m, d)`` with weights ``wt (K_t, m)`` (each row sums to 1; zero
  weight marks padding), and the target class prior ``pt (K_t,)``.

So the target joint distribution is ``sum_t pt_t sum_j wt_tj delta_(zt_tj, t)`` and the class-conditional source
distributions are ``sum_{i: y_i = s} ws_i delta_(zs_i)``. The full data set is one such batch
(:func:`full_batch`); training draws ``m_s`` points per source class and ``m_t`` per target class, uniformly with
replacement, inside the jitted loop (:func:`sample_batch`) -- static shapes, no padding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.tasks import Task, check_task

__all__ = ["Batch", "TaskPair", "make_pair", "sample_batch", "full_batch"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
  """A class-structured weighted sample of a (source, target) pair (see the module docstring)."""

  zs: jax.Array  # (n_s, d)
  ys: jax.Array  # (n_s,) int
  ws: jax.Array  # (n_s,) within-class weights
  zt: jax.Array  # (K_t, m, d)
  wt: jax.Array  # (K_t, m)
  pt: jax.Array  # (K_t,)
  #: ``m`` when the source rows are class-major, ``m`` rows per class (``ys = repeat(arange(K_s), m)``, as
  #: :func:`sample_batch` draws them); 0 when they are in any order (:func:`full_batch`). Static.
  per_class_source: int = dataclasses.field(default=0, metadata=dict(static=True))

  @property
  def num_target(self) -> int:
    return self.zt.shape[0]

  @property
  def target_labels(self) -> jax.Array:
    """``(K_t, m)`` label of every target slot."""
    return jnp.broadcast_to(jnp.arange(self.zt.shape[0])[:, None], self.wt.shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaskPair:
  """Source and target features sorted by class, with per-class offsets and counts (for sampling in jit)."""

  source: Task
  target: Task
  zs_sorted: jax.Array  # (n_s, d)
  zt_sorted: jax.Array  # (n_t, d)
  s_offsets: jax.Array  # (K_s,)
  s_counts: jax.Array  # (K_s,)
  t_offsets: jax.Array  # (K_t,)
  t_counts: jax.Array  # (K_t,)

  @property
  def num_source(self) -> int:
    return self.source.num_classes

  @property
  def num_target(self) -> int:
    return self.target.num_classes


def _sorted_by_class(task: Task):
  y = np.asarray(task.labels)
  order = np.argsort(y, kind="stable")
  counts = np.bincount(y, minlength=task.num_classes)
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return task.features[order], jnp.asarray(offsets, jnp.int32), jnp.asarray(counts, jnp.int32)


def make_pair(source: Task, target: Task) -> TaskPair:
  """Lay out a (source, target) pair by class. Both tasks must share the feature dimension."""
  check_task(source, "source")
  check_task(target, "target")
  if source.dim != target.dim:
    raise ValueError(f"feature dimension mismatch: source has d={source.dim}, target has d={target.dim} "
                     "(both tasks must come from the same encoder)")
  zs, so, sc = _sorted_by_class(source)
  zt, to, tc = _sorted_by_class(target)
  return TaskPair(source=source, target=target, zs_sorted=zs, zt_sorted=zt, s_offsets=so, s_counts=sc,
                  t_offsets=to, t_counts=tc)


def _draw(key, sorted_z, offsets, counts, per_class):
  u = jax.random.uniform(key, (offsets.shape[0], per_class))
  idx = offsets[:, None] + jnp.minimum(jnp.floor(u * counts[:, None]).astype(jnp.int32), counts[:, None] - 1)
  return sorted_z[idx]  # (K, per_class, d)


def sample_batch(key: jax.Array, pair: TaskPair, per_class_source: int, per_class_target: int) -> Batch:
  """Class-stratified minibatch: ``per_class_source`` points from every source class and ``per_class_target``
  from every target class, uniformly with replacement (jittable; shapes depend only on the two counts)."""
  k_s, k_t = jax.random.split(key)
  ks, kt = pair.num_source, pair.num_target
  zs = _draw(k_s, pair.zs_sorted, pair.s_offsets, pair.s_counts, per_class_source)
  zt = _draw(k_t, pair.zt_sorted, pair.t_offsets, pair.t_counts, per_class_target)
  n_s = ks * per_class_source
  return Batch(zs=zs.reshape(n_s, -1), ys=jnp.repeat(jnp.arange(ks), per_class_source),
               ws=jnp.full((n_s,), 1.0 / per_class_source, zs.dtype), zt=zt,
               wt=jnp.full((kt, per_class_target), 1.0 / per_class_target, zt.dtype), pt=pair.target.prior,
               per_class_source=per_class_source)


def full_batch(pair: TaskPair) -> Batch:
  """The whole pair as one batch: every source point (weight ``1 / n_{y_i}``), target classes padded to the
  largest class with zero-weight rows."""
  counts_t = np.asarray(pair.t_counts)
  offsets_t = np.asarray(pair.t_offsets)
  m = int(counts_t.max())
  slot = np.arange(m)[None, :]
  valid = slot < counts_t[:, None]
  idx = np.where(valid, offsets_t[:, None] + slot, 0)
  zt = jnp.where(jnp.asarray(valid)[..., None], pair.zt_sorted[idx], 0.0)
  wt = jnp.asarray(np.where(valid, 1.0 / counts_t[:, None], 0.0), zt.dtype)
  ys = pair.source.labels
  counts_s = jnp.asarray(pair.source.counts)
  return Batch(zs=pair.source.features, ys=ys, ws=1.0 / counts_s[ys].astype(zt.dtype), zt=zt, wt=wt,
               pt=pair.target.prior)
