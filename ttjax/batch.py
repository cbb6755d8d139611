"""Many (source, target) pairs in one compiled program: padding, ``vmap`` over pairs, sharding over devices.

``bound_batch(key, sources, targets, config)`` computes the TTA bound of ``P`` pairs -- one target against a zoo
of encoders' features, one encoder against many targets, or any list -- through the one per-pair pipeline of
:func:`ttjax.bound.analyse` (split, prepare, fit, evaluate), with ``fit`` and the certified evaluation run as
batched, device-sharded programs instead of a Python loop of jitted calls. Pair ``i`` uses ``keys[i]`` exactly as
``analyse(keys[i], sources[i], targets[i], config)`` does, so the results equal the single runs up to float
reassociation. Two layouts:

* **Prepared pairs** (the default certified bound, and every held-out run): the host steps (held-out split,
  source head, starting transforms) run per pair as in ``analyse``; pairs whose arrays have equal shapes are
  stacked. In logit space the feature dimension is zero-padded to the group's widest first (exact: zero columns
  get zero gradients), so a zoo of encoders on one task pair is one group whatever their widths.
* **Ragged pairs** (the paper's feature-space bound, in sample): the head training, the fit loop and the
  evaluation's terms are vectorised over the pair axis (``vmap`` in blocks of ``chunk`` pairs), with pairs of
  different ``n`` and ``K`` padded as below, and the certified ``W`` solved pair after pair inside the same
  program (its Sinkhorn stops at a threshold: vmapped, every pair would run until the slowest converged).

**Padding (ragged pairs).** Pairs with the same feature dimension ``d`` are batched (``d`` fixes ``Lambda`` and
``A``; each distinct ``d`` is its own program). Within a group, every pair is padded to the group's
``n_s, n_t, K_s, K_t``:

* padded *points* get weight 0 in every sum (``ws``, ``wt``, masks in the means) and are copies of a real point
  of the same task, so every max over points (``tau_hat``, the largest target loss) is unchanged;
* padded *classes* get zero probability everywhere: source prior ``D`` and target rows of ``B`` have logit
  ``-1e9`` (``softmax`` gives exactly 0, gradient exactly 0, Adam leaves them in place), the head's bias for a
  padded source class is ``-1e9``, and ``p_T = 0`` there. A padded target class is an OT problem with zero
  marginals (value 0, finite gradients) entering ``W`` with weight ``min(m_t, p_t) = 0``;
* random draws are padding-invariant: jax's (partitionable, the default) threefry gives element ``i`` of a flat
  draw independently of its length, so the padded samplers below draw flat vectors and read the entries an
  unpadded draw would have used (the head's minibatch permutation, its random labels, the class-stratified
  minibatches of :func:`ttjax.sampling.sample_batch`).

**Epsilon.** The relative ``epsilon`` of every Sinkhorn solve (training surrogate and certified evaluation) is
``epsilon * ot.mean_cost(C, a, b)``, the mean over the pairs whose weights are both positive, so zero-weight padding
rows and columns do not change it. Pairs whose minibatches have the same shape (same ``K_s, K_t, batch_size``; ``n``
may differ) are not padded in training at all and match the single run to float precision; padding without
training is exact (tests), and so is the row/column reduction of the training Sinkhorn (``ot.reduce_cost`` takes
its minima over positive-weight atoms). Ragged pairs *with* learned transforms follow their single runs' objective
step by step until float noise (summation order), slowly amplified by Adam, shows: final bounds agree to ~1e-3.

**Starting label map.** ``learned_all``'s centroid-OT ``B`` (:func:`ttjax.transforms.centroid_label_map`) is solved
for all pairs in one compiled program (:func:`centroid_label_maps`), equal to the single calls up to float rounding.

**Devices.** The pair axis is sharded over ``devices`` (default: all of ``jax.devices()``) with
``jax.shard_map`` on a 1-D ``Mesh(("pairs",))``: each device runs the vmapped program on its block of pairs, with no
communication; ``P`` is padded to a multiple of the device count by repeating pair 0 (dropped from the results).
The same code runs on 1 CPU, 8 GPUs or a TPU slice; on a multi-core CPU, expose one host device per core
(``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax starts) so blocks of pairs run concurrently
(a single pair's program keeps ~one core busy).

**Processes.** Across processes (hosts, or several processes on one machine) this is JAX's multi-controller
runtime: every process calls :func:`join_processes` (``jax.distributed.initialize``) before any JAX computation,
then ``jax.devices()`` spans every process's devices and the default mesh covers them; every process calls
``bound_batch`` with the same pairs and keys. Each process builds only its addressable shards of the inputs
(``jax.make_array_from_callback``), runs its devices' blocks, and the results are gathered to every process with
``multihost_utils.process_allgather`` (on CPU over gloo, jax's default CPU collectives). With the same total
device count the per-device programs are the same, so the results equal the single-process run bit for bit
(``tests/test_distributed.py``: 2 and 4 processes on 127.0.0.1). :func:`process_group` reads the coordinator,
process count and id from arguments or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
:func:`process_gather` collects one JSON-able object per process (the command line splits its models over the
processes with it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import threading
import time
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ttjax import bound as bd
from ttjax import head as hd
from ttjax import logit_bound as lb
from ttjax import ot
from ttjax import terms as tm
from ttjax import transforms as tf
from ttjax.sampling import Batch, TaskPair, full_batch, make_pair
from ttjax.tasks import Task, check_task

__all__ = ["PaddedPair", "pad_pair", "stack_pairs", "fit_head_padded", "centroid_label_maps", "analyse_batch",
           "bound_batch", "pair_mesh", "ProcessGroup", "process_group", "join_processes", "process_gather"]

NEG = -1e9  # logit of a padded class: softmax gives exactly 0 (exp underflows), gradients are exactly 0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PaddedPair:
  """One (source, target) pair padded to common shapes (a pytree; stack ``P`` of them for ``vmap``).

  Source rows in their original order, then padding: ``zs (n_s, d)``, ``ys (n_s,)``, ``s_mask (n_s,)``; the same
  for the target (``zt, yt, t_mask``). Class-sorted copies with per-class offsets/counts for sampling
  (``zs_sorted``, ``s_offsets (K_s,)``, ``s_counts (K_s,)``, count 0 = padded class; same for the target).
  ``ps (K_s,)``, ``pt (K_t,)``: class priors (0 on padded classes). ``full``: the padded full :class:`Batch`
  (target slots ``[0, m_full)`` laid out as :func:`ttjax.sampling.full_batch` does for this pair alone).
  Scalars (int32): ``n_s, n_t, k_s, k_t`` the real sizes, ``m_full`` the pair's own slot count, ``m_s, m_t``
  the points per class of a training minibatch (``ceil(batch_size / K)``), ``head_batch`` the head's minibatch
  and ``head_rounds`` the sort rounds of its permutation. Static: ``m_s_max, m_t_max, head_batch_max``.
  """

  zs: jax.Array
  ys: jax.Array
  s_mask: jax.Array
  zt: jax.Array
  yt: jax.Array
  t_mask: jax.Array
  zs_sorted: jax.Array
  s_offsets: jax.Array
  s_counts: jax.Array
  zt_sorted: jax.Array
  t_offsets: jax.Array
  t_counts: jax.Array
  ps: jax.Array
  pt: jax.Array
  full: Batch
  n_s: jax.Array
  n_t: jax.Array
  k_s: jax.Array
  k_t: jax.Array
  m_full: jax.Array
  m_s: jax.Array
  m_t: jax.Array
  head_batch: jax.Array
  head_rounds: jax.Array
  m_s_max: int = dataclasses.field(default=1, metadata=dict(static=True))
  m_t_max: int = dataclasses.field(default=1, metadata=dict(static=True))
  head_batch_max: int = dataclasses.field(default=1, metadata=dict(static=True))

  def draw_batch(self, key: jax.Array) -> Batch:
    """A class-stratified minibatch equal to ``sample_batch(key, pair, m_s, m_t)`` of the unpadded pair, laid
    out with ``m_s_max`` slots per source class and ``m_t_max`` per target class (extra slots weight 0)."""
    k_s, k_t = jax.random.split(key)
    zs, vs = _draw_padded(k_s, self.zs_sorted, self.s_offsets, self.s_counts, self.m_s, self.m_s_max)
    zt, vt = _draw_padded(k_t, self.zt_sorted, self.t_offsets, self.t_counts, self.m_t, self.m_t_max)
    ks = self.s_offsets.shape[0]
    dt = zs.dtype
    return Batch(zs=zs.reshape(ks * self.m_s_max, -1), ys=jnp.repeat(jnp.arange(ks), self.m_s_max),
                 ws=(vs / self.m_s.astype(dt)).reshape(-1).astype(dt), zt=zt,
                 wt=(vt / self.m_t.astype(dt)).astype(dt), pt=self.pt, per_class_source=self.m_s_max)


def _draw_padded(key, sorted_z, offsets, counts, m, m_max):
  """``(K, m_max, d)`` points and ``(K, m_max)`` validity: slot ``j < m`` of class ``k`` reads the uniform an
  unpadded ``uniform(key, (K_real, m))`` puts at ``[k, j]`` (flat index ``k m + j``; threefry is prefix-stable)."""
  k = offsets.shape[0]
  u = jax.random.uniform(key, (k * m_max,))
  slot = jnp.arange(m_max)[None, :]
  valid = (slot < m) & (counts[:, None] > 0)
  u = u[jnp.where(valid, jnp.arange(k)[:, None] * m + slot, 0)]
  idx = offsets[:, None] + jnp.minimum(jnp.floor(u * counts[:, None]).astype(jnp.int32), counts[:, None] - 1)
  idx = jnp.clip(idx, 0, sorted_z.shape[0] - 1)
  return sorted_z[idx], valid.astype(sorted_z.dtype)


def _shuffle_rounds(n: int) -> int:
  """Sort rounds of ``jax.random.permutation`` of ``n`` items (jax's ``_shuffle``: ``ceil(3 ln n / ln(2^32-1))``)."""
  return int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))


