"""Concept calibration: each annotated concept's score read as the probability that it is present.

A standardised concept score says how much more an image looks like the concept than the
training images do on average; it does not say whether the concept is there. Where the card
annotates a concept's truth, :func:`fit_calibration` fits a one-dimensional logistic regression of
the truth on that concept's own score (training split), and the head weighs
``P(present) = sigmoid(slope * score + intercept)`` instead of the score (:func:`calibrate`).

Why: an intervention sets a concept to what a clinician says it is. On scores, "present" has to
be some score level (the mean score of the training images annotated present), and a head that
learnt from graded scores weighs that level as it weighs a typical image, not as certainty, so
setting concepts from the truth can lower accuracy. On probabilities, present is 1 and absent is
0, the ends of the range the head was fitted on, and the head's weights say what certainty of the
concept is worth. The map is monotone in the concept's own score alone, so it keeps every
ranking (concept AUROC is unchanged; reversed, 1 - AUROC, for a concept whose score falls as its
truth rises: a negative slope) and adds nothing another concept's score or the image could carry
(the cue included).

A concept with fewer than :data:`MIN_EACH` training images annotated present or absent is not
calibrated: its slope and intercept are NaN and the head weighs its standardised score. So is one
whose fit does not converge (it cannot diverge: the Newton steps are halved until the loss falls).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__ = ["MIN_EACH", "calibrate", "calibrated", "fit_calibration"]

MIN_EACH = 10
"""A concept is calibrated only with at least this many training images annotated present and absent."""

_L2 = 1.0  # ridge on the slope (scikit-learn's default C = 1): keeps a perfectly separated concept finite
_ITERATIONS = 50


def fit_calibration(scores: np.ndarray, truth: np.ndarray, min_each: int = MIN_EACH) -> np.ndarray:
    """Per-concept logistic calibration of standardised scores against 0/1 truth.

    Args:
        scores: ``(n, C)`` standardised training scores.
        truth: ``(n, C)`` 1 (present), 0 (absent) or NaN (not annotated).
        min_each: the fewest images annotated present and absent a concept needs.

    Returns:
        ``(2, C)`` float32: slope (row 0) and intercept (row 1) per concept; NaN where not calibrated.
    """
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, np.float64)
    if scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} must have the same shape")
    out = np.full((2, scores.shape[1]), np.nan, np.float32)
    for c in range(scores.shape[1]):
        known = ~np.isnan(truth[:, c])
        t = truth[known, c]
        if min((t == 1).sum(), (t == 0).sum()) < min_each:
            continue
        out[:, c] = _logistic_1d(scores[known, c], t)
    return out


def _logistic_1d(x: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of ``P(t = 1) = sigmoid(a x + b)`` by damped Newton (ridge on ``a``);
    NaN, NaN where it does not converge (the concept then stays a score)."""
    def loss(a: float, b: float) -> float:
        u = a * x + b
        return float(np.logaddexp(0.0, u).sum() - (t * u).sum() + 0.5 * _L2 * a * a)

    a, b = 0.0, float(np.log(t.mean() / (1 - t.mean())))
    current = loss(a, b)
    for _ in range(_ITERATIONS):
        p = expit(a * x + b)
        w = p * (1 - p)
        grad = np.array([((p - t) * x).sum() + _L2 * a, (p - t).sum()])
        hess = np.array([[(w * x * x).sum() + _L2, (w * x).sum()], [(w * x).sum(), w.sum() + 1e-12]])
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2  # step halving: the loss never rises, so a separated concept cannot run off
        a, b = a - scale * step[0], b - scale * step[1]
        current = loss(a, b)
        if np.abs(scale * step).max() < 1e-10:
            return a, b
    if np.abs(grad).max() < 1e-6 * len(x) and np.isfinite([a, b]).all():
        return a, b
    return float("nan"), float("nan")


def calibrated(calibration: np.ndarray | None) -> np.ndarray:
    """``(C,)`` bool: the concepts ``calibration`` reads as probabilities (all False for None)."""
    if calibration is None:
        return np.zeros(0, bool)
    return ~np.isnan(np.asarray(calibration)[0])


def calibrate(scores: np.ndarray, calibration: np.ndarray | None) -> np.ndarray:
    """The head's inputs: ``sigmoid(slope * score + intercept)`` for every calibrated concept, the
    standardised score for the others (``calibration`` ``None``: the scores unchanged); float32."""
    scores = np.asarray(scores, np.float32)
    if calibration is None:
        return scores
    on = calibrated(calibration)
    out = scores.copy()
    slope, intercept = np.asarray(calibration, np.float64)[:, on]
    out[..., on] = expit(scores[..., on] * slope + intercept)
    return out.astype(np.float32)
