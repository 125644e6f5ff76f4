"""DICOM images through pydicom: the header checked against itself and its data, then one frame
through the standard display pipeline.

Checks, before any pixel is decoded (:func:`dicom_header`): Rows, Columns, SamplesPerPixel (1 or
3), BitsAllocated (1, 8, 16, 32 or 64), BitsStored, PixelRepresentation and NumberOfFrames (absent
means one frame; 0, empty or not a whole number is refused) must be valid; one frame must fit the
pixel budget; for native (uncompressed) transfer syntaxes Rows x Columns x SamplesPerPixel x
BitsAllocated x frames must equal the length of the pixel data (one padding byte allowed); for
compressed ones the offset tables or the fragments must hold as many frames as declared. The
decoded frame must have exactly the declared shape.

The decoded frame goes through the display pipeline of :mod:`cbm.data._dicom_display`.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbm.data._dicom_display import grey_to_unit, palette_to_unit
from cbm.data._dicom_text import NUMBERISH, UID, code_word, header_text, quiet_pydicom_values, redacted, shown
from cbm.data._image_base import (
    DICOM_INSTALL_HINT,
    FramePolicy,
    ImageReadError,
    LoadedImage,
    MissingCodecError,
    _check_file,
    _frame_index,
    _reject_constant,
    check_pixel_budget,
    finish,
    first_in_process,
    pixel_budget,
)
from cbm.errors import ImageError, quote

__all__ = ["read_dicom", "dicom_header", "DicomHeader", "code_word", "header_text"]

log = logging.getLogger(__name__)
quiet_pydicom_values()

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
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# PhotometricInterpretation's defined terms that pydicom knows (PS3.3 C.7.6.3.1.2, retired ones too)
_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
                          "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})
_DEFER_BYTES = 1 << 20  # elements larger than this (the pixel data) are read only when needed
_REEXPORT = "The header and the pixel data disagree (a damaged or hand-edited file): export the file again"


@dataclass(frozen=True)
class DicomHeader:
    """What a checked DICOM header declares: one frame's size, samples, bits, frames, the syntax."""

    rows: int
    cols: int
    samples: int
    bits: int
    frames: int
    syntax: Any
    ds: Any