def _padded_prefix_permutation(key, n, n_pad, rounds, rounds_max):
  """``permutation(key, n)`` (jax's sort-based shuffle) computed on ``n_pad >= n`` slots: sort keys for position
  ``i`` are the same bits an unpadded draw gives it, and padded positions sort last. Returns ``(n_pad,)`` whose
  first ``n`` entries equal ``jax.random.permutation(key, n)``."""
  x = jnp.arange(n_pad)
  for r in range(rounds_max):
    key, subkey = jax.random.split(key)
    bits = jax.random.bits(subkey, (n_pad,), jnp.uint32)
    _, _, shuffled = jax.lax.sort((x >= n, bits, x), num_keys=2, is_stable=True)
    x = jnp.where(r < rounds, shuffled, x)
  return x


def fit_head_padded(key: jax.Array, pp: PaddedPair, *, tau: float, penalty: float, steps: int,
                    learning_rate: float, weight_decay: float = 1e-4) -> hd.LinearHead:
  """:func:`ttjax.head.fit_head` on a padded pair: the same loss, optimiser and random draws (minibatch
  ``permutation(n)[:batch]``, random labels ``randint(0, K)``) as the unpadded call, padded rows and classes
  masked out. Returns a head with ``K_s`` (padded) rows; padded classes have bias ``-1e9``."""
  z, y = pp.zs, pp.ys
  kp, d = pp.ps.shape[0], z.shape[1]
  class_valid = jnp.arange(kp) < pp.k_s
  head = hd.LinearHead(W=jnp.zeros((kp, d), z.dtype), c=jnp.where(class_valid, 0.0, NEG).astype(z.dtype))
  bmax = pp.head_batch_max
  rounds_max = _shuffle_rounds(z.shape[0])
  w = (jnp.arange(bmax) < pp.head_batch).astype(z.dtype) / pp.head_batch.astype(z.dtype)

  def loss(head, idx, k_rand):
    yb = y[idx]
    y_rand = jax.random.randint(k_rand, yb.shape, 0, pp.k_s)
    return hd.penalised_loss(head, z[idx], yb, y_rand, tau, penalty, weights=w)

  draw = lambda k: _padded_prefix_permutation(k, pp.n_s, z.shape[0], pp.head_rounds, rounds_max)[:bmax]
  return hd.adamw_scan(loss, head, key, steps, learning_rate, weight_decay, draw)


