"""The clinical model card: what the model does, how well, when it does not answer, what it relies on.

Rendered from ``templates/card.html``. In order: the task in one paragraph; each class's
sensitivity and specificity at the model's operating point with bootstrap intervals and the
confusion matrix, per evaluation split (from the training reference, :mod:`cbm.reference`); the
out-of-distribution threshold and its validation pass rate; the findings each class relies on in
findings language, the concepts the model ignores, and any weight that contradicts the concept
store (``model.contradicting_weights()``); then, collapsed, the head's hyperparameters and the
regularisation path (validation accuracy and concepts per class on separate axes). Local paths
(a cache folder, a card file) are never shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from cbm.explain.findings import class_reliance, concept_axes, unused_concepts
from cbm.explain.render import cannot_flag, contradicting_lines, render_template, score_kind, without_paths
from cbm.model import ConceptBottleneckModel
from cbm.plots import line_chart
from cbm.reference import MIN_IMAGE_SIDE

__all__ = ["render_class_card_html"]

_METRIC_NAMES = {"id_accuracy": "accuracy in domain", "ood_accuracy": "accuracy out of domain",
                 "accuracy": "accuracy (test split)", "macro_f1": "macro-F1 (test split)",
                 "val_accuracy": "accuracy (validation split, which chose the settings)"}


def _path_charts(path: Any) -> list[Markup]:
    """Two charts along the regularisation path, one axis each: validation accuracy (0-1) and
    concepts per class, against log10 lambda; the selected point circled."""
    if not isinstance(path, Mapping) or not isinstance(path.get("lambda"), list) or len(path["lambda"]) < 2:
        return []
    lam = path["lambda"]
    if not all(isinstance(v, (int, float)) and v > 0 for v in lam):
        return []
    x = [math.log10(v) for v in lam]
    sel = path.get("selected_index")
    charts = []
    for key, label, name in (("val_accuracy", "validation accuracy (0-1)", "validation accuracy"),
                             ("concepts_per_class", "concepts per class", "concepts per class")):
        ys = path.get(key)
        if not isinstance(ys, list) or len(ys) != len(x) or not all(isinstance(v, (int, float)) for v in ys):
            continue
        marker = (x[sel], ys[sel]) if isinstance(sel, int) and 0 <= sel < len(x) else None
        charts.append(Markup(line_chart({name: (x, ys)}, title=name, ylabel=label, marker=marker, marker_label="selected",
                                        xlabel="log10 lambda (stronger regularisation to the right)", height=300)))
    return charts


def _performance(model: ConceptBottleneckModel) -> list[dict[str, Any]]:
    ref = model.reference
    figures = (ref.facts.get("performance") or {}) if ref is not None else {}
    titles = {"test_id": "In-domain test split (test_id)",
              # beside an in-domain split, test is the card's out-of-domain one (cbm.pipeline.scoring)
              "test": "Out-of-domain test split (test: the confounder reversed)" if "test_id" in figures else "Test split"}
    out = []
    for split, f in figures.items():
        out.append({"split": split, "title": titles.get(split, f"{split} split"), "n": f.get("n"),
                    "answered": f.get("answered"), "confusion": f.get("confusion", []),
                    "rows": [{"cls": c, "sensitivity": f["sensitivity"].get(c, [None]),
                              "specificity": f["specificity"].get(c, [None])} for c in model.classes]})
    return out


def _abstention(model: ConceptBottleneckModel) -> str | None:
    ref = model.reference
    if ref is None:
        return None
    if ref.threshold is None:
        return ("The model has a training reference but no validation split set its threshold, so it does not "
                "withhold on the out-of-distribution score; it still flags a DICOM file of another modality, a greyscale "
                "image for a colour model and a very small image.")
    f = ref.facts
    target = 100 * f.get("val_pass_rate_target", 0)
    return (f"The model withholds its answer when an image is unlike its training images: when the squared Mahalanobis distance "
            f"of its features from the {f.get('n_train', len(ref))} training images' is above {ref.threshold:.1f}, the "
            f"threshold set so that {target:g} % of the validation images pass ({100 * f.get('val_pass_rate', 0):.1f} % "
            f"of {f.get('n_val', '?')} did). It also withholds for a DICOM file of another modality, a greyscale image "
            f"for a colour model and an image under {MIN_IMAGE_SIDE} pixels a side.")


def render_class_card_html(model: ConceptBottleneckModel, *, nav: Mapping[str, str] | None = None, top: int = 12) -> str:
    """The clinical model card (see the module docstring); ``top`` findings listed per class."""
    info = dict(model.info)
    card = info.get("card") if isinstance(info.get("card"), Mapping) else {}
    names = model.bottleneck.concept_names
    axes = concept_axes(names)
    reliance = class_reliance(model.coef, model.classes, names, axes)
    data = info.get("data") if isinstance(info.get("data"), Mapping) else {}
    counts = ", ".join(f"{v.get('n')} {k}" for k, v in data.items() if isinstance(v, Mapping) and v.get("n") is not None)
    run = info.get("metrics") if isinstance(info.get("metrics"), Mapping) else {}
    own = run.get("cbm") if isinstance(run.get("cbm"), Mapping) else {}
    metrics = {_METRIC_NAMES.get(k, k.replace("_", " ")): f"{100 * v:.1f} %" for k, v in own.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    technical = {
        "encoder": model.encoder_name, "encoder key": model.encoder_key, "concept scores": score_kind(model),
        "head": info.get("head"), "selected lambda": info.get("lambda"), "prompt templates": info.get("templates"),
        "concept source": info.get("concept_source"), "bottleneck": info.get("bottleneck"),
        "the run's other methods": {m: f for m, f in run.items() if m != "cbm"} or None,
        **{k: v for k, v in info.items() if k not in {"card", "metrics", "data", "head", "lambda", "templates",
                                                       "concept_source", "path", "bottleneck", "store_check"}},
    }
    return render_template(
        "card.html", title=f"Model card: {card.get('title') or card.get('name') or 'model'}",
        subtitle="what the model does, how well, when it does not answer, and what it relies on", nav=nav,
        classes=model.classes, modality=card.get("modality") or "the training", n_concepts=len(names),
        n_used=len(names) - len(unused_concepts(model.coef, names)), per_class=model.concepts_per_class(),
        data_text=f"{card.get('title') or card.get('name') or 'its card'} ({counts or 'image counts not recorded'})",
        overview={"classes": ", ".join(model.classes), "modality": card.get("modality"), "dataset": card.get("name"),
                  "images per split": counts},
        performance=_performance(model), metrics=metrics, abstention=_abstention(model), cannot_flag=cannot_flag(model),
        min_side=MIN_IMAGE_SIDE,
        reliance=[{"cls": cls, "rows": rows, "scale": max([w for _, w in rows] + [1e-9]),
                   "bias": float(model.intercept[k])} for k, (cls, rows) in enumerate(reliance.items())],
        top=top, unused=unused_concepts(model.coef, names),
        contradicting=contradicting_lines(model.contradicting_weights()),
        has_prior=model.concept_prior is not None, store_dropped=_store_dropped(info.get("store_check")),
        store_constrains=not (isinstance(info.get("store_check"), Mapping) and info["store_check"].get("constrains_head") is False),
        technical=without_paths(technical), path_charts=_path_charts(info.get("path")),
    )


def _store_dropped(check: Any) -> list[str]:
    """The store entries the training truth did not bear out (``info["store_check"]``), in words."""
    if not isinstance(check, Mapping):
        return []
    out = []
    for d in check.get("dropped") or []:
        if isinstance(d, Mapping):
            a = d.get("association")
            out.append(f"{d.get('concept')} for {d.get('class')} (association "
                       f"{format(a, '+.2f') if isinstance(a, (int, float)) else 'undefined'})")
    return out