# ---------------------------------------------------------------------------- reading
def read_dicom(path: str | os.PathLike, frame: FramePolicy = "middle", *, max_pixels: int | None = None) -> LoadedImage:
    """Read a DICOM image as float pixels in [0, 1] through the standard display pipeline.

    Grey: modality LUT -> VOI LUT or window -> MONOCHROME1 inversion (see the module docstring).
    Colour: RGB (YBR_* converted by pydicom), PALETTE COLOR through its LUT. Multi-frame data
    follows the ``frame`` policy; only that frame is decoded, after the header checks.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: not DICOM, damaged, without pixel data, header and data disagree, over the
            pixel budget, a constant image.
        MissingCodecError: compressed pixel data whose codec is not installed.
    """
    path = Path(path)
    head = _check_file(path)
    budget = pixel_budget(max_pixels)
    header = dicom_header(path, path, budget)
    ds = header.ds
    index = _frame_index(frame, header.frames, path)
    try:
        syntax = header.syntax  # native multi-frame Part 10 files: read that frame's bytes alone
        by_file = head[128:132] == b"DICM" and header.frames > 1 and not (syntax.is_encapsulated or syntax.is_deflated)
        arr = _decode(path if by_file else ds, path, syntax, index, ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels, meta = _dicom_pixels(arr, ds, path, header, index)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # pydicom's NotImplementedError (a LUT of 0 bits), KeyError, ...
        raise _invalid(path, exc, ds) from None
    return finish(pixels, path, (header.rows, header.cols), meta)


def _invalid(path: Path, exc: BaseException, ds: Any = None) -> ImageReadError:
    return ImageReadError(
        path, f"has an invalid image header ({type(exc).__name__}: {quote(redacted(str(exc), ds))})",
        "Check the image pixel module (rows, columns, bits, photometric interpretation, LUTs); re-export the file",
    )


# ---------------------------------------------------------------------------- the header
def dicom_header(source: Path | io.BytesIO, path: Path | None, budget: int) -> DicomHeader:
    """Parse and check a DICOM header (see the module docstring); no pixel is decoded.

    ``source`` is the file (its pixel data is then read only as far as a compressed frame count
    needs) or its bytes; ``path`` names it in errors.
    """
    quiet_pydicom_values()  # pydicom's loggers imported since the last read get the filter too
    ds = _dcmread(source, path)
    try:
        with warnings.catch_warnings():  # pydicom warns of a bad value with the value in its message
            warnings.simplefilter("ignore")
            _ensure_transfer_syntax(ds)
            return _check_header(ds, path, budget)
    except (ImageError, MemoryError):
        raise
    except Exception as exc:  # a value pydicom cannot convert (a bad VR, an unknown VR, ...)
        raise _invalid(path, exc, ds) from None


def _check_header(ds: Any, path: Path | None, budget: int) -> DicomHeader:
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        meta_sop = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)  # where the cut took SOPClassUID
        sop = getattr(ds.get("SOPClassUID", meta_sop), "name", None) or "unknown SOP class"
        if not len(ds) and getattr(ds, "file_meta", None) is not None and "TransferSyntaxUID" in ds.file_meta:
            raise ImageReadError(  # pydicom gives up on a data set cut short inside an element and keeps nothing
                path, "is a DICOM file whose data set could not be read after its file meta information, so it is "
                "truncated or damaged", "Copy or export the file again (an interrupted transfer is the usual cause)")
        if ("Rows" in ds and "Columns" in ds) or "Image Storage" in sop:  # an image whose pixels never came
            size = f", {ds.get('Rows')} x {ds.get('Columns')}" if "Rows" in ds and "Columns" in ds else ""
            raise ImageReadError(
                path, f"is a DICOM image ({sop}{size}) whose file ends before its pixel data, so it is truncated",
                "Copy or export the file again (an interrupted transfer is the usual cause)")
        raise ImageReadError(
            path, f"is a DICOM file without pixel data ({sop}, modality {header_text('Modality', ds.get('Modality')) or '?'}), "
            "so it is not an image",
            "Leave it out: remove it from the manifest or the files given (reports, RT plans and presentation states "
            "carry no pixels)",
        )
    syntax = ds.file_meta.TransferSyntaxUID
    _check_decoder(path, syntax)
    rows, cols = _whole(ds, "Rows", path), _whole(ds, "Columns", path)
    check_pixel_budget(path, rows, cols, budget, field="Rows x Columns")
    samples = _whole(ds, "SamplesPerPixel", path, allowed=(1, 3))
    bits = _whole(ds, "BitsAllocated", path, allowed=(1, 8, 16, 32, 64))
    if keyword == "PixelData":
        stored = _whole(ds, "BitsStored", path)
        if not 1 <= stored <= bits:
            raise ImageReadError(path, f"is {stored}, outside 1..BitsAllocated ({bits})", _REEXPORT, field="BitsStored")
        _whole(ds, "PixelRepresentation", path, allowed=(0, 1))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip()
    if photometric not in _PHOTOMETRIC:  # not shown: a name can be typed into it
        raise ImageReadError(path, f"is none of DICOM's defined terms ({', '.join(sorted(_PHOTOMETRIC))}, in capitals), so "
                             "its pixels cannot be read", _REEXPORT, field="PhotometricInterpretation")
    frames = _frames(ds, path)
    if syntax.is_encapsulated:
        _check_fragments(ds, path, frames, keyword)
    else:
        _check_length(ds, path, keyword, rows, cols, samples, bits, frames)
    return DicomHeader(rows, cols, samples, bits, frames, syntax, ds)


