"""Self-contained HTML pages from Jinja2 templates: the case report and the batch index.

Every page is rendered from ``cbm/explain/templates`` with autoescaping on, so text from the
model, the card or an image (class and concept names, flags) is always escaped. Each page is one
file that makes no request: the image, maps and thumbnails are inline ``data:`` JPEGs, charts are
inline SVG, the style sheet and the intervention script are inlined from ``cbm/explain/assets``,
and a Content-Security-Policy forbids anything else (the script is allowed by its hash). Pages
read on a phone (one column, no horizontal scrolling) and print cleanly (controls hidden).

The case report opens with one plain sentence, then the flags when the model does not answer (the
prediction is then behind a "show anyway" toggle), the findings in findings language
(:mod:`cbm.explain.findings`), the concept maps, the nearest training images, the intervention
controls, and the weights, scores and logits in a collapsed technical section.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from cbm.explain.case import CaseReport, shown_meta
from cbm.explain.findings import (
    ABSENT_UP_TO,
    PRESENT_FROM,
    format_probability,
    percentile_text,
    summary_sentence,
    unused_concepts,
)
from cbm.explain.overlay import OVERLAY_RGB, grid_statement, heat_overlay, jpeg_data_uri, thumbnail
from cbm.model import ABSENT_PERCENTILE, PRESENT_PERCENTILE, ConceptBottleneckModel

__all__ = ["render_case_html", "render_index_html", "render_template", "page_csp", "score_kind", "IndexRow", "DISCLAIMER"]

DISCLAIMER = (
    "Research software, not a medical device. The model decides only from the concept scores shown; "
    "check each finding against the image before relying on it."
)
_FINDINGS_SHOWN = 6  # findings listed before the "weaker findings" toggle
_MAP_SIDE = 256  # longest side of a concept-map overlay, in pixels
_FLAG_REASONS = {  # the summary sentence's short reason per flag code
    "unlike-training": "the image is unlike the images the model was trained on",
    "modality": "the image is of another modality than the model was trained on",
    "greyscale": "the image is greyscale and the model reads colour images",
    "too-small": "the image is too small to show a finding",
}


# ---------------------------------------------------------------------------- the page shell
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


def _percentile_number(p: float | None) -> str:
    """A percentile in a table cell: "21st", "above all", "below all", "n/a"."""
    text = percentile_text(p)
    return {"percentile unknown": "n/a", "higher than every training image": "above all",
            "lower than every training image": "below all"}.get(text, text.replace(" percentile", ""))


def _facts(items: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """``(key, value as text or a nested mapping)`` of the non-empty entries, for the facts macro."""
    out = []
    for k, v in (items or {}).items():
        if v in (None, "", {}, []):
            continue
        if isinstance(v, Mapping):
            out.append((str(k), v))
        elif isinstance(v, float):
            out.append((str(k), f"{v:.4g}" if math.isfinite(v) else str(v)))
        elif isinstance(v, (list, tuple)):
            shown = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:12])
            out.append((str(k), shown + (f" … ({len(v)} values)" if len(v) > 12 else "")))
        else:
            out.append((str(k), str(v)))
    return out


def _rate(value: Sequence[float | None]) -> str:
    """``[value, low, high]`` -> ``"93.8 % (91.3-96.0)"``."""
    v, lo, hi = (list(value) + [None, None, None])[:3]
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" + (f" ({100 * lo:.1f}-{100 * hi:.1f})" if lo is not None and hi is not None else "")


# Unicode's direction overrides, embeddings and isolates: one in a class name or an LLM's concept
# phrase would turn the rest of its line around ("... → favours melanoma" read backwards). The
# marks (U+200E, U+200F, U+061C) are kept: they only set the direction of neutral characters
# next to them, and genuine right-to-left names carry them
_DIRECTION_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def shown_text(value: Any) -> Any:
    """``value`` as a page shows it: a string's direction controls as U+FFFD (markup is left as it is)."""
    from markupsafe import Markup

    if isinstance(value, str) and not isinstance(value, Markup):
        return _DIRECTION_CONTROLS.sub("\ufffd", value)
    return value


