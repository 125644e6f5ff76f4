"""Reading one image file into float pixels in [0, 1]: PNG/JPEG/... through PIL, DICOM through pydicom.

Every reader returns a :class:`LoadedImage`: ``pixels`` is float32 ``(H, W, C)`` with C in {1, 3},
values in [0, 1], row 0 the top of the image as displayed; ``meta`` holds a few non-PHI facts.

DICOM follows the standard display pipeline (PS3.4 grayscale pipeline):
stored values -> modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) -> VOI LUT
(a VOI LUT Sequence, else Window Center/Width with its VOI LUT Function) -> MONOCHROME1 inversion.
Without any VOI transform, 8-bit data keeps its nominal range (as a PNG would) and deeper data is
stretched from its minimum to its maximum. Colour data (RGB, YBR_* converted to RGB by pydicom,
PALETTE COLOR through its lookup table) is scaled by its nominal range.

Errors name the file and the fix: :class:`ImageReadError` (a ``ValueError``) for a file that is
not a readable image, :class:`MissingCodecError` (a ``RuntimeError``) for compressed DICOM whose
decoder is not installed, ``FileNotFoundError`` for a missing file.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LoadedImage",
    "ImageReadError",
    "MissingCodecError",
    "read_image",
    "read_dicom",
    "read_pil",
    "is_dicom_file",
    "DICOM_SUFFIXES",
    "DICOM_INSTALL_HINT",
]

log = logging.getLogger(__name__)

FramePolicy = int | str  # "first" | "middle" | "last" | a 0-based index (negative counts from the end)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
DICOM_INSTALL_HINT = 'pip install "cbm[dicom]"'
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# The only DICOM attributes copied into LoadedImage.meta (keyword -> meta key). Nothing that
# identifies a patient, a study or an institution: no names, IDs, dates, UIDs, accession numbers.
_DICOM_META_WHITELIST = {
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "ImageLaterality": "laterality",
    "PhotometricInterpretation": "photometric",
    "BitsAllocated": "bits_allocated",
    "BitsStored": "bits_stored",
    "PixelRepresentation": "pixel_representation",
    "SamplesPerPixel": "samples_per_pixel",
}


class ImageReadError(ValueError):
    """A file that exists but cannot be read as an image; the message names the file and the fix."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. {fix}")


class MissingCodecError(RuntimeError):
    """Compressed DICOM pixel data whose decoder is not installed; the message gives the install command."""

    def __init__(self, path: str | os.PathLike, syntax: str, missing: list[str], packages: list[str]) -> None:
        self.path = str(path)
        self.syntax = syntax
        self.missing = list(missing)
        self.packages = list(packages)
        detail = f" (missing: {'; '.join(missing)})" if missing else ""
        pkgs = " ".join(packages) or "pylibjpeg"
        super().__init__(
            f"{self.path}: the pixel data is compressed as {syntax} and no installed codec can "
            f"decode it{detail}. Install the DICOM codecs with `{DICOM_INSTALL_HINT}` "
            f"(or `pip install pylibjpeg {pkgs}`), then retry."
        )


