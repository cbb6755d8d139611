"""PyTorch ``.pth`` state dicts read without torch and without a general unpickler.

``torch.save`` writes one of two formats; :func:`load_state_dict` reads both and refuses anything else:

* **legacy** (``_use_new_zipfile_serialization=False``, torch < 1.6): five pickles back to back -- the magic number
  ``0x1950a86a20f9469cfc6c``, the protocol version ``1001``, a system-info dict (``little_endian``, type sizes),
  the state dict (each tensor's storage a *persistent id*), the list of storage keys -- then, for each key in that
  order, a little-endian ``int64`` element count and the storage's raw bytes;
* **zip** (the default since torch 1.6): ``<archive>/data.pkl`` (the state dict, storages as persistent ids),
  ``<archive>/data/<key>`` (each storage's raw bytes), ``<archive>/byteorder``.

Every pickle goes through :class:`RestrictedUnpickler`, whose ``find_class`` resolves only the names a state dict
of tensors needs -- ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` (and ``_rebuild_tensor``,
``_rebuild_parameter``) and the typed storages ``torch.FloatStorage`` ... -- each mapped to a function of this
module; any other global (``os.system``, a module class ...) raises :class:`PthError` naming the file and the
object, before anything is called. Persistent ids must be ``("storage", <storage type>, key, location, numel[,
view])``. Tensors come back as numpy arrays (copies, C-contiguous) in the file's key order.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import ml_dtypes
import numpy as np

__all__ = ["PthError", "RestrictedUnpickler", "load_state_dict", "STORAGE_DTYPES", "LEGACY_MAGIC"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
  "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
  "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
  "BoolStorage": np.dtype("?"),
}

PathLike = Union[str, os.PathLike]


class PthError(ValueError):
  """A ``.pth`` file that is not a plain, readable state dict of tensors; the message names the file."""


@dataclasses.dataclass(frozen=True)
class StorageType:
  """Stand-in for ``torch.<Name>Storage``: only its element dtype matters."""

  name: str
  dtype: np.dtype


@dataclasses.dataclass
class Storage:
  """One storage: ``numel`` elements of ``dtype``; ``data`` (1-D numpy) once its bytes are read."""

  key: str
  dtype: np.dtype
  numel: int
  data: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """A tensor as ``_rebuild_tensor_v2`` describes it: a strided view of ``storage``; materialised by
  :func:`materialise` once every storage is read (legacy files put the bytes after the pickles)."""

  storage: Storage
  offset: int
  size: tuple
  stride: tuple


def rebuild_tensor(storage, storage_offset, size, stride, *args) -> TensorRef:
  """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`` (and
  ``_rebuild_tensor``): the view, without its autograd fields."""
  if not isinstance(storage, Storage):
    raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
  return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def rebuild_parameter(data: TensorRef, *args) -> TensorRef:
  """``torch._utils._rebuild_parameter(data, requires_grad, hooks)``: the tensor itself."""
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
  ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
  **{("torch", name): StorageType(name, dt) for name, dt in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that builds only OrderedDicts, tensor views and storages (see the module docstring).

  ``storages`` maps a storage key to its :class:`Storage` (filled by ``persistent_load``); ``read_storage(key,
  dtype, numel)`` returns a storage's bytes when they are at hand (zip), else ``None`` (legacy: read later).
  """

  def __init__(self, file, *, path: PathLike, storages: dict, read_storage=None):
    super().__init__(file)
    self.path, self.storages, self.read_storage = path, storages, read_storage

  def find_class(self, module: str, name: str):
    obj = _ALLOWED.get((module, name))
    if obj is None:
      raise PthError(f"{self.path}: refusing to load the object {module}.{name}: only tensors and OrderedDicts are "
                     "read from a .pth (save a plain state dict: torch.save(model.state_dict(), path))")
    return obj

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")
            and isinstance(pid[1], StorageType)):
      raise PthError(f"{self.path}: unsupported persistent id {str(pid)[:80]!r} (only tensor storages are read)")
    stype, key, numel = pid[1], str(pid[2]), int(pid[4])
    view = pid[5] if len(pid) == 6 else None
    if view is not None:
      raise PthError(f"{self.path}: storage {key} is a view of another storage (torch < 0.4 files are not read)")
    if key not in self.storages:
      data = self.read_storage(key, stype.dtype, numel) if self.read_storage else None
      self.storages[key] = Storage(key, stype.dtype, numel, data)
    return self.storages[key]


