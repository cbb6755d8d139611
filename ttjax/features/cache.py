"""On-disk feature cache: ``(encoder, dataset, split, preprocessing) -> (features, labels, class_names)``.

Files are ``<cache>/features/<model>__<dataset>__<split>__<key>.npz`` where ``key`` hashes the encoder identity
(its config, weight files and options: :func:`ttjax.features.zoo.model_key`), the dataset, split and
preprocessing tag. Writes are atomic (:func:`ttjax.assets.atomic_file`): a reader sees the old file, the new one
or nothing, never half a file. A file that cannot be read back whole (truncated, corrupt, other
key) counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ttjax import data
from ttjax.assets import atomic_file, cache_lock, get_cache_dir
from ttjax.data.loader import ALIASES, source_key
from ttjax.features.encoder import Encoder, extract, fingerprint
from ttjax.features.zoo import load_encoder, model_key

__all__ = ["model_key", "feature_path", "save_features", "load_features", "inputs_digest", "cached_extract",
           "dataset_features"]

PathLike = Union[str, os.PathLike]


def _safe(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-")[:60] or "x"


def feature_path(model: Union[str, PathLike, Encoder], dataset: str, split: str, *, preprocessing: str = "",
                 cache_dir: Optional[PathLike] = None, data_dir: Optional[PathLike] = None, **kwargs) -> Path:
  """Cache file for ``(model, dataset, split, preprocessing)`` of the data in ``data_dir``; ``kwargs`` are the
  encoder options. The key hashes the encoder's content (:func:`model_key`) and the data source
  (:func:`ttjax.data.loader.source_key`)."""
  dataset = ALIASES.get(dataset, dataset)  # "20ng" and "20newsgroups" share a file
  name, fp = model_key(model, **kwargs)
  key = fingerprint(fp, dataset, split, preprocessing, source_key(dataset, data_dir))
  return get_cache_dir("features", cache_dir) / f"{_safe(name)}__{_safe(dataset)}__{_safe(split)}__{key}.npz"


def save_features(path: PathLike, features: np.ndarray, labels: Optional[np.ndarray] = None,
                  class_names: Optional[Sequence[str]] = None, meta: Optional[dict] = None) -> Path:
  """Atomically write ``features (n, d)``, ``labels (n,)``, ``class_names`` and ``meta`` to ``path`` (.npz)."""
  path = Path(path)
  arrays = {"features": np.asarray(features, np.float32), "key": np.asarray(path.name),
            "meta": np.asarray(json.dumps(meta or {}, default=str))}
  if labels is not None:
    arrays["labels"] = np.asarray(labels)
  if class_names is not None:
    arrays["class_names"] = np.asarray(list(class_names), dtype=str)
  with atomic_file(path) as f:
    np.savez(f, **arrays)
  return path


def load_features(path: PathLike, *, inputs_digest: Optional[str] = None) -> Optional[dict]:
  """The cached dict (``features``, ``labels``, ``class_names``, ``meta``) or ``None`` when missing or invalid.

  Every entry is validated when read; any of these is a miss (recomputed), never an error: a truncated or corrupt
  file, one written for another key (renamed by hand), missing or unparsable ``meta``, features that are not a
  finite 2-D float array, labels that are not a 1-D integer array of one per row or name a class beyond
  ``class_names``, and (given ``inputs_digest``) an entry made from other inputs.
  """
  path = Path(path)
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      out = {k: z[k] for k in z.files}
    meta = json.loads(str(out["meta"]))
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
    return None
  if not isinstance(meta, dict) or str(out.get("key", "")) != path.name:
    return None
  if inputs_digest is not None and meta.get("inputs_digest") != inputs_digest:
    return None
  z, y = out.get("features"), out.get("labels")
  if z is None or z.ndim != 2 or z.dtype.kind != "f" or not np.all(np.isfinite(z)):
    return None
  if y is not None and (y.ndim != 1 or y.shape[0] != z.shape[0] or y.dtype.kind not in "iu"
                        or (y.size and y.min() < 0)):
    return None
  names = [str(c) for c in out["class_names"]] if "class_names" in out else None
  if names is not None and y is not None and y.size and int(y.max()) >= len(names):
    return None
  return {"features": z, "labels": y, "class_names": names, "meta": meta}


def inputs_digest(inputs) -> str:
  """SHA-256 of the inputs an entry was extracted from (texts or an image array), stored in its ``meta``."""
  h = hashlib.sha256()
  if hasattr(inputs, "shape"):
    a = np.ascontiguousarray(inputs)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  else:
    for t in inputs:
      b = str(t).encode("utf-8", "surrogatepass")
      h.update(len(b).to_bytes(8, "little"))
      h.update(b)
  return h.hexdigest()


def cached_extract(model: Union[str, PathLike, Encoder], inputs, *, dataset: str, split: str,
                   labels: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None,
                   preprocessing: str = "", cache_dir: Optional[PathLike] = None, recompute: bool = False,
                   progress: Optional[bool] = None, data_dir: Optional[PathLike] = None, **kwargs) -> np.ndarray:
  """``extract`` with the disk cache: features ``(n, d)`` of ``inputs`` named ``(dataset, split)``.

  ``(dataset, split, preprocessing)`` name the entry; the hash of ``inputs`` is stored with it and checked on
  every read, so other inputs under the same names are recomputed, never served.
  """
  path = feature_path(model, dataset, split, preprocessing=preprocessing, cache_dir=cache_dir, data_dir=data_dir,
                      **kwargs)
  digest = inputs_digest(inputs)
  hit = None if recompute else load_features(path, inputs_digest=digest)
  if hit is not None:
    return hit["features"]
  with cache_lock(path.name, cache_dir):  # another process extracting the same entry: wait for it
    hit = None if recompute else load_features(path, inputs_digest=digest)
    if hit is not None:
      return hit["features"]
    enc = load_encoder(model, cache_dir=cache_dir, **kwargs) if not isinstance(model, Encoder) else model
    z = extract(enc, inputs, progress=progress, desc=f"{enc.name}/{dataset}/{split}")
    save_features(path, z, labels, class_names, meta={"encoder": enc.name, "fingerprint": enc.fingerprint,
                                                      "encoder_meta": dict(enc.meta), "dataset": dataset,
                                                      "split": split, "preprocessing": preprocessing,
                                                      "inputs_digest": digest})
  return z


def dataset_features(model: Union[str, PathLike, Encoder], dataset: str, split: str, *,
                     data_dir: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None,
                     recompute: bool = False, progress: Optional[bool] = None,
                     **kwargs) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """``(features (n, d) float32, labels (n,) int, class_names)`` of a ``ttjax.data`` dataset split, cached.

  A cache hit returns without building the encoder or reading the dataset.
  """
  path = feature_path(model, dataset, split, cache_dir=cache_dir, data_dir=data_dir, **kwargs)

  def whole_hit():
    hit = None if recompute else load_features(path)
    return hit if hit is not None and hit["labels"] is not None and hit["class_names"] is not None else None

  hit = whole_hit()
  if hit is None:
    with cache_lock(path.name, cache_dir):  # the lock of cached_extract, taken early: re-entered there
      hit = whole_hit()
      if hit is None:
        inputs, labels, names = data.load(dataset, split, data_dir=data_dir)
        z = cached_extract(model, inputs, dataset=dataset, split=split, labels=labels, class_names=names,
                           cache_dir=cache_dir, recompute=True, progress=progress, data_dir=data_dir, **kwargs)
        return z, np.asarray(labels), list(names)
  return hit["features"], hit["labels"], hit["class_names"]
