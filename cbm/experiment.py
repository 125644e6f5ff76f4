"""The method end to end, as plain Python: card -> concepts -> features -> scores -> heads -> metrics.

``cbm run`` (a Hydra app, ``cbm/run.py``) only composes a config and calls :func:`run_experiment`;
``ConceptBottleneckModel.fit`` calls :func:`fit_concept_model`. Both share the same steps, so the
model a researcher sweeps is the model a developer gets from the API.

Selection rule: every hyper-parameter (the sparse head's lambda, the probe's C) is chosen on the
validation split. Test is touched once, for the reported figures.

In-domain / out-of-domain: for a confounded card (``confounder`` set), the test split is the
out-of-domain one (the cue's association reversed) and the in-domain figure comes from the
``test_id`` split when the manifest has one (an in-domain split never used for selection), else
from ``val`` (as KnoBo reports it; then the ID figure is optimistic, and ``id_split`` in
``metrics.json`` says so). For other cards the test split is in-domain and OOD is null.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbm.bottleneck import ConceptBottleneck
from cbm.evaluate import classification_metrics, robustness_summary, worst_group_accuracy
from cbm.model import ConceptBottleneckModel

__all__ = [
    "SplitData",
    "FitResult",
    "resolve_card",
    "extract_splits",
    "resolve_concepts",
    "fit_concept_model",
    "run_experiment",
    "METHODS",
]

log = logging.getLogger(__name__)

METHODS = ("cbm", "linear_probe", "zero_shot", "dense_concepts")


@dataclass
class SplitData:
    """Image features of one split, aligned with labels and groups."""

    name: str
    features: np.ndarray  # (n, D) float32, L2-normalised
    labels: np.ndarray  # (n,) class indices
    groups: np.ndarray | None  # (n,) group names, or None
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class FitResult:
    """What fitting produced: the model, the fitted head (with its path) and the data it saw."""

    model: ConceptBottleneckModel
    head: Any
    splits: dict[str, SplitData]
    concept_set: Any
    encoder: Any
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # split -> standardised concept scores


# ---------------------------------------------------------------------------- inputs
def resolve_card(card_or_dataset: Any, *, demo: dict | None = None):
    """A ``DataCard`` from a card object, a name, a path, or demo-world settings (generated once)."""
    from cbm.data import DataCard, load_card

    if isinstance(card_or_dataset, DataCard):
        return card_or_dataset
    if card_or_dataset is None:
        if not demo:
            raise ValueError("no dataset given: set dataset.card to a card name/path, or dataset.demo to demo settings")
        from cbm.demo import cached_dataset

        return load_card(cached_dataset(**demo))
    return load_card(card_or_dataset)


def extract_splits(
    card,
    encoder,
    splits: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, SplitData]:
    """Encode every image of the given splits (default: all in the manifest), through the feature cache."""
    from cbm.encoders import encode_images

    manifest = card.manifest()
    names = list(splits) if splits is not None else manifest.split_names()
    out: dict[str, SplitData] = {}
    for name in names:
        part = manifest.split(name)
        if len(part) == 0:
            continue
        dataset = card.dataset(name, transform=encoder.transform)
        fs = encode_images(encoder, dataset, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir)
        idx = np.asarray(fs.indices, dtype=np.int64)
        rows = [part.rows[i] for i in idx]
        groups = None
        if card.group_column:
            groups = np.array(["" if r.group is None else str(r.group) for r in rows])  # "": no group value
        out[name] = SplitData(
            name=name,
            features=np.asarray(fs.features, dtype=np.float32),
            labels=np.array([r.label_index for r in rows], dtype=np.int64),
            groups=groups,
            paths=[str(r.path) for r in rows],
            skipped=[(str(s.path), str(s.reason)) for s in fs.skipped],
        )
        if fs.skipped:
            shown = "; ".join(f"{path} ({reason})" for path, reason in out[name].skipped[:5])
            more = f"; and {len(fs.skipped) - 5} more" if len(fs.skipped) > 5 else ""
            log.warning("%s split: %d unreadable image(s) skipped: %s%s", name, len(fs.skipped), shown, more)
    return out


def resolve_concepts(card, concepts: Any = None, *, llm: dict | None = None, embed=None, embed_id: str | None = None):
    """A ``ConceptSet`` for the card: given explicitly, from its store, or generated with an LLM preset."""
    from cbm.concepts import ConceptSet, generate_concepts, load_concepts

    if concepts is None:
        if llm and llm.get("base_url") and llm.get("model"):
            return generate_concepts(card, llm, embed=embed, embed_id=embed_id)
        return load_concepts(card)
    if isinstance(concepts, ConceptSet):
        return concepts
    if isinstance(concepts, dict):
        return ConceptSet.from_mapping(card.class_names, concepts)
    if isinstance(concepts, (list, tuple)):
        return ConceptSet.from_mapping(card.class_names, {c: list(concepts) for c in card.class_names})
    raise TypeError(f"concepts must be None, a ConceptSet, a {{class: [concepts]}} dict or a list; got {type(concepts).__name__}")


def _split_or_fail(splits: dict[str, SplitData], name: str, card) -> SplitData:
    if name not in splits or len(splits[name]) == 0:
        hint = card.unset_root_variable() if hasattr(card, "unset_root_variable") else None
        raise ValueError(
            f"card {card.name!r} has no usable {name!r} images (manifest {card.manifest_path}); "
            f"every run needs train and val splits, and test for evaluation" + (f"; {hint}" if hint else "")
        )
    return splits[name]


# ---------------------------------------------------------------------------- fitting
def _every_class_trains(card, trained: Sequence[str]) -> None:
    trained = set(trained)
    absent = [c for c in card.class_names if c not in trained]
    if absent:
        raise ValueError(
            f"card {card.name!r}: no usable training images of class(es) {absent} (manifest {card.manifest_path}); "
            "every class needs train rows: add them, or drop the class from the card's classes"
        )


def _make_head(head: Any, prior: np.ndarray | None):
    from sklearn.base import clone

    from cbm.heads import SparseConceptHead

    head = SparseConceptHead() if head is None else clone(head)
    if prior is not None and getattr(head, "use_prior", False):
        head.set_params(prior=prior)
    return head


def fit_concept_model(
    card_or_dataset: Any,
    *,
    encoder: Any = "demo-clip",
    concepts: Any = None,
    head: Any = None,
    templates: Sequence[str] | None = None,
    llm: dict | None = None,
    device: str | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    cache_dir: str | os.PathLike | None = None,
    demo: dict | None = None,
    splits: dict[str, SplitData] | None = None,
    centre: bool = True,
    nuisance_prompts: Sequence[str] | None = None,
) -> FitResult:
    """Fit the concept bottleneck and its sparse head on a card's train split (lambda chosen on val).

    ``centre`` and ``nuisance_prompts`` (``None``: the card's ``nuisance_prompts``) shape the concept
    directions: see :meth:`cbm.bottleneck.ConceptBottleneck.debiased`.
    """
    import torch

    from cbm.encoders import create_encoder, encode_texts

    card = resolve_card(card_or_dataset, demo=demo)
    if splits is None:  # the manifest's own problems first: before any LLM call or image encoding
        train_counts = card.manifest().counts().get("train", {})
        _every_class_trains(card, [c for c in card.class_names if train_counts.get(c)])
    enc = create_encoder(encoder, device=device) if isinstance(encoder, str) else encoder

    def embed(phrases: Sequence[str]) -> torch.Tensor:  # every text here is embedded the same way
        return encode_texts(enc, list(phrases), templates=templates, modality=card.modality)

    # the concepts first: a card without a concept store is reported before any image is encoded
    cset = resolve_concepts(
        card, concepts, llm=llm,
        embed=lambda t: embed(t).numpy(),
        embed_id=f"{getattr(enc, 'cache_key', enc.name)}:{list(templates) if templates else card.modality}",
    )
    names = list(cset.concepts)
    if not names:
        raise ValueError(f"no concepts for card {card.name!r}: write them with `cbm concepts {card.name}`")
    if splits is None:
        splits = extract_splits(card, enc, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir)
    train, val = _split_or_fail(splits, "train", card), _split_or_fail(splits, "val", card)
    _every_class_trains(card, [c for i, c in enumerate(card.class_names) if np.any(train.labels == i)])
    text = embed(names)
    nuisance = list(getattr(card, "nuisance_prompts", ()) if nuisance_prompts is None else nuisance_prompts)
    nuisance_text = embed(nuisance) if nuisance else None
    extra = _store_beyond(card, names) if centre and concepts is not None else []
    reference = torch.cat([text, embed(extra)]) if extra else None
    bottleneck = ConceptBottleneck.debiased(
        names, text, centre=centre, nuisance_embeddings=nuisance_text, nuisance_prompts=nuisance,
        reference_embeddings=reference,
    ).fit(train.features)
    scores = {s: bottleneck.transform(d.features) for s, d in splits.items()}

    prior = cset.prior() if hasattr(cset, "prior") else None
    est = _make_head(head, prior)
    t0 = time.perf_counter()
    est.fit(scores["train"], train.labels, scores["val"], val.labels)
    log.info("sparse head: path of %d lambdas in %.2f s", len(getattr(est, "path_", [])), time.perf_counter() - t0)
    coef, intercept = _full_coef(est, len(card.class_names))

    info = {
        "card": {"name": card.name, "title": getattr(card, "title", None), "modality": card.modality},
        "data": {s: {"n": len(d), "skipped": len(d.skipped)} for s, d in splits.items()},
        "head": {k: _jsonable(v) for k, v in est.get_params().items() if k != "prior"},
        "lambda": _jsonable(getattr(est, "lambda_", None)),
        "concept_source": getattr(cset, "provenance", None),
        "templates": list(templates) if templates else None,
        "bottleneck": {**bottleneck.debiasing, "centred_on": len(names) + len(extra) if centre else 0},
    }
    path = list(getattr(est, "path_", []) or [])
    if path:  # the regularisation path, for the class card's accuracy-against-sparsity chart
        info["path"] = {
            key: [_jsonable(p.get(key)) for p in path] for key in ("lambda", "val_accuracy", "concepts_per_class", "nnz")
        }
        info["path"]["selected_index"] = _jsonable(getattr(est, "selected_index_", None))
    model = ConceptBottleneckModel(
        enc.name, card.class_names, bottleneck, coef, intercept,
        encoder_key=getattr(enc, "cache_key", None),
        train_raw_scores=bottleneck.raw_scores(train.features),
        info=info,
    )
    model.set_encoder(enc)
    return FitResult(model=model, head=est, splits=splits, concept_set=cset, encoder=enc, scores=scores)


def _store_beyond(card, names: list[str]) -> list[str]:
    """The card's stored concepts that ``names`` (given explicitly) lack: centring uses them too
    (a short list's own mean is a poor estimate of what every prompt shares: see cbm.bottleneck)."""
    from cbm.concepts import load_concepts

    try:
        store = load_concepts(card).concepts
    except (FileNotFoundError, ValueError):
        return []
    given = set(names)
    return [c for c in dict.fromkeys(store) if c not in given]


def _full_coef(est: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, C) weights and (K,) biases of a fitted linear head, binary heads included."""
    coef = np.asarray(est.coef_, dtype=np.float32)
    intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float32))
    if coef.shape[0] == 1 and n_classes == 2:  # sklearn's binary convention: one row for class 1
        coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]], dtype=np.float32)
    return coef, intercept


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)


# ---------------------------------------------------------------------------- evaluation
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _eval_splits(card, splits: dict[str, SplitData]) -> tuple[str | None, str | None, str]:
    """(ID split, OOD split, note) for the card; see the module docstring."""
    if getattr(card, "confounder", None):
        id_split = "test_id" if "test_id" in splits else "val"
        return id_split, "test", "" if id_split == "test_id" else "ID measured on val (also used for selection)"
    return "test", None, ""


def _score(y: np.ndarray, proba: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    m = classification_metrics(y, proba, n_bootstrap=n_bootstrap, seed=seed)
    out: dict[str, Any] = {k: e.value for k, e in m.items()}
    out.update({f"{k}_ci": [e.ci_low, e.ci_high] for k, e in m.items()})
    out["n"] = int(len(y))
    return out


def evaluate_methods(
    card,
    probas: dict[str, dict[str, np.ndarray]],
    splits: dict[str, SplitData],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """metrics.json content: method -> figures (see the module docstring for ID/OOD)."""
    id_split, ood_split, note = _eval_splits(card, splits)
    results: dict[str, dict[str, Any]] = {}
    for method, by_split in probas.items():
        test = splits["test"]
        r: dict[str, Any] = {"test": _score(test.labels, by_split["test"], n_bootstrap, seed)}
        r["id"] = r["test"] if id_split == "test" else _score(splits[id_split].labels, by_split[id_split], n_bootstrap, seed)
        r["ood"] = r["test"] if ood_split == "test" else None
        summary = robustness_summary(r["id"]["accuracy"], None if r["ood"] is None else r["ood"]["accuracy"])
        r.update(summary)
        r["id_split"], r["ood_split"] = id_split, ood_split
        if note:
            r["note"] = note
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
            r[k] = r["test"][k]
        if test.groups is not None and (test.groups != "").any():
            acc, cell = worst_group_accuracy(test.labels, by_split["test"].argmax(1), test.groups)
            r["worst_group_accuracy"], r["worst_group"] = acc, cell
        results[method] = r
    return results


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def results_table(card_name: str, metrics: dict[str, dict[str, Any]]) -> str:
    """``results.md``: methods as rows; ID, OOD, gap, average and concepts per class as columns."""
    lines = [
        f"# Results: {card_name}",
        "",
        "| method | ID acc | OOD acc | gap | average | test macro-F1 | test AUROC | worst-group | concepts/class |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in metrics.items():
        cpc = r.get("concepts_per_class")
        lines.append(
            f"| {method} | {_pct(r['id_accuracy'])} | {_pct(r['ood_accuracy'])} | {_pct(r['gap'])} | "
            f"{_pct(r['average'])} | {_pct(r['macro_f1'])} | {_pct(r['macro_auroc'])} | "
            f"{_pct(r.get('worst_group_accuracy'))} | {'–' if cpc is None else f'{cpc:.1f}'} |"
        )
    any_r = next(iter(metrics.values()))
    lines += [
        "",
        f"Accuracy in %. ID = `{any_r['id_split']}` split, OOD = `{any_r['ood_split'] or '–'}` split; gap = ID − OOD.",
        "Test accuracy with bootstrap 95% intervals:",
        "",
    ]
    for method, r in metrics.items():
        lo, hi = r["test"]["accuracy_ci"]
        ci = "" if lo is None else f" [{_pct(lo)}, {_pct(hi)}]"
        lines.append(f"- {method}: {_pct(r['accuracy'])}{ci} (n = {r['test']['n']})")
    return "\n".join(lines) + "\n"


def run_experiment(
    *,
    out_dir: str | os.PathLike,
    dataset: dict,
    encoder: dict,
    head: Any = None,
    llm: dict | None = None,
    templates: Sequence[str] | None = None,
    concepts: Any = None,
    baselines: dict | None = None,
    features: dict | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    save_model: bool = True,
    bottleneck: dict | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the whole method and its baselines; write metrics.json, results.md, path.svg, model/.

    ``concepts`` overrides the card's concept store (``{class: [phrases]}`` or one list for every
    class). On a demo-world card, ``metrics["cbm"]["abcd_rule"]`` says how well the head's weights
    rank the ABCD letters as the rule does (:func:`cbm.demo.abcd_rule_agreement`). ``bottleneck``
    holds ``centre`` and ``nuisance_prompts`` (see :func:`fit_concept_model`).

    Returns the metrics (method -> figures), as written to ``metrics.json``.
    """
    from cbm.encoders import create_encoder, encode_texts
    from cbm.heads import DenseConceptHead, LinearProbe, zero_shot_logits
    from cbm.plots import line_chart
    from cbm.utils import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    features = dict(features or {})
    baselines = {"linear_probe": True, "zero_shot": True, "dense_concepts": True, **(baselines or {})}
    timings: dict[str, float] = {}
    t = time.perf_counter()
    card = resolve_card(dataset.get("card"), demo=dataset.get("demo"))
    # a missing manifest, image folder or split is reported before the encoder loads
    absent = [s for s in ("train", "val", "test") if s not in card.manifest().split_names()]
    if absent:
        raise ValueError(
            f"card {card.name!r} has no {', '.join(absent)} rows (manifest {card.manifest_path}); a run needs train "
            "and val to fit and choose, and test to measure: add them (split column "
            f"{getattr(card, 'split_column', 'split')!r}), or build the splits with `cbm make-splits`"
        )
    timings["dataset"] = time.perf_counter() - t
    check = getattr(head, "_check_params", None)
    if callable(check):  # a bad head setting is reported before the images are encoded
        check()

    t = time.perf_counter()
    enc = create_encoder(encoder["name"], device=device, precision=encoder.get("precision"))
    splits = extract_splits(
        card, enc, batch_size=int(features.get("batch_size", 64)),
        num_workers=int(features.get("num_workers", 2)), cache_dir=features.get("cache_dir"),
    )
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    bn = dict(bottleneck or {})
    fit = fit_concept_model(
        card, encoder=enc, concepts=concepts, head=head, templates=templates, llm=llm, splits=splits,
        centre=bool(bn.get("centre", True)), nuisance_prompts=bn.get("nuisance_prompts"),
    )
    timings["cbm_head"] = time.perf_counter() - t
    scores, est = fit.scores, fit.head
    eval_names = [s for s in ("val", "test_id", "test") if s in splits]
    probas: dict[str, dict[str, np.ndarray]] = {"cbm": {s: fit.model.predict_proba_from_features(splits[s].features) for s in eval_names}}
    extra: dict[str, dict[str, Any]] = {
        "cbm": {"concepts_per_class": fit.model.concepts_per_class(), "n_concepts": fit.model.bottleneck.n_concepts,
                "n_concepts_used": int((fit.model.coef != 0).any(0).sum()), "lambda": _jsonable(getattr(est, "lambda_", None))}
    }
    train, val = splits["train"], splits["val"]
    if baselines.get("linear_probe"):
        t = time.perf_counter()
        probe = LinearProbe(random_state=seed).fit(train.features, train.labels, val.features, val.labels)
        probas["linear_probe"] = {s: probe.predict_proba(splits[s].features) for s in eval_names}
        extra["linear_probe"] = {"C": _jsonable(getattr(probe, "C_", None))}
        timings["linear_probe"] = time.perf_counter() - t
    if baselines.get("zero_shot"):
        class_text = encode_texts(enc, card.class_names, templates=templates, modality=card.modality).numpy()
        probas["zero_shot"] = {s: _softmax(np.asarray(zero_shot_logits(splits[s].features, class_text))) for s in eval_names}
        extra["zero_shot"] = {}
    if baselines.get("dense_concepts"):
        t = time.perf_counter()
        dense = DenseConceptHead(random_state=seed).fit(scores["train"], train.labels, scores["val"], val.labels)
        probas["dense_concepts"] = {s: dense.predict_proba(scores[s]) for s in eval_names}
        dcoef, _ = _full_coef(dense, len(card.class_names))
        extra["dense_concepts"] = {"concepts_per_class": float((dcoef != 0).sum(1).mean()), "C": _jsonable(getattr(dense, "C_", None))}
        timings["dense_concepts"] = time.perf_counter() - t

    if card.name.startswith("demo-derm") and "melanoma" in card.class_names:
        from cbm.demo import abcd_rule_agreement

        extra["cbm"]["abcd_rule"] = abcd_rule_agreement(fit.model.bottleneck.concept_names, fit.model.coef,
                                                        fit.model.classes)

    metrics = evaluate_methods(card, probas, splits, n_bootstrap=n_bootstrap, seed=seed)
    for method, e in extra.items():
        metrics[method].update(e)
    atomic_write_json(out / "metrics.json", metrics)
    table = results_table(card.name, metrics)
    rule = extra["cbm"].get("abcd_rule")
    if rule:
        letters = ", ".join(f"{k} {'–' if w is None else f'{w:+.2f}'}" for k, w in rule["weights"].items())
        rho = "n/a" if rule["spearman"] is None else f"{rule['spearman']:.2f}"
        table += (f"\nABCD rule (TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D): the head's melanoma-vs-nevus weight per "
                  f"letter {letters}; Spearman with the rule's weights {rho}.\n")
    atomic_write_text(out / "results.md", table)

    # accuracy against sparsity along the regularisation path (val = selection split; test = reported)
    path = list(getattr(est, "path_", []) or [])
    if path:
        # plotted in order of sparsity (the number of concepts is not monotone along a path)
        order = sorted(range(len(path)), key=lambda i: (path[i]["concepts_per_class"], -path[i]["lambda"]))
        cpc = [path[i]["concepts_per_class"] for i in order]
        series = {"val accuracy (selection)": (cpc, [path[i]["val_accuracy"] for i in order])}
        coefs = getattr(est, "path_coefs_", None)
        if coefs is not None:
            test_acc = []
            for i in order:
                pc, pi = _full_coef_at(est, i, len(card.class_names))
                pred = (scores["test"] @ pc.T + pi).argmax(1)
                test_acc.append(float((pred == splits["test"].labels).mean()))
            series["test accuracy" + (" (OOD)" if getattr(card, "confounder", None) else "")] = (cpc, test_acc)
        sel = path[getattr(est, "selected_index_", len(path) - 1)]
        svg = line_chart(series, title=f"{card.name}: accuracy along the regularisation path",
                         xlabel="concepts per class (non-zero weights)", ylabel="accuracy",
                         marker=(sel["concepts_per_class"], sel["val_accuracy"]), marker_label="selected")
        atomic_write_text(out / "path.svg", svg)

    fit.model.info["metrics"] = {m: {k: metrics[m].get(k) for k in ("id_accuracy", "ood_accuracy", "accuracy", "macro_f1")} for m in metrics}
    if save_model:
        fit.model.save(out / "model")
    skipped = [(s, p, r) for s, d in splits.items() for p, r in d.skipped]
    if skipped:
        atomic_write_json(out / "skipped_files.json", [{"split": s, "path": p, "reason": r} for s, p, r in skipped])
    atomic_write_json(out / "timings.json", {k: round(v, 3) for k, v in timings.items()})
    log.info("%d unreadable file(s) skipped%s", len(skipped), " (see skipped_files.json)" if skipped else "")
    return metrics


def _full_coef_at(est: Any, index: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights at path point ``index``, in the (K, C) convention of :func:`_full_coef`."""

    class _At:
        coef_ = est.path_coefs_[index]
        intercept_ = est.path_intercepts_[index]

    return _full_coef(_At, n_classes)
