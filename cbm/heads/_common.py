"""What every head shares: input checks, the validation split, class weights, the (K, C) convention."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

log = logging.getLogger(__name__)


def check_train_data(est: Any, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate training data; returns float X, encoded labels ``0..K-1`` and the class labels."""
    X, y = validate_data(est, X, y, dtype=[np.float64, np.float32])
    check_classification_targets(y)
    encoder = LabelEncoder().fit(y)
    if len(encoder.classes_) < 2:
        raise ValueError(
            f"{type(est).__name__} needs training samples of at least 2 classes; y has only 1 class "
            f"({encoder.classes_[0]!r}). Check the labels of the training split."
        )
    return X, encoder.transform(y), encoder.classes_


def validation_data(
    est: Any,
    X: np.ndarray,
    y_enc: np.ndarray,
    classes: np.ndarray,
    X_val: Any,
    y_val: Any,
    fraction: float,
    random_state: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """The split that picks hyper-parameters: the given one, or a holdout of the training data.

    Returns ``(X_fit, y_fit, X_val, y_val, source)`` with encoded labels; ``source`` is
    ``"given"`` or ``"holdout"``. The holdout is stratified when every class has at least two
    samples and is reproducible through ``random_state``. A test split must never be passed here.
    """
    if (X_val is None) != (y_val is None):
        raise ValueError("pass both X_val and y_val (the validation split), or neither for an internal holdout")
    if X_val is not None:
        X_val = validate_data(est, X_val, reset=False, dtype=[np.float64, np.float32])
        y_val = column_or_1d(y_val, warn=True)
        if len(y_val) != len(X_val):
            raise ValueError(f"X_val has {len(X_val)} rows but y_val has {len(y_val)} labels; they must match")
        unknown = np.setdiff1d(np.unique(y_val), classes)
        if len(unknown):
            raise ValueError(
                f"y_val has labels the training data lacks: {unknown.tolist()[:5]}; "
                f"known classes: {classes.tolist()}. Check that both splits use the same label names."
            )
        return X, y_enc, X_val, np.searchsorted(classes, y_val), "given"
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1) when no X_val is given; got {fraction!r}")
    n_classes = len(classes)
    n_val = int(np.ceil(fraction * len(y_enc)))
    counts = np.bincount(y_enc, minlength=n_classes)
    stratified = counts.min() >= 2 and n_classes <= n_val <= len(y_enc) - n_classes
    if stratified:
        idx_fit, idx_val = train_test_split(
            np.arange(len(y_enc)), test_size=n_val, stratify=y_enc, random_state=random_state
        )
        # a large fraction can take a small class whole into validation: the head would fit without it
        stratified = bool(np.bincount(y_enc[idx_fit], minlength=n_classes).min() >= 1)
    if not stratified:
        # too small to stratify: keep one random sample of every class for fitting, draw the
        # validation samples from the rest
        log.warning("too few samples per class (%s) for a stratified validation holdout of %g that leaves every class "
                    "in the fitting part; using a random one", counts.tolist(), fraction)
        rng = check_random_state(random_state)
        order = rng.permutation(len(y_enc))
        first = np.zeros(len(y_enc), dtype=bool)
        first[order[np.unique(y_enc[order], return_index=True)[1]]] = True
        rest = order[~first[order]]
        n_val = max(1, min(n_val, len(rest)))
        if len(rest) == 0:
            raise ValueError(
                f"{len(y_enc)} training samples over {n_classes} classes leave none for validation; "
                "pass X_val and y_val, or more training data"
            )
        idx_val = rest[:n_val]
        idx_fit = np.setdiff1d(np.arange(len(y_enc)), idx_val)
    return X[idx_fit], y_enc[idx_fit], X[idx_val], y_enc[idx_val], "holdout"


def forget_fit(est: Any) -> None:
    """Drop an estimator's fitted attributes (``name_``) before it fits again: a fit that fails
    leaves it unfitted, not holding new labels beside old weights."""
    for name in [k for k in vars(est) if k.endswith("_") and not k.startswith("_")]:
        delattr(est, name)


