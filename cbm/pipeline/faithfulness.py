"""Faithfulness: do a head's concepts behave like the concepts they are named after?

Measured wherever the card annotates concept truth (its ``concept_truth`` maps a concept phrase to
a manifest column of 1/0, yes/no, true/false or present/absent; empty = not annotated): the demo
world, and real cards with concept annotations. Every figure reads the truth, never the label
alone, and nothing here chooses anything.

- ``concept_auroc``: per concept, the AUROC of its standardised score against its truth (test split).
- ``sign_agreement``: the share of the head's absolute weight whose sign agrees with the truth's
  association with the class: the phi coefficient of the concept's truth with "is class k" on
  the training split. A weight on a concept unrelated to the label (``|phi| < UNRELATED_PHI``, or
  truth that never varies) counts as disagreeing; weights on concepts without truth (no annotated
  training cases of two classes) are left out (their share is given, ``weight_without_truth``).
- ``intervention``: accuracy in and out of domain when the k most-weighted concepts (k = 0, 1, 2,
  4, 8, ..., all used concepts with truth) are set from the truth as the report's controls do
  (present / absent: the mean score of the training images annotated so; see
  ``ConceptBottleneckModel.presence_levels``), with the cases each step set right and set wrong
  (``changed``: a fall of a few cases either way is noise, :func:`step_test`). ``oracle``: the
  same head type fitted on those truth-derived values (its train and val splits) and measured on
  them: the ceiling.
- ``cue_leakage`` (a card with a two-valued group, e.g. the demo's cue): within each class, the
  cross-validated AUROC of the group from the standardised concept scores (``scores_auroc``) and
  the AUROC of the group from the head's class-vs-rest logit (``logit_auroc``, taken as
  max(a, 1 - a): leaking either way counts), averaged over classes by size, on the in- and
  out-of-domain test splits together; ``logit_auroc_se``, its standard error (Hanley & McNeil per
  class, combined with the same weights).

A card without truth gets ``{"measured": False, "reason": ...}``, never zeros (and ``cue_leakage``,
which needs no truth, where it has the group); one without a confounder ``ood: {"measured": False,
"reason": ...}`` (its test split is in-domain). The oracle puts an unannotated case's value at the
mean of the annotated training cases (:func:`fill_unknown`). ``concept_auroc`` covers every concept
with test truth; a split with no truth (its rows lack the truth columns, as in one built by hand,
or leave them empty) is listed under ``splits_without_truth``, and a part it would be read on says
so, ``{"measured": False, "reason": ...}``: ``concept_auroc`` without test truth, ``intervention``
where no evaluated split has truth (else the curve has the figures of those that have), ``oracle``
also without val truth (it chooses there). ``splits`` names the split each ``id`` / ``ood`` figure is read on: a
confounded card without a ``test_id`` split has its in-domain figures on val, which chose the head.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cbm.heads import intervention_steps, set_from_truth
from cbm.pipeline.cue import auroc_standard_error, cue_leakage
from cbm.pipeline.inputs import SplitData, resolve_card
from cbm.pipeline.scoring import eval_splits
from cbm.pipeline.truth import (
    UNRELATED_PHI,
    card_store_names,
    check_truth_names,
    on_concepts,
    phi_matrix,
    truth_columns,
    truth_matrix,
)

__all__ = [
    "STEP_FALL",
    "auroc_standard_error",
    "cue_leakage",
    "fill_unknown",
    "step_test",
    "intervention_curve",
    "measure_faithfulness",
    "oracle_accuracies",
    "truth_to_values",
    "truth_values",
]

log = logging.getLogger(__name__)

STEP_FALL = 0.005
"""An intervention step falls when its accuracy is more than this (half a point) below the previous
step's: what the targets and ``results.md`` call a fall."""

def _auroc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    keep = ~np.isnan(y)
    if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
        return None
    return float(roc_auc_score(y[keep], s[keep]))


