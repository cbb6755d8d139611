"""Task relatedness without target labels (``ttjax.relatedness``, ``ttjax.relatedness_batch``): the TTA analysis
of a labelled reference task and unlabelled target features.

The target's missing labels are replaced by **pseudo-labels** ``t_hat``: k-means clusters of the (standardised)
target features (:func:`kmeans`: k-means++ seeding, ``iters`` Lloyd steps in a ``lax.fori_loop``, ``restarts``
seedings ``vmap``-ped, the lowest inertia kept). The number of target classes ``K_t`` is given, or chosen by the
mean silhouette over ``k_range`` (:func:`choose_num_classes`). The pseudo-labelled target then goes through the
labelled pipeline unchanged (:func:`ttjax.batch.analyse_batch`, i.e. :func:`ttjax.bound.analyse` per pair:
head, prepare, fit, evaluate), optionally followed by ``refine`` self-labelling rounds: ``t_hat <- argmax h_T``
and a new analysis with the same source head.

    relatedness  =  sum_s D_s Lbar_s(s h_S)  +  H(B | D)  +  sum_t p_t W_rho(mu_t, nu_t)     (labels t_hat)

**What it certifies.** In logit space (the default) it is the certified TTA bound *for the pseudo-labels*: the
held-out cross-entropy of ``h_T`` against ``t_hat`` is at most ``relatedness`` (every constant proven, every
coupling feasible). It is **not** a bound on the loss against the true target labels (they were never seen); it
is an estimate of the labelled bound that is exact when the clusters are the classes up to their names (the label
map ``B`` absorbs the naming). ``target_accuracy`` / ``target_loss`` likewise measure ``h_T`` against ``t_hat``:
predicted, not measured, transfer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ttjax import batch as bt
from ttjax import bound as bd
from ttjax import head as hd
from ttjax import logit_bound as lb
from ttjax.tasks import Task, check_features, check_not_constant, make_task, standardize

__all__ = ["KMeans", "kmeans", "kmeans_plus_plus", "lloyd", "squared_distances", "silhouette", "fill_small_clusters", "self_labels", "choose_num_classes", "pseudo_labels", "check_label_free",
           "RelatednessResult", "RelatednessAnalysis", "analyse_relatedness", "relatedness_batch", "relatedness",
           "DEFAULT_K_RANGE", "SILHOUETTE_POINTS"]

DEFAULT_K_RANGE = (2, 10)  # candidate K_t (inclusive) when it is not given
SILHOUETTE_POINTS = 1000  # the silhouette (O(n^2)) is computed on at most this many points, drawn with the key


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KMeans:
  """A k-means clustering: ``centers (K, d)``, ``labels (n,)`` (nearest centre), ``inertia`` (sum of squared
  distances to the nearest centre)."""

  centers: jax.Array
  labels: jax.Array
  inertia: jax.Array


def squared_distances(x: jax.Array, c: jax.Array) -> jax.Array:
  """``||x_i - c_k||^2`` ``(n, K)`` (clipped at 0)."""
  return jnp.maximum(jnp.sum(x * x, 1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, 1)[None, :], 0.0)


def kmeans_plus_plus(key: jax.Array, x: jax.Array, k: int) -> jax.Array:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniform, each next one a point drawn with
  probability ``∝ D(x)^2``, its squared distance to the nearest centre so far. ``(n, d) -> (k, d)``."""
  k_first, k_rest = jax.random.split(key)
  first = x[jax.random.randint(k_first, (), 0, x.shape[0])]
  centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
  d2 = jnp.sum((x - first) ** 2, 1)

  def body(i, carry):
    centers, d2 = carry
    c = x[jax.random.categorical(jax.random.fold_in(k_rest, i), jnp.log(jnp.maximum(d2, 1e-30)))]
    return centers.at[i].set(c), jnp.minimum(d2, jnp.sum((x - c) ** 2, 1))

  return jax.lax.fori_loop(1, k, body, (centers, d2))[0]


