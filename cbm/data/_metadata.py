"""A source's metadata as rows, for ``cbm make-splits``: the files a split rule reads.

What ``--metadata`` may be, and how it is read:

- a CSV file, plain or compressed (``.csv.gz``, or a ``.zip`` holding one CSV), recognised by its
  first bytes, not its name; only the columns the rule names are kept;
- XML documents (one report each) in a ``.tgz``/``.tar``/``.zip`` archive, a folder or one
  ``.xml`` file, when the rule has an ``xml`` block;
- an image folder, when the rule has a ``folder`` block (the file paths are the metadata);
- the lists of a ``method: lists`` split (``train_indexes.csv`` ...), recognised by file name.

Several files are joined on the rule's ``join`` columns (each file on the first it has), else
concatenated. Every error is a :class:`MetadataError` that names the file, the line or column,
what is wrong and what to pass instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import os
import re
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

from cbm.data._manifest_csv import header_note
from cbm.data._split_rule import ROW_NUMBER, ListsSplit, SplitRule, XmlRule
from cbm.errors import InputError

__all__ = ["MetadataError", "SourceRows", "load_metadata", "check_columns", "file_key", "shown_columns"]

_COMPRESSED = (".gz", ".zip", ".bz2", ".xz", ".tgz")
_MAX_SHOWN = 30


class MetadataError(InputError):
    """A metadata file (or folder) that the card's split rule cannot read."""

    kind = "metadata"


