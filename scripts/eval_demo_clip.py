"""Measure ``demo-clip`` on held-out demo images: concept AUROC, class prompts, cues, concept maps (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py                   # the shipped weights
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --write           # ... and write demo-clip.eval.json
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --robustness      # + CBM vs probe check
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --assets /tmp/demo-clip --n 500 --seeds 4,5

The held-out images come from the demo world's evaluation stream, one set per seed of ``--seeds``
(default 1, 2, 3: pretraining draws its corpus and chooses its checkpoint on other streams of
seed 0, so none of these images was seen or used to choose), drawn at 128 px like a demo dataset,
and reach the model through its own open_clip preprocessing (``--resize bicubic-noaa`` resizes
without anti-aliasing instead, as a MONAI or torch pipeline may). Per seed:

- ``concept_auroc`` (and ``mean_auroc``, ``min_auroc``): the AUROC of the plain cosine
  cos(image, concept prompt) against the exact truth, with a reference (the contrast with the
  opposite phrase for a graded concept; the count of colours or structures alone for one of them);
- ``cue_auroc``: the same for the ruler and the ink marks;
- ``zero_shot_class_auroc``: class-name prompts, ``{"2": ..., "3": ...}`` (2 classes: melanoma minus
  nevus cosine on the images outside the suspicious band; 3 classes: each prompt minus the mean of
  the others, one-vs-rest, macro-averaged), with the prompts in ``class_prompts``;
- ``map_grid``, ``pointing``, ``pointing_mean`` and ``pointing_cue``: the pointing game of the concept
  maps a report shows (``cbm.explain.maps``, with the concept directions ``cbm run`` scores the
  demo with by default: centred on the demo store, nothing projected out) against the drawn masks
  of each colour and structure (``cbm.demo.evaluation.pointing_game``), beside a map fixed on the
  middle cell, per concept (``pointing_centre``, ``pointing_centre_mean``) and pooled
  (``pointing_centre_baseline``), and the concepts whose maps beat it by 5 points or more
  (``pointing_beats_centre``).

The printed JSON holds the first seed's figures at the top, every seed's summary under ``seeds``
and the worst of them under ``worst``.

``--robustness`` adds a quick check on a confounded 2-class world (p = 0.95) and a 3-class world: a
linear probe on raw image features versus a sparse (L1) logistic head on the demo concept list's
scores from ``cbm.bottleneck`` (centred directions, the cue's words projected out), in-domain
(val) and out-of-domain (test) accuracy, and the head's weight on each ABCD concept.

A missing or mismatched assets folder, or an unknown architecture, ends in one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cbm.demo.corpus import EVAL_STREAM, corpus_scene
from cbm.demo.dataset import plan_dataset
from cbm.demo.encoder import ASSETS, MODEL_NAME
from cbm.demo.evaluation import embed_images, embed_texts, held_out_batch, zero_shot
from cbm.demo.world import ABCD_CONCEPTS, CUE_PROMPTS, RULE_WEIGHTS, demo_concepts


class AssetsError(Exception):
    """An assets folder that cannot be evaluated; the message says which file and the fix."""


def load(assets: Path):
    """The model, tokenizer and input size from an assets folder; :class:`AssetsError` if it is unusable."""
    import open_clip
    from safetensors.torch import load_file

    from cbm.encoders.towers import register_towers

    config_path, weights_path = assets / f"{MODEL_NAME}.json", assets / f"{MODEL_NAME}.safetensors"
    missing = [p.name for p in (config_path, weights_path) if not p.is_file()]
    if missing:
        raise AssetsError(f"{assets} lacks {', '.join(missing)}: give the folder pretrain_demo_clip.py wrote (--out), "
                          "or the shipped cbm/demo/assets")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        size = int(config["vision_cfg"]["image_size"])
        context = int(config["text_cfg"]["context_length"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AssetsError(f"{config_path} is not an open_clip model config ({exc!r}); write it again with "
                          "pretrain_demo_clip.py") from None
    register_towers()
    try:
        model = open_clip.model.CLIP(**config)
    except (RuntimeError, TypeError, ValueError) as exc:
        tower = config.get("vision_cfg", {}).get("timm_model_name")
        raise AssetsError(f"{config_path}: unknown or invalid architecture (image tower {tower!r}: {str(exc)[:160]}); "
                          "cbm's own towers are in cbm.encoders.towers, others must be timm or open_clip models") from None
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except Exception as exc:  # noqa: BLE001 - safetensors' or torch's error, stated in one line
        raise AssetsError(f"{weights_path} does not match {config_path.name} ({type(exc).__name__}: {str(exc)[:160]}); "
                          "the weights and the config must come from the same pretraining run") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer("RN50", context_length=context)
    return model, tokenizer, size


def concept_maps(model, batch: torch.Tensor, phrases: list[str], tokenizer) -> np.ndarray:
    """``(n, k, h, w)`` maps of ``phrases`` on every image, as a report draws them for the demo world."""
    from types import SimpleNamespace

    from cbm.bottleneck import ConceptBottleneck
    from cbm.explain.maps import encode_spatial

    store = list(dict.fromkeys(c for cs in demo_concepts(2).values() for c in cs))
    # cbm run's default bottleneck: centred on the card's store, no nuisance projection
    bottleneck = ConceptBottleneck.debiased(phrases, embed_texts(model, tokenizer, phrases),
                                            reference_embeddings=embed_texts(model, tokenizer, store))
    directions = bottleneck.directions
    encoder = SimpleNamespace(model=model, name=MODEL_NAME)
    return np.stack([encode_spatial(encoder, image).concept_maps(phrases, directions).raw for image in batch])


def evaluate_seed(model, tokenizer, size: int, n: int, seed: int, resize: str) -> dict:
    """Every figure of one held-out set (the evaluation stream of ``seed``)."""
    from cbm.demo.evaluation import POINTING_CONCEPTS, pointing_on_scenes

    scenes = [corpus_scene(i, seed, stream=EVAL_STREAM) for i in range(n)]
    masks: list = []
    batch = held_out_batch(scenes, size, resize, masks=masks)
    result = {"seed": seed, "n_images": n, **zero_shot(model, tokenizer, embed_images(model, batch), scenes)}
    maps = concept_maps(model, batch, list(POINTING_CONCEPTS), tokenizer)
    result.update(pointing_on_scenes(maps, scenes, masks))
    return result


_SUMMARY = ("mean_auroc", "min_auroc", "min_concept", "cue_auroc", "zero_shot_class_auroc", "map_grid",
            "pointing_mean", "pointing_centre_mean", "pointing_centre_baseline", "pointing_beats_centre", "pointing_cue")


def _worst(by_seed: list[dict]) -> dict:
    """The worst value of each summary figure over the seeds (lowest AUROC and pointing, highest pointing_cue)."""
    low = lambda key: min(r[key] for r in by_seed)  # noqa: E731
    return {
        "mean_auroc": low("mean_auroc"), "min_auroc": low("min_auroc"),
        "cue_auroc": {c: min(r["cue_auroc"][c] for r in by_seed) for c in by_seed[0]["cue_auroc"]},
        "zero_shot_class_auroc": {k: [min(r["zero_shot_class_auroc"][k] for r in by_seed),
                                      max(r["zero_shot_class_auroc"][k] for r in by_seed)]
                                  for k in by_seed[0]["zero_shot_class_auroc"]},
        "pointing_mean": low("pointing_mean"), "pointing_cue": max(r["pointing_cue"] for r in by_seed),
        "pointing_centre_mean": max(r["pointing_centre_mean"] for r in by_seed),
        "pointing_beats_centre": [c for c in by_seed[0]["pointing_beats_centre"]
                                  if all(c in r["pointing_beats_centre"] for r in by_seed)],
    }


def robustness(model, tokenizer, size: int, n: int, resize: str) -> dict:
    """Linear probe vs sparse concept head on confounded demo worlds (a quick check)."""
    from sklearn.linear_model import LogisticRegression

    from cbm.bottleneck import ConceptBottleneck

    out = {}
    for classes in (2, 3):
        items = plan_dataset(n, 0.95, classes, seed=1)
        feats = embed_images(model, held_out_batch([it.scene for it in items], size, resize))
        labels = np.array([it.label for it in items])
        split = np.array([it.split for it in items])
        concepts = list(dict.fromkeys(c for cs in demo_concepts(classes).values() for c in cs))
        emb = embed_texts(model, tokenizer, concepts, ("{}",))
        cues = list(CUE_PROMPTS.values())
        tr, va, te = (split == s for s in ("train", "val", "test"))
        bottleneck = ConceptBottleneck.debiased(concepts, emb, nuisance_prompts=cues,
                                                nuisance_embeddings=embed_texts(model, tokenizer, cues, ("{}",)))
        scores = bottleneck.fit(feats[tr]).transform(feats)
        res = {}
        best = None
        for C in (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30):
            probe = LogisticRegression(C=C, max_iter=3000).fit(feats[tr], labels[tr])
            v = probe.score(feats[va], labels[va])
            if best is None or v > best[0]:
                best = (v, probe.score(feats[te], labels[te]), C)
        res["linear_probe"] = {"id": round(best[0], 4), "ood": round(best[1], 4), "C": best[2]}
        best = None
        for C in (0.003, 0.01, 0.03, 0.1, 0.3, 1, 3):
            head = LogisticRegression(C=C, l1_ratio=1.0, solver="saga", max_iter=5000).fit(scores[tr], labels[tr])
            per_class = int(np.max((np.abs(head.coef_) > 1e-6).sum(1)))
            v = head.score(scores[va], labels[va])
            if per_class <= 8 and (best is None or v > best[0] + 1e-9):
                best = (v, head.score(scores[te], labels[te]), C, per_class, head)
        head = best[4]
        weight = {letter: round(float(np.abs(head.coef_[:, concepts.index(p)]).max()), 3) if p in concepts else None
                  for letter, p in ABCD_CONCEPTS.items()}
        res["sparse_concept_head"] = {"id": round(best[0], 4), "ood": round(best[1], 4), "C": best[2],
                                      "concepts_per_class": best[3], "abcd_weight": weight}
        out[f"{classes}_class"] = res
    out["rule_weights"] = RULE_WEIGHTS
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", default=str(ASSETS), help="folder with demo-clip.json and demo-clip.safetensors")
    p.add_argument("--n", type=int, default=1000, help="held-out images per seed")
    p.add_argument("--seeds", default="1,2,3", help="held-out sets (evaluation-stream seeds), comma-separated")
    p.add_argument("--resize", choices=("openclip", "bicubic-noaa"), default="openclip")
    p.add_argument("--robustness", action="store_true", help="add the CBM-vs-probe check (about a minute)")
    p.add_argument("--robustness-n", type=int, default=3000)
    p.add_argument("--write", action="store_true", help="also write demo-clip.eval.json beside the weights")
    args = p.parse_args(argv)
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        p.error(f"--seeds {args.seeds!r} is not a comma-separated list of integers")
    if not seeds or args.n < 20:
        p.error("give at least one seed and --n >= 20")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    try:
        model, tokenizer, size = load(Path(args.assets))
    except AssetsError as exc:
        print(f"eval_demo_clip: error: {exc}", file=sys.stderr)
        return 2
    by_seed = [evaluate_seed(model, tokenizer, size, args.n, seed, args.resize) for seed in seeds]
    result = {"model": MODEL_NAME, "resize": args.resize, **by_seed[0],
              "seeds": {str(r["seed"]): {k: r[k] for k in _SUMMARY} for r in by_seed}, "worst": _worst(by_seed)}
    if args.robustness:
        result["robustness"] = robustness(model, tokenizer, size, args.robustness_n, args.resize)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        (Path(args.assets) / f"{MODEL_NAME}.eval.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
