"""What every image reader of cbm shares: the result type, the errors, the pixel budget and the
checks on a file and on decoded pixels (see :mod:`cbm.data._image` for the readers)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbm.errors import ImageError, quote

__all__ = [
    "LoadedImage",
    "ImageReadError",
    "MissingCodecError",
    "pixel_budget",
    "check_pixel_budget",
    "finish",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "BUDGET_BYTES_PER_PIXEL",
    "DICOM_SUFFIXES",
    "DICOM_INSTALL_HINT",
    "sixteen_bit_range",
    "first_in_process",
]

FramePolicy = int | str  # "first" | "middle" | "last" | a 0-based index (negative counts from the end)

DEFAULT_MAX_PIXELS = 1 << 25
"""Pixels of one frame read by default (33,554,432): the largest real modality read whole, a
full-field digital mammogram (e.g. 4,728 x 5,928 at 50 micrometres = 28 million pixels), fits with
room to spare; a 24-megapixel dermoscopy photograph too. A 13,000 x 13,000 PNG (169 million) does
not. Whole-slide pathology images are tiled formats, not read here."""
MAX_PIXELS_ENV = "CBM_MAX_PIXELS"
BUDGET_BYTES_PER_PIXEL = 12
"""Bytes of the largest output per budgeted pixel (float32 RGB): the pixel budget in bytes is
``pixel_budget() * BUDGET_BYTES_PER_PIXEL``, and reading any one file peaks below twice that."""

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
DICOM_INSTALL_HINT = 'pip install "cbm[dicom]"'


class ImageReadError(ImageError):
    """A file that exists but cannot be read as an image, or whose header and data disagree.

    The name every image reader of cbm raises (an :class:`cbm.errors.ImageError`); the message
    names the file, the field or offset where there is one, and the fix.
    """


class MissingCodecError(ImageError, RuntimeError):
    """Compressed DICOM pixel data whose decoder is not installed; the message gives the install command."""

    def __init__(self, path: str | os.PathLike, syntax: str, missing: list[str], packages: list[str]) -> None:
        self.syntax = syntax
        self.missing = list(missing)
        self.packages = list(packages)
        detail = f" (missing: {'; '.join(missing)})" if missing else ""
        pkgs = " ".join(packages) or "pylibjpeg"
        super().__init__(
            path, f"the pixel data is compressed as {syntax} and no installed codec can decode it{detail}",
            f"Install the DICOM codecs with `{DICOM_INSTALL_HINT}` (or `pip install pylibjpeg {pkgs}`), then retry",
        )

    def __reduce__(self):
        return (type(self), (self.path, self.syntax, self.missing, self.packages))


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


# ---------------------------------------------------------------------------- the pixel budget
def pixel_budget(max_pixels: int | None = None) -> int:
    """The most pixels one frame may have: ``max_pixels`` if given, else ``$CBM_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ValueError: ``max_pixels`` or the variable is not a positive whole number.
    """
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive whole number of pixels, not {quote(max_pixels)}")
        return int(max_pixels)
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"${MAX_PIXELS_ENV}={quote(text)} is not a positive whole number of pixels; "
            f"unset it (default {DEFAULT_MAX_PIXELS}) or give e.g. {MAX_PIXELS_ENV}={DEFAULT_MAX_PIXELS}"
        )
    return value


def sixteen_bit_range(values: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` that a 16-bit greyscale image (PNG, TIFF or ``uint16`` array) is stretched between
    into [0, 1]: its smallest and largest value, as a DICOM image of more than 8 bits without a
    window is read (``voi: min_max``).

    A 16-bit PNG does not say how many of its bits the detector used: one written from 12-bit DICOM
    holds 0-4095, which divided by 65535 is an almost black image (the largest value at 6 % grey)
    that an encoder trained on photographs and figures reads badly. A constant image (refused later
    as such) keeps the full 16-bit scale.
    """
    if values.size == 0:
        return 0.0, 65535.0
    lo, hi = float(values.min()), float(values.max())
    return (lo, hi) if hi > lo else (0.0, 65535.0)


_SAID: set[str] = set()  # what the readers have said once in this process (first_in_process)


def first_in_process(what: str) -> bool:
    """True the first time a reader asks about ``what`` in this process, then False: a warning that
    names its first file and leaves the rest to debug level (a dataset can hold thousands of them)."""
    if what in _SAID:
        return False
    _SAID.add(what)
    return True


def check_pixel_budget(path: Path | None, rows: int, cols: int, budget: int, field: str | None = None) -> None:
    """Raise :class:`ImageReadError` when one ``rows x cols`` frame is over ``budget`` pixels."""
    if rows * cols > budget:
        raise ImageReadError(
            path, f"declares {rows} x {cols} = {rows * cols:,} pixels per frame, over the pixel budget of {budget:,}",
            f"If the file is trusted and this size is real, raise the budget (${MAX_PIXELS_ENV}={rows * cols} "
            f"or max_pixels=); otherwise remove it",
            field=field,
        )



def _check_file(path: Path) -> bytes:
    """The first bytes of ``path`` after checking that it is a non-empty regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"image file not found: {path}. Check the path (for a data card: the manifest's path "
            f"column, the card's image_root or its image_root_env variable)"
        ) from None
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission
        raise ImageReadError(path, f"cannot be opened ({type(exc).__name__}: {exc})",
                             "Check the path and the file's permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(path, "is a folder, not an image file", "Point the manifest at the image file itself")
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "is not a regular file (a device, pipe or socket)", "Point the manifest at an image file")
    if info.st_size == 0:
        raise ImageReadError(
            path, "is empty (0 bytes), so the download or copy was cut short", "Fetch or copy the file again"
        )
    try:
        with open(path, "rb") as fh:
            return fh.read(132)
    except OSError as exc:
        raise ImageReadError(path, f"cannot be read ({type(exc).__name__}: {exc})", "Check the file's permissions") from None


def _frame_index(frame: FramePolicy, n_frames: int, path: Path | None) -> int:
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


def finish(pixels: np.ndarray, path: Path, shape: tuple[int, int], meta: dict[str, Any]) -> LoadedImage:
    """The :class:`LoadedImage` of decoded pixels after checking the contract: float32 ``(H, W, C)``
    of the declared ``shape``, C in {1, 3}, finite, in [0, 1], not constant."""
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.shape[:2] != tuple(shape):
        raise ImageReadError(
            path, f"decodes to pixels of shape {pixels.shape}, not the {shape[0]} x {shape[1]} its header declares",
            "The file is damaged or of an unsupported layout; export it again",
        )
    lo, hi = float(pixels.min()), float(pixels.max())  # NaN and infinities show in the extremes: no mask needed
    if not (np.isfinite(lo) and np.isfinite(hi)):
        fix = ("Check the file's rescale/LUT attributes; re-export it" if meta.get("format") == "dicom" else
               "Re-export it with a finite value in every pixel (a float image often marks pixels without data NaN)")
        raise ImageReadError(path, "decodes to NaN or infinite values", fix)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    _reject_constant(pixels, path, "decodes")
    return LoadedImage(pixels, meta)
