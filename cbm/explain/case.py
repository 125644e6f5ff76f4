"""Per-case explanation: one image in, everything a clinician's report shows out.

:func:`explain_image` reads the image (PNG, JPEG or DICOM through ``cbm.data.read_image``), embeds
it once, explains the prediction with the model's head (contributions ``weight x score`` for the
predicted class and the runner-up, each score's percentile among the training images), and maps
the top concepts onto the image (:mod:`cbm.explain.maps`). The result, :class:`ExplainedCase`, also
answers test-time interventions: mark a concept present or absent and see the new probabilities.

    case = explain_image(model, "case1.dcm")
    case.explanation.predicted, case.explanation.top_concepts()
    case.intervene({"irregular border": "absent"})   # -> {class: probability}
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cbm.explain.maps import ConceptMaps, encode_spatial
from cbm.model import Prediction, ConceptBottleneckModel

__all__ = [
    "ExplainedCase",
    "explain_image",
    "input_warnings",
    "presence_levels",
    "PRESENT_PERCENTILE",
    "ABSENT_PERCENTILE",
    "SAFE_META_KEYS",
    "MIN_IMAGE_SIDE",
]

log = logging.getLogger(__name__)

# "Present" / "absent" in an intervention set a concept's score to where the training images at
# these percentiles sit: a clearly high or clearly low score the model has actually seen.
PRESENT_PERCENTILE = 95.0
ABSENT_PERCENTILE = 5.0
# Without training scores (an old model folder), fall back to +-2 standard deviations.
_FALLBACK_LEVEL = 2.0

# Image facts a report may show. ``cbm.data.read_image`` promises non-PHI metadata; the report
# still shows only these keys, so a new field is never published by accident.
SAFE_META_KEYS = (
    "format", "modality", "body_part", "view_position", "laterality", "photometric", "bits", "bits_allocated",
    "bits_stored", "transfer_syntax", "frames", "frame", "original_shape", "voi",
)

# An image is checked against what the model was trained on (its card's modality), and a report
# says so when they disagree: the model still predicts, but a clinician must not read a CT slice
# explained by a dermoscopy model as if the prediction meant something.
# (words in the card's modality, DICOM Modality codes such images carry, trained on colour images)
# (OT "other" and SC "secondary capture" are what converted and exported images often carry.)
_MODALITY_EXPECTATIONS = (
    (("xray", "radiograph"), ("CR", "DX", "RG", "OT", "SC"), False),
    (("dermoscop",), ("DMS", "XC", "OT", "SC"), True),
    (("photograph",), ("XC", "OT", "SC"), True),
)
# A colour image has more than this share of pixels whose channels differ by over 4/255 (a grey
# image with a coloured annotation or ruler stays grey).
_COLOUR_PIXEL_SHARE = 0.01
MIN_IMAGE_SIDE = 32
"""Images with a shorter side (in pixels) are flagged as too small to show a finding."""


@dataclass
class ExplainedCase:
    """Everything a report shows for one image.

    Attributes:
        label: how the report names the case (a file name, or ``"uploaded image"``).
        explanation: prediction, probabilities and concept contributions (``cbm.model``).
        feature: the image embedding ``(D,)`` the explanation was computed from.
        image: ``(H, W, 3)`` uint8, the image as displayed (longest side at most ``max_side``).
        crop: ``(left, top, side)`` of the square the encoder saw, in ``image`` pixels
            (encoders resize the shortest side and centre-crop).
        maps: concept maps of the top concepts, or ``None`` when not computed.
        meta: non-PHI image facts (keys from :data:`SAFE_META_KEYS`).
        truth: the known label (from a manifest), if any.
        warnings: why the prediction may not apply to this image (:func:`input_warnings`); empty when
            nothing is amiss.
        timings: seconds spent per step (``read``, ``encode``, ``maps``).
    """

    label: str
    explanation: Prediction
    feature: np.ndarray
    image: np.ndarray
    crop: tuple[int, int, int]
    maps: ConceptMaps | None
    meta: dict[str, Any] = field(default_factory=dict)
    truth: str | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    model: ConceptBottleneckModel | None = field(default=None, repr=False)

    @property
    def predicted(self) -> str:
        return self.explanation.predicted

    def intervene(self, overrides: Mapping[str, float | str]) -> dict[str, float]:
        """Class probabilities after setting concept scores by hand.

        Args:
            overrides: concept -> ``"present"``, ``"absent"`` (see :func:`presence_levels`) or a
                standardised score (0 = training mean, 1 = one standard deviation above).
        """
        if self.model is None:
            raise RuntimeError("this case was built without its model; explain it with explain_image(model, ...)")
        absent, present = presence_levels(self.model)
        index = {c: i for i, c in enumerate(self.model.bottleneck.concept_names)}
        values: dict[str, float] = {}
        for name, value in overrides.items():
            if name not in index:
                from cbm.utils import unknown_name_message

                raise KeyError(unknown_name_message("concept", name, index))
            if isinstance(value, str):
                if value not in ("present", "absent"):
                    raise ValueError(f"intervention for {name!r} is {value!r}; use 'present', 'absent' or a number")
                value = present[index[name]] if value == "present" else absent[index[name]]
            values[name] = float(value)
        proba = self.model.intervene_features(self.feature, values)
        return {c: float(p) for c, p in zip(self.model.classes, proba)}


def presence_levels(model: ConceptBottleneckModel) -> tuple[np.ndarray, np.ndarray]:
    """Standardised scores that mean "absent" and "present" for each concept, ``(C,)`` each.

    The training images' raw scores at :data:`ABSENT_PERCENTILE` and :data:`PRESENT_PERCENTILE`,
    standardised like any score; +-2 when the model folder has no training scores.
    """
    raw = model.train_raw_scores
    bn = model.bottleneck
    if raw is None or len(raw) < 2 or bn.mean_ is None or bn.std_ is None:
        c = bn.n_concepts
        return np.full(c, -_FALLBACK_LEVEL, np.float32), np.full(c, _FALLBACK_LEVEL, np.float32)
    lo, hi = np.percentile(raw, [ABSENT_PERCENTILE, PRESENT_PERCENTILE], axis=0)
    return ((lo - bn.mean_) / bn.std_).astype(np.float32), ((hi - bn.mean_) / bn.std_).astype(np.float32)


def input_warnings(model: ConceptBottleneckModel, pixels: np.ndarray, meta: Mapping[str, Any]) -> list[str]:
    """Why the model's prediction may not apply to an image; empty when nothing is amiss.

    Checks the image against the modality of the card the model was trained on (``model.info``):
    a DICOM file of another modality (a CT slice for a dermoscopy model), a greyscale image for a
    model trained on colour photographs, and an image too small to show a finding.
    """
    found: list[str] = []
    modality = str(((model.info or {}).get("card") or {}).get("modality") or "")
    words = "".join(modality.lower().replace("-", " ").split())  # "chest X-ray", "chest x ray" -> "chestxray"
    for keys, codes, colour in _MODALITY_EXPECTATIONS:
        if not any(k in words for k in keys):
            continue
        code = str(meta.get("modality") or "").upper()
        if meta.get("format") == "dicom" and code and code not in codes:
            found.append(f"This DICOM file's modality is {code}; the model was trained on {modality} images "
                         f"(DICOM modality {' or '.join(codes)}), so its prediction does not apply to this image.")
        if colour and (pixels.shape[2] == 1 or float(np.mean(np.ptp(pixels, axis=2) > 4.0 / 255.0)) <= _COLOUR_PIXEL_SHARE):
            found.append(f"The image is greyscale; the model was trained on colour {modality} images, "
                         "so its prediction may not apply to this image.")
        break
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        found.append(f"The image is {width} x {height} pixels, too small to show a finding "
                     f"(at least {MIN_IMAGE_SIDE} pixels on each side expected); the prediction does not mean much.")
    return found


def _load(image: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
    """(pixels (H, W, C) float32 in [0, 1], meta, the object the encoder transform takes)."""
    if isinstance(image, (str, os.PathLike)):
        from cbm.data import read_image

        image = read_image(image)
    if hasattr(image, "pixels"):
        return np.asarray(image.pixels, np.float32), dict(getattr(image, "meta", {}) or {}), image
    arr = np.asarray(image, np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.size == 0:
        raise ValueError(f"an image array must be (H, W), (H, W, 1) or (H, W, 3); got shape {arr.shape}")
    return arr, {}, arr


def display_image(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """``(H, W, C)`` floats in [0, 1] -> ``(h, w, 3)`` uint8 with the longest side at most ``max_side``."""
    from PIL import Image

    rgb = np.clip(pixels, 0.0, 1.0)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    img = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    return np.asarray(img)


def _centre_crop_box(height: int, width: int) -> tuple[int, int, int]:
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side


def _map_concepts(expl: Prediction, top_k: int) -> list[str]:
    """The top concepts of the predicted class, then the runner-up's, without repeats."""
    names: list[str] = []
    for cls in (expl.predicted, expl.runner_up):
        if cls is None:
            continue
        for c in expl.top_concepts(cls, top_k):
            if c.concept not in names:
                names.append(c.concept)
    return names


