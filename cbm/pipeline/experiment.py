"""An experiment: the method and its baselines on one card, measured and written to a run folder.

``cbm run`` (a Hydra app, :mod:`cbm.run`) composes a config, instantiates its nodes and calls
:func:`run_experiment`; a researcher can call it from Python with the same objects. Every
hyper-parameter (the head's point on its path, the probe's C) is chosen on the validation split;
test is touched once, for the reported figures.

Methods, on the same image features:

- ``cbm``: the concept bottleneck with the configured head (by default the faithful sparse head);
- ``cbm_unconstrained``: the same head without its sign constraints, when the configured head has
  them (the price of faithfulness, side by side);
- ``linear_probe``: L2 logistic regression on image features (C chosen on val);
- ``zero_shot``: class-name prompts;
- ``dense_concepts``: L2 logistic regression on the same concept scores.

Hooks: ``extra_metrics`` maps a name to a callable ``fn(fit: FitResult) -> dict``, whose result is
stored under ``metrics["cbm"][name]`` (the demo world's ABCD-rule agreement comes in this way,
from ``conf/dataset/demo*.yaml``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbm.bottleneck import BottleneckConfig
from cbm.pipeline.compare import intervention_points
from cbm.pipeline.faithfulness import STEP_FALL, measure_faithfulness, step_test
from cbm.pipeline.fitting import FitResult, check_head_fit, fit_head, fit_model, full_coef
from cbm.pipeline.inputs import (SplitData, check_centring, check_manifest_classes, check_splits_present,
                                 class_weight_by_index, extract_splits, require_split, resolve_card, resolve_concepts)
from cbm.pipeline.outputs import markdown_cell, path_chart, results_table
from cbm.pipeline.run_folder import drop_set_aside, set_aside_earlier_results
from cbm.pipeline.scoring import evaluate_methods
from cbm.pipeline.truth import card_store_names, check_truth_names
from cbm.utils import atomic_write_json, atomic_write_text, jsonable, softmax

__all__ = ["run_experiment", "check_baselines", "check_run_inputs", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("cbm", "cbm_unconstrained", "linear_probe", "zero_shot", "dense_concepts")
_BASELINES = {"cbm_unconstrained": True, "linear_probe": True, "zero_shot": True, "dense_concepts": True}


def check_baselines(baselines: Mapping[str, bool] | None) -> dict[str, bool]:
    """Every baseline's switch (all on unless turned off); a name that is no baseline is an error."""
    unknown = sorted(set(baselines or {}) - set(_BASELINES))
    if unknown:
        raise ValueError(f"baselines {unknown} are not baselines of a run; they are {', '.join(_BASELINES)}")
    for name, value in (baselines or {}).items():
        if not isinstance(value, bool):  # "off" would read as on
            raise ValueError(f"baselines.{name}={value!r}: write true or false")
    return {**_BASELINES, **dict(baselines or {})}


