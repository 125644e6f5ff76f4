"""Text embeddings with prompt ensembling.

A concept ("irregular border") is embedded through several templates ("a dermoscopy photo showing
{}", "dermoscopy of a skin lesion with {}", ...); the template embeddings are averaged and
renormalised (Radford et al. 2021, sec. 3.1.4), which is steadier than any single phrasing.
Templates are configurable; without them, the card's modality picks a default set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cbm.encoders.encoder import Encoder

__all__ = ["encode_texts", "check_templates", "default_templates", "render_prompts", "MODALITY_TEMPLATES"]

log = logging.getLogger(__name__)

MODALITY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "dermoscopy": (
        "a dermoscopy photo showing {}",
        "dermoscopy of a skin lesion with {}",
        "a dermoscopic image of a lesion with {}",
    ),
    "chest x-ray": (
        "a chest x-ray showing {}",
        "a chest radiograph with {}",
        "a frontal chest x-ray with {}",
    ),
    "fundus": (
        "a fundus photograph showing {}",
        "a retinal fundus image with {}",
        "a photo of the retina showing {}",
    ),
    "histopathology": (
        "a histopathology image showing {}",
        "an H&E stained tissue section with {}",
        "a microscopy image of tissue with {}",
    ),
    "ct": ("a CT scan showing {}", "a computed tomography image with {}", "a CT image of {}"),
    "mri": ("an MRI scan showing {}", "a magnetic resonance image with {}", "an MR image of {}"),
    "ultrasound": ("an ultrasound image showing {}", "a sonography image with {}", "an ultrasound scan of {}"),
}
"""Default templates per modality; ``{}`` is replaced by the concept."""

_MODALITY_ALIASES = {
    "dermatoscopy": "dermoscopy", "dermoscopic": "dermoscopy", "skin": "dermoscopy",
    "chest xray": "chest x-ray", "chest x ray": "chest x-ray", "cxr": "chest x-ray", "x-ray": "chest x-ray",
    "xray": "chest x-ray", "radiograph": "chest x-ray", "chest radiograph": "chest x-ray",
    "retina": "fundus", "retinal fundus": "fundus", "fundus photography": "fundus",
    "pathology": "histopathology", "histology": "histopathology", "h&e": "histopathology",
    "computed tomography": "ct", "mr": "mri", "magnetic resonance": "mri", "us": "ultrasound", "sonography": "ultrasound",
}  # fmt: skip


def default_templates(modality: str | None = None) -> tuple[str, ...]:
    """The templates used when none are given: the modality's set, or generic ones built from its name."""
    if modality:
        key = " ".join(modality.lower().replace("_", " ").split())
        key = _MODALITY_ALIASES.get(key, key)
        if key in MODALITY_TEMPLATES:
            return MODALITY_TEMPLATES[key]
        return (f"a {modality} image showing {{}}", f"a {modality} image with {{}}", "a medical image showing {}")
    return ("a medical image showing {}", "an image with {}", "{}")


def render_prompts(texts: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every text in every template, text-major: ``[t0 in tpl0, t0 in tpl1, ..., t1 in tpl0, ...]``.

    Raises:
        ValueError: no templates, or a template without exactly one ``{}`` placeholder.
    """
    templates = check_templates(templates)
    return [tpl.replace("{}", text.strip()) for text in texts for tpl in templates]


def encode_texts(
    encoder: Encoder,
    texts: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    modality: str | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Embed texts with prompt ensembling: ``(len(texts), D)`` L2-normalised float32 on the CPU.

    Args:
        encoder: from :func:`cbm.encoders.create_encoder`.
        texts: concepts or class names, e.g. ``["irregular border", "blue-white veil"]``.
        templates: phrasings with one ``{}`` each; ``["{}"]`` embeds the texts as they are.
            ``None`` uses :func:`default_templates` of ``modality``.
        modality: the card's modality ("dermoscopy", "chest x-ray", ...), used only when
            ``templates`` is ``None``.
        batch_size: prompts per forward pass.

    Returns:
        Row ``i`` is the mean of text ``i``'s template embeddings, renormalised.
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts takes a list of strings, not one string; wrap it in a list")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"encode_texts needs non-empty strings; got {bad[:3]!r}")
    templates = check_templates(default_templates(modality) if templates is None else templates)
    if not texts:
        return torch.zeros((0, encoder.embed_dim), dtype=torch.float32)
    prompts = render_prompts(texts, templates)
    unique = list(dict.fromkeys(prompts))  # "{}" and a template can give the same prompt twice
    emb = encoder.encode_text(unique, batch_size=batch_size)
    where = {p: i for i, p in enumerate(unique)}
    per_prompt = emb[torch.tensor([where[p] for p in prompts])]
    mean = per_prompt.view(len(texts), len(templates), -1).mean(dim=1)
    return F.normalize(mean, dim=-1)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("no prompt templates given; use ['{}'] to embed the texts as they are")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"each prompt template needs exactly one '{{}}' where the concept goes; these do not: {bad!r}")
    return templates