@dataclass
class Table:
    """One metadata file read: its columns (the whole header) and its rows (the wanted columns)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]


@dataclass
class SourceRows:
    """The rows of every metadata file, joined or concatenated, and the split lists given."""

    rows: list[dict[str, str]]
    columns: list[str]
    files: list[Path]
    split_lists: dict[str, set[str]] = field(default_factory=dict)


def file_key(name: str | os.PathLike) -> str:
    """A file name as rules name it: lower case, without a compression suffix (``x.csv.gz`` -> ``x.csv``)."""
    key = Path(name).name.lower()
    if key.endswith(".tgz"):
        return key[:-4] + ".tar"
    for suffix in _COMPRESSED:
        if key.endswith(suffix) and key.count(".") > 1:
            return key[: -len(suffix)]
    return key


def shown_columns(columns: Sequence[str]) -> str:
    """The named columns of a header, sorted, at most a few dozen (a wide file stays a short message)."""
    return _bounded(sorted(c for c in columns if c.strip() and c != ROW_NUMBER))


def _bounded(names: Sequence[str]) -> str:
    """Names joined with commas, at most a few dozen of them."""
    more = len(names) - _MAX_SHOWN
    return ", ".join(names[:_MAX_SHOWN]) + (f" and {more} more" if more > 0 else "") if names else "(none)"


# ---------------------------------------------------------------------------- CSV
def _kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(262)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    return "text"


def _zip_member(path: Path, zf: zipfile.ZipFile) -> str:
    """The one CSV inside a zip (macOS debris and folders ignored)."""
    names = [n for n in zf.namelist() if not n.endswith("/") and "__MACOSX" not in n and not Path(n).name.startswith(".")]
    tables = [n for n in names if n.lower().endswith((".csv", ".tsv", ".txt"))]
    if len(tables) != 1:
        raise MetadataError(
            path, f"is a zip holding {len(tables)} CSV files ({', '.join(tables[:10]) or 'none'}; members: {', '.join(names[:10])})",
            "Pass a zip holding exactly one CSV, or unzip it and pass the CSV itself",
        )
    return tables[0]


@contextmanager
def _text_stream(path: Path, encoding: str) -> Iterator[IO[str]]:
    """The text of a CSV file, gzip file or zip holding one CSV."""
    kind = _kind(path)
    if kind == "tar":
        raise MetadataError(path, "is a tar archive, not a CSV", "Unpack it and pass the CSV inside with --metadata")
    if kind == "gzip":
        with gzip.open(path, "rt", encoding=encoding, newline="") as fh:
            yield fh
    elif kind == "zip":
        with zipfile.ZipFile(path) as zf, zf.open(_zip_member(path, zf)) as raw:
            yield io.TextIOWrapper(raw, encoding=encoding, newline="")
    else:
        with open(path, encoding=encoding, newline="") as fh:
            yield fh


def read_csv(path: Path, columns: set[str] | None = None, *, row_numbers: bool = False) -> Table:
    """A CSV metadata file (plain, gzip or one-CSV zip), keeping only ``columns`` (all if None).

    Tried as UTF-8 first, then Latin-1. ``row_numbers`` adds ``#row``: each row's 0-based position.
    """
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return _read_csv(path, columns, row_numbers, encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte")  # pragma: no cover


def _read_csv(path: Path, columns: set[str] | None, row_numbers: bool, encoding: str) -> Table:
    try:
        with _text_stream(path, encoding) as fh:
            head = [fh.readline() for _ in range(50)]  # whole lines, so the reader sees them unbroken
            if any("\x00" in line for line in head):
                raise MetadataError(
                    path, "is not a text CSV (it holds NUL bytes)",
                    "cbm reads .csv, .csv.gz and a .zip holding one CSV; unpack other archives and pass the source's CSV",
                )
            reader = csv.reader(itertools.chain(head, fh))
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise MetadataError(path, "is empty (no header line)", "Pass the source's metadata CSV")
            wanted = [(i, name) for i, name in enumerate(header) if columns is None or name in columns]
            rows: list[dict[str, str]] = []
            for record in reader:
                if not record:
                    continue  # a blank line
                if len(record) != len(header):
                    raise MetadataError(
                        path, f"line {reader.line_num} has {len(record)} fields but the header has {len(header)}",
                        "The file is malformed or not the source's metadata CSV",
                    )
                row = {name: record[i].strip() for i, name in wanted}
                if row_numbers:
                    row[ROW_NUMBER] = str(len(rows))
                rows.append(row)
    except csv.Error as exc:
        raise MetadataError(path, f"is not a valid CSV ({exc})", "Pass the source's metadata CSV") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MetadataError(path, f"cannot be read ({exc})", "Check that the file is complete (download it again)") from None
    return Table(path, header + ([ROW_NUMBER] if row_numbers else []), rows)


# ---------------------------------------------------------------------------- XML
def _xml_documents(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every .xml document in a folder, a tar (gzip or not), a zip or one file."""
    if path.is_dir():
        for xml in sorted(path.rglob("*.xml")):
            yield xml.relative_to(path).as_posix(), xml.read_bytes()
        return
    kind = _kind(path)
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                if name.lower().endswith(".xml") and "__MACOSX" not in name:
                    yield name, zf.read(name)
    elif kind in ("gzip", "tar") and tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            for member in sorted((m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith(".xml")), key=lambda m: m.name):
                handle = tf.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()
    else:
        yield path.name, path.read_bytes()


def _xml_value(root: ElementTree.Element, element: ElementTree.Element, expr: str, separator: str) -> str:
    """A field of an XML row: ``PATH@attr`` or ``PATH`` (text); '@...' and '.' paths from the row's element."""
    where, _, attribute = expr.partition("@")
    base = element if where.startswith(".") or where == "" else root
    targets = [base] if where in ("", ".") else base.findall(where)
    values = [(t.get(attribute) if attribute else t.text) or "" for t in targets]
    return separator.join(v.strip() for v in values if v.strip())


def read_xml(path: Path, rule: XmlRule) -> Table:
    """Rows from XML documents: one per ``rule.each`` element of each document (or per document)."""
    rows: list[dict[str, str]] = []
    n_docs = 0
    try:
        for name, data in _xml_documents(path):
            n_docs += 1
            try:
                root = ElementTree.fromstring(data)
            except ElementTree.ParseError as exc:
                raise MetadataError(path, f"holds {name}, which is not valid XML ({exc})", "Pass the source's report archive as released") from None
            for element in root.findall(rule.each) if rule.each else [root]:
                rows.append({col: _xml_value(root, element, expr, rule.separator) for col, expr in rule.fields.items()})
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise MetadataError(path, f"cannot be read ({exc})", "Check that the archive is complete (download it again)") from None
    if not n_docs:
        raise MetadataError(path, "holds no .xml document", "Pass the source's XML reports (an archive or folder of .xml files)")
    return Table(path, list(rule.fields), rows)