def run_experiment(
    *,
    out_dir: str | os.PathLike,
    card: Any,
    encoder: Any,
    head: Any = None,
    bottleneck: BottleneckConfig | None = None,
    concepts: Any = None,
    templates: Sequence[str] | None = None,
    llm: dict | None = None,
    baselines: Mapping[str, bool] | None = None,
    features: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    save_model: bool = True,
    extra_metrics: Mapping[str, Callable[[FitResult], dict]] | None = None,
    check_store: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the method and its baselines; write metrics.json, results.md, path.svg, model/ to ``out_dir``.

    Args:
        card: a ``DataCard``, a card name or a path.
        encoder: an encoder (``cbm.encoders.create_encoder``) or its registry name.
        head: the unfitted concept head (default: the faithful sparse head).
        bottleneck: how concept directions are made.
        concepts: overrides the card's concept store (``{class: [phrases]}`` or one list for every class).
        baselines: which baselines run (``METHODS`` without ``cbm``; all by default).
        features: ``batch_size``, ``num_workers`` (None: the machine's default) and ``cache_dir`` of the image encoding.
        extra_metrics: name -> ``fn(fit) -> dict``, stored under ``metrics["cbm"][name]``.
        check_store: drop the store entries the card's concept truth does not bear out (see
            :func:`cbm.pipeline.fit_model`).

    Returns:
        The metrics (method -> figures), as written to ``metrics.json``.
    """
    from cbm.encoders import create_encoder

    out = Path(out_dir)
    set_aside_earlier_results(out)  # creating the folder where it is new
    features = dict(features or {})
    timings: dict[str, float] = {}
    t = time.perf_counter()
    card = resolve_card(card)
    for name, value in (("save_model", save_model), ("check_store", check_store)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: write true or false")
    which = check_run_inputs(card, head=head, concepts=concepts, templates=templates, llm=llm, baselines=baselines,
                             n_bootstrap=n_bootstrap, bottleneck=bottleneck)
    timings["dataset"] = time.perf_counter() - t
    store = card_store_names(card)
    left_out = list(card.manifest().report.left_out)  # the rows no split holds, as this run reads the manifest

    t = time.perf_counter()
    enc = create_encoder(encoder) if isinstance(encoder, str) else encoder
    splits = _encoded_splits(card, enc, features)
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    fit = fit_model(card, encoder=enc, concepts=concepts, head=head, bottleneck=bottleneck, templates=templates,
                    llm=llm, splits=splits, check_store=check_store)
    timings["cbm_head"] = time.perf_counter() - t
    eval_names = [s for s in ("val", "test_id", "test") if s in splits]
    probas = {"cbm": {s: fit.model.predict_proba_from_features(splits[s].features) for s in eval_names}}
    extra: dict[str, dict[str, Any]] = {"cbm": _head_facts(fit)}
    _run_baselines(fit, which, eval_names, templates, seed, probas, extra, timings)

    metrics = evaluate_methods(card, probas, splits, n_bootstrap=n_bootstrap, seed=seed)
    for method, e in extra.items():
        metrics[method].update(e)
    t = time.perf_counter()
    for method, (coef, intercept, estimator) in _concept_heads(fit, extra, seed).items():
        metrics[method]["faithfulness"] = measure_faithfulness(
            fit.model, card, splits, coef=coef, intercept=intercept, head=estimator, store_names=store, seed=seed,
            on_scores=method == "dense_concepts")
    timings["faithfulness"] = time.perf_counter() - t
    for name, fn in (extra_metrics or {}).items():
        metrics["cbm"][name] = _extra_metric(name, fn, fit)
    _write_outputs(out, fit, metrics, save_model)
    _write_run_records(out, splits, timings, left_out)
    return metrics


def _encoded_splits(card: Any, enc: Any, features: Mapping[str, Any]) -> dict[str, SplitData]:
    """Every split encoded (``features``: the run's batch size, workers and cache folder); a split whose
    every image was unreadable is refused here, before any fitting."""
    workers = features.get("num_workers", 2)
    splits = extract_splits(card, enc, batch_size=int(features.get("batch_size", 64)), cache_dir=features.get("cache_dir"),
                            num_workers=None if workers is None else int(workers))
    for name in ("train", "val", "test", *splits):
        require_split(splits, name, card)
    return splits


def _extra_metric(name: str, fn: Callable[[FitResult], dict], fit: FitResult) -> dict:
    """One ``extra_metrics`` hook's figures; a hook that fails on this card (the demo's ABCD rule on a card
    without its classes) is recorded as not measured, with why, and the run's results are still written."""
    try:
        return fn(fit)
    except Exception as exc:  # noqa: BLE001 - a hook's failure must not lose the run's fitted results
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("extra metric %s was not measured (%s); the run's other results are written", name, reason)
        return {"measured": False, "reason": reason}


def check_run_inputs(card: Any, *, head: Any = None, concepts: Any = None, templates: Sequence[str] | None = None,
                     llm: dict | None = None, baselines: Mapping[str, bool] | None = None,
                     n_bootstrap: int = 1000, bottleneck: BottleneckConfig | None = None) -> dict[str, bool]:
    """Refuse, before the encoder loads or an image is encoded, what a run would refuse later: a missing
    manifest, image folder or split, a bad head setting, an unknown baseline, a negative ``n_bootstrap``,
    a mistyped truth column name, a prompt template without ``{}``, concepts (or a head's class weight)
    for classes the card lacks, no concepts at all, an LLM whose key is not set or whose server does not
    answer, a class without training or validation images.
    Returns every baseline's switch."""
    from cbm.encoders.text import check_templates

    card = resolve_card(card)
    check_splits_present(card)
    check_head_fit(head)
    check = getattr(head, "check_params", None)
    if callable(check):
        check()
    class_weight_by_index(getattr(head, "class_weight", None), card.class_names)  # a class the card lacks
    which = check_baselines(baselines)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap={n_bootstrap}: give 0 (no intervals) or more resamples")
    check_truth_names(card, _given_names(concepts), card_store_names(card))
    if templates is not None:
        check_templates(templates)
    if concepts is not None or not (llm and llm.get("base_url") and llm.get("model")):
        names = list(resolve_concepts(card, concepts).concepts)
        check_centring(card, names, (bottleneck or BottleneckConfig()).centre)
    else:  # the LLM is asked after the encoder loads: its key and server are checked now
        from cbm.concepts.generate import check_llm_server

        check_llm_server(card, llm)
    check_manifest_classes(card)
    return which


def _write_outputs(out: Path, fit: FitResult, metrics: dict[str, dict[str, Any]], save_model: bool) -> None:
    """metrics.json, results.md, path.svg and the model folder."""
    card = fit.card
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "results.md", results_table(card.name, metrics, _notes(metrics)))
    path = list(getattr(fit.head, "path_", []) or [])
    if path:
        atomic_write_text(out / "path.svg", path_chart(card.name, path, fit.head.selected_index_))
    fit.model.info["metrics"] = {
        m: {k: metrics[m].get(k) for k in ("id_accuracy", "ood_accuracy", "accuracy", "macro_f1", "val_accuracy")}
        for m in metrics
    }
    if save_model:
        fit.model.save(out / "model")