def _whole(ds: Any, keyword: str, path: Path | None, allowed: tuple[int, ...] | None = None) -> int:
    """A required positive (or ``allowed``) whole-number attribute."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise ImageReadError(path, "is missing", "Every DICOM image declares it; export the file again", field=keyword)
    if isinstance(value, (bytes, str, float)) or not isinstance(value, (int, np.integer)):
        raise ImageReadError(path, f"has {shown(value, NUMBERISH)}, not a whole number", _REEXPORT, field=keyword)
    value = int(value)
    if (allowed is not None and value not in allowed) or (allowed is None and value < 1):
        want = f"one of {', '.join(map(str, allowed))}" if allowed else "a positive whole number"
        raise ImageReadError(path, f"is {value}, not {want}", _REEXPORT, field=keyword)
    return value


def _frames(ds: Any, path: Path | None) -> int:
    """NumberOfFrames: 1 when absent; otherwise it must be a positive whole number."""
    if "NumberOfFrames" not in ds:
        return 1
    raw = ds["NumberOfFrames"].value
    try:
        frames = int(str(raw).strip()) if raw is not None and not isinstance(raw, (list, tuple)) else 0
    except ValueError:
        frames = 0
    if frames < 1:
        bad = "is empty" if raw in (None, "") else f"has {shown(raw, NUMBERISH)}"
        raise ImageReadError(path, f"{bad}, not a positive whole number",
                             "Give the number of frames the pixel data holds, or export the file again",
                             field="NumberOfFrames")
    return frames


def _check_length(ds: Any, path: Path | None, keyword: str, rows: int, cols: int, samples: int, bits: int,
                  frames: int) -> None:
    """Native syntaxes: the pixel data holds the declared frames, plus at most padding: fewer bytes
    than a frame, all zero (some writers pad to a block size; pydicom drops them). A byte less, a
    whole frame more, or extra bytes that are not zero (image data a wrong Rows or Columns leaves
    over) are refused."""
    elem = ds.get_item(keyword, keep_deferred=True)
    value = getattr(elem, "value", None)
    length = int(elem.length) if value is None else len(value)
    if value is None and length > os.path.getsize(ds.filename):
        raise ImageReadError(path, f"declares {length:,} bytes, more than the whole file holds, so it is truncated",
                             "Copy or export the file again", field=keyword)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    per_pixel = 2 if samples == 3 and photometric == "YBR_FULL_422" else samples  # 4:2:2 stores 2 samples a pixel
    frame_bits = rows * cols * per_pixel * bits
    expected = (frame_bits * frames + 7) // 8
    if length == expected or (length == expected + 1 and expected % 2):
        return
    frame_bytes = (frame_bits + 7) // 8
    if expected < length < expected + frame_bytes and _zero_tail(ds, elem, value, expected, length):
        _note_padding(path, keyword, length - expected, cols * per_pixel * bits // 8)
        return
    whole = ""
    if bits >= 8 and length % (frame_bits // 8) in (0, 1):
        whole = f"; it holds {length // (frame_bits // 8)} whole frame(s) of that size"
    raise ImageReadError(
        path, f"holds {length:,} bytes, but Rows x Columns x samples x BitsAllocated x frames ({rows} x {cols} x "
        f"{per_pixel} x {bits} bits x {frames}) declare {expected:,}{whole}, so it could not be decoded",
        _REEXPORT, field=keyword,
    )


def _note_padding(path: Path | None, keyword: str, extra: int, row_bytes: int) -> None:
    """Say that zero padding was ignored: once as a warning (a wrong Columns whose leftover bytes happen
    to be zero reads sheared, and this is the only trace of it), then at debug level."""
    rows = f" ({extra / row_bytes:g} rows of the image)" if row_bytes and extra % row_bytes == 0 else ""
    path = path or "a DICOM file given as bytes"
    if not first_in_process("DICOM padding"):
        log.debug("%s: %s holds %d zero bytes past its frames%s, ignored", path, keyword, extra, rows)
        return
    log.warning("%s: %s holds %d zero bytes past the frames its header declares%s; they are ignored as padding, as "
                "pydicom ignores them (other such files are logged at debug level). If images look sheared, their "
                "Rows or Columns are wrong: export them again", path, keyword, extra, rows)


def _zero_tail(ds: Any, elem: Any, value: bytes | None, start: int, length: int) -> bool:
    """Whether the pixel data's bytes from ``start`` to ``length`` are all zero (read from the file
    when the element was deferred)."""
    n = length - start
    if value is None:
        tell = getattr(elem, "value_tell", None)
        if tell is None or not getattr(ds, "filename", None):
            return False
        with open(ds.filename, "rb") as fh:
            fh.seek(tell + start)
            tail = fh.read(n)
    else:
        tail = bytes(memoryview(value)[start:length])
    return len(tail) == n and tail.count(0) == n


def _check_fragments(ds: Any, path: Path | None, frames: int, keyword: str) -> None:
    """Compressed syntaxes: the offset tables, else the fragments, hold the declared frames."""
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    buffer = io.BytesIO(ds[keyword].value)
    offsets = parse_basic_offsets(buffer)
    fragments, _ = parse_fragments(buffer)
    extended = ds.get("ExtendedOffsetTable")
    found, what = None, ""
    if extended:
        found, what = len(extended) // 8, "extended offset table entries"
    elif offsets:
        found, what = len(offsets), "basic offset table entries"
    elif fragments < frames:
        found, what = fragments, "fragments"
    if found is not None and found != frames:
        raise ImageReadError(path, f"declares {frames} frame(s) but its compressed pixel data holds {found} {what}",
                             _REEXPORT, field="NumberOfFrames")


class _Bounded(io.BufferedReader):
    """A file whose reads never ask for more than the bytes left, so a corrupt element length in a
    small file cannot make the parser allocate gigabytes before it notices the end of the file."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self.size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(0, self.size - self.tell()))
        return super().read(size)


