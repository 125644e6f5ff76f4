"""Choosing a point on a head's regularisation path on the validation split (never test)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["select_path_point", "standard_error"]


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error ``sqrt(a * (1 - a) / n)`` of an accuracy ``a`` measured on ``n``
    cases: the margin of every one-standard-error rule (path selection, the defaults' checks)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def select_path_point(
    path: Sequence[dict],
    selection: str = "accuracy",
    max_concepts_per_class: float | None = None,
    accuracy_tolerance: float | str = "se",
    n_val: int | None = None,
) -> int:
    """Index of the path point to keep (see :class:`SparseConceptHead` for the rules).

    Args:
        path: dicts with at least ``lambda``, ``val_accuracy`` and ``concepts_per_class``.
        selection: "accuracy" or "concepts".
        max_concepts_per_class: only points at or below this many weights per class compete.
        accuracy_tolerance: "se" (needs ``n_val``) or a float.
        n_val: size of the validation split.
    """
    eligible = [i for i, p in enumerate(path)
                if max_concepts_per_class is None or p["concepts_per_class"] <= max_concepts_per_class + 1e-12]
    if not eligible:
        raise ValueError(
            f"no path point has at most {max_concepts_per_class} concepts per class; "
            "raise max_concepts_per_class or start the lambda grid higher"
        )
    acc = {i: path[i]["val_accuracy"] for i in eligible}
    if selection == "concepts":
        return max(eligible, key=lambda i: (path[i]["concepts_per_class"], acc[i], path[i]["lambda"]))
    best = max(acc.values())
    if accuracy_tolerance == "se":
        if not n_val:
            raise ValueError('accuracy_tolerance="se" needs the validation size n_val')
        margin = standard_error(best, n_val)
    else:
        margin = float(accuracy_tolerance)
    ties = [i for i in eligible if acc[i] >= best - margin - 1e-12]
    if all("val_intervention_accuracy" in path[i] for i in ties):  # intervention-aware: the best curve
        return min(ties, key=lambda i: (-round(path[i]["val_intervention_accuracy"], 9), path[i]["concepts_per_class"],
                                        -acc[i], -path[i]["lambda"]))
    return min(ties, key=lambda i: (path[i]["concepts_per_class"], -acc[i], -path[i]["lambda"]))