def lloyd(x: jax.Array, centers: jax.Array, iters: int) -> KMeans:
  """``iters`` Lloyd steps from ``centers``: assign each point to its nearest centre, move each centre to the mean
  of its points (an empty cluster keeps its centre)."""
  k = centers.shape[0]

  def step(_, c):
    onehot = jax.nn.one_hot(jnp.argmin(squared_distances(x, c), 1), k, dtype=x.dtype)
    counts = onehot.sum(0)
    return jnp.where(counts[:, None] > 0, onehot.T @ x / jnp.maximum(counts, 1.0)[:, None], c)

  centers = jax.lax.fori_loop(0, iters, step, centers)
  d2 = squared_distances(x, centers)
  return KMeans(centers=centers, labels=jnp.argmin(d2, 1).astype(jnp.int32), inertia=jnp.sum(jnp.min(d2, 1)))


@functools.partial(jax.jit, static_argnames=("k", "iters", "restarts"))
def kmeans(key: jax.Array, x: jax.Array, k: int, *, iters: int = 50, restarts: int = 8) -> KMeans:
  """k-means of ``x (n, d)`` into ``k`` clusters: ``restarts`` k-means++ seedings (keys ``split(key, restarts)``),
  each refined by ``iters`` Lloyd steps (vmapped), and the run of lowest inertia ``sum_i min_k ||x_i - c_k||^2``."""
  runs = jax.vmap(lambda kk: lloyd(x, kmeans_plus_plus(kk, x, k), iters))(jax.random.split(key, restarts))
  best = jnp.argmin(runs.inertia)
  return jax.tree.map(lambda a: a[best], runs)


@functools.partial(jax.jit, static_argnames=("k",))
def silhouette(x: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """Mean silhouette (Rousseeuw 1987) of ``labels (n,)`` in ``[0, k)`` on ``x (n, d)``, Euclidean:
  ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance to the other points of its cluster and
  ``b_i`` the smallest mean distance to another (non-empty) cluster; ``s_i = 0`` in a singleton cluster."""
  n = x.shape[0]
  d = jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.sqrt(squared_distances(x, x)))
  onehot = jax.nn.one_hot(labels, k, dtype=x.dtype)
  sums, counts = d @ onehot, onehot.sum(0)
  own = counts[labels]
  a = jnp.take_along_axis(sums, labels[:, None], 1)[:, 0] / jnp.maximum(own - 1.0, 1.0)
  b = jnp.min(jnp.where((onehot > 0) | (counts[None, :] == 0), jnp.inf, sums / jnp.maximum(counts, 1.0)), 1)
  s = jnp.where(own > 1, (b - a) / jnp.maximum(jnp.maximum(a, b), 1e-30), 0.0)
  return jnp.mean(s)