def _given_names(concepts: Any) -> list[str]:
    """The phrases of explicitly given concepts (a list, or ``{class: [phrases]}``)."""
    if isinstance(concepts, dict):
        return [p for v in concepts.values() for p in ([v] if isinstance(v, str) else v)]
    if isinstance(concepts, (list, tuple)):
        return list(concepts)
    return list(getattr(concepts, "concepts", []) or [])


def _unconstrained_twin(head: Any) -> Any:
    """An unfitted copy of the faithful ``head`` without its sign constraint, every other setting kept
    (a prior penalty too, with the same store: only the constraint differs)."""
    from sklearn.base import clone

    return clone(head).set_params(constraint=None)


def _concept_heads(fit: FitResult, extra: dict, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, Any]]:
    """Every head on the concept scores, as (coef, intercept, an unfitted estimator of its type for the oracle)."""
    from sklearn.base import clone

    from cbm.heads import DenseConceptHead

    heads = {"cbm": (fit.model.coef, fit.model.intercept, clone(fit.head))}
    if "cbm_unconstrained" in extra:
        free = _unconstrained_twin(fit.head)
        heads["cbm_unconstrained"] = (np.array(extra["cbm_unconstrained"]["coef"], np.float32),
                                      np.array(extra["cbm_unconstrained"]["intercept"], np.float32), free)
    if "dense_concepts" in extra:
        heads["dense_concepts"] = (np.array(extra["dense_concepts"]["coef"], np.float32),
                                   np.array(extra["dense_concepts"]["intercept"], np.float32),
                                   DenseConceptHead(random_state=seed))
    return heads


