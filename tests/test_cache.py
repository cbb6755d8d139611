"""A cache you can trust: keys from content (weights, data source, inputs), entries validated when read.

Each collision or corrupt entry of issue 15 is a case here: two checkpoints with one name and size, a model retrained
in place, two ONNX files with one name and size, another ``--data-dir``, a re-prepared tfds dataset, other inputs
under the same names; NaN features, missing or bad ``meta``, 0-d / float / out-of-range labels under the right key.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttjax import assets
from ttjax.data import loader
from ttjax.features import cache as fcache
from ttjax.features.encoder import Encoder, fingerprint


def _checkpoint(folder, weights: bytes):
  """A folder :func:`model_key` reads as a checkpoint: ``config.json`` and a weight file."""
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
  (folder / "model.safetensors").write_bytes(weights)
  return folder


def test_checkpoints_with_one_name_and_size_get_different_keys(tmp_path):
  a = _checkpoint(tmp_path / "runA" / "checkpoint-500", b"\x01" * 4096)
  b = _checkpoint(tmp_path / "runB" / "checkpoint-500", b"\x02" * 4096)
  ka, kb = fcache.model_key(str(a)), fcache.model_key(str(b))
  assert ka[0] == kb[0] == "checkpoint-500" and ka[1] != kb[1]
  assert fcache.feature_path(str(a), "toyset", "train", cache_dir=tmp_path) != \
      fcache.feature_path(str(b), "toyset", "train", cache_dir=tmp_path)
  shutil.rmtree(b)
  shutil.copytree(a, b)
  assert fcache.model_key(str(b)) == ka  # same content, same key (the folder's parent does not matter)


def test_model_retrained_in_place_gets_a_new_key(tmp_path):
  a = _checkpoint(tmp_path / "model", b"\x01" * 4096)
  before = fcache.model_key(str(a))
  w = a / "model.safetensors"
  st = w.stat()
  w.write_bytes(b"\x01" * 4095 + b"\x03")  # same name, same size
  os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
  assert fcache.model_key(str(a)) != before
  (a / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # the tokenizer changes the features too
  k1 = fcache.model_key(str(a))
  (a / "vocab.txt").write_text("[PAD]\n[CLS]\n")
  assert fcache.model_key(str(a)) != k1


def test_onnx_files_with_one_name_and_size_get_different_keys(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  fa, fb = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
  fa.write_bytes(b"\x00" * 1000)
  fb.write_bytes(b"\x00" * 999 + b"\x01")
  assert fcache.model_key(str(fa))[1] != fcache.model_key(str(fb))[1]


def test_file_digest_is_sha256_of_the_bytes(tmp_path):
  import hashlib
  f = tmp_path / "w.bin"
  f.write_bytes(os.urandom(10_000))
  assert assets.file_digest(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_data_dir_and_dataset_info_are_in_the_key(tmp_path):
  enc = "minilm-l6"  # a zoo name: its key needs no files
  default = fcache.feature_path(enc, "r8", "train", cache_dir=tmp_path)
  da = fcache.feature_path(enc, "r8", "train", cache_dir=tmp_path, data_dir=tmp_path / "A")
  db = fcache.feature_path(enc, "r8", "train", cache_dir=tmp_path, data_dir=tmp_path / "B")
  assert len({default, da, db}) == 3
  assert fcache.feature_path(enc, "20ng", "train", cache_dir=tmp_path) == \
      fcache.feature_path(enc, "20newsgroups", "train", cache_dir=tmp_path)  # aliases share an entry
  info = tmp_path / "tfds" / "my_set" / "1.0.0" / "dataset_info.json"
  info.parent.mkdir(parents=True)
  info.write_text(json.dumps({"splits": [{"name": "train", "shardLengths": ["10"]}]}))
  k1 = fcache.feature_path(enc, "my_set", "train", cache_dir=tmp_path, data_dir=tmp_path / "tfds")
  info.write_text(json.dumps({"splits": [{"name": "train", "shardLengths": ["12"]}]}))  # re-prepared
  k2 = fcache.feature_path(enc, "my_set", "train", cache_dir=tmp_path, data_dir=tmp_path / "tfds")
  assert k1 != k2 and loader.source_key("my_set", tmp_path / "tfds")[0] == "tfds"


def _encoder(calls):
  def prepare(x):
    calls.append(len(x))
    return {"x": np.asarray(x, np.float32)}
  return Encoder(name="id", modality="vector", dim=3, apply=jax.jit(lambda p, b: b["x"] * p), params=jnp.ones(3),
                 prepare=prepare, batch_size=8, fingerprint=fingerprint("id", 1))


def test_other_inputs_under_the_same_names_are_recomputed(tmp_path):
  calls = []
  enc = _encoder(calls)
  x = np.arange(12.0).reshape(4, 3)
  fcache.cached_extract(enc, x, dataset="toyset", split="train", cache_dir=tmp_path)
  fcache.cached_extract(enc, x, dataset="toyset", split="train", cache_dir=tmp_path)
  assert calls == [4]
  z = fcache.cached_extract(enc, x + 1, dataset="toyset", split="train", cache_dir=tmp_path)  # same row count
  assert calls == [4, 4]
  np.testing.assert_allclose(z, x + 1)
  assert fcache.inputs_digest(["a", "bc"]) != fcache.inputs_digest(["ab", "c"])


def _write(path, **arrays):
  with open(path, "wb") as f:
    np.savez(f, **arrays)


@pytest.mark.parametrize("case", ["nan features", "inf features", "missing meta", "bad meta json", "meta not a dict",
                                  "0-d labels", "float labels", "negative label", "label beyond class names",
                                  "labels of another length", "1-d features", "integer features"])
def test_corrupt_entries_are_misses(tmp_path, case):
  path = fcache.feature_path(_encoder([]), "toyset", "train", cache_dir=tmp_path)
  good = dict(features=np.ones((4, 3), np.float32), labels=np.array([0, 1, 0, 1]), class_names=np.array(["a", "b"]),
              key=np.asarray(path.name), meta=np.asarray("{}"))
  _write(path, **good)
  assert fcache.load_features(path) is not None  # the well-formed entry is a hit
  bad = dict(good)
  if case == "nan features":
    bad["features"] = np.where(np.eye(4, 3) > 0, np.nan, 1.0).astype(np.float32)
  elif case == "inf features":
    bad["features"] = np.full((4, 3), np.inf, np.float32)
  elif case == "missing meta":
    del bad["meta"]
  elif case == "bad meta json":
    bad["meta"] = np.asarray("{not json")
  elif case == "meta not a dict":
    bad["meta"] = np.asarray("[1, 2]")
  elif case == "0-d labels":
    bad["labels"] = np.asarray(3)
  elif case == "float labels":
    bad["labels"] = np.array([0.0, 1.0, 0.0, 1.0])
  elif case == "negative label":
    bad["labels"] = np.array([0, -1, 0, 1])
  elif case == "label beyond class names":
    bad["labels"] = np.array([0, 1, 2, 1])
  elif case == "labels of another length":
    bad["labels"] = np.array([0, 1, 0])
  elif case == "1-d features":
    bad["features"] = np.ones(4, np.float32)
  elif case == "integer features":
    bad["features"] = np.ones((4, 3), np.int32)
  _write(path, **bad)
  assert fcache.load_features(path) is None


def test_atomic_write_keeps_mode_and_symlink(tmp_path):
  target = tmp_path / "real.json"
  target.write_text("old")
  os.chmod(target, 0o600)
  link = tmp_path / "link.json"
  link.symlink_to(target)
  with assets.atomic_file(link, "w") as f:
    f.write("new")
  assert link.is_symlink() and target.read_text() == "new"
  assert (target.stat().st_mode & 0o777) == 0o600
  fresh = tmp_path / "fresh.json"
  with assets.atomic_file(fresh, "w") as f:
    f.write("x")
  assert (fresh.stat().st_mode & 0o777) == 0o644


_HOLDER = """
import sys, time, pathlib
from ttjax import assets
log = pathlib.Path(sys.argv[1])
with assets.cache_lock("entry", sys.argv[2]):
  log.write_text("held\\n")
  time.sleep(1.0)
  with open(log, "a") as f:
    f.write("released\\n")
