"""Fitting the method: card -> concepts -> concept directions -> scores -> sparse head -> model.

:func:`fit` is the developer's entry point (``cbm.fit``) and returns a
:class:`~cbm.model.ConceptBottleneckModel`; :func:`fit_model` returns the same model with what an
experiment needs besides (the fitted head with its path, the encoded splits, the scores). Every
hyper-parameter is chosen on the validation split; test only gives the training reference's
operating point for the model card (:mod:`cbm.reference`), which chooses nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbm.bottleneck import BottleneckConfig, ConceptBottleneck
from cbm.data import PIXEL_PIPELINE_VERSION
from cbm.model import ConceptBottleneckModel
from cbm.pipeline.inputs import (
    SplitData,
    check_centring,
    check_every_class_trains,
    class_weight_by_index,
    check_manifest_classes,
    check_splits_present,
    extract_splits,
    require_split,
    resolve_card,
    resolve_concepts,
    store_beyond,
)
from cbm.pipeline.levels import levels_from_truth, truth_levels
from cbm.reference import build_reference
from cbm.utils import jsonable

__all__ = [
    "FitResult", "common_oracle_misses", "fit", "fit_head", "fit_model", "full_coef", "make_head", "target_misses",
    "validation_figures", "values_rule_passes",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What fitting produced: the model, the fitted head (with its path) and the data it saw."""

    model: ConceptBottleneckModel
    head: Any
    splits: dict[str, SplitData]
    concept_set: Any
    encoder: Any
    card: Any
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # split -> standardised concept scores
    # train and val -> truth-derived concept values (NaN: not annotated), where the card has concept truth
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    # split -> the head's inputs: the scores with the calibrated concepts as probabilities (the
    # scores themselves where nothing is calibrated)
    values: dict[str, np.ndarray] = field(default_factory=dict)


def fit_head(est: Any, scores: dict[str, np.ndarray], splits: dict[str, SplitData], truth: dict[str, np.ndarray]) -> Any:
    """Fit ``est`` on the train scores (val chooses), with the concept truth where it takes it; returns ``est``
    (not what its ``fit`` returns: a hand-written ``fit`` may return None)."""
    kwargs = {}
    if truth and getattr(est, "uses_truth", lambda: False)():
        kwargs = {"truth": truth["train"], "truth_val": truth["val"]}
    est.fit(scores["train"], splits["train"].labels, X_val=scores["val"], y_val=splits["val"].labels, **kwargs)
    return est


def check_head_fit(head: Any) -> None:
    """Refuse, before any work, a head whose ``fit`` cannot take the validation split it is chosen on, or
    that is no scikit-learn estimator with ``predict`` (it is cloned for each fit, and its oracle predicts)."""
    import inspect

    if head is None:
        return
    lacks = [m for m in ("get_params", "predict") if not callable(getattr(head, m, None))]
    if lacks and callable(getattr(head, "fit", None)):
        raise TypeError(f"head {type(head).__name__} has no {' or '.join(lacks)}: a head is a scikit-learn estimator "
                        "(subclass sklearn.base.BaseEstimator and ClassifierMixin) whose fit(X, y, *, X_val, y_val) "
                        "sets coef_ and intercept_, and whose predict the run's faithfulness checks call")
    try:
        params = inspect.signature(head.fit).parameters
    except (AttributeError, TypeError, ValueError):
        raise TypeError(f"head {type(head).__name__} has no fit method; give an estimator with "
                        "fit(X, y, *, X_val, y_val) (cbm.heads.SparseConceptHead)") from None
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values()) and not hasattr(head, "steps")  # a Pipeline
    if not ({"X_val", "y_val"} <= set(params) or takes_any):  # routes its keywords to steps, as X_val would not go
        raise TypeError(f"head {type(head).__name__}.fit takes no X_val, y_val: a head is chosen on the validation "
                        "split, so it needs fit(X, y, *, X_val, y_val) (cbm.heads.SparseConceptHead has it; wrap "
                        "another classifier in a class whose fit takes and uses them)")


