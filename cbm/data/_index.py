"""``cbm index-dicom``: a manifest from DICOM headers alone (no pixel data is read or decoded).

Each file under a folder is checked for the DICOM marker, its header is read with
``stop_before_pixels``, and one manifest row is written per image object: the path, a label (from
the parent folder's name or a header attribute, if asked), a split (if asked: random, grouped by
patient so no patient is in two splits), and non-PHI header facts (modality, body part, view,
photometric interpretation, size, frames, transfer syntax). Patient identifiers are used only to
group the split; they are written, if at all, as a salted hash (``--patient-key``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from cbm.data._assign import grouped_split
from cbm.data._dicom import header_text
from cbm.data._dicom_text import quiet_pydicom_values
from cbm.data._image import DICOM_SUFFIXES

__all__ = ["IndexResult", "index_dicom", "INDEX_COLUMNS"]

log = logging.getLogger(__name__)

# header keyword -> manifest column; all non-PHI
_HEADER_COLUMNS = {
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "ViewPosition": "view_position",
    "PhotometricInterpretation": "photometric",
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "frames",
    "BitsStored": "bits_stored",
}
INDEX_COLUMNS = ("path", "label", "split", *_HEADER_COLUMNS.values(), "transfer_syntax")
_PATIENT_TAGS = ("PatientID", "StudyInstanceUID")  # grouping only, never written in clear
# Keywords that can identify a patient, a study or a person (names, IDs, UIDs, dates and times,
# addresses, institutions, the patient's own attributes, free text; after DICOM PS3.15's
# confidentiality profile): labels are written to the manifest and printed, so these are refused
# as a label source, except the few patient attributes and acquisition settings below.
_IDENTIFYING_KEYWORD = re.compile(
    r"Name|UID|Date|Time|Address|Telephone|Accession|Institution|Physician|Operator|Comment|SerialNumber"
    r"|Identifier|Station|Birth|Patient|Description|History|Ethnic|Occupation|Residence|Religio|Military"
    r"|(?:^|[a-z])IDs?(?:$|[A-Z])"
)
_LABEL_KEYWORDS_ALLOWED = frozenset({
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight",  # the usual confounders, not identifiers
    "ProtocolName", "ExposureTime", "EchoTime", "RepetitionTime", "InversionTime", "FrameTime",
})


@dataclass
class IndexResult:
    """Rows written by :func:`index_dicom` and the files left out, with reasons."""

    rows: list[dict[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    n_files: int = 0
    out: Path | None = None

    def summary(self) -> str:
        lines = [f"{len(self.rows)} DICOM images indexed from {self.n_files} files"]
        reasons = Counter(r for _, r in self.skipped)
        if reasons:
            lines.append("  left out: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common()))
            shown = self.skipped[:5]  # the first few by path, so a user can look at them
            lines += [f"    {path}: {reason}" for path, reason in shown]
            if len(self.skipped) > len(shown):
                lines.append(f"    and {len(self.skipped) - len(shown)} more")
        splits = Counter(r["split"] for r in self.rows if r["split"])
        if splits:
            lines.append("  splits: " + ", ".join(f"{s} {n}" for s, n in splits.items()))
        labels = Counter(r["label"] for r in self.rows if r["label"])
        if labels:
            lines.append("  labels: " + ", ".join(f"{lab} {n}" for lab, n in labels.most_common()))
        if self.out:
            lines.append(f"  written to {self.out}")
        return "\n".join(lines)


def _candidate_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


def _parse_label_from(label_from: str | None) -> tuple[str, str | None]:
    if not label_from:
        return "none", None
    if label_from == "folder":
        return "folder", None
    if label_from.startswith("tag:") and len(label_from) > 4:
        from pydicom.datadict import tag_for_keyword

        keyword = label_from[4:]
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"--label-from {label_from!r}: {keyword!r} is not a DICOM keyword (e.g. tag:BodyPartExamined)")
        if keyword not in _LABEL_KEYWORDS_ALLOWED and _IDENTIFYING_KEYWORD.search(keyword):
            raise ValueError(
                f"--label-from {label_from!r}: {keyword} can identify a patient, and labels are written to the "
                "manifest and printed in clear; label by folder (--label-from folder) or by a clinical attribute "
                "(e.g. tag:BodyPartExamined)"
            )
        return "tag", keyword
    raise ValueError(f"--label-from must be 'folder' or 'tag:<DICOM keyword>', got {label_from!r}")


def _parse_fractions(split: str | Sequence[float] | None) -> dict[str, float] | None:
    if split is None or split == "":
        return None
    values = [float(v) for v in (split.split(",") if isinstance(split, str) else split)]
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--split needs three non-negative fractions for train,val,test that sum to 1, e.g. 0.8,0.1,0.1; got {split!r}")
    return dict(zip(("train", "val", "test"), values))


def _header_row(path: Path, root: Path, mode: str, keyword: str | None, skipped: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The manifest row of one file from its header (None, with the reason in ``skipped``, for a file left out)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    rel = path.relative_to(root).as_posix()
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        skipped.append((rel, f"unreadable ({exc.strerror})"))
        return None
    if head[128:132] != b"DICM" and path.suffix.lower() not in DICOM_SUFFIXES:
        skipped.append((rel, "not DICOM"))
        return None
    wanted = [*_HEADER_COLUMNS, *_PATIENT_TAGS, "SOPClassUID", *([keyword] if keyword else [])]
    quiet_pydicom_values()  # this file's own share of pydicom's log records, its header text cut out
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=wanted, force=head[128:132] != b"DICM")
    except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - any parse failure is a skipped file
        skipped.append((rel, f"header not readable ({type(exc).__name__})"))
        return None
    if not ("Rows" in ds and "Columns" in ds):  # reports, RT plans, DICOMDIRs: no image module
        skipped.append((rel, "no image (no rows/columns in the header)"))
        return None
    row: dict[str, Any] = {"path": rel, "label": "", "split": ""}
    for kw, col in _HEADER_COLUMNS.items():
        value = ds.get(kw)
        row[col] = header_text(kw, value)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    row["transfer_syntax"] = syntax.name if syntax is not None else ""
    if mode == "folder":
        row["label"] = path.parent.name if path.parent != root else ""
    elif mode == "tag":
        row["label"] = header_text(keyword, ds.get(keyword, "") or "")
    patient = next((str(ds.get(t)) for t in _PATIENT_TAGS if ds.get(t) not in (None, "")), "")
    row["_patient"] = patient or f"file:{rel}"
    return row


def index_dicom(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    label_from: str | None = None,
    split: str | Sequence[float] | None = None,
    seed: int = 0,
    patient_key: bool = False,
    salt: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> IndexResult:
    """Index the DICOM images under ``root`` into a manifest, reading headers only.

    Args:
        root: folder to scan (recursively; hidden files and folders are skipped).
        out: manifest CSV to write (``None``: only return the rows). Paths are relative to ``root``.
        label_from: ``"folder"`` (the file's parent folder name), ``"tag:<Keyword>"`` (a header
            attribute, e.g. ``tag:BodyPartExamined``), or ``None`` (empty labels).
        split: ``"0.8,0.1,0.1"`` fractions for train/val/test, assigned at random with ``seed``,
            grouped by patient (PatientID, else StudyInstanceUID), stratified by label; ``None``
            leaves the split column empty.
        seed: the random seed of the split.
        patient_key: also write a ``patient_key`` column: a salted SHA-256 of the PatientID, so
            rows of one patient can be grouped without revealing the ID.
        salt: the salt of ``patient_key`` (default: random per run, and not stored).
        progress: show a progress bar.
        overwrite: replace a manifest already at ``out`` (by default it is kept, and this raises
            before any file is read).

    Returns:
        An :class:`IndexResult`; non-DICOM files, unreadable headers and objects without an image
        (reports, RT plans, ...) are listed in ``skipped`` with the reason.
    """
    from tqdm.auto import tqdm

    from cbm.data._manifest_csv import check_new_manifest, salted_patient_key, write_manifest

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    if out is not None:
        check_new_manifest(out, overwrite)
    mode, keyword = _parse_label_from(label_from)
    fractions = _parse_fractions(split)
    if patient_key and salt is None:
        salt = secrets.token_hex(16)

    files = _candidate_files(root)
    result = IndexResult(n_files=len(files))
    items: list[dict[str, Any]] = []
    for path in tqdm(files, desc="indexing DICOM headers", unit="file", disable=not progress):
        row = _header_row(path, root, mode, keyword, result.skipped)
        if row is None:
            continue
        if patient_key:
            row["patient_key"] = salted_patient_key("" if row["_patient"].startswith("file:") else row["_patient"], salt)
        items.append(row)

    if fractions:
        labels = sorted({it["label"] for it in items})
        for it in items:
            it["label"] = it["label"] or ""
        grouped_split(items, fractions, seed, labels)
    columns = [*INDEX_COLUMNS, *(["patient_key"] if patient_key else [])]
    result.rows = [{c: it.get(c, "") for c in columns} for it in items]
    if out is not None:
        result.out = write_manifest(out, result.rows, columns)
    return result
