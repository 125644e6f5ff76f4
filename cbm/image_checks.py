"""Image checks: why a model should not answer for an image, whatever its features say.

:func:`image_flags` finds a DICOM file of another modality than the card's (a CT slice for a
dermoscopy model), a greyscale image for a model trained on colour images (unless greyscale images
were a real share of its training set, :data:`GREYSCALE_TRAINING_SHARE`), and an image too small
to show a finding. With the out-of-distribution score (:mod:`cbm.reference`) they make the
:class:`Flag` s under which ``model.explain`` withholds a prediction; :func:`image_notes` says what a
reader should know of an answered one (one frame of several read, text burned into the pixels, a
modality that could not be checked). :func:`as_pixels` and
:func:`display_pixels` turn an image into the pixels these checks and the reports read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Flag", "image_flags", "image_notes", "dicom_modalities", "greyscale", "as_pixels", "display_pixels", "image_items",
           "feature_rows", "MIN_IMAGE_SIDE", "GREYSCALE_TRAINING_SHARE"]

MIN_IMAGE_SIDE = 32
"""Images with a shorter side (in pixels) are flagged as too small to show a finding."""
GREYSCALE_TRAINING_SHARE = 0.05
"""A model whose training images were greyscale in at least this share learned from greyscale images
too: a greyscale image is not withheld for its colour (the share is recorded when the reference is built)."""

# What each modality word of a card expects: DICOM Modality codes such images carry, and whether
# the model was trained on colour images. (OT "other" and SC "secondary capture" are what
# converted and exported images often carry.)
# A key matches at the start of a word of the card's modality, read with everything but letters and
# digits removed from there on ("chest X-ray" -> "xray"), or, after "=", as a whole word ("head CT,
# non-contrast"; "electron" holds no CT). Every entry that matches counts ("PET/CT" takes PT and CT).
# Every name the prompt templates know a modality by (cbm.encoders.text) is matched here too.
_MODALITY_EXPECTATIONS = (
    (("mammogra",), ("MG", "OT", "SC"), False),
    (("=ct", "computedtomograph"), ("CT", "OT", "SC"), False),
    (("=pet", "positronemission"), ("PT", "OT", "SC"), False),
    (("=mri", "=mr", "magneticresonance"), ("MR", "OT", "SC"), False),
    (("=oct", "opticalcoherence"), ("OPT", "IVOCT", "OT", "SC"), False),
    (("ultrasound", "sonograph", "echocardiograph", "=us"), ("US", "OT", "SC"), False),
    (("xray", "radiograph", "=cxr"), ("CR", "DX", "RG", "OT", "SC"), False),
    (("dermoscop", "dermatoscop", "=skin"), ("DMS", "XC", "OT", "SC"), True),
    (("fundus", "retina", "ophthalm"), ("OP", "XC", "OT", "SC"), True),
    (("histopatholog", "histolog", "=pathology", "haematoxylin", "hematoxylin", "wholeslide", "pathologyslide"),
     ("SM", "XC", "OT", "SC"), True),
    (("photograph",), ("XC", "OT", "SC"), True),
)
# A colour image has more than this share of pixels whose channels differ by over 4/255 (a grey
# image with a coloured annotation or ruler stays grey).
_COLOUR_PIXEL_SHARE = 0.01


@dataclass(frozen=True)
class Flag:
    """A reason to withhold a prediction, or a note on it: a short ``code`` for programs and a sentence for people.

    Flags: ``unlike-training`` (the out-of-distribution score), ``modality`` (a DICOM file of
    another modality), ``greyscale`` (a grey image for a model of colour images), ``too-small``.
    Notes (:func:`image_notes`, which withhold nothing): ``one-frame``, ``burned-in-text``,
    ``modality-unread``.
    """

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def greyscale(pixels: np.ndarray) -> bool:
    """Whether ``(H, W, C)`` pixels in [0, 1] are grey: one channel, or at most :data:`_COLOUR_PIXEL_SHARE`
    of the pixels with channels more than 4/255 apart."""
    return pixels.shape[2] == 1 or float(np.mean(np.ptp(pixels, axis=2) > 4.0 / 255.0)) <= _COLOUR_PIXEL_SHARE


def _is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "ndim")


def image_items(images: Any) -> list:
    """The images of ``predict``'s argument, one by one: a path, a ``LoadedImage``, an array or a PIL
    image alone is one image; a 4-d array or any other iterable of them is several."""
    from cbm.data import LoadedImage

    single = (str, os.PathLike, LoadedImage, np.ndarray)
    is_image = lambda i: isinstance(i, single) or hasattr(i, "getbands") or _is_tensor(i)  # noqa: E731  (getbands: PIL)

    def refuse(value: Any) -> TypeError:
        hint = " (file contents: save them to a file, or open them with PIL)" if isinstance(value, (bytes, bytearray)) else ""
        return TypeError("an image is a file path, a cbm.data.LoadedImage, an (H, W[, C]) array, a (C, H, W) torch "
                         f"tensor or a PIL image, and several are a list of them; got {type(value).__name__}{hint}")

    if isinstance(images, np.ndarray) or _is_tensor(images):  # 4-d: a batch; a tensor is channels first
        return list(images) if images.ndim == 4 else [images]
    if is_image(images):
        return [images]
    if isinstance(images, (bytes, bytearray, dict)) or not hasattr(images, "__iter__"):
        raise refuse(images)
    items = list(images)
    for item in items:
        if not is_image(item):
            raise refuse(item)
    return items


def as_pixels(image: Any) -> tuple[np.ndarray, dict[str, Any], Any]:
    """``(pixels (H, W, C) float32 in [0, 1], non-PHI meta, what the encoder transform takes)`` of a path
    (``cbm.data.read_image``), a ``LoadedImage``, a PIL image, an ``(H, W[, C])`` array or a ``(C, H, W)``
    tensor (``unit_pixels``: floats in [0, 1], or uint8 scaled by 255, uint16 stretched from its
    smallest to its largest value)."""
    from PIL import Image

    from cbm.data import pil_pixels, read_image
    from cbm.data.transforms import channels_last, unit_pixels

    if isinstance(image, (list, tuple)):
        raise TypeError(f"one image is explained at a time, not a {type(image).__name__} of {len(image)}; loop over "
                        "them, or use `cbm explain MODEL FILES... --out DIR` for a batch with an index")
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if hasattr(image, "pixels"):
        return np.asarray(image.pixels, np.float32), dict(getattr(image, "meta", {}) or {}), image
    if isinstance(image, Image.Image):  # as an image file of its mode is read, and as predict reads it
        arr = pil_pixels(image)
        return arr, {}, arr
    image_items(image)  # one image of a kind it knows, or the error predict gives
    arr = channels_last(image)
    if arr.shape[2] in (2, 4):  # alpha left out, as the encoder's transform leaves it out
        arr = arr[..., : arr.shape[2] - 1]
    arr = unit_pixels(arr)
    return arr, {}, arr


def dicom_modalities(modality: str | None) -> tuple[list[str], bool] | None:
    """The DICOM Modality codes a model of a card's ``modality`` answers for, and whether its images
    are in colour (every modality the card names is); None where the card names no modality cbm knows,
    for which no image is withheld for its modality or its lack of colour."""
    tokens = re.findall(r"[a-z0-9]+", str(modality or "").lower().replace("h&e", " haematoxylin eosin "))
    starts = ["".join(tokens[i:]) for i in range(len(tokens))]  # "chest X-ray" -> "chestxray", "xray", "ray"
    matched = [(codes, colour) for keys, codes, colour in _MODALITY_EXPECTATIONS
               if any(k[1:] in tokens if k.startswith("=") else any(w.startswith(k) for w in starts) for k in keys)]
    if not matched:
        return None
    return sorted({c for cs, _ in matched for c in cs}), all(c for _, c in matched)


def image_flags(modality: str | None, pixels: np.ndarray, meta: Mapping[str, Any],
                greyscale_share: float | None = None) -> list[Flag]:
    """Why a model trained on ``modality`` images should not answer for this image; empty when nothing is amiss.

    A DICOM file of another modality (a CT slice for a dermoscopy model), a greyscale image for a
    model trained on colour photographs (not where ``greyscale_share``, the share of its training
    images that were grey, is at least :data:`GREYSCALE_TRAINING_SHARE`; ``None``: not known, as for
    a model saved before it was recorded), and an image too small to show a finding.
    """
    trained_on_grey = greyscale_share is not None and greyscale_share >= GREYSCALE_TRAINING_SHARE
    found: list[Flag] = []
    modality = str(modality or "")
    expected = dicom_modalities(modality)
    if expected:
        codes, colour = expected
        code = str(meta.get("modality") or "").upper()
        if meta.get("format") == "dicom" and code and code not in codes:
            found.append(Flag("modality", f"This DICOM file's modality is {code}; the model was trained on {modality} "
                                          f"images (DICOM modality {' or '.join(codes)}), so it does not answer for it."))
        if colour and not trained_on_grey and greyscale(pixels):
            found.append(Flag("greyscale", f"The image is greyscale; the model was trained on colour {modality} images, "
                                           "so it does not answer for it."))
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        found.append(Flag("too-small", f"The image is {width} x {height} pixels, too small to show a finding "
                                       f"(at least {MIN_IMAGE_SIDE} pixels on each side expected)."))
    return found


def image_notes(modality: str | None, meta: Mapping[str, Any]) -> list[Flag]:
    """What a reader of a prediction on this image should know, though nothing withholds it: only one
    frame of several was read; the DICOM header says text is burned into the pixels (a report then
    does not show the image, since such text can name the patient); a DICOM file gives no modality
    cbm can read, so a model that knows its card's modality could not check it."""
    notes: list[Flag] = []
    frames, frame = meta.get("frames"), meta.get("frame")
    if isinstance(frames, int) and frames > 1 and isinstance(frame, int):
        notes.append(Flag("one-frame", f"The file holds {frames} frames; the model read frame {frame + 1} alone, so its "
                                       "answer is about that frame, not the others."))
    if meta.get("burned_in_annotation"):
        notes.append(Flag("burned-in-text", "The file's DICOM header says text is burned into its pixels (Burned In "
                                            "Annotation: YES), which can name the patient, so the image is not shown."))
    expected = dicom_modalities(str(modality or ""))
    if meta.get("format") == "dicom" and expected and not meta.get("modality"):
        notes.append(Flag("modality-unread", f"The file's DICOM header gives no modality cbm can read (absent, or not one "
                                             f"of DICOM's defined terms), so the model could not check that it is a "
                                             f"{modality} image (DICOM {' or '.join(expected[0])})."))
    return notes


