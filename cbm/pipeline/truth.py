"""Concept truth as a card annotates it: read from a split's manifest columns, matched to the
model's concepts, and the concept store checked against it on the training split
(:func:`check_store`). :mod:`cbm.pipeline.faithfulness` measures a head against the same truth."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cbm.data import parse_truth
from cbm.pipeline.inputs import SplitData

__all__ = ["MIN_ANNOTATED", "MIN_CHECKED", "UNRELATED_PHI", "card_store_names", "check_store", "check_truth_names",
           "on_concepts", "phi_matrix", "truth_columns", "truth_matrix"]

log = logging.getLogger(__name__)

UNRELATED_PHI = 0.1
"""A concept whose truth has |phi| below this with a class (a small effect by Cohen's convention)
is unrelated to it: any weight it gets counts as disagreeing."""

MIN_ANNOTATED = 5
"""A concept's truth counts (for its levels, and for checking the store) only with at least this many
training images annotated present and as many annotated absent."""

MIN_CHECKED = 100
"""The store check judges a concept only when at least this many training images are annotated
(phi's standard error is then at most about 0.1)."""

def _parse(value: str, column: str, manifest: Any) -> float:
    try:
        return parse_truth(value)
    except ValueError as exc:  # (the manifest check refuses such a cell first; a split built by hand may not)
        raise ValueError(f"manifest {manifest}: concept truth column {column!r}: {exc}") from None


def card_store_names(card) -> list[str]:
    """The concepts of the card's concept store (empty without one, or for a card that is not a ``DataCard``)."""
    from cbm.concepts import load_concepts
    from cbm.data import DataCard

    if not isinstance(card, DataCard):
        return []
    try:
        return list(load_concepts(card).concepts)
    except (FileNotFoundError, ValueError):
        return []


def check_truth_names(card, concept_names: Sequence[str], store_names: Sequence[str] = ()) -> None:
    """Raise when the card's ``concept_truth`` names a concept that is neither a concept of the model
    nor of the card's concept store (a typo would otherwise leave the concept unmeasured in silence)."""
    known = list(dict.fromkeys([*concept_names, *store_names]))
    unmatched = [c for c in getattr(card, "concept_truth", {}) if c not in known]
    if unmatched:
        hints = "; ".join(
            f"{name!r} (closest: {', '.join(repr(c) for c in difflib.get_close_matches(name, known, n=3, cutoff=0.4)) or 'none'})"
            for name in unmatched
        )
        raise ValueError(
            f"card {card.name!r} ({card.path}): concept_truth names concepts that are not concepts of the model or "
            f"the card's concept store: {hints}. Fix the names in the card's concept_truth"
        )


def truth_columns(truth: np.ndarray, labels: np.ndarray) -> list[int]:
    """The columns of a training truth matrix ``(n, m)`` (NaN: not annotated) that have truth to
    agree with: their annotated cases span two classes or more (else no association is defined)."""
    return [j for j in range(truth.shape[1]) if len(np.unique(labels[~np.isnan(truth[:, j])])) >= 2]


def truth_matrix(card, split: SplitData, concept_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The concepts of ``concept_names`` the card has truth for, and their truth ``(n, m)``: 1, 0 or NaN."""
    mapping = getattr(card, "concept_truth", {}) or {}
    if split.extras and len(split.extras) != len(split):
        raise ValueError(f"split {split.name!r} has {len(split)} images but {len(split.extras)} rows of manifest columns "
                         "(extras): give one row per image, or none (then it is not annotated)")
    if (len(split) and not split.extras) or (split.extras and not set(mapping.values()) & set(split.extras[0])):
        mapping = {}  # rows without the annotation columns (a manifest built without them, the manifest check
        # warned; a split built by hand without extras): not annotated
    names = [c for c in concept_names if c in mapping]
    out = np.full((len(split), len(names)), np.nan)
    for j, name in enumerate(names):
        column = mapping[name]
        if split.extras and column not in split.extras[0]:
            raise ValueError(f"manifest {card.manifest_path}: the card's concept_truth names column {column!r} for "
                             f"{name!r}, but the manifest has no such column; add it or fix the card")
        out[:, j] = [_parse(row.get(column, ""), column, card.manifest_path) for row in split.extras]
    return names, out


def on_concepts(truth: tuple[list[str], np.ndarray], names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """A split's truth (:func:`truth_matrix`) on the concepts ``names``: NaN where it has none for one."""
    index = {c: j for j, c in enumerate(truth[0])}
    out = np.full((len(truth[1]), len(names)), np.nan)
    for j, c in enumerate(names):
        if c in index:
            out[:, j] = truth[1][:, index[c]]
    return list(names), out


def phi_matrix(truth: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Phi coefficient of each concept's truth with each class indicator, ``(K, m)`` (NaN: undefined)."""
    out = np.full((n_classes, truth.shape[1]), np.nan)
    for j in range(truth.shape[1]):
        known = ~np.isnan(truth[:, j])
        t = truth[known, j]
        if len(t) < 2:  # not annotated: no association
            continue
        for k in range(n_classes):
            y = (labels[known] == k).astype(float)
            if t.std() > 0 and y.std() > 0:
                out[k, j] = float(np.corrcoef(t, y)[0, 1])
    return out


def check_store(card, train: SplitData, concept_names: Sequence[str], prior: np.ndarray,
                constrains_head: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The class-concept prior (the concept store's, or an explicit list's) less the entries the
    card's concept truth does not bear out.

    A concept is judged where the card annotates it on at least ``MIN_CHECKED`` training images,
    ``MIN_ANNOTATED`` of them present and as many absent (phi's standard error is about
    ``1 / sqrt(n)``, so fewer would drop entries by chance). An entry "concept c belongs to class k"
    of a judged concept is kept only if the truth of c is associated with class k on the training
    split, phi >= ``UNRELATED_PHI``; an entry whose truth is unrelated to the class or argues
    against it, or whose association cannot be computed (c annotated on one class only), is
    dropped, so a faithful head gives it no weight. Other concepts keep their entries. The training
    split only: nothing here sees validation or test data. ``constrains_head``: the checked prior
    constrains the head (else it is only what the head's weights are judged against, and a class
    left with no entry is not warned of).

    Returns:
        The checked prior ``(K, C)`` (a copy) and a record: ``{"checked": True, "concepts_checked",
        "threshold", "dropped": [{"class", "concept", "association"}], "classes_left_without_concepts"}``
        (``association`` None where undefined), or ``{"checked": False, "reason"}``.
    """
    names, truth = truth_matrix(card, train, concept_names)
    present, absent = (truth == 1).sum(0), (truth == 0).sum(0)
    judged = [j for j in range(len(names)) if min(present[j], absent[j]) >= MIN_ANNOTATED and present[j] + absent[j] >= MIN_CHECKED]
    if not judged:
        why = (f"card {card.name!r} names no concept truth columns" if not getattr(card, "concept_truth", None) else
               f"none of the concepts has a truth column in card {card.name!r}" if not names else
               f"no concept of card {card.name!r} is annotated on {MIN_CHECKED} training images with at least "
               f"{MIN_ANNOTATED} present and {MIN_ANNOTATED} absent")
        return np.array(prior, copy=True), {"checked": False, "reason": why}
    classes = [str(c) for c in getattr(card, "class_names", range(prior.shape[0]))]
    phi = phi_matrix(truth, train.labels, prior.shape[0])
    checked = np.array(prior, copy=True)
    dropped = []
    for j in judged:
        c = list(concept_names).index(names[j])
        for k in np.flatnonzero(prior[:, c] > 0):
            if np.isnan(phi[k, j]) or phi[k, j] < UNRELATED_PHI:
                checked[k, c] = 0.0
                dropped.append({"class": classes[k], "concept": names[j],
                                "association": None if np.isnan(phi[k, j]) else round(float(phi[k, j]), 3)})
    emptied = [classes[k] for k in range(prior.shape[0]) if prior[k].any() and not checked[k].any()]
    if dropped:
        log.info("concept store checked against the truth: %d entries not borne out, dropped: %s", len(dropped),
                 ", ".join(f"{d['concept']} ({d['class']}, phi {d['association']})" for d in dropped))
    if emptied and constrains_head:  # a head without a prior is only judged against the checked store
        log.warning("after the store check, %s keep no concept of their own (per class: their bias alone)", ", ".join(emptied))
    return checked, {"checked": True, "concepts_checked": len(judged), "threshold": UNRELATED_PHI, "dropped": dropped,
                     "classes_left_without_concepts": emptied}