def choose_num_classes(key: jax.Array, x: jax.Array, k_range: tuple[int, int] = DEFAULT_K_RANGE, *,
                       iters: int = 50, restarts: int = 8) -> tuple[int, dict]:
  """``K_t`` by the largest mean silhouette of the k-means clustering, over ``k_range = (lo, hi)`` (inclusive,
  ``hi`` capped at ``n // 2``), on at most :data:`SILHOUETTE_POINTS` points drawn with ``key``.

  Returns ``(K_t, {k: silhouette})``; ties go to the smaller ``k``.
  """
  lo, hi = int(k_range[0]), min(int(k_range[1]), x.shape[0] // 2)
  if lo < 2 or hi < lo:
    raise ValueError(f"k_range {tuple(k_range)} leaves no candidate K_t >= 2 for {x.shape[0]} target points")
  k_sub, k_fit = jax.random.split(key)
  sub = jax.random.permutation(k_sub, x.shape[0])[:SILHOUETTE_POINTS]
  scores = {}
  for k in range(lo, hi + 1):
    labels = kmeans(jax.random.fold_in(k_fit, k), x, k, iters=iters, restarts=restarts).labels
    scores[k] = float(silhouette(x[sub], labels[sub], k))
  return max(scores, key=lambda k: (scores[k], -k)), scores


def fill_small_clusters(x: np.ndarray, labels: np.ndarray, centers: np.ndarray, k: int, min_size: int) -> np.ndarray:
  """Give every cluster at least ``min_size`` points: a smaller cluster takes the points nearest its centre from
  clusters that can spare them (k-means can leave a cluster empty or a singleton; the held-out split needs 2)."""
  labels = labels.copy()
  for c in range(k):
    while np.sum(labels == c) < min_size:
      counts = np.bincount(labels, minlength=k)
      spare = counts[labels] > min_size
      d = np.where(spare & (labels != c), np.sum((x - centers[c]) ** 2, 1), np.inf)
      labels[int(np.argmin(d))] = c
  return labels


def check_label_free(features, num_classes: Optional[int], *, holdout: float = 0.5, name: str = "target",
                     dim: Optional[int] = None) -> np.ndarray:
  """Validate unlabelled target features before any work: a finite ``(n, d)`` array (``dim`` columns), not
  constant, ``K_t >= 2`` when given, and enough points for ``K_t`` clusters (``n >= K_t``; ``2 K_t`` with a
  held-out split, which needs two points per class). Returns the features as a float array."""
  z = check_features(features, name=f"{name} features", dim=dim)
  check_not_constant(z, name=f"{name} features")
  per_class = 2 if holdout > 0 else 1
  if num_classes is not None:
    if int(num_classes) != num_classes or int(num_classes) < 2:
      raise ValueError(f"{name}: the number of target classes K_t must be an integer >= 2, got {num_classes} "
                       "(one class has nothing to relate)")
    if z.shape[0] < per_class * int(num_classes):
      raise ValueError(f"{name}: {z.shape[0]} points are fewer than {per_class} x K_t = "
                       f"{per_class * int(num_classes)} (K_t={int(num_classes)} clusters"
                       f"{', two points each for the held-out split' if per_class == 2 else ''})")
  elif z.shape[0] < 2 * per_class:
    raise ValueError(f"{name}: {z.shape[0]} points cannot form 2 clusters")
  return z


def pseudo_labels(key: jax.Array, features: jax.Array, num_classes: Optional[int] = None, *,
                  k_range: tuple[int, int] = DEFAULT_K_RANGE, min_size: int = 2, iters: int = 50,
                  restarts: int = 8) -> tuple[np.ndarray, int, dict]:
  """Pseudo-labels of target ``features (n, d)``: the k-means clusters (``K_t = num_classes``, or chosen by
  :func:`choose_num_classes`), every cluster given at least ``min_size`` points. Returns ``(labels (n,) int32,
  K_t, info)`` with ``info = {k_criterion, silhouette, silhouette_by_k, inertia}``."""
  x = jnp.asarray(features, jnp.float32)
  k_choose, k_fit = jax.random.split(key)
  by_k = {}
  if num_classes is None:
    num_classes, by_k = choose_num_classes(k_choose, x, k_range, iters=iters, restarts=restarts)
  k = int(num_classes)
  km = kmeans(jax.random.fold_in(k_fit, k), x, k, iters=iters, restarts=restarts)
  labels = fill_small_clusters(np.asarray(x), np.asarray(km.labels), np.asarray(km.centers), k, min_size)
  info = dict(k_criterion="given" if not by_k else "silhouette", silhouette=by_k.get(k, float("nan")),
              silhouette_by_k={str(c): v for c, v in by_k.items()}, inertia=float(km.inertia))
  return labels.astype(np.int32), k, info


@dataclasses.dataclass(frozen=True)
class RelatednessResult:
  """The label-free analysis of one pair: :attr:`relatedness` and its parts, from the TTA bound of the
  pseudo-labelled target (:attr:`bound`, a :class:`ttjax.bound.BoundResult`, every number against the
  pseudo-labels ``t_hat``), with how the pseudo-labels were made.

  ``k_criterion``: ``"given"`` or ``"silhouette"`` (``silhouette_by_k`` the candidates); ``refinements``: the
  self-labelling rounds run; ``pseudo_labels``: the method in words.
  """

  bound: bd.BoundResult
  k_criterion: str
  silhouette: float
  silhouette_by_k: dict
  inertia: float
  refinements: int
  pseudo_labels: str

  @property
  def relatedness(self) -> float:
    """The estimate ``sum_s D_s Lbar_s + H(B | D) + L W`` on the pseudo-labelled target (lower = more related)."""
    return self.bound.bound

  def __getattr__(self, name):  # the bound's terms: source_loss, entropy, wasserstein, target_accuracy, B, ...
    if name != "bound" and name in bd.BoundResult.__dataclass_fields__:
      return getattr(self.bound, name)
    raise AttributeError(name)

  def to_dict(self) -> dict:
    """The bound's fields with ``bound`` renamed ``relatedness``, ``label_free: True`` and the clustering."""
    d = self.bound.to_dict()
    d.pop("bound")
    return dict(relatedness=self.relatedness, label_free=True, **d,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "bound"})

  def to_json(self, **kw) -> str:
    return json.dumps(self.to_dict(), **kw)

  def __str__(self) -> str:
    b = self.bound
    rows = [("relatedness (estimate)", self.relatedness), ("  weighted source loss", b.source_loss),
            ("  H(label map)", b.entropy), ("  L * W", b.tau_hat * b.wasserstein),
            ("predicted loss of h_T", b.target_loss), ("predicted accuracy of h_T", b.target_accuracy),
            ("source accuracy of h_S", b.source_accuracy)]
    head = (f"label-free relatedness [{b.space} space, {self.pseudo_labels}, K_t={b.num_target_classes} "
            f"({self.k_criterion}), K_s={b.num_source_classes}, {b.split}: n_s={b.n_source_eval}, "
            f"n_t={b.n_target_eval}, {b.seconds:.1f}s; no target labels: an estimate, not a bound on the true "
            "target loss]")
    return "\n".join([head] + [f"  {k:<26s} {v:10.4f}" for k, v in rows])


