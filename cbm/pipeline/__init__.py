"""The method end to end: inputs -> fit -> baselines -> scoring -> outputs.

- :func:`fit` (also ``cbm.fit``): a data card in, a trained :class:`~cbm.model.ConceptBottleneckModel` out.
- :func:`fit_model`: the same, with the fitted head, the encoded splits and the concept scores;
  :func:`fit_head` fits another head on them (with the concept truth where it takes it).
- :func:`run_experiment`: the method and its baselines, measured and written to a run folder
  (what ``cbm run`` calls).
- :func:`measure_faithfulness`: concept AUROC, sign agreement, interventions, oracle and cue
  leakage of a fitted model on a card that annotates concept truth.
"""

from __future__ import annotations

from cbm.pipeline.experiment import METHODS, run_experiment
from cbm.pipeline.faithfulness import intervention_curve, measure_faithfulness
from cbm.pipeline.fitting import FitResult, fit, fit_head, fit_model, full_coef, make_head
from cbm.pipeline.inputs import SplitData, extract_splits, resolve_card, resolve_concepts
from cbm.pipeline.scoring import evaluate_methods

__all__ = [
    "METHODS",
    "FitResult",
    "SplitData",
    "evaluate_methods",
    "extract_splits",
    "fit",
    "fit_head",
    "fit_model",
    "full_coef",
    "intervention_curve",
    "measure_faithfulness",
    "make_head",
    "resolve_card",
    "resolve_concepts",
    "run_experiment",
]
