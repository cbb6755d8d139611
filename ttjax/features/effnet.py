"""EfficientNet-Lite0/1/2 (ImageNet-1k classifiers) as Flax linen modules, weights from the PyTorch ``.pth`` files.

The architecture follows the reference ``efficientnet-lite-pytorch==0.1.0`` (``EfficientNet.from_pretrained
('efficientnet-lite{0,1,2}')``, itself a port of TensorFlow's ``efficientnet/lite``): a 3x3 stride-2 stem of 32
channels, MBConv blocks (optional 1x1 expansion, depthwise kxk, 1x1 projection, each followed by batch norm;
ReLU6 after the first two; identity skip when the stride is 1 and the width is kept; no squeeze-excitation), a 1x1
head of 1280 channels, global average pooling (the **1280-d features**) and a linear layer (the **1000 ImageNet
logits**). Convolutions pad like TensorFlow's ``SAME`` (the reference's static same padding at its native
resolution). Width and depth multipliers scale every stage but the first and last (``fix_head_stem``):

=========  =====  =====  ==========  ======
variant    width  depth  resolution  blocks
=========  =====  =====  ==========  ======
lite0      1.0    1.0    224         16
lite1      1.0    1.1    240         21
lite2      1.1    1.2    260         21
=========  =====  =====  ==========  ======

Weights: a torch ``state_dict`` read by :func:`ttjax.features.pth.load_state_dict` (no torch), mapped by name
(``_blocks.3._bn1.running_var`` -> ``batch_stats/blocks_3/bn1/var``) with every shape checked. Inference only:
batch norm uses the running statistics (eps ``1e-3``), dropout and drop-connect are off.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ttjax.features.encoder import Encoder, feature_options, fingerprint, resolve_dtype
from ttjax.features.images import IMAGENET_MEAN, IMAGENET_STD, image_batch, preprocess_images
from ttjax.features.pth import load_state_dict

__all__ = ["LiteConfig", "LITE_CONFIGS", "BlockSpec", "block_specs", "same_pads", "DepthwiseConv", "MBConv",
           "EfficientNetLite", "round_filters", "init_shapes",
           "torch_to_flax", "load_effnet_variables", "imagenet_head", "effnet_apply", "load_effnet_encoder",
           "OUTPUTS", "STEM", "HEAD", "NUM_CLASSES"]

OUTPUTS = ("features", "logits")
STEM, HEAD, NUM_CLASSES, DIVISOR = 32, 1280, 1000, 8  # channels of the stem / head (fixed), ImageNet classes
# (repeats, kernel, stride, expand ratio, input filters, output filters) of the 7 stages (efficientnet_lite_builder)
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))


@dataclasses.dataclass(frozen=True)
class LiteConfig:
  """One EfficientNet-Lite variant: width / depth multipliers and the native input resolution."""

  name: str
  width: float
  depth: float
  resolution: int


LITE_CONFIGS = {c.name: c for c in (LiteConfig("lite0", 1.0, 1.0, 224), LiteConfig("lite1", 1.0, 1.1, 240),
                                    LiteConfig("lite2", 1.1, 1.2, 260))}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MBConv block: ``kernel``, ``stride``, ``expand`` ratio, ``inputs`` / ``outputs`` channels."""

  kernel: int
  stride: int
  expand: int
  inputs: int
  outputs: int

  @property
  def skip(self) -> bool:
    """Identity shortcut: stride 1 and as many output as input channels."""
    return self.stride == 1 and self.inputs == self.outputs


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """``filters * width`` rounded to a multiple of ``divisor`` (never below ``divisor``, nor 10% below the
  product): TensorFlow's / the reference's ``round_filters``."""
  f = filters * width
  new = max(divisor, int(f + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * f else new)


def block_specs(config: LiteConfig) -> tuple[BlockSpec, ...]:
  """The MBConv blocks of ``config``: stage ``i`` repeats ``ceil(depth * r_i)`` times (the first and the last
  stage keep ``r_i``; the first keeps the 32-channel stem as input); the first block of a stage has its stride
  and width change, the others stride 1 at the stage's output width."""
  out = []
  last = len(_STAGES) - 1
  for i, (r, k, s, e, cin, cout) in enumerate(_STAGES):
    fixed = i in (0, last)
    cin = STEM if i == 0 else round_filters(cin, config.width, DIVISOR)
    cout = round_filters(cout, config.width, DIVISOR)
    repeats = r if fixed else int(math.ceil(config.depth * r))
    out.append(BlockSpec(k, s, e, cin, cout))
    out += [BlockSpec(k, 1, e, cout, cout)] * (repeats - 1)
  return tuple(out)


def _conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype=None) -> nn.Conv:
  """A bias-free convolution with TensorFlow ``SAME`` padding (``ceil(H / stride)`` outputs, the extra pad row /
  column at the bottom / right: :func:`same_pads`)."""
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding="SAME", use_bias=False, dtype=dtype, name=name)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow ``SAME`` padding of one axis: ``total = max((ceil(size / stride) - 1) * stride + kernel - size, 0)``,
  ``(total // 2, total - total // 2)`` (the reference's ``Conv2dStaticSamePadding``, ``lax``'s ``"SAME"``)."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
  """Bias-free depthwise ``k x k`` convolution with ``SAME`` padding, kernel ``(k, k, 1, C)`` (the layout of
  ``nn.Conv(..., feature_group_count=C)``): ``y[b, i, j, c] = sum_{u,v} x_pad[b, s i + u, s j + v, c] w[u, v, 0, c]``.

  Computed as ``k^2`` strided slices of the padded input times one kernel tap each: on XLA:CPU this is 3-15x
  faster than the grouped convolution (measured per layer of EfficientNet-Lite0, batch 32; whole networks:
  ``benchmarks/effnet_speed.py``) and equal to it up to float32 summation order. ``grouped=True``: the grouped
  ``lax.conv_general_dilated`` instead (the benchmark's baseline).
  """

  features: int
  kernel: int
  stride: int = 1
  dtype: Optional[jnp.dtype] = None
  grouped: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel, self.stride
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, self.features))
    if self.dtype is not None:
      x, w = x.astype(self.dtype), w.astype(self.dtype)
    if self.grouped:
      return jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=self.features)
    (h0, h1), (w0, w1) = same_pads(x.shape[1], k, s), same_pads(x.shape[2], k, s)
    xp = jnp.pad(x, ((0, 0), (h0, h1), (w0, w1), (0, 0)))
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    out = None
    for u in range(k):
      for v in range(k):
        tap = jax.lax.slice(xp, (0, u, v, 0), (xp.shape[0], u + (oh - 1) * s + 1, v + (ow - 1) * s + 1, xp.shape[3]),
                            (1, s, s, 1)) * w[u, v, 0]
        out = tap if out is None else out + tap
    return out