def truth_to_values(truth: np.ndarray, truth_names: Sequence[str], concept_names: Sequence[str],
                    levels: tuple[np.ndarray, np.ndarray] | np.ndarray) -> np.ndarray:
    """``(n, C)``: each annotated case's concept at its present or absent level (``levels`` =
    ``(absent, present)``, ``(C,)`` each), as an intervention sets it; NaN where not annotated."""
    absent, present = levels
    index = {c: i for i, c in enumerate(concept_names)}
    out = np.full((len(truth), len(concept_names)), np.nan, np.float32)
    for j, name in enumerate(truth_names):
        c = index[name]
        out[:, c] = np.where(truth[:, j] == 1, present[c], np.where(truth[:, j] == 0, absent[c], np.nan))
    return out


def truth_values(card, split: SplitData, concept_names: Sequence[str], levels) -> np.ndarray:
    """The card's concept truth of ``split`` as intervention values (see :func:`truth_to_values`)."""
    names, truth = truth_matrix(card, split, concept_names)
    return truth_to_values(truth, names, concept_names, levels)


def intervention_curve(
    coef: np.ndarray, intercept: np.ndarray, concept_names: Sequence[str], levels: tuple[np.ndarray, np.ndarray],
    evaluations: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]], concepts: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Accuracy as the most-weighted concepts are set from the truth, one step per k = 0, 1, 2, 4, ... all.

    Args:
        coef, intercept: the head, ``(K, C)`` and ``(K,)``, on its concept values (standardised
            scores, or calibrated probabilities: ``ConceptBottleneckModel.concept_values``).
        levels: ``(absent, present)`` values per concept (``ConceptBottleneckModel.presence_levels``).
        evaluations: name (e.g. ``"id"``) -> (values ``(n, C)``, labels, truth ``(n, m)``, truth's concept names).
        concepts: the order to intervene in (default: the concepts the head uses and every evaluated
            split annotates on at least one case, by total absolute weight); each must be used by the head.

    Returns:
        The curve ``[{"k", "<name>_accuracy", "<name>_changed", ...}]`` (``changed``, from k = 1 on:
        the cases the step set right, ``gained``, and set wrong, ``lost``) and the concepts in
        intervention order.

    Raises:
        ValueError: a given concept is not the model's, or has no weight in the head (setting it would
            change nothing).
    """
    index = {c: i for i, c in enumerate(concept_names)}
    weight = np.abs(coef).sum(0)
    # a concept no case of an evaluated split is annotated on cannot be set there: it is not a step
    with_truth = set.intersection(*({c for j, c in enumerate(names) if not np.isnan(truth[:, j]).all()}
                                    for _, _, truth, names in evaluations.values())) if evaluations else set()
    if concepts is None:
        # ties by column, as the head's intervention-aware fitting orders them (cbm.heads.intervention_order)
        order = [c for c in sorted(with_truth, key=lambda c: (-weight[index[c]], index[c])) if weight[index[c]] > 0]
    else:
        unknown = [c for c in concepts if c not in index]
        if unknown:
            hints = "; ".join(f"{c!r} (closest: {', '.join(map(repr, difflib.get_close_matches(c, list(index), n=3, cutoff=0.4))) or 'none'})"
                              for c in unknown)
            raise ValueError(f"no such concept in the model: {hints}")
        unused = [c for c in concepts if weight[index[c]] == 0]
        if unused:
            raise ValueError(f"the head gives no weight to {unused}: an intervention on them changes no prediction; "
                             f"the head uses {[c for c in concept_names if weight[index[c]] > 0]}")
        order = list(concepts)
    values = {name: truth_to_values(truth, names, concept_names, levels) for name, (_, _, truth, names) in evaluations.items()}
    curve: list[dict[str, Any]] = []
    before: dict[str, np.ndarray] = {}
    for k in intervention_steps(len(order)):
        point: dict[str, Any] = {"k": k}
        for name, (z, labels, _, _) in evaluations.items():
            z_k = set_from_truth(z, values[name], [index[c] for c in order[:k]])
            right = (z_k @ coef.T + intercept).argmax(1) == labels
            point[f"{name}_accuracy"] = float(right.mean())
            if name in before:  # the cases this step set right and set wrong: is a fall more than noise?
                point[f"{name}_changed"] = {"gained": int((right & ~before[name]).sum()), "lost": int((before[name] & ~right).sum())}
            before[name] = right
        curve.append(point)
    return curve, order


def step_test(changed: dict[str, int]) -> float:
    """Two-sided exact binomial (McNemar) p-value of one curve step: under "the step changes nothing
    on average", each changed case is as likely gained as lost."""
    from scipy.stats import binomtest

    n = changed["gained"] + changed["lost"]
    return 1.0 if n == 0 else float(binomtest(changed["gained"], n).pvalue)


