"""Measure ``demo-clip``: zero-shot concept AUROC and class accuracy on held-out demo images (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py                   # the shipped weights
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --robustness      # + CBM vs probe check
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --assets /tmp/demo-clip --n 500

The held-out images come from the demo world's evaluation stream (never seen in pretraining),
are drawn at 128 px like a demo dataset and reach the model through its own open_clip
preprocessing (``--resize bicubic-noaa`` resizes without anti-aliasing instead, as a MONAI or
torch pipeline may). For every core concept the script reports the AUROC of cos(image, concept
prompt) against the exact ground truth, with a reference (``cbm.demo.evaluation``): the contrast
with the opposite phrase for a graded concept, the count of colours (structures) alone for a
colour (structure); for the classes, the zero-shot accuracy of class-name prompts (3 classes on all
images, 2 classes on the images outside the suspicious band).

``--robustness`` adds a quick version of issue 6's experiment on a confounded 2-class world
(p = 0.95) and a 3-class world: a linear probe on raw image features versus a sparse
(L1) logistic head on the demo concept list's scores from ``cbm.bottleneck`` (centred directions,
the cue's words projected out, as ``cbm run`` scores them), in-domain (val) and out-of-domain (test)
accuracy, and the head's weight on each ABCD concept.
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


def load(assets: Path):
    """The model, tokenizer and input size from an assets folder."""
    import open_clip
    from safetensors.torch import load_file

    config = json.loads((assets / f"{MODEL_NAME}.json").read_text())
    model = open_clip.model.CLIP(**config)
    model.load_state_dict(load_file(str(assets / f"{MODEL_NAME}.safetensors")))
    model.eval()
    tokenizer = open_clip.get_tokenizer("RN50", context_length=config["text_cfg"]["context_length"])
    return model, tokenizer, config["vision_cfg"]["image_size"]


def robustness(model, tokenizer, size: int, n: int, resize: str) -> dict:
    """Linear probe vs sparse concept head on confounded demo worlds (a quick version of issue 6)."""
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
    p.add_argument("--n", type=int, default=1000, help="held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resize", choices=("openclip", "bicubic-noaa"), default="openclip")
    p.add_argument("--robustness", action="store_true", help="add the CBM-vs-probe check (about a minute)")
    p.add_argument("--robustness-n", type=int, default=3000)
    p.add_argument("--write", action="store_true", help="also write demo-clip.eval.json beside the weights")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, tokenizer, size = load(Path(args.assets))
    result = {"model": MODEL_NAME, "n_images": args.n, "resize": args.resize}
    scenes = [corpus_scene(i, args.seed, stream=EVAL_STREAM) for i in range(args.n)]
    feats = embed_images(model, held_out_batch(scenes, size, args.resize))
    result.update(zero_shot(model, tokenizer, feats, scenes))
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
