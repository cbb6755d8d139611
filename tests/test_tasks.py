import numpy as np
import pytest

from ttjax.tasks import make_task, standardize


def _data(n=20, d=3, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % k


@pytest.mark.parametrize("mutate, message", [
    (lambda z, y: (np.where(np.arange(z.size).reshape(z.shape) == 4, np.nan, z), y), "NaN"),
    (lambda z, y: (np.where(np.arange(z.size).reshape(z.shape) == 4, np.inf, z), y), "inf"),
    (lambda z, y: (z[0], y), "2-D"),
    (lambda z, y: (z, y[:-1]), "labels for"),
    (lambda z, y: (z, np.where(y == 1, -1, y)), "out of range"),
    (lambda z, y: (z, np.where(y == 1, 2, y)), "empty class"),
    (lambda z, y: (z, np.zeros_like(y)), "one-class"),
    (lambda z, y: (z, y + 0.5), "integers"),
])
def test_bad_input_names_the_problem(mutate, message):
  z, y = _data()
  z, y = mutate(z, y)
  with pytest.raises(ValueError, match=message):
    make_task(z, y, name="target")


def test_num_classes_checks_range_and_empty():
  z, y = _data(k=3)
  with pytest.raises(ValueError, match="out of range"):
    make_task(z, y, num_classes=2)
  with pytest.raises(ValueError, match="empty class"):
    make_task(z, y, num_classes=4)
  with pytest.raises(ValueError, match="dimension 3 does not match the expected 5"):
    make_task(z, y, dim=5)


def test_standardize_matches_numpy_and_keeps_constant_feature_finite():
  z, y = _data()
  z[:, 1] = 7.0
  out = np.asarray(standardize(z))
  ref = (z - z.mean(0)) / np.where(z.std(0) > 0, z.std(0), 1.0)
  ref[:, 1] = 0.0
  np.testing.assert_allclose(out, ref, atol=1e-5)
  task = make_task(z, y)
  assert task.num_classes == 3 and task.n == 20 and task.dim == 3
  np.testing.assert_allclose(np.asarray(task.prior), np.bincount(y) / 20)


@pytest.mark.parametrize("scale", [1e-8, 1e-3, 1e4, 1e8])
def test_standardize_is_invariant_to_a_global_rescaling(scale):
  z, _ = _data()
  z[:, 1] = 7.0  # constant at any scale: maps to 0
  base = np.asarray(standardize(z.astype(np.float32)))
  np.testing.assert_allclose(np.asarray(standardize((scale * z).astype(np.float32))), base, atol=2e-4)
  assert np.all(base[:, 1] == 0.0)
  # with a reference (a training split) as well
  np.testing.assert_allclose(np.asarray(standardize(scale * z[:5], reference=scale * z)),
                             np.asarray(standardize(z[:5], reference=z)), atol=2e-4)


def test_one_label_rule_everywhere():
  """Integer, bool and integral-float labels pass (as int64); fractional, NaN and string labels fail naming the row;
  the fine-tuning ground truth applies the same rule as the bound and the scores."""
  from ttjax.tasks import integer_labels
  assert integer_labels(np.array([0.0, 2.0, 1.0]), 3).tolist() == [0, 2, 1]
  assert integer_labels(np.array([True, False]), 2).dtype == np.int64
  with pytest.raises(ValueError, match="1.5 at row 2"):
    integer_labels(np.array([0.0, 1.0, 1.5]), 3)
  with pytest.raises(ValueError, match="at row 1"):
    integer_labels(np.array([0.0, np.nan]), 2)
  with pytest.raises(ValueError, match="map the class names"):
    integer_labels(np.array(["a", "b"]), 2)
  from ttjax import finetune as ft
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
  import jax
  run = lambda yt: ft.finetune_arrays(jax.random.PRNGKey(0), z, y, z, yt, steps=5, lrs=(1e-2,), wds=(0.0,))
  assert run(y.astype(float)).test_accuracy == run(y.astype(bool)).test_accuracy == run(y).test_accuracy
  with pytest.raises(ValueError, match="test labels: labels must be integers"):
    run(y + 0.5)
