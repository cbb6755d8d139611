"""Label-free task relatedness (ttjax.label_free): k-means and silhouette against numpy / scikit-learn, recovery of
a relabelled rotated copy's label map, closeness to the labelled bound, a noise target, determinism, bad input."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import ttjax
from ttjax import bound as bd
from ttjax import label_free as rl
from ttjax import synthetic as syn
from ttjax.tasks import standardize

K, D, N = 4, 8, 400
CFG = bd.BoundConfig(steps=150, batch_size=None, head_steps=100)
KEY = jax.random.PRNGKey(2)


def matching(pseudo, truth, k):
  """Hungarian match of cluster names to true labels: ``(match[cluster] = label, fraction agreeing)``."""
  counts = np.zeros((k, k))
  np.add.at(counts, (np.asarray(pseudo), np.asarray(truth)), 1)
  rows, cols = linear_sum_assignment(-counts)
  match = np.empty(k, int)
  match[rows] = cols
  return match, counts[rows, cols].sum() / len(truth)


@pytest.fixture(scope="module")
def pair():
  zs, ys = syn.clustered(jax.random.PRNGKey(0), N, D, K, separation=6.0)
  zt, yt, perm = syn.related_target(jax.random.PRNGKey(1), zs, ys, K, shift=1.0)  # relabelled, rotated, shifted
  return zs, ys, zt, yt, perm


@pytest.fixture(scope="module")
def runs(pair):
  zs, ys, zt, yt, _ = pair
  labelled = bd.tta(zs, ys, zt, yt, key=KEY, config=CFG)
  free = rl.relatedness(zs, ys, zt, num_target_classes=K, key=KEY, config=CFG)
  return labelled, free


def test_kmeans_is_lloyd_converged_and_as_good_as_sklearn():
  from sklearn.cluster import KMeans as SkKMeans
  x, _ = syn.clustered(jax.random.PRNGKey(7), 300, 5, 5, separation=4.0)
  km = rl.kmeans(jax.random.PRNGKey(0), jnp.asarray(x), 5)
  c, y = np.asarray(km.centers, np.float64), np.asarray(km.labels)
  d2 = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(y, d2.argmin(1))  # labels = nearest centre (numpy)
  np.testing.assert_allclose(float(km.inertia), d2.min(1).sum(), rtol=1e-4)  # inertia re-derived
  np.testing.assert_allclose(c, np.stack([x[y == k].mean(0) for k in range(5)]), atol=1e-4)  # a Lloyd fixed point
  sk = SkKMeans(5, n_init=8, random_state=0).fit(x)
  assert float(km.inertia) <= sk.inertia_ * 1.001
  # restarts pick the lowest inertia: never worse than a single seeding
  assert float(km.inertia) <= float(rl.kmeans(jax.random.PRNGKey(0), jnp.asarray(x), 5, restarts=1).inertia) + 1e-3


def test_silhouette_matches_sklearn():
  from sklearn.metrics import silhouette_score
  x, y = syn.clustered(jax.random.PRNGKey(8), 120, 4, 3, separation=2.0)
  y = y.copy()
  y[0] = 3  # a singleton cluster (s = 0 there, as in scikit-learn)
  np.testing.assert_allclose(float(rl.silhouette(jnp.asarray(x), jnp.asarray(y), 4)), silhouette_score(x, y),
                             atol=1e-4)


def test_silhouette_chooses_the_number_of_classes(pair):
  k, scores = rl.choose_num_classes(jax.random.PRNGKey(3), jnp.asarray(pair[2]), (3, 5))
  assert k == K and sorted(scores) == [3, 4, 5] and scores[4] == max(scores.values())


def test_label_map_recovered_up_to_cluster_names(pair, runs):
  _, _, zt, yt, _ = pair
  labelled, free = runs
  match, agree = matching(free.labels, yt, K)
  assert agree >= 0.98
  b = np.asarray(free.result.B)  # (K_t clusters, K_s)
  assert b.max(0).min() > 0.9  # a hard map
  # under a rotation the map is not unique (A_bar can re-route classes): the labelled analysis' map, renamed
  np.testing.assert_array_equal(match[b.argmax(0)], np.asarray(labelled.result.B).argmax(0))
  # h_T, its cluster names matched to the true labels, classifies the true target labels
  pred = rl.self_labels(free.analysis, standardize(jnp.asarray(zt)), CFG)
  assert np.mean(match[pred] == yt) >= 0.95


def test_true_relabelling_recovered_without_rotation(pair):
  zs, ys, _, _, _ = pair
  zt, yt, perm = syn.related_target(jax.random.PRNGKey(6), zs, ys, K, shift=1.0, rotate=False)
  free = rl.relatedness(zs, ys, zt, num_target_classes=K, key=KEY, config=CFG)
  match, _ = matching(free.labels, yt, K)
  np.testing.assert_array_equal(match[np.asarray(free.result.B).argmax(0)], perm)


def test_close_to_the_labelled_bound(runs):
  labelled, free = runs
  assert free.result.relatedness == pytest.approx(labelled.result.bound, abs=0.1)
  assert free.result.entropy == pytest.approx(labelled.result.entropy, abs=0.05)
  assert free.result.target_accuracy >= 0.95 and labelled.result.target_accuracy >= 0.95
  # certified for the pseudo-labels: the held-out loss of h_T against them is below the relatedness
  assert free.result.target_loss <= free.result.relatedness


def test_noise_target_scores_far_worse_and_batch_matches_single(pair, runs):
  zs, ys, zt, _, _ = pair
  _, free = runs
  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(9), zt.shape), np.float32)
  source = ttjax.make_task(zs, ys, name="source")
  z_rel = standardize(jnp.asarray(zt))
  out = rl.relatedness_batch(jnp.stack([KEY, jax.random.PRNGKey(4)]), source, [z_rel, standardize(noise)], CFG,
                             num_classes=K)
  assert out[1].result.relatedness > free.result.relatedness + 0.5
  assert out[0].result.relatedness == pytest.approx(free.result.relatedness, abs=1e-5)  # batch = single (same key)


def test_deterministic_with_a_key(pair, runs):
  zs, ys, zt, _, _ = pair
  again = rl.relatedness(zs, ys, zt, num_target_classes=K, key=KEY, config=CFG)
  np.testing.assert_array_equal(again.labels, runs[1].labels)
  assert again.result.relatedness == runs[1].result.relatedness
  y1, _, _ = rl.pseudo_labels(jax.random.PRNGKey(5), jnp.asarray(zt), K)
  y2, _, _ = rl.pseudo_labels(jax.random.PRNGKey(5), jnp.asarray(zt), K)
  np.testing.assert_array_equal(y1, y2)


def test_result_json_names_the_value_relatedness(runs):
  d = runs[1].result.to_dict()
  assert "bound" not in d and d["label_free"] is True and d["relatedness"] == runs[1].result.relatedness
  assert d["k_criterion"] == "given" and d["num_target_classes"] == K and "estimate" in str(runs[1].result)


def test_small_clusters_are_filled():
  x = np.array([[0.0], [0.1], [0.2], [0.3], [10.0]], np.float32)
  y = rl.fill_small_clusters(x, np.array([0, 0, 0, 0, 1]), np.array([[0.15], [10.0]]), 2, 2)
  assert np.bincount(y).min() >= 2 and y[4] == 1


@pytest.mark.parametrize("zt, k, match", [
    (np.ones((5, 8)) * np.arange(8), None, "constant"),
    (np.random.default_rng(0).normal(size=(7, 8)), 4, "fewer than"),
    (np.random.default_rng(0).normal(size=(50, 8)), 1, "K_t must be an integer >= 2"),
    (np.where(np.eye(50, 8) > 0, np.nan, 1.0) + np.random.default_rng(0).normal(size=(50, 8)), 3, "NaN"),
    (np.random.default_rng(0).normal(size=(50, 5)), 3, "dimension"),
])
def test_bad_input_fails_before_any_work(monkeypatch, zt, k, match):
  monkeypatch.setattr(rl, "kmeans", lambda *a, **kw: pytest.fail("clustered before validating"))
  zs, ys = syn.clustered(jax.random.PRNGKey(0), 40, 8, 2)
  with pytest.raises(ValueError, match=match):
    rl.relatedness(zs, ys, zt, num_target_classes=k, config=CFG)


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory, pair):
  zs, ys, zt, yt, _ = pair
  d = tmp_path_factory.mktemp("lf")
  np.savez(d / "src.npz", features=zs[:160], labels=ys[:160])
  np.savez(d / "tgt.npz", features=zt[160:], labels=yt[160:])
  np.savez(d / "feats.npz", features=zt[160:])  # no labels at all
  return d


def test_cli_bound_and_rank_label_free(npz_files, capsys):
  from ttjax import cli
  out = npz_files / "bound.json"
  assert cli.main(["bound", "--source", str(npz_files / "src.npz"), "--target", str(npz_files / "feats.npz"),
                   "--steps", "20", "--num-target-classes", "4", "--quiet", "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "label-free" in text and "relatedness" in text and "FT acc" not in text
  doc = json.loads(out.read_text())
  row = doc["results"][0]
  assert doc["label_free"] is True and "bound" not in row and row["num_target_classes"] == 4
  assert row["relatedness"] == pytest.approx(row["source_loss"] + row["entropy"] - row["merge_gain"]
                                            + row["wasserstein"])
  # a labelled target with --no-target-labels beside one without labels: ranked by relatedness only; the labelled
  # one's ground truth is computed for evaluation and says so
  out = npz_files / "rank.json"
  models = f"{npz_files / 'tgt.npz'},{npz_files / 'feats.npz'}"
  assert cli.main(["rank", "--models", models, "--source", str(npz_files / "src.npz"), "--steps", "20",
                   "--num-target-classes", "4", "--no-target-labels", "--finetune-steps", "20", "--quiet",
                   "--out", str(out)]) == 0
  text = capsys.readouterr().out
  assert "by relatedness only" in text and "label-free: 2 of 2" in text
  rows = json.loads(out.read_text())["results"]
  assert all(r["label_free"] and not r["scores"] for r in rows)
  assert "evaluation only" in rows[0]["ground_truth"]["note"] and "ground_truth" not in rows[1]
  # model 0 is bound's target with labels (ignored) and the same key: the same relatedness
  assert rows[0]["relatedness"] == row["relatedness"]
