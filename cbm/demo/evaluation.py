"""Zero-shot measurement of a demo-world CLIP: concept AUROC, cue AUROC and class accuracy.

Shared by ``scripts/eval_demo_clip.py`` (the figures in the README, on the evaluation stream) and
``scripts/pretrain_demo_clip.py`` (which scores checkpoints during training on the selection
stream and keeps the best, so that the evaluation images never choose a checkpoint).

For every core concept the score of an image is cos(image, concept prompt), the prompt ensembled
over ``TEMPLATES`` (the same score the concept bottleneck uses), and its AUROC is taken against the
exact ground truth of the drawn scene. Two references come with it: for a graded concept, the AUROC
of the contrast with its opposite phrase ("irregular border" minus "regular border"); for a colour
or a structure, the AUROC that the number of colours (structures) alone reaches, since a lesion
with more colours is more likely to have any given one. A colour score near that figure says the
encoder counts colours but does not know which they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cbm.demo.corpus import said_when_absent
from cbm.demo.render import render_scene
from cbm.demo.world import (
    CLASS_NAMES,
    COLOUR_CONCEPTS,
    COLOURS,
    CORE_CONCEPTS,
    CUE_PROMPTS,
    STRUCTURE_CONCEPTS,
    STRUCTURES,
    Scene,
    abcd_label,
    attribute_column,
    concept_truth,
    lesion_attributes,
)

__all__ = [
    "BEATS_CENTRE_BY",
    "POINTING_CONCEPTS",
    "pointing_game",
    "pointing_on_scenes",
    "TEMPLATES",
    "CLASS_TEMPLATES",
    "held_out_batch",
    "embed_images",
    "embed_texts",
    "concept_auroc",
    "zero_shot",
    "selection_score",
]

TEMPLATES = ("{}", "dermoscopy of a lesion with {}", "dermoscopic image of a skin lesion with {}")
CLASS_TEMPLATES = ("dermoscopy of a {}", "dermoscopic image of a {}", "a dermoscopy photo of a {}")
_CUES = tuple((phrase, kind) for kind, phrase in CUE_PROMPTS.items())
_COUNT_OF = {attribute_column(c): "n_colours" for c in COLOURS} | {attribute_column(s): "n_structures" for s in STRUCTURES}


def held_out_batch(scenes: Sequence[Scene], size: int, resize: str = "openclip", draw_size: int = 128,
                   masks: list | None = None) -> torch.Tensor:
    """Scenes drawn at ``draw_size`` (as a demo dataset is) and preprocessed for a ``size`` px model:
    open_clip's own transform (``openclip``) or a plain bicubic resize without anti-aliasing
    (``bicubic-noaa``, as a MONAI or torch pipeline may do). Given a list as ``masks``, each
    scene's drawn masks (``render_scene(..., masks=True)``) are appended to it."""
    import open_clip
    from PIL import Image

    images = []
    for s in scenes:
        if masks is None:
            images.append(render_scene(s, draw_size))
        else:
            image, drawn = render_scene(s, draw_size, masks=True)
            images.append(image)
            masks.append(drawn)
    if resize == "openclip":
        transform = open_clip.image_transform(size, is_train=False)
        return torch.stack([transform(Image.fromarray(im)) for im in images])
    if resize != "bicubic-noaa":
        raise ValueError(f"unknown resize {resize!r}; use openclip or bicubic-noaa")
    t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=False)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (t.clamp(0, 1) - mean) / std


@torch.inference_mode()
def embed_images(model: Any, batch: torch.Tensor, chunk: int = 256) -> np.ndarray:
    """L2-normalised image features of a preprocessed batch, as float32 numpy."""
    device = next(model.parameters()).device
    feats = torch.cat([model.encode_image(batch[i : i + chunk].to(device)).float() for i in range(0, len(batch), chunk)])
    return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy()


@torch.inference_mode()
def embed_texts(model: Any, tokenizer: Any, phrases: Sequence[str], templates: Sequence[str] = TEMPLATES) -> np.ndarray:
    """Prompt-ensembled, L2-normalised text embeddings, one row per phrase."""
    device = next(model.parameters()).device
    out = []
    for phrase in phrases:
        t = model.encode_text(tokenizer([tpl.format(phrase) for tpl in templates]).to(device)).float()
        t = torch.nn.functional.normalize(t, dim=-1).mean(0)
        out.append(torch.nn.functional.normalize(t, dim=-1))
    return torch.stack(out).cpu().numpy()


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score))