# ---------------------------------------------------------------------------- folders
def read_folder(root: Path, rule: SplitRule) -> Table:
    """One row per file under ``root`` whose relative path matches the pattern (named groups = columns)."""
    folder = rule.folder
    assert folder is not None
    pattern = re.compile(folder.pattern)
    exclude = re.compile(folder.exclude) if folder.exclude else None
    rows, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if exclude and exclude.search(rel):
                continue
            m = pattern.search(rel)
            if not m:
                continue
            row = {"path": rel, **{k: v or "" for k, v in m.groupdict().items()}}
            if folder.unique_by:
                key = tuple(row.get(k, "") for k in folder.unique_by)
                if key in seen:
                    continue
                seen.add(key)
            rows.append(row)
    if not rows:
        raise MetadataError(root, f"holds no file laid out as the card expects ({_folder_layout(rule)})", "Pass the folder the source unpacks to")
    return Table(root, ["path", *pattern.groupindex], rows)


def _folder_layout(rule: SplitRule) -> str:
    assert rule.folder is not None
    return rule.folder.layout or f"files whose path matches {rule.folder.pattern}"


# ---------------------------------------------------------------------------- loading
def _read_one(path: Path, rule: SplitRule) -> Table:
    if not path.exists():
        help_text = f"; {rule.metadata_help}" if rule.metadata_help else ""
        raise FileNotFoundError(f"metadata not found: {path} (expected {', '.join(rule.metadata)}{help_text})")
    if rule.folder is not None:
        if not path.is_dir():
            raise MetadataError(
                path, f"is a file, but this card reads its metadata from the image folder ({_folder_layout(rule)})",
                "Pass the folder that holds the images with --metadata",
            )
        return read_folder(path, rule)
    if rule.xml is not None and (path.is_dir() or path.suffix.lower() == ".xml" or _is_xml_archive(path)):
        return read_xml(path, rule.xml)
    if path.is_dir():
        raise MetadataError(
            path, f"is a folder, but this card's split rule reads a file ({', '.join(rule.metadata)})",
            "Pass the metadata file itself with --metadata" + (f" ({rule.metadata_help})" if rule.metadata_help else ""),
        )
    wanted = rule.needed_columns() | {d.source for d in rule.derive.values()}
    return read_csv(path, wanted, row_numbers=ROW_NUMBER in wanted)


def _is_xml_archive(path: Path) -> bool:
    """A zip holding .xml files, or a tar archive (gzip-compressed or not)."""
    kind = _kind(path)
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            return any(n.lower().endswith(".xml") for n in zf.namelist())
    return kind == "tar" or (kind == "gzip" and tarfile.is_tarfile(path))


def _derive(table: Table, rule: SplitRule) -> None:
    """The rule's derived columns, in the table that has their source column."""
    for name, derive in rule.derive.items():
        if derive.source not in table.columns or name in table.columns:
            continue
        pattern = re.compile(derive.regex)
        for row in table.rows:
            m = pattern.search(row.get(derive.source, ""))
            row[name] = (m.group(1) if m.groups() else m.group(0)) if m else ""
        table.columns.append(name)


def _join(tables: list[Table], keys: list[str]) -> Table:
    """Inner join, each table on the first of ``keys`` it has."""
    on = []
    for t in tables:
        key = next((k for k in keys if k in t.columns), None)
        if key is None:
            raise MetadataError(
                t.path, f"has no column {' or '.join(map(repr, keys))} to join the other metadata files on (columns: {shown_columns(t.columns)})",
                "Pass the source's own files, as the card's metadata lists them",
            )
        on.append(key)
    joined = tables[0].rows
    columns = list(tables[0].columns)
    for table, key in zip(tables[1:], on[1:]):
        index: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in table.rows:
            index[row[key]].append(row)
        joined = [{**left, **right} for left in joined for right in index.get(left[on[0]], [])]
        columns += [c for c in table.columns if c not in columns]
    return Table(tables[0].path, columns, joined)