def _sign_agreement(coef: np.ndarray, concept_names: list[str], names: list[str], phi: np.ndarray,
                    classes: Sequence[str]) -> dict[str, Any]:
    col = {c: i for i, c in enumerate(concept_names)}
    agree = disagree = without = 0.0
    disagreeing = []
    for k in range(coef.shape[0]):
        for c in concept_names:
            w = float(coef[k, col[c]])
            if w == 0:
                continue
            if c not in names:
                without += abs(w)
                continue
            a = phi[k, names.index(c)]
            if np.isnan(a) or abs(a) < UNRELATED_PHI or np.sign(a) != np.sign(w):
                disagree += abs(w)
                disagreeing.append({"class": classes[k], "concept": c, "weight": round(w, 4),
                                    "association": None if np.isnan(a) else round(float(a), 3)})
            else:
                agree += abs(w)
    total = agree + disagree
    return {
        "sign_agreement": None if total == 0 else agree / total,
        "weight_without_truth": None if total + without == 0 else without / (total + without),
        "disagreeing": sorted(disagreeing, key=lambda d: -abs(d["weight"])),
    }


def fill_unknown(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``values`` (split -> ``(n, m)`` truth-derived concept values, NaN where a case is not annotated)
    with every unknown value at its column's mean over the annotated training cases (0 where none
    is annotated): the oracle's inputs. Not 0, which is the absent level of a calibrated concept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-unknown column: mean of nothing
        mean = np.nan_to_num(np.nanmean(values["train"], axis=0))
    return {s: np.where(np.isnan(v), mean, v) for s, v in values.items()}


def oracle_accuracies(head: Any, prior: np.ndarray | None, columns: list[int], values: dict[str, np.ndarray],
            splits: dict[str, SplitData], evaluate: dict[str, str]) -> dict[str, Any]:
    """The same head type fitted on the truth-derived values of the concept ``columns`` (``values``:
    split -> ``(n, len(columns))``, unknown truth filled by :func:`fill_unknown`)."""
    from sklearn.base import clone

    est = clone(head)
    # the oracle sees only the annotated columns, so a prior the head carries is cut to them, whether
    # the head needs it (the faithful head) or keeps it unused (its unconstrained twin, cloned from it)
    own = getattr(est, "prior", None)
    if own is not None:
        est.set_params(prior=np.asarray(own)[:, columns])
    elif prior is not None and getattr(est, "needs_prior", lambda: False)():
        est.set_params(prior=prior[:, columns])
    est.fit(values["train"], splits["train"].labels, X_val=values["val"], y_val=splits["val"].labels)
    return {f"{name}_accuracy": float((est.predict(values[split]) == splits[split].labels).mean())
            for name, split in evaluate.items()}


def _without_truth(reason: str, card, splits, scores, coef, intercept, seed: int, inputs) -> dict[str, Any]:
    """Not measured, and why; with the cue leakage where the card has the group (it needs no truth)."""
    leak = cue_leakage(card, splits, scores, coef, intercept, seed, inputs=inputs)
    return {"measured": False, "reason": reason, **({} if leak.get("measured") is False else {"cue_leakage": leak})}