def materialise(ref: TensorRef, path: PathLike, name: str) -> np.ndarray:
  """The numpy array of a tensor view (a C-contiguous copy); errors name the file and the tensor."""
  st = ref.storage
  if st.data is None:
    raise PthError(f"{path}: the bytes of storage {st.key} (tensor {name!r}) are missing: the file is truncated")
  if any(s < 0 for s in ref.size + ref.stride) or len(ref.size) != len(ref.stride) or ref.offset < 0:
    raise PthError(f"{path}: tensor {name!r} has an invalid shape {ref.size} / stride {ref.stride}")
  last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride)) if all(ref.size) else ref.offset - 1
  if last >= st.numel:
    raise PthError(f"{path}: tensor {name!r} (shape {ref.size}, offset {ref.offset}) reaches past its storage of "
                   f"{st.numel} elements: the file is corrupt")
  item = st.data.itemsize
  view = np.lib.stride_tricks.as_strided(st.data[ref.offset:], shape=ref.size,
                                         strides=tuple(s * item for s in ref.stride), writeable=False)
  return np.array(view, order="C")


def _unpickle(f, path: PathLike, storages: dict, read_storage=None, what: str = "pickle"):
  try:
    return RestrictedUnpickler(f, path=path, storages=storages, read_storage=read_storage).load()
  except PthError:
    raise
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
          struct.error) as e:
    raise PthError(f"{path}: cannot read its {what} ({type(e).__name__}: {e}): the file is corrupt or truncated"
                   ) from None


def _read_legacy(f, path: PathLike) -> Any:
  magic = _unpickle(f, path, {}, what="magic number")
  if magic != LEGACY_MAGIC:
    raise PthError(f"{path}: not a PyTorch .pth file (neither a zip archive nor the legacy magic number)")
  protocol = _unpickle(f, path, {}, what="protocol version")
  if protocol != LEGACY_PROTOCOL:
    raise PthError(f"{path}: legacy protocol version {protocol!r} is not supported (expected {LEGACY_PROTOCOL})")
  info = _unpickle(f, path, {}, what="system info")
  if not isinstance(info, dict) or not info.get("little_endian", False):
    raise PthError(f"{path}: written on a big-endian machine or without system info ({info!r}); re-save it with "
                   "torch.save on a little-endian machine")
  storages: dict = {}
  obj = _unpickle(f, path, storages, what="state dict")
  keys = _unpickle(f, path, {}, what="storage keys")
  if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
    raise PthError(f"{path}: its storage key list does not match the storages of its tensors: the file is corrupt")
  for key in map(str, keys):
    st = storages[key]
    head = f.read(8)
    count = struct.unpack("<q", head)[0] if len(head) == 8 else -1
    raw = f.read(st.numel * st.dtype.itemsize) if count == st.numel else b""
    if count != st.numel or len(raw) != st.numel * st.dtype.itemsize:
      raise PthError(f"{path}: storage {key} should hold {st.numel} elements but the file is truncated or corrupt "
                     f"there (count {count}, {len(raw)} bytes)")
    st.data = np.frombuffer(raw, st.dtype)
  return obj


def _read_zip(path: PathLike) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise PthError(f"{path}: cannot open it as a zip archive ({e})") from None
  with zf:
    pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise PthError(f"{path}: a zip .pth holds one <archive>/data.pkl; found {pkl or 'none'}")
    root = pkl[0][:-len("data.pkl")]
    if root + "byteorder" in zf.namelist() and zf.read(root + "byteorder").strip() != b"little":
      raise PthError(f"{path}: written big-endian; re-save it with torch.save on a little-endian machine")

    def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
      try:
        raw = zf.read(f"{root}data/{key}")
      except (KeyError, zipfile.BadZipFile, OSError) as e:
        raise PthError(f"{path}: storage {key} cannot be read ({type(e).__name__}: {e})") from None
      if len(raw) < numel * dtype.itemsize:
        raise PthError(f"{path}: storage {key} has {len(raw)} bytes, needs {numel * dtype.itemsize}")
      return np.frombuffer(raw[:numel * dtype.itemsize], dtype)

    try:
      data = zf.read(pkl[0])
    except (zipfile.BadZipFile, OSError) as e:
      raise PthError(f"{path}: cannot read {pkl[0]} ({e}): the file is corrupt") from None
    return _unpickle(io.BytesIO(data), path, {}, read_storage, what="state dict")


def load_state_dict(path: PathLike) -> dict[str, np.ndarray]:
  """``{name: numpy array}`` of the tensors of a ``torch.save``-d state dict, without torch (key order kept).

  Raises :class:`PthError` (naming ``path``) for a file that is neither format, is truncated or corrupt, holds any
  object other than tensors in (Ordered)dicts, or whose top level is not a mapping of names to tensors.
  """
  path = Path(path)
  if not path.is_file():
    raise PthError(f"{path}: no such file")
  if zipfile.is_zipfile(path):
    obj = _read_zip(path)
  else:
    with open(path, "rb") as f:
      if f.read(2)[:1] != b"\x80":
        raise PthError(f"{path}: not a PyTorch .pth file (neither a zip archive nor a pickle)")
      f.seek(0)
      obj = _read_legacy(f, path)
  if not isinstance(obj, dict):
    raise PthError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
  out = {}
  for name, value in obj.items():
    if not isinstance(value, TensorRef):
      raise PthError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    out[str(name)] = materialise(value, path, str(name))
  return out
