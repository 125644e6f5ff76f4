"""The method end to end: inputs -> fit -> baselines -> scoring -> outputs.

- :func:`fit` (also ``cbm.fit``): a data card in, a trained :class:`~cbm.model.ConceptBottleneckModel` out.
- :func:`fit_model`: the same, with the fitted head, the encoded splits and the concept scores.
- :func:`run_experiment`: the method and its baselines, measured and written to a run folder
  (what ``cbm run`` calls).
"""

from __future__ import annotations

from cbm.pipeline.experiment import METHODS, run_experiment
from cbm.pipeline.fitting import FitResult, fit, fit_model, full_coef, make_head
from cbm.pipeline.inputs import SplitData, extract_splits, resolve_card, resolve_concepts
from cbm.pipeline.scoring import evaluate_methods

__all__ = [
    "METHODS",
    "FitResult",
    "SplitData",
    "evaluate_methods",
    "extract_splits",
    "fit",
    "fit_model",
    "full_coef",
    "make_head",
    "resolve_card",
    "resolve_concepts",
    "run_experiment",
]
