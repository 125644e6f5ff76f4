"""A manifest CSV's header and records, with a clear error for every way the file can be malformed;
writing one (:func:`write_manifest`) and the salted patient keys its rows carry."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cbm.errors import ManifestError, quote

__all__ = ["check_new_manifest", "header_note", "read_manifest_csv", "salted_patient_key", "write_manifest"]

_NEWLINE = b"\n"


def read_manifest_csv(
    path: Path, *, required: Sequence[str], group_column: str | None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, record)`` pairs of a CSV, with clear errors for a malformed file."""
    try:
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ManifestError(path, f"cannot be read ({type(exc).__name__}: {quote(str(exc))})",
                            "Check the path and the file's permissions") from None
    if "\x00" in text:
        raise ManifestError(path, "contains NUL bytes, so it is not a CSV text file", "Export it again as CSV",
                            field=f"line {text[:text.index(chr(0))].count(chr(10)) + 1}")
    # newline="": a line break inside a quoted cell stays in the cell (splitting lines first dropped it)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(path, "is empty", "It needs a header line 'path,label,split' and one row per image") from None
    except csv.Error as exc:
        raise ManifestError(path, f"is not a valid CSV ({exc})", "Fix the quoting of the header", field="line 1") from None
    needed = list(required) + ([group_column] if group_column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise ManifestError(
            path, f"lacks the column(s) {quote(', '.join(missing))[1:-1]} (header: {quote(','.join(header) or '(empty)')[1:-1]})"
            + header_note(header, missing),
            f"A manifest needs the columns path,label,{quote(required[2], 60)[1:-1]}"
            + (f" and the card's group column {quote(group_column, 60)}" if group_column else ""), field="line 1",
        )
    if len(set(header)) != len(header):
        dupes = sorted(c for c, n in Counter(header).items() if n > 1 and c)
        if header.count("") > 1:  # a spreadsheet exports the empty columns it once formatted
            unnamed = ", ".join(str(i + 1) for i, c in enumerate(header) if not c)
            raise ManifestError(path, f"has {header.count('')} columns without a name in its header (columns {unnamed})"
                                + (f" and repeats the column(s) {quote(', '.join(dupes))[1:-1]}" if dupes else ""),
                                "Delete the unnamed columns (a spreadsheet may export empty ones), or name each",
                                field="line 1")
        raise ManifestError(path, f"repeats the column(s) {quote(', '.join(dupes))[1:-1]} in its header", "Keep one of each",
                            field="line 1")
    records: list[tuple[int, dict[str, str]]] = []
    try:
        end = reader.line_num
        for fields in reader:
            line, end = end + 1, reader.line_num  # a record's first line (a quoted cell may span lines)
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                stray = _carriage_return_splitting(path, line)
                if stray is not None:
                    raise ManifestError(
                        path, "holds a carriage return (\\r) inside it, which ends its row there "
                        f"(a row of {len(fields)} field(s) where the header has {len(header)})",
                        "Remove the stray \\r (left by a copy from another program), or quote the cell that holds it",
                        field=f"line {stray}")
                raise ManifestError(
                    path, f"has {len(fields)} field(s) but the header has {len(header)}",
                    "Quote values that contain commas (\"a, b\") and check for stray separators", field=f"line {line}",
                )
            records.append((line, dict(zip(header, fields))))
    except csv.Error as exc:
        raise ManifestError(path, f"is not a valid CSV ({exc})", "Fix the quoting there", field=f"line {reader.line_num}") from None
    return header, records


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> ManifestError:
    """The error for a manifest that is not UTF-8: UTF-16 (a spreadsheet's "Unicode text"), or the line
    and byte of the first character that is not, as a Windows or Latin-1 export writes an accent."""
    data = exc.object if isinstance(exc.object, bytes) else b""
    fix = "Save it as a UTF-8 CSV (a spreadsheet's \"CSV UTF-8\")"
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return ManifestError(path, "is UTF-16 text (a spreadsheet's \"Unicode text\" export), not UTF-8", fix)
    return ManifestError(path, f"is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}, as a Windows or "
                               "Latin-1 export writes an accented letter)", fix,
                         field=f"line {data.count(_NEWLINE, 0, exc.start) + 1}")


def _carriage_return_splitting(path: Path, line: int) -> int | None:
    """The line (as an editor counts them, by \\n) of a \\r not followed by \\n that split the row read
    at ``line`` in a file whose lines end in \\n: reading the text turned it into a line end, so the
    row's two pieces are read at lines ``e + i`` and ``e + i + 1`` (``e``: its editor line; ``i``: the
    lone \\r's before it). None if no such \\r split that row (or the file's lines end in \\r alone, an
    old Mac export, which reads as it is)."""
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError:
        return None
    if "\n" not in text:
        return None
    for i, at in enumerate(re.finditer(r"\r(?!\n)", text)):
        editor_line = text.count("\n", 0, at.start()) + 1
        if line in (editor_line + i, editor_line + i + 1):
            return editor_line
    return None


def header_note(header: list[str], missing: list[str]) -> str:
    """Why a header lacks columns: a spreadsheet saved with ';' (a decimal-comma locale) or tabs, or
    names in another case (``Path``)."""
    if header and header[0].lower().startswith("sep="):  # Excel's separator hint, written above the header
        return f"; its first line is Excel's separator hint {quote(','.join(header), 20)}, not the header: delete that line"
    for sep, name in ((";", "';'"), ("\t", "tabs"), ("|", "'|'")):
        if len(header) == 1 and sep in header[0]:
            return f"; its columns are separated by {name}, not commas: save it as comma-separated CSV"
    cased = {h.casefold(): h for h in header}
    renames = [f"{quote(cased[c.casefold()], 60)} to {quote(c, 60)}" for c in missing if c.casefold() in cased]
    return f"; column names are case-sensitive: rename {', '.join(renames)}" if renames else ""


def salted_patient_key(patient: str, salt: str) -> str:
    """A manifest's ``patient_key`` of a patient ID: a salted SHA-256 (16 hex digits), ``""`` for no ID.

    The same patient gets the same key within one salt; the ID itself is never written.
    """
    return hashlib.sha256(f"{salt}:{patient}".encode()).hexdigest()[:16] if patient else ""


def check_new_manifest(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path``, refused where a manifest is already there and ``overwrite`` was not asked for: its
    splits may be those a model was fitted and tested on, and a new draw would change them."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError(path, "is a folder", "Name the manifest's file, e.g. --out manifest.csv")
    if path.exists() and not overwrite:
        raise ManifestError(
            path, "already exists, and it is kept as it is (its splits may be those of models already fitted)",
            "Write the new manifest to another file (--out NEW.csv), or replace this one with --force "
            "(overwrite=True in Python)")
    return path


def write_manifest(path: str | os.PathLike, rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> Path:
    """Atomically write manifest rows (dicts) as CSV; ``path,label,split`` come first."""
    from cbm.utils import atomic_write_text

    cols = list(columns) if columns else []
    if not cols:
        for row in rows:
            cols.extend(k for k in row if k not in cols)
    head = [c for c in ("path", "label", "split") if c in cols]
    cols = head + [c for c in cols if c not in head]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in cols})
    return atomic_write_text(path, buf.getvalue())
