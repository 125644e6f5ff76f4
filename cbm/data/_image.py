"""Reading one image file into float pixels in [0, 1]: PNG/JPEG/... through PIL, DICOM through pydicom.

Every reader returns a :class:`LoadedImage`: ``pixels`` is float32 ``(H, W, C)`` with C in {1, 3},
values in [0, 1], row 0 the top of the image as displayed; ``meta`` holds a few non-PHI facts.
Anything else raises: a file is never returned with a shape, a frame or pixels its header does
not promise.

Before any pixel is decoded, the header is checked (:func:`check_image_header`, which a server
can call on an upload): the declared size of one frame against the **pixel budget** (default
:data:`DEFAULT_MAX_PIXELS`, 2**25 = 33.5 million pixels, or ``$CBM_MAX_PIXELS``, or the
``max_pixels`` argument), and for DICOM the declared rows, columns, samples, bits and frames
against the length of the pixel data. A PNG's chunks must pass their CRC and its image data must
hold exactly the rows its header declares; a JPEG whose data ends before its last row raises
(PIL alone would fill the missing rows with grey).

DICOM follows the standard display pipeline (see :mod:`cbm.data._dicom`).

Errors name the file and the fix. :class:`ImageReadError` (an :class:`cbm.errors.ImageError`, so
an :class:`~cbm.errors.InputError` and a ``ValueError``) for a file that is not a readable image or
whose header and data disagree; :class:`MissingCodecError` (also an ``ImageError``, and a
``RuntimeError``) for compressed DICOM whose decoder is not installed; ``FileNotFoundError`` for
a missing file.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cbm.data._dicom import dicom_header, read_dicom
from cbm.data._dicom_text import header_text, pydicom_records_held
from cbm.data._image_base import (
    BUDGET_BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    DICOM_INSTALL_HINT,
    DICOM_SUFFIXES,
    MAX_PIXELS_ENV,
    FramePolicy,
    ImageReadError,
    LoadedImage,
    MissingCodecError,
    _check_file,
    _frame_index,
    check_pixel_budget,
    finish,
    first_in_process,
    pixel_budget,
    sixteen_bit_range,
)
from cbm.data._image_streams import check_stream
from cbm.errors import quote

__all__ = [
    "LoadedImage",
    "ImageReadError",
    "MissingCodecError",
    "read_image",
    "read_pil",
    "is_dicom_file",
    "check_image_header",
    "pixel_budget",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "BUDGET_BYTES_PER_PIXEL",
    "DICOM_SUFFIXES",
    "DICOM_INSTALL_HINT",
    "sixteen_bit_range",
    "pil_pixels",
]

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def check_image_header(source: str | os.PathLike | bytes, *, max_pixels: int | None = None) -> tuple[int, int, int]:
    """``(rows, columns, frames)`` from an image's header alone, after checking it; no pixel is decoded.

    PNG, JPEG and the other PIL formats: the size from PIL's header reader. DICOM: rows, columns,
    samples, bits and the number of frames, checked against each other and against the length of
    the pixel data (native syntaxes) or its fragments (compressed ones). One frame must fit the
    pixel budget (:func:`pixel_budget`). Call it on an upload before :func:`read_image`.

    Args:
        source: a file path, or the file's bytes.
        max_pixels: the pixel budget; default ``$CBM_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ImageReadError: not an image, a damaged header, header and data disagree, over the budget.
        FileNotFoundError: a path that does not exist.
    """
    return image_header(source, max_pixels=max_pixels)[:3]


def image_header(source: str | os.PathLike | bytes, *, max_pixels: int | None = None) -> tuple[int, int, int, str | None]:
    """:func:`check_image_header`'s ``(rows, columns, frames)`` and, for DICOM, the Modality when it is
    one of DICOM's defined terms (``""`` otherwise: a name typed there is never returned); None for
    other formats. ``cbm validate`` reads both in its one pass over the files."""
    budget = pixel_budget(max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), None
        if not data:
            raise ImageReadError(None, "is empty (0 bytes)", "Send the image file itself")
        head, opener = data[:132], (lambda: io.BytesIO(data))
    else:
        path = Path(source)
        head, opener = _check_file(path), (lambda: path)
    if head[128:132] == b"DICM" or (path is not None and path.suffix.lower() in DICOM_SUFFIXES):
        found = dicom_header(opener(), path, budget)
        return found.rows, found.cols, found.frames, header_text("Modality", found.ds.get("Modality"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _open_pil(opener(), path, budget) as im:
            try:  # a TIFF's pages are found by following its chain of headers, which may be broken
                frames = len(_stack_frames(im))
            except MemoryError:
                raise
            except Exception as exc:
                raise ImageReadError(path, f"has a damaged header ({type(exc).__name__}: {quote(str(exc))})",
                                     "Download or export the file again") from None
            return int(im.height), int(im.width), frames, None


# ---------------------------------------------------------------------------- entry point
def read_image(path: str | os.PathLike, frame: FramePolicy = "middle", *, max_pixels: int | None = None) -> LoadedImage:
    """Read an image file (PNG, JPEG, TIFF, BMP, ... or DICOM) as float pixels in [0, 1].

    The format is taken from the file's content (the ``DICM`` marker, PNG/JPEG signatures), not
    from its name; a file named ``.dcm`` must be DICOM.

    Args:
        path: the image file.
        frame: which frame of a multi-frame file to return: ``"first"``, ``"middle"`` (default),
            ``"last"``, or a 0-based index (negative counts from the end).
        max_pixels: the pixel budget of one frame, checked from the header before decoding;
            default ``$CBM_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`.

    Returns:
        A :class:`LoadedImage` (see its attributes).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: empty, truncated, not an image, DICOM without pixel data, a constant image,
            a header that its data contradicts, a frame over the pixel budget.
        MissingCodecError: compressed DICOM whose codec is not installed.
    """
    path = Path(path).expanduser()  # "~/scans/x.png" as a shell would read it
    head = _check_file(path)
    if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        # Named as DICOM but no preamble: a headerless (ACR-NEMA style) dataset, or not DICOM at all.
        return read_dicom(path, frame=frame, max_pixels=max_pixels)
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return read_pil(path, frame=frame, max_pixels=max_pixels)
    try:
        return read_pil(path, frame=frame, max_pixels=max_pixels)
    except ImageReadError as pil_error:
        # Extension-less files from PACS exports are often headerless DICOM.
        with pydicom_records_held() as held:
            try:
                image = read_dicom(path, frame=frame, max_pixels=max_pixels)
            except ImageReadError:
                raise pil_error from None
        for record in held:  # it was DICOM: what pydicom said of it is said
            logging.getLogger(record.name).callHandlers(record)
        return image


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM ``DICM`` marker at byte 128 (the Part 10 file format)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------- PIL formats
def _open_pil(source: Path | io.BytesIO, path: Path | None, budget: int) -> Any:
    """A lazily opened PIL image (header read, no pixels) whose first frame fits the budget.

    PIL's own decompression-bomb guard is set to the same budget: it warns above it (cbm refuses
    those here first) and refuses at twice it, so the two never disagree about a file.
    """
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = budget
    try:
        im = Image.open(source)
    except UnidentifiedImageError:
        raise ImageReadError(
            path, "is not an image file PIL can identify (not PNG, JPEG, TIFF, BMP, ... nor DICOM)",
            "Check that the file is an image (a download error page saved under an image name is common); "
            "fetch it again or leave it out (the manifest or the files given)",
        ) from None
    except Image.DecompressionBombError as exc:  # at twice the budget PIL refuses before cbm sees the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else budget * 2 + 1
        raise ImageReadError(
            path, f"declares {pixels:,} pixels per frame, over the pixel budget of {budget:,}",
            f"If the file is trusted and this size is real, raise the budget (${MAX_PIXELS_ENV}={pixels} or max_pixels=); "
            "otherwise remove it",
        ) from None
    except ImageReadError:
        raise
    except Exception as exc:  # a header PIL recognised but could not parse
        raise ImageReadError(path, f"has a damaged header ({type(exc).__name__}: {quote(str(exc))})",
                             "Download or export the file again") from None
    try:
        check_pixel_budget(path, int(im.height), int(im.width), budget)
    except ImageReadError:
        im.close()
        raise
    return im


def _stack_frames(im: Any) -> list[int]:
    """The frames of a PIL image that are frames of one stack (TIFF pages, GIF frames), by index: a
    JPEG that PIL opens as MPO (a phone's photo with an HDR gain map or depth map, a camera's preview)
    is one photograph, its other images not frames of it; a TIFF's reduced-resolution pages
    (NewSubfileType bit 0: a thumbnail, a pyramid's levels) are left out where it has others."""
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if im.format == "MPO" or n_frames == 1:
        return [0]
    if im.format != "TIFF":
        return list(range(n_frames))
    full = []
    for page in range(n_frames):
        im.seek(page)
        if not int(im.tag_v2.get(254, 0) or 0) & 1:
            full.append(page)
    im.seek(0)
    return full or list(range(n_frames))


def read_pil(path: str | os.PathLike, frame: FramePolicy = "middle", *, max_pixels: int | None = None) -> LoadedImage:
    """Read a PIL-readable image (PNG, JPEG, TIFF, BMP, GIF, WebP, ...) as float pixels in [0, 1].

    8-bit data is divided by 255; 16-bit greyscale is stretched from its smallest to its largest value
    (:func:`sixteen_bit_range`, ``meta["voi"] = "min_max"``), as a DICOM image of more than 8 bits
    without a window is, so 12-bit data in a 16-bit PNG is not read almost black (Pillow reads a
    16-bit colour or grey-and-alpha PNG at 8 bits, its high byte: warned once); grey stays one
    channel, palette and other colour modes become RGB, and an alpha channel is dropped (as ``Image.convert("RGB")`` does, which
    is what CLIP-style preprocessing sees). EXIF orientation is applied, so row 0 is the top as
    displayed. Multi-frame files (TIFF stacks, GIF) follow the ``frame`` policy; a JPEG with more
    images after its photograph (MPO: a phone's gain or depth map, a camera's preview) is read as
    its photograph, one frame, and a TIFF's reduced-resolution pages (a thumbnail, a pyramid's
    levels) are not frames. The header is
    checked against the pixel budget and, for PNG and JPEG, the data against the header, before
    the pixels are decoded.
    """
    from PIL import ImageOps

    path = Path(path)
    head = _check_file(path)
    budget = pixel_budget(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency chatter; problems raise below
            with _open_pil(path, path, budget) as im:
                pages = _stack_frames(im)
                n_frames = len(pages)
                index = _frame_index(frame, n_frames, path)
                if pages[index]:
                    im.seek(pages[index])
                    check_pixel_budget(path, int(im.height), int(im.width), budget, field=f"frame {index}")
                fmt = (im.format or path.suffix.lstrip(".")).lower()
                check_stream(path, fmt)
                im.load()
                orientation = im.getexif().get(0x0112, 1) if fmt in ("jpeg", "mpo", "tiff", "png", "webp") else 1
                rotated = orientation in range(2, 9)
                oriented = ImageOps.exif_transpose(im) if rotated else im
                declared = (int(oriented.height), int(oriented.width))
                mode = oriented.mode
                transparent = _note_transparency(oriented, path)
                values, offset, divisor, bits = _pil_values(oriented, fmt)
                del oriented  # the decoded image is freed before the float copy is made
    except ImageReadError:
        raise
    except (MemoryError, FileNotFoundError):
        raise
    except Exception as exc:  # any other decoder failure is the file's
        raise ImageReadError(
            path, f"could not be decoded, it is truncated or corrupt ({type(exc).__name__}: {quote(str(exc))})",
            "Download or export the file again",
        ) from None
    pixels = _unit_values(values, offset, divisor)
    del values
    if fmt == "png" and len(head) > 25 and head[24] == 16 and head[25] in (2, 4, 6):
        _note_sixteen_bit_colour(path, head[25])
    meta = {
        "format": fmt,
        "mode": mode,
        "photometric": "RGB" if pixels.ndim == 3 and pixels.shape[2] == 3 else "MONOCHROME2",
        "bits": bits,
        **({"voi": "min_max"} if bits == 16 else {}),
        "frames": n_frames,
        "frame": index,
        "original_shape": declared,
        "exif_transposed": rotated,
        **({"transparent": True} if transparent else {}),
    }
    return finish(pixels, path, declared, meta)


def _note_transparency(im: Any, path: Path | None) -> bool:
    """Whether an image has transparent pixels; said once a process, since its alpha is dropped and the
    colours under the transparent pixels (often black, sometimes white) are what the model sees."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        transparent = im.getchannel("A").getextrema()[0] < 255
    else:  # a palette or colour key (tRNS) that marks some colour transparent, if any pixel has it
        transparent = "transparency" in im.info and im.convert("RGBA").getchannel("A").getextrema()[0] < 255
    if transparent and first_in_process("transparent image"):
        log.warning("%s has transparent pixels: its alpha channel is dropped (as open_clip's convert('RGB') does), so "
                    "they are read by the colours stored under them, which a viewer does not show; flatten such images "
                    "onto the background you mean before training and prediction (later ones are not named)",
                    "an image in memory" if path is None else path)
    return transparent


def _note_sixteen_bit_colour(path: Path, colour_type: int) -> None:
    """A 16-bit colour or grey-and-alpha PNG: Pillow keeps the high byte of each value, so 12-bit data
    reads almost black (a 16-bit greyscale PNG without alpha is stretched instead). Said once a process."""
    if not first_in_process("16-bit colour PNG"):
        return
    kind = {2: "RGB", 4: "grey-and-alpha", 6: "RGBA"}[colour_type]
    log.warning("%s: a 16-bit %s PNG is read at 8 bits (the high byte of each value; later such files are not "
                "named), so data of fewer than 16 bits reads dark. Save it as 8-bit, or as 16-bit greyscale "
                "without alpha, which is stretched from its smallest to its largest value", path, kind)


def pil_pixels(im: Any) -> np.ndarray:
    """A PIL image already in memory as ``(H, W, C)`` float32 pixels in [0, 1], read as a file of its
    mode is (:func:`read_pil`): palette and other colour modes as RGB, alpha dropped, 16-bit grey
    stretched, 32-bit integer and float grey scaled from their range, EXIF orientation applied (a
    photo opened with ``Image.open`` reads as its file does). A multi-frame image is read at the
    frame it is on."""
    from PIL import ImageOps

    if im.getexif().get(0x0112, 1) in range(2, 9):
        im = ImageOps.exif_transpose(im)
    _note_transparency(im, None)
    values, offset, divisor, _ = _pil_values(im, "")
    return _unit_values(values, offset, divisor)


def _unit_values(values: np.ndarray, offset: float, divisor: float) -> np.ndarray:
    """``(values - offset) / divisor`` as ``(H, W, C)`` float32, in place on the one float copy."""
    pixels = values.astype(np.float32)
    if offset:
        pixels -= np.float32(offset)
    if divisor != 1.0:
        pixels /= np.float32(divisor)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _pil_values(im: Any, fmt: str) -> tuple[np.ndarray, float, float, int]:
    """The values of a loaded PIL image as an array ``(H, W[, 3])``, what is subtracted from them and
    what then divides them into [0, 1], and the source bit depth; the float copy is made by the
    caller once PIL's image is freed."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im), 0.0, 1.0, 1
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0)), 0.0, 255.0, 8
    if mode.startswith("I;16") or (mode == "I" and fmt == "png"):  # a 16-bit PNG may open as 32-bit int
        arr = np.asarray(im)
        lo, hi = sixteen_bit_range(arr)
        return arr, lo, hi - lo, 16
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.min() >= 0.0 and arr.max() <= 1.0 and mode == "F":
            return arr.astype(np.float32), 0.0, 1.0, 32
        lo, hi = float(arr.min()), float(arr.max())
        span = hi - lo if hi > lo else 1.0
        return ((arr - lo) / span).astype(np.float32), 0.0, 1.0, 32
    # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV -> RGB (alpha dropped)
    return np.asarray(im if mode == "RGB" else im.convert("RGB")), 0.0, 255.0, 8