def _dcmread(source: Path | io.BytesIO, path: Path | None):
    """The dataset (a file's pixel data deferred); a headerless dataset is accepted if it really parses as DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    defer = _DEFER_BYTES if isinstance(source, Path) else None
    not_dicom = ImageReadError(
        path, "is not a DICOM file (no 'DICM' marker at byte 128, and it does not parse as a DICOM dataset)",
        "Check what the file really is (`file` on the command line); re-export it as DICOM, "
        "rename it to its real type, or leave it out (the manifest or the files given)",
    )
    with (_Bounded(source) if isinstance(source, Path) else source) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(fh, defer_size=defer)
        except InvalidDicomError:
            pass
        except MemoryError:
            raise
        except Exception as exc:  # truncated or garbled DICOM
            raise ImageReadError(
                path, f"is a damaged DICOM file that cannot be parsed ({type(exc).__name__}: {quote(str(exc))})",
                "Copy or export the file again",
            ) from None
        fh.seek(0)
        try:
            ds = pydicom.dcmread(fh, force=True, defer_size=defer)
            keys = [elem.tag for elem in ds]  # forces parsing of every element
        except MemoryError:
            raise
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
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        if not isinstance(meta.TransferSyntaxUID, UID):
            meta.TransferSyntaxUID = UID(str(meta.TransferSyntaxUID))
        return
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = True, True
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


# ---------------------------------------------------------------------------- decoding
def _codec_packages(syntax_name: str) -> list[str]:
    """The pylibjpeg plugin that decodes a compressed transfer syntax."""
    name = syntax_name.lower()
    for key, package in (("2000", "openjpeg"), ("htj2k", "openjpeg"), ("jpeg", "libjpeg"), ("rle", "rle")):
        if key in name:
            return [f"pylibjpeg-{package}"]
    return []


def _check_decoder(path: Path | None, syntax: Any) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        named = "" if syntax.name == str(syntax) else f" ({syntax.name})"  # a name from pydicom's own dictionary
        raise ImageReadError(
            path, f"uses {shown(syntax, UID, 'transfer syntax')}{named}, which has no pixel decoder (video, private "
            "or mistyped syntax)",
            "Convert it to an uncompressed or JPEG/JPEG 2000/RLE syntax (e.g. with dcmtk's dcmdjpeg or gdcmconv)",
            field="TransferSyntaxUID",
        ) from None
    if not decoder.is_available:
        raise MissingCodecError(path, f"{syntax.name} ({syntax})", decoder.missing_dependencies, _codec_packages(syntax.name))


def _decode(source: Any, path: Path, syntax: Any, index: int, ds: Any) -> np.ndarray:
    """One frame as stored values; from a Part 10 file only that frame's bytes are read (``ds``: its
    header, whose values the decoder's message must not repeat)."""
    from pydicom.pixels import pixel_array

    quiet_pydicom_values()  # the decoders' own loggers, imported with pydicom.pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(os.fspath(source) if isinstance(source, Path) else source, index=index)
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a codec's Rust panic (pyo3's PanicException) is a BaseException
        hint = (
            f"If a codec is missing, `{DICOM_INSTALL_HINT}` installs the pylibjpeg codecs; otherwise the file is damaged: export it again"
            if syntax.is_compressed else "The pixel data is probably truncated or inconsistent with its header: export the file again"
        )
        raise ImageReadError(path, f"has pixel data ({syntax.name}) that could not be decoded ({type(exc).__name__}: "
                                   f"{quote(redacted(str(exc), ds))})", hint) from None


def _dicom_pixels(arr: np.ndarray, ds: Any, path: Path, header: DicomHeader, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels in [0, 1] ``(H, W, C)`` and non-PHI meta of one decoded frame."""
    samples = header.samples
    shape = (header.rows, header.cols) if samples == 1 else (header.rows, header.cols, samples)
    if arr.shape != shape:
        raise ImageReadError(path, f"decodes to an array of shape {arr.shape}, not the declared {shape}", _REEXPORT)
    _reject_constant(arr, path, "decodes")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    meta: dict[str, Any] = {"format": "dicom"}
    for keyword, key in _DICOM_META_WHITELIST.items():
        value = ds.get(keyword)
        if isinstance(value, (int, float)):
            meta[key] = value
        elif text := header_text(keyword, value)[:64]:
            meta[key] = text
    meta.update(transfer_syntax=header.syntax.name, frames=header.frames, frame=index, original_shape=shape[:2])
    if str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":  # text in the pixels, a name perhaps
        meta["burned_in_annotation"] = True
    if samples == 1 and photometric == "PALETTE COLOR":
        pixels = palette_to_unit(arr, ds)
        meta["voi"] = "palette"
    elif samples == 1:
        pixels, meta_voi = grey_to_unit(arr, ds, index, path)
        meta.update(meta_voi)
        pixels = pixels[..., None]
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
        pixels = arr.astype(np.float32)
        pixels /= np.float32(2**bits - 1)
        if photometric.startswith("YBR"):
            meta["photometric"] = "RGB"  # pydicom converted it
            meta["source_photometric"] = photometric
        meta["voi"] = "nominal"
    return pixels, meta
