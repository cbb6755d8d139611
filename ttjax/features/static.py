"""Static token-embedding encoders (WordLlama): a lookup table and a masked mean, in JAX.

WordLlama (``wordllama==0.4.0.post1``) ships a ``(32000, 256)`` float16 table in safetensors and a Llama-2 tokenizer
json. We read both straight from the files (the package's own ``WordLlama.load()`` would try to download a
tokenizer): tokens without special tokens, mean of their embeddings, like ``WordLlamaInference.embed``, except that
inputs are truncated to a static ``max_length`` (WordLlama itself does not truncate).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.features.encoder import Encoder, feature_options, fingerprint, masked_mean, pad_rows, resolve_dtype

__all__ = ["load_static_encoder"]


def load_static_encoder(weights: Union[str, os.PathLike], tokenizer_json: Union[str, os.PathLike], *,
                        name: Optional[str] = None, key: Optional[str] = None, max_length: int = 512,
                        batch_size: int = 64, normalize: bool = False, add_special_tokens: bool = False,
                        dtype="float32", device: Optional[jax.Device] = None) -> Encoder:
  """Encoder ``texts -> mean of token embeddings (n, d)`` from a safetensors table and a ``tokenizers`` json.

  Args:
    weights: safetensors file with one ``(vocab, d)`` table (``key`` selects it when there are several).
    tokenizer_json: a ``tokenizers`` library json file (``Tokenizer.from_file``).
    max_length: tokens kept per text (static shape).
  """
  # optional dependencies (ttjax[hf]), imported when a static encoder is built
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  tables = load_file(str(weights))
  if key is None:
    if len(tables) != 1:
      raise ValueError(f"{weights} holds {sorted(tables)}; pass key=")
    key = next(iter(tables))
  dt = resolve_dtype(dtype)
  table = np.asarray(tables[key], np.float32)
  vocab, dim = table.shape
  tok = Tokenizer.from_file(str(tokenizer_json))
  tok.no_padding()
  tok.enable_truncation(max_length)

  def prepare(texts: Sequence[str]) -> dict:
    encs = tok.encode_batch([str(t) for t in texts], add_special_tokens=add_special_tokens)
    ids = np.zeros((len(encs), max_length), np.int32)
    mask = np.zeros((len(encs), max_length), np.int32)
    for i, e in enumerate(encs):
      k = min(len(e.ids), max_length)
      ids[i, :k] = np.clip(e.ids[:k], 0, vocab - 1)
      mask[i, :k] = 1
    return {"input_ids": pad_rows(ids, batch_size), "attention_mask": pad_rows(mask, batch_size)}

  def apply(emb, batch):
    z = masked_mean(jnp.take(emb, batch["input_ids"], axis=0), batch["attention_mask"])
    if normalize:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return z

  path = Path(weights)
  meta = {"pooling": "mean", "normalize": normalize, "max_length": max_length, "dtype": str(dt),
          "batch_size": batch_size, "add_special_tokens": add_special_tokens}
  cid = {"weights": [path.name, path.stat().st_size, key, [int(vocab), int(dim)]],
         "tokenizer": [Path(tokenizer_json).name, Path(tokenizer_json).stat().st_size]}
  return Encoder(name=name or path.stem, modality="text", dim=int(dim), apply=jax.jit(apply),
                 params=jax.device_put(jnp.asarray(table, dt), device or jax.devices()[0]), prepare=prepare,
                 batch_size=batch_size, fingerprint=fingerprint("static", cid, feature_options(meta)), meta=meta)
