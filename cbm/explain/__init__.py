"""Explanations for clinicians: per-case reports, concept maps, interventions, a local viewer.

    from cbm.explain import explain_image, render_case_html
    case = explain_image(model, "case1.dcm")          # prediction, contributions, percentiles, maps
    case.intervene({"irregular border": "absent"})     # probabilities after a test-time intervention
    html = render_case_html(case)                      # one self-contained HTML file

``explain_batch`` writes a folder of reports with an index and a class card (``cbm explain``);
``serve`` runs the local upload-and-read web app (``cbm serve``).
"""

from __future__ import annotations

from cbm.explain.batch import BatchResult, CaseInput, collect_inputs, explain_batch
from cbm.explain.case import ExplainedCase, explain_image, presence_levels
from cbm.explain.maps import ConceptMaps, SpatialEncoding, encode_spatial
from cbm.explain.render import heat_overlay, render_case_html, render_class_card_html, render_index_html
from cbm.explain.server import ExplainApp, make_server, serve

__all__ = [
    "BatchResult",
    "CaseInput",
    "ConceptMaps",
    "ExplainApp",
    "ExplainedCase",
    "SpatialEncoding",
    "collect_inputs",
    "encode_spatial",
    "explain_batch",
    "explain_image",
    "heat_overlay",
    "make_server",
    "presence_levels",
    "render_case_html",
    "render_class_card_html",
    "render_index_html",
    "serve",
]