def _curve_and_oracle(model: Any, coef: np.ndarray, intercept: np.ndarray, inputs: dict[str, np.ndarray],
                      splits: dict[str, SplitData], truth: dict[str, tuple[list[str], np.ndarray]], with_truth: list[str],
                      levels: tuple[np.ndarray, np.ndarray], annotated: dict[str, str], head: Any,
                      not_measured: dict[str, Any] | None) -> dict[str, Any]:
    """``intervention`` and ``intervention_order`` on the evaluated splits with truth (``annotated``:
    name -> split), and with ``head`` the ``oracle``; ``not_measured`` (why) stands for the curve and
    the oracle where no evaluated split has truth, for the oracle alone where val has none."""
    if not annotated:
        return {"intervention": not_measured, "intervention_order": [], **({"oracle": not_measured} if head is not None else {})}
    names = model.bottleneck.concept_names
    evaluations = {name: (inputs[s], splits[s].labels, truth[s][1], truth[s][0]) for name, s in annotated.items()}
    out: dict[str, Any] = dict(zip(("intervention", "intervention_order"),
                                   intervention_curve(coef, intercept, names, levels, evaluations)))
    if head is not None and not_measured is not None:
        out["oracle"] = not_measured  # val, where the oracle chooses its path point, has no truth
    elif head is not None:
        col = {c: i for i, c in enumerate(names)}
        columns = [col[c] for c in with_truth]
        values = fill_unknown({s: truth_to_values(truth[s][1], truth[s][0], names, levels)[:, columns]
                               for s in ("train", "val", *annotated.values())})
        out["oracle"] = oracle_accuracies(head, model.concept_prior, columns, values, splits, annotated)
    return out


def _finite_scores(model: Any, splits: dict[str, SplitData]) -> dict[str, np.ndarray]:
    """Each split's concept scores; one with NaN or inf scores (from its features) is refused by name."""
    scores = {s: model.concept_scores_from_features(d.features) for s, d in splits.items()}
    for s, z in scores.items():
        bad = np.flatnonzero(~np.isfinite(z).all(1))
        if len(bad):  # name a few of its images (rows, where the split has fewer paths)
            where = ", ".join(str(splits[s].paths[i]) if i < len(splits[s].paths) else f"row {i}" for i in bad[:3])
            raise ValueError(f"split {s!r}: {len(bad)} case(s) have non-finite concept scores (NaN or inf features), e.g. "
                             f"{where}: re-encode those images (cbm.pipeline.extract_splits) or leave them out of the split")
    return scores


