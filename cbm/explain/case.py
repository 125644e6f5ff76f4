"""Per-case explanation: one image in, everything a clinician's report shows out.

:func:`explain_image` reads the image (PNG, JPEG or DICOM through ``cbm.data.read_image``), embeds
it once, and gathers what the report shows, as a :class:`CaseReport`:

* the model's :class:`~cbm.model.Prediction`, with the flags under which it is withheld (the
  image checks and the out-of-distribution score of :mod:`cbm.reference`);
* the findings that separate the predicted class from the runner-up, in findings language
  (:mod:`cbm.explain.findings`), and every concept's training percentile;
* concept maps (:mod:`cbm.explain.maps`) of the top findings that are not absent;
* the nearest training images (the model's training reference).

A :class:`CaseReport` also answers test-time interventions: mark a concept present or absent and
see the new probabilities.

    case = explain_image(model, "case1.dcm")
    case.withheld, case.findings[0].text, case.neighbours[0].label
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

from cbm.explain.findings import Finding, concept_axes, findings
from cbm.explain.maps import ConceptMaps, encode_spatial
from cbm.explain.overlay import MIN_MAP_GRID
from cbm.model import ConceptBottleneckModel, Prediction
from cbm.reference import Flag, Neighbour, as_pixels, display_pixels

__all__ = ["CaseReport", "explain_image", "shown_meta", "SAFE_META_KEYS", "NEIGHBOURS"]

log = logging.getLogger(__name__)

# Image facts a report may show. ``cbm.data.read_image`` promises non-PHI metadata; the report
# still shows only these keys, so a new field is never published by accident.
SAFE_META_KEYS = (
    "format", "modality", "body_part", "view_position", "laterality", "photometric", "bits", "bits_allocated",
    "bits_stored", "transfer_syntax", "frames", "frame", "original_shape", "voi", "burned_in_annotation",
)
NEIGHBOURS = 4
"""Nearest training images a report shows."""


_META_LABELS = {"voi": "levels shown", "original_shape": "size in pixels (rows, columns)", "frame": "frame read"}
# how grey levels were brought to the screen (cbm.data's "voi"), in words
_VOI = {"nominal": "as stored, scaled by the bit depth", "min_max": "stretched from the image's lowest to its highest value",
        "palette": "through the file's colour palette", "window": "through the file's window (centre and width)",
        "voi_lut": "through the file's VOI lookup table"}


def shown_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A report's image facts as a reader takes them ("image frame read": "2 of 3"; grey levels in words)."""
    return {f"image {_META_LABELS.get(k, k.replace('_', ' '))}": _meta_text(k, v, meta) for k, v in meta.items()}


def _meta_text(key: str, value: Any, meta: Mapping[str, Any]) -> Any:
    if key == "frame" and isinstance(value, int):
        return f"{value + 1} of {meta.get('frames', '?')} (counted from 1)"
    if key == "voi":
        return f"{_VOI.get(str(value), str(value))} ({value})"
    return value


@dataclass
class CaseReport:
    """Everything a report shows for one image.

    Attributes:
        label: how the report names the case (a file name, ``"case 3"`` or ``"uploaded image"``).
        explanation: prediction, probabilities, contributions and flags (``cbm.model``).
        feature: the image embedding ``(D,)`` the explanation was computed from.
        image: ``(H, W, 3)`` uint8, the image as displayed (longest side at most ``max_side``).
        crop: ``(left, top, width, height)`` in ``image`` pixels of what the encoder's input square
            covers (:func:`seen_box`: a centred square, the whole image, or past its edges).
        maps: concept maps of the top findings that are not absent (empty when the encoder's grid
            is too coarse), or ``None`` when not computed.
        grid: the encoder's map grid ``(h, w)``, or ``None`` when maps were not computed.
        percentiles: every concept's training percentile in this image (``None``: no training scores).
        findings: what separates the predicted class from the runner-up, strongest first.
        neighbours: the nearest training images (empty for a model without a training reference).
        meta: non-PHI image facts (keys from :data:`SAFE_META_KEYS`).
        truth: the known label (from a manifest), if any.
        timings: seconds spent per step (``read``, ``encode``, ``maps`` with the findings, ``neighbours``).
    """

    label: str
    explanation: Prediction
    feature: np.ndarray
    image: np.ndarray
    crop: tuple[int, int, int, int]
    maps: ConceptMaps | None
    grid: tuple[int, int] | None = None
    percentiles: dict[str, float | None] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    truth: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    model: ConceptBottleneckModel | None = field(default=None, repr=False)

    @property
    def predicted(self) -> str:
        return self.explanation.predicted

    @property
    def image_shown(self) -> bool:
        """False where the image may not be shown: its DICOM header says text is burned into its pixels."""
        return not self.meta.get("burned_in_annotation")

    @property
    def flags(self) -> list[Flag]:
        """Why the prediction is withheld (empty: it is shown)."""
        return self.explanation.flags

    @property
    def withheld(self) -> bool:
        return self.explanation.withheld

    def strongest_present(self) -> Finding | None:
        """The strongest finding that is present in the image and favours the predicted class."""
        return next((f for f in self.findings if f.state == "present" and f.favours == self.predicted), None)

    def intervene(self, overrides: Mapping[str, float | str]) -> dict[str, float]:
        """Class probabilities after setting concept values by hand.

        Args:
            overrides: concept -> ``"present"``, ``"absent"`` (the model's
                :meth:`~cbm.model.ConceptBottleneckModel.presence_levels`) or a number: a
                probability (0 to 1) for a concept the model calibrates, else a standardised score (0 =
                training mean, 1 = one standard deviation above).
        """
        if self.model is None:
            raise RuntimeError("this case was built without its model; explain it with explain_image(model, ...)")
        # the model's own checks (an unknown concept with the closest names, a value it cannot take)
        proba = self.model.intervene_features(self.feature, overrides, _stacklevel=3)  # a warning names the caller
        return {c: float(p) for c, p in zip(self.model.classes, proba)}


