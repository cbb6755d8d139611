"""Resolve the CLI's TASK and MODEL arguments into features and labels.

A TASK is one of

* an ``.npz`` file with ``features`` (n, d) and integer ``labels`` (n,) -- precomputed by any encoder -- and
  optionally ``test_features`` / ``test_labels`` (a held-out split for the ground truth) and ``class_names``;
  a target of the label-free analysis may have ``features`` only (``labels_optional=True``: ``labels`` is ``None``);
  a path containing ``{model}`` is a template filled with each model's name (``feats/{model}/r8.npz``);
* a built-in dataset of :mod:`ttjax.data` (``20ng``, ``r8``, ``r52``, ``tweets``, ``mnist5k``, ``digits``, ...),
  optionally restricted to groups of classes: ``20ng:comp-vs-rec`` (each ``-vs-`` / ``,``-separated part is a
  class name, an ``fnmatch`` pattern, or a prefix: ``comp`` = every ``comp*`` class, merged into one class);
* any tfds dataset prepared (``array_record``) in ``data_dir``.

A MODEL is a zoo encoder (:func:`ttjax.features.zoo_names`), a local Hugging Face checkpoint folder, or -- for a
TASK that is already features -- just a label. Dataset tasks are embedded by the model and cached on disk
(:mod:`ttjax.features.cache`): a cached full split is subset in memory; otherwise only the selected rows are
embedded (and cached under a key naming the selection).

Subsets (``limit``): at most ``limit`` rows per split, the same number from every class (class-stratified,
``limit // K`` per class, fewer when a class is smaller), drawn with ``seed``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import zipfile
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from ttjax import data
from ttjax.data.loader import ALIASES
from ttjax.features import cache, zoo_names
from ttjax.tasks import check_features, integer_labels

__all__ = ["TaskData", "TaskError", "resolve_task", "check_model", "check_same_encoder", "dataset_split",
           "is_feature_file", "parse_list", "builtin_dataset", "class_groups", "stratified_limit", "split_task_list",
           "join_tasks"]


class TaskError(ValueError):
  """A TASK / MODEL argument that cannot be resolved; the message is one line naming the problem."""


@dataclasses.dataclass
class TaskData:
  """The command's resolved TASK: a train split and an optional test split, with names (numpy; host side).

  Not the core's :class:`ttjax.tasks.Task`: that is a validated, standardised jax pytree of one sample, built by
  the bound and the scores from the arrays held here. A TaskData is what a TASK argument resolved to under one
  MODEL, before any validation or standardisation: ``name`` (the TASK), ``model``, ``class_names``, ``meta``
  (dataset, split sizes, cache file ...), ``features`` / ``labels`` (the train split: for the bound and the
  scores) and ``test_features`` / ``test_labels`` (a held-out split for the fine-tuning ground truth; ``None``:
  ``features`` is split when needed).
  """

  name: str
  model: str
  features: np.ndarray
  labels: np.ndarray
  class_names: list
  test_features: Optional[np.ndarray] = None
  test_labels: Optional[np.ndarray] = None
  meta: dict = dataclasses.field(default_factory=dict)

  @property
  def dim(self) -> int:
    """The feature dimension (the encoder's output size)."""
    return self.features.shape[1]  # numpy: a Python int

  @property
  def num_classes(self) -> int:
    """``K = max(labels) + 1`` of the train split (0 for an unlabelled task)."""
    return 0 if self.labels is None else int(self.labels.max()) + 1

  def with_labels(self, labels, test_labels=None, name: Optional[str] = None) -> "TaskData":
    """The same features with other labels (and ``name``): e.g. a shuffled-label control."""
    return dataclasses.replace(self, labels=np.asarray(labels), name=name or self.name,
                               test_labels=None if test_labels is None else np.asarray(test_labels))


def parse_list(value: Optional[str]) -> list[str]:
  """``"a,b, c"`` -> ``["a", "b", "c"]`` (empty items dropped)."""
  return [v.strip() for v in (value or "").split(",") if v.strip()]


def split_task_list(spec: str) -> list[str]:
  """``"20ng,r52"`` -> ``["20ng", "r52"]``: the TASKs of a comma-separated list.

  A comma starts a new TASK only when what follows is one (a built-in dataset, optionally with ``:GROUPS``, or a
  feature file); otherwise it belongs to the previous TASK's class groups: ``"r8:earn,acq,r52"`` is
  ``["r8:earn,acq", "r52"]``.
  """
  out: list[str] = []
  for part in [p.strip() for p in str(spec).split(",")]:
    starts = is_feature_file(part) or builtin_dataset(part.partition(":")[0]) is not None
    if out and not starts:
      out[-1] += "," + part
    elif part:
      out.append(part)
  return out


def join_tasks(tasks: list["TaskData"]) -> "TaskData":
  """One reference task from several of the same encoder, with disjoint labels (task ``i``'s classes follow task
  ``i - 1``'s; class names prefixed ``TASK/``). The test split is joined when every task has one, else dropped
  (then the analyses split the joined train split)."""
  if len(tasks) == 1:
    return tasks[0]
  for t in tasks[1:]:
    check_same_encoder(tasks[0], t)
  offsets = np.cumsum([0] + [t.num_classes for t in tasks[:-1]])
  labels = np.concatenate([t.labels + o for t, o in zip(tasks, offsets)])
  names = [f"{t.name}/{t.class_names[c] if c < len(t.class_names) else c}" for t in tasks
           for c in range(t.num_classes)]
  with_test = all(t.test_features is not None for t in tasks)
  for t in tasks if with_test else ():
    if t.test_features.shape[1] != t.dim:
      raise TaskError(f"{t.name}: test features have dimension {t.test_features.shape[1]}, train {t.dim}")
  return TaskData(name="+".join(t.name for t in tasks), model=tasks[0].model,
                  features=np.concatenate([t.features for t in tasks]).astype(np.float32), labels=labels,
                  class_names=names,
                  test_features=np.concatenate([t.test_features for t in tasks]) if with_test else None,
                  test_labels=np.concatenate([t.test_labels + o for t, o in zip(tasks, offsets)]) if with_test
                  else None,
                  meta={"joined": [t.meta for t in tasks], "n": int(labels.shape[0])})


def is_feature_file(spec: str) -> bool:
  return str(spec).endswith(".npz") or "{model}" in str(spec)


def builtin_dataset(name: str) -> Optional[str]:
  """The canonical ``ttjax_*`` builder name of a built-in dataset alias, or ``None``."""
  if name in ALIASES:
    return ALIASES[name]
  if name in set(ALIASES.values()):
    return name
  return None


def check_model(model: Optional[str]) -> str:
  """Validate a MODEL that must embed raw inputs: a zoo name or a local checkpoint folder / ``.onnx`` file."""
  if not model:
    raise TaskError("this TASK is a dataset, so it needs --model (a zoo encoder: "
                    f"{', '.join(zoo_names())}; or a local checkpoint folder)")
  if model in zoo_names():
    return model
  p = Path(model).expanduser()
  if p.is_dir() or (p.suffix == ".onnx" and p.is_file()):
    return model
  raise TaskError(f"unknown model {model!r}: not a zoo encoder ({', '.join(zoo_names())}) nor a local "
                  "checkpoint folder")


def check_same_encoder(source: TaskData, target: TaskData) -> None:
  """Raise :class:`TaskError` unless ``source`` and ``target`` have one feature dimension (one encoder).

  The command checks each source/target pair once, right after resolving it, before any step uses the pair.
  """
  if source.dim != target.dim:
    raise TaskError(f"target feature dimension {target.dim} does not match the source's {source.dim} (features "
                    f"of {target.name!r} and {source.name!r} must come from the same encoder)")


def _load_npz(path: Path, labels_optional: bool = False) -> dict:
  if not path.exists():
    raise TaskError(f"no such file: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      out = {k: np.asarray(f[k]) for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise TaskError(f"cannot read {path} as .npz ({type(e).__name__}: {e}); write it with numpy.savez(path, "
                    "features=..., labels=...)") from None
  missing = [k for k in ("features",) + (() if labels_optional else ("labels",)) if k not in out]
  if missing:
    raise TaskError(f"{path} lacks array(s) {missing}; it has {sorted(out)} "
                    "(expected 'features' (n, d) and 'labels' (n,))")
  if ("test_features" in out) != ("test_labels" in out):
    raise TaskError(f"{path}: 'test_features' and 'test_labels' come together")
  return check_npz_arrays(path, out)


def check_npz_arrays(path: Path, arrays: dict) -> dict:
  """Validate a feature file's arrays before any work, with errors naming the file, the array and the row:
  ``features`` / ``test_features`` finite real ``(n, d)`` with one width, ``labels`` / ``test_labels`` one
  integer-valued label per row (:func:`ttjax.tasks.integer_labels`). Returns them checked (labels int64)."""
  out = dict(arrays)
  try:
    for split in ("", "test_"):
      if f"{split}features" not in out:
        continue
      z = check_features(out[f"{split}features"], name=f"{path}: '{split}features'")
      if split and z.shape[1] != out["features"].shape[1]:
        raise ValueError(f"{path}: 'test_features' has {z.shape[1]} columns, 'features' {out['features'].shape[1]}")
      out[f"{split}features"] = z
      if f"{split}labels" in out:
        out[f"{split}labels"] = integer_labels(out[f"{split}labels"], z.shape[0], name=f"{path}: '{split}labels'")
  except ValueError as e:
    raise TaskError(str(e)) from None
  return out


def class_groups(sub: str, class_names: list) -> list[list[str]]:
  """``"comp-vs-rec"`` -> ``[["comp*"], ["rec*"]]`` against ``class_names`` (exact names and patterns kept)."""
  parts = [p.strip() for p in re.split(r"-vs-|,", sub) if p.strip()]
  if len(parts) < 2:
    raise TaskError(f"class subset {sub!r} needs at least two groups, e.g. 'comp-vs-rec' or 'earn,acq'")
  groups = []
  for part in parts:
    members = [m for m in part.split("+") if m]
    resolved = []
    for m in members:
      if m in class_names or any(fnmatch.fnmatchcase(n, m) for n in class_names):
        resolved.append(m)
      elif any(fnmatch.fnmatchcase(n, m + "*") for n in class_names):
        resolved.append(m + "*")
      else:
        raise TaskError(f"no class matches {m!r}; classes: {', '.join(class_names[:12])}"
                        f"{' ...' if len(class_names) > 12 else ''}")
    groups.append(resolved)
  return groups


def stratified_limit(labels: np.ndarray, limit: Optional[int], seed: int) -> Optional[np.ndarray]:
  """Sorted indices of a class-stratified subset of at most ``limit`` rows (``None``: keep everything)."""
  if not limit or limit >= labels.shape[0]:
    return None
  k = int(np.unique(labels).size)
  if limit < 2 * k:
    raise TaskError(f"--limit {limit} is too small for {k} classes (need at least 2 per class: {2 * k})")
  return data.per_class_subsample(jax.random.PRNGKey(seed), labels, limit // k)


def _select(labels: np.ndarray, names: list, sub: str, limit: Optional[int], seed: int):
  """Indices (into the split) and new labels / names after the class subset and the limit."""
  idx = np.arange(labels.shape[0])
  y, new_names = np.asarray(labels, np.int64), list(names)
  if sub:
    groups = class_groups(sub, new_names)
    try:
      idx, y, new_names = data.group_classes(labels, groups, names, [p for p in re.split(r"-vs-|,", sub) if p.strip()])
    except ValueError as e:
      raise TaskError(f"class subset {sub!r}: {e}") from None
  keep = stratified_limit(y, limit, seed)
  if keep is not None:
    idx, y = idx[keep], y[keep]
  return np.asarray(idx), np.asarray(y, np.int64), new_names


def dataset_split(dataset: str, split: str, model: str, sub: str = "", limit: Optional[int] = None, seed: int = 0,
                  data_dir=None, progress: Optional[bool] = None, encoder_options: Optional[dict] = None
                  ) -> tuple[np.ndarray, np.ndarray, list, dict]:
  """``(features, labels, class names, meta)`` of one split of a dataset, embedded by ``model`` (disk-cached).

  ``sub``: a class subset (``"comp-vs-rec"``, see :func:`class_groups`); ``limit`` / ``seed``: the
  class-stratified row limit; ``encoder_options``: e.g. ``{"max_length": 128}`` (``None`` values dropped).
  Subsets are cut from a cached full split when there is one, else only the selected rows are embedded (and cached
  under a key naming the selection). ``meta["cache"]`` says which: ``"subset"``, ``"full split"`` or
  ``"extracted"``.
  """
  opts = {k: v for k, v in (encoder_options or {}).items() if v is not None}
  tag = f"sub={sub};limit={limit or 0};seed={seed}" if (sub or limit) else ""
  meta = {"dataset": dataset, "split": split, "subset": sub or None, "limit": limit, "seed": seed}
  if tag:
    hit = cache.load_features(cache.feature_path(model, dataset, split, preprocessing=tag, data_dir=data_dir,
                                                 **opts))
    if hit is not None and hit["labels"] is not None and hit["class_names"] is not None:
      return hit["features"], np.asarray(hit["labels"], np.int64), hit["class_names"], {**meta, "cache": "subset"}
  full = cache.load_features(cache.feature_path(model, dataset, split, data_dir=data_dir, **opts))
  if full is not None and full["labels"] is not None and full["class_names"] is not None:
    idx, y, names = _select(np.asarray(full["labels"], np.int64), full["class_names"], sub, limit, seed)
    return full["features"][idx], y, names, {**meta, "cache": "full split"}
  try:
    inputs, labels, names = data.load(dataset, split, data_dir=data_dir)
  except KeyError as e:
    raise TaskError(str(e.args[0]) if e.args else str(e)) from None
  idx, y, names = _select(np.asarray(labels, np.int64), list(names), sub, limit, seed)
  if not tag:
    z, y, names = cache.dataset_features(model, dataset, split, data_dir=data_dir, progress=progress, **opts)
    return z, np.asarray(y, np.int64), list(names), {**meta, "cache": "extracted"}
  z = cache.cached_extract(model, data.take(inputs, idx), dataset=dataset, split=split, labels=y, class_names=names,
                           preprocessing=tag, progress=progress, data_dir=data_dir, **opts)
  return z, y, names, {**meta, "cache": "extracted"}


def resolve_task(spec: str, model: Optional[str] = None, *, limit: Optional[int] = None,
                 test_limit: Optional[int] = None, seed: int = 0, data_dir=None, with_test: bool = True,
                 progress: Optional[bool] = None, max_length: Optional[int] = None,
                 labels_optional: bool = False) -> TaskData:
  """Features and labels of TASK ``spec`` under MODEL ``model`` (see the module docstring).

  Args:
    spec: an ``.npz`` path (``{model}`` is replaced by ``model``), ``DATASET`` or ``DATASET:GROUP-vs-GROUP``.
    model: the encoder for dataset tasks; a free label for feature files.
    limit / test_limit: class-stratified row limits of the train / test split (``test_limit`` default ``limit``).
    seed: seed of the subsets.
    data_dir: tfds ``data_dir`` (for datasets other than the built-in ones).
    with_test: also load the test split (for the ground truth); skipped for feature files without one.
    max_length: encoder option (text tokens), passed to the encoder and part of the cache key.
    labels_optional: an ``.npz`` may lack ``labels`` (unlabelled target features; ``labels`` is then ``None``).
  Raises:
    TaskError: anything that cannot be resolved, with a one-line message.
  """
  spec = str(spec)
  test_limit = limit if test_limit is None else test_limit
  if is_feature_file(spec):
    if "{model}" in spec and not model:
      raise TaskError(f"TASK {spec!r} is a template: pass models to fill in {{model}}")
    path = Path(spec.replace("{model}", model or "")).expanduser()
    f = _load_npz(path, labels_optional)
    z, y = f["features"], f.get("labels")
    if y is None:
      return TaskData(name=path.stem, model=model or path.stem, features=z, labels=None, class_names=[],
                      meta={"file": str(path), "n": int(z.shape[0]), "labels": None})
    names = [str(c) for c in f["class_names"]] if "class_names" in f else None
    keep = stratified_limit(np.asarray(y), limit, seed)
    if keep is not None:
      z, y = z[keep], y[keep]
    zt, yt = f.get("test_features"), f.get("test_labels")
    if zt is not None:
      keep = stratified_limit(np.asarray(yt), test_limit, seed)
      if keep is not None:
        zt, yt = zt[keep], yt[keep]
    k = int(np.max(y)) + 1 if y.size else 0
    return TaskData(name=path.stem, model=model or path.stem, features=z, labels=y,
                    class_names=names or [str(i) for i in range(k)], test_features=zt, test_labels=yt,
                    meta={"file": str(path), "n": int(z.shape[0]),
                          "n_test": None if zt is None else int(zt.shape[0])})
  dataset, _, sub = spec.partition(":")
  canonical = builtin_dataset(dataset)
  if canonical is None and data_dir is None:
    raise TaskError(f"unknown task {spec!r}: not an .npz file nor a built-in dataset "
                    f"({', '.join(['20ng'] + [d for d in data.dataset_names() if d != '20newsgroups'])}); for another "
                    "tfds dataset pass --data-dir where it is prepared")
  model = check_model(model)
  opts = {"max_length": max_length}
  z, y, names, meta = dataset_split(dataset, "train", model, sub, limit, seed, data_dir, progress, opts)
  zt = yt = None
  if with_test:
    try:
      zt, yt, tnames, tmeta = dataset_split(dataset, "test", model, sub, test_limit, seed, data_dir, progress, opts)
      meta["n_test"] = int(zt.shape[0])
    except (ValueError, KeyError) as e:  # no test split: the ground truth splits train
      meta["test_split"] = f"none ({e})"
  meta["n"] = int(z.shape[0])
  return TaskData(name=spec, model=model, features=np.asarray(z, np.float32), labels=y, class_names=list(names),
                  test_features=None if zt is None else np.asarray(zt, np.float32), test_labels=yt, meta=meta)