def concept_auroc(model: Any, tokenizer: Any, feats: np.ndarray, scenes: Sequence[Scene]) -> dict[str, dict[str, float]]:
    """Per core concept: the AUROC of its prompt's score against the truth, the prevalence, and a
    reference (``contrast_auroc`` for a graded concept, ``count_auroc`` for a colour or structure)."""
    attrs = [lesion_attributes(s.lesion) for s in scenes]
    pos = embed_texts(model, tokenizer, [c.phrase for c in CORE_CONCEPTS])
    graded = [c for c in CORE_CONCEPTS if said_when_absent(c)]
    neg = dict(zip((c.phrase for c in graded), embed_texts(model, tokenizer, [c.negative for c in graded])))
    out = {}
    for k, c in enumerate(CORE_CONCEPTS):
        truth = c.truth([a[c.attribute] for a in attrs])
        entry = {"auroc": round(_auroc(truth, feats @ pos[k]), 4), "prevalence": round(float(truth.mean()), 3)}
        if c.phrase in neg:
            entry["contrast_auroc"] = round(_auroc(truth, feats @ (pos[k] - neg[c.phrase])), 4)
        else:
            entry["count_auroc"] = round(_auroc(truth, np.array([a[_COUNT_OF[c.attribute]] for a in attrs])), 4)
        out[c.phrase] = entry
    return out


def zero_shot(model: Any, tokenizer: Any, feats: np.ndarray, scenes: Sequence[Scene]) -> dict[str, Any]:
    """Concept AUROC (with mean, min and the weakest concept), cue AUROC and zero-shot class
    accuracy (3 classes on all images, 2 on those outside the suspicious band)."""
    concepts = concept_auroc(model, tokenizer, feats, scenes)
    cues = {}
    for phrase, kind in _CUES:
        e = embed_texts(model, tokenizer, [phrase])[0]
        cues[phrase] = round(_auroc(np.array([s.cue == kind for s in scenes]), feats @ e), 4)
    labels = np.array([abcd_label(s.lesion.tds_tenths, 3) for s in scenes])
    accuracy, class_auroc = {}, {}
    for classes in (3, 2):
        names = list(CLASS_NAMES[classes])
        keep = np.isin(labels, names)
        sims = feats[keep] @ embed_texts(model, tokenizer, names, CLASS_TEMPLATES).T
        pred = np.array(names)[sims.argmax(1)]
        accuracy[f"{classes}_class"] = {
            "accuracy": round(float((pred == labels[keep]).mean()), 4),
            "n": int(keep.sum()),
            "chance": round(float(max(np.mean(labels[keep] == c) for c in names)), 4),
        }
        # one-vs-rest: a class prompt's cosine minus the mean of the other classes' (for two
        # classes, melanoma minus nevus), macro-averaged over the classes
        others = (sims.sum(1, keepdims=True) - sims) / (len(names) - 1)
        per_class = [_auroc(labels[keep] == c, sims[:, k] - others[:, k]) for k, c in enumerate(names)]
        class_auroc[str(classes)] = round(float(per_class[-1] if classes == 2 else np.mean(per_class)), 4)
    values = [v["auroc"] for v in concepts.values()]
    return {
        "concept_auroc": concepts,
        "mean_auroc": round(float(np.mean(values)), 4),
        "min_auroc": round(float(np.min(values)), 4),
        "min_concept": min(concepts, key=lambda k: concepts[k]["auroc"]),
        "cue_auroc": cues,
        "zero_shot_class_accuracy": accuracy,
        "zero_shot_class_auroc": class_auroc,
        "class_prompts": {"templates": list(CLASS_TEMPLATES), "classes": {str(k): list(v) for k, v in CLASS_NAMES.items()}},
    }


def selection_score(result: dict[str, Any], floor: float = 0.85) -> float:
    """How good a checkpoint is, from ``zero_shot``'s result: the mean concept AUROC minus the
    total shortfall of the concepts below ``floor`` (so one concept at chance costs a third of a
    point, and no mean gain elsewhere buys it back easily). The floor is the encoder's target for
    its weakest concept."""
    values = np.array([v["auroc"] for v in result["concept_auroc"].values()])
    return float(values.mean() - np.clip(floor - values, 0.0, None).sum())


POINTING_CONCEPTS: dict[str, str] = {
    **{COLOUR_CONCEPTS[c]: c for c in COLOURS},
    **{STRUCTURE_CONCEPTS[s]: s for s in STRUCTURES},
}
"""Concept phrase -> the mask (``cbm.demo.render.MASK_NAMES``) its map should point into: the
colours and structures, the things drawn at one place of the lesion."""


