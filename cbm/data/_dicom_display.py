"""The DICOM display pipeline: one decoded frame's stored values to float pixels in [0, 1].

Grey (PS3.4 grayscale pipeline): stored values -> modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else Window Center/Width with its VOI LUT
Function) -> MONOCHROME1 inversion. Without any VOI transform, 8-bit data keeps its nominal range
(as a PNG would) and deeper data is stretched from its minimum to its maximum. PALETTE COLOR goes
through its lookup table, scaled by the table's bit depth. Every step keeps float32 and works in
place where it can, so a frame costs a few times its own size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["grey_to_unit", "palette_to_unit"]

log = logging.getLogger(__name__)


def _frame_group_value(ds: Any, index: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from the top level, else the frame's or the shared functional group (enhanced IODs)."""
    if keyword in ds:
        return ds.get(keyword)
    for groups, item in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is None or len(seq) <= item:
            continue
        inner = seq[item].get(sequence)
        if inner and keyword in inner[0]:
            return inner[0].get(keyword)
    return None


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def grey_to_unit(arr: np.ndarray, ds: Any, index: int, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Grey pixels through modality LUT -> VOI -> inversion, as float32 in [0, 1], plus what was done."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    info: dict[str, Any] = {}
    bits = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    stored_lo, stored_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)

    # 1. Modality LUT: a lookup table, or rescale slope/intercept (top level or functional groups).
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float32)
        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        nominal = (0.0, float(2**lut_bits - 1))
        info["modality_lut"] = "lut"
    else:
        slope = _first(_frame_group_value(ds, index, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _first(_frame_group_value(ds, index, "PixelValueTransformationSequence", "RescaleIntercept"))
        slope = 1.0 if slope in (None, 0.0) else slope
        intercept = 0.0 if intercept is None else intercept
        values = arr.astype(np.float32)
        if slope != 1.0:
            values *= np.float32(slope)
        if intercept != 0.0:
            values += np.float32(intercept)
        ends = sorted((stored_lo * slope + intercept, stored_hi * slope + intercept))
        nominal = (float(ends[0]), float(ends[1]))
        if (slope, intercept) != (1.0, 0.0):
            info["rescale"] = [slope, intercept]
    vmin, vmax = float(values.min()), float(values.max())

    # 2. VOI: a VOI LUT Sequence wins over a window (pydicom's prefer_lut), then nominal / min-max.
    center = _first(_frame_group_value(ds, index, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_frame_group_value(ds, index, "FrameVOILUTSequence", "WindowWidth"))
    function = str(_frame_group_value(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
    has_window = center is not None and width is not None and width > 0
    # the window functions are monotone, so the ends of the data tell whether it saturates them all
    window_spreads = has_window and np.ptp(np.clip(_window(np.array([vmin, vmax]), center, width, function), 0, 1)) > 0
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) and "LUTData" in ds.VOILUTSequence[0]:
        out_bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        np.clip(np.rint(values, out=values), -(2**30), 2**30, out=values)  # LUT inputs lie well inside; int32 is enough
        out = apply_voi(values.astype(np.int32), ds, index=0).astype(np.float32)
        out /= np.float32(2**out_bits - 1)
        info["voi"] = "voi_lut"
    elif window_spreads:
        out = _window(values, center, width, function)
        info["voi"] = "window"
        info["window"] = [center, width]
        if function != "LINEAR":
            info["voi_function"] = function
    else:
        if bits <= 8:
            lo, hi = nominal
            info["voi"] = "nominal"
        else:
            if has_window:
                log.warning("%s: window %g/%g maps every pixel to one level; stretching min-max instead", path, center, width)
            lo, hi = vmin, vmax
            info["voi"] = "min_max"
        out = values
        out -= np.float32(lo)
        out /= np.float32(hi - lo)  # a division, as PIL-read PNGs get: identical floats for identical pixels
    np.clip(out, 0.0, 1.0, out=out)

    # 3. MONOCHROME1 (or an INVERSE presentation LUT shape): low values display white.
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if inverse:
        np.subtract(np.float32(1.0), out, out=out)
    info["inverted"] = inverse
    return out, info


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window center/width to [0, 1] (before clipping) following PS3.3 C.11.2.1.2: LINEAR,
    LINEAR_EXACT or SIGMOID. A float input keeps its dtype."""
    values = np.asarray(values)
    dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
    if function == "SIGMOID":
        z = np.clip(-4.0 * (values.astype(np.float64) - center) / width, -80.0, 80.0)
        return (1.0 / (1.0 + np.exp(z))).astype(dtype)
    if function == "LINEAR_EXACT":
        lo, scale = center - width / 2.0, 1.0 / width
    elif width <= 1.0:  # a one-level window is a threshold
        return (values > center - 0.5).astype(dtype)
    else:  # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) = (x - lo) * scale
        lo, scale = (center - 0.5) - (width - 1.0) / 2.0, 1.0 / (width - 1.0)
    out = values.astype(dtype, copy=True)
    out -= dtype.type(lo)
    out *= dtype.type(scale)
    return out


def palette_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR indices through the red/green/blue LUTs, scaled by the LUT bit depth."""
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(arr, ds).astype(np.float32)
    n_entries, first, lut_bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    full = apply_color_lut(np.arange(first, first + (n_entries or 65536)), ds)
    if lut_bits == 16 and full.max() <= 255:  # 8-bit entries stored in 16-bit words (PS3.3 C.7.6.3.1.5)
        lut_bits = 8
    rgb /= np.float32(2**lut_bits - 1)
    return rgb
