"""Baselines the concept head is measured against: a linear probe, a dense concept head, zero-shot.

- :class:`LinearProbe`: L2 logistic regression on raw image features (the black-box reference of
  every CBM paper), standardised inside, C chosen on the validation split.
- :class:`DenseConceptHead`: the same on concept scores, with no sparsity (how much accuracy the
  sparsity costs).
- :func:`zero_shot_logits`: cosine similarity of images to class-name prompts (no training).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from cbm.bottleneck import cosine_scores
from cbm.heads._common import (
    LinearHeadMixin,
    check_train_data,
    forget_fit,
    sample_weights,
    symmetric_binary,
    validation_data,
)

__all__ = ["DenseConceptHead", "LinearProbe", "zero_shot_logits"]

log = logging.getLogger(__name__)


class _ValidatedLogisticRegression(LinearHeadMixin, ClassifierMixin, BaseEstimator):
    """L2 logistic regression whose C is chosen on a validation split (shared by both baselines)."""

    _standardize = False

    def __init__(
        self,
        *,
        Cs: int | Sequence[float] = 17,
        class_weight: dict | str | None = None,
        validation_fraction: float = 0.2,
        tol: float = 1e-6,
        max_iter: int = 10_000,
        random_state: int | None = None,
    ) -> None:
        self.Cs = Cs
        self.class_weight = class_weight
        self.validation_fraction = validation_fraction
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None):
        """Fit one model per C on ``X, y`` (warm-started, C ascending) and keep the best on validation.

        Best = highest validation accuracy; ties go to the lower validation log-loss. Without
        ``X_val, y_val`` an internal stratified holdout of ``validation_fraction`` is used. Each C is
        solved to ``tol``: with lbfgs's usual 1e-4, a warm start from the previous C already met
        it where the data are nearly separable, so several Cs kept one stale solution, tied on
        validation, and which of them won (and the test figures, by up to 5 points on the demo
        world) followed the last bits of the features, i.e. the machine.
        """
        forget_fit(self)
        X, y_enc, classes = check_train_data(self, X, y)
        self.classes_ = classes
        X_fit, y_fit, X_v, y_v, source = validation_data(
            self, X, y_enc, classes, X_val, y_val, self.validation_fraction, self.random_state
        )
        grid = self._grid()
        if self._standardize:
            mean, scale = X_fit.mean(0), X_fit.std(0)
            scale = np.where(scale > 0, scale, 1.0)
        else:
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        Z_fit, Z_v = (X_fit - mean) / scale, (X_v - mean) / scale
        weights = sample_weights(self.class_weight, y_fit, classes)
        model = LogisticRegression(l1_ratio=0.0, tol=float(self.tol), max_iter=int(self.max_iter), warm_start=True)
        scores, best = [], None
        for C in grid:
            model.set_params(C=C)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(Z_fit, y_fit, sample_weight=weights)
            logits = self._full_logits(model, Z_v, len(classes))
            log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            acc = float((logits.argmax(1) == y_v).mean())
            nll = float(-log_p[np.arange(len(y_v)), y_v].mean())
            scores.append({"C": C, "val_accuracy": acc, "val_log_loss": nll, "converged": not caught})
            if best is None or (acc, -nll) > (best[0], -best[1]):
                best = (acc, nll, C, model.coef_.copy(), model.intercept_.copy(), not caught, int(np.max(model.n_iter_)))
        _, _, self.C_, coef, intercept, converged, self.n_iter_ = best
        if not converged:
            log.warning("%s: lbfgs did not converge at the chosen C=%g; raise max_iter", type(self).__name__, self.C_)
        if coef.shape[0] == 1:
            coef, intercept = symmetric_binary(coef, intercept)
        # fold the standardisation in, so coef_ applies to the features as given
        self.coef_ = coef / scale
        self.intercept_ = intercept - self.coef_ @ mean
        self.scores_ = scores
        self.validation_ = {"source": source, "n": int(len(y_v))}
        return self

    def _grid(self) -> list[float]:
        if isinstance(self.Cs, (int, np.integer)) and not isinstance(self.Cs, bool):
            if self.Cs < 1:
                raise ValueError(f"Cs must be a positive number of grid points or a list of C values; got {self.Cs!r}")
            return [float(c) for c in np.logspace(-4, 4, int(self.Cs))]
        grid = sorted(float(c) for c in np.asarray(self.Cs, dtype=np.float64).ravel())
        if not grid or grid[0] <= 0 or not np.isfinite(grid[-1]):
            raise ValueError(f"Cs must hold finite positive values; got {self.Cs!r}")
        return grid

    @staticmethod
    def _full_logits(model: LogisticRegression, X: np.ndarray, n_classes: int) -> np.ndarray:
        z = model.decision_function(X)
        return np.stack([-z / 2, z / 2], axis=1) if n_classes == 2 else z


class LinearProbe(_ValidatedLogisticRegression):
    """L2 logistic regression on raw image features; C chosen on the validation split.

    Features are standardised with the fitting split's mean and std inside (the statistics are
    folded into ``coef_`` and ``intercept_``, which apply to raw features). ``coef_`` is
    ``(n_classes, n_features)``; two classes give the symmetric pair ``[-w/2, w/2]``, as in
    :class:`SparseConceptHead`.

    Args:
        Cs: the C grid: a number of log-spaced values in [1e-4, 1e4], or the values themselves.
        class_weight: None, "balanced" or {label: weight}.
        validation_fraction: holdout share when ``fit`` gets no ``X_val``.
        tol: lbfgs stopping tolerance per C (see ``fit``).
        max_iter: lbfgs iteration cap per C.
        random_state: seed of the internal holdout.

    Attributes:
        C_: the chosen C; scores_: validation accuracy and log-loss per C; n_iter_: lbfgs
        iterations of the chosen model; classes_, coef_, intercept_, n_features_in_, validation_.
    """

    _standardize = True


class DenseConceptHead(_ValidatedLogisticRegression):
    """L2 logistic regression on concept scores, no sparsity; C chosen on the validation split.

    The reference for what sparsity costs: the same bottleneck as :class:`SparseConceptHead`, every
    concept allowed for every class. Scores are used as given (standardised upstream).
    Parameters and attributes as :class:`LinearProbe`.
    """

    _standardize = False


def zero_shot_logits(image_features: Any, class_text_features: Any, temperature: float = 100.0) -> np.ndarray:
    """Zero-shot class logits: ``temperature`` x cosine(image, class text embedding), ``(n, K)``.

    Args:
        image_features: ``(n, D)`` image embeddings.
        class_text_features: ``(K, D)`` one (prompt-ensembled) text embedding per class, rows in
            class order.
        temperature: CLIP's logit scale (100 for OpenAI CLIP); it changes probabilities, not the
            ranking.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number; got {temperature!r}")
    return np.float32(temperature) * cosine_scores(image_features, class_text_features)