"""


def test_cache_lock_makes_another_process_wait_until_the_entry_is_built(tmp_path):
  log = tmp_path / "log.txt"
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(log), str(tmp_path)])
  try:
    deadline = time.monotonic() + 120
    while not (log.exists() and "held" in log.read_text()):
      assert proc.poll() is None and time.monotonic() < deadline, "the holder process never took the lock"
      time.sleep(0.02)
    with assets.cache_lock("entry", tmp_path):  # waits for the holder: its whole block has run
      seen = log.read_text()
    assert seen == "held\nreleased\n"
  finally:
    proc.wait(timeout=60)
  assert proc.returncode == 0


def test_cache_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(tmp_path):
  order = []

  def nested():
    with assets.cache_lock("entry", tmp_path):
      with assets.cache_lock("entry", tmp_path):  # re-entry: does not wait for itself
        order.append("nested")

  def other():
    with assets.cache_lock("entry", tmp_path):
      order.append("other")

  t = threading.Thread(target=nested, daemon=True)
  t.start()
  t.join(30)
  assert order == ["nested"]
  with assets.cache_lock("entry", tmp_path):
    u = threading.Thread(target=other, daemon=True)
    u.start()
    u.join(0.5)
    assert u.is_alive() and order == ["nested"]  # waiting for this thread's lock
  u.join(30)
  assert order == ["nested", "other"]