def make_head(head: Any, prior: np.ndarray | None, ordered: bool = False, class_names: Sequence[str] | None = None):
    """An unfitted copy of ``head`` (default: the faithful sparse head) given the concept store's prior;
    ``ordinal="auto"`` becomes the ordinal form where ``ordered`` (the card's classes are grades of
    one scale, three or more of them) and the per-class head elsewhere; a ``class_weight`` by class
    name is put on the class indices the head is fitted with (``class_names``: the card's)."""
    from sklearn.base import clone

    from cbm.heads import SparseConceptHead

    head = SparseConceptHead(constraint="prior", max_concepts_per_class=8) if head is None else clone(head)
    if class_names is not None and isinstance(getattr(head, "class_weight", None), Mapping):
        head.set_params(class_weight=class_weight_by_index(head.class_weight, class_names))
    if prior is not None and getattr(head, "needs_prior", lambda: False)():
        head.set_params(prior=prior)
    if getattr(head, "ordinal", None) == "auto":
        head.set_params(ordinal=bool(ordered))
    return head


def fit(card: Any, **kwargs: Any) -> ConceptBottleneckModel:
    """Train a concept-bottleneck model on a data card; the sparsity is chosen on its val split.

    Args:
        card: a card name (``"ham10000"``), a path to a ``card.yaml`` or its folder, or a
            loaded ``cbm.data.DataCard``.
        **kwargs: see :func:`fit_model` (``encoder``, ``concepts``, ``head``, ``bottleneck``, ...).

    Example::

        model = cbm.fit("ham10000", encoder="biomedclip")
        model.predict(["case1.png"]); model.save("runs/ham")
    """
    return fit_model(card, **kwargs).model


def fit_model(
    card: Any,
    *,
    encoder: Any = "demo-clip",
    concepts: Any = None,
    head: Any = None,
    bottleneck: BottleneckConfig | None = None,
    templates: Sequence[str] | None = None,
    llm: dict | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
    splits: dict[str, SplitData] | None = None,
    check_store: bool = True,
) -> FitResult:
    """Fit the concept bottleneck and its head on a card's train split (the path point chosen on val).

    Args:
        card: a card name, a ``card.yaml`` path or folder, or a ``DataCard``.
        encoder: an encoder registry name (``demo-clip``, ``biomedclip``, ``hf-hub:...``) or an
            encoder made by ``cbm.encoders.create_encoder``.
        concepts: ``None`` (the card's concept store), ``{class: [concepts]}``, one list of phrases
            for every class, or a ``cbm.concepts.ConceptSet``.
        head: an unfitted head (default: the faithful sparse head, whose weights may only push a
            concept towards the classes the concept store lists it under, see :func:`make_head`;
            a head whose ``uses_truth()`` is true also gets the card's concept truth).
        bottleneck: how concept directions are made (default :class:`~cbm.bottleneck.BottleneckConfig`).
        templates: prompt templates for concept text embeddings (default: the modality's).
        llm: an LLM preset (``conf/llm``) to generate the concepts the store lacks.
        splits: already encoded splits (an experiment encodes once for every method).
        check_store: drop the store entries the card's concept truth does not bear out (see
            :func:`cbm.pipeline.truth.check_store`; listed in ``info["store_check"]``).
    """
    import torch

    from cbm.encoders import create_encoder, encode_texts

    card = resolve_card(card)
    config = bottleneck or BottleneckConfig()
    check_head_fit(head)
    if splits is None:  # the manifest's own problems first: before any LLM call or image encoding
        check_splits_present(card, ("train", "val"))
        check_manifest_classes(card)
    enc = create_encoder(encoder, device=device) if isinstance(encoder, str) else encoder

    def embed(phrases: Sequence[str]) -> torch.Tensor:  # every text here is embedded the same way
        return encode_texts(enc, list(phrases), templates=templates, modality=card.modality)

    # the concepts first: a card without a concept store is reported before any image is encoded
    cset = resolve_concepts(
        card, concepts, llm=llm, embed=lambda t: embed(t).numpy(),
        embed_id=f"{getattr(enc, 'cache_key', enc.name)}:{list(templates) if templates else card.modality}",
    )
    names = list(cset.concepts)
    _check_names(card, names, config.centre)
    if splits is None:
        splits = extract_splits(card, enc, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir)
    train, val = require_split(splits, "train", card), require_split(splits, "val", card)
    check_every_class_trains(card, *([c for i, c in enumerate(card.class_names) if np.any(d.labels == i)]
                                    for d in (train, val)))
    bn, centred_on = _bottleneck(card, names, config, embed, explicit=concepts is not None)
    bn.fit(train.features)
    scores = {s: bn.transform(d.features) for s, d in splits.items()}

    est, prior, store_check, (levels, calibration, values, truth), choice = _fit_concept_head(
        card, cset, head, splits, scores, check_store, config.calibrate)
    model = ConceptBottleneckModel(
        enc.name, card.class_names, bn, *full_coef(est, len(card.class_names)),
        encoder_key=getattr(enc, "cache_key", None),
        train_raw_scores=bn.raw_scores(train.features),
        concept_prior=prior, concept_levels=levels, calibration=calibration,
        info=_record(card, splits, est, cset, templates, bn, centred_on, store_check, choice,
                     None if levels is None else levels_from_truth(card, train, names)),
    )
    # out-of-distribution threshold (val), nearest training images, the operating point for the card
    model.reference = build_reference(model, splits, image_root=card.image_root)
    model.set_encoder(enc)
    return FitResult(model, est, splits, cset, enc, card, scores=scores, truth=truth, values=values)