# ----------------------------------------------------------------------------------------------------- padding


def _sorted(z, y, k):
  order = np.argsort(y, kind="stable")
  counts = np.bincount(y, minlength=k)
  return z[order], np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32), counts.astype(np.int32)


def _pad_rows(a, n, fill_row=0):
  """Pad rows of ``a`` to ``n`` with copies of row ``fill_row``."""
  if a.shape[0] == n:
    return a
  return np.concatenate([a, np.repeat(a[fill_row:fill_row + 1], n - a.shape[0], axis=0)], axis=0)


def _pad_vec(a, n, value=0):
  return np.concatenate([a, np.full((n - a.shape[0],), value, a.dtype)]) if a.shape[0] < n else a


def pad_pair(source: Task, target: Task, *, n_s: int, n_t: int, k_s: int, k_t: int, m_full: int,
             batch_size: Optional[int], m_s_max: int = 1, m_t_max: int = 1, head_batch: int = 1024,
             head_batch_max: Optional[int] = None) -> PaddedPair:
  """Lay out one pair padded to ``(n_s, n_t)`` points, ``(K_s, K_t)`` classes and ``m_full`` target slots per
  class in the full batch (host-side numpy; see the module docstring for what padding means)."""
  zs0, ys0 = np.asarray(source.features), np.asarray(source.labels)
  zt0, yt0 = np.asarray(target.features), np.asarray(target.labels)
  ks0, kt0 = source.num_classes, target.num_classes
  dt = zs0.dtype
  zs, ys = _pad_rows(zs0, n_s), _pad_rows(ys0, n_s)
  zt, yt = _pad_rows(zt0, n_t), _pad_rows(yt0, n_t)
  s_mask, t_mask = np.arange(n_s) < zs0.shape[0], np.arange(n_t) < zt0.shape[0]
  zss, so, sc = _sorted(zs0, ys0, ks0)
  zts, to, tc = _sorted(zt0, yt0, kt0)
  ps = sc / sc.sum()
  pt = tc / tc.sum()
  # full batch: source rows with weight 1 / n_{y_i} (0 on padding); target slots per class, zero-padded
  ws = np.where(s_mask, 1.0 / np.maximum(np.bincount(ys0, minlength=ks0)[ys], 1), 0.0).astype(dt)
  slot = np.arange(m_full)[None, :]
  valid = slot < _pad_vec(tc, k_t)[:, None]
  idx = np.where(valid, _pad_vec(to, k_t)[:, None] + slot, 0)
  zt_full = np.where(valid[..., None], zts[np.minimum(idx, zts.shape[0] - 1)], 0.0).astype(dt)
  wt = np.where(valid, 1.0 / np.maximum(_pad_vec(tc, k_t), 1)[:, None], 0.0).astype(dt)
  full = Batch(zs=zs, ys=ys.astype(np.int32), ws=ws, zt=zt_full, wt=wt, pt=_pad_vec(pt.astype(dt), k_t))
  per = lambda k: max(1, math.ceil(batch_size / k)) if batch_size is not None else 1
  hb = min(head_batch, zs0.shape[0])
  i32 = lambda v: np.asarray(v, np.int32)
  return PaddedPair(
      zs=zs, ys=ys.astype(np.int32), s_mask=s_mask, zt=zt, yt=yt.astype(np.int32), t_mask=t_mask,
      zs_sorted=_pad_rows(zss, n_s), s_offsets=_pad_vec(so, k_s), s_counts=_pad_vec(sc, k_s),
      zt_sorted=_pad_rows(zts, n_t), t_offsets=_pad_vec(to, k_t), t_counts=_pad_vec(tc, k_t),
      ps=_pad_vec(ps.astype(dt), k_s), pt=_pad_vec(pt.astype(dt), k_t), full=full,
      n_s=i32(zs0.shape[0]), n_t=i32(zt0.shape[0]), k_s=i32(ks0), k_t=i32(kt0), m_full=i32(int(tc.max())),
      m_s=i32(per(ks0)), m_t=i32(per(kt0)), head_batch=i32(hb), head_rounds=i32(_shuffle_rounds(zs0.shape[0])),
      m_s_max=m_s_max, m_t_max=m_t_max, head_batch_max=head_batch_max or hb)