def sample_weights(class_weight: Any, y_enc: np.ndarray, classes: np.ndarray) -> np.ndarray | None:
    """Per-sample loss weights from ``class_weight``: None, "balanced" or ``{class label: weight}``.

    "balanced" weighs class k by ``n / (n_present_classes * n_k)``, as scikit-learn does; a dict
    leaves unnamed classes at 1.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, Mapping):  # a dict, or a config's mapping (as check_head_params accepts)
        known = set(classes.tolist())
        unknown = [k for k in class_weight if k not in known]
        if unknown:
            raise ValueError(f"class_weight names unknown classes {unknown}; the classes are {classes.tolist()}")
        weights = np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
    elif isinstance(class_weight, str) and class_weight == "balanced":
        counts = np.bincount(y_enc, minlength=len(classes)).astype(np.float64)
        present = counts > 0
        weights = np.ones(len(classes))
        weights[present] = len(y_enc) / (present.sum() * counts[present])
    else:
        raise ValueError(f"class_weight must be None, 'balanced' or a dict {{class: weight}}; got {class_weight!r}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"class weights must be finite and non-negative; got {weights.tolist()}")
    if not np.any(weights[y_enc] > 0):  # no loss left: the head would keep all-zero weights, one class for all
        raise ValueError(f"class_weight {class_weight!r} gives every training sample weight 0, so there is nothing "
                         f"to fit; give at least one class of the training labels {classes.tolist()} a positive weight")
    return weights[y_enc]


def symmetric_binary(coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's binary ``(1, C)`` weights as the ``(2, C)`` pair ``[-w/2, w/2]``.

    Both give the same probabilities (softmax of ``(-z/2, z/2)`` is ``sigmoid(z)``), and the
    pair is what a two-class multinomial head with a ridge term converges to.
    """
    w, b = np.asarray(coef, dtype=np.float64)[0], np.atleast_1d(np.asarray(intercept, dtype=np.float64))[0]
    return np.stack([-w / 2, w / 2]), np.array([-b / 2, b / 2])


def ordinal_positions(n_classes: int) -> np.ndarray:
    """The ordinal form's class positions ``k - (K - 1) / 2``: class k's weights are this times ``w``
    (centred, so the nevus of benign < suspicious < melanoma shows ``-w``, melanoma ``+w`` and the
    middle class none)."""
    return np.arange(n_classes, dtype=np.float64) - (n_classes - 1) / 2.0


def ordinal_directions(prior: np.ndarray) -> np.ndarray:
    """The faithful ordinal head's sign per concept, ``(C,)`` in {-1, 0, +1}, from a ``(K, C)`` prior
    whose rows are ordered classes: +1 (the concept may only raise the grade) where the classes
    listing it lie above the middle of the scale on average, -1 where they lie below, 0 (no weight)
    where no class lists it or its classes balance at the middle (a concept of the middle class
    alone, which no single grade direction represents)."""
    listed = (np.asarray(prior) > 0).astype(np.float64)
    return np.sign(np.round(ordinal_positions(listed.shape[0]) @ listed, 9)).astype(np.int64)


def contradicting_entries(coef: np.ndarray, prior: np.ndarray, ordinal: bool = False) -> list[tuple[int, int, float]]:
    """``(class, concept, weight)`` indices of the weights ``(K, C)`` that push a concept towards a class
    the store ``prior`` (``> 0``: listed) does not list it under, or away from one it does, and of any
    weight on a concept the store lists under no class (unrelated to every class, it should have none).

    With two classes only the difference of the two rows acts (a head may split one effect as +w and
    -w), so each concept is judged once: by the class its net weight ``|w1 - w0|`` pushes towards,
    which contradicts the store where the store does not list it there. With more, a negative weight
    on a class the concept is not listed under (it speaks against that class) is no contradiction
    where the store lists the concept under some other class. An ``ordinal`` head (rows ``s_k w``,
    one shared vector) is judged once per concept too: by the grade direction its weight moves, against
    :func:`ordinal_directions` of the store, and named by the highest or lowest class it moves towards.
    """
    if ordinal:
        net, direction = coef[-1] - coef[0], ordinal_directions(prior)
        return [(coef.shape[0] - 1 if net[j] > 0 else 0, int(j), float(abs(net[j])))
                for j in np.flatnonzero(net) if np.sign(net[j]) != direction[j]]
    if coef.shape[0] == 2:
        net = coef[1] - coef[0]
        pushed = [(int(net[j] > 0), int(j)) for j in np.flatnonzero(net)]
        return [(k, j, float(abs(net[j]))) for k, j in pushed if not prior[k, j] > 0]
    listed = prior > 0
    unlisted = ~listed.any(0)
    return [(int(k), int(j), float(coef[k, j])) for k, j in zip(*np.nonzero(coef))
            if (coef[k, j] > 0) != listed[k, j] or unlisted[j]]


class LinearHeadMixin:
    """Prediction for a fitted head with ``coef_`` (K, C), ``intercept_`` (K,) and ``classes_``."""

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X: Any) -> np.ndarray:
        """Class logits ``(n, K)``; for two classes, the margin of the second over the first ``(n,)``."""
        z = self._logits(X)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, K)``, columns in the order of ``classes_``."""
        return softmax(self._logits(X), axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`."""
        z = self._logits(X)
        return z - np.logaddexp.reduce(z, axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class label of each sample."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]
