"""Synthetic concept scores with a planted sparse truth, for tests and the head benchmark.

Real concept scores (cosines of one image with many concept texts) are strongly correlated: a
few image-level factors move most scores together. The generator mimics that with a factor model,
plants a sparse class-concept weight matrix, and draws labels from the resulting softmax, so a
head can be checked for what it should recover (the planted concepts) and for how accurate it
can be (the planted model's own accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PlantedProblem", "make_planted_problem"]


@dataclass
class PlantedProblem:
    """Train/val/test concept scores (standardised with train statistics) and the planted model."""

    X_train: np.ndarray  # (n_train, C) float32
    y_train: np.ndarray  # (n_train,) int64 class indices
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    coef: np.ndarray  # (K, C) planted weights, in the standardised space
    intercept: np.ndarray  # (K,)

    @property
    def support(self) -> np.ndarray:
        """(K, C) mask of the planted non-zero weights."""
        return self.coef != 0


def make_planted_problem(
    n_train: int = 50_000,
    n_val: int = 10_000,
    n_test: int = 0,
    n_concepts: int = 512,
    n_classes: int = 10,
    concepts_per_class: int = 8,
    n_factors: int = 16,
    signal: float = 1.5,
    random_state: int | None = 0,
) -> PlantedProblem:
    """Draw a multinomial logistic problem whose true weights have ``concepts_per_class`` non-zeros per row.

    Scores: ``X = F A + E`` with ``n_factors`` shared factors (loading 0.5) and unit noise, then
    standardised with the training split's mean and std. Each class gets ``concepts_per_class``
    concepts, weights of magnitude ``signal * U(0.5, 1.5)``, three in four positive. Labels are
    sampled from ``softmax(X coef^T + intercept)``.
    """
    if concepts_per_class > n_concepts:
        raise ValueError(f"concepts_per_class={concepts_per_class} exceeds n_concepts={n_concepts}")
    rng = np.random.default_rng(random_state)
    loadings = (0.5 * rng.standard_normal((n_factors, n_concepts))).astype(np.float32)
    coef = np.zeros((n_classes, n_concepts))
    for k in range(n_classes):
        idx = rng.choice(n_concepts, concepts_per_class, replace=False)
        coef[k, idx] = signal * rng.uniform(0.5, 1.5, concepts_per_class) * rng.choice([1, 1, 1, -1], concepts_per_class)
    intercept = 0.3 * rng.standard_normal(n_classes)

    def scores(n: int) -> np.ndarray:
        factors = rng.standard_normal((n, n_factors), dtype=np.float32)
        return factors @ loadings + rng.standard_normal((n, n_concepts), dtype=np.float32)

    raw = [scores(n) for n in (n_train, n_val, n_test)]
    mean, std = raw[0].mean(0), raw[0].std(0)
    X = [((r - mean) / std).astype(np.float32) for r in raw]

    def labels(x: np.ndarray) -> np.ndarray:
        z = x.astype(np.float64) @ coef.T + intercept
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p.cumsum(1) < rng.random((len(x), 1))).sum(1).clip(0, n_classes - 1).astype(np.int64)

    ys = [labels(x) for x in X]
    return PlantedProblem(X[0], ys[0], X[1], ys[1], X[2], ys[2], coef, intercept)