@dataclass(frozen=True)
class LoadedImage:
    """Decoded pixels plus non-PHI facts about them.

    Attributes:
        pixels: float32 ``(H, W, C)``, C in {1, 3}, values in [0, 1], row 0 = top as displayed.
        meta: format, modality, photometric interpretation, bit depth, frame count and chosen frame,
            original shape, how grey levels were mapped (``voi``), and similar non-PHI facts.
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


# ---------------------------------------------------------------------------- entry point
def read_image(path: str | os.PathLike, frame: FramePolicy = "middle") -> LoadedImage:
    """Read an image file (PNG, JPEG, TIFF, BMP, ... or DICOM) as float pixels in [0, 1].

    The format is taken from the file's content (the ``DICM`` marker, PNG/JPEG signatures), not
    from its name; a file named ``.dcm`` must be DICOM.

    Args:
        path: the image file.
        frame: which frame of a multi-frame file to return: ``"first"``, ``"middle"`` (default),
            ``"last"``, or a 0-based index (negative counts from the end).

    Returns:
        A :class:`LoadedImage` (see its attributes).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: empty, truncated, not an image, DICOM without pixel data, a constant image.
        MissingCodecError: compressed DICOM whose codec is not installed.
    """
    path = Path(path)
    head = _check_file(path)
    if head[128:132] == b"DICM":
        return read_dicom(path, frame=frame)
    if path.suffix.lower() in DICOM_SUFFIXES:
        # Named as DICOM but no preamble: a headerless (ACR-NEMA style) dataset, or not DICOM at all.
        return read_dicom(path, frame=frame)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return read_pil(path, frame=frame)
    try:
        return read_pil(path, frame=frame)
    except ImageReadError as pil_error:
        # Extension-less files from PACS exports are often headerless DICOM.
        try:
            return read_dicom(path, frame=frame)
        except ImageReadError:
            raise pil_error from None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM ``DICM`` marker at byte 128 (the Part 10 file format)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_file(path: Path) -> bytes:
    """The first bytes of ``path`` after checking that it is a non-empty regular file."""
    if not path.exists():
        raise FileNotFoundError(
            f"image file not found: {path}. Check the path (for a data card: the manifest's path "
            f"column, the card's image_root or its image_root_env variable)"
        )
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file", "Point the manifest at the image file itself")
    if path.stat().st_size == 0:
        raise ImageReadError(
            path, "is empty (0 bytes), so the download or copy was cut short", "Fetch or copy the file again"
        )
    with open(path, "rb") as fh:
        return fh.read(132)


def _frame_index(frame: FramePolicy, n_frames: int, path: Path) -> int:
    """0-based frame index chosen by ``frame`` among ``n_frames``."""
    if isinstance(frame, str):
        policies = {"first": 0, "middle": (n_frames - 1) // 2, "last": n_frames - 1}
        if frame not in policies:
            raise ValueError(f"frame policy {frame!r} is not one of 'first', 'middle', 'last' or an integer index")
        return policies[frame]
    if isinstance(frame, (bool, float)) or not isinstance(frame, (int, np.integer)):
        raise ValueError(f"frame must be 'first', 'middle', 'last' or an integer index, not {frame!r}")
    index = int(frame) + (n_frames if frame < 0 else 0)
    if not 0 <= index < n_frames:
        raise ImageReadError(
            path, f"has {n_frames} frame(s), so frame {frame} does not exist",
            "Choose a frame in range, or 'first' / 'middle' / 'last'",
        )
    return index


def _reject_constant(values: np.ndarray, path: Path, stage: str) -> None:
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo == hi:
        raise ImageReadError(
            path, f"{stage} to a constant image (every pixel is {lo:g}), which carries no information",
            "Check the file in a viewer; re-export or remove it",
        )


# ---------------------------------------------------------------------------- PIL formats
def read_pil(path: str | os.PathLike, frame: FramePolicy = "middle") -> LoadedImage:
    """Read a PIL-readable image (PNG, JPEG, TIFF, BMP, GIF, WebP, ...) as float pixels in [0, 1].

    8-bit data is divided by 255, 16-bit data by 65535; grey stays one channel, palette and other
    colour modes become RGB, and an alpha channel is dropped (as ``Image.convert("RGB")`` does, which
    is what CLIP-style preprocessing sees). EXIF orientation is applied, so row 0 is the top as
    displayed. Multi-frame files (TIFF stacks, GIF) follow the ``frame`` policy.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency chatter; problems raise below
            with Image.open(path) as im:
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                index = _frame_index(frame, n_frames, path)
                if index:
                    im.seek(index)
                im.load()
                fmt = (im.format or path.suffix.lstrip(".")).lower()
                oriented = ImageOps.exif_transpose(im) if fmt in ("jpeg", "tiff", "png", "webp") else im
                rotated = oriented is not im
                mode = oriented.mode
                pixels, bits = _pil_to_unit(oriented, fmt, path)
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "is not an image file PIL can identify (not PNG, JPEG, TIFF, BMP, ... nor DICOM)",
            "Check that the file is an image (a download error page saved under an image name is common); "
            "fetch it again or remove it from the manifest",
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            path, f"is larger than PIL's safety limit ({exc})",
            "If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS before reading it",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, (ImageReadError, FileNotFoundError)):
            raise
        raise ImageReadError(
            path, f"could not be decoded, it is truncated or corrupt ({exc})",
            "Download or export the file again",
        ) from None
    _reject_constant(pixels, path, "decodes")
    meta = {
        "format": fmt,
        "mode": mode,
        "photometric": "RGB" if pixels.shape[2] == 3 else "MONOCHROME2",
        "bits": bits,
        "frames": n_frames,
        "frame": index,
        "original_shape": tuple(int(s) for s in pixels.shape[:2]),
        "exif_transposed": rotated,
    }
    return LoadedImage(np.ascontiguousarray(pixels, dtype=np.float32), meta)


