"""Explanations for clinicians: per-case reports, concept maps, interventions, a model card, a local viewer.

    from cbm.explain import explain_image, render_case_html
    case = explain_image(model, "case1.dcm")          # prediction, flags, findings, maps, similar cases
    case.withheld, case.findings[0].text               # whether the model answers; what it rests on
    case.intervene({"irregular border": "absent"})     # probabilities after a test-time intervention
    html = render_case_html(case)                      # one self-contained HTML file (Jinja2 templates)

``explain_batch`` writes a folder of reports with an index and the model card (``cbm explain``);
``serve`` runs the local upload-and-read web app (``cbm serve``).
"""

from __future__ import annotations

from cbm.explain.batch import BatchResult, CaseInput, collect_inputs, explain_batch
from cbm.explain.card import render_class_card_html
from cbm.explain.case import CaseReport, explain_image
from cbm.explain.findings import Finding, concept_axes
from cbm.explain.maps import ConceptMaps, SpatialEncoding, encode_spatial
from cbm.explain.overlay import heat_overlay
from cbm.explain.render import render_case_html, render_index_html
from cbm.explain.server import ExplainApp, make_server, serve

__all__ = [
    "BatchResult",
    "CaseInput",
    "CaseReport",
    "ConceptMaps",
    "ExplainApp",
    "Finding",
    "SpatialEncoding",
    "collect_inputs",
    "concept_axes",
    "encode_spatial",
    "explain_batch",
    "explain_image",
    "heat_overlay",
    "make_server",
    "render_case_html",
    "render_class_card_html",
    "render_index_html",
    "serve",
]
