"""Heads that turn concept scores (or raw features) into class decisions.

- :class:`SparseConceptHead`: the method's head, multinomial (or, for ordered classes, ordinal)
  elastic-net logistic regression fitted along a regularisation path by a torch solver, the point
  chosen on the validation split.
- :class:`DenseConceptHead`, :class:`LinearProbe`, :func:`zero_shot_logits`: the baselines.
- :func:`make_planted_problem`: synthetic concept scores with a known sparse truth (tests, benchmarks).
- :func:`elastic_net_objective`: the objective the sparse head minimises, for any weights.
- :func:`set_from_truth`, :func:`intervention_accuracies`: concept interventions on a linear head.
- :func:`contradicting_entries`: the weights that push a concept against its class in a concept store.
"""

from __future__ import annotations

from cbm.heads._baselines import DenseConceptHead, LinearProbe, zero_shot_logits
from cbm.heads._common import contradicting_entries, ordinal_directions, ordinal_positions
from cbm.heads._interventions import intervention_accuracies, intervention_order, intervention_steps, set_from_truth
from cbm.heads._solver import elastic_net_objective
from cbm.heads._selection import select_path_point, standard_error
from cbm.heads._sparse import SparseConceptHead
from cbm.heads._synthetic import PlantedProblem, make_planted_problem

__all__ = [
    "DenseConceptHead",
    "LinearProbe",
    "PlantedProblem",
    "SparseConceptHead",
    "contradicting_entries",
    "elastic_net_objective",
    "intervention_accuracies",
    "intervention_order",
    "intervention_steps",
    "make_planted_problem",
    "ordinal_directions",
    "ordinal_positions",
    "select_path_point",
    "set_from_truth",
    "standard_error",
    "zero_shot_logits",
]