def seen_box(height: int, width: int, resize_mode: str = "shortest") -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` in a ``height`` x ``width`` image of what the encoder's input
    square covers, so where its maps lie: the centred square of the shortest side (``shortest``:
    resize, centre-crop), the whole image (``squash``: stretched into the square), or the square
    of the longest side, past the image's edges (``longest``: the image padded to a square)."""
    if resize_mode == "squash":
        return 0, 0, width, height
    if resize_mode == "longest":  # the padding before the image: (side - n) // 2, as the transform pads
        side = max(height, width)
        return -((side - width) // 2), -((side - height) // 2), side, side
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side, side


def _percentiles(model: ConceptBottleneckModel, feature: np.ndarray) -> dict[str, float | None]:
    names = model.bottleneck.concept_names
    pct = model.score_percentiles(model.bottleneck.raw_scores(feature[None])[0])
    return {n: None for n in names} if pct is None else {n: float(p) for n, p in zip(names, pct)}


def _drivers(model: ConceptBottleneckModel, expl: Prediction, percentiles: dict[str, float | None]) -> list[Finding]:
    """The case's findings: what the head weighs less a training image of average value, and the
    probabilities of the concepts it reads as probabilities."""
    names, offsets, on = model.bottleneck.concept_names, model.value_offsets(), model.calibrated()
    return findings(expl.scores, percentiles, model.coef, model.classes, names, expl.predicted, expl.runner_up,
                    concept_axes(names), values={c: expl.values[c] - offsets[j] for j, c in enumerate(names)},
                    probabilities={c: expl.values[c] for j, c in enumerate(names) if on[j]})


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
    neighbours: int = NEIGHBOURS,
) -> CaseReport:
    """Explain one image for a report.

    Args:
        model: a trained model (its encoder is created on first use).
        image: a path (PNG, JPEG, DICOM), a ``cbm.data.LoadedImage``, a PIL image, an ``(H, W[, C])``
            array or a ``(C, H, W)`` torch tensor (uint8, or floats in [0, 1]).
        label: the name the report shows (default: the file name, or ``"image"``).
        truth: the known label, shown beside the prediction.
        top_k: findings mapped (those of them that are not absent).
        maps: compute concept maps.
        map_method: ``"auto"``, ``"patch-tokens"``, ``"cam"`` or ``"grad-cam"`` (:func:`cbm.explain.maps.encode_spatial`).
        max_side: longest side of the image as displayed in the report.
        neighbours: nearest training images shown (0: none).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if label is None:
        label = os.path.basename(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else "image"
    t0 = time.perf_counter()
    pixels, meta, loaded = as_pixels(image)
    t1 = time.perf_counter()
    encoder = model.encoder
    tensor = encoder.transform(loaded)
    if maps:
        spatial = encode_spatial(encoder, tensor, method=map_method)
        feature = spatial.feature
    else:
        with torch.inference_mode():
            feature = encoder.encode_image(tensor.unsqueeze(0))[0].float().cpu().numpy()
    feature = np.asarray(feature, np.float32)
    t2 = time.perf_counter()
    expl = model.explain_features(feature, image_flags=model.image_checks(pixels, meta), image_notes=model.image_notes(meta))
    percentiles = _percentiles(model, feature)
    names = model.bottleneck.concept_names
    drivers = _drivers(model, expl, percentiles)
    concept_maps, grid = None, None
    if maps:
        grid = tuple(int(g) for g in spatial.grid)
        wanted = list(dict.fromkeys(f.seen for f in drivers[:top_k] if f.seen is not None))
        if min(grid) < MIN_MAP_GRID:
            wanted = []  # too coarse to localise: the report says so instead
        if wanted:
            index = {c: i for i, c in enumerate(names)}
            concept_maps = spatial.concept_maps(wanted, model.bottleneck.directions[[index[n] for n in wanted]])
        else:
            concept_maps = ConceptMaps([], np.zeros((0, *grid), np.float32), spatial.method)
    t3 = time.perf_counter()
    nearest = model.reference.nearest(feature, neighbours) if model.reference is not None and neighbours else []
    t4 = time.perf_counter()
    shown = display_pixels(pixels, max_side)
    return CaseReport(
        label=label,
        explanation=expl,
        feature=feature,
        image=shown,
        crop=seen_box(*shown.shape[:2], getattr(encoder.transform, "config", {}).get("resize_mode", "shortest")),
        maps=concept_maps,
        grid=grid,
        percentiles=percentiles,
        findings=drivers,
        neighbours=nearest,
        meta={k: meta[k] for k in SAFE_META_KEYS if k in meta},
        truth=truth,
        timings={"read": t1 - t0, "encode": t2 - t1, "maps": t3 - t2, "neighbours": t4 - t3},
        model=model,
    )
