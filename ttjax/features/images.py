"""Image inputs of the vision encoders: one host-side batch check and ONE preprocessing function.

Every image encoder of ttjax (the EfficientNet-Lite zoo entries, Hugging Face vision checkpoints) feeds its
uint8 images through :func:`image_batch` (host: shape check, padding to the static batch size) and
:func:`preprocess_images` (inside the jitted apply: grey -> RGB, ``[0, 255] -> [0, 1]``, bilinear resize to the
model's square input size, per-channel normalisation), so the tasks' images are prepared the same way everywhere.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.features.encoder import pad_rows

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "image_batch", "preprocess_images", "pil_bilinear_weights",
           "pil_resize_axis"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (the EfficientNet-Lite reference's)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_batch(images, batch_size: int, *, name: str = "images") -> np.ndarray:
  """``(batch_size, H, W, C)`` from at most ``batch_size`` images ``(n, H, W)`` or ``(n, H, W, C)``, ``C`` 1 or 3;
  padded with zero images (dropped after ``apply``). uint8 images are in ``[0, 255]``, float images in ``[0, 1]``.

  Raises ``ValueError`` naming ``name``, its shape and the fix for any other rank or channel count.
  """
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or min(x.shape[1:3], default=0) < 1:
    raise ValueError(f"{name} must be (n, H, W) grey or (n, H, W, 1 | 3) images, got shape {np.shape(images)}; "
                     "stack same-size images into one uint8 array (channels last)")
  if x.dtype != np.uint8 and x.dtype.kind != "f":
    raise ValueError(f"{name} must hold uint8 [0, 255] or float [0, 1] pixels, got dtype {x.dtype}; convert "
                     "with images.astype(numpy.uint8)")
  return pad_rows(x, batch_size)


def pil_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
  """``(n_out, n_in)`` int32 fixed-point weights of PIL's bilinear resampling along one axis (Pillow
  ``Resample.c``: ``precompute_coeffs`` + ``normalize_coeffs_8bpc``), so that PIL's output pixel is
  ``clip((sum_j W[i, j] p_j + 2^21) >> 22, 0, 255)``.

  Output ``i`` is centred at ``c = (i + 1/2) n_in / n_out``; with ``f = max(n_in / n_out, 1)`` (antialiasing when
  shrinking) input ``j`` in ``[int(c - f + 1/2), int(c + f + 1/2))`` gets the triangle ``max(0, 1 - |(j - c + 1/2)
  / f|)``, renormalised over the window and rounded to 22 fractional bits.
  """
  scale = n_in / n_out
  support = max(scale, 1.0)
  w = np.zeros((n_out, n_in))
  for i in range(n_out):
    c = (i + 0.5) * scale
    lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
    j = np.arange(lo, hi)
    t = np.maximum(0.0, 1.0 - np.abs((j - c + 0.5) / support))
    w[i, lo:hi] = t / t.sum() if t.sum() != 0 else t
  return np.trunc(w * (1 << 22) + 0.5).astype(np.int32)  # weights >= 0: PIL's (int)(0.5 + w * 2^22)


def pil_resize_axis(p: jax.Array, n_out: int, axis: int) -> jax.Array:
  """Integer pixels ``p`` (int32, ``[0, 255]``) resized along ``axis`` exactly as PIL's bilinear on uint8:
  ``clip((W p + 2^21) >> 22, 0, 255)`` with ``W = pil_bilinear_weights`` (int32 maths; sums stay below 2^31)."""
  if p.shape[axis] == n_out:
    return p
  w = jnp.asarray(pil_bilinear_weights(p.shape[axis], n_out))
  q = jnp.moveaxis(jnp.tensordot(p, w, axes=((axis,), (1,)), preferred_element_type=jnp.int32), -1, axis)
  return jnp.clip((q + (1 << 21)) >> 22, 0, 255)


def preprocess_images(x: jax.Array, image_size: int, mean: Sequence[float], std: Sequence[float], *,
                      pil_resize: bool = False) -> jax.Array:
  """``(B, H, W, C)`` images -> ``(B, image_size, image_size, 3)`` float32 model inputs.

  Pixels ``p`` in ``[0, 255]`` (uint8 as they are, float images times 255); a grey channel is repeated to RGB
  (PIL's ``convert("RGB")``); ``p`` is resized to ``image_size`` squared, then ``u = p / 255`` and
  ``(u - mean_c) / std_c`` per channel. Resizing:

  * ``pil_resize=False``: ``jax.image.resize(..., "bilinear")`` in float32 (half-pixel centres, triangle kernel
    renormalised at the borders, antialiased when shrinking);
  * ``pil_resize=True``: exactly ``PIL.Image.resize((S, S), BILINEAR)`` of the uint8 image -- torchvision's
    ``Resize`` of a PIL image, the reference pipeline of the EfficientNet-Lite weights: the width first, then the
    height, each in PIL's 22-bit fixed point and rounded to integers (:func:`pil_resize_axis`); float images are
    rounded to integers first.
  """
  x = x.astype(jnp.float32) if x.dtype == jnp.uint8 else x.astype(jnp.float32) * 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if pil_resize:
    p = jnp.clip(jnp.floor(x + 0.5), 0, 255).astype(jnp.int32)
    x = pil_resize_axis(pil_resize_axis(p, image_size, 2), image_size, 1).astype(jnp.float32)
  else:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), "bilinear")
  return (x / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