def _head_facts(fit: FitResult) -> dict[str, Any]:
    model = fit.model
    return {
        "concepts_per_class": model.concepts_per_class(), "n_concepts": model.bottleneck.n_concepts,
        "n_concepts_used": int((model.coef != 0).any(0).sum()), "lambda": jsonable(getattr(fit.head, "lambda_", None)),
        "store_check": model.info.get("store_check"),
        **({"calibration_choice": model.info["calibration_choice"]} if "calibration_choice" in model.info else {}),
    }


def _run_baselines(fit: FitResult, which: Mapping[str, bool], eval_names: list[str], templates, seed: int,
                   probas: dict, extra: dict, timings: dict) -> None:
    """Fit every baseline asked for on the same features; fill ``probas``, ``extra`` and ``timings``."""
    from cbm.encoders import encode_texts
    from cbm.heads import DenseConceptHead, LinearProbe, zero_shot_logits

    splits, scores, card = fit.splits, fit.scores, fit.card
    train, val = splits["train"], splits["val"]
    n_classes = len(card.class_names)
    if which.get("cbm_unconstrained") and getattr(fit.head, "constraint", None):
        t = time.perf_counter()
        free = _unconstrained_twin(fit.head)
        fit_head(free, fit.values, fit.splits, fit.truth)  # the same inputs as cbm: only the constraint differs
        coef, intercept = full_coef(free, n_classes)
        probas["cbm_unconstrained"] = {s: softmax(fit.values[s] @ coef.T + intercept) for s in eval_names}
        extra["cbm_unconstrained"] = {"concepts_per_class": float((coef != 0).sum(1).mean()),
                                      "coef": coef.tolist(), "intercept": intercept.tolist()}
        timings["cbm_unconstrained"] = time.perf_counter() - t
    if which.get("linear_probe"):
        t = time.perf_counter()
        probe = LinearProbe(random_state=seed).fit(train.features, train.labels, X_val=val.features, y_val=val.labels)
        probas["linear_probe"] = {s: probe.predict_proba(splits[s].features) for s in eval_names}
        extra["linear_probe"] = {"C": jsonable(getattr(probe, "C_", None))}
        timings["linear_probe"] = time.perf_counter() - t
    if which.get("zero_shot"):
        class_text = encode_texts(fit.encoder, card.class_names, templates=templates, modality=card.modality).numpy()
        probas["zero_shot"] = {s: softmax(np.asarray(zero_shot_logits(splits[s].features, class_text))) for s in eval_names}
        extra["zero_shot"] = {}
    if which.get("dense_concepts"):
        t = time.perf_counter()
        dense = DenseConceptHead(random_state=seed).fit(scores["train"], train.labels, X_val=scores["val"], y_val=val.labels)
        probas["dense_concepts"] = {s: dense.predict_proba(scores[s]) for s in eval_names}
        dcoef, dintercept = full_coef(dense, n_classes)
        extra["dense_concepts"] = {"concepts_per_class": float((dcoef != 0).sum(1).mean()), "C": jsonable(getattr(dense, "C_", None)),
                                   "coef": dcoef.tolist(), "intercept": dintercept.tolist()}
        timings["dense_concepts"] = time.perf_counter() - t


