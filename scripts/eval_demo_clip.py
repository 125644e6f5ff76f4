"""Measure ``demo-clip``: zero-shot concept AUROC and class accuracy on held-out demo images (JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py                   # the shipped weights
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --robustness      # + CBM vs probe check
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/eval_demo_clip.py --assets /tmp/demo-clip --n 500

The held-out images come from the demo world's evaluation stream (never seen in pretraining),
are drawn at 128 px like a demo dataset and reach the model through its own open_clip
preprocessing (``--resize bicubic-noaa`` resizes without anti-aliasing instead, as a MONAI or
torch pipeline may). For every core concept the script reports the AUROC of the
positive-minus-negative prompt score, cos(image, "irregular border") - cos(image, "regular
border"), against the exact ground truth, and of the positive prompt alone; for the classes, the
zero-shot accuracy of class-name prompts (3 classes on all images, 2 classes on the images outside
the suspicious band).

``--robustness`` adds a quick version of issue 6's experiment on a confounded 2-class world
(p = 0.95) and a 3-class world: a linear probe on raw image features versus a sparse
(L1) logistic head on standardised concept scores of the demo concept list, in-domain (val) and
out-of-domain (test) accuracy, and the head's weight on each ABCD concept.
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
from cbm.demo.render import render_scene
from cbm.demo.world import ABCD_CONCEPTS, CORE_CONCEPTS, RULE_WEIGHTS, abcd_label, demo_concepts, lesion_attributes

TEMPLATES = ("{}", "dermoscopy of a lesion with {}", "dermoscopic image of a skin lesion with {}")
CLASS_TEMPLATES = ("dermoscopy of a {}", "dermoscopic image of a {}", "a dermoscopy photo of a {}")


def load(assets: Path):
    """The model, tokenizer and preprocessing transform from an assets folder."""
    import open_clip

    config = json.loads((assets / f"{MODEL_NAME}.json").read_text())
    model = open_clip.model.CLIP(**config)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(assets / f"{MODEL_NAME}.safetensors")))
    model.eval()
    size = config["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(size, is_train=False)
    tokenizer = open_clip.get_tokenizer("RN50", context_length=config["text_cfg"]["context_length"])
    return model, tokenizer, preprocess, size


@torch.inference_mode()
def embed_images(model, preprocess, images: np.ndarray, resize: str, size: int) -> np.ndarray:
    from PIL import Image

    if resize == "openclip":
        batch = torch.stack([preprocess(Image.fromarray(im)) for im in images])
    else:
        import open_clip

        t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
        mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        batch = (t.clamp(0, 1) - mean) / std
    feats = torch.cat([model.encode_image(batch[i : i + 256]) for i in range(0, len(batch), 256)])
    return torch.nn.functional.normalize(feats, dim=-1).numpy()


@torch.inference_mode()
def embed_texts(model, tokenizer, phrases: list[str], templates=TEMPLATES) -> np.ndarray:
    """Prompt-ensembled, L2-normalised text embeddings, one row per phrase."""
    out = []
    for phrase in phrases:
        t = model.encode_text(tokenizer([tpl.format(phrase) for tpl in templates]))
        t = torch.nn.functional.normalize(t, dim=-1).mean(0)
        out.append(torch.nn.functional.normalize(t, dim=-1))
    return torch.stack(out).numpy()


def zero_shot(model, tokenizer, preprocess, size: int, n: int, seed: int, resize: str) -> dict:
    from sklearn.metrics import roc_auc_score

    scenes = [corpus_scene(i, seed, stream=EVAL_STREAM) for i in range(n)]
    images = np.stack([render_scene(s, 128) for s in scenes])
    feats = embed_images(model, preprocess, images, resize, size)
    attrs = [lesion_attributes(s.lesion) for s in scenes]
    pos = embed_texts(model, tokenizer, [c.phrase for c in CORE_CONCEPTS])
    neg = embed_texts(model, tokenizer, [c.negative for c in CORE_CONCEPTS])
    concepts = {}
    for k, c in enumerate(CORE_CONCEPTS):
        truth = c.truth([a[c.attribute] for a in attrs])
        concepts[c.phrase] = {
            "auroc": round(float(roc_auc_score(truth, feats @ (pos[k] - neg[k]))), 4),
            "auroc_positive_only": round(float(roc_auc_score(truth, feats @ pos[k])), 4),
            "prevalence": round(float(truth.mean()), 3),
        }
    cues = {}
    for phrase, negative, kind in (("ruler", "no ruler", "ruler"), ("violet ink marks", "no ink marks", "ink")):
        e = embed_texts(model, tokenizer, [phrase, negative])
        truth = np.array([s.cue == kind for s in scenes])
        cues[phrase] = round(float(roc_auc_score(truth, feats @ (e[0] - e[1]))), 4)
    tenths = np.array([s.lesion.tds_tenths for s in scenes])
    acc = {}
    for classes in (3, 2):
        names = ["benign nevus", "melanoma"] if classes == 2 else ["benign nevus", "suspicious lesion", "melanoma"]
        labels = np.array([abcd_label(t, 3) for t in tenths])
        keep = np.isin(labels, names)
        emb = embed_texts(model, tokenizer, names, CLASS_TEMPLATES)
        pred = np.array(names)[(feats[keep] @ emb.T).argmax(1)]
        acc[f"{classes}_class"] = {"accuracy": round(float((pred == labels[keep]).mean()), 4), "n": int(keep.sum()),
                                   "chance": round(float(max(np.mean(labels[keep] == c) for c in names)), 4)}
    values = [v["auroc"] for v in concepts.values()]
    values_pos = [v["auroc_positive_only"] for v in concepts.values()]
    return {
        "concept_auroc": concepts,
        "mean_auroc": round(float(np.mean(values)), 4),
        "min_auroc": round(float(np.min(values)), 4),
        "min_concept": min(concepts, key=lambda k: concepts[k]["auroc"]),
        "mean_auroc_positive_only": round(float(np.mean(values_pos)), 4),
        "min_auroc_positive_only": round(float(np.min(values_pos)), 4),
        "cue_auroc": cues,
        "zero_shot_class_accuracy": acc,
    }


def robustness(model, tokenizer, preprocess, size: int, n: int, resize: str) -> dict:
    """Linear probe vs sparse concept head on confounded demo worlds (a quick version of issue 6)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out = {}
    for classes in (2, 3):
        items = plan_dataset(n, 0.95, classes, seed=1)
        images = np.stack([render_scene(it.scene, 128) for it in items])
        feats = embed_images(model, preprocess, images, resize, size)
        labels = np.array([it.label for it in items])
        split = np.array([it.split for it in items])
        concepts = list(dict.fromkeys(c for cs in demo_concepts(classes).values() for c in cs))
        emb = embed_texts(model, tokenizer, concepts, ("{}",))
        scores = StandardScaler().fit(feats[split == "train"] @ emb.T).transform(feats @ emb.T)
        tr, va, te = (split == s for s in ("train", "val", "test"))
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
    model, tokenizer, preprocess, size = load(Path(args.assets))
    result = {"model": MODEL_NAME, "n_images": args.n, "resize": args.resize}
    result.update(zero_shot(model, tokenizer, preprocess, size, args.n, args.seed, args.resize))
    if args.robustness:
        result["robustness"] = robustness(model, tokenizer, preprocess, size, args.robustness_n, args.resize)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        (Path(args.assets) / f"{MODEL_NAME}.eval.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