def _check_names(card, names: list[str], centre: bool) -> None:
    """Before any image is encoded: the run has concepts (two or more to centre on), and the card's concept
    truth names only concepts of the run or of the card's store (a misspelt truth name is an error, not skipped)."""
    from cbm.pipeline.truth import check_truth_names

    if not names:
        from cbm.concepts.store import card_info, card_reference

        raise ValueError(f"no concepts for card {card.name!r}: give at least one, or generate the card's store with "
                         f"`cbm concepts {card_reference(card_info(card))} --llm PRESET`")
    check_centring(card, names, centre)
    check_truth_names(card, names, store_beyond(card, names))


def _fit_concept_head(card, cset, head: Any, splits: dict[str, SplitData], scores: dict[str, np.ndarray],
                      check_store: bool, calibrate: bool | str):
    """The head fitted on the train concept values (val chooses) under the store's prior, that prior
    checked against the card's concept truth when ``check_store`` (where the card annotates it, the
    store's entries must be borne out by it; for a head that takes no prior too, as the store its
    weights are judged against), with the truth where the head takes it; on concept
    probabilities or on scores as ``calibrate`` says (``"auto"``: :func:`_choose_values`).

    Returns ``(head, prior, store_check record or None, (score levels or None, calibration or None,
    values, truth), the calibration choice's record or None)``."""
    from cbm.pipeline.truth import check_store as checked_prior

    names = list(cset.concepts)
    ordered = bool(getattr(card, "ordered_classes", False)) and len(card.class_names) >= 3
    est, prior, store_check = make_head(head, None, ordered, card.class_names), cset.prior(), None
    constrained = bool(getattr(est, "needs_prior", lambda: False)())
    if check_store:  # for any head: the store the model's weights are judged against (class card, report)
        prior, store_check = checked_prior(card, splits["train"], names, prior, constrains_head=constrained)
        if store_check.get("checked"):
            store_check["constrains_head"] = constrained
    if constrained:
        est.set_params(prior=prior)
    t0 = time.perf_counter()
    if calibrate == "auto":
        est, inputs, choice = _choose_values(card, splits, names, scores, est)
    else:
        inputs, choice = _head_inputs(card, splits, names, scores, calibrate), None
        fit_head(est, inputs[2], splits, inputs[3])
    log.info("concept head: path of %d lambdas in %.2f s", len(getattr(est, "path_", [])), time.perf_counter() - t0)
    return est, prior, store_check, inputs, choice


CUE_FROM_LOGIT_LIMIT = 0.60
"""The most cue (within-class AUROC from the head's logit, on val) a choice of the head's inputs accepts."""

ORACLE_MARGIN = 0.02
"""The intervention curve's last point should reach the oracle less this (two points): the targets'."""


def target_misses(curve: Sequence[float], oracle: float | None) -> int | None:
    """How often an intervention curve (accuracies at k = 0, 1, 2, 4, ..., all) misses the targets:
    each step more than :data:`~cbm.pipeline.faithfulness.STEP_FALL` below the previous one, and
    one more if the last point is below max(the k = 0 accuracy, ``oracle`` - :data:`ORACLE_MARGIN`).
    None without a curve."""
    from cbm.pipeline.faithfulness import STEP_FALL

    if not len(curve):
        return None
    falls = sum(b < a - STEP_FALL for a, b in zip(curve, curve[1:]))
    floor = curve[0] if oracle is None else max(curve[0], oracle - ORACLE_MARGIN)
    return int(falls + (curve[-1] < floor - 1e-12))