def _split_lists(paths: list[Path], split: ListsSplit) -> tuple[list[Path], dict[str, set[str]]]:
    """Separate the split-list files (by name) from the metadata, and read their listed values."""
    by_key = {file_key(name): split_name for split_name, name in split.files.items()}
    lists: dict[str, set[str]] = {}
    rest = []
    for p in paths:
        split_name = by_key.get(file_key(p))
        if split_name is None:
            rest.append(p)
            continue
        table = read_csv(p, {split.column})
        if split.column not in table.columns:
            raise MetadataError(p, f"has no column {split.column!r} (columns: {shown_columns(table.columns)})", f"Pass the source's own {p.name}")
        lists[split_name] = {row[split.column] for row in table.rows}
    missing = [name for s, name in split.files.items() if s not in lists]
    if missing:
        raise MetadataError(None, f"the split lists {', '.join(missing)} were not given", "Pass every split list of the source with --metadata, beside its metadata file")
    return rest, lists


def load_metadata(paths: Sequence[str | os.PathLike], rule: SplitRule) -> SourceRows:
    """The source rows: each metadata file (or folder) read, derived columns added, then joined or concatenated."""
    files = [Path(p) for p in paths]
    if not files:
        raise MetadataError(None, "none given", f"Pass the source's file(s) with --metadata ({', '.join(rule.metadata)})")
    lists: dict[str, set[str]] = {}
    if isinstance(rule.split, ListsSplit):
        files, lists = _split_lists(files, rule.split)
        if not files:
            raise MetadataError(None, "only split lists were given", f"Pass the metadata file too ({', '.join(rule.metadata)})")
    tables = [_read_one(p, rule) for p in files]
    for t in tables:
        _derive(t, rule)
    if len(tables) == 1:
        table = tables[0]
    elif rule.join:
        table = _join(tables, rule.join)
    else:
        columns = list(dict.fromkeys(c for t in tables for c in t.columns))
        table = Table(tables[0].path, columns, [row for t in tables for row in t.rows])
    return SourceRows(table.rows, table.columns, files, lists)


def check_columns(rule: SplitRule, source: SourceRows, card_name: str) -> None:
    """Every column the rule reads is in the metadata; the error lists the missing and the found ones."""
    available = set(source.columns)  # a derived column is there only where its source column was
    lab = rule.label
    needed = rule.path_columns() | set(rule.filters) | set(rule.keep) | {t.source for t in rule.truth.values()}
    if rule.rows_by:
        needed.add(rule.rows_by)
    missing = sorted(needed - available)
    alternatives = [list(lab.column)] if hasattr(lab, "column") else [[c] for c in lab.one_hot]
    alternatives += [rule.patient] if rule.patient else []
    split_column = getattr(rule.split, "column", None)
    if split_column and not isinstance(rule.split, ListsSplit):
        alternatives.append([split_column])
    if isinstance(rule.split, ListsSplit):
        alternatives.append([rule.split.key])
    group = rule.group_rule()
    if group:
        alternatives.append(list(group.column))
    if getattr(lab, "readers", None):
        alternatives.append([lab.readers.column])
    missing += [" or ".join(cols) for cols in alternatives if cols and not set(cols) & available]
    missing = list(dict.fromkeys(  # each once, a derived one with the column it is made from
        f"{m} (or {rule.derive[m].source}, which it is read from)" if m in rule.derive else m for m in missing))
    if missing:
        names = ", ".join(str(p) for p in source.files)
        raise MetadataError(
            source.files[0] if len(source.files) == 1 else None,
            f"lacks the column(s) {_bounded(missing)} that card {card_name!r} needs (columns found: {shown_columns(source.columns)})"
            + header_note([str(c) for c in source.columns], missing),
            f"Pass the source's own file(s): {', '.join(rule.metadata)}" + (f" ({rule.metadata_help})" if rule.metadata_help else "")
            + ("" if len(source.files) == 1 else f"; given: {names}"),
        )