def _bn(name: str, dtype=None) -> nn.BatchNorm:
  """Inference batch norm: ``(x - mean) / sqrt(var + 1e-3) * scale + bias`` with the running statistics."""
  return nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=dtype, name=name)


class MBConv(nn.Module):
  """Mobile inverted bottleneck: ``x -> [1x1 expand, BN, ReLU6] -> kxk depthwise, BN, ReLU6 -> 1x1 project, BN
  (+ x when :attr:`BlockSpec.skip`)``; ``(B, H, W, inputs) -> (B, ceil(H / stride), ceil(W / stride), outputs)``."""

  spec: BlockSpec
  dtype: Optional[jnp.dtype] = None
  grouped: bool = False  # depthwise as a grouped convolution (DepthwiseConv)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s, dt = self.spec, self.dtype
    h = x
    mid = s.inputs * s.expand
    if s.expand != 1:
      h = jax.nn.relu6(_bn("bn0", dt)(_conv(mid, 1, name="expand_conv", dtype=dt)(h)))
    h = jax.nn.relu6(_bn("bn1", dt)(DepthwiseConv(mid, s.kernel, s.stride, dt, self.grouped, name="depthwise_conv")(h)))
    h = _bn("bn2", dt)(_conv(s.outputs, 1, name="project_conv", dtype=dt)(h))
    return h + x if s.skip else h


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite: normalised images ``(B, S, S, 3)`` -> ``(features (B, 1280), logits (B, 1000))``.

  ``features`` = the global average of ``ReLU6(BN(conv_head(blocks(stem(x)))))`` (the reference's pooled
  penultimate layer); ``logits = features @ W + b`` (the reference's ``_fc``; dropout is off at inference).
  """

  config: LiteConfig
  grouped: bool = False  # depthwise as a grouped convolution (DepthwiseConv)
  dtype: Optional[jnp.dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    dt = self.dtype
    h = jax.nn.relu6(_bn("bn0", dt)(_conv(STEM, 3, 2, name="conv_stem", dtype=dt)(x)))
    for i, spec in enumerate(block_specs(self.config)):
      h = MBConv(spec, dt, self.grouped, name=f"blocks_{i}")(h)
    h = jax.nn.relu6(_bn("bn1", dt)(_conv(HEAD, 1, name="conv_head", dtype=dt)(h)))
    features = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, dtype=dt, name="fc")(features.astype(h.dtype))
    return features, logits.astype(jnp.float32)


def init_shapes(config: LiteConfig) -> dict:
  """``{(collection, *module path, leaf): shape}`` of every variable of ``EfficientNetLite(config)`` (no FLOPs:
  ``jax.eval_shape``)."""
  x = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, 3), jnp.float32)
  shapes = jax.eval_shape(EfficientNetLite(config).init, jax.random.PRNGKey(0), x)
  return {k: tuple(v.shape) for k, v in flatten_dict(shapes).items()}


_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
              "running_var": ("batch_stats", "var")}


def _flax_key(name: str, bn_modules: set) -> Optional[tuple]:
  """Torch name -> ``(collection, *modules, leaf)``: ``_blocks.3._bn1.running_var`` ->
  ``("batch_stats", "blocks_3", "bn1", "var")``; ``None`` for ``num_batches_tracked`` (unused at inference).
  ``bn_modules``: the module paths that are batch norms."""
  parts = [p.lstrip("_") for p in name.split(".")]
  if parts[0] == "blocks" and len(parts) > 2:
    parts = [f"blocks_{parts[1]}"] + parts[2:]
  mods, leaf = tuple(parts[:-1]), parts[-1]
  if leaf == "num_batches_tracked":
    return None
  if mods in bn_modules:
    coll, new = _BN_LEAVES.get(leaf, ("unknown", leaf))
    return (coll, *mods, new)
  return ("params", *mods, {"weight": "kernel"}.get(leaf, leaf))


def _flax_value(value: np.ndarray) -> np.ndarray:
  """Torch layouts -> Flax: conv ``(O, I/groups, kh, kw)`` -> ``(kh, kw, I/groups, O)``; linear ``(O, I)`` ->
  ``(I, O)``; vectors as they are (float32)."""
  v = np.asarray(value, np.float32)
  if v.ndim == 4:
    return np.ascontiguousarray(v.transpose(2, 3, 1, 0))
  if v.ndim == 2:
    return np.ascontiguousarray(v.T)
  return v


def torch_to_flax(state_dict: dict, config: LiteConfig, *, source: str = "state dict") -> dict:
  """Flax variables ``{"params": ..., "batch_stats": ...}`` of ``EfficientNetLite(config)`` from the reference's
  torch ``state_dict`` (numpy arrays). Every variable must be present exactly once with its shape; any extra or
  missing tensor raises ``ValueError`` naming ``source``, the tensor and the shapes."""
  want = init_shapes(config)
  bn_modules = {k[1:-1] for k in want if k[0] == "batch_stats"}
  got = {}
  for name, value in state_dict.items():
    key = _flax_key(name, bn_modules)
    if key is None:
      continue
    if key not in want:
      raise ValueError(f"{source}: tensor {name!r} {np.shape(value)} has no place in EfficientNet-{config.name} "
                       f"(is this the {config.name} checkpoint?)")
    v = _flax_value(value)
    if v.shape != want[key]:
      raise ValueError(f"{source}: tensor {name!r} has shape {np.shape(value)}, EfficientNet-{config.name} needs "
                       f"{want[key]} in Flax layout (is this the {config.name} checkpoint?)")
    got[key] = v
  missing = sorted("/".join(k) for k in want if k not in got)
  if missing:
    raise ValueError(f"{source}: {len(missing)} weight(s) of EfficientNet-{config.name} missing, e.g. "
                     f"{missing[:3]} (is this the {config.name} checkpoint?)")
  return unflatten_dict(got)


def load_effnet_variables(path: Union[str, os.PathLike], variant: str) -> dict:
  """Flax variables of EfficientNet-Lite ``variant`` (``"lite0"``...) from a torch ``.pth`` state dict (read
  without torch: :func:`ttjax.features.pth.load_state_dict`)."""
  if variant not in LITE_CONFIGS:
    raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(LITE_CONFIGS)}")
  return torch_to_flax(load_state_dict(path), LITE_CONFIGS[variant], source=str(path))


def imagenet_head(variables: dict) -> tuple[np.ndarray, np.ndarray]:
  """The ImageNet classifier on the pooled features: ``(W (1280, 1000), b (1000,))`` float32, so that
  ``logits = features @ W + b`` (exactly the network's last layer)."""
  fc = variables["params"]["fc"]
  return np.asarray(fc["kernel"], np.float32), np.asarray(fc["bias"], np.float32)


def effnet_apply(model: EfficientNetLite, variables: dict, images: jax.Array, output: str = "features") -> jax.Array:
  """Images ``(B, H, W, C)`` (uint8 or ``[0, 1]`` floats) -> ``features (B, 1280)`` or ``logits (B, 1000)``
  float32: :func:`ttjax.features.images.preprocess_images` (grey -> RGB, PIL's bilinear resize to the native
  resolution, ImageNet normalisation: the reference's torchvision pipeline), then the network."""
  x = preprocess_images(images, model.config.resolution, IMAGENET_MEAN, IMAGENET_STD, pil_resize=True)
  features, logits = model.apply(variables, x.astype(model.dtype or jnp.float32))
  return features if output == "features" else logits


def load_effnet_encoder(weights: Union[str, os.PathLike], variant: str, *, name: Optional[str] = None,
                        output: str = "features", batch_size: int = 32, dtype="float32",
                        device: Optional[jax.Device] = None) -> Encoder:
  """Encoder ``uint8 images (n, H, W[, C]) -> (n, 1280)`` pooled features (``output="features"``) or ``(n, 1000)``
  ImageNet logits (``output="logits"``) of EfficientNet-Lite ``variant`` with the weights of ``weights`` (.pth).

  Grey images become RGB; every image is resized to the variant's native resolution (224 / 240 / 260) inside the
  jitted apply. ``dtype``: ``"float32"`` (default) or ``"bfloat16"`` computation.
  """
  if output not in OUTPUTS:
    raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
  dt = resolve_dtype(dtype)
  variables = load_effnet_variables(weights, variant)
  config = LITE_CONFIGS[variant]
  model = EfficientNetLite(config, dtype=None if dt == jnp.float32 else dt)
  params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, dt), variables)

  def apply(p, batch):
    return effnet_apply(model, p, batch["images"], output)

  path = Path(weights)
  meta = {"variant": variant, "output": output, "image_size": config.resolution, "mean": list(IMAGENET_MEAN),
          "std": list(IMAGENET_STD), "dtype": str(dt), "batch_size": batch_size}
  cid = {"weights": [path.name, path.stat().st_size], "config": dataclasses.asdict(config)}
  return Encoder(name=name or f"effnet-{variant}", modality="image",
                 dim=HEAD if output == "features" else NUM_CLASSES, apply=jax.jit(apply),
                 params=jax.device_put(params, device or jax.devices()[0]),
                 prepare=lambda images: {"images": image_batch(images, batch_size, name=name or f"effnet-{variant}")},
                 batch_size=batch_size,
                 fingerprint=fingerprint("effnet", cid, feature_options(meta)), meta=meta)