def validation_figures(card, splits: dict[str, SplitData], scores: dict[str, np.ndarray], est: Any,
                       inputs: tuple) -> dict[str, Any]:
    """What the values rule reads of a fitted head on val (``inputs``: :func:`_head_inputs`' tuple):
    its accuracy, intervention curve (k = 0, 1, 2, 4, ..., all) and that curve's mean, the oracle
    (the same head type fitted on the train truth-derived values, as ``faithfulness.oracle``), how
    often the curve misses the targets (:func:`target_misses`) and the cue from its logit."""
    from cbm.heads import intervention_accuracies
    from cbm.pipeline.faithfulness import cue_leakage, fill_unknown, oracle_accuracies
    from cbm.pipeline.truth import truth_columns

    y, truth = splits["val"].labels, inputs[3]
    coef, intercept = full_coef(est, len(card.class_names))
    val = inputs[2]["val"]
    known = bool(truth) and not np.isnan(truth["val"]).all()
    curve = intervention_accuracies(coef, intercept, val, y, truth["val"]) if known else []
    oracle = None
    columns = truth_columns(truth["train"], splits["train"].labels) if known else []  # as measure_faithfulness's
    if columns:
        values = fill_unknown({s: truth[s][:, columns] for s in ("train", "val")})
        oracle = oracle_accuracies(est, getattr(est, "prior", None), columns, values, splits, {"val": "val"})["val_accuracy"]
    leak = cue_leakage(card, splits, scores, coef, intercept, split_names=("val",), inputs=inputs[2], from_scores=False)
    return {"val_accuracy": float(np.mean((val @ coef.T + intercept).argmax(1) == y)),
            "val_intervention_accuracy": float(np.mean(curve)) if len(curve) else None,
            "val_intervention_curve": [float(v) for v in curve], "val_oracle": oracle,
            "val_target_misses": target_misses(curve, oracle), "val_cue_from_logit": leak.get("logit_auroc"),
            "val_cue_from_logit_se": leak.get("logit_auroc_se")}


VALUES_RULE = ("probabilities where, on val, their intervention curve misses the targets (a fall of more "
               "than half a point, an end below max(k = 0, the higher of the two heads' oracles - 2 points)) "
               "less often than the scores', or as often with a mean at least the scores'; their accuracy at "
               "most one standard error below; and the cue from their logit, less one standard error, at most "
               f"{CUE_FROM_LOGIT_LIMIT} or the scores'")


def common_oracle_misses(new: dict[str, Any], old: dict[str, Any]) -> tuple[float | None, int | None, int | None]:
    """``(bar, new's misses, old's misses)``: both validation curves' target misses
    (:func:`target_misses`) with both ends judged against the higher of the two validation oracles,
    so that a head whose truth-fitted ceiling is lower (the truth is written in each head's own
    values: 0 / 1, score levels, one ordinal scale) does not meet the end target more easily on
    that account; with one oracle, that one. Where a curve is missing or neither has an oracle: no
    bar, and the recorded misses."""
    oracles = [o for o in (new.get("val_oracle"), old.get("val_oracle")) if o is not None]
    curves = (new.get("val_intervention_curve"), old.get("val_intervention_curve"))
    if not oracles or any(c is None or len(c) == 0 for c in curves):
        return None, new.get("val_target_misses"), old.get("val_target_misses")
    bar = max(oracles)
    return bar, target_misses(curves[0], bar), target_misses(curves[1], bar)


def values_rule_passes(new: dict[str, Any], old: dict[str, Any], n_val: int) -> bool:
    """The rule stated in advance for a change of the head's inputs (concept probabilities against
    scores, the ordinal form against the per-class head), on validation figures
    (:func:`validation_figures`) of the candidate ``new`` and the standing ``old`` over ``n_val``
    cases: (a) the targets first: ``new``'s intervention curve misses them less often than
    ``old``'s, both ends judged against the higher of the two oracles
    (:func:`common_oracle_misses`), or as often and its mean (``val_intervention_accuracy``) is at
    least ``old``'s; (b) its accuracy at most one binomial standard error below; (c) its cue from
    the logit less one standard error (``val_cue_from_logit_se``: read on few images of the
    minority cue value per class, the figure is uncertain, and (b) grants accuracy the same margin)
    at most :data:`CUE_FROM_LOGIT_LIMIT`, or at most ``old``'s where that is higher (the limit keeps
    the cue from coming back with the change, not the standing head from being left when it leaks
    more). A figure that could not be measured (None) does not count."""
    from cbm.heads import standard_error

    _, misses, misses_old = common_oracle_misses(new, old)
    helped, helped_old = new["val_intervention_accuracy"], old["val_intervention_accuracy"]
    cue, cue_old = new["val_cue_from_logit"], old["val_cue_from_logit"]
    cue = None if cue is None else cue - (new.get("val_cue_from_logit_se") or 0.0)
    mean_holds = helped is None or helped_old is None or helped >= helped_old - 1e-12
    targets = mean_holds if misses is None or misses_old is None or misses == misses_old else misses < misses_old
    return (targets
            and new["val_accuracy"] >= old["val_accuracy"] - standard_error(old["val_accuracy"], n_val) - 1e-12
            and (cue is None or cue <= max(CUE_FROM_LOGIT_LIMIT, cue_old if cue_old is not None else 0.0)))


