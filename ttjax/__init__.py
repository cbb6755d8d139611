"""ttjax: Task Transfer Analysis in JAX.

How well will a frozen pre-trained encoder transfer to a classification task, and why? ttjax computes the TTA
bound (Mehra, Zhang & Hamm, NeurIPS 2024) -- weighted source loss + label-map entropy + Lipschitz constant x
Wasserstein -- as one jitted, differentiable objective optimised with Optax, certified on held-out data (by default
in the source head's logit space, every constant proven), beside the field's transferability scores.

Public API only; everything is defined in its own module.
"""

from ttjax import ot  # noqa: F401  (first: applies the ott-jax / jax>=0.9 shim before anything uses ott)
# (the bound's `evaluate` stays in ttjax.bound; the model-selection metrics are ttjax.selection)
from ttjax.batch import analyse_batch, bound_batch
from ttjax.bound import (Analysis, BoundConfig, BoundResult, Term, analyse, default_terms, feature_gradients, fit,
                         objective, tta)
from ttjax.head import LinearHead, fit_head, tau_hat, transformed_probs
from ttjax.label_free import RelatednessResult, analyse_relatedness, relatedness, relatedness_batch
from ttjax.sampling import Batch, TaskPair, full_batch, make_pair, sample_batch
from ttjax.tasks import Task, make_task
from ttjax.transforms import SETTINGS, Transforms, init_transforms

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Batch", "BoundConfig", "BoundResult", "LinearHead", "SETTINGS", "Task", "TaskPair", "Term",
    "Transforms", "analyse", "default_terms", "feature_gradients", "fit", "fit_head",
    "full_batch", "init_transforms", "make_pair", "make_task", "sample_batch", "tau_hat", "transformed_probs", "tta",
    "RelatednessResult", "analyse_relatedness", "relatedness", "relatedness_batch", "analyse_batch", "bound_batch",
]
