"""Local Hugging Face checkpoints -> jitted Flax feature functions (no torch, no network).

Text encoders (BERT family) pool the last hidden state: masked ``"mean"`` (sentence-transformers style), ``"cls"``
or the model's ``"pooler"``; tokenisation uses the checkpoint's own fast tokenizer with a fixed ``max_length``.
Vision encoders (ViT, CLIP vision tower, DINOv2, ResNet) take uint8 images ``(n, H, W[, C])``; resizing to the
model's input size and normalisation run inside the jitted function; default pooling is the model's pooled output.

Weights: ``flax_model.msgpack``, or ``model.safetensors`` (PyTorch- or Flax-layout; PyTorch-layout safetensors are
converted without torch). Loading always passes ``local_files_only=True`` with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from ttjax.features.encoder import Encoder, feature_options, fingerprint, masked_mean, pad_rows, resolve_dtype
from ttjax.features.images import IMAGENET_MEAN, IMAGENET_STD, image_batch, preprocess_images

__all__ = ["load_hf_encoder", "hub_offline", "text_encoder", "image_encoder", "checkpoint_info", "VISION_MODEL_TYPES",
           "IMAGENET_MEAN", "IMAGENET_STD"]

VISION_MODEL_TYPES = ("vit", "clip", "clip_vision_model", "dinov2", "resnet", "beit", "regnet")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")


def hub_offline() -> None:
  """Put the Hugging Face libraries in offline mode (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``; quiet unless
  ``TRANSFORMERS_VERBOSITY`` says otherwise): ttjax reads local files only and never reaches the Hub. Call it
  before the first ``import transformers``."""
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _read_json(path: Path) -> Optional[dict]:
  return json.loads(path.read_text()) if path.exists() else None


def checkpoint_info(path: Union[str, os.PathLike]) -> dict:
  """Describe a local checkpoint folder: config dict, weight files (name, size), sentence-transformers settings."""
  path = Path(path)
  config = _read_json(path / "config.json")
  if config is None:
    raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint folder (no config.json)")
  weights = [(f, (path / f).stat().st_size) for f in _WEIGHT_FILES if (path / f).exists()]
  if not weights:
    raise FileNotFoundError(f"{path}: no weights ({', '.join(_WEIGHT_FILES)})")
  modules = _read_json(path / "modules.json") or []
  pooling_cfg = None
  for m in modules:
    if m.get("type", "").endswith("Pooling"):
      pooling_cfg = _read_json(path / m.get("path", "") / "config.json")
  st_pooling = None
  if pooling_cfg:
    st_pooling = ("mean" if pooling_cfg.get("pooling_mode_mean_tokens") else
                  "cls" if pooling_cfg.get("pooling_mode_cls_token") else None)
  return {
    "config": config,
    "weights": weights,
    "st_pooling": st_pooling,
    "st_normalize": any(m.get("type", "").endswith("Normalize") for m in modules),
    "st_max_length": (_read_json(path / "sentence_bert_config.json") or {}).get("max_seq_length"),
    "preprocessor": _read_json(path / "preprocessor_config.json"),
  }


def _safetensors_format(path: Path) -> Optional[str]:
  """``metadata["format"]`` of ``path/model.safetensors`` (``"pt"``, ``"flax"`` ...) or None."""
  f = path / "model.safetensors"
  if not f.exists() or (path / "flax_model.msgpack").exists():
    return None
  # optional: ttjax[hf]
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  with safe_open(str(f), framework="numpy") as st:
    return (st.metadata() or {}).get("format")


def _model_class(config, modality: str):
  """The concrete Flax class for ``config`` (resolved here: the Auto classes would pass ``dtype`` to the config)."""
  # optional: ttjax[hf]
  import transformers as tr  # pylint: disable=import-outside-toplevel
  special = {"vit": "FlaxViTModel", "clip": "FlaxCLIPVisionModel", "clip_vision_model": "FlaxCLIPVisionModel",
             "dinov2": "FlaxDinov2Model", "resnet": "FlaxResNetModel", "beit": "FlaxBeitModel",
             "regnet": "FlaxRegNetModel"}
  if modality == "image" and config.model_type in special:
    return getattr(tr, special[config.model_type])
  mapping = tr.models.auto.modeling_flax_auto.FLAX_MODEL_MAPPING
  try:
    return mapping[type(config)]
  except KeyError as e:
    raise ValueError(f"no Flax model class for model_type={config.model_type!r} in transformers "
                     f"{tr.__version__}") from e


def _load_flax(path: Path, info: dict, modality: str, dtype, **kwargs):
  """``(model, params)`` of a local checkpoint, params cast to ``dtype``."""
  hub_offline()
  # optional: ttjax[hf]
  import transformers  # pylint: disable=import-outside-toplevel
  names = {w for w, _ in info["weights"]}
  from_pt = "flax_model.msgpack" not in names and "model.safetensors" not in names
  if from_pt:
    try:  # torch (optional) only to read pytorch_model.bin
      import torch  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    except ImportError as e:
      raise ImportError(f"{path} only has pytorch_model.bin, which needs torch to read; convert it to "
                        "model.safetensors or flax_model.msgpack") from e
  config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
  cls = _model_class(config, modality)
  if cls.config_class is not type(config):  # e.g. the vision tower of a full CLIP checkpoint
    config = cls.config_class.from_pretrained(str(path), local_files_only=True)
  # The PyTorch-layout conversion (model.safetensors from PyTorch) needs ``_do_init=True``, which fills missing
  # weights with random ones: capture transformers' "newly initialized" warning and turn it into an error.
  pt_layout = from_pt or _safetensors_format(path) == "pt"
  records = []
  handler = logging.Handler(level=logging.WARNING)
  handler.emit = records.append
  flax_logger = logging.getLogger("transformers.modeling_flax_utils")
  old_level, old_prop = flax_logger.level, flax_logger.propagate
  flax_logger.addHandler(handler)
  flax_logger.setLevel(logging.WARNING)
  flax_logger.propagate = False
  try:
    model = cls.from_pretrained(str(path), config=config, local_files_only=True, from_pt=from_pt, dtype=dtype,
                                _do_init=pt_layout, **kwargs)
  finally:
    flax_logger.removeHandler(handler)
    flax_logger.setLevel(old_level)
    flax_logger.propagate = old_prop
  if pt_layout:
    params = model.params
  else:
    model, params = model
  missing = sorted("/".join(k) for k in model.required_params - set(flatten_dict(params)))
  missing += [r.getMessage() for r in records if "newly initialized" in r.getMessage()]
  if missing:
    raise ValueError(f"{path}: the checkpoint lacks weights the {cls.__name__} needs: {missing[0][:400]} "
                     "(choose another pooling, e.g. pooling='cls', or another model class)")
  if dtype != jnp.float32:
    params = jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
  return model, params


def text_encoder(model, params, tokenizer, *, name: str, pooling: str = "mean", normalize: bool = False,
                 max_length: int = 128, batch_size: int = 32, config_id: Any = None,
                 device: Optional[jax.Device] = None) -> Encoder:
  """Encoder from a Flax text model (``model(input_ids, attention_mask, ..., params=) -> last_hidden_state``).

  ``prepare`` tokenises to ``(batch_size, max_length)`` int32 arrays (truncating, padding to ``max_length``);
  ``apply`` pools ``(B, L, h) -> (B, h)`` float32: masked mean, CLS token, or the model's pooler output.
  """
  if pooling not in ("mean", "cls", "pooler"):
    raise ValueError(f"text pooling must be 'mean', 'cls' or 'pooler', got {pooling!r}")
  accepted = set(inspect.signature(model.__call__).parameters)
  keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted]
  pad_id = tokenizer.pad_token_id or 0

  def prepare(texts: Sequence[str]) -> dict:
    texts = [t if isinstance(t, str) else str(t) for t in texts]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    out = {}
    for k in keys:
      v = enc[k] if k in enc else np.zeros_like(enc["input_ids"])
      out[k] = pad_rows(v.astype(np.int32), batch_size, pad_id if k == "input_ids" else 0)
    return out

  def apply(p, batch):
    out = model(**batch, params=p, train=False)
    if pooling == "mean":
      z = masked_mean(out.last_hidden_state, batch["attention_mask"])
    elif pooling == "cls":
      z = out.last_hidden_state[:, 0].astype(jnp.float32)
    else:
      z = out.pooler_output.astype(jnp.float32)
    if normalize:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z

  dim = int(jax.eval_shape(apply, params, jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), prepare(["a"]))).shape[-1])
  dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
  meta = {"pooling": pooling, "normalize": normalize, "max_length": max_length, "dtype": dtype,
          "batch_size": batch_size}
  return Encoder(name=name, modality="text", dim=dim, apply=jax.jit(apply),
                 params=jax.device_put(params, device or jax.devices()[0]), prepare=prepare,
                 batch_size=batch_size, fingerprint=fingerprint("text", config_id, feature_options(meta)), meta=meta)


def image_encoder(model, params, *, name: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                  pooling: str = "pooler", normalize: bool = False, batch_size: int = 32, config_id: Any = None,
                  device: Optional[jax.Device] = None) -> Encoder:
  """Encoder from a Flax vision model taking NCHW ``pixel_values``.

  ``prepare`` stacks uint8 images to ``(batch_size, H, W, C)`` (:func:`ttjax.features.images.image_batch`);
  ``apply`` runs :func:`ttjax.features.images.preprocess_images` (``[0, 1]``, grey -> RGB, bilinear resize to
  ``image_size`` squared, ``mean``/``std`` normalisation) and pools:
  ``"pooler"`` (the model's pooled output, flattened), ``"cls"`` or ``"mean"`` of the last hidden state tokens.
  """
  if pooling not in ("pooler", "cls", "mean"):
    raise ValueError(f"image pooling must be 'pooler', 'cls' or 'mean', got {pooling!r}")

  def prepare(images) -> dict:
    return {"images": image_batch(images, batch_size)}

  def apply(p, batch):
    x = preprocess_images(batch["images"], image_size, mean, std)
    out = model(jnp.transpose(x, (0, 3, 1, 2)), params=p, train=False)
    if pooling == "pooler":
      z = out.pooler_output.reshape(x.shape[0], -1)
    else:
      h = out.last_hidden_state
      z = h[:, 0] if pooling == "cls" else jnp.mean(h, axis=1)
    z = z.astype(jnp.float32)
    if normalize:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z

  probe = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.uint8)
  dim = int(jax.eval_shape(apply, params, {"images": probe}).shape[-1])
  dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
  meta = {"pooling": pooling, "normalize": normalize, "image_size": image_size, "mean": list(map(float, mean)),
          "std": list(map(float, std)), "dtype": dtype, "batch_size": batch_size}
  return Encoder(name=name, modality="image", dim=dim, apply=jax.jit(apply),
                 params=jax.device_put(params, device or jax.devices()[0]), prepare=prepare,
                 batch_size=batch_size, fingerprint=fingerprint("image", config_id, feature_options(meta)), meta=meta)


def _image_settings(info: dict, image_size: Optional[int]):
  cfg, pre = info["config"], info["preprocessor"] or {}
  vcfg = cfg.get("vision_config", cfg) if cfg.get("model_type") == "clip" else cfg
  model_type = cfg.get("model_type")
  if image_size is None:
    size = None
    if model_type != "vit":
      for key in ("crop_size", "size"):
        v = pre.get(key)
        if isinstance(v, dict):
          v = v.get("height") or v.get("shortest_edge")
        if v:
          size = int(v)
          break
    image_size = size or int(vcfg.get("image_size") or 224)
  default_mean, default_std = {"vit": ((0.5,) * 3, (0.5,) * 3), "clip": (CLIP_MEAN, CLIP_STD),
                                "clip_vision_model": (CLIP_MEAN, CLIP_STD)}.get(model_type,
                                                                                (IMAGENET_MEAN, IMAGENET_STD))
  mean = pre.get("image_mean") or default_mean
  std = pre.get("image_std") or default_std
  return int(image_size), list(mean), list(std)


def load_hf_encoder(path: Union[str, os.PathLike], *, modality: Optional[str] = None, pooling: Optional[str] = None,
                    normalize: Optional[bool] = None, max_length: Optional[int] = None, batch_size: int = 32,
                    dtype="float32", image_size: Optional[int] = None, name: Optional[str] = None,
                    device: Optional[jax.Device] = None) -> Encoder:
  """Encoder for the local Hugging Face checkpoint folder ``path`` (never downloads).

  Args:
    path: folder with ``config.json`` and weights (and tokenizer files for text models).
    modality: ``"text"`` or ``"image"``; default from ``config.model_type`` (ViT/CLIP/DINOv2/ResNet -> image).
    pooling: text: ``"mean"`` (default, or the sentence-transformers pooling config) / ``"cls"`` / ``"pooler"``;
      image: ``"pooler"`` (default) / ``"cls"`` / ``"mean"``.
    normalize: L2-normalise features; default: True iff the folder's ``modules.json`` has a Normalize module.
    max_length: text tokens per input (static); default 128.
    batch_size: rows per jitted call (static; the last batch is padded).
    dtype: ``"float32"`` or ``"bfloat16"`` for parameters and computation (outputs are float32).
    image_size: square input size for vision models; default from the preprocessor / model config.
  """
  path = Path(path).expanduser()
  info = checkpoint_info(path)
  cfg = info["config"]
  model_type = cfg.get("model_type", "")
  modality = modality or ("image" if model_type in VISION_MODEL_TYPES else "text")
  dt = resolve_dtype(dtype)
  if modality == "image" and pooling is None:
    # ViT's pooler is an extra tanh layer that many checkpoints do not train (or ship): use the CLS token.
    pooling = "cls" if model_type == "vit" else "pooler"
  kwargs = {"add_pooling_layer": pooling == "pooler"} if model_type in ("vit", "bert", "roberta") else {}
  model, params = _load_flax(path, info, modality, dt, **kwargs)
  name = name or path.name
  drop = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"}
  config_id = {"config": {k: v for k, v in cfg.items() if k not in drop}, "weights": info["weights"],
               "class": type(model).__name__}
  if modality == "text":
    # optional: ttjax[hf]
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    config_id["tokenizer"] = type(tokenizer).__name__
    return text_encoder(model, params, tokenizer, name=name, pooling=pooling or info["st_pooling"] or "mean",
                        normalize=info["st_normalize"] if normalize is None else normalize,
                        max_length=max_length or 128, batch_size=batch_size, config_id=config_id, device=device)
  if modality != "image":
    raise ValueError(f"modality must be 'text' or 'image', got {modality!r}")
  size, mean, std = _image_settings(info, image_size)
  return image_encoder(model, params, name=name, image_size=size, mean=mean, std=std, pooling=pooling,
                       normalize=bool(normalize), batch_size=batch_size, config_id=config_id, device=device)