@dataclasses.dataclass(frozen=True)
class RelatednessAnalysis:
  """Output of :func:`relatedness_batch`: the result, the labelled analysis of the pseudo-labelled target (its
  ``pair``, ``params``, ``head``), and the pseudo-labels of every target point ``(n,)``."""

  result: RelatednessResult
  analysis: bd.Analysis
  labels: np.ndarray


def self_labels(analysis: bd.Analysis, features: jax.Array, config: bd.BoundConfig) -> np.ndarray:
  """``argmax_t h_T(z')_t`` of every target row ``(n, d)`` under the analysis' transforms (the label map of the
  evaluation split's prior in logit space)."""
  if config.space == "logit":
    probs = lb.transformed_probs(analysis.head, analysis.params, analysis.pair.target.prior, features)
  else:
    probs = hd.transformed_probs(analysis.head, analysis.params, features)
  return np.asarray(jnp.argmax(probs, -1), np.int32)


def _as_list(x, n):
  return list(x) if isinstance(x, (list, tuple)) else [x] * n


def relatedness_batch(key: jax.Array, sources: Union[Task, Sequence[Task]], targets: Sequence,
                      config: bd.BoundConfig = bd.BoundConfig(), *, num_classes=None,
                      k_range: tuple[int, int] = DEFAULT_K_RANGE, refine: int = 0, heads=None,
                      chunk: Optional[int] = 4) -> list[RelatednessAnalysis]:
  """The label-free analysis of ``P`` pairs: pseudo-label every target, then the labelled batch pipeline
  (:func:`ttjax.batch.analyse_batch`) on the pseudo-labelled pairs.

  Args:
    key: one PRNG key, or ``(P, 2)`` keys; pair ``i`` uses ``k_cluster, k_analysis = split(keys[i])`` with
      ``keys = split(key, P)``.
    sources: validated labelled tasks (or one for every pair); targets: ``P`` unlabelled feature arrays
      ``(n_i, d_i)``, already standardised like a :class:`ttjax.tasks.Task` (:func:`relatedness` does it).
    num_classes: ``K_t`` (one int, or one per pair; ``None``: chosen by the silhouette over ``k_range``).
    refine: self-labelling rounds: ``t_hat <- argmax h_T(z')``, then a new analysis with the same source head;
      a round that would leave a class with fewer than 2 points (or 1 without a held-out split) stops early.
    heads: optional pre-trained source heads (see :func:`ttjax.batch.analyse_batch`).
  """
  start = time.perf_counter()
  targets = list(targets)
  num = len(targets)
  sources, ks, heads = _as_list(sources, num), _as_list(num_classes, num), _as_list(heads, num)
  min_size = 2 if config.holdout > 0 else 1
  zs = [jnp.asarray(check_label_free(z, k, holdout=config.holdout, name=f"target {i}", dim=s.dim), jnp.float32)
        for i, (z, k, s) in enumerate(zip(targets, ks, sources))]  # every pair checked before any work
  keys = jnp.asarray(key)
  keys = keys if keys.ndim == 2 else jax.random.split(keys, num)
  k_cluster, k_analysis = [np.stack(a) for a in zip(*[np.asarray(jax.random.split(k)) for k in keys])]
  labelled = [pseudo_labels(k_cluster[i], zs[i], ks[i], k_range=k_range, min_size=min_size) for i in range(num)]
  labels = [y for y, _, _ in labelled]
  runs = bt.analyse_batch(jnp.asarray(k_analysis), sources, [_task(z, y, k) for z, (y, k, _) in zip(zs, labelled)],
                          config, heads=heads if any(h is not None for h in heads) else None, chunk=chunk)
  rounds = [0] * num
  for _ in range(int(refine)):
    todo, new = [], []
    for i, a in enumerate(runs):
      y = self_labels(a, zs[i], config)
      k = labelled[i][1]
      if np.bincount(y, minlength=k).min() >= min_size and not np.array_equal(y, labels[i]):
        todo.append(i)
        new.append(y)
    if not todo:
      break
    again = bt.analyse_batch(jnp.asarray(k_analysis[np.asarray(todo)]), [sources[i] for i in todo],
                             [_task(zs[i], y, labelled[i][1]) for i, y in zip(todo, new)], config,
                             heads=[runs[i].head for i in todo], chunk=chunk)
    for i, y, a in zip(todo, new, again):
      runs[i], labels[i], rounds[i] = a, y, rounds[i] + 1
  seconds = (time.perf_counter() - start) / max(num, 1)
  out = []
  for i, a in enumerate(runs):
    info = labelled[i][2]
    method = "k-means" + (f" + {rounds[i]} self-labelling round(s)" if rounds[i] else "")
    res = RelatednessResult(bound=dataclasses.replace(a.result, seconds=seconds), refinements=rounds[i],
                            pseudo_labels=method, **info)
    out.append(RelatednessAnalysis(result=res, analysis=a, labels=labels[i]))
  return out


