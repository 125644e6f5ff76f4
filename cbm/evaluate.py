"""Metrics for classifiers: accuracy, balanced accuracy, macro-F1, macro AUROC with bootstrap 95%
intervals, and the robustness view of a confounded dataset (in-domain / out-of-domain / gap / average,
worst-group accuracy).

Everything takes plain numpy arrays: ``y`` holds class indices ``0..K-1`` and ``proba`` the
``(n, K)`` predicted probabilities, so any method (concept head, linear probe, zero-shot) is scored
the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "METRIC_NAMES",
    "Estimate",
    "classification_metrics",
    "worst_group_accuracy",
    "robustness_summary",
    "operating_point",
]

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the full sample and its bootstrap percentile interval."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def _check(y: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-D array of class indices; got shape {y.shape}")
    if proba.ndim != 2 or len(proba) != len(y):
        raise ValueError(f"proba must be (n, K) with n = len(y) = {len(y)}; got shape {proba.shape}")
    if len(y) == 0:
        raise ValueError("cannot score an empty split: no samples were given")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise ValueError(f"y must hold class indices 0..{proba.shape[1] - 1} (integers); got {y.dtype} values such as {y[0]!r}")
    if y.min() < 0 or y.max() >= proba.shape[1]:
        raise ValueError(f"labels must lie in 0..{proba.shape[1] - 1}; got {y.min()}..{y.max()}")
    bad = ~np.isfinite(proba).all(1)
    if bad.any():
        raise ValueError(f"proba has non-finite values (NaN or inf) in {int(bad.sum())} of {len(y)} rows, "
                         f"the first at row {int(np.argmax(bad))}; a model that gives them cannot be scored")
    return y.astype(np.int64), proba


def _auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC of each row of ``scores`` (B, n) against boolean ``positive`` (B, n).

    Ties get average ranks; a row with no positive or no negative gives NaN.
    """
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _metrics_rows(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Every metric for each row of ``y`` (B, n) and ``proba`` (B, n, K); NaN where undefined."""
    pred = proba.argmax(2)
    correct = pred == y
    out = {"accuracy": correct.mean(1)}
    recalls, f1s, aucs, seen = [], [], [], []
    for k in range(n_classes):
        is_k, pred_k = y == k, pred == k
        tp = (is_k & pred_k).sum(1)
        support, predicted = is_k.sum(1), pred_k.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(support > 0, tp / support, np.nan))
            denom = support + predicted
            f1s.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
            seen.append(denom > 0)  # true or predicted
        aucs.append(_auroc_rows(proba[:, :, k], is_k))
    recalls_a, aucs_a = np.stack(recalls, 1), np.stack(aucs, 1)
    present = ~np.isnan(recalls_a)
    n_present = present.sum(1)
    with np.errstate(invalid="ignore"):
        # balanced accuracy: mean recall over the classes present in y (sklearn's definition)
        out["balanced_accuracy"] = np.where(n_present > 0, np.nanmean(recalls_a, 1), np.nan)
        # macro-F1 over the classes that are true or predicted (sklearn's default labels); a class
        # neither in the split nor predicted does not count, as in the other two class averages
        seen_a = np.stack(seen, 1)
        out["macro_f1"] = (np.stack(f1s, 1) * seen_a).sum(1) / np.maximum(seen_a.sum(1), 1)
        if n_classes == 2:
            out["macro_auroc"] = aucs_a[:, 1]
        else:
            # one-vs-rest AUROC averaged over the classes present
            out["macro_auroc"] = np.where(n_present > 1, np.nanmean(aucs_a, 1), np.nan)
    return out


def classification_metrics(
    y: np.ndarray,
    proba: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Accuracy, balanced accuracy, macro-F1 and macro AUROC, each with a bootstrap 95% interval.

    The class averages (balanced accuracy, macro-F1, macro AUROC) run over the classes present in
    the split (for macro-F1, also those predicted). The interval is the 2.5-97.5 percentile range
    of a bootstrap stratified by class: each resample draws every class's count from that class,
    so every resample measures the same classes as the full sample.

    Args:
        y: true class indices, shape ``(n,)``.
        proba: predicted class probabilities, shape ``(n, K)``, finite.
        n_bootstrap: resamples for the percentile interval (0 disables the intervals).
        seed: seed of the resampling, so intervals are reproducible.

    Returns:
        ``{metric name: Estimate}`` for the names in :data:`METRIC_NAMES`. A metric that is not
        defined on the sample (AUROC with one class present) has ``value=None``.
    """
    y, proba = _check(y, proba)
    n_classes = proba.shape[1]
    point = {k: float(v[0]) for k, v in _metrics_rows(y[None], proba[None], n_classes).items()}
    boot: dict[str, list[np.ndarray]] = {k: [] for k in METRIC_NAMES}
    rng = np.random.default_rng(seed)
    n = len(y)
    members = [np.flatnonzero(y == k) for k in range(n_classes) if np.any(y == k)]
    # resample in chunks so memory stays at ~chunk * n * K floats
    chunk = max(1, min(n_bootstrap, 2_000_000 // max(1, n * n_classes)))
    for start in range(0, max(0, n_bootstrap), chunk):
        b = min(chunk, n_bootstrap - start)
        idx = np.concatenate([m[rng.integers(0, len(m), (b, len(m)))] for m in members], axis=1)
        for k, v in _metrics_rows(y[idx], proba[idx], n_classes).items():
            boot[k].append(v)
    out = {}
    for k in METRIC_NAMES:
        value = None if np.isnan(point[k]) else point[k]
        vals = np.concatenate(boot[k]) if boot[k] else np.empty(0)
        vals = vals[~np.isnan(vals)]
        if value is None or len(vals) < max(10, n_bootstrap // 2):
            out[k] = Estimate(value)
        else:
            lo, hi = np.percentile(vals, [2.5, 97.5])
            out[k] = Estimate(value, float(lo), float(hi))
    return out


def worst_group_accuracy(y: np.ndarray, pred: np.ndarray, groups: np.ndarray,
                         class_names: Sequence[str] | None = None) -> tuple[float, str]:
    """The lowest accuracy over the (class, group) cells that hold at least one sample.

    Samples without a group value (``None`` or an empty string) belong to no cell.

    Returns:
        ``(accuracy, "class=<k>,group=<g>")`` of the worst cell, the class by its name where
        ``class_names`` (in label order) are given.
    """
    y = np.asarray(y)
    pred = np.asarray(pred)
    groups = np.array(["" if g is None else str(g) for g in np.asarray(groups, dtype=object)])
    worst = (float("inf"), "")
    for k in np.unique(y):
        for g in np.unique(groups[groups != ""]):
            cell = (y == k) & (groups == g)
            if cell.any():
                acc = float((pred[cell] == k).mean())
                if acc < worst[0]:
                    worst = (acc, f"class={class_names[int(k)] if class_names is not None else k},group={g}")
    if not worst[1]:
        raise ValueError("worst_group_accuracy needs at least one sample with a group value")
    return worst


def robustness_summary(id_accuracy: float, ood_accuracy: float | None) -> dict[str, float | None]:
    """In-domain / out-of-domain accuracy, their gap (ID - OOD) and average, as the papers report them."""
    if ood_accuracy is None:
        return {"id_accuracy": id_accuracy, "ood_accuracy": None, "gap": None, "average": None}
    return {
        "id_accuracy": id_accuracy,
        "ood_accuracy": ood_accuracy,
        "gap": id_accuracy - ood_accuracy,
        "average": (id_accuracy + ood_accuracy) / 2,
    }


def _class_rates(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of class ``k`` for each row of ``y``, ``pred`` (B, n); NaN where undefined."""
    pos, hit = y == k, pred == k
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos & hit).sum(1) / pos.sum(1), (~pos & ~hit).sum(1) / (~pos).sum(1)


def operating_point(y: np.ndarray, proba: np.ndarray, classes: list[str], *, n_bootstrap: int = 1000,
                    seed: int = 0) -> dict:
    """Each class's sensitivity and specificity at the model's decision (the most probable class),
    with 95% intervals from the same class-stratified bootstrap as :func:`classification_metrics`,
    and the confusion matrix (rows: truth, columns: prediction), for a clinical model card.

    Returns:
        ``{"n", "confusion", "sensitivity": {class: [value, low, high]}, "specificity": {...}}``;
        ``None`` where the split lacks the class (sensitivity) or every other class (specificity).
    """
    y, proba = _check(y, proba)
    pred = proba.argmax(1)
    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (y, pred), 1)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(y == k) for k in range(n_classes) if np.any(y == k)]
    # resample in chunks, as classification_metrics does: the (resamples, n) index arrays of a large
    # split at once took gigabytes (2.8 GB for 100,000 images)
    rates: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_classes)]
    chunk = max(1, min(n_bootstrap, 2_000_000 // len(y)))
    for start in range(0, max(0, n_bootstrap), chunk):
        b = min(chunk, n_bootstrap - start)
        idx = np.concatenate([m[rng.integers(0, len(m), (b, len(m)))] for m in members], axis=1)
        y_b, pred_b = y[idx], pred[idx]
        for k in range(n_classes):
            rates[k].append(_class_rates(y_b, pred_b, k))
    out: dict = {"n": int(len(y)), "confusion": confusion.tolist(), "sensitivity": {}, "specificity": {}}
    for k, cls in enumerate(classes):
        point = _class_rates(y[None], pred[None], k)
        boot = tuple(np.concatenate([r[i] for r in rates[k]]) if rates[k] else np.empty(0) for i in (0, 1))
        for name, value, samples in (("sensitivity", point[0][0], boot[0]), ("specificity", point[1][0], boot[1])):
            samples = samples[~np.isnan(samples)]
            if np.isnan(value):
                out[name][cls] = [None, None, None]
            elif len(samples) < max(10, n_bootstrap // 2):
                out[name][cls] = [float(value), None, None]
            else:
                lo, hi = np.percentile(samples, [2.5, 97.5])
                out[name][cls] = [float(value), float(lo), float(hi)]
    return out