@cache
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("cbm.explain", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             finalize=shown_text)
    env.filters.update(probability=format_probability, percentile_number=_percentile_number, facts=_facts,
                       odds=lambda x: f"{x:.1f}" if x < 100 else ">100", rate=_rate)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "separators": (",", ":"), "ensure_ascii": False}
    return env


def render_template(name: str, *, title: str, subtitle: str = "", nav: Mapping[str, str] | None = None,
                    data: Any = None, form_action: str = "'none'", **context: Any) -> str:
    """A complete page from template ``name`` (``cbm/explain/templates``), with the shared style and policy.

    Args:
        title: page title; subtitle: one line under it; nav: link text -> href.
        data: if given, embedded as JSON (``<script type="application/json" id="cbm-data">``) and
            the intervention script is included (allowed by its hash).
        form_action: CSP ``form-action`` source (``'self'`` for the upload page).
        **context: the template's own variables.
    """
    from markupsafe import Markup

    return _env().get_template(name).render(
        title=title, subtitle=subtitle, nav=dict(nav or {}), data=data, disclaimer=DISCLAIMER,
        csp=Markup(page_csp(script=data is not None, form_action=form_action)), css=Markup(_asset("report.css")),
        script=Markup(_asset("report.js")) if data is not None else "", **context)


# ---------------------------------------------------------------------------- the case report
def _intervention_data(case: CaseReport, model: ConceptBottleneckModel) -> tuple[dict[str, Any], list[int]]:
    """The head restricted to concepts with a weight, this case's concept values (what the head
    weighs; ``scores`` in the page's JSON), and the presence levels."""
    used = [int(j) for j in np.flatnonzero(np.any(model.coef != 0, axis=0))]
    absent, present = model.presence_levels()
    names = model.bottleneck.concept_names
    scores = np.array([case.explanation.values[names[j]] for j in used], np.float64)  # what the head weighs

    def r(x: Any) -> list:
        return [float(f"{v:.7g}") for v in np.asarray(x, np.float64).ravel()]

    data = {
        "classes": [shown_text(c) for c in model.classes],  # the script shows them: as the page does
        "intercept": r(model.intercept),
        "concepts": [names[j] for j in used],
        "weights": [r(model.coef[k, used]) for k in range(len(model.classes))],
        "scores": r(scores),
        "present": r(present[used]),
        "absent": r(absent[used]),
    }
    return data, used


def _intervention_rows(case: CaseReport, data: Mapping[str, Any], top_k: int) -> tuple[list[dict], list[dict]]:
    """Rows for the intervention tables: the top findings' concepts first, then the rest."""
    position = {name: i for i, name in enumerate(data["concepts"])}
    first = [c for f in case.findings[:top_k] for c in f.concepts if c in position]
    first = list(dict.fromkeys(first))
    rest = [c for c in data["concepts"] if c not in first]

    def row(name: str) -> dict:
        return {"name": name, "i": position[name], "percentile": case.percentiles.get(name)}

    return [row(c) for c in first], [row(c) for c in rest]


