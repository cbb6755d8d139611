"""ttjax.scores: registry and uniform API, sanity orderings, invariances, edge cases, errors, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ttjax.scores as S
from score_tasks import make_task

N, D, K = 60, 8, 3

LABEL_SCORES = ["hscore", "regularized_hscore", "logme", "transrate", "gbc", "parc", "sfda", "ncc", "knn",
                "disco", "nleep"]
ALL_SCORES = LABEL_SCORES + ["leep", "nce", "otce"]




Z, Y = make_task(10, 3.0)
ZS, YS = make_task(11, 3.0)  # an OTCE source task


def probs_for(y, seed=5, ks=5, strength=3.0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(K, ks))[y] * strength + rng.normal(size=(len(y), ks))
  p = np.exp(logits - logits.max(1, keepdims=True))
  return (p / p.sum(1, keepdims=True)).astype(np.float32)


P = probs_for(Y)


def run(name, z, y, **kw):
  extra = {}
  probs = kw.pop("probs", P)
  if name in ("leep", "nce"):
    extra["source_probs"] = probs
  if name == "otce":
    zs, ys = (ZS, YS) if np.shape(z)[1] == D else make_task(12, 3.0, n=15, d=np.shape(z)[1])
    extra.update(source_features=zs, source_labels=ys)
  return S.score(name, z, y, **extra, **kw)


# --------------------------------------------------------------------------------------------------- registry


def test_list_scores_has_every_score():
  assert set(ALL_SCORES) <= set(S.list_scores())


def test_unknown_score_lists_known_names():
  with pytest.raises(ValueError, match="unknown score 'nope'.*logme"):
    S.score("nope", Z, Y)


@pytest.mark.parametrize("name,missing", [("leep", "source_probs"), ("nce", "source_probs"),
                                          ("otce", "source_features")])
def test_missing_source_inputs_raise(name, missing):
  with pytest.raises(ValueError, match=missing):
    S.score(name, Z, Y)


@pytest.mark.parametrize("name", ["leep", "nce"])
def test_missing_source_classifier_says_how_to_get_one(name):
  with pytest.raises(ValueError, match=r"pre-trained source classifier.*ttjax\.app\.steps\.source_probs"):
    S.score(name, Z, Y)


def test_name_lookup_is_forgiving_and_score_returns_float():
  v = S.score("N-LEEP", Z, Y, key=jax.random.key(1))
  assert isinstance(v, float)
  assert v == pytest.approx(float(S.nleep(Z, Y, key=jax.random.key(1))), rel=1e-6)
  assert S.score("LogME", Z, Y) == pytest.approx(float(S.logme(Z, Y)), rel=1e-6)
  assert S.score("leep", None, Y, source_probs=P) == pytest.approx(float(S.leep(P, Y)), rel=1e-6)


def test_register_custom_score():
  fn = lambda features, labels, source_probs, scale=1.0: scale * float(np.mean(source_probs.max(1)))
  S.register_score("my_conf", fn, requires="source_probs")
  try:
    assert "my_conf" in S.list_scores()
    assert S.score("my-conf", Z, Y, source_probs=P, scale=2.0) == pytest.approx(2 * P.max(1).mean(), rel=1e-6)
    with pytest.raises(ValueError, match="source_probs"):
      S.score("my_conf", Z, Y)
    with pytest.raises(ValueError, match="already registered"):
      S.register_score("MY_CONF", fn)
    S.register_score("my_conf", lambda f, l: 1.0, overwrite=True)
    assert S.score("my_conf", Z, Y) == 1.0
    with pytest.raises(ValueError, match="unknown required input"):
      S.register_score("bad", fn, requires=("labels_of_the_moon",))
  finally:
    S._REGISTRY.pop("myconf", None)


# --------------------------------------------------------------------------------------- orderings / invariances


@pytest.mark.parametrize("name", ALL_SCORES)
def test_separable_beats_shuffled_labels(name):
  y_shuffled = np.random.default_rng(0).permutation(Y)
  assert run(name, Z, Y) > run(name, Z, y_shuffled, probs=P)


@pytest.mark.parametrize("name", ALL_SCORES)
def test_invariant_to_relabelling(name):
  perm = np.array([2, 0, 1])
  assert run(name, Z, perm[Y]) == pytest.approx(run(name, Z, Y), rel=2e-5, abs=1e-6)


@pytest.mark.parametrize("c", [0.25, 4.0])
def test_logme_invariant_to_feature_scale(c):
  # p(y | F) = N(0, F F^T / alpha + I / beta): F -> cF is absorbed by alpha -> c^2 alpha, so the maximised
  # evidence is unchanged (up to the 1e-5 guard of the reference algorithm, negligible at these scales).
  assert float(S.logme(c * Z, Y)) == pytest.approx(float(S.logme(Z, Y)), rel=1e-4)


def test_scores_ranges():
  assert 0.0 <= run("ncc", Z, Y) <= 1.0 and 0.0 <= run("knn", Z, Y) <= 1.0
  assert 0.0 < run("sfda", Z, Y) <= 1.0 and 0.0 <= run("disco", Z, Y) <= 1.0
  assert -100.0 <= run("parc", Z, Y) <= 100.0  # 100 rho, the reference code's scale
  assert 0.0 <= run("hscore", Z, Y) <= K - 1 + 1e-4
  assert run("gbc", Z, Y) <= 0.0 and run("leep", Z, Y) <= 0.0 and run("nce", Z, Y) <= 0.0


# ------------------------------------------------------------------------------------------------ edge cases


def _edge_tasks():
  rng = np.random.default_rng(4)
  small_n = (rng.normal(size=(12, 20)).astype(np.float32), np.arange(12) % 3)
  dup = Z.copy()
  dup[1::2] = dup[::2]  # every point twice
  y_dup = Y.copy()
  y_dup[1::2] = y_dup[::2]
  const = Z.copy()
  const[:, 3] = 7.0
  single = np.concatenate([np.zeros(30, int), np.ones(29, int), [2]])  # class 2 has one sample
  return {"n<d": small_n, "duplicates": (dup, y_dup), "constant_feature": (const, Y), "singleton_class": (Z, single)}


EDGE = _edge_tasks()


@pytest.mark.parametrize("case", list(EDGE))
@pytest.mark.parametrize("name", ALL_SCORES)
def test_edge_cases_are_finite(name, case):
  z, y = EDGE[case]
  probs = probs_for(y)
  assert np.isfinite(run(name, z, y, probs=probs))


@pytest.mark.parametrize("name", ALL_SCORES)
def test_bad_inputs_raise(name):
  bad = Z.copy()
  bad[4, 2] = np.nan
  if name in ("leep", "nce"):
    bad_p = P.copy()
    bad_p[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
      run(name, Z, Y, probs=bad_p)
    with pytest.raises(ValueError, match="sum to 1"):
      run(name, Z, Y, probs=P * 2.0)
  else:
    with pytest.raises(ValueError, match="non-finite"):
      run(name, bad, Y)
  with pytest.raises(ValueError, match="empty class"):
    run(name, Z, Y, num_classes=4)
  with pytest.raises(ValueError, match="one-class"):
    run(name, Z, np.zeros(N, int), probs=P)
  with pytest.raises(ValueError, match="labels"):
    run(name, Z, Y[:-1], probs=P)


def test_specific_errors():
  with pytest.raises(ValueError, match="k must be"):
    S.knn(Z, Y, k=N)
  with pytest.raises(ValueError, match="same feature space"):
    S.otce(Z, Y, source_features=ZS[:, :4], source_labels=YS)
  with pytest.raises(ValueError, match="num_classes"):
    jax.jit(S.logme)(Z, Y)


# ----------------------------------------------------------------------------------------------- jit / vmap

BATCH = [make_task(s, sep) for s, sep in [(20, 0.0), (21, 1.0), (22, 3.0)]]
ZB = jnp.stack([b[0] for b in BATCH])
YB = jnp.stack([b[1] for b in BATCH])


@pytest.mark.parametrize("name,kw", [("hscore", {}), ("regularized_hscore", {}), ("logme", {}), ("ncc", {}),
                                     ("gbc", {}), ("sfda", {}), ("transrate", {"max_class_size": 20}),
                                     ("disco", {}), ("nleep", {"pca_dim": 4})])
def test_vmap_over_tasks_matches_loop(name, kw):
  fn = getattr(S, name)
  batched = jax.vmap(lambda z, y: fn(z, y, num_classes=K, **kw))(ZB, YB)
  singles = [float(fn(z, y, **kw)) for z, y in BATCH]
  np.testing.assert_allclose(np.asarray(batched), singles, rtol=1e-5, atol=1e-6)


def test_jit_of_public_functions():
  got = jax.jit(lambda z, y: S.logme(z, y, num_classes=K) + S.leep(probs_for(Y), y, num_classes=K))(Z, Y)
  assert float(got) == pytest.approx(float(S.logme(Z, Y)) + float(S.leep(probs_for(Y), Y)), rel=1e-5)


def test_vmap_source_scores():
  pb = jnp.stack([probs_for(np.asarray(yb)) for yb in YB])
  for fn in (S.leep, S.nce):
    batched = jax.vmap(lambda p, y: fn(p, y, num_classes=K))(pb, YB)
    singles = [float(fn(np.asarray(p), np.asarray(y))) for p, y in zip(pb, YB)]
    np.testing.assert_allclose(np.asarray(batched), singles, rtol=1e-5, atol=1e-6)
