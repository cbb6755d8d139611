"""Classification tasks as data: features, labels, class prior; validation and standardisation.

A task is a sample ``{(z_i, y_i)}_{i<n}`` with features ``z_i in R^d`` from a frozen encoder and integer labels
``y_i in [0, K)``. Everything downstream (the bound, the scores) takes validated tasks, so bad input fails here,
on the host, with an error that names the problem -- never as a NaN from deep inside a jitted kernel.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Task", "check_features", "integer_labels", "check_labels", "check_task", "check_not_constant", "make_task", "standardize", "class_prior"]


def check_features(features, *, name: str = "features", dim: Optional[int] = None) -> np.ndarray:
  """Return ``features`` as a float array of shape ``(n, d)``; raise ``ValueError`` naming what is wrong."""
  z = np.asarray(features)
  if z.ndim != 2:
    raise ValueError(f"{name}: expected a 2-D array (n, d), got shape {z.shape}")
  if z.shape[0] == 0 or z.shape[1] == 0:
    raise ValueError(f"{name}: empty array of shape {z.shape}")
  if not np.issubdtype(z.dtype, np.number) or np.issubdtype(z.dtype, np.complexfloating):
    raise ValueError(f"{name}: expected real numbers, got dtype {z.dtype}")
  if np.issubdtype(z.dtype, np.integer) or z.dtype == np.bool_:
    z = z.astype(np.float32)
  bad = ~np.isfinite(z)
  if bad.any():
    rows = np.unique(np.nonzero(bad)[0])
    kind = "NaN" if np.isnan(z).any() else "inf"
    raise ValueError(f"{name}: {int(bad.sum())} non-finite value(s) ({kind}) in {rows.size} row(s), "
                     f"first at row {int(rows[0])}")
  if dim is not None and z.shape[1] != dim:
    raise ValueError(f"{name}: feature dimension {z.shape[1]} does not match the expected {dim}")
  return z


def integer_labels(labels, n: int, *, name: str = "labels") -> np.ndarray:
  """The one label rule of every entry point: ``(n,)`` integer-valued labels -> int64.

  Integer and bool arrays pass; floats pass when every value is a finite integer (``1.0``); anything else
  (``1.5``, NaN, strings, objects) is a ``ValueError`` that names the first offending row and the fix.
  """
  y = np.asarray(labels)
  if y.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D array of integer labels, got shape {y.shape}")
  if y.shape[0] != n:
    raise ValueError(f"{name}: {y.shape[0]} labels for {n} feature rows")
  if y.dtype.kind == "f":
    bad = np.nonzero(~np.isfinite(y) | (y != np.round(np.nan_to_num(y))))[0]
    if bad.size:
      raise ValueError(f"{name}: labels must be integers, got {float(y[bad[0]])} at row {int(bad[0])} "
                       f"({bad.size} such row(s))")
  elif y.dtype.kind not in "iub":
    hint = " (strings: map the class names to 0..K-1 first)" if y.dtype.kind in "USO" else ""
    raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}{hint}")
  return y.astype(np.int64)


def check_labels(labels, n: int, *, num_classes: Optional[int] = None, name: str = "labels",
                 min_classes: int = 1) -> tuple[np.ndarray, int]:
  """Return ``(labels as int32 (n,), K)``: :func:`integer_labels`, and every class in ``[0, K)`` has a sample.

  ``K`` is ``num_classes`` when given, else ``max(labels) + 1``.
  """
  y = integer_labels(labels, n, name=name)
  if y.size and y.min() < 0:
    raise ValueError(f"{name}: label out of range: {int(y.min())} < 0")
  k = int(y.max()) + 1 if num_classes is None else int(num_classes)
  if num_classes is not None and y.size and y.max() >= k:
    raise ValueError(f"{name}: label out of range: {int(y.max())} >= num_classes={k}")
  counts = np.bincount(y, minlength=k)
  empty = np.nonzero(counts == 0)[0]
  if empty.size:
    raise ValueError(f"{name}: empty class(es) with no samples: {empty[:10].tolist()}"
                     f"{' ...' if empty.size > 10 else ''} (K={k}); relabel to consecutive integers")
  if k < min_classes:
    raise ValueError(f"{name}: a task needs at least {min_classes} classes, got {k} (one-class task)")
  return y.astype(np.int32), k


def check_task(task, name: str = "task") -> "Task":
  """Before any work: ``task`` is a :class:`Task` whose labels fit its ``num_classes`` (every class non-empty) and
  whose features are finite; raises a ``TypeError`` / ``ValueError`` naming ``name`` and the fix."""
  if not isinstance(task, Task):
    raise TypeError(f"{name}: expected a ttjax Task (build one with ttjax.make_task(features, labels)), got "
                    f"{type(task).__name__}")
  if isinstance(task.features, jax.core.Tracer) or isinstance(task.labels, jax.core.Tracer):
    return task  # inside a transformation: validated where it was built
  check_features(task.features, name=f"{name}.features")
  check_labels(np.asarray(task.labels), task.n, num_classes=task.num_classes, name=f"{name}.labels")
  return task


def standardize(features: jax.Array, eps: float = 1e-6, *, reference: Optional[jax.Array] = None) -> jax.Array:
  """Per-feature z-score ``(z - mean) / std`` over the rows of ``features (n, d)``, with the mean and standard
  deviation of ``reference`` (e.g. the training split) when given, else of ``features``.

  A feature whose std is at most ``eps`` times the largest feature std is constant for this purpose and maps to
  0 (no division by ~0). The floor is relative, so the result does not change when all features are rescaled by
  one factor (an absolute floor made ``1e-8 * z`` a different task).
  """
  ref = features if reference is None else reference
  shift = ref[0]  # statistics of ref - ref[0]: exact for a constant feature, no cancellation at large offsets
  ref_centred = ref - shift
  mean, std = jnp.mean(ref_centred, axis=0), jnp.std(ref_centred, axis=0)
  informative = std > eps * jnp.max(std)
  return jnp.where(informative, (features - shift - mean) / jnp.where(informative, std, 1.0), 0.0)


def class_prior(labels: jax.Array, num_classes: int) -> jax.Array:
  """Empirical class prior ``p(k) = #{i: y_i = k} / n``, shape ``(K,)``."""
  return jnp.bincount(labels, length=num_classes) / labels.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Task:
  """A validated classification task.

  Attributes:
    features: ``(n, d)`` float array.
    labels: ``(n,)`` int32 array in ``[0, num_classes)``, every class non-empty.
    num_classes: ``K`` (static).
  """

  features: jax.Array
  labels: jax.Array
  num_classes: int = dataclasses.field(metadata=dict(static=True))

  @property
  def n(self) -> int:
    return int(self.features.shape[0])

  @property
  def dim(self) -> int:
    return int(self.features.shape[1])

  @property
  def prior(self) -> jax.Array:
    return class_prior(self.labels, self.num_classes)

  @property
  def counts(self) -> np.ndarray:
    return np.bincount(np.asarray(self.labels), minlength=self.num_classes)


