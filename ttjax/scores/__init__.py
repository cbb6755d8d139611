"""Transferability scores: how well do frozen features ``Z (n, d)`` (or a source classifier) suit a labelled task.

Every score follows the sign convention **higher is better** (more transferable), is computed by a pure jitted
kernel after host-side validation, and can be called directly (``ttjax.scores.logme(Z, y)``) or by name::

  ttjax.scores.score("logme", Z, y)
  ttjax.scores.score("leep", None, y, source_probs=P)
  ttjax.scores.score("otce", Z, y, source_features=Zs, source_labels=ys)

Label-based (features + labels): ``hscore``, ``regularized_hscore``, ``logme``, ``transrate``, ``gbc``, ``parc``,
``sfda``, ``ncc``, ``knn``, ``disco``, ``nleep`` (uses a PRNG ``key``; its "source" is a Gaussian mixture fitted to
the target features, so it needs no source model). Source-based: ``leep``, ``nce`` (need ``source_probs``, a
pre-trained source classifier's probabilities on the target inputs: a real classifier head, or a linear head
trained on a labelled source task by ``ttjax.app.steps.source_probs``), ``otce`` (needs ``source_features`` and
``source_labels``). Calling these through :func:`score` without them raises a ``ValueError`` that says so.

Each score's docstring names the reference implementation it follows (repository, file, function) and any
``reference=True``-style variant.

jit / vmap: the plain functions skip validation when given tracers, so
``jax.vmap(lambda z, y: logme(z, y, num_classes=K))(Zs, ys)`` scores a batch of same-shape tasks. Static
arguments that are otherwise computed on the host must then be passed: ``num_classes`` always,
``max_class_size`` for ``transrate`` (default ``n``), ``pca_dim`` for ``nleep``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from ttjax.scores.disco import disco
from ttjax.scores.gbc import gbc
from ttjax.scores.hscore import hscore, regularized_hscore
from ttjax.scores.logme import logme
from ttjax.scores.neighbours import knn, ncc
from ttjax.scores.otce import otce, otce_terms
from ttjax.scores.parc import parc
from ttjax.scores.sfda import sfda
from ttjax.scores.source import leep, nce, nleep
from ttjax.scores.transrate import transrate

__all__ = [
    "score", "list_scores", "register_score", "get_score", "ScoreSpec", "INPUTS",
    "hscore", "regularized_hscore", "logme", "transrate", "gbc", "parc", "sfda", "ncc", "knn", "disco", "otce",
    "otce_terms", "leep", "nce", "nleep",
]

INPUTS = ("source_probs", "source_features", "source_labels")

# What each source input is and where to get it, for the error raised when a score needs it.
_HOW_TO_GET = {
    "source_probs": ("the (n, K_s) softmax outputs of a pre-trained source classifier on the target inputs: "
                     "apply a real classifier head (the model's own), or train a linear head on a labelled source "
                     "task with ttjax.app.steps.source_probs(key, source_task, target_features)"),
    "source_features": "(m, d) features of a labelled source task, in the same feature space as the target",
    "source_labels": "(m,) integer labels of those source samples",
}


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
  """A registered score: ``fn(features, labels, **required_inputs, **kwargs) -> scalar``.

  Attributes:
    name: the name it was registered under.
    fn: the callable.
    requires: which of :data:`INPUTS` must be given (not None).
    uses_key: whether ``fn`` takes a ``key=`` PRNG key (passed through, possibly None).
  """

  name: str
  fn: Callable
  requires: tuple[str, ...] = ()
  uses_key: bool = False


_REGISTRY: dict[str, ScoreSpec] = {}


def _canon(name: str) -> str:
  return "".join(ch for ch in str(name).lower() if ch not in "-_ ")


def register_score(name: str, fn: Callable, *, requires=(), uses_key: bool = False,
                   overwrite: bool = False) -> ScoreSpec:
  """Add a score to the registry so that :func:`score` can call it by ``name``.

  Args:
    name: lookup is case-insensitive and ignores ``-``, ``_`` and spaces (``"N-LEEP"`` finds ``"nleep"``).
    fn: called as ``fn(features, labels, **{r: value for r in requires}, [key=key,] **kwargs)`` and must return
      a scalar where higher means more transferable.
    requires: names from :data:`INPUTS` that must be provided.
    uses_key: pass the ``key`` argument of :func:`score` on to ``fn``.
    overwrite: allow replacing an existing entry.
  """
  requires = (requires,) if isinstance(requires, str) else tuple(requires)
  unknown = [r for r in requires if r not in INPUTS]
  if unknown:
    raise ValueError(f"register_score({name!r}): unknown required input(s) {unknown}; choose from {INPUTS}")
  if not callable(fn):
    raise ValueError(f"register_score({name!r}): fn must be callable")
  key = _canon(name)
  if not key:
    raise ValueError("register_score: empty name")
  if key in _REGISTRY and not overwrite:
    raise ValueError(f"score {name!r} is already registered (as {_REGISTRY[key].name!r}); pass overwrite=True")
  spec = ScoreSpec(name=str(name), fn=fn, requires=requires, uses_key=bool(uses_key))
  _REGISTRY[key] = spec
  return spec


def list_scores() -> list[str]:
  """Names of all registered scores, sorted."""
  return sorted(spec.name for spec in _REGISTRY.values())


def get_score(name: str) -> ScoreSpec:
  """The :class:`ScoreSpec` registered under ``name``; ``ValueError`` listing the known names otherwise."""
  spec = _REGISTRY.get(_canon(name))
  if spec is None:
    raise ValueError(f"unknown score {name!r}; known scores: {', '.join(list_scores())}")
  return spec


def score(name: str, features, labels, *, source_probs=None, source_features=None, source_labels=None,
          key=None, **kwargs) -> float:
  """Compute the registered score ``name`` and return it as a Python float (higher is better).

  Args:
    name: a name from :func:`list_scores`.
    features: ``(n, d)`` target features (may be None for scores that only use ``source_probs``).
    labels: ``(n,)`` integer target labels.
    source_probs: ``(n, K_s)`` source-classifier probabilities on the target inputs (LEEP, NCE).
    source_features, source_labels: source-task samples in the same feature space (OTCE).
    key: PRNG key for stochastic scores (N-LEEP); None means a fixed default key.
    **kwargs: passed to the score function (e.g. ``k=`` for kNN, ``pca_dim=``).
  Raises:
    ValueError: unknown name, or a required input missing.
  """
  spec = get_score(name)
  given = dict(source_probs=source_probs, source_features=source_features, source_labels=source_labels)
  missing = [r for r in spec.requires if given[r] is None]
  if missing:
    how = "; ".join(f"{m}: {_HOW_TO_GET[m]}" for m in missing)
    raise ValueError(f"score {spec.name!r} needs {', '.join(missing)}; pass "
                     f"{', '.join(f'{m}=...' for m in missing)} ({how})")
  extra = {r: given[r] for r in spec.requires}
  if spec.uses_key:
    extra["key"] = key
  return float(spec.fn(features, labels, **extra, **kwargs))


for _name, _fn in [("hscore", hscore), ("regularized_hscore", regularized_hscore), ("logme", logme),
                   ("transrate", transrate), ("gbc", gbc), ("parc", parc), ("sfda", sfda), ("ncc", ncc),
                   ("knn", knn), ("disco", disco)]:
  register_score(_name, _fn)
register_score("nleep", nleep, uses_key=True)
register_score("leep", lambda features, labels, source_probs, **kw: leep(source_probs, labels, **kw),
               requires=("source_probs",))
register_score("nce", lambda features, labels, source_probs, **kw: nce(source_probs, labels, **kw),
               requires=("source_probs",))
register_score("otce", lambda features, labels, source_features, source_labels, **kw: otce(
    features, labels, source_features=source_features, source_labels=source_labels, **kw),
               requires=("source_features", "source_labels"))
del _name, _fn
