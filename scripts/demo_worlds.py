"""Run the default method on many demo worlds and check the faithful head's targets on each (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/demo_worlds.py                          # seeds 1,2 x p 0.8,0.95,0.99 x 2,3 classes
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/demo_worlds.py --seeds 3 --confounding 0.9 --classes 2 --out worlds.json
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/demo_worlds.py --no-cue-free --set bottleneck.calibrate=true  # another setting

Each world is a ``cbm run`` with the default configuration (``cbm.pipeline.run_experiment`` with the
objects ``conf/`` makes): the faithful head, the baselines, the faithfulness block. Nothing here
chooses anything; the worlds are drawn from seeds the defaults were not chosen on (the defaults
are checked by ``scripts/check_defaults.py`` on validation data only). ``--set`` passes Hydra
overrides (as on ``cbm run``'s command line) to show another setting on the same worlds; every key
applies as ``cbm run`` takes it but those the script sets itself (``SET_HERE``: the worlds, their
seeds, 100 bootstrap resamples, the saved model), which it refuses. Per world it reports the figures and
whether each target holds:

- ``gap``: in-domain minus out-of-domain accuracy <= 2 points;
- ``ood_vs_zero_shot`` and ``ood_vs_dense``: out-of-domain accuracy >= zero-shot's and the dense
  concept head's;
- ``id_vs_probe``: in domain within 4 points of the linear probe;
- ``concepts_per_class`` <= 8; ``cue_logit_auroc`` <= 0.60; ``sign_agreement`` >= 0.98;
- ``intervention_never_falls`` (each step >= the previous - 0.5 points, in and out of domain) and
  ``intervention_end`` (the last point >= max(the k = 0 accuracy, oracle - 2 points));
- 2 classes: no weight on "large diameter"; 3 classes: every ABCD phrase's weights push in the
  rule's direction (a higher score of "asymmetric shape" never raises the nevus, ...).

Beside them, for each number of classes and seed, the same run on the world with no cue
association (``confounding`` 0.5, ``cue_free``; ``--no-cue-free`` skips it): there the linear probe
on the whole image embedding cannot profit from the cue, so its accuracy is what a linear model
reads from the encoder about the lesion alone. Each world's ``cue_free_probe_id`` and
``id_vs_cue_free_probe`` (points) put the head's in-domain accuracy beside it: a figure for the
reader, not a target. ``code`` names what measured them: cbm's version and, in a git checkout, the
commit and whether tracked files differed from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_RULE_DIRECTION = {  # phrase -> +1: its presence raises the total dermoscopy score, -1: lowers it
    "asymmetric shape": 1, "symmetric shape": -1, "asymmetric in two axes": 1, "irregular border": 1,
    "regular border": -1, "three or more colours": 1, "one or two colours": -1, "three or more structures": 1,
    "at most two structures": -1,
}


def _abcd_directions(model) -> dict[str, bool]:
    """For each ABCD phrase the model uses: does every weight push the way the rule does? A phrase that
    raises the score may raise a class only if it is not the lowest-scored class (nevus), and so on."""
    classes = model.classes  # benign nevus first, melanoma last
    out = {}
    for phrase, direction in _RULE_DIRECTION.items():
        if phrase not in model.bottleneck.concept_names:
            continue
        w = model.coef[:, model.bottleneck.concept_names.index(phrase)]
        if not np.any(w):
            continue
        ok = True
        for k, cls in enumerate(classes):
            if w[k] == 0:
                continue
            towards_higher = cls != "benign nevus"
            ok &= (w[k] > 0) == (towards_higher == (direction > 0))
        out[phrase] = bool(ok)
    return out


def code_version() -> dict:
    """What code measured the worlds: cbm's version and, from a git checkout, its commit and whether
    files differ from it (None where git or the checkout is not there)."""
    import cbm

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], check=False, cwd=Path(__file__).resolve().parents[1],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {"cbm": cbm.__version__, "commit": commit, "uncommitted_changes": None if status is None else bool(status)}


# float rounding allowed at every target's bound (a figure exactly on it meets it)
_ROUNDING = 1e-9


def check_world(metrics: dict, model, classes: int) -> dict:
    from cbm.pipeline.compare import intervention_points
    from cbm.pipeline.faithfulness import STEP_FALL

    cbm = metrics["cbm"]
    f = cbm.get("faithfulness", {})
    curve = intervention_points(f)
    keys = [k for k in ("id_accuracy", "ood_accuracy") if curve and k in curve[0]]
    # no curve is no pass; each bound holds at its edge (accuracies are counts over n: 824/1200 - 800/1200
    # computes as 0.020000000000000018, a gap of exactly 2 points)
    falls = bool(curve) and all(b[k] >= a[k] - STEP_FALL - _ROUNDING for a, b in zip(curve, curve[1:]) for k in keys)
    oracle = f.get("oracle") or {}
    end = {k: curve[-1][k] >= max(curve[0][k], oracle.get(k, 0) - 0.02) - _ROUNDING for k in keys} if curve else {}
    out = {
        "figures": {
            "cbm_id": cbm["id_accuracy"], "cbm_ood": cbm["ood_accuracy"], "gap": cbm["gap"],
            "probe_id": metrics["linear_probe"]["id_accuracy"], "probe_ood": metrics["linear_probe"]["ood_accuracy"],
            "zero_shot_ood": metrics["zero_shot"]["ood_accuracy"], "dense_ood": metrics["dense_concepts"]["ood_accuracy"],
            "unconstrained_id": metrics.get("cbm_unconstrained", {}).get("id_accuracy"),
            "unconstrained_ood": metrics.get("cbm_unconstrained", {}).get("ood_accuracy"),
            "concepts_per_class": cbm["concepts_per_class"], "sign_agreement": f.get("sign_agreement"),
            "cue_logit_auroc": (f.get("cue_leakage") or {}).get("logit_auroc"),
            "cue_scores_auroc": (f.get("cue_leakage") or {}).get("scores_auroc"),
            "intervention": curve, "oracle": oracle, "abcd_rule": cbm.get("abcd_rule"),
            "concept_values": (model.info.get("calibration_choice") or {}).get("chosen"),
            "concept_values_choice": model.info.get("calibration_choice"),  # the validation figures that chose
        },
        "targets": {
            "gap": cbm["gap"] <= 0.02 + _ROUNDING,
            "ood_vs_zero_shot": cbm["ood_accuracy"] >= metrics["zero_shot"]["ood_accuracy"] - _ROUNDING,
            "ood_vs_dense": cbm["ood_accuracy"] >= metrics["dense_concepts"]["ood_accuracy"] - _ROUNDING,
            "id_vs_probe": cbm["id_accuracy"] >= metrics["linear_probe"]["id_accuracy"] - 0.04 - _ROUNDING,
            "concepts_per_class": cbm["concepts_per_class"] <= 8 + _ROUNDING,
            "cue_logit_auroc": ((f.get("cue_leakage") or {}).get("logit_auroc") or 1.0) <= 0.60 + _ROUNDING,
            "sign_agreement": (f.get("sign_agreement") or 0.0) >= 0.98 - _ROUNDING,
            "intervention_never_falls": falls,
            "intervention_end": all(end.values()) if end else False,
        },
    }
    if classes == 2:
        j = model.bottleneck.concept_names.index("large diameter") if "large diameter" in model.bottleneck.concept_names else None
        out["targets"]["no_weight_on_large_diameter"] = j is None or not np.any(model.coef[:, j])
    else:
        directions = _abcd_directions(model)
        out["figures"]["abcd_directions"] = directions
        out["targets"]["abcd_phrases_push_the_rule_way"] = all(directions.values())
    return out


SET_HERE = ("dataset", "seed", "evaluation", "save_model")
"""Top-level config keys this script sets itself; ``--set`` refuses them (every other key applies)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1,2")
    p.add_argument("--confounding", default="0.8,0.95,0.99")
    p.add_argument("--classes", default="2,3")
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--out", default=None)
    p.add_argument("--cue-free", action=argparse.BooleanOptionalAction, default=True,
                   help="also run each seed's world without cue association (confounding 0.5)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override of the configuration every world runs (repeatable)")
    args = p.parse_args(argv)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cbm.data import load_card
    from cbm.demo import abcd_rule_metric, cached_dataset
    from cbm.model import ConceptBottleneckModel
    from cbm.pipeline import run_experiment
    from cbm.run import CONFIG_DIR, experiment_arguments

    own = [o for o in args.overrides if o.split("=")[0].lstrip("+~").split(".")[0] in SET_HERE]
    if own:
        p.error(f"--set {own[0]!r}: this script sets {', '.join(SET_HERE)} itself (the worlds, their seeds, "
                "100 bootstrap resamples, the model each world saves)")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    encoder = instantiate(plain(cfg.encoder))
    settings = experiment_arguments(cfg)  # every other setting as cbm run takes it (concepts, templates, ...)

    def run(classes: int, seed: int, conf: float) -> tuple[dict, ConceptBottleneckModel]:
        card = load_card(cached_dataset(n=args.n, confounding=conf, classes=classes, seed=seed, progress=False))
        with tempfile.TemporaryDirectory() as out:
            metrics = run_experiment(out_dir=out, card=card, encoder=encoder, **{
                **settings, "head": instantiate(plain(cfg.head)), "features": {**settings["features"], "num_workers": 0},
                "n_bootstrap": 100, "seed": seed, "save_model": True}, extra_metrics={"abcd_rule": abcd_rule_metric})
            return metrics, ConceptBottleneckModel.load(Path(out) / "model")

    t0 = time.perf_counter()
    worlds, cue_free = [], []
    for classes in [int(v) for v in args.classes.split(",")]:
        for seed in [int(v) for v in args.seeds.split(",")]:
            reference = None
            if args.cue_free:  # what a linear model reads from the encoder about the lesion alone
                metrics, _ = run(classes, seed, 0.5)
                reference = {"classes": classes, "seed": seed, "confounding": 0.5,
                             **{f"{m}_{k}": metrics[m][f"{k}_accuracy"] for m in ("linear_probe", "cbm") for k in ("id", "ood")},
                             "concept_values": (metrics["cbm"].get("calibration_choice") or {}).get("chosen")}
                cue_free.append(reference)
                print(json.dumps(reference), file=sys.stderr)
            for conf in [float(v) for v in args.confounding.split(",")]:
                metrics, model = run(classes, seed, conf)
                world = {"classes": classes, "seed": seed, "confounding": conf, **check_world(metrics, model, classes)}
                if reference:
                    world["figures"]["cue_free_probe_id"] = reference["linear_probe_id"]
                    world["figures"]["id_vs_cue_free_probe"] = round(100 * (world["figures"]["cbm_id"] - reference["linear_probe_id"]), 1)
                worlds.append(world)
                print(json.dumps({k: world[k] for k in ("classes", "seed", "confounding", "targets")}), file=sys.stderr)
    names = sorted({t for w in worlds for t in w["targets"]})
    summary = {t: f"{sum(w['targets'][t] for w in worlds if t in w['targets'])}/{sum(t in w['targets'] for w in worlds)}"
               for t in names}
    result = {"targets_met": summary, "code": code_version(), "overrides": args.overrides, "worlds": worlds, "cue_free": cue_free, "wall_s": round(time.perf_counter() - t0, 1)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
