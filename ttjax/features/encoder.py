"""A frozen encoder as data, and batched feature extraction with static shapes.

An :class:`Encoder` pairs a host-side ``prepare`` (raw inputs -> fixed-shape numpy batch) with a jitted
``apply(params, batch) -> (B, d)``. :func:`extract` feeds it batches of exactly ``batch_size`` rows (the last batch
padded), so XLA compiles once per encoder and input shape, never once per batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.progress import progress as progress_bar

__all__ = ["Encoder", "extract", "fingerprint", "feature_options", "pad_rows", "resolve_dtype", "masked_mean",
           "check_modality"]


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A frozen feature map ``inputs -> (n, dim)``.

  Attributes:
    name: short name (zoo name or folder name).
    modality: ``"text"`` (inputs: list of str) or ``"image"`` (inputs: uint8 array ``(n, H, W[, C])``).
    dim: feature dimension ``d``.
    apply: jitted ``(params, batch) -> (batch_size, dim)`` float32.
    params: parameter pytree, already on the device.
    prepare: host function: a list of at most ``batch_size`` inputs -> dict of numpy arrays with a leading
      axis of exactly ``batch_size`` (padded rows are dropped after ``apply``).
    batch_size: rows per call of ``apply``.
    fingerprint: hash of the configuration, weights identity and preprocessing (feature-cache key).
    meta: human-readable description (pooling, max_length, dtype, source ...).
  """

  name: str
  modality: str
  dim: int
  apply: Callable[[Any, Mapping[str, jax.Array]], jax.Array]
  params: Any
  prepare: Callable[[Sequence[Any]], dict]
  batch_size: int
  fingerprint: str
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __call__(self, inputs, **kw) -> np.ndarray:
    return extract(self, inputs, **kw)


def fingerprint(*parts: Any) -> str:
  """Stable 16-hex-digit hash of JSON-serialisable ``parts`` (configs, preprocessing options)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def feature_options(meta: Mapping[str, Any]) -> dict:
  """The encoder options of ``meta`` that change the features (all but ``batch_size``): what a builder puts in
  the encoder's :func:`fingerprint`, so that two encoders differing only in batch size share cached features."""
  return {k: v for k, v in meta.items() if k != "batch_size"}


def resolve_dtype(dtype) -> jnp.dtype:
  """``"float32"``/``"bfloat16"`` (or a dtype) -> a JAX floating dtype."""
  dt = jnp.dtype(dtype)
  if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
  return dt


def pad_rows(x: np.ndarray, rows: int, value=0) -> np.ndarray:
  """Pad ``x (m, ...)`` with ``value`` rows to ``(rows, ...)``; ``m <= rows``."""
  m = x.shape[0]
  if m > rows:
    raise ValueError(f"batch of {m} rows exceeds the static batch size {rows}")
  if m == rows:
    return x
  pad = np.full((rows - m,) + x.shape[1:], value, dtype=x.dtype)
  return np.concatenate([x, pad], axis=0)


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``hidden (B, L, d)`` over positions where ``mask (B, L)`` is 1 -> ``(B, d)`` float32.

  An all-zero mask row (a padding row) gives zeros, not NaN.
  """
  m = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
  return total / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def _num_items(inputs) -> int:
  return inputs.shape[0] if hasattr(inputs, "shape") else len(inputs)


def check_modality(encoder: Encoder, inputs) -> None:
  """Raise ``ValueError`` naming the encoder when ``inputs`` are of the other modality: texts (a list of str) for an
  image encoder, or an image array ``(n, H, W[, C])`` for a text encoder."""
  images = hasattr(inputs, "shape") and len(inputs.shape) >= 3
  texts = not hasattr(inputs, "shape") and len(inputs) > 0 and isinstance(inputs[0], str)
  if (encoder.modality == "image" and texts) or (encoder.modality == "text" and images):
    got = f"{len(inputs)} texts" if texts else f"images of shape {tuple(inputs.shape)}"
    raise ValueError(f"{encoder.name} is a{'n' if encoder.modality == 'image' else ''} {encoder.modality} encoder "
                     f"but got {got}: embed text tasks with a text encoder, image tasks with an image encoder")


def extract(encoder: Encoder, inputs, *, progress: Optional[bool] = None, desc: Optional[str] = None,
            device: Optional[jax.Device] = None) -> np.ndarray:
  """Features ``(n, encoder.dim)`` float32 of ``inputs`` (list of str, or uint8 images ``(n, H, W[, C])``).

  Every call of ``encoder.apply`` sees the same static shapes (``batch_size`` rows, fixed length / image size):
  the last batch is padded and its padded rows dropped. Batches are put on ``device`` (default: the first
  device) with ``jax.device_put``; host preparation of batch ``t+1`` overlaps the device work on batch ``t``
  through asynchronous dispatch. ``progress`` (default: when there are more than 8 batches) shows a tqdm bar.
  """
  check_modality(encoder, inputs)
  n = _num_items(inputs)
  bs = encoder.batch_size
  if n == 0:
    return np.zeros((0, encoder.dim), np.float32)
  device = device or jax.devices()[0]
  steps = -(-n // bs)
  show = steps > 8 if progress is None else progress
  bar = None
  if show:
    bar = progress_bar(total=n, desc=desc or f"features[{encoder.name}]", unit="ex")
  outs = []
  try:
    for s in range(steps):
      chunk = inputs[s * bs:(s + 1) * bs]
      batch = jax.device_put(encoder.prepare(chunk), device)
      outs.append((encoder.apply(encoder.params, batch), _num_items(chunk)))
      if len(outs) > 2:  # bound the queue of in-flight batches
        outs[-3][0].block_until_ready()
      if bar is not None:
        bar.update(_num_items(chunk))
  finally:
    if bar is not None:
      bar.close()
  return np.concatenate([np.asarray(o[:m], dtype=np.float32) for o, m in outs], axis=0)
