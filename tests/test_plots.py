"""The SVG charts parse as XML and carry their labels (escaped)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from cbm.plots import bar_chart, line_chart


def test_line_chart_is_valid_svg_with_series_and_marker():
    svg = line_chart(
        {"val": ([1, 2, 4, 8], [0.5, 0.7, 0.8, 0.82]), "test <ood>": ([1, 2, 4, 8], [0.4, 0.6, 0.7, 0.65])},
        title="Accuracy & sparsity", xlabel="concepts per class", ylabel="accuracy", marker=(4, 0.8), marker_label="selected",
    )
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    assert "test &lt;ood&gt;" in svg and "Accuracy &amp; sparsity" in svg


def test_bar_chart_signs():
    svg = bar_chart(["irregular border", "regular network"], [1.5, -0.5], title="contributions")
    ET.fromstring(svg)
    assert "+1.50" in svg and "-0.50" in svg
    assert svg.count("<rect") == 3  # background + 2 bars


def test_a_label_with_a_control_character_still_makes_valid_svg():
    """XML 1.0 holds no control character (but tab and line breaks): one in a concept name or a
    series made the whole chart unreadable as SVG."""
    ET.fromstring(bar_chart(["irregular\x01border", "veil\x0b"], [1.0, -0.5], title="t\x02"))
    ET.fromstring(line_chart({"val\x1b": ([1, 2], [0.5, 0.6])}, title="a\x00b"))