def stack_pairs(pairs: Sequence[tuple[Task, Task]], batch_size: Optional[int]) -> PaddedPair:
  """Pad every pair to the group's largest shapes and stack them along a leading pair axis ``(P, ...)``."""
  dims = {s.dim for s, _ in pairs} | {t.dim for _, t in pairs}
  if len(dims) != 1:
    raise ValueError(f"stack_pairs: pairs of one batch must share the feature dimension, got {sorted(dims)}")
  n_s = max(s.n for s, _ in pairs)
  n_t = max(t.n for _, t in pairs)
  k_s = max(s.num_classes for s, _ in pairs)
  k_t = max(t.num_classes for _, t in pairs)
  m_full = max(int(t.counts.max()) for _, t in pairs)
  per = lambda k: max(1, math.ceil(batch_size / k)) if batch_size is not None else 1
  m_s_max = max(per(s.num_classes) for s, _ in pairs)
  m_t_max = max(per(t.num_classes) for _, t in pairs)
  hb_max = max(min(1024, s.n) for s, _ in pairs)
  padded = [pad_pair(s, t, n_s=n_s, n_t=n_t, k_s=k_s, k_t=k_t, m_full=m_full, batch_size=batch_size,
                     m_s_max=m_s_max, m_t_max=m_t_max, head_batch_max=hb_max) for s, t in pairs]
  return jax.tree.map(lambda *xs: np.stack(xs), *padded)


def _pad_params(params: tf.Transforms, k_s: int, k_t: int) -> tf.Transforms:
  ks0, kt0 = params.b_logits.shape[1], params.b_logits.shape[0]
  d_logits = np.full((k_s,), NEG, np.float32)
  d_logits[:ks0] = np.asarray(params.d_logits)
  b_logits = np.zeros((k_t, k_s), np.float32)
  b_logits[:kt0, :ks0] = np.asarray(params.b_logits)
  b_logits[kt0:, :] = NEG
  return dataclasses.replace(params, d_logits=d_logits, b_logits=b_logits, A=np.asarray(params.A),
                             b=np.asarray(params.b), A_bar=np.asarray(params.A_bar))


def _unpad_params(params: tf.Transforms, k_s: int, k_t: int) -> tf.Transforms:
  return dataclasses.replace(params, d_logits=params.d_logits[:k_s], b_logits=params.b_logits[:k_t, :k_s])


def _pad_head(head: hd.LinearHead, k_s: int) -> hd.LinearHead:
  w, c = np.asarray(head.W), np.asarray(head.c)
  pad = k_s - w.shape[0]
  return hd.LinearHead(W=np.concatenate([w, np.zeros((pad, w.shape[1]), w.dtype)]),
                       c=np.concatenate([c, np.full((pad,), NEG, c.dtype)]))


def centroid_label_maps(pairs: Sequence[tuple[Task, Task]], *, epsilon: float = 0.1) -> list[np.ndarray]:
  """:func:`ttjax.transforms.centroid_label_map` of every ``(source, target)`` pair, ``(K_t, K_s)`` each, with the
  Sinkhorn solves in one compiled program (:func:`ttjax.transforms.centroid_plans`) per distinct ``(K_s, K_t, d)``
  instead of one call per pair; equal to the single calls up to float rounding (~1e-7, often bit for bit)."""
  out: list[Optional[np.ndarray]] = [None] * len(pairs)
  groups: dict[tuple, list[int]] = {}
  for i, (s, t) in enumerate(pairs):
    groups.setdefault((s.num_classes, t.num_classes, s.dim), []).append(i)
  for idx in groups.values():
    stats = lambda side: [np.stack(v) for v in zip(*[tf.class_centroids(pairs[i][side].features,
                                                                         pairs[i][side].labels,
                                                                         pairs[i][side].num_classes) for i in idx])]
    (mu_s, ps), (mu_t, pt) = stats(0), stats(1)
    for i, plan in zip(idx, np.asarray(tf.centroid_plans(mu_s, mu_t, ps, pt, epsilon))):
      out[i] = tf.label_map_from_plan(plan)
  return out


# ------------------------------------------------------------------------------------------- per-pair programs


def _train_one(config: bd.BoundConfig, train_head: bool, learn: bool, k_head, k_fit, pp: PaddedPair, params,
               head):
  if train_head:
    head = fit_head_padded(k_head, pp, tau=config.tau, penalty=config.head_penalty, steps=config.head_steps,
                           learning_rate=config.head_lr)
  history = {}
  if learn:
    data = pp.full if config.batch_size is None else pp
    params, history = bd.fit_resolved(k_fit, params, data, head, config)
  return params, head, history


def _evaluate_terms_one(config: bd.BoundConfig, params, pp: PaddedPair, head):
  """:func:`ttjax.bound.feature_terms` on a padded pair: fixed-size work, vmapped over pairs."""
  return bd.feature_terms(params, head, pp.full, (pp.zs, pp.ys), (pp.zt, pp.yt), config, pp.s_mask, pp.t_mask)


def _certified_one(config: bd.BoundConfig, params, full: Batch):
  """The certified label-split ``(w0, mismatch)`` of one padded pair (:func:`ttjax.bound.certified_w`; zero-weight
  padding is left out of the relative epsilon by ``ot.mean_cost``, so this is padding-exact)."""
  w0, _, mismatch = bd.certified_w(params, full, config)
  return w0, mismatch