def _choose_values(card, splits: dict[str, SplitData], names: list[str], scores: dict[str, np.ndarray], est: Any):
    """``calibrate="auto"``: the head on concept probabilities or on scores, by a rule stated in
    advance and read on this run's validation split only (:func:`values_rule_passes`: the
    intervention targets on val first, both ends against the higher oracle, then the curve's mean;
    accuracy within one binomial standard error; the cue from the logit, less one standard error,
    at most :data:`CUE_FROM_LOGIT_LIMIT`, or the scores', where the card names a two-valued cue).
    Both heads are fitted (the path takes seconds). Returns ``(head, inputs, record)``; the record
    is None where the card annotates no concept truth."""
    from sklearn.base import clone

    probabilities = _head_inputs(card, splits, names, scores, True)
    plain = _head_inputs(card, splits, names, scores, False)
    if probabilities[1] is None:  # no truth, or no concept with enough annotations to calibrate
        fit_head(est, plain[2], splits, plain[3])
        return est, plain, None if plain[0] is None else {"chosen": "scores", "reason": "no concept could be calibrated"}
    heads, figures = {}, {}
    for name, inputs in (("probabilities", probabilities), ("scores", plain)):
        heads[name] = fit_head(clone(est), inputs[2], splits, inputs[3])
        figures[name] = validation_figures(card, splits, scores, heads[name], inputs)
    keep = values_rule_passes(figures["probabilities"], figures["scores"], len(splits["val"]))
    bar, *misses = common_oracle_misses(figures["probabilities"], figures["scores"])
    if bar is not None:
        for name, m in zip(("probabilities", "scores"), misses):
            figures[name]["val_target_misses_common_oracle"] = m
    chosen = "probabilities" if keep else "scores"
    log.info("concept values: %s (validation: %s)", chosen, figures)
    return heads[chosen], probabilities if keep else plain, {"chosen": chosen, "rule": VALUES_RULE,
                                                             "val_common_oracle": bar, **figures}


def _head_inputs(card, splits: dict[str, SplitData], names: list[str], scores: dict[str, np.ndarray], calibrate: bool):
    """What the head is fitted on: ``(score levels or None, calibration or None, values, truth)``.

    Where the card annotates concept truth: the score levels (:func:`cbm.pipeline.levels.truth_levels`), with
    ``calibrate`` each annotated concept's calibration to P(present) on the training split
    (:func:`cbm.calibration.fit_calibration`), the values (split -> the scores, calibrated
    concepts as probabilities) and the train and val truth as intervention values (0 / 1 for a
    calibrated concept, its score levels for the others). Without truth: ``(None, None, scores, {})``."""
    from cbm.calibration import calibrated, fit_calibration
    from cbm.calibration import calibrate as apply_calibration
    from cbm.pipeline.faithfulness import truth_values

    levels = truth_levels(card, splits["train"], names, scores["train"])
    if levels is None:
        return None, None, scores, {}
    calibration, head_levels = None, levels.copy()
    if calibrate:
        zero_one = (np.zeros(len(names), np.float32), np.ones(len(names), np.float32))
        calibration = fit_calibration(scores["train"], truth_values(card, splits["train"], names, zero_one))
        on = calibrated(calibration)
        head_levels[:, on] = [[0.0], [1.0]]
        calibration = calibration if on.any() else None
    values = {s: apply_calibration(z, calibration) for s, z in scores.items()}
    truth = {s: truth_values(card, splits[s], names, head_levels) for s in ("train", "val")}
    return levels, calibration, values, truth


