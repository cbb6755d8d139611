"""Shared fixtures: the synthetic pair of the bound tests (a related target and a shuffled-label one)."""
import gc

import jax
import numpy as np
import pytest

from ttjax import synthetic as syn
from ttjax.tasks import make_task

K, D, N = 4, 8, 400  # classes, feature dimension, points per task (the test modules use the same)


@pytest.fixture(scope="module")
def tasks():
  """Source: K clustered classes in R^D; ``related``: the source relabelled, shifted and perturbed; ``random``:
  the same target points with permuted labels; ``perm``: the relabelling."""
  zs, ys = syn.clustered(jax.random.PRNGKey(0), N, D, K, separation=6.0)
  zt, yt, perm = syn.related_target(jax.random.PRNGKey(1), zs, ys, K, shift=1.0)
  y_rand = np.asarray(jax.random.permutation(jax.random.PRNGKey(5), yt))
  return dict(source=make_task(zs, ys, name="source"), related=make_task(zt, yt, name="target"),
              random=make_task(zt, y_rand, name="target"), perm=perm)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drop every compiled program after each test module.

  XLA:CPU maps each compiled executable's code into its own memory regions; one pytest process compiling the
  whole suite's programs passed Linux's default ``vm.max_map_count`` (65,530 regions) and LLVM crashed with a
  segmentation fault mid-compilation (seen in CI). Modules share no compiled programs worth keeping.
  """
  yield
  jax.clear_caches()
  gc.collect()