def _fit_one(config: bd.BoundConfig, k_fit, params, data, head):
  """:func:`ttjax.bound.fit` of one prepared pair."""
  return bd.fit_resolved(k_fit, params, data, head, config)


def _certify_one(config: bd.BoundConfig, params, pair: TaskPair, batch: Batch, head):
  """The certified evaluation of one prepared pair: logit space, :func:`ttjax.logit_bound.certified_terms`;
  feature space, :func:`ttjax.bound.evaluate_terms` with the certified label-split ``W`` as ``w0`` / ``mismatch``."""
  if config.space == "logit":
    return lb.certified_terms(params, pair, batch, head, config)
  w0, _, mismatch = bd.certified_w(params, batch, config)
  return dict(bd.evaluate_terms(params, pair, head, batch, config), w0=w0, mismatch=mismatch)


# ------------------------------------------------------------------------------------------------- sharding


def pair_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh ``("pairs",)`` over ``devices`` (default: every device, across hosts after
  ``jax.distributed.initialize()``)."""
  return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), ("pairs",))


@functools.lru_cache(maxsize=64)
def _program(one, flags: tuple, nargs: int, config_structure, mesh: Mesh, chunk: Optional[int], sequential: bool):
  """A jitted ``shard_map`` over the pair axis running ``one(config, *flags, *pair_args)`` for every pair of the
  device's block: ``lax.map`` in blocks of ``chunk`` pairs (``chunk=None``: plain ``vmap``), or strictly one pair
  after another with ``sequential`` -- for the certified ``W``, whose Sinkhorn stops at a marginal-error
  threshold: vmapped, its ``while_loop`` would run every pair until the slowest pair of the block converged (up to
  ``eval_iters``), where a single run stops at its own count. The first argument, the resolved config, is
  replicated and traced. Cached per (function, flags, config structure -- its static fields --, mesh, chunk): a
  config that differs only in its numbers reuses the program."""
  del config_structure  # part of the cache key only
  body = lambda config: lambda a: one(config, *flags, *a)
  if sequential:
    local = lambda config, *args: jax.lax.map(body(config), args)
  elif chunk is None:
    local = lambda config, *args: jax.vmap(body(config))(args)
  else:
    local = lambda config, *args: jax.lax.map(body(config), args, batch_size=chunk)
  spec = PartitionSpec("pairs")
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(),) + (spec,) * nargs, out_specs=spec,
                               check_vma=False))


def _run(one, config: bd.BoundConfig, mesh: Mesh, chunk, *args, flags: tuple = (), sequential: bool = False):
  """Run :func:`_program` on sharded pair arguments, with ``config``'s numbers as traced arguments (replicated)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  put = lambda x: (lambda a: jax.make_array_from_callback(a.shape, replicated, lambda idx: a[idx]))(
      np.asarray(x, np.float32))
  program = _program(one, flags, len(args), jax.tree_util.tree_structure(config), mesh, chunk, sequential)
  return program(jax.tree.map(put, config), *args)


