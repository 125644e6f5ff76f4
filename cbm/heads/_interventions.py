"""Concept interventions on a linear head: setting concepts to their true value, and training for it.

An intervention replaces a concept's score by the value that means "present" or "absent" (the
truth-derived value; NaN where a case is not annotated, which keeps its score). The faithfulness
curve (``cbm.pipeline.faithfulness``) intervenes on the k most-weighted concepts, k = 0, 1, 2, 4,
..., all; the sparse head's intervention-aware training (:class:`~cbm.heads.SparseConceptHead`
with concept truth) fits on copies of the training scores intervened in that same way, so that
its weights also hold when a clinician sets a concept (the idea of CEM's random interventions and
IntCEM's learning to receive help, Espinosa Zarlenga et al. 2022, 2023, for a linear head).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["intervened_copies", "intervention_accuracies", "intervention_order", "intervention_steps", "set_from_truth"]


def intervention_steps(n: int) -> list[int]:
    """The numbers of intervened concepts the curve visits: 0, 1, 2, 4, 8, ... and ``n``."""
    return sorted({0, n, *(k for k in (2**i for i in range(20)) if k < n)})


def set_from_truth(X: np.ndarray, truth: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """A copy of ``X`` whose ``columns`` hold the truth-derived values where they are known."""
    X = np.array(X, copy=True)
    for c in columns:
        known = ~np.isnan(truth[:, c])
        X[known, c] = truth[known, c]
    return X


def intervention_order(coef: np.ndarray, annotated: np.ndarray) -> list[int]:
    """Columns the head uses and the truth annotates, by total absolute weight (largest first)."""
    weight = np.abs(coef).sum(0)
    used = [c for c in range(coef.shape[1]) if weight[c] > 0 and annotated[c]]
    return sorted(used, key=lambda c: (-weight[c], c))


def intervention_accuracies(coef: np.ndarray, intercept: np.ndarray, X: np.ndarray, y: np.ndarray,
                            truth: np.ndarray) -> list[float]:
    """Accuracy of the head ``(K, C)``/``(K,)`` on ``X`` as its k most-weighted annotated concepts
    are set from ``truth`` (same shape as ``X``), one value per :func:`intervention_steps` k."""
    order = intervention_order(coef, ~np.all(np.isnan(truth), axis=0))
    return [float(((set_from_truth(X, truth, order[:k]) @ coef.T + intercept).argmax(1) == y).mean())
            for k in intervention_steps(len(order))]


def intervened_copies(X: np.ndarray, truth: np.ndarray, order: Sequence[int] | None) -> list[np.ndarray]:
    """The training copies of intervention-aware fitting: with ``order``, one copy per step of
    :func:`intervention_steps` (its k first concepts set from the truth, k >= 1); and always one
    copy with every annotated concept set (all truth known)."""
    annotated = [c for c in range(X.shape[1]) if not np.all(np.isnan(truth[:, c]))]
    copies = []
    if order:
        copies = [set_from_truth(X, truth, order[:k]) for k in intervention_steps(len(order)) if 0 < k]
    if not order or set(order) != set(annotated):
        copies.append(set_from_truth(X, truth, annotated))
    return copies
