"""Frozen pre-trained encoders as feature maps ``inputs -> (n, d)``, in JAX/Flax, fully offline.

The Hugging Face / ONNX / safetensors machinery stays inside this package, and those optional dependencies are
imported only when an encoder is built; the rest of ttjax calls ``extract(model, inputs)`` (alias ``features``) or
``dataset_features(model, dataset, split)`` (disk-cached).
"""

from ttjax.features.api import extract, features
from ttjax.features.cache import cached_extract, dataset_features, feature_path, load_features, save_features
from ttjax.features.encoder import Encoder, fingerprint
from ttjax.features.hf import load_hf_encoder
from ttjax.features.onnx import load_onnx_bert_encoder
from ttjax.features.static import load_static_encoder
from ttjax.features.zoo import ZOO, ZooEntry, fetch_assets, load_encoder, model_key, zoo_entry, zoo_names

__all__ = [
  "extract", "features", "Encoder", "fingerprint", "load_encoder", "ZOO", "ZooEntry", "zoo_names", "zoo_entry",
  "fetch_assets", "cached_extract", "dataset_features", "feature_path", "load_features", "save_features",
  "model_key", "load_hf_encoder", "load_onnx_bert_encoder", "load_static_encoder",
]