def check_not_constant(features: np.ndarray, *, name: str = "features") -> None:
  """Raise ``ValueError`` when every column of ``features (n, d)`` (``n >= 2``) is constant: a collapsed
  representation carries no information, and every bound or score of it would be a meaningless number (e.g.
  H-score 0, kNN at chance, a bound with nothing to transport) rather than an error."""
  z = np.asarray(features)
  if z.ndim == 2 and z.shape[0] >= 2 and z.size and np.all(z.max(axis=0) == z.min(axis=0)):
    raise ValueError(f"{name}: every one of the {z.shape[1]} feature columns is constant (a collapsed "
                     "representation: nothing to learn or transfer); check the encoder output or the file")


def make_task(features, labels, *, num_classes: Optional[int] = None, name: str = "task",
              standardise: bool = True, min_classes: int = 2, dim: Optional[int] = None,
              dtype=jnp.float32) -> Task:
  """Validate ``(features, labels)`` and build a :class:`Task` (optionally z-scored per feature).

  Raises ``ValueError`` for: a non-2-D feature array, NaN/inf, a feature dimension other than ``dim``, labels of
  the wrong length or type, labels out of range, a class in ``[0, K)`` with no sample, fewer than ``min_classes``
  classes (a one-class task), constant features (:func:`check_not_constant`).
  """
  z = check_features(features, name=f"{name} features", dim=dim)
  check_not_constant(z, name=f"{name} features")
  y, k = check_labels(labels, z.shape[0], num_classes=num_classes, name=f"{name} labels",
                      min_classes=min_classes)
  zj = jnp.asarray(z, dtype=dtype)
  if standardise:
    zj = standardize(zj)
  return Task(features=zj, labels=jnp.asarray(y), num_classes=k)
