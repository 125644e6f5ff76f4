"""Prototype: the faithful head on concept probabilities instead of scores, and its interventions (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/calibrated_inputs.py                       # seed 0, p 0.95, 2 classes
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/calibrated_inputs.py --seed 1 --classes 3 --out calibrated.json

Not part of the method yet: a measurement of one candidate for the intervention targets the
default head misses (docs/results.md). Where the card annotates a concept's truth, the concept's
own standardised score is mapped to P(present) by a one-dimensional logistic regression on the
annotated training images (a monotone map of that score alone, so it can carry no more of the cue
than the score); a concept without enough annotations stays at 0.5. The default head type (the
faithful sparse head with intervention-aware fitting) is fitted on those probabilities, with the
0/1 truth as the intervened values, and its intervention curve is measured as the faithfulness
block measures the default head's: the k most-weighted annotated concepts set from the truth (here
to 1 or 0), k = 0, 1, 2, 4, ..., all, on the in-domain and out-of-domain test splits. The default
head's curve on the same world is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def calibrate(scores: dict[str, np.ndarray], truth: dict[str, np.ndarray], min_each: int = 10) -> dict[str, np.ndarray]:
    """Each concept's probability of being present from its own score (``truth``: 1, 0 or NaN per
    case and concept; the calibration is fitted on ``truth["train"]``)."""
    from sklearn.linear_model import LogisticRegression

    out = {s: np.full_like(z, 0.5, dtype=np.float64) for s, z in scores.items()}
    for c in range(scores["train"].shape[1]):
        t = truth["train"][:, c]
        known = ~np.isnan(t)
        if min((t[known] == 1).sum(), (t[known] == 0).sum()) < min_each:
            continue
        lr = LogisticRegression().fit(scores["train"][known, c:c + 1], t[known])
        for s, z in scores.items():
            out[s][:, c] = lr.predict_proba(z[:, c:c + 1])[:, 1]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--confounding", type=float, default=0.95)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from cbm.data import load_card
    from cbm.demo import cached_dataset
    from cbm.pipeline.faithfulness import intervention_curve, truth_matrix, truth_values
    from cbm.pipeline.fitting import fit_model, full_coef, make_head
    from cbm.pipeline.scoring import eval_splits

    card = load_card(cached_dataset(n=args.n, confounding=args.confounding, classes=args.classes, seed=args.seed,
                                    progress=False))
    fit = fit_model(card, num_workers=0)
    model, names = fit.model, fit.model.bottleneck.concept_names
    id_split, ood_split, _ = eval_splits(card, fit.splits)
    used = {"train": "train", "val": "val", "id": id_split, **({"ood": ood_split} if ood_split else {})}
    scores = {k: model.concept_scores_from_features(fit.splits[s].features) for k, s in used.items()}
    labels = {k: fit.splits[s].labels for k, s in used.items()}
    zero_one = (np.zeros(len(names), np.float32), np.ones(len(names), np.float32))  # truth as 0/1, NaN unannotated
    truth = {k: truth_values(card, fit.splits[s], names, zero_one).astype(np.float64) for k, s in used.items()}
    probs = calibrate(scores, truth)
    values = {k: np.where(np.isnan(truth[k]), probs[k], truth[k]) for k in used}
    head = make_head(None, model.concept_prior)
    head.fit(probs["train"], labels["train"], X_val=probs["val"], y_val=labels["val"], truth=values["train"],
             truth_val=values["val"])
    coef, intercept = full_coef(head, len(model.classes))
    tests = [k for k in ("id", "ood") if k in used]
    annotations = {k: truth_matrix(card, fit.splits[used[k]], names) for k in tests}

    def evaluations(inputs: dict[str, np.ndarray]) -> dict:  # as the faithfulness block intervenes
        return {k: (inputs[k], labels[k], annotations[k][1], annotations[k][0]) for k in tests}

    result = {
        "world": {"classes": args.classes, "seed": args.seed, "confounding": args.confounding, "n": args.n},
        "calibrated": {"concepts_per_class": float((coef != 0).sum(1).mean()),
                       "intervention": intervention_curve(coef, intercept, names, zero_one, evaluations(probs))[0]},
        "default": {"concepts_per_class": float((model.coef != 0).sum(1).mean()),
                    "intervention": intervention_curve(model.coef, model.intercept, names, model.presence_levels(),
                                                       evaluations(scores))[0]},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("calibrated:", [(q["k"], *(q[f"{k}_accuracy"] for k in tests)) for q in result["calibrated"]["intervention"]],
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
