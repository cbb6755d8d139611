"""The steps of the CLI's analyses on resolved tasks (:class:`ttjax.app.resolve.TaskData`), as plain functions.

* :func:`ground_truth`: last-layer fine-tuning (:func:`ttjax.finetune.finetune_arrays`: vmapped lr x wd sweep,
  early stopping on a validation part of train) -> test accuracy and loss: the actual transfer;
* :func:`source_probs`: a linear head trained on the source features, applied to the target (for LEEP / NCE);
* :func:`model_source_probs`: the encoder's own pre-trained classifier on the target (EfficientNet-Lite's ImageNet
  head), which LEEP / NCE use instead when the model has one;
* :func:`compute_scores`: every requested transferability score (higher = more transferable);
* :func:`bound_row`: the TTA bound (:func:`ttjax.bound.tta`) as a JSON-ready dict;
* :func:`relatedness_row`: the label-free relatedness (:func:`ttjax.relatedness.relatedness`: the target's labels
  unused) as a JSON-ready dict.

Every function returns plain dicts of floats / ints / strings (JSON-ready).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ttjax.app.resolve import TaskData, TaskError
from ttjax.bound import tta
from ttjax.data import train_test_split
from ttjax.features.zoo import source_head
from ttjax.finetune import finetune_arrays
from ttjax.head import fit_head, logits
from ttjax.label_free import relatedness
from ttjax.scores import get_score, list_scores, score
from ttjax.tasks import check_not_constant, standardize

__all__ = ["ground_truth", "source_probs", "model_source_probs", "compute_scores", "bound_row", "score_names",
           "SOURCE_SCORES", "shuffled", "relatedness_row"]

SOURCE_SCORES = ("leep", "nce", "otce")  # need a source task


def shuffled(task: TaskData, seed: int) -> TaskData:
  """The same features with labels permuted (train and test independently): a task with nothing to learn."""
  rng = np.random.default_rng(seed)
  yt = None if task.test_labels is None else rng.permutation(task.test_labels)
  return task.with_labels(rng.permutation(task.labels), yt, name=f"{task.name} (shuffled labels)")


def ground_truth(key: jax.Array, task: TaskData, *, steps: int = 300, test_fraction: float = 0.2) -> dict:
  """Fine-tune a linear head on the task's train split, evaluate on its test split (actual transfer).

  Without a test split, a class-stratified ``test_fraction`` of the task is held out (drawn with ``key``).
  Returns ``accuracy`` and ``loss`` (test), ``train_accuracy``, the selected ``lr``/``wd``, ``best_step``, sizes
  and ``seconds``.
  """
  start = time.perf_counter()
  k_split, k_ft = jax.random.split(key)
  z, y = np.asarray(task.features), np.asarray(task.labels)
  if task.test_features is not None:
    ztr, ytr, zte, yte = z, y, np.asarray(task.test_features), np.asarray(task.test_labels)
    held = "test split"
  else:
    tr, te = train_test_split(k_split, y, test_fraction)
    ztr, ytr, zte, yte = z[tr], y[tr], z[te], y[te]
    held = f"{test_fraction:.0%} of the task held out"
  if zte.shape[1] != ztr.shape[1]:
    raise TaskError(f"{task.name}: test features have dimension {zte.shape[1]}, train {ztr.shape[1]}")
  try:
    r = finetune_arrays(k_ft, ztr, ytr, zte, yte, num_classes=int(ytr.max()) + 1, steps=steps)
  except ValueError as e:
    raise TaskError(f"ground truth on {task.name}: {e}") from None
  return dict(accuracy=r.test_accuracy, loss=r.test_loss, train_accuracy=r.train_accuracy, val_loss=r.val_loss,
              lr=r.lr, wd=r.wd, best_step=r.best_step, n_train=int(ztr.shape[0]), n_test=int(zte.shape[0]),
              held_out=held, seconds=time.perf_counter() - start)


def source_probs(key: jax.Array, source: TaskData, target_features: np.ndarray, *, steps: int = 300) -> np.ndarray:
  """``(n_t, K_s)`` class probabilities of a linear source head on the target features.

  The head is trained on the standardised source features (cross-entropy, Adam, no Lipschitz penalty); the target
  features are standardised with their own statistics, the same convention as the bound's tasks.
  """
  zs = standardize(jnp.asarray(source.features, jnp.float32))
  head = fit_head(key, zs, jnp.asarray(source.labels, np.int32), source.num_classes, penalty=0.0, steps=steps)
  zt = standardize(jnp.asarray(target_features, jnp.float32))
  return np.asarray(jax.nn.softmax(logits(head, zt), axis=-1), np.float64)


def model_source_probs(task: TaskData) -> Optional[np.ndarray]:
  """``(n, K)`` float64 class probabilities of the task's encoder's own pre-trained classifier on its train split:
  ``softmax(z W + b)`` with the zoo's :func:`ttjax.features.zoo.source_head` (EfficientNet-Lite: the ImageNet-1k
  head on the pooled features, K = 1000 -- exactly the network's logits). ``None`` when the model has no such
  head (text encoders, checkpoint folders) or the task's features are not the model's own (a feature file)."""
  if "dataset" not in task.meta:
    return None
  head = source_head(task.model)
  if head is None or head[0].shape[0] != task.dim:
    return None
  logits = np.asarray(task.features, np.float64) @ head[0] + head[1]
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def score_names(requested: str, have_source: bool, have_probs: bool = False) -> tuple[list[str], dict]:
  """Expand ``"all"`` or ``"name,name"`` into registered names; ``(names, {skipped name: reason})``.

  Without a source, the scores that need one are skipped, except those that need only ``source_probs`` when
  ``have_probs`` (the models carry their own classifier: :func:`model_source_probs`)."""
  if requested.strip().lower() == "all":
    names = list_scores()
  else:
    names = []
    for n in [v.strip() for v in requested.split(",") if v.strip()]:
      try:
        names.append(get_score(n).name)
      except ValueError as e:
        raise TaskError(str(e)) from None
  skipped = {}
  if not have_source:
    for n in list(names):
      if get_score(n).requires and not (have_probs and set(get_score(n).requires) == {"source_probs"}):
        skipped[n] = "needs --source"
        names.remove(n)
  if not names:
    raise TaskError(f"--scores {requested!r} names no score: give 'all' or comma-separated names "
                    f"({', '.join(list_scores())})")
  return names, skipped


def compute_scores(key: jax.Array, target: TaskData, names: Sequence[str], source: Optional[TaskData] = None,
                   probs: Optional[np.ndarray] = None) -> tuple[dict, dict]:
  """``({score: value}, {score: error})`` of ``target`` (its train split); higher = more transferable.

  Source-based scores use ``source``: LEEP / NCE the probabilities of a head trained on it (``probs``, computed
  here when not given; a model's own classifier, :func:`model_source_probs`, is passed as ``probs`` and needs no
  source), OTCE its features and labels. A score that fails (e.g. too few samples per class for its estimator) or
  lacks its inputs is reported in the second dict, not raised.
  """
  try:
    check_not_constant(target.features, name=f"{target.name}: features")
  except ValueError as e:
    raise TaskError(str(e)) from None
  z, y = standardize(jnp.asarray(target.features, jnp.float32)), np.asarray(target.labels)
  values, errors = {}, {}
  extra = {} if probs is None else {"source_probs": probs}
  if source is not None:
    if any("source_probs" in get_score(n).requires for n in names) and probs is None:
      probs = source_probs(key, source, target.features)
    extra = dict(source_probs=probs, source_features=standardize(jnp.asarray(source.features, jnp.float32)),
                 source_labels=np.asarray(source.labels))
  for name in names:
    spec = get_score(name)
    if any(r not in extra for r in spec.requires):
      errors[name] = "needs --source"
      continue
    try:
      v = score(name, z, y, key=key if spec.uses_key else None, **{r: extra[r] for r in spec.requires})
    except (ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
      errors[name] = str(e).splitlines()[0]
      continue
    if np.isfinite(v):
      values[name] = float(v)
    else:
      errors[name] = f"not finite ({v})"
  return values, errors


def _test_split(task: TaskData) -> Optional[tuple]:
  return None if task.test_features is None else (task.test_features, task.test_labels)


def bound_row(key: jax.Array, source: TaskData, target: TaskData, config) -> dict:
  """The TTA bound from ``source`` to ``target`` as a dict (``BoundResult.to_dict()``).

  The head and the transforms are learned on the train splits; the bound, its terms and the loss of ``h_T`` are
  evaluated on each task's test split when it has one (for the target the same split as the fine-tuned ground
  truth), else on ``config.holdout`` of its train split (``split_source`` / ``split_target`` say which). The two
  feature dimensions must agree (:func:`ttjax.app.resolve.check_same_encoder`, checked when the pair is resolved;
  the core checks again).
  """
  try:
    analysis = tta(source.features, source.labels, target.features, target.labels, key=key, config=config,
                   source_test=_test_split(source), target_test=_test_split(target))
  except (ValueError, FloatingPointError) as e:
    raise TaskError(str(e)) from None
  where = lambda t: "test split" if t.test_features is not None else (
      f"{config.holdout:.0%} of train held out" if config.holdout > 0 else "train (in-sample)")
  return dict(analysis.result.to_dict(), split_source=where(source), split_target=where(target))


def relatedness_row(key: jax.Array, source: TaskData, target: TaskData, config,
                    num_classes: Optional[int] = None) -> dict:
  """The label-free relatedness from ``source`` to ``target``'s train features as a dict
  (``RelatednessResult.to_dict()``: ``relatedness``, its terms, ``label_free: True``).

  The target's labels, if it has any, are not read: its train features are clustered into ``num_classes``
  pseudo-classes (``None``: chosen by the silhouette) and the analysis learns on one half of each task's train split
  and evaluates on the other (``config.holdout``); the source's test split is not used.
  """
  try:
    analysis = relatedness(source.features, source.labels, target.features, num_target_classes=num_classes, key=key,
                           config=config)
  except (ValueError, FloatingPointError) as e:
    raise TaskError(str(e)) from None
  where = f"{config.holdout:.0%} of train held out" if config.holdout > 0 else "train (in-sample)"
  return dict(analysis.result.to_dict(), split_source=where, split_target=where + " (pseudo-labels)")
