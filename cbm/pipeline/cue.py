"""Cue leakage: can the spurious cue a card names be read back from a head's concept scores or logit?

Within each class, the cross-validated AUROC of the card's two-valued group (the demo's ruler or
ink mark, a hospital, a sex) from the standardised concept scores, and the AUROC of the group from
the head's class-vs-rest logit, on the in- and out-of-domain test splits together
(``faithfulness.cue_leakage`` in every run; :mod:`cbm.pipeline.faithfulness`). A head that cannot
see the cue gives a logit AUROC near 0.5 whatever its scores carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cbm.pipeline.inputs import SplitData

__all__ = ["auroc_standard_error", "cue_leakage"]


def auroc_standard_error(auroc: float, n_positive: int, n_negative: int) -> float:
    """Hanley & McNeil's (1982) standard error of an AUROC measured on ``n_positive`` and
    ``n_negative`` cases (the positives are the cases the AUROC ranks higher): how far a figure
    read on few cases of one value can be from its truth."""
    if n_positive < 1 or n_negative < 1:
        raise ValueError(f"an AUROC needs cases of both values; got {n_positive} positive and {n_negative} negative")
    a = min(max(auroc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (n_positive * n_negative)
    return float(np.sqrt(max(var, 0.0)))


def cue_leakage(card, splits: dict[str, SplitData], scores: dict[str, np.ndarray], coef: np.ndarray,
                intercept: np.ndarray, seed: int = 0, split_names: Sequence[str] = ("test_id", "test"),
                inputs: dict[str, np.ndarray] | None = None, from_scores: bool = True) -> dict[str, Any]:
    """Within-class AUROC of the card's two-valued group (the cue) from the concept scores
    (cross-validated; skipped without ``from_scores``, as it does not depend on the head) and from
    the head's class-vs-rest logit (the head on ``inputs``, default the scores), on ``split_names``
    together (see the module docstring); ``{"measured": False, "reason": ...}`` where it cannot be
    measured."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    names = [s for s in split_names if s in splits and splits[s].groups is not None]
    if not names:
        return {"measured": False, "reason": f"card {card.name!r} names no group (cue) column, or its splits {list(split_names)} lack it"}
    groups = np.concatenate([splits[s].groups for s in names])
    values = sorted(set(groups) - {""})
    if len(values) != 2:
        return {"measured": False, "reason": f"the group column has {len(values)} values ({values[:5]}); the cue "
                                             "leakage needs a two-valued cue"}
    z = np.concatenate([scores[s] for s in names])
    labels = np.concatenate([splits[s].labels for s in names])
    logits = np.concatenate([(inputs or scores)[s] for s in names]) @ coef.T + intercept
    cue = (groups == values[1]).astype(int)
    by_scores, by_logit, logit_se, sizes = [], [], [], []
    for k in np.unique(labels):
        sel = (labels == k) & (groups != "")
        counts = np.bincount(cue[sel], minlength=2)
        if counts.min() < 5:
            continue
        if from_scores:
            folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True, random_state=seed)
            prob = cross_val_predict(LogisticRegression(max_iter=2000), z[sel], cue[sel], cv=folds,
                                     method="predict_proba")[:, 1]
            by_scores.append(float(roc_auc_score(cue[sel], prob)))
        margin = logits[sel, k] - np.delete(logits[sel], k, axis=1).mean(1)
        a = float(roc_auc_score(cue[sel], margin))
        by_logit.append(max(a, 1 - a))
        higher, lower = (counts[1], counts[0]) if a >= 0.5 else (counts[0], counts[1])  # the value ranked higher
        logit_se.append(auroc_standard_error(by_logit[-1], int(higher), int(lower)))
        sizes.append(int(sel.sum()))
    if not sizes:
        return {"measured": False, "reason": f"no class has at least 5 images of each cue value in {', '.join(names)}"}
    return {
        **({"scores_auroc": float(np.average(by_scores, weights=sizes))} if from_scores else {}),
        "logit_auroc": float(np.average(by_logit, weights=sizes)),
        "logit_auroc_se": float(np.sqrt(np.sum((np.asarray(sizes) / sum(sizes)) ** 2 * np.square(logit_se)))),
        "cue": card.group_column, "values": values, "splits": names, "n": int(sum(sizes)),
    }
