"""Every image of a manifest checked without decoding its pixels: what ``cbm validate`` reports as
unreadable before a run would skip it, and the DICOM files' Modality codes, which ``cbm validate``
checks against the card's modality, in one pass (:func:`scan_images`).

Each file gets :func:`cbm.data.check_image_header` (an empty or damaged file, not an image, a header
its data contradicts, a frame over the pixel budget) and, for PNG and JPEG, the check of its data's
structure that :func:`cbm.data.read_image` runs before it decodes (a truncated PNG or JPEG).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from cbm.data._image import _JPEG_MAGIC, _PNG_MAGIC, image_header
from cbm.data._image_base import MissingCodecError
from cbm.data._image_streams import check_stream
from cbm.errors import ImageError

__all__ = ["image_problem", "scan_images"]


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an image (the reason, without the path), or None."""
    return _scan(path)[0]


def _scan(path: str | Path) -> tuple[str | None, str | None]:
    """:func:`image_problem`'s reason, and the file's DICOM Modality where it is a readable DICOM file
    naming one of DICOM's defined terms (:func:`cbm.data._image.image_header`)."""
    path = Path(path)
    try:
        modality = image_header(path)[3]
        with open(path, "rb") as f:
            head = f.read(8)
        fmt = "png" if head.startswith(_PNG_MAGIC) else "jpeg" if head.startswith(_JPEG_MAGIC) else ""
        check_stream(path, fmt)
    except ImageError as exc:  # unreadable, and a compressed DICOM whose codec is not installed (its fix said)
        problem = f"{exc.field_label(exc.field)} {exc.problem}" if exc.field else exc.problem
        return (f"{problem} ({exc.fix.rstrip('.')})" if isinstance(exc, MissingCodecError) else problem), None
    except OSError as exc:  # gone since the manifest was read, unreadable (permissions)
        return f"cannot be opened ({exc.strerror or type(exc).__name__})", None
    return None, modality or None


def scan_images(manifest, *, progress: bool | None = None) -> tuple[list[tuple[int, str, str]], dict[str, list[tuple[int, str]]]]:
    """One pass over the images of ``manifest``: ``(line, path as written, reason)`` for each row whose
    image cannot be read, and DICOM Modality -> ``(line, path as written)`` of the readable DICOM files."""
    unreadable, modalities = [], {}
    for row in tqdm(manifest, desc="image headers", unit="file", disable=None if progress is None else not progress,
                    leave=False):
        reason, modality = _scan(manifest.file(row))
        if reason:
            unreadable.append((row.line, row.path, reason))
        elif modality:
            modalities.setdefault(modality, []).append((row.line, row.path))
    return unreadable, modalities