def measure_faithfulness(
    model: Any,
    card: Any,
    splits: dict[str, SplitData],
    *,
    coef: np.ndarray | None = None, intercept: np.ndarray | None = None,
    head: Any = None, store_names: Sequence[str] | None = None,
    seed: int = 0, on_scores: bool = False,
) -> dict[str, Any]:
    """Faithfulness figures of a head on a card with concept truth (see the module docstring).

    Args:
        model: a fitted ``ConceptBottleneckModel`` (its bottleneck scores the splits; its head is
            measured unless ``coef``/``intercept`` give another head on the same concept values).
        card: the ``DataCard`` (its ``concept_truth``, confounder and group column), a card name or a path.
        splits: encoded splits with at least train, val and test (``cbm.pipeline.extract_splits``;
            a split of one's own may stand under any of these names).
        coef, intercept: another head's ``(K, C)`` weights and biases on the model's concept values
            (``on_scores``: on its standardised scores, as the dense concept head is fitted).
        head: an unfitted estimator of the measured head's type, for the ``oracle`` (omitted without one).
        store_names: the concepts truth may name besides the model's (default: the card's concept store).
        seed: seed of the cross-validation folds of ``cue_leakage``.
        on_scores: the head weighs the standardised scores, not the model's (calibrated) concept
            values: interventions then set scores to ``model.score_levels()``.
    """
    card = resolve_card(card) if isinstance(card, (str, os.PathLike)) else card
    names = model.bottleneck.concept_names
    coef, intercept = (model.coef if coef is None else np.asarray(coef, np.float32),
                       model.intercept if intercept is None else np.asarray(intercept, np.float32))
    scores = _finite_scores(model, splits)
    inputs = scores if on_scores else {s: model.concept_values(z) for s, z in scores.items()}
    without_truth = lambda reason: _without_truth(reason, card, splits, scores, coef, intercept, seed, inputs)  # noqa: E731
    if not getattr(card, "concept_truth", None):
        return without_truth(f"card {card.name!r} names no concept truth columns (concept_truth)")
    check_truth_names(card, names, card_store_names(card) if store_names is None else store_names)
    if missing := [s for s in ("train", "val", "test") if s not in splits]:
        raise ValueError(f"measure_faithfulness needs the train, val and test splits (train: each concept's association with "
                         f"the classes; val: the oracle's choice; test: the figures); missing: {', '.join(missing)}: encode "
                         "them with cbm.pipeline.extract_splits(card, model.encoder), or put a split of your own under its name")
    truth = {s: truth_matrix(card, d, names) for s, d in splits.items()}
    if not truth["train"][0]:
        return without_truth(f"none of the model's concepts has a truth column in the manifest of card {card.name!r}")
    test_names, test_truth = truth["test"]
    keep = truth_columns(truth["train"][1], splits["train"].labels)
    if not keep:
        return without_truth(
            f"card {card.name!r} maps concepts to truth columns ({', '.join(truth['train'][0])}), but none annotates "
            "training cases of two classes: fill them in the manifest (1/0; empty = not annotated)")
    with_truth = [truth["train"][0][j] for j in keep]
    truth = {s: on_concepts(t, with_truth) for s, t in truth.items()}  # by name: a split may lack the columns
    unannotated = [s for s, (_, t) in truth.items() if len(t) and np.isnan(t).all()]
    if unannotated:
        log.warning("no concept truth in split(s) %s: no concept is set from the truth there", ", ".join(unannotated))
    levels = model.score_levels() if on_scores else model.presence_levels()
    id_split, ood_split, _ = eval_splits(card, splits)
    evaluate = {"id": id_split, **({"ood": ood_split} if ood_split else {})}
    col = {c: i for i, c in enumerate(names)}
    out: dict[str, Any] = {
        "measured": True, "splits": evaluate,  # where the id / ood figures are read (id on val where there is no test_id)
        **({} if ood_split else {"ood": {"measured": False, "reason": (
            f"card {card.name!r} names no confounder: its test split is in-domain, so the curve and the oracle have "
            "no out-of-domain figure")}}),
        "concepts_with_truth": len(with_truth),
        **({"splits_without_truth": unannotated} if unannotated else {}),
    }
    # read where there is truth; a part no evaluated split annotates says so (never a curve of k = 0 alone)
    annotated = {name: s for name, s in evaluate.items() if s not in unannotated}
    none_there = lambda where: {"measured": False, "reason": (  # noqa: E731
        f"the {where} split of card {card.name!r} annotates no concept truth; fill its truth columns in the manifest")}
    aurocs = {c: _auroc(test_truth[:, j], scores["test"][:, col[c]]) for j, c in enumerate(test_names)}
    known = [v for v in aurocs.values() if v is not None] if "test" not in unannotated else []
    out["concept_auroc"] = none_there("test") if "test" in unannotated else aurocs
    out["mean_concept_auroc"], out["mean_concept_auroc_of"] = (float(np.mean(known)) if known else None), len(known)
    phi = phi_matrix(truth["train"][1], splits["train"].labels, len(model.classes))
    out.update(_sign_agreement(coef, names, with_truth, phi, model.classes))
    not_measured = none_there(" and ".join(dict.fromkeys(evaluate.values()))) if not annotated else (
        none_there("val") if "val" in unannotated else None)
    out.update(_curve_and_oracle(model, coef, intercept, inputs, splits, truth, with_truth, levels, annotated, head, not_measured))
    out["cue_leakage"] = cue_leakage(card, splits, scores, coef, intercept, seed, inputs=inputs)
    return out
