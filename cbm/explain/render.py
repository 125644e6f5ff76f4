"""Self-contained HTML pages: the case report, the batch index and the class card.

Every page is one file that makes no request: the image and concept maps are inline ``data:``
JPEGs, charts are inline SVG (:mod:`cbm.plots`), the style sheet and the intervention script are
inlined from ``cbm/explain/assets``, and a Content-Security-Policy forbids anything else (the
script is allowed by its hash). Pages read on a phone (one column, no horizontal scrolling) and
print cleanly (controls hidden). Text from the model (class and concept names) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from html import escape
from importlib import resources
from typing import Any

import numpy as np

from cbm.explain.case import ABSENT_PERCENTILE, PRESENT_PERCENTILE, ExplainedCase, presence_levels
from cbm.model import ConceptBottleneckModel, ConceptContribution
from cbm.plots import bar_chart, line_chart

__all__ = [
    "render_case_html",
    "render_index_html",
    "render_class_card_html",
    "render_page",
    "page_csp",
    "heat_overlay",
    "IndexRow",
]

DISCLAIMER = (
    "Research software, not a medical device. The model decides only from the concept scores shown; "
    "check each concept against the image before relying on it."
)
# Anchor colours of the Turbo colour map (Mikhailov 2019), from cold to hot.
_TURBO = np.array(
    [[48, 18, 59], [70, 134, 251], [27, 229, 181], [164, 252, 60], [251, 185, 56], [227, 68, 10], [122, 4, 3]],
    dtype=np.float32,
)


# ---------------------------------------------------------------------------- page shell
@cache
def _asset(name: str) -> str:
    return resources.files("cbm.explain").joinpath("assets", name).read_text(encoding="utf-8")


def page_csp(*, script: bool = False, form_action: str = "'none'") -> str:
    """The Content-Security-Policy of a page: nothing but inline data, and our script by its hash.

    The same policy is in each page's ``<meta>`` tag and, from ``cbm serve``, in the HTTP header.
    """
    src = "'none'"
    if script:
        digest = base64.b64encode(hashlib.sha256(_asset("report.js").encode("utf-8")).digest()).decode("ascii")
        src = f"'sha256-{digest}'"
    return (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {src}; "
        f"base-uri 'none'; form-action {form_action}"
    )


def render_page(
    title: str,
    body: str,
    *,
    subtitle: str = "",
    nav: Mapping[str, str] | None = None,
    data: Any = None,
    form_action: str = "'none'",
) -> str:
    """A complete HTML page around ``body`` (trusted HTML) with the shared style and policy.

    Args:
        title: page title (escaped).
        subtitle: one line under the title (escaped).
        nav: link text -> href, shown under the title.
        data: if given, embedded as JSON (``<script type="application/json" id="cbm-data">``) and
            the intervention script is included.
        form_action: CSP ``form-action`` source (``'self'`` for the upload page).
    """
    script = _asset("report.js") if data is not None else None
    links = "".join(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in (nav or {}).items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{page_csp(script=script is not None, form_action=form_action)}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{escape(title)}</title>",
        f"<style>{_asset('report.css')}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{escape(title)}</h1>",
        f'<p>{escape(subtitle)}</p>' if subtitle else "",
        f"<nav>{links}</nav>" if links else "",
        "</header>",
        body,
        f"<footer>{escape(DISCLAIMER)}</footer>",
    ]
    if data is not None:
        blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
        parts.append(f'<script type="application/json" id="cbm-data">{blob}</script>')
        parts.append(f"<script>{script}</script>")
    parts += ["</body>", "</html>"]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------- images
def _jpeg_data_uri(image: np.ndarray, quality: int = 85) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _turbo_lut(n: int = 256) -> np.ndarray:
    """``(n, 3)`` float32 colours from cold to hot, interpolated between the Turbo anchors."""
    pos = np.linspace(0.0, 1.0, n) * (len(_TURBO) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_TURBO) - 2)
    frac = (pos - lo)[:, None].astype(np.float32)
    return _TURBO[lo] * (1.0 - frac) + _TURBO[lo + 1] * frac


_TURBO_LUT = _turbo_lut()


def _colourise(heat: np.ndarray) -> np.ndarray:
    """``(h, w)`` values in [0, 1] -> ``(h, w, 3)`` Turbo colours (float32, 0-255), by table lookup."""
    return _TURBO_LUT[np.rint(np.clip(heat, 0.0, 1.0) * (len(_TURBO_LUT) - 1)).astype(np.intp)]


def heat_overlay(image: np.ndarray, heat: np.ndarray, crop: tuple[int, int, int], *, opacity: float = 0.6) -> np.ndarray:
    """Lay a concept map over the image.

    Args:
        image: ``(H, W, 3)`` uint8.
        heat: ``(h, w)`` map in [0, 1] over the encoder's crop (row 0 at the top), upsampled bilinearly.
        crop: ``(left, top, side)`` of that crop in ``image`` pixels; outside it the image is dimmed.
        opacity: colour opacity at the hottest cell (it fades to none at the coldest).
    """
    from PIL import Image

    left, top, side = crop
    up = np.asarray(Image.fromarray(np.asarray(heat, np.float32), mode="F").resize((side, side), Image.Resampling.BILINEAR))
    up = np.clip(up, 0.0, 1.0)
    out = image.astype(np.float32) * 0.5  # dim what the encoder did not see
    region = image[top : top + side, left : left + side].astype(np.float32)
    alpha = opacity * up[..., None]
    out[top : top + side, left : left + side] = region * (1.0 - alpha) + _colourise(up) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- small pieces
def _pct(p: float) -> str:
    return f"{100.0 * p:.1f}%"


def _percentile(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.0f}"


def _signed(v: float) -> str:
    cls = "pos" if v >= 0 else "neg"
    return f'<span class="{cls}">{v:+.2f}</span>'


def _bar(p: float, *, after: bool = False) -> str:
    return f'<div class="bar{" after" if after else ""}"><span style="width:{100.0 * p:.1f}%"></span></div>'


def _score_kind(model) -> str:
    """How a concept score is made, in words (the bottleneck's centring and nuisance prompts)."""
    how = model.bottleneck.debiasing
    text = "cosine with the concept's text direction" + (", centred on the mean concept" if how["centred"] else "")
    if how["nuisance_prompts"]:
        text += "; directions of " + ", ".join(f"\u201c{p}\u201d" for p in how["nuisance_prompts"]) + " removed"
    return text


def _facts(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<dt>{escape(str(k))}</dt><dd>{_value_html(v)}</dd>" for k, v in items.items() if v not in (None, "", {}, []))
    return f'<dl class="facts">{rows}</dl>' if rows else '<p class="muted">none recorded</p>'


def _value_html(v: Any) -> str:
    """A JSON value as HTML: dicts as nested fact lists, short lists inline, floats to 4 digits."""
    if isinstance(v, Mapping):
        return _facts(v)
    if isinstance(v, float):
        return escape(f"{v:.4g}") if math.isfinite(v) else escape(str(v))
    if isinstance(v, (list, tuple)):
        shown = ", ".join(escape(f"{x:.4g}" if isinstance(x, float) else str(x)) for x in v[:12])
        return shown + (f" … ({len(v)} values)" if len(v) > 12 else "")
    return escape(str(v))


def _contribution_table(rows: Sequence[ConceptContribution]) -> str:
    body = "".join(
        f"<tr><td>{escape(c.concept)}</td><td class=\"num opt\">{c.weight:+.3f}</td><td class=\"num opt\">{c.score:+.2f}</td>"
        f"<td class=\"num\">{_percentile(c.percentile)}</td><td class=\"num\">{_signed(c.contribution)}</td></tr>"
        for c in rows
    )
    return (
        '<div class="scroll"><table><thead><tr><th>concept</th><th class="num opt">weight</th>'
        '<th class="num opt">score (SD)</th><th class="num">percentile</th><th class="num">contribution</th></tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _contributions_section(case: ExplainedCase, cls: str, top_k: int, section_id: str, role: str) -> str:
    expl = case.explanation
    rows = expl.top_concepts(cls, top_k)
    total = len(expl.contributions[cls])
    head = f'<h3>{escape(role)}: {escape(cls)} <span class="muted">({_pct(expl.probabilities[cls])})</span></h3>'
    if not rows:
        return (
            f'<div id="{section_id}" data-class="{escape(cls)}">{head}<p class="muted">No concept has a weight for '
            f"this class: its logit is its bias alone ({expl.intercepts[cls]:+.2f}).</p></div>"
        )
    chart = bar_chart([c.concept for c in rows], [c.contribution for c in rows], title=f"Top contributions to {cls}")
    rest = expl.contributions[cls][top_k:]
    unlisted = f" (the {len(rest)} not listed add {sum(c.contribution for c in rest):+.2f})" if rest else ""
    note = f'<p class="muted">Logit = bias {expl.intercepts[cls]:+.2f} + the {total} contributions{unlisted}.</p>'
    return f'<div id="{section_id}" data-class="{escape(cls)}">{head}{chart}{_contribution_table(rows)}{note}</div>'


def _probability_table(case: ExplainedCase) -> str:
    expl = case.explanation
    classes = list(expl.probabilities)
    rows = []
    for k in sorted(range(len(classes)), key=lambda i: -expl.probabilities[classes[i]]):
        c, p = classes[k], expl.probabilities[classes[k]]
        rows.append(
            f'<tr data-class="{escape(c)}" data-p="{p:.6g}"><td>{escape(c)}</td>'
            f'<td><span class="value">{_pct(p)}</span>{_bar(p)}</td>'
            f'<td data-after-class="{k}" data-p="{p:.6g}"><span class="value">{_pct(p)}</span>{_bar(p, after=True)}</td></tr>'
        )
    return (
        '<div class="scroll"><table id="probabilities"><thead><tr><th>class</th>'
        '<th style="width:35%">probability as seen</th><th style="width:35%">with your changes</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _maps_section(case: ExplainedCase) -> str:
    expl = case.explanation
    figures = [
        f'<figure class="case-image"><img id="case-image" src="{_jpeg_data_uri(case.image)}" '
        f'alt="the image" width="{case.image.shape[1]}" height="{case.image.shape[0]}">'
        "<figcaption><b>The image</b> as read</figcaption></figure>"
    ]
    if case.maps is None:
        return (
            '<section id="maps"><h2>Where the concepts are seen</h2>'
            f'{figures[0]}<p class="muted">Concept maps were not computed for this report.</p></section>'
        )
    by_concept = {c.concept: c for c in expl.contributions[expl.predicted]}
    runner = {c.concept: c for c in expl.contributions.get(expl.runner_up or "", [])}
    cards = []
    for name, heat in zip(case.maps.concepts, case.maps.maps):
        uri = _jpeg_data_uri(heat_overlay(case.image, heat, case.crop), quality=80)
        lines = []
        for cls, table in ((expl.predicted, by_concept), (expl.runner_up, runner)):
            if cls is not None and name in table:
                lines.append(f"{_signed(table[name].contribution)} to {escape(cls)}")
        c = by_concept.get(name) or runner.get(name)
        pct = "" if c is None or c.percentile is None else f"; score higher than {c.percentile:.0f}% of training images"
        cards.append(
            f'<figure class="concept-map" data-concept="{escape(name)}"><img src="{uri}" alt="map of {escape(name)}">'
            f"<figcaption><b>{escape(name)}</b><br>{'; '.join(lines)}{escape(pct)}</figcaption></figure>"
        )
    method = {"patch-tokens": "similarity of each image patch to the concept",
              "grad-cam": "Grad-CAM of the concept score"}.get(case.maps.method, case.maps.method)
    height, width = case.image.shape[:2]
    crop_note = "" if case.crop[2] == min(height, width) == max(height, width) else (
        " The encoder sees the centred square; the dimmed margins are outside it."
    )
    return (
        '<section id="maps"><h2>Where the concepts are seen</h2>'
        f'<div class="cols">{figures[0]}<div><p class="muted">Warm colours mark where each concept is most similar '
        f"within this image ({escape(method)}), relative to the rest of the image; how strongly the concept is "
        f"present is its score.{crop_note}</p></div></div>"
        f'<div class="maps">{"".join(cards)}</div></section>'
    )


def _intervention_data(case: ExplainedCase, model: ConceptBottleneckModel) -> tuple[dict[str, Any], list[int]]:
    """The head restricted to concepts with a weight, this case's scores, and the presence levels."""
    used = [int(j) for j in np.flatnonzero(np.any(model.coef != 0, axis=0))]
    absent, present = presence_levels(model)
    names = model.bottleneck.concept_names
    scores = np.array([case.explanation.scores[names[j]] for j in used], np.float64)

    def r(x: Any) -> list:
        return [float(f"{v:.7g}") for v in np.asarray(x, np.float64).ravel()]

    data = {
        "classes": model.classes,
        "intercept": r(model.intercept),
        "concepts": [names[j] for j in used],
        "weights": [r(model.coef[k, used]) for k in range(len(model.classes))],
        "scores": r(scores),
        "present": r(present[used]),
        "absent": r(absent[used]),
    }
    return data, used


def _intervention_section(case: ExplainedCase, model: ConceptBottleneckModel, top_k: int) -> tuple[str, dict[str, Any]]:
    data, used = _intervention_data(case, model)
    expl = case.explanation
    names = model.bottleneck.concept_names
    position = {names[j]: i for i, j in enumerate(used)}
    shown = [c for c in (case.maps.concepts if case.maps else []) if c in position]
    for cls in (expl.predicted, expl.runner_up):
        for c in expl.top_concepts(cls, top_k) if cls else []:
            if c.concept not in shown:
                shown.append(c.concept)
    rest = [c for c in data["concepts"] if c not in shown]
    pct = {c.concept: c.percentile for cls in expl.contributions for c in expl.contributions[cls]}

    def row(name: str) -> str:
        i = position[name]
        group = f"c{i}"
        radios = "".join(
            f'<label><input type="radio" name="{group}" value="{v}" data-concept="{i}"{" checked" if v == "seen" else ""}>{t}</label>'
            for v, t in (("seen", "as seen"), ("present", "present"), ("absent", "absent"))
        )
        return (
            f'<tr data-concept-row="{escape(name)}"><td>{escape(name)}</td><td class="num opt">{data["scores"][i]:+.2f}</td>'
            f'<td class="num">{_percentile(pct.get(name))}</td><td class="choices">{radios}</td></tr>'
        )

    def table(names_: list[str]) -> str:
        return (
            '<div class="scroll"><table><thead><tr><th>concept</th><th class="num opt">score (SD)</th>'
            f'<th class="num">percentile</th><th>set to</th></tr></thead><tbody>{"".join(row(n) for n in names_)}</tbody></table></div>'
        )

    more = (
        f"<details><summary>All {len(rest)} other concepts the model uses</summary>{table(rest)}</details>" if rest else ""
    )
    html = (
        '<section id="intervene"><h2>What if a concept were present or absent?</h2>'
        "<noscript><p class=\"notice\">Interventions need JavaScript, which is off in this viewer.</p></noscript>"
        '<div class="needs-js">'
        f'<p class="muted">Mark a concept you see (or do not see) in the image; the probabilities above follow in the '
        f'"with your changes" column. Present sets the score to the training images\' {PRESENT_PERCENTILE:.0f}th '
        f"percentile, absent to their {ABSENT_PERCENTILE:.0f}th.</p>"
        '<p id="after-summary" aria-live="polite"></p>'
        f'{table(shown)}{more}<p><button type="button" id="reset-interventions">Reset</button></p></div></section>'
    )
    return html, data


# ---------------------------------------------------------------------------- pages
def render_case_html(
    case: ExplainedCase,
    model: ConceptBottleneckModel | None = None,
    *,
    top_k: int = 5,
    nav: Mapping[str, str] | None = None,
    generated: str | None = None,
) -> str:
    """The report of one case: prediction, contributions, concept maps and intervention controls.

    Args:
        case: from :func:`cbm.explain.explain_image`.
        model: the model (default: the one the case was explained with).
        top_k: contributions listed per class.
        nav: links in the header (e.g. ``{"All cases": "index.html", "Model card": "classes.html"}``).
        generated: the date line (default: now, UTC, to the minute).
    """
    model = model or case.model
    if model is None:
        raise ValueError("render_case_html needs the model: pass it, or explain the case with explain_image(model, ...)")
    expl = case.explanation
    p = expl.probabilities[expl.predicted]
    truth = ""
    if case.truth is not None:
        mark = '<span class="ok">agrees</span>' if case.truth == expl.predicted else '<span class="bad">differs</span>'
        truth = f'<p id="truth" data-truth="{escape(case.truth)}">Known label: <b>{escape(case.truth)}</b> ({mark})</p>'
    warnings = ""
    if case.warnings:
        warnings = ('<div id="input-warnings" class="bad"><p><b>Check this image:</b></p><ul>'
                    + "".join(f"<li>{escape(w)}</li>" for w in case.warnings) + "</ul></div>")
    prediction = (
        f'<section id="prediction" data-predicted="{escape(expl.predicted)}">{warnings}'
        f'<p class="headline">Prediction: <strong>{escape(expl.predicted)}</strong> ({_pct(p)})'
        + (f'; runner-up {escape(expl.runner_up)} ({_pct(expl.probabilities[expl.runner_up])})' if expl.runner_up else "")
        + f"</p>{truth}{_probability_table(case)}</section>"
    )
    contributions = ['<section id="contributions"><h2>Why: the concepts that weighed most</h2>',
                     '<p class="muted">Contribution = the class\'s weight on a concept x the concept\'s score in this image '
                     "(in standard deviations from the training mean; the percentile places it among the training "
                     "images). Positive contributions argue for the class, negative against.</p>",
                     '<div class="cols">',
                     _contributions_section(case, expl.predicted, top_k, "contrib-predicted", "Predicted")]
    if expl.runner_up is not None:
        contributions.append(_contributions_section(case, expl.runner_up, top_k, "contrib-runner-up", "Runner-up"))
    contributions.append("</div></section>")
    intervene, data = _intervention_section(case, model, top_k)
    facts = {
        "model encoder": model.encoder_name,
        "concepts": f"{model.bottleneck.n_concepts} ({model.concepts_per_class():.1f} with a weight per class on average)",
        "concept scores": _score_kind(model),
        "concept maps": case.maps.method if case.maps else "not computed",
        **{f"image {k.replace('_', ' ')}": v for k, v in case.meta.items()},
    }
    details = f'<section id="details"><h2>Details</h2>{_facts(facts)}</section>'
    when = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = prediction + _maps_section(case) + "".join(contributions) + intervene + details
    return render_page(f"Case report: {case.label}", body, subtitle=f"cbm explanation, generated {when}", nav=nav, data=data)


@dataclass
class IndexRow:
    """One line of the batch index: a report, or an input that could not be explained."""

    label: str
    href: str | None = None
    case: ExplainedCase | None = None
    error: str | None = None
    truth: str | None = None


def _thumbnail(case: ExplainedCase, side: int = 96) -> str:
    from PIL import Image

    img = Image.fromarray(case.image)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _jpeg_data_uri(np.asarray(img), quality=75)


def render_index_html(rows: Sequence[IndexRow], model: ConceptBottleneckModel, *, nav: Mapping[str, str] | None = None,
                      title: str = "Case reports") -> str:
    """The batch index: one row per input with its prediction, top concept and a link to its report."""
    any_truth = any(r.truth is not None for r in rows)
    body_rows = []
    n_truth = n_right = 0
    for r in rows:
        if r.case is None:
            body_rows.append(
                f'<tr class="failed"><td></td><td>{escape(r.label)}</td><td colspan="{4 if any_truth else 3}" class="bad">'
                f"not explained: {escape(r.error or 'unknown error')}</td></tr>"
            )
            continue
        expl = r.case.explanation
        support = max(expl.contributions[expl.predicted], key=lambda c: c.contribution, default=None)
        support_html = (f"{escape(support.concept)} {_signed(support.contribution)}"
                        if support is not None and support.contribution > 0 else '<span class="muted">none</span>')
        link = f'<a href="{escape(r.href)}">{escape(r.label)}</a>' if r.href else escape(r.label)
        if r.case.warnings:
            link += f' <span class="bad" title="{escape(" ".join(r.case.warnings))}">(check the image)</span>'
        truth = ""
        if any_truth:
            if r.truth is not None:
                n_truth += 1
                n_right += r.truth == expl.predicted
                mark = '<span class="ok">✓</span>' if r.truth == expl.predicted else '<span class="bad">✗</span>'
                truth = f"<td>{escape(r.truth)} {mark}</td>"
            else:
                truth = "<td></td>"
        body_rows.append(
            f'<tr data-predicted="{escape(expl.predicted)}"><td><img class="thumb" src="{_thumbnail(r.case)}" alt=""></td>'
            f"<td>{link}</td><td><b>{escape(expl.predicted)}</b></td><td class=\"num\">{_pct(expl.probabilities[expl.predicted])}</td>"
            f"<td>{support_html}</td>{truth}</tr>"
        )
    failed = sum(r.case is None for r in rows)
    summary = f"{len(rows) - failed} of {len(rows)} inputs explained"
    if failed:
        summary += f"; {failed} could not be read"
    if n_truth:
        summary += f"; agreement with the known labels {n_right}/{n_truth} ({_pct(n_right / n_truth)})"
    truth_head = "<th>known label</th>" if any_truth else ""
    body = (
        f'<p id="summary">{escape(summary)}.</p><div class="scroll"><table id="cases"><thead><tr><th></th><th>case</th>'
        f'<th>prediction</th><th class="num">probability</th><th>strongest support</th>{truth_head}</tr></thead>'
        f"<tbody>{''.join(body_rows)}</tbody></table></div>"
    )
    return render_page(title, body, subtitle=f"model: {model.encoder_name}, classes: {', '.join(model.classes)}", nav=nav)


def _path_chart(path: Any) -> str:
    """A line chart of a regularisation path ``{"lambda": [...], name: [...], ...}`` if ``info`` has one."""
    if not isinstance(path, Mapping) or not isinstance(path.get("lambda"), list) or len(path["lambda"]) < 2:
        return ""
    lam = [float(x) for x in path["lambda"]]
    if min(lam) <= 0:
        return ""
    x = [math.log10(v) for v in lam]
    series = {
        str(k): (x, [float(v) for v in vals])
        for k, vals in path.items()
        if k != "lambda" and isinstance(vals, list) and len(vals) == len(x) and all(isinstance(v, (int, float)) for v in vals)
    }
    if not series:
        return ""
    return "<h3>Regularisation path</h3>" + line_chart(series, title="Sparsity path", xlabel="log10 lambda")


def render_class_card_html(model: ConceptBottleneckModel, *, nav: Mapping[str, str] | None = None, top: int = 30) -> str:
    """The class card: each class's concepts and weights, sparsity, metrics and training data."""
    info = dict(model.info)
    card = info.get("card") if isinstance(info.get("card"), Mapping) else {}
    name = card.get("title") or card.get("name") or "model"
    k, c = model.coef.shape
    nonzero = int((model.coef != 0).sum())
    used = int(np.any(model.coef != 0, axis=0).sum())
    overview = {
        "encoder": model.encoder_name,
        "encoder key": model.encoder_key,
        "classes": ", ".join(model.classes),
        "concepts": c,
        "concepts used by some class": used,
        "non-zero weights": f"{nonzero} of {k * c} ({_pct(1 - nonzero / max(1, k * c))} sparse; "
                            f"{model.concepts_per_class():.1f} per class on average)",
    }
    sections = [f'<section id="overview"><h2>Overview</h2>{_facts(overview)}</section>']
    classes = []
    for i, cls in enumerate(model.classes):
        idx = np.flatnonzero(model.coef[i])
        idx = idx[np.argsort(-np.abs(model.coef[i, idx]))]
        if len(idx) == 0:
            classes.append(
                f'<div class="class" data-class="{escape(cls)}"><h3>{escape(cls)}</h3><p class="muted">No concept has a '
                f"weight for this class; its logit is its bias ({model.intercept[i]:+.2f}), the reference the other "
                "classes are compared with.</p></div>"
            )
            continue
        shown = idx[:top]
        chart = bar_chart([model.bottleneck.concept_names[j] for j in shown], [float(model.coef[i, j]) for j in shown],
                          title=f"{cls}: weights", value_format="{:+.3f}")
        more = f'<p class="muted">{len(idx) - len(shown)} smaller weights not shown.</p>' if len(idx) > len(shown) else ""
        classes.append(
            f'<div class="class" data-class="{escape(cls)}"><h3>{escape(cls)} <span class="muted">({len(idx)} concepts, '
            f"bias {model.intercept[i]:+.2f})</span></h3>{chart}{more}</div>"
        )
    sections.append(
        '<section id="classes"><h2>Concepts and weights per class</h2><p class="muted">A positive weight means a high '
        "score for the concept argues for the class; scores are in standard deviations of the training images.</p>"
        f'<div class="cols">{"".join(classes)}</div></section>'
    )
    if info.get("metrics"):
        sections.append(f'<section id="metrics"><h2>Metrics</h2>{_facts(info["metrics"])}</section>')
    data = {"dataset": card, "images per split": info.get("data")}
    sections.append(f'<section id="data"><h2>Training data</h2>{_facts(data)}</section>')
    head = {k_: info.get(k_) for k_ in ("head", "lambda", "templates", "concept_source") if info.get(k_) is not None}
    sections.append(f'<section id="head"><h2>How the head was fitted</h2>{_facts(head)}{_path_chart(info.get("path"))}</section>')
    others = {k_: v for k_, v in info.items() if k_ not in {"card", "metrics", "data", "head", "lambda", "templates",
                                                             "concept_source", "path"}}
    if others:
        sections.append(f'<section id="other"><h2>Other facts</h2>{_facts(others)}</section>')
    return render_page(f"Model card: {name}", "".join(sections), subtitle="what the model looks at, and how well it did",
                       nav=nav)
