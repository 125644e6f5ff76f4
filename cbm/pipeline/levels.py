"""What "present" and "absent" mean for each concept's standardised score, where a card annotates
concept truth: the mean score of the training images annotated so, for a concept annotated at least
:data:`~cbm.pipeline.truth.MIN_ANNOTATED` times each way; else the training scores' 5th and
95th percentiles (:data:`~cbm.model.ABSENT_PERCENTILE`, :data:`~cbm.model.PRESENT_PERCENTILE`), as for
a model without truth. Interventions (the report's controls, the faithfulness curve, intervention-aware
fitting) set a concept to one of them.
"""

from __future__ import annotations

import numpy as np

from cbm.model import ABSENT_PERCENTILE, PRESENT_PERCENTILE
from cbm.pipeline.inputs import SplitData

__all__ = ["levels_from_truth", "truth_levels"]


def levels_from_truth(card, train: SplitData, names: list[str]) -> list[str]:
    """The concepts of ``names`` whose levels are annotated training images' means (the others'
    are percentiles); the model keeps the list (``info["levels_from_truth"]``) for its reports."""
    from cbm.pipeline.truth import truth_matrix

    return _averaged(*truth_matrix(card, train, names))


def _averaged(annotated: list[str], truth: np.ndarray) -> list[str]:
    """The ``annotated`` concepts (columns of ``truth``) annotated present and absent often enough to average."""
    from cbm.pipeline.truth import MIN_ANNOTATED

    return [name for j, name in enumerate(annotated)
            if min(int((truth[:, j] == 1).sum()), int((truth[:, j] == 0).sum())) >= MIN_ANNOTATED]


def truth_levels(card, train: SplitData, names: list[str], scores: np.ndarray) -> np.ndarray | None:
    """``(2, C)``: the standardised training score that means absent (row 0) and present (row 1),
    per concept of ``names``; ``None`` when the card annotates none of them."""
    from cbm.pipeline.truth import truth_matrix

    annotated, truth = truth_matrix(card, train, names)
    if not annotated:
        return None
    levels = np.percentile(scores, [ABSENT_PERCENTILE, PRESENT_PERCENTILE], axis=0).astype(np.float32)
    for name in _averaged(annotated, truth):
        c, j = names.index(name), annotated.index(name)
        levels[:, c] = scores[truth[:, j] == 0, c].mean(), scores[truth[:, j] == 1, c].mean()
    return levels