def _faithfulness_table(metrics: dict[str, dict[str, Any]]) -> str | None:
    """results.md's faithfulness table: one row per concept method that was measured."""
    rows = []
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    three = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for method, r in metrics.items():
        f = r.get("faithfulness")
        if not f:
            continue
        cue = f.get("cue_leakage") or {}
        if not f.get("measured"):  # the cue needs no concept truth: it is measured wherever the card has a group
            cue_cells = f"{three(cue.get('logit_auroc'))} | {three(cue.get('scores_auroc'))}" if cue else " | "
            rows.append(f"| {method} | not measured: {markdown_cell(f.get('reason'))} | | | | {cue_cells} |")
            continue
        curve = intervention_points(f)
        if curve:
            first, last = curve[0], curve[-1]
            shift = " / ".join(f"{pct(first.get(k))} → {pct(last.get(k))}" for k in ("id_accuracy", "ood_accuracy") if k in first)
            only = " (ID only)" if "ood_accuracy" not in first else " (OOD only)" if "id_accuracy" not in first else ""
            shift += f"{only} (k = {last['k']})"
        else:
            shift = f"not measured: {markdown_cell(f['intervention']['reason'])}"
        oracle = f.get("oracle") or {}
        oracle_text = "–" if oracle.get("measured") is False else " / ".join(pct(v) for v in oracle.values()) or "–"
        agreement = three(f.get("sign_agreement"))
        if (f.get("weight_without_truth") or 0) >= 0.0005:  # judged on part of the weight only: say on how much
            agreement += f" (judged on {pct(1 - f['weight_without_truth'])} % of the weight; the rest is on concepts without truth)"
        auroc = three(f.get("mean_concept_auroc"))
        if f.get("mean_concept_auroc") is not None and f.get("mean_concept_auroc_of", 0) < f.get("concepts_with_truth", 0):
            auroc += f" (of {f['mean_concept_auroc_of']} of {f['concepts_with_truth']} concepts: the others lack both values in test)"
        rows.append(
            f"| {method} | {agreement} | {auroc} | "
            f"{shift} | {oracle_text} | {three(cue.get('logit_auroc'))} | {three(cue.get('scores_auroc'))} |"
        )
    if not rows:
        return None
    # what was not measured for every method alike (no confounder, no two-valued cue), said once
    notes = list(dict.fromkeys(f"Not measured: {part['reason']}." for r in metrics.values() for part in (
        (r.get("faithfulness") or {}).get("ood"), (r.get("faithfulness") or {}).get("cue_leakage"))
        if part and part.get("measured") is False))
    return "\n".join([
        "Faithfulness (against the card's concept truth; metrics.json has every figure):",
        "",
        "| method | sign agreement | mean concept AUROC | interventions ID / OOD, k = 0 → all | oracle ID / OOD | "
        "cue from logit (AUROC) | cue from scores (AUROC) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        *(["", *notes] if notes else []),
    ])


def _intervention_falls(faithfulness: dict[str, Any]) -> list[str]:
    """The steps of the intervention curve that fall by more than half a point, with their case counts."""
    out = []
    curve = intervention_points(faithfulness)
    for point, before in zip(curve[1:], curve):
        for name, label in (("id", "ID"), ("ood", "OOD")):
            changed = point.get(f"{name}_changed")
            if changed and point[f"{name}_accuracy"] < before[f"{name}_accuracy"] - STEP_FALL:
                drop = 100 * (before[f"{name}_accuracy"] - point[f"{name}_accuracy"])
                out.append(f"k = {point['k']} {label} -{drop:.1f} (+{changed['gained']} / -{changed['lost']}, "
                           f"p = {step_test(changed):.3f})")
    return out


def _calibration_note(choice: dict[str, Any] | None) -> str | None:
    """What the head weighs, probabilities or scores, and the validation figures that chose it."""
    if not choice:
        return None
    if "reason" in choice:
        return f"Concept values: {choice['chosen']} ({choice['reason']})."

    def side(name: str) -> str:
        f = choice[name]
        parts = [f"accuracy {100 * f['val_accuracy']:.1f}"]
        if f.get("val_intervention_accuracy") is not None:
            parts.insert(0, f"intervention accuracy {100 * f['val_intervention_accuracy']:.1f}")
        misses = f.get("val_target_misses_common_oracle", f.get("val_target_misses"))
        if misses is not None:
            parts.insert(0, f"{misses} miss{'' if misses == 1 else 'es'} of the intervention targets")
        if f.get("val_cue_from_logit") is not None:
            se = f.get("val_cue_from_logit_se")
            parts.append(f"cue from the logit {f['val_cue_from_logit']:.3f}" + ("" if se is None else f" (SE {se:.3f})"))
        return f"{name} " + ", ".join(parts)

    return (f"Concept values: the head weighs {choice['chosen']}, chosen on validation ({side('probabilities')}; "
            f"{side('scores')}; the rule: {choice['rule']}).")


