"""Scoring every method on every split: in-domain, out-of-domain, validation and worst-group figures.

In-domain / out-of-domain: for a confounded card (``confounder`` set), the test split is the
out-of-domain one (the cue's association reversed) and the in-domain figure comes from the
``test_id`` split when the manifest has one (an in-domain split never used for selection), else
from ``val`` (as KnoBo reports it; then the ID figure is optimistic, and ``id_split`` says so).
For other cards the test split is in-domain and OOD is null.

Validation figures (``val_accuracy``, ``val_worst_group_accuracy``) are what a sweep may
optimise: the val split chooses, test only reports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbm.evaluate import classification_metrics, robustness_summary, worst_group_accuracy
from cbm.pipeline.inputs import SplitData

__all__ = ["eval_splits", "evaluate_methods"]


def eval_splits(card, splits: dict[str, SplitData]) -> tuple[str, str | None, str]:
    """(ID split, OOD split or None, note) for the card; see the module docstring."""
    if getattr(card, "confounder", None):
        id_split = "test_id" if "test_id" in splits else "val"
        return id_split, "test", "" if id_split == "test_id" else "ID measured on val (also used for selection)"
    return "test", None, ""


def _score(y: np.ndarray, proba: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    m = classification_metrics(y, proba, n_bootstrap=n_bootstrap, seed=seed)
    out: dict[str, Any] = {k: e.value for k, e in m.items()}
    out.update({f"{k}_ci": [e.ci_low, e.ci_high] for k, e in m.items()})
    out["n"] = int(len(y))
    return out


def _worst_group(split: SplitData, proba: np.ndarray, class_names) -> tuple[float | None, str | None]:
    if split.groups is None or not (split.groups != "").any():
        return None, None
    return worst_group_accuracy(split.labels, proba.argmax(1), split.groups, class_names)


def evaluate_methods(
    card,
    probas: dict[str, dict[str, np.ndarray]],
    splits: dict[str, SplitData],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``metrics.json``'s figures: method -> figures, from each method's probabilities per split."""
    id_split, ood_split, note = eval_splits(card, splits)
    results: dict[str, dict[str, Any]] = {}
    for method, by_split in probas.items():
        test = splits["test"]
        r: dict[str, Any] = {"test": _score(test.labels, by_split["test"], n_bootstrap, seed)}
        r["id"] = r["test"] if id_split == "test" else _score(splits[id_split].labels, by_split[id_split], n_bootstrap, seed)
        r["ood"] = r["test"] if ood_split == "test" else None
        r.update(robustness_summary(r["id"]["accuracy"], None if r["ood"] is None else r["ood"]["accuracy"]))
        r["id_split"], r["ood_split"] = id_split, ood_split
        if note:
            r["note"] = note
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
            r[k] = r["test"][k]
        r["worst_group_accuracy"], r["worst_group"] = _worst_group(test, by_split["test"], card.class_names)
        if "val" in by_split:
            val = splits["val"]
            r["val_accuracy"] = float((by_split["val"].argmax(1) == val.labels).mean())
            r["val_worst_group_accuracy"], _ = _worst_group(val, by_split["val"], card.class_names)
        results[method] = r
    return results
