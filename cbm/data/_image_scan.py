"""Every image of a manifest checked without decoding its pixels: what ``cbm validate`` reports as
unreadable before a run would skip it (:func:`unreadable_images`), and the DICOM files' Modality codes
(:func:`dicom_modalities_of`), which ``cbm validate`` checks against the card's modality.

Each file gets :func:`cbm.data.check_image_header` (an empty or damaged file, not an image, a header
its data contradicts, a frame over the pixel budget) and, for PNG and JPEG, the check of its data's
structure that :func:`cbm.data.read_image` runs before it decodes (a truncated PNG or JPEG).
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from cbm.data._image import _JPEG_MAGIC, _PNG_MAGIC, check_image_header
from cbm.data._image_base import DICOM_SUFFIXES, MissingCodecError
from cbm.data._image_streams import check_stream
from cbm.errors import ImageError

__all__ = ["dicom_modalities_of", "image_problem", "unreadable_images"]


def image_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an image (the reason, without the path), or None."""
    path = Path(path)
    try:
        check_image_header(path)
        with open(path, "rb") as f:
            head = f.read(8)
        fmt = "png" if head.startswith(_PNG_MAGIC) else "jpeg" if head.startswith(_JPEG_MAGIC) else ""
        check_stream(path, fmt)
    except ImageError as exc:  # unreadable, and a compressed DICOM whose codec is not installed (its fix said)
        problem = f"{exc.field_label(exc.field)} {exc.problem}" if exc.field else exc.problem
        return f"{problem} ({exc.fix.rstrip('.')})" if isinstance(exc, MissingCodecError) else problem
    except OSError as exc:  # gone since the manifest was read, unreadable (permissions)
        return f"cannot be opened ({exc.strerror or type(exc).__name__})"
    return None


def unreadable_images(manifest, *, progress: bool | None = None) -> list[tuple[int, str, str]]:
    """``(line, path as written, reason)`` for each row of ``manifest`` whose image cannot be read."""
    found = []
    for row in tqdm(manifest, desc="image headers", unit="file", disable=None if progress is None else not progress,
                    leave=False):
        reason = image_problem(manifest.file(row))
        if reason:
            found.append((row.line, row.path, reason))
    return found


def dicom_modalities_of(manifest, *, progress: bool | None = None) -> dict[str, list[tuple[int, str]]]:
    """DICOM Modality code -> ``(line, path as written)`` of each row of ``manifest`` whose image is a
    DICOM file that names one (its header alone is read, up to that element); other files are left out."""
    import warnings

    import pydicom

    found: dict[str, list[tuple[int, str]]] = {}
    for row in tqdm(manifest, desc="DICOM modalities", unit="file", disable=None if progress is None else not progress,
                    leave=False):
        path = Path(manifest.file(row))
        try:
            with open(path, "rb") as f:
                head = f.read(132)
            if head[128:132] != b"DICM" and path.suffix.lower() not in DICOM_SUFFIXES:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"], force=True)
            code = str(ds.get("Modality", "") or "").strip().upper()
        except Exception:  # noqa: BLE001 - an unreadable file is unreadable_images' to report
            continue
        if code:
            found.setdefault(code, []).append((row.line, row.path))
    return found