def _levels_text(model: ConceptBottleneckModel) -> str:
    """What the controls' present and absent set, for each kind of concept the head uses: a probability
    (calibrated), the mean score of annotated training images, or a percentile of the training scores."""
    names = model.bottleneck.concept_names
    used = np.any(model.coef != 0, axis=0) if np.any(model.coef) else np.ones(len(names), bool)
    from_truth = set(names if model.info.get("levels_from_truth") is None else model.info["levels_from_truth"])
    kinds = dict.fromkeys(("probability", "means", "percentiles"), 0)
    for name, on, use in zip(names, model.calibrated(), used):
        if use:
            kinds["probability" if on else "means" if model.concept_levels is not None and name in from_truth
                  else "percentiles"] += 1
    texts = {  # (where kinds differ, where one kind covers every concept, what present and absent do)
        "probability": ("For a concept the model reads as a probability", "The model reads every concept it uses as a "
                        "probability", " (the training images' annotations calibrate its score): present sets it to 1 "
                        "and absent to 0."),
        "means": ("For a concept the training images annotate", "For every concept the model uses", ", present sets "
                  "the score to the mean of the training images annotated present, absent to that of those annotated absent."),
        "percentiles": ("For a concept the training images do not annotate, or annotate too rarely to average",
                        "For every concept the model uses", f", present sets the score to the training images' "
                        f"{PRESENT_PERCENTILE:.0f}th percentile, absent to their {ABSENT_PERCENTILE:.0f}th."),
    }
    several = sum(n > 0 for n in kinds.values()) > 1
    return " ".join(texts[k][0 if several else 1] + texts[k][2] for k, n in kinds.items() if n)


def _crop_note(crop: tuple[int, int, int, int], height: int, width: int) -> str:
    """What part of a non-square image the maps cover (:func:`cbm.explain.case.seen_box`)."""
    _, _, box_w, box_h = crop
    if height == width:
        return ""
    if (box_w, box_h) == (width, height):
        return " The model sees the whole image squeezed into a square; its maps are stretched back over the image."
    if box_w > width or box_h > height:
        return " The model sees the whole image padded to a square; its maps cover the image whole."
    return " The model sees the centred square; the dimmed margins are outside it."


def contradicting_lines(contradicting: Sequence[tuple[str, str, float]]) -> list[str]:
    """The model's contradicting weights as a report and the model card list them."""
    return [f"{concept} is weighed {w:+.2f} towards {cls}" for cls, concept, w in contradicting]


def _checked_concepts(contradicting: Sequence[tuple[str, str, float]]) -> dict[str, str]:
    """Concept -> what its own weight does against the concept store's lists (``contradicting``), for a finding
    or map that shows it: a two-sided finding sums both poles, so it can favour a class one pole's weight argues against."""
    out: dict[str, list[str]] = {}
    for cls, concept, w in contradicting:
        out.setdefault(concept, []).append(f"{'favours' if w > 0 else 'argues against'} {cls}")
    return {c: f"the weight of {c} itself {' and '.join(v)}, against the concept store (see Check these weights)"
            for c, v in out.items()}