def _cell_hits(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` bool: which cells of a ``grid`` over the image hold at least one pixel of ``mask``."""
    h, w = grid
    rows = np.array_split(np.arange(mask.shape[0]), h)
    cols = np.array_split(np.arange(mask.shape[1]), w)
    return np.array([[mask[np.ix_(r, c)].any() for c in cols] for r in rows])


BEATS_CENTRE_BY = 0.05
"""How much more often than the middle cell a concept's maps must hit to count as pointing at it
(5 points: about three standard errors of a hit rate near 0.8 over 600 images with the concept)."""


def pointing_game(maps: np.ndarray, names: Sequence[str], masks: Sequence[dict[str, np.ndarray]],
                  truth: Sequence[dict[str, bool]], cue_kinds: Sequence[str]) -> dict[str, Any]:
    """The pointing game (Zhang et al. 2018) of concept maps against the drawn masks.

    A map points at its peak cell; the peak is a hit when the cell holds at least one pixel of the
    concept's mask (the map's grid laid over the whole image). Per concept: the hit rate over the
    images where the concept is present and drawn (``pointing``), and their mean (``pointing_mean``).
    ``pointing_cue``: over the images with a ruler or ink marks and every present concept, how often
    the peak falls on the mark and not on the concept (lower is better).
    ``pointing_centre_baseline``: the hit rate of a map that always peaks at the middle cell (over
    all present concepts; a large region such as the lesion's base colour is easy to hit);
    ``pointing_centre``: that rate per concept, ``pointing_centre_mean`` their mean (averaged as
    ``pointing_mean`` is, so the two compare), and ``pointing_beats_centre``: the concepts whose
    maps hit at least :data:`BEATS_CENTRE_BY` more often than the middle cell does.

    Args:
        maps: ``(n, k, h, w)`` raw maps (any scale: only the peak counts).
        names: the ``k`` concept phrases (keys of :data:`POINTING_CONCEPTS`).
        masks: per image, ``cbm.demo.render`` masks (name -> bool image).
        truth: per image, concept phrase -> present.
        cue_kinds: per image, the scene's cue ("none", "ruler", "ink").
    """
    n, k, h, w = maps.shape
    hits: dict[str, list[bool]] = {c: [] for c in names}
    centre: dict[str, list[bool]] = {c: [] for c in names}  # a map that always points at the middle cell
    on_cue: list[bool] = []
    for i in range(n):
        cue_cells = _cell_hits(masks[i][cue_kinds[i]], (h, w)) if cue_kinds[i] in ("ruler", "ink") else None
        for j, concept in enumerate(names):
            mask = masks[i][POINTING_CONCEPTS[concept]]
            if not truth[i][concept] or not mask.any():
                continue
            peak = np.unravel_index(int(np.argmax(maps[i, j])), (h, w))
            cells = _cell_hits(mask, (h, w))
            hits[concept].append(bool(cells[peak]))
            centre[concept].append(bool(cells[h // 2, w // 2]))
            if cue_cells is not None:
                on_cue.append(bool(cue_cells[peak] and not cells[peak]))
    rates = {c: (round(float(np.mean(v)), 4) if v else None) for c, v in hits.items()}
    known = [r for r in rates.values() if r is not None]
    centre_rates = {c: (round(float(np.mean(v)), 4) if v else None) for c, v in centre.items()}
    pooled = [hit for v in centre.values() for hit in v]
    return {
        "pointing": rates,
        "pointing_n": {c: len(v) for c, v in hits.items()},
        "pointing_mean": round(float(np.mean(known)), 4) if known else None,
        "pointing_centre_baseline": round(float(np.mean(pooled)), 4) if pooled else None,
        "pointing_centre": centre_rates,
        "pointing_centre_mean": round(float(np.mean([r for r in centre_rates.values() if r is not None])), 4)
        if known else None,
        "pointing_beats_centre": [c for c in names if rates[c] is not None
                                  and rates[c] >= centre_rates[c] + BEATS_CENTRE_BY - 1e-9],
        "pointing_cue": round(float(np.mean(on_cue)), 4) if on_cue else None,
        "pointing_cue_n": len(on_cue),
        "map_grid": [h, w],
    }


def pointing_on_scenes(maps: np.ndarray, scenes: Sequence[Scene], masks: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """:func:`pointing_game` of ``(n, k, h, w)`` maps of the :data:`POINTING_CONCEPTS` (in that order)
    on demo scenes, with each concept's truth and each image's mark read from the scene."""
    phrases = list(POINTING_CONCEPTS)
    rows = [lesion_attributes(s.lesion) for s in scenes]
    truth = [{p: bool(concept_truth([row], p)[0]) for p in phrases} for row in rows]
    return pointing_game(maps, phrases, masks, truth, [s.cue for s in scenes])
