"""How well a linear head's weights follow the ABCD rule of dermoscopy (the demo world's truth)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cbm.demo.world import ABCD_CONCEPTS, RULE_WEIGHTS, concept_by_phrase

__all__ = ["abcd_rule_agreement", "abcd_rule_metric"]


def abcd_rule_agreement(
    concept_names: Sequence[str], coef: np.ndarray, class_names: Sequence[str]
) -> dict[str, object]:
    """How well a linear head's weights rank the ABCD letters as the rule does.

    A letter's learnt weight is the head's melanoma-minus-benign-nevus weight on the letter's
    graded concept ("asymmetric shape" for A, ...), minus that on its negative phrase ("symmetric
    shape") when the model has it too: the change in the melanoma-vs-nevus log-odds per standard
    deviation of the concept score. The rule's weights (1.3, 0.1, 0.5, 0.5) give the order
    A > C = D > B (also per standard deviation of each attribute's spread in the world), and the
    agreement is Spearman's rank correlation of the learnt weights with them (ties averaged; 0.95
    is the best a strict order can reach, as C and D tie in the rule).

    Args:
        concept_names: the model's concepts, in the order of ``coef``'s columns.
        coef: ``(n_classes, n_concepts)`` head weights on standardised concept scores.
        class_names: the classes in the order of ``coef``'s rows (must include "benign nevus" and
            "melanoma").

    Returns:
        ``{"weights": {letter: weight or None}, "spearman": r or None, "letters_found": n}``;
        ``spearman`` is None when fewer than three letters have a concept in the model.
    """
    from scipy.stats import spearmanr

    coef = np.asarray(coef, dtype=float)
    names = list(class_names)
    if "melanoma" not in names or "benign nevus" not in names:
        raise ValueError(f"the ABCD rule needs the classes 'benign nevus' and 'melanoma'; got {names}")
    delta = coef[names.index("melanoma")] - coef[names.index("benign nevus")]
    column = {c: j for j, c in enumerate(concept_names)}
    weights: dict[str, float | None] = {}
    for concept in (concept_by_phrase(phrase) for phrase in ABCD_CONCEPTS.values()):
        terms = []
        if concept.phrase in column:
            terms.append(delta[column[concept.phrase]])
        if concept.negative in column:
            terms.append(-delta[column[concept.negative]])
        weights[concept.letter] = float(sum(terms)) if terms else None
    found = [letter for letter, w in weights.items() if w is not None]
    rho = None
    if len(found) >= 3:
        learnt = [weights[letter] for letter in found]
        rule = [RULE_WEIGHTS[letter] for letter in found]
        if len(set(learnt)) > 1:
            rho = float(spearmanr(learnt, rule).statistic)
    return {"weights": weights, "rule_weights": dict(RULE_WEIGHTS), "spearman": rho, "letters_found": len(found)}


def abcd_rule_metric(fit: Any) -> dict[str, object]:
    """:func:`abcd_rule_agreement` of a fitted pipeline's model (``fit.model``): the hook the demo
    datasets' configs give ``cbm run`` (``extra_metrics``), stored as ``metrics["cbm"]["abcd_rule"]``."""
    model = fit.model
    return abcd_rule_agreement(model.bottleneck.concept_names, model.coef, model.classes)
