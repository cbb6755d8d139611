"""Bad and degenerate input against the command line and the API: a clear error before any work, or an unchanged
result. 27 cases and a scale sweep:

* CLI, ``ttjax bound`` / ``ttjax score`` on feature files (18): NaN / inf features (the row is named), string,
  fractional and too few labels, an empty, 1-D or corrupt file, missing labels, test features of another width,
  constant target features, ``--scores ,``, ``--out`` inside a file or naming a folder, ``--plot`` naming a file,
  ``--steps 0``, ``--tau inf``, ``--batch-size -5``; float-integral and bool labels give the int labels' result (2);
* API (7): ``bound_batch`` with raw tuples, an empty list, a Task whose ``num_classes`` does not fit its labels,
  a pair of two widths; ``ttjax.tta`` with string / NaN labels; ``scores.score`` with NaN features;
* scale: every score of the command's pipeline (14) unchanged when the features are multiplied by 1e-8 ... 1e8 (4).

Every error case checks the message names the problem (file, array, row or flag) and that no output was written.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ttjax import cli, scores, synthetic as syn
from ttjax.app import steps
from ttjax.app.resolve import TaskData
from ttjax.batch import bound_batch
from ttjax.bound import BoundConfig, tta
from ttjax.tasks import make_task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("fuzz")
  rng = np.random.default_rng(0)
  z = rng.normal(size=(60, 5)).astype(np.float32)
  y = np.arange(60) % 3
  np.savez(d / "good.npz", features=z, labels=y)
  bad = z.copy()
  bad[3, 1] = np.nan
  np.savez(d / "nan_row3.npz", features=bad, labels=y)
  bad = z.copy()
  bad[7, 0] = np.inf
  np.savez(d / "inf_row7.npz", features=bad, labels=y)
  np.savez(d / "str_labels.npz", features=z, labels=np.array([f"c{v}" for v in y]))
  np.savez(d / "frac_labels.npz", features=z, labels=np.where(np.arange(60) == 5, 0.5, y))
  np.savez(d / "short_labels.npz", features=z, labels=y[:50])
  np.savez(d / "empty.npz", features=np.zeros((0, 5), np.float32), labels=np.zeros(0, int))
  np.savez(d / "flat.npz", features=z[:, 0], labels=y)
  (d / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
  np.savez(d / "no_labels.npz", features=z)
  np.savez(d / "test_width.npz", features=z, labels=y, test_features=z[:, :4], test_labels=y)
  np.savez(d / "constant.npz", features=np.ones((60, 5), np.float32), labels=y)
  np.savez(d / "float_labels.npz", features=z, labels=y.astype(np.float64))
  yb = (y > 0)
  np.savez(d / "int2.npz", features=z, labels=yb.astype(int))
  np.savez(d / "bool2.npz", features=z, labels=yb)
  return d


CLI_ERRORS = [
    (["bound", "--target", "nan_row3.npz"], ["nan_row3.npz", "'features'", "row 3"]),
    (["bound", "--target", "inf_row7.npz"], ["inf_row7.npz", "inf", "row 7"]),
    (["score", "--target", "str_labels.npz"], ["str_labels.npz", "'labels'", "class names"]),
    (["bound", "--target", "frac_labels.npz"], ["frac_labels.npz", "row 5"]),
    (["bound", "--target", "short_labels.npz"], ["short_labels.npz", "50 labels for 60"]),
    (["score", "--target", "empty.npz"], ["empty.npz", "empty"]),
    (["score", "--target", "flat.npz"], ["flat.npz", "2-D"]),
    (["score", "--target", "corrupt.npz"], ["corrupt.npz", "cannot read", "numpy.savez"]),
    (["score", "--target", "no_labels.npz"], ["no_labels.npz", "lacks"]),
    (["bound", "--target", "test_width.npz"], ["test_width.npz", "'test_features'"]),
    (["bound", "--target", "constant.npz"], ["constant"]),
    (["score", "--target", "good.npz", "--scores", ","], ["--scores", "names no score"]),
    (["bound", "--target", "good.npz", "--out", "good.npz/result.json"], ["--out", "is a file"]),
    (["bound", "--target", "good.npz", "--out", "outdir/"], ["--out", "is a folder"]),
    (["bound", "--target", "good.npz", "--plot", "good.npz"], ["--plot", "is a file"]),
    (["bound", "--target", "good.npz", "--steps", "0"], ["--steps"]),
    (["bound", "--target", "good.npz", "--tau", "inf"], ["--tau"]),
    (["bound", "--target", "good.npz", "--batch-size", "-5"], ["--batch-size"]),
]


@pytest.mark.parametrize("argv, needles", CLI_ERRORS, ids=[" ".join(a[2:]) for a, _ in CLI_ERRORS])
def test_cli_bad_input_fails_first_with_a_named_problem(files, argv, needles, monkeypatch, capsys):
  monkeypatch.chdir(files)
  bound = argv[0] == "bound"
  full = argv[:1] + ["--source", "good.npz"] * bound + argv[1:] + ["--steps", "3"] * (bound and "--steps" not in argv)
  before = sorted(p.name for p in files.iterdir())
  with pytest.raises(SystemExit) as info:
    cli.main(full + ["--no-ground-truth"])
  text = str(info.value.code) if not isinstance(info.value.code, int) else capsys.readouterr().err
  assert info.value.code != 0
  for needle in needles:
    assert needle in text, (needle, text)
  out = capsys.readouterr().out
  assert "bound " not in out and "wrote" not in out  # no work reported, nothing written
  assert sorted(p.name for p in files.iterdir()) == before


@pytest.mark.parametrize("variant", ["float_labels.npz", "bool2.npz"])
def test_integer_valued_labels_give_the_int_labels_result(files, variant, monkeypatch, tmp_path):
  monkeypatch.chdir(files)
  ref = "good.npz" if variant == "float_labels.npz" else "int2.npz"
  outs = []
  for target in (ref, variant):
    out = tmp_path / f"{target}.json"
    assert cli.main(["score", "--target", target, "--scores", "logme,hscore,ncc", "--no-ground-truth",
                     "--out", str(out)]) == 0
    import json
    outs.append(json.loads(out.read_text())["results"][0]["scores"])
  assert outs[0] == outs[1]


def _task(seed=0, n=40, d=4, k=2):
  z, y = syn.clustered(jax.random.PRNGKey(seed), n, d, k, separation=4.0)
  return make_task(z, y)


def test_bound_batch_bad_input():
  t = _task()
  with pytest.raises(TypeError, match=r"sources\[0\]: expected a ttjax Task .*make_task"):
    bound_batch(jax.random.PRNGKey(0), [(np.zeros((4, 2)), np.zeros(4, int))], [t])
  with pytest.raises(ValueError, match="no pairs"):
    bound_batch(jax.random.PRNGKey(0), [], [])
  wrong = dataclasses.replace(t, num_classes=5)  # labels 0..1 but K = 5: classes 2..4 empty
  with pytest.raises(ValueError, match=r"targets\[0\]\.labels: empty class"):
    bound_batch(jax.random.PRNGKey(0), [t], [wrong])
  with pytest.raises(ValueError, match="pair 0: source has d=4, target d=6"):
    bound_batch(jax.random.PRNGKey(0), [t], [_task(d=6)])


def test_api_bad_labels_and_features():
  z = np.random.default_rng(0).normal(size=(30, 3))
  y = np.arange(30) % 2
  with pytest.raises(ValueError, match="map the class names"):
    tta(z, y, z, np.array(["a", "b"] * 15), config=BoundConfig(steps=2))
  with pytest.raises(ValueError, match="at row 4"):
    tta(z, y, z, np.where(np.arange(30) == 4, np.nan, y), config=BoundConfig(steps=2))
  bad = z.copy()
  bad[2, 2] = np.nan
  with pytest.raises(ValueError, match="first at row 2"):
    scores.score("logme", bad, y)


@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1e4, 1e8])
def test_every_score_of_the_pipeline_is_invariant_to_a_global_rescaling(scale):
  """The command's score step standardises with relative floors, so a global rescaling changes no score."""
  z, y = syn.clustered(jax.random.PRNGKey(0), 120, 6, 3, separation=3.0)
  zs, ys = syn.clustered(jax.random.PRNGKey(1), 120, 6, 4, separation=3.0)
  z, y, zs, ys = (np.asarray(a) for a in (z, y, zs, ys))
  names = [n for n in scores.list_scores()]
  src = TaskData("src", "m", zs, ys, [str(i) for i in range(4)])
  base, err0 = steps.compute_scores(jax.random.PRNGKey(2), TaskData("t", "m", z, y, ["a", "b", "c"]), names, src)
  moved, err1 = steps.compute_scores(jax.random.PRNGKey(2), TaskData("t", "m", z * scale, y, ["a", "b", "c"]), names,
                                     TaskData("src", "m", zs * scale, ys, src.class_names))
  assert not err0 and not err1 and set(base) == set(names)
  for n in names:
    assert moved[n] == pytest.approx(base[n], rel=2e-3, abs=2e-3), n