def _pil_to_unit(im: Any, fmt: str, path: Path) -> tuple[np.ndarray, int]:
    """(H, W, C) float32 pixels in [0, 1] and the source bit depth of a loaded PIL image."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)[..., None], 1
    if mode in ("L", "LA"):
        return (np.asarray(im.getchannel(0), dtype=np.float32) / 255.0)[..., None], 8
    if mode.startswith("I;16"):
        return (np.asarray(im, dtype=np.float32) / 65535.0)[..., None], 16
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode == "I" and fmt == "png":  # a 16-bit PNG opened as 32-bit int
            return (arr / 65535.0).astype(np.float32)[..., None], 16
        if arr.min() >= 0.0 and arr.max() <= 1.0 and mode == "F":
            return arr.astype(np.float32)[..., None], 32
        lo, hi = float(arr.min()), float(arr.max())
        span = hi - lo if hi > lo else 1.0
        return ((arr - lo) / span).astype(np.float32)[..., None], 32
    rgb = im.convert("RGB")  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV -> RGB (alpha dropped)
    return np.asarray(rgb, dtype=np.float32) / 255.0, 8


# ---------------------------------------------------------------------------- DICOM
_CODEC_PACKAGES = {
    "jpeg2000": ["pylibjpeg-openjpeg"],
    "jpeg": ["pylibjpeg-libjpeg"],
    "rle": ["pylibjpeg-rle"],
}


def _codec_packages(syntax_name: str) -> list[str]:
    name = syntax_name.lower()
    if "2000" in name or "htj2k" in name:
        return _CODEC_PACKAGES["jpeg2000"]
    if "jpeg" in name:
        return _CODEC_PACKAGES["jpeg"]
    if "rle" in name:
        return _CODEC_PACKAGES["rle"]
    return []


def _dcmread(path: Path):
    """The dataset of ``path``; a headerless dataset is accepted if it really parses as DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    not_dicom = ImageReadError(
        path, "is not a DICOM file (no 'DICM' marker at byte 128, and it does not parse as a DICOM dataset)",
        "Check what the file really is (`file` on the command line); re-export it as DICOM, "
        "rename it to its real type, or remove it from the manifest",
    )
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except Exception as exc:  # truncated or garbled DICOM
        raise ImageReadError(
            path, f"is a damaged DICOM file that cannot be parsed ({type(exc).__name__}: {exc})",
            "Copy or export the file again",
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            keys = [elem.tag for elem in ds]  # forces parsing of every element
    except Exception:
        raise not_dicom from None
    # Random bytes can parse as a few nonsense elements; a real dataset has standard image/SOP tags.
    known = {0x00080016, 0x00080060, 0x00280010, 0x00280011, 0x7FE00010}
    if len(known.intersection(int(k) for k in keys)) < 2:
        raise not_dicom
    return ds


def _ensure_transfer_syntax(ds: Any) -> None:
    """Give a headerless dataset the transfer syntax it was read with (pixel decoding needs one)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def read_dicom(path: str | os.PathLike, frame: FramePolicy = "middle") -> LoadedImage:
    """Read a DICOM image as float pixels in [0, 1] through the standard display pipeline.

    Grey: modality LUT -> VOI LUT or window -> MONOCHROME1 inversion (see the module docstring).
    Colour: RGB (YBR_* converted by pydicom), PALETTE COLOR through its LUT. Multi-frame data
    follows the ``frame`` policy; only that frame is decoded.
    """
    path = Path(path)
    _check_file(path)
    ds = _dcmread(path)
    _ensure_transfer_syntax(ds)
    try:
        pixels, meta = _dicom_pixels(ds, path, frame)
    except (ImageReadError, MissingCodecError):
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ImageReadError(
            path, f"has an invalid image header ({type(exc).__name__}: {exc})",
            "Check the image pixel module (rows, columns, bits, photometric interpretation); re-export the file",
        ) from None
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ImageReadError(path, "decodes to non-finite values", "Check the file's rescale/LUT attributes; re-export it")
    _reject_constant(pixels, path, "maps through its window")
    return LoadedImage(pixels, meta)


def _dicom_pixels(ds: Any, path: Path, frame: FramePolicy) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels in [0, 1] ``(H, W, C)`` and non-PHI meta of one frame of a parsed dataset."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise ImageReadError(
            path, f"is a DICOM file without pixel data ({sop}, modality {ds.get('Modality', '?')}), so it is not an image",
            "Remove it from the manifest (reports, RT plans and presentation states carry no pixels)",
        )
    syntax = ds.file_meta.TransferSyntaxUID
    _check_decoder(path, syntax)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = _frame_index(frame, n_frames, path)
    arr = _decode(ds, path, syntax, index if n_frames > 1 else None)
    if arr.ndim == 3 and n_frames > 1 and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[0]  # some plugins keep a frame axis of length 1
    if arr.ndim == 4:
        arr = arr[0]
    _reject_constant(arr, path, "decodes")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    meta: dict[str, Any] = {"format": "dicom"}
    for keyword, key in _DICOM_META_WHITELIST.items():
        value = ds.get(keyword)
        if value is not None and value != "":
            meta[key] = int(value) if isinstance(value, int) else float(value) if isinstance(value, float) else str(value)
    meta.update(
        transfer_syntax=syntax.name,
        frames=n_frames,
        frame=index,
        original_shape=tuple(int(s) for s in arr.shape[:2]),
    )
    if samples == 1 and photometric == "PALETTE COLOR":
        pixels = _palette_to_unit(arr, ds)
        meta["voi"] = "palette"
    elif samples == 1:
        pixels, meta_voi = _grey_to_unit(arr, ds, index, path)
        meta.update(meta_voi)
        pixels = pixels[..., None]
    else:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ImageReadError(
                path, f"has {samples} samples per pixel and decodes to shape {arr.shape}, not (rows, columns, 3)",
                "Only grey and 3-sample colour DICOM is supported; convert the file",
            )
        bits = int(ds.get("BitsStored", 8) or 8)
        pixels = np.clip(arr.astype(np.float32) / np.float32(2**bits - 1), 0.0, 1.0)
        if photometric.startswith("YBR"):
            meta["photometric"] = "RGB"  # pydicom converted it
            meta["source_photometric"] = photometric
        meta["voi"] = "nominal"
    return pixels, meta


def _check_decoder(path: Path, syntax: Any) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageReadError(
            path, f"uses the transfer syntax {syntax.name} ({syntax}), which has no pixel decoder (video or private syntax)",
            "Convert it to an uncompressed or JPEG/JPEG 2000/RLE syntax (e.g. with dcmtk's dcmdjpeg or gdcmconv)",
        ) from None
    if not decoder.is_available:
        raise MissingCodecError(path, f"{syntax.name} ({syntax})", decoder.missing_dependencies, _codec_packages(syntax.name))


def _decode(ds: Any, path: Path, syntax: Any, index: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(ds, index=index)
    except Exception as exc:
        hint = (
            f"If a codec is missing, `{DICOM_INSTALL_HINT}` installs the pylibjpeg codecs; otherwise the file is damaged: export it again"
            if syntax.is_compressed else "The pixel data is probably truncated or inconsistent with its header: export the file again"
        )
        raise ImageReadError(path, f"pixel data ({syntax.name}) could not be decoded ({type(exc).__name__}: {exc})", hint) from None


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


def _grey_to_unit(arr: np.ndarray, ds: Any, index: int, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
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
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float32)
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


def _palette_to_unit(arr: np.ndarray, ds: Any) -> np.ndarray:
    """PALETTE COLOR indices through the red/green/blue LUTs, scaled by the LUT bit depth."""
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(arr, ds).astype(np.float64)
    n_entries, first, lut_bits = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    full = apply_color_lut(np.arange(first, first + (n_entries or 65536)), ds)
    if lut_bits == 16 and full.max() <= 255:  # 8-bit entries stored in 16-bit words (PS3.3 C.7.6.3.1.5)
        lut_bits = 8
    return np.clip(rgb / float(2**lut_bits - 1), 0.0, 1.0)
