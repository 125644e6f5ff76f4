"""A trial, not a method option: concept directions learned from the card's concept truth (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/learned_directions.py --seed 0 --confounding 0.95 --ridge 1,100

Post-hoc CBM (Yuksekgonul et al. 2023) learns each concept's direction from images annotated with
it instead of reading it from the text tower. Learned plainly, a direction would take up the cue
(in the training split the cue goes with the class, and the concepts with the class), so here it
is learned within class: a ridge regression of the concept's truth on the image embeddings, both
centred on their class means, so only how the concept varies among images of one class shapes it.
Every annotated concept's direction is replaced so; the run is otherwise the default `cbm run` on
the demo world (the head on probabilities or scores by its validation rule). What decided (the
trial was not kept, docs/results.md): the validation figures of the two heads that rule compares,
beside the default's. Test figures are printed too, and chose nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from typing import Any

import numpy as np


def learned_bottleneck(train, card, ridge: float):
    """A replacement for ``cbm.pipeline.fitting._bottleneck`` whose annotated concepts get directions
    learned within class on ``train`` (:class:`~cbm.pipeline.inputs.SplitData`)."""
    import cbm.pipeline.fitting as fitting
    from cbm.bottleneck import ConceptBottleneck
    from cbm.pipeline.truth import truth_matrix

    text_bottleneck = fitting._bottleneck

    def make(card_, names, config, embed, *, explicit):
        bn, centred_on = text_bottleneck(card_, names, config, embed, explicit=explicit)
        truth_names, truth = truth_matrix(card, train, names)
        directions = bn.directions.astype(np.float64)
        X, y = train.features.astype(np.float64), train.labels
        for j, name in enumerate(truth_names):
            known = ~np.isnan(truth[:, j])
            Xc, t = X[known].copy(), truth[known, j].copy()
            for k in np.unique(y[known]):
                m = y[known] == k
                Xc[m] -= Xc[m].mean(0)
                t[m] -= t[m].mean()
            w = np.linalg.solve(Xc.T @ Xc + ridge * np.eye(X.shape[1]), Xc.T @ t)
            directions[names.index(name)] = w / np.linalg.norm(w)
        return ConceptBottleneck(names, directions.astype(np.float32)), centred_on

    return make


def figures(metrics: dict[str, Any]) -> dict[str, Any]:
    cbm = metrics["cbm"]
    f = cbm["faithfulness"]
    choice = cbm.get("calibration_choice") or {}
    return {
        "chosen": choice.get("chosen"),
        "val": {side: {k: choice[side].get(k) for k in ("val_accuracy", "val_target_misses", "val_intervention_curve")}
                for side in ("probabilities", "scores") if side in choice},
        "test": {"id": cbm["id_accuracy"], "ood": cbm["ood_accuracy"], "intervention": f.get("intervention"),
                 "mean_concept_auroc": f.get("mean_concept_auroc"), "cue_leakage": f.get("cue_leakage")},
    }


def main() -> None:
    import cbm.pipeline.fitting as fitting
    from cbm.demo import cached_dataset
    from cbm.encoders import create_encoder
    from cbm.pipeline import extract_splits, resolve_card
    from cbm.pipeline.experiment import run_experiment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confounding", type=float, default=0.95)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--ridge", default="1,100", help="ridge penalties to try, comma-separated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    card = resolve_card(cached_dataset(confounding=args.confounding, classes=args.classes, seed=args.seed))
    encoder = create_encoder("demo-clip")
    splits = extract_splits(card, encoder, num_workers=0)
    out: dict[str, Any] = {"world": vars(args)}
    text_bottleneck = fitting._bottleneck
    for ridge in [None, *(float(r) for r in args.ridge.split(","))]:
        fitting._bottleneck = text_bottleneck if ridge is None else learned_bottleneck(splits["train"], card, ridge)
        try:
            with tempfile.TemporaryDirectory() as run:
                metrics = run_experiment(out_dir=run, card=card, encoder=encoder, save_model=False,
                                         baselines={"linear_probe": False, "zero_shot": False, "dense_concepts": False,
                                                    "cbm_unconstrained": False})
        finally:
            fitting._bottleneck = text_bottleneck
        out["text" if ridge is None else f"ridge_{ridge:g}"] = figures(metrics)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