def _intervention_steps_text(faithfulness: dict[str, Any]) -> str | None:
    """Every step of the intervention curve (the table shows its ends), ID / OOD accuracy per k."""
    curve = intervention_points(faithfulness)
    keys = [k for k in ("id_accuracy", "ood_accuracy") if curve and k in curve[0]]
    if not keys:
        return None
    label = " / ".join(k.split("_")[0].upper() for k in keys)
    steps = "; ".join(f"k = {p['k']}: " + " / ".join(f"{100 * p[k]:.1f}" for k in keys) for p in curve)
    return f"Intervention curve of cbm ({label} accuracy as the k most-weighted concepts are set from the truth): {steps}."


def _notes(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """Paragraphs under the table: what the extra metrics say, in words."""
    faithfulness = metrics["cbm"].get("faithfulness") or {}
    notes = [t for t in [_faithfulness_table(metrics), _intervention_steps_text(faithfulness)] if t]
    falls = _intervention_falls(faithfulness)
    if falls:
        notes.append("Intervention steps where cbm falls by more than 0.5 points (cases set right / set wrong by the "
                     "step; exact binomial p that the step changes nothing on average): " + "; ".join(falls) + ".")
    check = metrics["cbm"].get("store_check") or {}
    if check.get("checked"):
        dropped = check["dropped"]
        listed = "; ".join(f"{d['concept']} for {d['class']} ("
                           f"{'undefined' if d['association'] is None else format(d['association'], '+.3f')})" for d in dropped)
        emptied = check.get("classes_left_without_concepts") or []
        notes.append(f"Concept store checked against the card's concept truth (training split, {check['concepts_checked']} "
                     f"concepts): {len(dropped)} class-concept entries not borne out (phi below {check['threshold']}) "
                     + ("left the head's prior" if check.get("constrains_head", True) else
                        "left the store its weights are judged against (this head is not constrained by it)")
                     + (f": {listed}." if dropped else ".")
                     + (f" Left without any concept of their own (a per-class head gives them their bias alone): "
                        f"{', '.join(emptied)}."
                        if emptied and check.get("constrains_head", True) else ""))
    elif check.get("reason"):
        notes.append(f"Concept store not checked against concept truth: {check['reason']}.")
    choice = _calibration_note(metrics["cbm"].get("calibration_choice"))
    if choice:
        notes.append(choice)
    rule = metrics["cbm"].get("abcd_rule")
    if rule and rule.get("measured") is False:
        notes.append(f"ABCD rule not measured: {rule['reason']}.")
    elif rule:
        letters = ", ".join(f"{k} {'–' if w is None else f'{w:+.2f}'}" for k, w in rule["weights"].items())
        rho = "n/a" if rule["spearman"] is None else f"{rule['spearman']:.2f}"
        notes.append(f"ABCD rule (TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D): the head's melanoma-vs-nevus weight per "
                     f"letter {letters}; Spearman with the rule's weights {rho}.")
    return notes


def _write_run_records(out: Path, splits, timings: dict[str, float], left_out: list[dict[str, Any]]) -> None:
    """skipped_files.json (each unreadable image, then each manifest row no split holds, ``left_out``,
    with its line) and timings.json, the last of a run's results; then the earlier run's results set
    aside (:func:`~cbm.pipeline.run_folder.set_aside_earlier_results`) go."""
    skipped = [{**({"line": d.skipped_lines[i]} if len(d.skipped_lines) == len(d.skipped) else {}), "split": s, "path": p,
                "reason": r} for s, d in splits.items() for i, (p, r) in enumerate(d.skipped)]
    if skipped or left_out:
        atomic_write_json(out / "skipped_files.json", skipped + left_out)
    atomic_write_json(out / "timings.json", {k: round(v, 3) for k, v in timings.items()})
    drop_set_aside(out)  # this run's results stand in their place
    log.info("%d unreadable file(s) skipped, %d manifest row(s) left out%s", len(skipped), len(left_out),
             " (see skipped_files.json)" if skipped or left_out else "")