def display_pixels(pixels: np.ndarray, max_side: int, *, square: bool = False) -> np.ndarray:
    """``(H, W, C)`` floats in [0, 1] -> ``(h, w, 3)`` uint8, longest side at most ``max_side``
    (``square``: the centred square first, as encoders crop)."""
    from PIL import Image

    rgb = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    if square:
        h, w = rgb.shape[:2]
        side = min(h, w)
        rgb = rgb[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    img = Image.fromarray((rgb * 255.0 + 0.5).astype(np.uint8))
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    return np.asarray(img)


def feature_rows(features: Any, *, one: bool = False) -> np.ndarray:
    """Image features (an array or a tensor) as float32 rows, refused with the rows' numbers where
    not finite (a damaged encoder output would otherwise read as a confident first class); ``one``:
    one image's ``(D,)`` vector, and a batch of several is named, not flattened into one row."""
    x = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, np.float32)
    if one and not (x.ndim == 1 or x.ndim == 2 and x.shape[0] == 1):
        raise ValueError(f"one image's feature vector (D,) was expected; got shape {x.shape}: for a batch, call "
                         "this once per row, or predict_proba_from_features for all rows at once")
    x = x.reshape(1, -1) if one or x.ndim == 1 else x
    bad = np.flatnonzero(~np.isfinite(x).all(axis=tuple(range(1, x.ndim))))  # no reshape: an empty batch has no -1
    if bad.size:
        raise ValueError(f"image features hold NaN or infinite values (row {', '.join(map(str, bad[:5]))}"
                         f"{', ...' if bad.size > 5 else ''}): the encoder's output was damaged; encode the images again")
    return x