def _shard(tree, mesh: Mesh):
  """Place ``(P, ...)`` host arrays with the pair axis split over the mesh (only addressable shards are built)."""
  sharding = NamedSharding(mesh, PartitionSpec("pairs"))

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def _gather(tree):
  """Every pair's results on every process (several processes: ``process_allgather``, tests/test_distributed.py)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


# ------------------------------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """One multi-controller run: the coordinator ``host:port`` (process 0 serves it), the process count, this id."""

  coordinator: str
  num_processes: int
  process_id: int


def process_group(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                  process_id: Optional[int] = None, environ=None) -> Optional[ProcessGroup]:
  """The :class:`ProcessGroup` of the arguments, each defaulting to ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` in ``environ`` (default ``os.environ``); ``None`` when none of the
  three is set anywhere (one process). Raises ``ValueError`` when only some are set or they do not fit."""
  env = os.environ if environ is None else environ
  given = dict(coordinator=coordinator or env.get("JAX_COORDINATOR_ADDRESS"),
               num_processes=env.get("JAX_NUM_PROCESSES") if num_processes is None else num_processes,
               process_id=env.get("JAX_PROCESS_ID") if process_id is None else process_id)
  if all(v in (None, "") for v in given.values()):
    return None
  missing = [k for k, v in given.items() if v in (None, "")]
  if missing:
    raise ValueError(f"several processes need a coordinator, a process count and a process id; missing: "
                     f"{', '.join(missing)} (flags or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
  try:
    num, pid = int(given["num_processes"]), int(given["process_id"])
  except ValueError:
    raise ValueError(f"process count and id must be integers, got {given['num_processes']!r}, "
                     f"{given['process_id']!r}") from None
  if num < 1 or not 0 <= pid < num:
    raise ValueError(f"process id must be in [0, {num}) for {num} processes, got {pid}")
  if ":" not in given["coordinator"]:
    raise ValueError(f"coordinator must be host:port, got {given['coordinator']!r}")
  return ProcessGroup(str(given["coordinator"]), num, pid)


def join_processes(group: ProcessGroup, timeout: float = 60.0) -> None:
  """``jax.distributed.initialize`` for ``group`` (before any JAX computation).

  If not every process has joined within ``timeout`` seconds, this process writes ``ttjax: error: ...`` to stderr
  and exits with status 1 (jax's own deadline aborts from C++ with a stack trace; it is set later than ours).
  Once joined, a process that dies stops sending heartbeats: after ``timeout`` seconds jax's coordination service
  terminates every other process ("The following tasks are unhealthy (stopped sending heartbeats)"). A process
  that exits early (an error) waits at most ``timeout`` seconds for the others at jax's shutdown barrier."""
  def give_up():
    sys.stderr.write(f"ttjax: error: process {group.process_id} of {group.num_processes}: not every process joined "
                     f"the coordinator {group.coordinator} within {timeout:g} s\n")
    sys.stderr.flush()
    os._exit(1)

  watchdog = threading.Timer(timeout, give_up)
  watchdog.daemon = True
  watchdog.start()
  try:
    seconds = int(math.ceil(timeout))
    jax.distributed.initialize(group.coordinator, group.num_processes, group.process_id,
                               initialization_timeout=seconds + 30, heartbeat_timeout_seconds=seconds,
                               shutdown_timeout_seconds=seconds)
  finally:
    watchdog.cancel()


def _plain(v):
  """numpy scalars and arrays as Python numbers and lists (``json.dumps`` default)."""
  return v.tolist() if isinstance(v, (np.ndarray, np.generic)) else str(v)


def process_gather(obj) -> list:
  """``obj`` (JSON-able; numpy scalars allowed) of every process, in process order, on every process (one
  process: ``[obj]`` itself). Every process must call it, in the same order as its other collectives."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj, default=_plain).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(rows[i, :sizes[i]].tobytes().decode()) for i in range(rows.shape[0])]


# ------------------------------------------------------------------------------------------------- public API


def _as_list(x, n):
  return [x] * n if isinstance(x, (Task, hd.LinearHead)) or x is None else list(x)


def analyse_batch(key: jax.Array, sources: Union[Task, Sequence[Task]], targets: Union[Task, Sequence[Task]],
                  config: bd.BoundConfig = bd.BoundConfig(), *, heads=None, label_maps=None, priors=None,
                  devices: Optional[Sequence[jax.Device]] = None, chunk: Optional[int] = 4) -> list[bd.Analysis]:
  """:func:`ttjax.bound.analyse` for ``P`` pairs at once (see the module docstring).

  Args:
    key: one PRNG key (split into ``P``: pair ``i`` gets ``split(key, P)[i]``) or a ``(P, 2)`` array of keys.
    sources, targets: ``P`` tasks each, or one task used for every pair.
    config: one configuration for every pair.
    heads, label_maps, priors: optional per-pair pre-trained heads / fixed ``B`` / ``D`` (a list, ``None``
      entries allowed; a single head is shared).
    devices: the devices to shard the pair axis over (default all); ``chunk``: pairs per vectorised block on each
      device (``None``: all of a device's pairs at once). Small blocks keep the working set in cache: on a 2-core
      CPU with 64 pairs of n = 256, d = 64, blocks of 4 ran ~25% faster than one block of all pairs.

  Returns:
    one :class:`ttjax.bound.Analysis` per pair, in order. ``result.seconds`` is the batch's wall time / ``P``.
  """
  start = time.perf_counter()
  sources, targets = list(_as_list(sources, 1)), list(_as_list(targets, 1))
  num = max(len(sources), len(targets))
  sources = sources * num if len(sources) == 1 else sources
  targets = targets * num if len(targets) == 1 else targets
  if len(sources) != len(targets):
    raise ValueError(f"analyse_batch: {len(sources)} sources for {len(targets)} targets")
  if num == 0:
    raise ValueError("analyse_batch: no pairs; give one or more source and target Tasks (ttjax.make_task)")
  for i, (s, t) in enumerate(zip(sources, targets)):
    check_task(s, f"sources[{i}]")
    check_task(t, f"targets[{i}]")
    if s.dim != t.dim:
      raise ValueError(f"pair {i}: source has d={s.dim}, target d={t.dim} (both must come from the same encoder)")
  keys = jnp.asarray(key)
  keys = jax.random.split(keys, num) if keys.ndim == 1 else keys
  if keys.shape[0] != num:
    raise ValueError(f"analyse_batch: {keys.shape[0]} keys for {num} pairs")
  heads, label_maps, priors = _as_list(heads, num), _as_list(label_maps, num), _as_list(priors, num)
  if config.space == "logit" or config.holdout > 0 or config.block_size is not None:
    out = _analyse_prepared(keys, sources, targets, config, heads, label_maps, priors, pair_mesh(devices), chunk)
    seconds = (time.perf_counter() - start) / num
    return [dataclasses.replace(a, result=dataclasses.replace(a.result, seconds=seconds)) for a in out]
  mesh = pair_mesh(devices)
  out: list[Optional[bd.Analysis]] = [None] * num
  groups: dict[int, list[int]] = {}
  for i, s in enumerate(sources):
    groups.setdefault(s.dim, []).append(i)
  for dim, idx in groups.items():
    for i, a in zip(idx, _analyse_group(keys[np.asarray(idx)], [sources[i] for i in idx],
                                        [targets[i] for i in idx], config.resolved(dim),
                                        [heads[i] for i in idx], [label_maps[i] for i in idx],
                                        [priors[i] for i in idx], mesh, chunk)):
      out[i] = a
  seconds = (time.perf_counter() - start) / num
  return [dataclasses.replace(a, result=dataclasses.replace(a.result, seconds=seconds)) for a in out]


def bound_batch(key: jax.Array, sources, targets, config: bd.BoundConfig = bd.BoundConfig(),
                **kw) -> list[bd.BoundResult]:
  """The :class:`ttjax.bound.BoundResult` of every pair (:func:`analyse_batch` without the extras)."""
  return [a.result for a in analyse_batch(key, sources, targets, config, **kw)]


# ------------------------------------------------------------------------------ prepared pairs (default path)


def _pad_last(x, d: int):
  """Zero-pad the last axis of ``x`` to ``d``."""
  x = np.asarray(x)
  return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, d - x.shape[-1])]) if x.shape[-1] < d else x


def _pad_task(task: Task, d: int) -> Task:
  return Task(features=_pad_last(task.features, d), labels=np.asarray(task.labels), num_classes=task.num_classes)


def _pad_pair_dim(pair: TaskPair, d: int) -> TaskPair:
  return dataclasses.replace(
      pair, source=_pad_task(pair.source, d), target=_pad_task(pair.target, d),
      zs_sorted=_pad_last(pair.zs_sorted, d), zt_sorted=_pad_last(pair.zt_sorted, d),
      **{f: np.asarray(getattr(pair, f)) for f in ("s_offsets", "s_counts", "t_offsets", "t_counts")})


def _pad_batch_dim(batch: Batch, d: int) -> Batch:
  return dataclasses.replace(batch, zs=_pad_last(batch.zs, d), zt=_pad_last(batch.zt, d),
                             **{f: np.asarray(getattr(batch, f)) for f in ("ys", "ws", "wt", "pt")})


def _pad_layout(layout: tuple, d: int) -> tuple:
  """A pair's data ``(fit data, eval pair, eval batch)`` with its features zero-padded to ``d`` columns."""
  data, pair, batch = layout
  data = _pad_batch_dim(data, d) if isinstance(data, Batch) else _pad_pair_dim(data, d)
  return data, _pad_pair_dim(pair, d), _pad_batch_dim(batch, d)


def _pad_transforms(prepared: tuple, d: int) -> tuple:
  """One prepared logit-space pair's ``(k_fit, params, head)`` for features zero-padded to ``d`` columns
  (:func:`_pad_layout`): the head's ``W`` with zero columns, ``A_bar`` with an identity block and ``b`` with zeros.
  Exact: a zero column gets a zero gradient everywhere (logits, ``A_bar``, ``b``, the map penalty at its minimum),
  so Adam leaves the padding where it is and every number of the real block is unchanged."""
  k_fit, params, head = prepared
  dim = params.A_bar.shape[0]
  a_bar = np.eye(d, dtype=np.float32)
  a_bar[:dim, :dim] = np.asarray(params.A_bar)
  params = dataclasses.replace(params, A_bar=a_bar, b=_pad_last(params.b, d),
                               **{f: np.asarray(getattr(params, f)) for f in ("p_logits", "log_temperature")})
  return np.asarray(k_fit), params, hd.LinearHead(W=_pad_last(head.W, d), c=np.asarray(head.c))


def _analyse_prepared(keys, sources, targets, config, heads, label_maps, priors, mesh, chunk) -> list[bd.Analysis]:
  """The one per-pair pipeline (:func:`ttjax.bound.analyse`: split, prepare, fit, evaluate) for every pair, with
  ``fit`` and the certified evaluation run as batched, device-sharded programs.

  The host steps run per pair with the pair's key exactly as ``analyse`` runs them (the held-out split, the source
  head, the starting transforms). Pairs whose arrays have the same shapes are stacked: in logit space the feature
  dimension is zero-padded to the widest first (:func:`_pad_layout`, :func:`_pad_transforms`: exact), so the
  encoders of a zoo on one (source, target) task pair form one group; in feature space ``d`` fixes ``Lambda``, ``tau`` and ``A``, so each
  ``d`` is its own group. Each group's fits run as one vmapped program (blocks of ``chunk`` pairs), its certified
  evaluations one pair after another in one program (see :func:`_program`). Over several processes, a process
  prepares (head, starting transforms) only the pairs its own devices hold; the heads and every result are then
  gathered to every process."""
  num = len(sources)
  logit = config.space == "logit"
  dims = [s.dim for s in sources]
  configs = [config.resolved(d) for d in dims]
  splits = [bd.split_pair(keys[i], sources[i], targets[i], config) for i in range(num)]  # cheap, host
  width = lambda i: max(dims) if logit else dims[i]
  # each pair's data (fit data, eval pair, eval batch), built once, its features padded to the group's width
  layouts = [(bd.fit_data(splits[i][0], configs[i]), splits[i][1], full_batch(splits[i][1])) for i in range(num)]
  layouts = [_pad_layout(lay, width(i)) if logit else lay for i, lay in enumerate(layouts)]
  shape_of = lambda tree: (jax.tree_util.tree_structure(tree), tuple(np.shape(x) for x in jax.tree.leaves(tree)))
  groups: dict = {}
  for i in range(num):
    groups.setdefault((width(i), sources[i].num_classes, targets[i].num_classes, shape_of(layouts[i])), []).append(i)

  def prepare(i):  # the expensive host steps: the source head and the starting transforms
    fit_pair = splits[i][0]
    _, head, params, k_fit = bd.prepare(keys[i], fit_pair.source, fit_pair.target, config, label_map=label_maps[i],
                                        prior=priors[i], head=heads[i])
    return (k_fit, params, head)

  out: list[Optional[bd.Analysis]] = [None] * num
  devices = list(mesh.devices.flat)
  for (d, *_), idx in groups.items():
    order = idx + [idx[0]] * (-len(idx) % len(devices))  # pad the pair axis to a multiple of the device count
    per_device = len(order) // len(devices)
    mine = {order[j] for j in range(len(order)) if devices[j // per_device].process_index == jax.process_index()}
    prepared = {i: prepare(i) for i in sorted(mine)}
    stand_in = prepared[min(mine)]  # rows of other processes' devices: never read here (_shard builds own shards)
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    rows = []
    for i in order:
      k, p, h = _pad_transforms(prepared.get(i, stand_in), d) if logit else prepared.get(i, stand_in)
      rows.append((k, p, *layouts[i], h))
    group = stack(rows)
    k_fit, params, data, pair, batch, head = _shard(group, mesh)
    cfg = config.resolved(d)
    history = {}
    if cfg.trainable:
      params, history = _run(_fit_one, cfg, mesh, chunk, k_fit, params, data, head)
    blocked = cfg.block_size is not None  # the blocked solver runs on the host, pair by pair (bound.evaluate)
    terms = {} if blocked else _run(_certify_one, cfg, mesh, chunk, params, pair, batch, head, sequential=True)
    params, history, terms, head = _gather((params, history, terms, head))
    for j, i in enumerate(idx):
      p = jax.tree.map(lambda x: x[j], params)
      dim, (fit_pair, eval_pair, split) = dims[i], splits[i]
      if logit:
        p = dataclasses.replace(p, A_bar=p.A_bar[:dim, :dim], b=p.b[:dim])
      p = jax.tree.map(jnp.asarray, p)
      head_i = hd.LinearHead(W=jnp.asarray(head.W[j][:, :dim]), c=jnp.asarray(head.c[j]))
      t = {k: v[j] for k, v in terms.items()}
      fit_sizes = (fit_pair.source.n, fit_pair.target.n)
      sizes = bd.split_sizes(split, fit_sizes, eval_pair)
      if blocked:
        res = bd.evaluate(p, eval_pair, head_i, configs[i], split=split, fit_sizes=fit_sizes)
      elif logit:
        res = bd.logit_result(t, p, configs[i], eval_pair.num_source, eval_pair.num_target, **sizes)
      else:
        w0, mismatch = t.pop("w0"), t.pop("mismatch")
        res = bd.assemble_result(t, w0, mismatch, p, configs[i], eval_pair.num_source, eval_pair.num_target,
                                 **sizes)
      out[i] = bd.Analysis(result=res, params=p, head=head_i, pair=eval_pair,
                           history={k: v[j] for k, v in history.items()}, fit_pair=fit_pair)
  return out


def _analyse_group(keys, sources, targets, config, heads, label_maps, priors, mesh, chunk):
  num = len(sources)
  ndev = mesh.devices.size
  total = -(-num // ndev) * ndev  # pad the pair axis to a multiple of the device count (repeat pair 0)
  order = list(range(num)) + [0] * (total - num)
  pairs = [(sources[i], targets[i]) for i in order]
  stacked = stack_pairs(pairs, config.batch_size)
  k_s, k_t = stacked.ps.shape[1], stacked.pt.shape[1]
  splits = [jax.random.split(keys[i], 3) for i in order]
  # the starting B of bound.initial_label_map, its centroid-OT maps solved as one batch
  centroid = config.setting == "learned_all" and config.label_map_init == "centroid"
  todo = [i for i in range(num) if centroid and label_maps[i] is None]
  label_maps = list(label_maps)
  for i, b in zip(todo, centroid_label_maps([(sources[i], targets[i]) for i in todo])):
    label_maps[i] = b
  params0 = []
  for j, i in enumerate(order):
    s, t = sources[i], targets[i]
    p = tf.init_transforms(splits[j][1], s.num_classes, t.num_classes, s.dim, setting=config.setting,
                           source_prior=np.asarray(s.prior), target_prior=np.asarray(t.prior),
                           label_map=bd.initial_label_map(config, s, t, label_maps[i]), prior=priors[i])
    params0.append(_pad_params(p, k_s, k_t))
  params0 = jax.tree.map(lambda *xs: np.stack(xs), *params0)
  train_head = any(h is None for h in heads)
  if train_head and not all(h is None for h in heads):
    raise ValueError("analyse_batch: give a head for every pair or for none")
  head_in = (jax.tree.map(lambda *xs: np.stack(xs), *[_pad_head(heads[i], k_s) for i in order]) if not train_head
             else hd.LinearHead(W=np.zeros((total, k_s, sources[0].dim), np.float32),
                                c=np.zeros((total, k_s), np.float32)))
  k_head = np.stack([np.asarray(sp[0]) for sp in splits])
  k_fit = np.stack([np.asarray(sp[2]) for sp in splits])
  learn = bool(config.trainable)
  args = _shard((k_head, k_fit, stacked, params0, head_in), mesh)
  params, head, history = _run(_train_one, config, mesh, chunk, *args, flags=(train_head, learn))
  t = _run(_evaluate_terms_one, config, mesh, chunk, params, args[2], head)
  w0, mismatch = _run(_certified_one, config, mesh, chunk, params, args[2].full, sequential=True)
  params, head, history, t, w0, mismatch = _gather((params, head, history, t, w0, mismatch))
  out = []
  for j in range(num):
    s, t_task = sources[j], targets[j]
    ks0, kt0 = s.num_classes, t_task.num_classes
    p = jax.tree.map(jnp.asarray, _unpad_params(jax.tree.map(lambda x: x[j], params), ks0, kt0))
    h = hd.LinearHead(W=jnp.asarray(head.W[j, :ks0]), c=jnp.asarray(head.c[j, :ks0]))
    pair = make_pair(s, t_task)
    res = bd.assemble_result({k: v[j] for k, v in t.items()}, w0[j], mismatch[j], p, config, ks0, kt0,
                             **bd.split_sizes("in-sample", (s.n, t_task.n), pair))
    out.append(bd.Analysis(result=res, params=p, head=h, pair=pair,
                           history={k: v[j] for k, v in history.items()}))
  return out