def _bottleneck(card, names: list[str], config: BottleneckConfig, embed, *, explicit: bool) -> tuple[ConceptBottleneck, int]:
    """Concept directions, centred on the card's whole store (also for an explicit short list) and
    with the nuisance prompts (the card's unless given) projected out; and how many concepts the
    centre is the mean of (0 without centring)."""
    import torch

    text = embed(names)
    nuisance = list(card.nuisance_prompts if config.nuisance_prompts is None else config.nuisance_prompts)
    extra = store_beyond(card, names) if config.centre and explicit else []
    bn = ConceptBottleneck.debiased(
        names, text, centre=config.centre,
        nuisance_embeddings=embed(nuisance) if nuisance else None, nuisance_prompts=nuisance,
        reference_embeddings=torch.cat([text, embed(extra)]) if extra else None,
    )
    return bn, (len(names) + len(extra)) if config.centre else 0


def _record(card, splits, est, cset, templates, bn: ConceptBottleneck, centred_on: int, store_check: dict | None,
            calibration_choice: dict | None = None, from_truth: list[str] | None = None) -> dict:
    """The facts a saved model keeps about how it was made (model.json ``info``)."""
    info: dict[str, Any] = {
        "card": {"name": card.name, "title": getattr(card, "title", None), "modality": card.modality},
        "data": {s: {"n": len(d), "skipped": len(d.skipped)} for s, d in splits.items()},
        "head": {"class": type(est).__name__, **{k: jsonable(v) for k, v in est.get_params().items() if k != "prior"}},
        "lambda": jsonable(getattr(est, "lambda_", None)),
        "concept_source": getattr(cset, "provenance", None),
        "templates": list(templates) if templates else None,
        "bottleneck": {**bn.debiasing, "centred_on": centred_on},
        "store_check": store_check,
        "pixel_pipeline": PIXEL_PIPELINE_VERSION,  # how its images were read: loading warns when this cbm reads them otherwise
    }
    try:  # manifest rows no split holds (a missing file, an unknown label...), beside the unreadable ones
        left_out = {p.kind: len(p.lines) for p in card.manifest().report.problems if p.lines}  # not a split's or a class's
    except Exception:  # noqa: BLE001 - a card built in memory has no manifest to say it
        left_out = {}
    if left_out:
        info["manifest_rows_left_out"] = left_out
    if calibration_choice is not None:  # probabilities or scores, by the validation rule (calibrate: auto)
        info["calibration_choice"] = calibration_choice
    if from_truth is not None:  # the concepts whose present / absent are annotated images' means (others: percentiles)
        info["levels_from_truth"] = from_truth
    fitted = getattr(est, "interventions_", None)
    if fitted:  # intervention-aware fitting: how, and the order its selected head was fitted for
        names = list(cset.concepts)
        info["interventions"] = {**{k: jsonable(v) for k, v in fitted.items() if k != "order"},
                                 "order": [names[c] for c in fitted["order"]]}
    path = list(getattr(est, "path_", []) or [])
    if path:  # the regularisation path (validation figures only), for the class card's chart
        info["path"] = {
            key: [jsonable(p.get(key)) for p in path] for key in ("lambda", "val_accuracy", "concepts_per_class", "nnz")
        }
        info["path"]["selected_index"] = jsonable(getattr(est, "selected_index_", None))
    return info


def full_coef(est: Any, n_classes: int, index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(K, C) weights and (K,) biases of a fitted linear head (binary heads included), at the
    selected point or at path point ``index``.

    scikit-learn's binary ``(1, C)`` row ``w`` becomes the pair ``[-w/2, w/2]`` (as cbm's own heads
    give it): the same probabilities, and each class's logit holds its half of every concept's
    term, so an explanation of the first class is not empty."""
    from cbm.heads._common import symmetric_binary

    if index is None and not (hasattr(est, "coef_") and hasattr(est, "intercept_")):
        raise TypeError(f"head {type(est).__name__} has no coef_ and intercept_ after fit: cbm's model is a linear head "
                        "on the concept values; give a linear classifier whose fit sets coef_ (n_classes, n_concepts) "
                        "and intercept_ (cbm.heads.SparseConceptHead, DenseConceptHead)")
    if index is None:
        coef, intercept = est.coef_, est.intercept_
    else:
        coef, intercept = est.path_coefs_[index], est.path_intercepts_[index]
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
    if coef.shape[0] == 1 and n_classes == 2:  # sklearn's binary convention: one row for class 1
        coef, intercept = symmetric_binary(coef, intercept)
    return coef.astype(np.float32), intercept.astype(np.float32)