def _task(z: jax.Array, labels: np.ndarray, k: int) -> Task:
  return Task(features=z, labels=jnp.asarray(labels, jnp.int32), num_classes=int(k))


def analyse_relatedness(key: jax.Array, source: Task, target_features, config: bd.BoundConfig = bd.BoundConfig(),
                        **kw) -> RelatednessAnalysis:
  """One pair of :func:`relatedness_batch`: ``relatedness_batch(key[None], [source], [z])[0]`` (pair 0 uses
  ``key`` itself)."""
  return relatedness_batch(jnp.asarray(key)[None], [source], [target_features], config, **kw)[0]


def relatedness(source_features, source_labels, target_features, *, num_target_classes: Optional[int] = None,
                key: Optional[jax.Array] = None, config: bd.BoundConfig = bd.BoundConfig(), standardise: bool = True,
                **kw) -> RelatednessAnalysis:
  """Label-free counterpart of :func:`ttjax.bound.tta` on raw arrays: validate (every check before any work),
  standardise each task with its own statistics, then :func:`analyse_relatedness`.

  ``num_target_classes``: ``K_t``, or ``None`` to choose it by the silhouette (:func:`choose_num_classes`).
  """
  check_label_free(target_features, num_target_classes, holdout=config.holdout,
                   dim=np.asarray(source_features).shape[-1] if np.ndim(source_features) == 2 else None)
  source = make_task(source_features, source_labels, name="source", standardise=standardise)
  z = jnp.asarray(np.asarray(target_features), jnp.float32)
  z = standardize(z) if standardise else z
  return analyse_relatedness(jax.random.PRNGKey(0) if key is None else key, source, z, config,
                             num_classes=num_target_classes, **kw)