def explain_image(
    model: ConceptBottleneckModel,
    image: Any,
    *,
    label: str | None = None,
    truth: str | None = None,
    top_k: int = 5,
    maps: bool = True,
    map_method: str = "auto",
    max_side: int = 512,
) -> ExplainedCase:
    """Explain one image for a report.

    Args:
        model: a trained model (its encoder is created on first use).
        image: a path (PNG, JPEG, DICOM), a ``cbm.data.LoadedImage``, or an ``(H, W[, C])`` array in [0, 1].
        label: the name the report shows (default: the file name, or ``"image"``).
        truth: the known label, shown beside the prediction.
        top_k: contributions listed (and mapped) for the predicted class and for the runner-up.
        maps: compute concept maps for those concepts.
        map_method: ``"auto"``, ``"patch-tokens"`` or ``"grad-cam"`` (:func:`cbm.explain.maps.encode_spatial`).
        max_side: longest side of the image as displayed in the report.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if label is None:
        label = os.path.basename(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else "image"
    t0 = time.perf_counter()
    pixels, meta, loaded = _load(image)
    t1 = time.perf_counter()
    encoder = model.encoder
    tensor = encoder.transform(loaded)
    if maps:
        spatial = encode_spatial(encoder, tensor, method=map_method)
        feature = spatial.feature
    else:
        with torch.inference_mode():
            feature = encoder.encode_image(tensor.unsqueeze(0))[0].float().cpu().numpy()
    t2 = time.perf_counter()
    expl = model.explain_features(feature)
    concept_maps = None
    if maps:
        names = _map_concepts(expl, top_k)
        index = {c: i for i, c in enumerate(model.bottleneck.concept_names)}
        emb = model.bottleneck.directions[[index[n] for n in names]] if names else np.zeros((0, len(feature)))
        concept_maps = spatial.concept_maps(names, emb)
    t3 = time.perf_counter()
    shown = display_image(pixels, max_side)
    return ExplainedCase(
        label=label,
        explanation=expl,
        feature=np.asarray(feature, np.float32),
        image=shown,
        crop=_centre_crop_box(*shown.shape[:2]),
        maps=concept_maps,
        meta={k: meta[k] for k in SAFE_META_KEYS if k in meta},
        truth=truth,
        warnings=input_warnings(model, pixels, meta),
        timings={"read": t1 - t0, "encode": t2 - t1, "maps": t3 - t2},
        model=model,
    )
