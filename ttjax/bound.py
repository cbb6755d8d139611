"""The Task Transfer Analysis bound: objective = sum of terms, Optax optimisation in one ``lax.scan``, evaluation.

For the transformed classifier ``h_T(z) = B softmax(h_S(A_bar (z - b)))`` (Mehra, Zhang & Hamm, NeurIPS 2024)

    R_T(h_T)  <=  sum_s D_s Lbar_s(h_S)  +  H(B | D)  +  tau_hat * W(T', T)          (the *bound*)

with ``T'`` the source pushed through ``(D, B, A, b)``. The transforms are learned by minimising

    objective = weighted source loss + H + lambda_W W_eps + lambda_PM ||p_T - B D||^2
                + lambda_IC (||A A_bar - I||^2 + ||A_bar A - I||^2)

(:func:`objective`; the tuple of :class:`Term` in :func:`default_terms` is the sum, term by term), with Adam per
parameter group (``optax.multi_transform``) on class-stratified minibatches drawn inside the jitted loop.
:func:`evaluate` then reports the bound on the full data with a *certified* ``W`` (rounded Sinkhorn plan: a
feasible coupling, so the reported ``W`` upper-bounds the exact one) and a *measured* ``tau_hat``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ttjax import finetune as ft
from ttjax import head as hd
from ttjax import logit_bound as lb
from ttjax import ot
from ttjax import solvers
from ttjax import terms as tm
from ttjax import transforms as tf
from ttjax.sampling import Batch, TaskPair, full_batch, make_pair, sample_batch
from ttjax.tasks import Task, make_task, standardize

__all__ = [
    "Term", "BoundConfig", "BoundData", "BoundResult", "Analysis", "default_terms", "objective", "objective_terms",
    "fit", "fit_resolved", "batch_drawer",
    "evaluate", "prepare", "initial_label_map", "analyse", "tta", "feature_gradients", "default_label_cost", "default_tau",
    "tta_bound", "assemble_result", "split_sizes", "certified_w", "split_w", "class_solver", "evaluate_terms", "feature_terms", "source_head", "holdout_split",
    "optimizer", "per_class", "STATIC_FIELDS", "TRACED_FIELDS", "split_pair", "fit_data", "logit_result",
]


@dataclasses.dataclass(frozen=True)
class Term:
  """One summand of the objective: ``weight * fn(params, batch, head)``.

  ``fn`` carries its own hyper-parameters (it is built by a constructor, optax-style, e.g.
  ``ttjax.logit_bound.wasserstein(epsilon=0.05, num_iters=10)``); ``weight`` is a number. A term is a pytree
  whose only leaf is ``weight`` (``name`` and ``fn`` are static), so a sweep over weights does not recompile.
  """

  name: str
  fn: Callable[..., jax.Array]
  weight: Any = 1.0

  def __call__(self, params, batch, head) -> jax.Array:
    return self.fn(params, batch, head)


jax.tree_util.register_pytree_node(
    Term, lambda t: ((t.weight,), (t.name, t.fn)), lambda aux, children: Term(aux[0], aux[1], children[0]))


def default_terms(config: "BoundConfig") -> tuple[Term, ...]:
  """The objective of ``config.space``, term by term, each built from ``config``'s hyper-parameters (which may be
  traced: inside :func:`fit` they are). Logit space (:mod:`ttjax.logit_bound`): weighted source loss + H + W_eps
  + lambda_map ||A_bar - I||^2; feature space (the paper): weighted source loss + H + lambda_W W_eps +
  lambda_PM ||p_T - B D||^2 + lambda_IC (invertibility). ``config`` must be resolved (:meth:`BoundConfig.resolved`).
  """
  if config.space == "logit":
    return (Term("source_loss", lb.weighted_source_loss),
            Term("entropy", lb.conditional_entropy),
            Term("wasserstein", lb.wasserstein(epsilon=config.epsilon, num_iters=config.sinkhorn_iters,
                                               lse_mode=config.sinkhorn_lse_mode,
                                               transport_classes=config.transport_classes)),
            Term("map_penalty", lb.map_penalty, config.lambda_map))
  return (Term("source_loss", tm.weighted_source_loss),
          Term("entropy", tm.conditional_entropy),
          Term("wasserstein", tm.wasserstein(cost_fn=ot.resolve_cost(config.cost_fn), label_cost=config.label_cost,
                                             epsilon=config.epsilon, num_iters=config.sinkhorn_iters,
                                             lse_mode=config.sinkhorn_lse_mode), config.w_weight),
          Term("prior_matching", tm.prior_matching, config.lambda_pm),
          Term("invertibility", tm.invertibility, config.lambda_ic))


@dataclasses.dataclass(frozen=True)
class BoundConfig:
  """The analysis' settings, as a pytree: what shapes the program is static, the numbers are traced.

  Static (a change compiles a new program): ``space``, ``holdout``, ``setting``, ``freeze``, ``steps``,
  ``batch_size``, ``cost_fn``, ``sinkhorn_iters``, ``sinkhorn_lse_mode``, ``eval_iters``, ``eval_threshold``,
  ``head_steps``, ``label_map_init``, ``transport_classes``, ``block_size`` (:data:`STATIC_FIELDS`). Traced (leaves: a sweep over them compiles once):
  the learning rates, ``lambda_*``, ``label_cost``, ``epsilon``, ``eval_epsilon``, ``tau``, ``head_penalty``,
  ``head_lr``, ``min_label_mass`` and the weights of ``terms``. Resolve the data-dependent defaults
  (:meth:`resolved`) before passing a config to a jitted function.

  Attributes:
    space: ``"logit"`` (default): the certified bound in the source head's logit space
      (:mod:`ttjax.logit_bound`; Lipschitz constant 1, proven); ``"feature"``: the paper's bound in feature
      space with a *measured* ``tau_hat`` (what the reference implementation computes; not a certificate).
    holdout: fraction of each task held out (stratified, with the analysis key) on which the bound, the loss of
      ``h_T`` and every term are evaluated; the transforms and the head are learned on the rest. ``0``: learn and
      evaluate on the same points (reported as ``split="in-sample"``). Explicit test tasks override it.
    setting: ``"fixed_all"``, ``"learned_a"`` or ``"learned_all"``; ``freeze``: extra parameter names to freeze.
    steps: optimisation steps; ``batch_size``: points per step on each side (split evenly over classes), or
      ``None`` for full-batch steps on all the data (deterministic; exact ``W`` gradients).
    lr_prior, lr_label_map, lr_features: Adam learning rates of ``D`` (logit space: the temperature), ``B``
      (logit space: ``P(s | t)``) and ``(A, b, A_bar)`` (``None``: 2e-3 in feature space, 1e-2 in logit space).
    lambda_map: logit space: weight of ``||A_bar - I||_F^2`` in the objective (not part of the bound).
    lambda_w: weight of ``W`` in the objective (``None``: ``tau``); ``lambda_pm``, ``lambda_ic``: penalties.
    label_cost: ``Lambda``, the label-mismatch part of the ground cost (``None``: :func:`default_label_cost` of the
      feature dimension, twice the typical distance between two standardised points); ``cost_fn``: the feature
      ground cost (a metric).
    epsilon, sinkhorn_iters: relative entropic regularisation and fixed iteration count while training;
      ``sinkhorn_lse_mode``: log-domain iterations instead of kernel ones (on the row/column-reduced cost).
    eval_epsilon, eval_iters, eval_threshold: the same for the certified evaluation.
    tau, head_penalty, head_steps, head_lr: the source head's Lipschitz target (``None``: :func:`default_tau`)
      and its training.
    min_label_mass: which (source point, target label) pairs enter ``tau_hat`` (``B[t, y_i] >=`` this).
    label_map_init: ``learned_all``'s starting ``B``: ``"centroid"`` (OT between class centroids,
      :func:`ttjax.transforms.centroid_label_map`) or ``"uniform"`` (near uniform, symmetric).
    transport_classes: logit space, training only: each target class's ``W`` transports the minibatch rows of
      its ``k`` most likely source classes and the others' class-mean logits (``None``: every row; see
      :func:`ttjax.logit_bound.wasserstein`).
    block_size: the certified evaluation's per-class solver: ``None`` dense (one rounded plan per class), else the
      block partition with at most this many points per side (:mod:`ttjax.solvers`; large tasks, no
      ``n_s x n_t`` matrix). Needs ``batch_size``.
    terms: the objective's summands (``None``: :func:`default_terms`): a tuple of :class:`Term`.
  """

  space: str = "logit"
  holdout: float = 0.5
  setting: str = "learned_all"
  freeze: tuple[str, ...] = ()
  steps: int = 500
  batch_size: Optional[int] = 1000
  lr_prior: float = 0.05
  lr_label_map: float = 0.1
  lr_features: Optional[float] = None
  lambda_map: float = 0.01
  lambda_w: Optional[float] = None
  lambda_pm: float = 1.0
  lambda_ic: float = 1.0
  label_cost: Optional[float] = None
  cost_fn: Union[str, ot.CostFn] = "euclidean"
  epsilon: float = 0.05
  sinkhorn_iters: int = 10
  sinkhorn_lse_mode: bool = False
  eval_epsilon: float = 0.005
  eval_iters: int = 3000
  eval_threshold: float = 1e-5
  tau: Optional[float] = None
  head_penalty: float = 10.0
  head_steps: int = 300
  head_lr: float = 0.05
  min_label_mass: float = 1e-3
  label_map_init: str = "centroid"
  transport_classes: Optional[int] = None
  block_size: Optional[int] = None
  terms: Optional[tuple[Term, ...]] = None

  def __post_init__(self):
    # numbers are checked when they are numbers (inside a jitted function they are tracers)
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if self.space not in ("logit", "feature"):
      raise ValueError(f"BoundConfig.space must be 'logit' or 'feature', got {self.space!r}")
    if not 0.0 <= float(self.holdout) < 1.0:
      raise ValueError(f"BoundConfig.holdout must be in [0, 1), got {self.holdout}")
    self.trainable  # validates setting and freeze
    if self.label_map_init not in ("centroid", "uniform"):
      raise ValueError(f"BoundConfig.label_map_init must be 'centroid' or 'uniform', got {self.label_map_init!r}")
    if self.block_size is not None and self.batch_size is None:
      raise ValueError("BoundConfig.block_size (the blocked W of large tasks) needs minibatch training: full-batch "
                       "training builds n_s x n_t,k cost matrices; set BoundConfig.batch_size")
    for name in ("steps", "batch_size", "sinkhorn_iters", "eval_iters", "head_steps", "transport_classes",
                 "block_size"):
      if getattr(self, name) is not None and int(getattr(self, name)) < 1:
        raise ValueError(f"BoundConfig.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("epsilon", "eval_epsilon", "tau"):
      if number(getattr(self, name)) and not float(getattr(self, name)) > 0:
        raise ValueError(f"BoundConfig.{name} must be > 0, got {getattr(self, name)}")

  def resolved(self, dim: int) -> "BoundConfig":
    """This config with the data-dependent defaults filled in (``label_cost``, ``tau``)."""
    fill = {}
    if self.lr_features is None:
      fill["lr_features"] = 1e-2 if self.space == "logit" else 2e-3
    if self.label_cost is None:
      fill["label_cost"] = default_label_cost(dim)
    if self.tau is None:
      fill["tau"] = default_tau(dim)
    if self.lambda_w is None:
      fill["lambda_w"] = fill.get("tau", self.tau)
    return self.replace(**fill) if fill else self

  @property
  def trainable(self) -> tuple[str, ...]:
    """Names of the learned parameters (of :class:`ttjax.logit_bound.LogitTransforms` or
    :class:`ttjax.transforms.Transforms`, by ``space``)."""
    names = lb.trainable_names if self.space == "logit" else tf.trainable_names
    return names(self.setting, self.freeze)

  @property
  def w_weight(self) -> float:
    """The weight of ``W`` in the objective: ``lambda_w``, by default ``tau``."""
    return self.tau if self.lambda_w is None else self.lambda_w

  def replace(self, **kw) -> "BoundConfig":
    return dataclasses.replace(self, **kw)


#: The fields of :class:`BoundConfig` that shape the compiled program (the pytree's static part).
STATIC_FIELDS = ("space", "holdout", "setting", "freeze", "steps", "batch_size", "cost_fn", "sinkhorn_iters",
                 "sinkhorn_lse_mode", "eval_iters", "eval_threshold", "head_steps", "label_map_init",
                 "transport_classes", "block_size")
TRACED_FIELDS = tuple(f.name for f in dataclasses.fields(BoundConfig) if f.name not in STATIC_FIELDS)


def _config_unflatten(static, traced):
  config = object.__new__(BoundConfig)  # no __post_init__: the leaves may be tracers or placeholders
  for name, value in zip(STATIC_FIELDS + TRACED_FIELDS, tuple(static) + tuple(traced)):
    object.__setattr__(config, name, value)
  return config


jax.tree_util.register_pytree_node(
    BoundConfig, lambda c: (tuple(getattr(c, f) for f in TRACED_FIELDS), tuple(getattr(c, f) for f in STATIC_FIELDS)),
    _config_unflatten)


PROBE_STEPS = 100  # at most this many L-BFGS iterations for the logit-space source head


def default_label_cost(dim: int) -> float:
  """``Lambda = 2 sqrt(2 d)``: two points with independent standardised coordinates are ``~sqrt(2 d)`` apart, so
  moving mass across labels costs about twice a typical feature move."""
  return 2.0 * math.sqrt(2.0 * dim)


def default_tau(dim: int) -> float:
  """``tau = 2 / sqrt(d)``: standardised points are ``~sqrt(2 d)`` apart, so this lets the head's logits move by
  ``O(1)`` across that distance -- confident enough to classify, smooth enough that ``tau * W`` stays comparable
  to the loss terms (on real MiniLM features a 10x larger ``tau`` made the bound uninformative)."""
  return 2.0 / math.sqrt(dim)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BoundData:
  """The data side of the objective: a batch of the pair and the (fixed) source head."""

  batch: Batch
  head: hd.LinearHead


def objective(params, data: BoundData, terms: tuple[Term, ...]) -> tuple[jax.Array, dict]:
  """``sum_k weight_k * term_k(params, batch, head)``; returns ``(value, {name: term value})``."""
  values = {t.name: t(params, data.batch, data.head) for t in terms}
  return sum(t.weight * values[t.name] for t in terms), values


def objective_terms(config: "BoundConfig") -> tuple[Term, ...]:
  """``config.terms``, or :func:`default_terms` of ``config``."""
  return config.terms if config.terms is not None else default_terms(config)


_GROUPS = {"d_logits": "prior", "b_logits": "label_map", "A": "features", "b": "features", "A_bar": "features",
           "p_logits": "label_map", "log_temperature": "prior"}


def optimizer(config: BoundConfig, params) -> optax.GradientTransformation:
  learned = set(config.trainable)
  labels = type(params)(**{f.name: (_GROUPS[f.name] if f.name in learned else "frozen")
                           for f in dataclasses.fields(params)})
  # Cosine decay to 1% of the initial rate: W_1 has a kink at the optimum (constant-norm gradients), so a
  # constant-rate Adam keeps oscillating at ~lr around it; the decay lets every group settle.
  adam = lambda lr: optax.adam(optax.cosine_decay_schedule(lr, config.steps, alpha=0.01))
  return optax.multi_transform(
      {"prior": adam(config.lr_prior), "label_map": adam(config.lr_label_map),
       "features": adam(config.lr_features), "frozen": optax.set_to_zero()}, labels)


def per_class(config: BoundConfig, num_classes: int) -> int:
  return max(1, math.ceil(config.batch_size / num_classes))


def fit(key: jax.Array, params: Union[tf.Transforms, lb.LogitTransforms], data: Union[TaskPair, Batch],
        head: hd.LinearHead, config: BoundConfig) -> tuple[tf.Transforms, dict]:
  """Minimise :func:`objective` for ``config.steps`` Adam steps in one compiled ``lax.scan``.

  ``data`` is a :class:`TaskPair`, from which each step draws a class-stratified minibatch of
  ``config.batch_size`` points per side with its own key (``jax.random.split(key, steps)``; same key, same
  result), or a fixed :class:`Batch` used at every step (e.g. :func:`full_batch`), or any pytree with a
  ``draw_batch(key) -> Batch`` method (e.g. :class:`ttjax.batch.PaddedPair`). Returns the final transforms and the
  per-step history of every term. The config's numbers are traced: a sweep over learning rates, ``lambda``'s,
  ``epsilon`` or ``tau`` compiles once.
  """
  return fit_resolved(key, params, data, head, config.resolved(params.A_bar.shape[0]))


@jax.jit
def fit_resolved(key, params, data, head, config: BoundConfig):
  """:func:`fit` for a resolved ``config`` (the jitted program; callable inside other jitted code)."""
  opt = optimizer(config, params)
  terms = objective_terms(config)
  grad_fn = jax.value_and_grad(lambda p, d: objective(p, d, terms), has_aux=True)
  draw = batch_drawer(data, config)

  def step(carry, key):
    params, state = carry
    (value, values), grads = grad_fn(params, BoundData(draw(key), head))
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), dict(values, objective=value)

  (params, _), history = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, config.steps))
  return params, history


def batch_drawer(data, config: BoundConfig) -> Callable[[jax.Array], Batch]:
  """``key -> Batch``: the fixed ``data`` if it is a :class:`Batch`, its own ``draw_batch`` if it has one, else a
  class-stratified minibatch of the :class:`TaskPair` (:func:`ttjax.sampling.sample_batch`)."""
  if isinstance(data, Batch):
    return lambda key: data
  if isinstance(data, TaskPair):
    m_s, m_t = per_class(config, data.num_source), per_class(config, data.num_target)
    return lambda key: sample_batch(key, data, m_s, m_t)
  return data.draw_batch


def class_solver(config: "BoundConfig", *, blocked: bool = False) -> Callable:
  """The certified per-class solver of the evaluation, ``(x, a, y, b, cost_fn) -> (K_t,)``: dense
  (:func:`ttjax.solvers.dense_classes`, jittable) or, with ``blocked``, the block partition of
  ``config.block_size`` (:func:`ttjax.solvers.blocked_classes`, host side: large tasks)."""
  hyper = dict(epsilon=config.eval_epsilon, num_iters=config.eval_iters, threshold=config.eval_threshold)
  if blocked:
    return functools.partial(solvers.blocked_classes, block_size=config.block_size, **hyper)
  return functools.partial(solvers.dense_classes, **hyper)


def split_w(params, batch, config, solve) -> tuple:
  """Feature space: the certified label-split ``(w0, class W (K_t,), mismatch)``, ``W = w0 + Lambda mismatch``,
  every class problem solved by ``solve`` (:func:`class_solver`)."""
  cost_fn = ot.resolve_cost(config.cost_fn)
  return tm.split_wasserstein(params, batch, cost_fn, lambda x, a_hat: solve(x, a_hat, batch.zt, batch.wt, cost_fn))


@jax.jit
def certified_w(params, batch, config):
  """:func:`split_w` with the dense solver, jitted: memory ``n_s x`` (largest target class), one class at a time."""
  return split_w(params, batch, config, class_solver(config))


def feature_terms(params, head, batch, source, target, config, source_mask=None, target_mask=None) -> dict:
  """Feature space: every term but ``W`` (``tau_hat`` measured) on ``source = (z_s, y_s)`` and ``target = (z_t,
  y_t)``; ``batch`` is the full data as a :class:`Batch`. Masks ``(n,)`` mark the real rows of padded data."""
  (zs, ys), (zt, yt) = source, target
  probs = hd.transformed_probs(head, params, zt)
  nll = -jnp.log(jnp.maximum(jnp.take_along_axis(probs, yt[:, None], 1)[:, 0], 1e-12))
  return dict(
      source_loss=tm.weighted_source_loss(params, batch, head),
      entropy=tm.conditional_entropy(params),
      tau_hat=hd.tau_hat(head, params, zs, ys, zt, yt, min_label_mass=config.min_label_mass),
      **hd.transfer_metrics(nll, probs, yt, head, zs, ys, source_mask, target_mask),
      transformed_source_loss=tm.transformed_source_loss(params, batch, head),
      prior_matching=tm.prior_matching(params, batch),
      invertibility=tm.invertibility(params),
  )


@jax.jit
def evaluate_terms(params, pair, head, batch, config):
  """:func:`feature_terms` on the full data of ``pair``."""
  src, tgt = pair.source, pair.target
  return feature_terms(params, head, batch, (src.features, src.labels), (tgt.features, tgt.labels), config)


@dataclasses.dataclass(frozen=True)
class BoundResult:
  """The bound and everything it is made of (floats; ``D``/``B`` as nested lists). JSON via :meth:`to_dict`.

  ``bound = source_loss + entropy - merge_gain + tau_hat * wasserstein`` (:func:`tta_bound`), every term on the
  split named by ``split`` (``"held-out"``: the evaluation split, disjoint from the ``n_*_fit`` points the head and
  transforms were learned on; ``"in-sample"``: the same points). ``transformed_source_loss = source_loss + entropy
  - merge_gain``: the loss of ``h_T`` on the transformed source ``T'``. ``target_loss`` / ``target_accuracy``: the transformed
  classifier ``h_T`` on that target split (the bound bounds ``target_loss``).

  ``space="logit"`` (default): ``tau_hat = 1`` is the *certified* Lipschitz constant of the loss for the range
  seminorm of the head's logits (``lipschitz="certified"``), ``wasserstein`` the cost of a feasible coupling, no
  label mismatch (``B D = p_T`` by construction), and the first term the exact ``E_{T'} l`` (``merge_gain >= 0``
  the slack of the paper's ``E_{T'} l <= source_loss + entropy``, which label maps that merge source classes
  create): a certificate. ``space="feature"``: the paper's bound;
  ``wasserstein`` is certified under ``||x - x'|| + label_cost * 1[t != t']`` but ``tau_hat`` is *measured* at the
  sample points (``lipschitz="measured"``), so the number is an estimate, not a certificate;
  ``label_mismatch = sum_t (BD - p_T)_t^+`` and ``label_cost`` is raised to ``max_j loss_j / tau_hat`` when needed.
  """

  bound: float
  source_loss: float
  entropy: float
  wasserstein: float
  tau_hat: float
  target_loss: float
  target_accuracy: float
  source_accuracy: float
  transformed_source_loss: float
  prior_matching: float
  invertibility: float
  label_mismatch: float
  label_cost: float
  setting: str
  steps: int
  num_source_classes: int
  num_target_classes: int
  space: str = "feature"
  lipschitz: str = "measured"
  split: str = "in-sample"
  n_source_fit: int = 0
  n_target_fit: int = 0
  n_source_eval: int = 0
  n_target_eval: int = 0
  temperature: float = 1.0
  merge_gain: float = 0.0
  seconds: float = float("nan")
  D: Any = None
  B: Any = None

  @property
  def certified(self) -> bool:
    """Whether every constant of :attr:`bound` is proven (``space="logit"``) rather than measured."""
    return self.lipschitz == "certified"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self, **kw) -> str:
    return json.dumps(self.to_dict(), **kw)

  def __str__(self) -> str:
    lip = "L (certified)" if self.certified else "tau_hat (measured)"
    rows = [("bound" if self.certified else "bound estimate", self.bound),
            ("  weighted source loss", self.source_loss), ("  H(label map)", self.entropy),
            ("  - label-merging gain", -self.merge_gain),
            (f"  {'L' if self.certified else 'tau_hat'} * W", self.tau_hat * self.wasserstein),
            (f"    {lip}", self.tau_hat), ("    W (feasible coupling)", self.wasserstein),
            ("target loss of h_T", self.target_loss), ("target accuracy of h_T", self.target_accuracy),
            ("source accuracy of h_S", self.source_accuracy)]
    head = f"TTA bound [{self.space} space, {self.setting}, {self.steps} steps, K_s={self.num_source_classes}, " \
           f"K_t={self.num_target_classes}, {self.split}: n_s={self.n_source_eval}, n_t={self.n_target_eval}, " \
           f"{self.seconds:.1f}s]"
    return "\n".join([head] + [f"  {k:<26s} {v:10.4f}" for k, v in rows])


def tta_bound(source_loss, entropy, lipschitz, wasserstein, merge_gain=0.0):
  """The bound's inequality: ``R_T(h_T) <= sum_s D_s Lbar_s + H(B | D) - G + L * W(T', T)``.

  ``G >= 0``, the label-merging gain, is the slack of ``E_{T'} l <= sum_s D_s Lbar_s + H`` (``-log (B p)_t <=
  -log B_ts - log p_s``), so ``sum_s D_s Lbar_s + H - G = E_{T'} l``, the loss of ``h_T`` on the transformed
  source, an exact empirical number (logit space); ``G = 0`` is the paper's chain (feature space)."""
  return source_loss + entropy - merge_gain + lipschitz * wasserstein


def evaluate(params, pair: TaskPair, head: hd.LinearHead, config: BoundConfig, *, seconds: float = float("nan"),
             split: str = "in-sample", fit_sizes: tuple[int, int] = (0, 0)) -> BoundResult:
  """Report the bound on the full data of ``pair`` (the evaluation split named by ``split``): certified ``W``,
  every term; the Lipschitz constant certified (logit space) or measured (feature space)."""
  config = config.resolved(pair.source.dim)
  sizes = split_sizes(split, fit_sizes, pair)
  batch = full_batch(pair)
  if config.space == "logit":
    if config.block_size is None:
      t = lb.certified_terms(params, pair, batch, head, config)
    else:
      u, a, v = lb.transport_problems(params, batch, head)
      class_w = class_solver(config, blocked=True)(u, a, v, batch.wt, ot.logit_range)
      t = lb.with_wasserstein(lb.evaluation_terms(params, pair, batch, head), class_w, batch.pt)
    return logit_result(jax.device_get(t), params, config, pair.num_source, pair.num_target, seconds, **sizes)
  if config.block_size is None:
    w0, _, mismatch = certified_w(params, batch, config)
  else:
    w0, _, mismatch = split_w(params, batch, config, class_solver(config, blocked=True))
  t = jax.device_get(evaluate_terms(params, pair, head, batch, config))
  return assemble_result(t, w0, mismatch, params, config, pair.num_source, pair.num_target, seconds, **sizes)


def split_sizes(split: str, fit_sizes: tuple[int, int], pair: TaskPair) -> dict:
  """The :class:`BoundResult` fields that say which split the numbers are on: ``split`` and the fit / evaluation
  sizes of both tasks (``pair``: the evaluation pair)."""
  return dict(split=split, n_source_fit=fit_sizes[0], n_target_fit=fit_sizes[1], n_source_eval=pair.source.n,
              n_target_eval=pair.target.n)


def logit_result(t: dict, params, config: BoundConfig, num_source: int, num_target: int,
                 seconds: float = float("nan"), **sizes) -> BoundResult:
  """The logit-space bound's host-side end: the certified terms ``t`` (:func:`ttjax.logit_bound.certified_terms`,
  on the host) -> :class:`BoundResult` (Lipschitz constant 1, no label mismatch: ``B D = p_T``)."""
  terms = {k: v for k, v in t.items() if k not in ("class_wasserstein", "max_target_loss", "D", "B", "wasserstein")}
  terms.update(tau_hat=1.0, prior_matching=0.0, invertibility=0.0)
  return assemble_result(terms, t["wasserstein"], 0.0, params, config, num_source, num_target, seconds,
                         prior=t["D"], label_map=t["B"], **sizes)


def assemble_result(t: dict, w0, mismatch, params, config: BoundConfig, num_source: int, num_target: int,
                    seconds: float = float("nan"), *, prior=None, label_map=None, **sizes) -> BoundResult:
  """The host-side end of every evaluation (single, batched, large): the terms ``t``, the certified label-split
  ``w0`` and the label ``mismatch`` -> :class:`BoundResult` through :func:`tta_bound`."""
  t = dict(t)
  label_cost = 0.0
  if config.space == "feature":
    # Mass that crosses labels is paired by the Lambda part of the cost, where the loss is not Lipschitz: there the
    # argument needs tau_hat * Lambda >= the loss it covers, at most the largest target loss of h_T. Raise Lambda
    # to that when needed (it only matters when B D != p_T).
    label_cost = max(float(config.label_cost), float(t.pop("max_target_loss")) / max(float(t["tau_hat"]), 1e-12))
  w = float(w0) + label_cost * float(mismatch)
  gain = 0.0
  if config.space == "logit":  # the first term is E_{T'} l itself: G = (source loss + H) - E_{T'} l >= 0
    gain = max(0.0, float(t["source_loss"]) + float(t["entropy"]) - float(t["transformed_source_loss"]))
  bound = tta_bound(float(t["source_loss"]), float(t["entropy"]), float(t["tau_hat"]), w, gain)
  if not np.isfinite(bound):
    raise FloatingPointError(f"the bound is not finite (terms: {t}, W={w}); check the inputs and the config")
  prior = params.D if prior is None else prior
  label_map = params.B if label_map is None else label_map
  temperature = float(params.temperature) if config.space == "logit" else 1.0
  return BoundResult(bound=bound, wasserstein=w, label_mismatch=float(mismatch), label_cost=label_cost,
                     setting=config.setting, steps=config.steps if config.trainable else 0,
                     num_source_classes=num_source, num_target_classes=num_target, seconds=seconds,
                     space=config.space, lipschitz="certified" if config.space == "logit" else "measured",
                     temperature=temperature, merge_gain=gain, D=np.asarray(prior).tolist(),
                     B=np.asarray(label_map).tolist(), **sizes, **{k: float(v) for k, v in t.items()})


@dataclasses.dataclass(frozen=True)
class Analysis:
  """Output of :func:`analyse`: the result, the learned transforms, the source head, the evaluation pair
  (``pair``: the split the result is on), the pair the transforms were fitted on, and the training history."""

  result: BoundResult
  params: Any
  head: hd.LinearHead
  pair: TaskPair
  history: dict
  fit_pair: Optional[TaskPair] = None


def initial_label_map(config: BoundConfig, source: Task, target: Task, label_map=None):
  """The starting ``B``: ``label_map`` if given; for ``learned_all`` with ``label_map_init="centroid"`` the
  centroid-OT map (:func:`ttjax.transforms.centroid_label_map`); else ``None`` (``init_transforms``' default)."""
  if label_map is None and config.setting == "learned_all" and config.label_map_init == "centroid":
    return tf.centroid_label_map(source.features, source.labels, target.features, target.labels,
                                 source.num_classes, target.num_classes)
  return label_map


def source_head(key: jax.Array, source: Task, config: BoundConfig) -> hd.LinearHead:
  """The source head ``h_S``. Logit space: the linear probe of ``source``, L-BFGS on the L2-penalised
  cross-entropy with the L2 strength chosen on a validation part (:func:`ttjax.finetune.finetune`,
  ``method="lbfgs"``): rotation-equivariant, so nuisance feature dimensions cost it little (any head gives a
  valid bound; a well-generalising one a tighter held-out bound). Feature space: the gradient-penalised head whose Lipschitz
  target is ``config.tau`` (:func:`ttjax.head.fit_head`)."""
  if config.space == "logit":
    # L-BFGS converges (or early-stops: validation picks the iteration) within ~100 iterations; past convergence
    # its line search only burns time
    run = ft.finetune(key, source, source, steps=min(config.head_steps, PROBE_STEPS), method="lbfgs",
                      wds=ft.DEFAULT_L2S)
    return hd.LinearHead(W=jnp.asarray(run.weights), c=jnp.asarray(run.bias))
  return hd.fit_head(key, source.features, source.labels, source.num_classes, tau=config.tau,
                     penalty=config.head_penalty, steps=config.head_steps, learning_rate=config.head_lr)


def prepare(key: jax.Array, source: Task, target: Task, config: BoundConfig, *, label_map=None, prior=None,
            head: Optional[hd.LinearHead] = None):
  """The start every analysis shares: ``(resolved config, source head, initial transforms, key for fit)``.

  ``key`` splits into (head, init, fit) keys; the head is trained unless given.
  """
  config = config.resolved(source.dim)
  k_head, k_init, k_fit = jax.random.split(key, 3)
  if head is None:
    head = source_head(k_head, source, config)
  # the label side starts as in the paper's settings: learned_all from the centroid-OT map (D = p_S), the others
  # from a hard map with the matched prior; logit space re-expresses that (B, D) as P(s | t)
  setting = config.setting if config.space == "feature" or config.setting == "learned_all" else "fixed_all"
  params = tf.init_transforms(k_init, source.num_classes, target.num_classes, source.dim, setting=setting,
                              source_prior=np.asarray(source.prior), target_prior=np.asarray(target.prior),
                              label_map=initial_label_map(config, source, target, label_map), prior=prior)
  if config.space == "logit":
    params = lb.init_logit_transforms(params.B, params.D, source.dim)
  return config, head, params, k_fit


def holdout_split(key: jax.Array, task: Task, fraction: float, *, name: str = "task") -> tuple[Task, Task]:
  """Stratified ``(fit, evaluation)`` split of ``task``: about ``fraction`` of every class is held out (at least
  one point per class on each side). Raises ``ValueError`` naming the class when a class has fewer than 2 points."""
  counts = task.counts
  if counts.min() < 2:
    raise ValueError(f"{name}: class {int(counts.argmin())} has {int(counts.min())} sample(s); a held-out "
                     "evaluation needs at least 2 per class (give more data, explicit test data, or holdout=0)")
  y = np.asarray(task.labels)
  fit_idx, eval_idx = ft.split_train_val(key, y, fraction)
  eval_counts = np.bincount(y[eval_idx], minlength=task.num_classes)
  for k in np.flatnonzero(eval_counts == 0):  # keep one point of every class in the evaluation split
    move = fit_idx[y[fit_idx] == k][0]
    fit_idx, eval_idx = fit_idx[fit_idx != move], np.sort(np.append(eval_idx, move))
  take = lambda idx: Task(features=task.features[idx], labels=task.labels[idx], num_classes=task.num_classes)
  return take(fit_idx), take(eval_idx)


def analyse(key: jax.Array, source: Task, target: Task, config: BoundConfig = BoundConfig(), *,
            source_test: Optional[Task] = None, target_test: Optional[Task] = None,
            label_map=None, prior=None, head: Optional[hd.LinearHead] = None) -> Analysis:
  """The full analysis: train the source head, initialise the transforms for ``config.setting``, minimise the
  objective on the fitting split, and evaluate the bound on the evaluation split.

  Args:
    key: PRNG key (the only source of randomness).
    source, target: validated tasks (:func:`ttjax.tasks.make_task`) with the same feature dimension: the
      fitting data when ``source_test`` / ``target_test`` are given, else split by ``config.holdout``.
    source_test, target_test: held-out tasks to evaluate on (e.g. the data sets' test splits).
    label_map, prior: optional fixed ``B (K_t, K_s)`` / ``D (K_s,)`` (else random map / matched prior).
    head: a pre-trained source head to reuse (else trained here).
  """
  start = time.perf_counter()
  fit_pair, eval_pair, split = split_pair(key, source, target, config, source_test=source_test,
                                          target_test=target_test)
  config, head, params, k_fit = prepare(key, fit_pair.source, fit_pair.target, config, label_map=label_map,
                                        prior=prior, head=head)
  history = {}
  if config.trainable:
    params, history = fit_resolved(k_fit, params, fit_data(fit_pair, config), head, config)
  result = evaluate(params, eval_pair, head, config, seconds=0.0, split=split,
                    fit_sizes=(fit_pair.source.n, fit_pair.target.n))
  result = dataclasses.replace(result, seconds=time.perf_counter() - start)
  return Analysis(result=result, params=params, head=head, pair=eval_pair, history=jax.device_get(history),
                  fit_pair=fit_pair)


def split_pair(key: jax.Array, source: Task, target: Task, config: BoundConfig, *,
               source_test: Optional[Task] = None, target_test: Optional[Task] = None
               ) -> tuple[TaskPair, TaskPair, str]:
  """``(fit pair, evaluation pair, split name)``: the given test tasks, else ``config.holdout`` of each task held
  out (stratified, keys from ``fold_in(key, 0x5EED)``), else the same points (``"in-sample"``). Validates the
  pair before any work."""
  make_pair(source, target)
  held_out = source_test is not None or target_test is not None or config.holdout > 0
  if config.holdout > 0:
    k_s, k_t = jax.random.split(jax.random.fold_in(key, 0x5EED))
    if source_test is None:
      source, source_test = holdout_split(k_s, source, config.holdout, name="source")
    if target_test is None:
      target, target_test = holdout_split(k_t, target, config.holdout, name="target")
  eval_pair = make_pair(source if source_test is None else source_test, target if target_test is None else target_test)
  return make_pair(source, target), eval_pair, "held-out" if held_out else "in-sample"


def fit_data(pair: TaskPair, config: BoundConfig) -> Union[TaskPair, Batch]:
  """What :func:`fit` trains on: the pair (minibatches of ``config.batch_size``) or, with ``batch_size=None``,
  its full batch."""
  return full_batch(pair) if config.batch_size is None else pair


def tta(source_features, source_labels, target_features, target_labels, *, key: Optional[jax.Array] = None,
        config: BoundConfig = BoundConfig(), standardise: bool = True, source_test=None, target_test=None,
        **kw) -> Analysis:
  """Convenience entry point on raw arrays: validate both tasks, then :func:`analyse`.

  ``source_test`` / ``target_test``: optional held-out ``(features, labels)`` to evaluate on, standardised with
  their task's training statistics (else ``config.holdout`` of each task is held out).
  """
  source, s_test = _task_and_test(source_features, source_labels, source_test, "source", None, standardise)
  target, t_test = _task_and_test(target_features, target_labels, target_test, "target", source.dim, standardise)
  return analyse(jax.random.PRNGKey(0) if key is None else key, source, target, config, source_test=s_test,
                 target_test=t_test, **kw)


def _task_and_test(features, labels, test, name, dim, standardise):
  task = make_task(features, labels, name=name, standardise=False, dim=dim)
  test_task = None
  if test is not None:
    test_task = make_task(test[0], test[1], name=f"{name} test", standardise=False, dim=task.dim,
                          num_classes=task.num_classes)
  if standardise:
    ref = task.features
    task = dataclasses.replace(task, features=standardize(task.features, reference=ref))
    if test_task is not None:
      test_task = dataclasses.replace(test_task, features=standardize(test_task.features, reference=ref))
  return task, test_task


def feature_gradients(params: tf.Transforms, head: hd.LinearHead, batch: Batch,
                      config: BoundConfig) -> tuple[jax.Array, jax.Array]:
  """``d objective / d features`` for every source row ``(n_s, d)`` and target slot ``(K_t, m, d)``: which
  samples push the bound up (the W part uses the envelope gradient, i.e. the optimal plan held fixed)."""
  config = config.resolved(batch.zs.shape[1])

  terms = objective_terms(config)

  def value(zs, zt):
    return objective(params, BoundData(dataclasses.replace(batch, zs=zs, zt=zt), head), terms)[0]

  return jax.grad(value, argnums=(0, 1))(batch.zs, batch.zt)
