"""The settings and inputs of :class:`~cbm.heads.SparseConceptHead`, checked: each bad one is
refused with what is wrong and the fix, before any fitting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["CONSTRAINTS", "DTYPES", "SELECTIONS", "check_head_params", "check_prior", "check_truth"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
SELECTIONS = ("accuracy", "concepts")
CONSTRAINTS = (None, "prior")


def check_head_params(head: Any) -> None:
    """Raise ``ValueError`` for a bad setting of a ``SparseConceptHead`` (its ``check_params``)."""
    for name in ("use_prior", "intervention_training"):  # "off" from a config would read as on
        if not isinstance(getattr(head, name), (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false; got {getattr(head, name)!r}")
    if not 0.0 <= _number(head, "l1_ratio") <= 1.0:
        raise ValueError(f"l1_ratio must be in [0, 1]; got {head.l1_ratio!r}")
    if head.lambdas is None:
        if _whole(head, "n_lambdas") < 1:
            raise ValueError(f"n_lambdas must be at least 1; got {head.n_lambdas!r}")
        if not 0.0 < _number(head, "lambda_min_ratio") <= 1.0:
            raise ValueError(f"lambda_min_ratio must be in (0, 1]; got {head.lambda_min_ratio!r}")
    else:
        grid = np.asarray(head.lambdas, dtype=np.float64).ravel()
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError(f"lambdas must be a non-empty list of finite non-negative values; got {head.lambdas!r}")
    if head.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}; got {head.selection!r}")
    if head.max_concepts_per_class is not None and not _number(head, "max_concepts_per_class") > 0:
        raise ValueError(f"max_concepts_per_class must be > 0 (a head with no concept predicts one class) or None; "
                         f"got {head.max_concepts_per_class!r}")
    if not (head.class_weight is None or head.class_weight == "balanced" or isinstance(head.class_weight, Mapping)):
        raise ValueError(f"class_weight must be None, 'balanced' or a dict {{class: weight}}; got {head.class_weight!r}")
    if head.selection == "concepts" and head.max_concepts_per_class is None:
        raise ValueError('selection="concepts" needs max_concepts_per_class (the target number of concepts per class)')
    tol = head.accuracy_tolerance
    if not (tol == "se" or (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 <= tol < 1)):
        raise ValueError(f'accuracy_tolerance must be "se" or a number in [0, 1); got {tol!r}')
    if not 0 <= _number(head, "prior_strength") < float("inf"):  # NaN fitted all-zero weights without a word
        raise ValueError(f"prior_strength must be a finite number >= 0; got {head.prior_strength!r}")
    if not _number(head, "tol") > 0 or _whole(head, "max_iter") < 1:
        raise ValueError(f"tol must be > 0 and max_iter >= 1; got tol={head.tol!r}, max_iter={head.max_iter!r}")
    if head.n_threads is not None and _whole(head, "n_threads") < 1:
        raise ValueError(f"n_threads must be >= 1 or None; got {head.n_threads!r}")
    if head.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {head.dtype!r}")
    if head.constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}; got {head.constraint!r}")
    if not (head.ordinal is True or head.ordinal is False or head.ordinal == "auto"):
        raise ValueError(f'ordinal must be true, false or "auto"; got {head.ordinal!r}')
    if head.ordinal is not False and float(head.prior_strength) > 0:
        raise ValueError(f"the prior penalty (prior_strength > 0) is for the per-class head, and ordinal={head.ordinal!r} "
                         'may give the ordinal form; use constraint="prior" for a faithful ordinal head, or set '
                         "prior_strength=0, or ordinal=False")


def _number(head: Any, name: str) -> float:
    """The setting ``name`` as a float; a switch (true/false) or a text is refused by name (``float``
    read true as 1.0, and a text gave only "could not convert string to float")."""
    value = getattr(head, name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    return float(value)


def _whole(head: Any, name: str) -> int:
    """The setting ``name`` as an int; a fraction is refused by name (``int`` cut 2.5 to 2)."""
    value = _number(head, name)
    if not value.is_integer():
        raise ValueError(f"{name} must be a whole number; got {getattr(head, name)!r}")
    return int(value)


def check_prior(head: Any, n_classes: int, n_features: int) -> np.ndarray | None:
    """The head's ``prior`` as float64 (None where it has none and needs none), refused with the fix where it does not fit."""
    if head.prior is None:
        if head.needs_prior():
            setting = 'constraint="prior"' if head.constraint == "prior" else "use_prior=True"
            undo = "constraint=None" if head.constraint == "prior" else "use_prior=False"
            raise ValueError(
                f"{setting} but no prior was given: pass prior=ConceptSet.prior() (n_classes x n_concepts), "
                f"or set {undo}"
            )
        return None
    prior = np.asarray(head.prior, dtype=np.float64)
    if prior.shape != (n_classes, n_features):
        raise ValueError(
            f"prior has shape {prior.shape} but the data has {n_classes} classes and {n_features} concepts; "
            "it must be (n_classes, n_concepts) with rows in the order of the sorted class labels "
            f"(the training labels hold {head.classes_.tolist()[:20]}: a class they lack has no row to fit, "
            "so give it training samples or leave its row out)"
        )
    if not np.all(np.isfinite(prior)) or np.abs(prior).max(initial=0) > 1:
        raise ValueError("prior entries must be finite and in [-1, 1] (a multi-hot class-concept matrix is 0/1)")
    return prior


def check_truth(truth: Any, shape: tuple, name: str) -> np.ndarray | None:
    """``truth`` as float64 (None where absent or all NaN), refused with the fix where its shape or values are wrong."""
    if truth is None:
        return None
    truth = np.asarray(truth, dtype=np.float64)
    if truth.shape != tuple(shape):
        raise ValueError(f"{name} has shape {truth.shape} but its scores have {tuple(shape)}; give one truth-derived "
                         "value (or NaN: not annotated) per case and concept")
    if np.isinf(truth).any():
        raise ValueError(f"{name} holds infinite values; use the concept's present/absent score, or NaN where "
                         "the case is not annotated")
    if np.isnan(truth).all():
        return None
    return truth
