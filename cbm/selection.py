"""What a sweep may optimise, and choose by: validation figures only (``optimized_metric``).

``cbm run`` returns the figure to Hydra's sweepers (``cbm.run.sweep_value``), a sweep's summary and
``cbm compare`` mark the run it would choose (:mod:`cbm.pipeline.compare`); all three read the
figure here. Test figures never choose. Kept free of heavy imports: ``cbm --help`` loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["AUTO_METRIC", "VALIDATION_FIGURES", "check_optimized_metric", "selection_figure"]

AUTO_METRIC = "auto"
"""``optimized_metric: auto``: ``cbm.val_worst_group_accuracy`` where the run measured it (the card
has groups, e.g. a confounder, in val), else ``cbm.val_accuracy``."""


VALIDATION_FIGURES = ("val_accuracy", "val_worst_group_accuracy")
"""The figures a sweep may optimise (of any method: ``cbm.val_accuracy``, ``linear_probe.val_accuracy``)."""


def check_optimized_metric(optimized_metric: str, methods: Sequence[str] | None = None, card: Any = None) -> None:
    """Refuse, before any work, an ``optimized_metric`` that is not ``auto`` or ``method.figure`` with a
    validation figure and, given the ``methods`` the run will measure, one of them; given the
    ``card``, a worst-group figure where it names no group column."""
    if optimized_metric == AUTO_METRIC:
        return
    method, _, figure = optimized_metric.partition(".")
    if not method or not figure:
        raise ValueError(f"optimized_metric={optimized_metric!r}: write auto or METHOD.FIGURE, a method and one of its "
                         f"validation figures ({', '.join(VALIDATION_FIGURES)}), e.g. cbm.val_accuracy")
    if methods is not None and method not in methods:
        raise ValueError(f"optimized_metric={optimized_metric!r}: this run measures no method {method!r}; it "
                         f"measures {', '.join(methods)}")
    if not figure.startswith("val_"):
        raise ValueError(
            f"optimized_metric={optimized_metric!r} is not a validation figure: a sweep may only optimise what the "
            "val split says (auto, cbm.val_accuracy, cbm.val_worst_group_accuracy), never a test figure"
        )
    if figure not in VALIDATION_FIGURES:
        raise ValueError(f"optimized_metric={optimized_metric!r}: no validation figure is called {figure!r}; "
                         f"use auto or METHOD.FIGURE with FIGURE one of {', '.join(VALIDATION_FIGURES)}")
    if "worst_group" in figure and card is not None and not getattr(card, "group_column", None):
        raise ValueError(f"optimized_metric={optimized_metric!r}: card {card.name!r} names no group column "
                         f"(group_column), so no worst-group figure is measured; use {method}.val_accuracy or auto")


def selection_figure(metrics: dict[str, dict[str, Any]], optimized_metric: str) -> tuple[str, float | None]:
    """``(method.figure, value)`` of the figure a sweep optimises (``auto``: the faithful head's
    validation worst-group accuracy where the run measured it, else its validation accuracy). A
    figure that is NaN or infinite (a ``metrics.json`` may hold NaN) counts as not measured: None."""
    if optimized_metric == AUTO_METRIC:
        grouped = (metrics.get("cbm") or {}).get("val_worst_group_accuracy") is not None
        optimized_metric = "cbm.val_worst_group_accuracy" if grouped else "cbm.val_accuracy"
    method, _, figure = optimized_metric.partition(".")
    value = (metrics.get(method) or {}).get(figure)
    value = None if value is None else float(value)
    return optimized_metric, value if value is not None and math.isfinite(value) else None