def _map_cards(case: CaseReport, checked: Mapping[str, str]) -> list[dict[str, str]]:
    """One overlay per concept map, captioned with its finding (and what its own weight does, where
    that goes against the concept store: ``checked``)."""
    if case.maps is None or not len(case.maps.concepts):
        return []
    # what the model sees and a quarter of its side around it: a wide image's maps stay large
    left, top, box_w, box_h = case.crop
    height, width = case.image.shape[:2]
    x0, y0 = max(0, left - box_w // 4), max(0, top - box_h // 4)
    x1, y1 = min(width, left + box_w + box_w // 4), min(height, top + box_h + box_h // 4)
    small = thumbnail(np.ascontiguousarray(case.image[y0:y1, x0:x1]), _MAP_SIDE)
    sx, sy = small.shape[1] / (x1 - x0), small.shape[0] / (y1 - y0)  # each axis its own: the thumbnail rounds
    crop = (int(round((left - x0) * sx)), int(round((top - y0) * sy)), max(1, int(round(box_w * sx))),
            max(1, int(round(box_h * sy))))
    by_concept = {f.seen: f for f in case.findings if f.seen}
    cards = []
    for name, heat in zip(case.maps.concepts, case.maps.maps):
        f = by_concept.get(name)
        where = f.where_seen if f else percentile_text(case.percentiles.get(name))
        caption = where + (f"; {f.text} favours {f.favours}" if f else "") + (f"; but {checked[name]}" if name in checked else "")
        cards.append({"concept": name, "uri": jpeg_data_uri(heat_overlay(small, heat, crop), quality=80),
                      "caption": caption})
    return cards


def _neighbour_cards(case: CaseReport, hide_names: bool) -> list[dict[str, Any]]:
    return [{"label": n.label, "similarity": n.similarity, "uri": jpeg_data_uri(n.thumbnail) if n.thumbnail else None,
             "name": None if hide_names else f"training row {n.row + 1}"} for n in case.neighbours]


def _technical(case: CaseReport, model: ConceptBottleneckModel) -> list[dict[str, Any]]:
    """Per class (predicted, runner-up, then the rest): its contributions, bias and logit."""
    expl = case.explanation
    order = [expl.predicted] + [c for c in ([expl.runner_up] if expl.runner_up else [])]
    order += [c for c in model.classes if c not in order]
    out = []
    for cls in order:
        rows = expl.contributions[cls]
        role = "predicted" if cls == expl.predicted else "runner-up" if cls == expl.runner_up else f"class-{model.classes.index(cls)}"
        out.append({"cls": cls, "role": role, "rows": rows, "bias": expl.intercepts[cls],
                    "logit": expl.intercepts[cls] + sum(c.contribution for c in rows)})
    return out


def score_kind(model: ConceptBottleneckModel) -> str:
    """How a concept score is made, in words (the bottleneck's centring and nuisance prompts)."""
    how = model.bottleneck.debiasing
    text = "cosine with the concept's text direction" + (", centred on the mean concept" if how["centred"] else "")
    if how["nuisance_prompts"]:
        text += "; directions of " + ", ".join(f"\u201c{p}\u201d" for p in how["nuisance_prompts"]) + " removed"
    return text


def _summary(case: CaseReport) -> str:
    expl = case.explanation
    if case.withheld:
        first = case.flags[0]
        reason = _FLAG_REASONS.get(first.code, first.message.rstrip("."))
        more = f" (and {len(case.flags) - 1} more reason{'s' if len(case.flags) > 2 else ''} below)" if len(case.flags) > 1 else ""
        return f"No answer: {reason}{more}, so the model's prediction is withheld; it can be shown anyway below."
    return summary_sentence(expl.predicted, expl.runner_up, expl.probabilities, case.findings)


_PATH_LIKE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def _last_part(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def without_paths(value: Any) -> Any:
    """``value`` with every local path replaced by its last part (a JSON tree): a string that is a
    path, or an encoder name that carries one (``local-dir:/home/...``, ``ARCH@/home/.../w.pt``,
    ``/home/.../config.json@WEIGHTS``: a model-config file as the architecture)."""
    if isinstance(value, Mapping):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str):
        # an encoder name that carries a path: local-dir:DIR, or [hf-hub:ORG/REPO, ARCH or CONFIG.json]@WEIGHTS
        if value.startswith("local-dir:"):
            path = value[len("local-dir:"):]
            return f"local-dir:{_last_part(path)} (local file)" if re.search(r"[\\/]", path) else value
        head, at, weights = value.rpartition("@")
        # an open_clip architecture has no separator, and hf-hub:ORG/REPO is no local path: a
        # model-config file (configs/vit.json) is; a path with an @ in a folder's name
        # (/data/john@example.com/scan.png) is a path, not an encoder name
        head_local = bool(at and re.search(r"[\\/]", head) and head.lower().endswith(".json"))
        if at and (head_local or not looks_like_path(value)):
            weights_local = bool(re.search(r"[\\/]", weights))
            if head_local or weights_local:
                head = _last_part(head) if head_local else head
                return f"{head}@{_last_part(weights) if weights_local else weights} (local file)"
        elif looks_like_path(value):
            return f"{_last_part(value)} (local file)"
    return value


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is an absolute or home-relative local path (POSIX, Windows or UNC)."""
    return bool(_PATH_LIKE.match(text))


def _details(case: CaseReport, model: ConceptBottleneckModel) -> dict[str, Any]:
    expl = case.explanation
    ref = model.reference
    return {
        "model encoder": without_paths(model.encoder_name),
        "concepts": f"{model.bottleneck.n_concepts} ({model.concepts_per_class():.1f} with a weight per class on average)",
        "concept scores": score_kind(model),
        "concept maps": f"{_MAP_METHODS.get(case.maps.method, case.maps.method)} ({case.maps.method})" if case.maps
        else "not computed",
        "distance from the training images": None if expl.ood_score is None else (
            f"{expl.ood_score:.1f} (the model withholds its answer above {ref.threshold:.1f})"
            if ref is not None and ref.threshold is not None else f"{expl.ood_score:.1f} (no threshold)"),
        **shown_meta(case.meta),
    }


_MAP_METHODS = {"patch-tokens": "similarity of each image patch to the concept", "cam": "class activation map of the concept",
                "grad-cam": "Grad-CAM of the concept score"}


def cannot_flag(model: ConceptBottleneckModel) -> str | None:
    """Why ``model`` cannot tell an image unlike its training images, with the fix (None: it can)."""
    if model.reference_lost:  # copied without it: the fix is the file, not a new run
        return ("This copy of the model lacks reference.safetensors, the training reference its model.json was saved "
                "with, so it cannot tell when an image is unlike its training images and shows no similar training "
                "images. Copy reference.safetensors from the model's own folder beside its model.json to restore both.")
    if model.reference is None:
        return ("This model was saved without a training reference, so it cannot tell when an image is unlike the images "
                "it was trained on, and shows no similar training images. Save it again from a current cbm run to get both.")
    if not model.reference.can_abstain:
        return ("This model has a training reference, but no validation split set its threshold, so it cannot tell when "
                "an image is unlike its training images.")
    return None


def render_case_html(
    case: CaseReport,
    model: ConceptBottleneckModel | None = None,
    *,
    top_k: int = 5,
    nav: Mapping[str, str] | None = None,
    generated: str | None = None,
    hide_names: bool = False,
) -> str:
    """The report of one case (see the module docstring for what it holds, in which order).

    Args:
        case: from :func:`cbm.explain.explain_image`.
        model: the model (default: the one the case was explained with).
        top_k: findings whose concepts head the intervention controls.
        nav: links in the header (e.g. ``{"All cases": "index.html", "Model card": "classes.html"}``).
        generated: the date line (default: now, UTC, to the minute).
        hide_names: name the similar training images by class only (no training row).
    """
    model = model or case.model
    if model is None:
        raise ValueError("render_case_html needs the model: pass it, or explain the case with explain_image(model, ...)")
    expl = case.explanation
    data, _ = _intervention_data(case, model)
    shown_rows, rest_rows = _intervention_rows(case, data, top_k)
    order = sorted(range(len(model.classes)), key=lambda k: -expl.probabilities[model.classes[k]])
    drawn, grid_text = grid_statement(case.grid, case.maps.method if case.maps is not None else None)
    contradicting = model.contradicting_weights()
    checked = _checked_concepts(contradicting)
    map_cards = _map_cards(case, checked) if drawn and case.image_shown else []  # a map is drawn over the image
    method = _MAP_METHODS.get(case.maps.method if case.maps else "", "")
    height, width = case.image.shape[:2]
    n_train = (model.reference.facts.get("n_train") if model.reference is not None else None) or (
        len(model.train_raw_scores) if model.train_raw_scores is not None else None)
    when = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_template(
        "case.html", title=f"Case report: {case.label}", subtitle=f"cbm explanation, generated {when}", nav=nav, data=data,
        summary=_summary(case), flags=case.flags, withheld=case.withheld, cannot_flag=cannot_flag(model), notes=expl.notes,
        # every such weight: it acts on every case, whether or not its finding heads this one's list
        contradicting=contradicting_lines(contradicting),
        checked=checked,
        predicted=expl.predicted, runner_up=expl.runner_up, truth=case.truth,
        probabilities=[{"cls": model.classes[k], "p": expl.probabilities[model.classes[k]], "k": k} for k in order],
        findings=case.findings[:_FINDINGS_SHOWN], more_findings=case.findings[_FINDINGS_SHOWN:],
        scale=max([f.effect for f in case.findings] + [1e-9]),
        n_train_text=f"{n_train} training images" if n_train else "training images",
        present_from=f"{PRESENT_FROM:.0f}", absent_up_to=f"{ABSENT_UP_TO:.0f}", any_calibrated=bool(model.calibrated().any()),
        unused=unused_concepts(model.coef, model.bottleneck.concept_names),
        grid_text=grid_text, map_cards=map_cards, method_text=method, hue=", ".join(map(str, OVERLAY_RGB)),
        image_uri=jpeg_data_uri(case.image) if case.image_shown else None, image_width=width, image_height=height,
        crop_note=_crop_note(case.crop, height, width),
        neighbours=_neighbour_cards(case, hide_names),
        similar_note="" if model.reference is None or model.reference.thumbnails is not None else (
            " (no pictures: the model was saved without thumbnails)"),
        no_neighbours="Similar training images were not asked for." if model.reference is not None else (
            "This model has no training reference here, so it cannot show similar training images (why, and the fix: "
            "the notice at the top)."),
        shown_rows=shown_rows, rest_rows=rest_rows, levels_text=_levels_text(model),
        technical=_technical(case, model), details=_details(case, model),
    )


# ---------------------------------------------------------------------------- the batch index
@dataclass
class IndexRow:
    """One line of the batch index: a report, or an input that could not be explained."""

    label: str
    href: str | None = None
    case: CaseReport | None = None
    error: str | None = None
    truth: str | None = None


def _index_row(r: IndexRow) -> dict[str, Any]:
    if r.case is None:
        return {"label": r.label, "error": r.error or "unknown error"}
    case = r.case
    support = case.strongest_present()
    first = case.flags[0] if case.flags else None
    return {
        "label": r.label, "error": None, "href": r.href, "truth": r.truth, "predicted": case.predicted,
        "p": case.explanation.probabilities[case.predicted], "withheld": case.withheld,
        "reason": _FLAG_REASONS.get(first.code, first.message) if first else "",
        "support": f"{support.text} ({support.where_seen})" if support else None,
        "thumb": jpeg_data_uri(thumbnail(case.image, 96), quality=75) if case.image_shown else None,
        "notes": [n.message for n in case.explanation.notes],
    }


def render_index_html(rows: Sequence[IndexRow], model: ConceptBottleneckModel, *, nav: Mapping[str, str] | None = None,
                      title: str = "Case reports") -> str:
    """The batch index: one row per input with its prediction (or why it is withheld), its
    strongest present finding, the known label and a link to its report."""
    cases = [r for r in rows if r.case is not None]
    with_truth = [r for r in cases if r.truth is not None and not r.case.withheld]
    withheld = sum(r.case.withheld for r in cases)
    summary = f"{len(cases)} of {len(rows)} inputs explained"
    if len(rows) - len(cases):
        summary += f"; {len(rows) - len(cases)} could not be read or reported (each row says why)"
    if withheld:
        summary += f"; {withheld} withheld (the model does not answer for them)"
    if with_truth:
        right = sum(r.truth == r.case.predicted for r in with_truth)
        summary += f"; agreement with the known labels {right}/{len(with_truth)} ({100 * right / len(with_truth):.1f} %) of those answered"
    blind = cannot_flag(model)
    if blind:  # every answer above was given without that check
        summary += f". {blind.rstrip('.')}"
    return render_template("index.html", title=title, subtitle=f"encoder: {without_paths(model.encoder_name)}, classes: "
                           f"{', '.join(model.classes)}", nav=nav, summary=summary,
                           any_truth=any(r.truth is not None for r in rows), rows=[_index_row(r) for r in rows])
