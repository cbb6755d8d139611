"""``load(name, split) -> (inputs, labels, class_names)`` on top of ``tfds.data_source`` (no TensorFlow).

Names: the ttjax builders (see :data:`ALIASES`: ``"20newsgroups"``, ``"r8"``, ``"r52"``, ``"tweets"``,
``"mnist5k"``, ``"fashion_mnist_debian"``, ``"digits"``), prepared on first use into ``data_dir`` (default
``<ttjax cache>/tensorflow_datasets``); or any other tfds dataset name already prepared in ``data_dir`` in the
``array_record`` format (e.g. by ``tfds build --file_format=array_record`` on a machine with TensorFlow).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ttjax.assets import cache_lock, file_digest, get_cache_dir

__all__ = ["ALIASES", "dataset_names", "default_data_dir", "get_builder", "source_key", "prepare", "load", "quiet_tfds"]

PathLike = Union[str, os.PathLike]

ALIASES = {
  "20newsgroups": "ttjax_newsgroups20", "20ng": "ttjax_newsgroups20", "newsgroups20": "ttjax_newsgroups20",
  "r8": "ttjax_reuters_r8", "reuters_r8": "ttjax_reuters_r8",
  "r52": "ttjax_reuters_r52", "reuters_r52": "ttjax_reuters_r52",
  "tweets": "ttjax_election_tweets2016", "election_tweets2016": "ttjax_election_tweets2016",
  "mnist5k": "ttjax_mnist5k", "mnist_5k": "ttjax_mnist5k",
  "fashion_mnist_debian": "ttjax_fashion_mnist", "fmnist": "ttjax_fashion_mnist",
  "digits": "ttjax_sklearn_digits", "sklearn_digits": "ttjax_sklearn_digits",
}


def dataset_names() -> list[str]:
  """Short names of the built-in offline datasets (one per builder)."""
  return ["20newsgroups", "r8", "r52", "tweets", "mnist5k", "fashion_mnist_debian", "digits"]


def default_data_dir() -> Path:
  """``<ttjax cache>/tensorflow_datasets`` (``$TTJAX_CACHE`` or ``~/.cache/ttjax``)."""
  return get_cache_dir("tensorflow_datasets")


def get_builder(name: str, data_dir: Optional[PathLike] = None, **kwargs):
  """The ttjax builder for ``name`` (alias or ``ttjax_*`` name), or ``None`` for other names."""
  # the builders import tensorflow_datasets (optional: ttjax[data]); only when a dataset is loaded
  from ttjax.data.builders import BUILDERS  # pylint: disable=import-outside-toplevel
  full = ALIASES.get(name, name)
  if full not in BUILDERS:
    return None
  return BUILDERS[full](data_dir=str(data_dir or default_data_dir()), **kwargs)


def source_key(name: str, data_dir: Optional[PathLike] = None) -> tuple:
  """What identifies the data behind ``name`` for cache keys: a ttjax builder is defined by its pinned sources (and
  the folder it is prepared in, when one is given); any other tfds dataset by its folder and the SHA-256 of its
  ``dataset_info.json`` files (so another ``--data-dir`` or a re-prepared dataset never shares an entry)."""
  full = ALIASES.get(name, name)
  folder = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
  if full.startswith("ttjax_"):
    return ("ttjax builder", full, folder)
  root = Path(folder) if folder else default_data_dir()
  infos = sorted((root / full).glob("*/dataset_info.json"))
  return ("tfds", full, str(root), [(str(f.relative_to(root)), file_digest(f)) for f in infos])


def prepare(name: str, data_dir: Optional[PathLike] = None, **kwargs):
  """Build (once) the ArrayRecord files of the ttjax dataset ``name``; returns the builder."""
  # optional: ttjax[data]
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  with quiet_tfds():
    builder = get_builder(name, data_dir, **kwargs)
    if builder is None:
      raise KeyError(f"{name!r} is not a ttjax dataset ({dataset_names()})")
    if builder.is_prepared():
      return builder
    where = hashlib.sha256(str(builder.data_dir).encode()).hexdigest()[:16]
    with cache_lock(f"dataset-{builder.name}-{where}"):
      builder = get_builder(name, data_dir, **kwargs)  # built again: another process may have prepared it
      if builder.is_prepared():
        return builder
      if not sys.stderr.isatty():  # a log or a pipe: no carriage-return bar frames
        tfds.disable_progress_bar()
      print(f"preparing {name} (first use; cached in {builder.data_dir})", file=sys.stderr, flush=True)
      with contextlib.redirect_stdout(io.StringIO()):  # tfds prints 'Downloading and preparing dataset Unknown size'
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False, verify_ssl=True))
  return builder


@contextlib.contextmanager
def quiet_tfds():
  """tfds's absl warnings off for the block (a first-use folder 'has no dataset_info.json', 'OpenCV is not
  installed ... Defaulting to PIL'): noise for a ttjax user, not a problem."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel  (installed with tfds)
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def _decode_all(source) -> list:
  n = len(source)
  if hasattr(source, "__getitems__"):
    out = []
    for s in range(0, n, 4096):
      out.extend(source.__getitems__(list(range(s, min(n, s + 4096)))))
    return out
  return [source[i] for i in range(n)]


def load(name: str, split: str, data_dir: Optional[PathLike] = None,
         **kwargs) -> tuple[Union[list, np.ndarray], np.ndarray, list]:
  """``(inputs, labels int64 (n,), class_names)`` of ``split`` of dataset ``name``.

  ``inputs``: list of str for text datasets, uint8 array ``(n, H, W, C)`` for images. ttjax datasets are prepared
  on first use (fetching their sources); other names must already be prepared (``array_record``) in ``data_dir``.
  ``kwargs`` go to the ttjax builder (``cache_dir``; ``source_dir`` for Fashion-MNIST).
  """
  # optional: ttjax[data]
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if get_builder(name, data_dir, **kwargs) is not None:
    builder = prepare(name, data_dir, **kwargs)
  else:
    try:
      builder = tfds.builder(name, data_dir=str(data_dir or default_data_dir()), file_format="array_record")
    except Exception as e:  # pylint: disable=broad-except
      raise KeyError(f"unknown dataset {name!r}: not a ttjax dataset ({dataset_names()}) and no prepared tfds "
                     f"dataset of that name in {data_dir or default_data_dir()} ({e})") from e
    if not builder.is_prepared():
      raise FileNotFoundError(f"tfds dataset {name!r} is not prepared in {builder.data_dir}; prepare it there in "
                              "the array_record format (tfds build --file_format=array_record) first")
  source = builder.as_data_source(split=split)
  info = builder.info
  in_key, label_key = info.supervised_keys or (None, "label")
  with quiet_tfds():
    examples = _decode_all(source)
  if in_key is None:
    keys = [k for k in ("text", "image", "sentence", "content", "document") if examples and k in examples[0]]
    if not keys:
      raise ValueError(f"{name}: cannot tell the input feature; no supervised_keys in its DatasetInfo")
    in_key = keys[0]
  labels = np.asarray([int(e[label_key]) for e in examples], np.int64)
  feat = info.features[in_key]
  if isinstance(feat, tfds.features.Text):
    inputs = [e[in_key].decode("utf-8") if isinstance(e[in_key], bytes) else str(e[in_key]) for e in examples]
  else:
    inputs = np.stack([np.asarray(e[in_key]) for e in examples]) if examples else np.zeros((0,), np.uint8)
  names = list(info.features[label_key].names)
  return inputs, labels, names
