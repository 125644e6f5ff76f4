"""Manifests: the CSV that lists a dataset's images (``path,label,split[,group,...]``) and its checks.

Reading a manifest never crashes halfway through a run: every problem (missing files, unknown
labels, unknown split names, empty splits, duplicate paths, a class with no training image) is
collected into a :class:`ManifestReport` and reported together. With ``strict=True`` any problem
raises :class:`ManifestError`; otherwise the unusable rows are dropped with one warning.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ManifestRow",
    "Manifest",
    "ManifestProblem",
    "ManifestReport",
    "ManifestError",
    "read_manifest",
    "write_manifest",
    "salted_patient_key",
    "KNOWN_SPLITS",
    "REQUIRED_SPLITS",
]

log = logging.getLogger(__name__)

KNOWN_SPLITS = ("train", "val", "test", "test_id")  # test_id: a held-out in-domain test (confounded cards)
REQUIRED_SPLITS = ("train", "val", "test")
_MAX_LISTED = 5  # examples listed per problem in a report


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest.

    Attributes:
        path: the path as written in the CSV, relative to the image root (or absolute).
        label: the class name.
        label_index: position of the label in the card's class list.
        split: train | val | test | test_id.
        group: the value of the card's group column, if it has one.
        extra: every other column of the row (non-PHI metadata such as age or site).
        line: the CSV line number, for messages.
    """

    path: str
    label: str
    label_index: int
    split: str
    group: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class ManifestProblem:
    """One kind of problem with the rows it affects."""

    kind: str  # missing_file | unknown_label | unknown_split | empty_split | duplicate_path | no_training_image | empty_field
    message: str
    lines: tuple[int, ...] = ()


@dataclass
class ManifestReport:
    """Every problem found in a manifest, reported together."""

    path: Path
    n_rows: int
    problems: list[ManifestProblem] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> images

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Human-readable report: counts per split and class, then each problem."""
        lines = [f"manifest {self.path}: {self.n_rows} rows"]
        for split, by_label in self.counts.items():
            total = sum(by_label.values())
            parts = ", ".join(f"{label} {n}" for label, n in by_label.items())
            lines.append(f"  {split}: {total} images ({parts})")
        if self.ok:
            lines.append("  no problems found")
        else:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines.extend(f"  - {p.message}" for p in self.problems)
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ManifestError(self)


class ManifestError(ValueError):
    """A manifest with problems under ``strict=True``; ``.report`` holds all of them."""

    def __init__(self, report: ManifestReport) -> None:
        self.report = report
        super().__init__(report.summary())


class Manifest:
    """The rows of a manifest, with the image root they are relative to.

    ``manifest.split("train")`` is a Manifest with only those rows (in file order);
    ``len(manifest)``, iteration and indexing go over rows.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        *,
        class_names: Sequence[str],
        image_root: Path,
        path: Path | None = None,
        report: ManifestReport | None = None,
    ) -> None:
        self.rows = list(rows)
        self.class_names = list(class_names)
        self.image_root = Path(image_root)
        self.path = path
        self.report = report

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> ManifestRow:
        return self.rows[index]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={n}" for s, n in Counter(r.split for r in self.rows).items())
        return f"Manifest({len(self.rows)} rows: {counts or 'empty'}; root={self.image_root})"

    def split(self, name: str) -> Manifest:
        """The rows of one split (empty Manifest if the split has none)."""
        return Manifest(
            [r for r in self.rows if r.split == name], class_names=self.class_names, image_root=self.image_root, path=self.path
        )

    def split_names(self) -> list[str]:
        """Splits present, known ones first in train, val, test, test_id order."""
        present = {r.split for r in self.rows}
        return [s for s in KNOWN_SPLITS if s in present] + sorted(present.difference(KNOWN_SPLITS))

    def file(self, row: ManifestRow | int) -> Path:
        """Absolute path of a row's image."""
        row = self.rows[row] if isinstance(row, int) else row
        p = Path(row.path)
        return p if p.is_absolute() else self.image_root / p

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.rows]

    @property
    def labels(self) -> list[int]:
        return [r.label_index for r in self.rows]

    @property
    def groups(self) -> list[str | None]:
        return [r.group for r in self.rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class -> number of images (classes in card order)."""
        out: dict[str, dict[str, int]] = {}
        for split in self.split_names():
            c = Counter(r.label for r in self.rows if r.split == split)
            out[split] = {name: c.get(name, 0) for name in self.class_names}
        return out


def read_manifest(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str],
    image_root: str | os.PathLike,
    split_column: str = "split",
    group_column: str | None = None,
    check_files: bool = True,
    strict: bool = False,
    root_hint: str | None = None,
) -> Manifest:
    """Read and check a manifest CSV.

    ``root_hint`` is added to the message about missing image files (the card uses it to say that
    the environment variable naming its image folder is not set).

    Structural errors (no file, not a CSV, missing ``path``/``label``/split columns) always raise
    ``FileNotFoundError`` / ``ValueError``. Row problems are collected (see the module docstring):
    ``strict=True`` raises :class:`ManifestError` listing all of them; otherwise rows with an
    unknown label or split, a repeated path or a missing file are dropped with one warning, and
    the returned Manifest carries the full ``report``.
    """
    path = Path(path)
    image_root = Path(image_root)
    header, records = _read_csv(path, required=("path", "label", split_column), group_column=group_column)
    classes = list(class_names)
    index_of = {name: i for i, name in enumerate(classes)}
    problems: dict[str, list[int]] = defaultdict(list)
    examples: dict[str, list[str]] = defaultdict(list)
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    bad_lines: set[int] = set()

    def note(kind: str, line: int, example: str) -> None:
        problems[kind].append(line)
        if len(examples[kind]) < _MAX_LISTED:
            examples[kind].append(example)
        bad_lines.add(line)

    extra_columns = [c for c in header if c not in ("path", "label", split_column, group_column)]
    for line, rec in records:
        p, label, split = rec["path"].strip(), rec["label"].strip(), rec[split_column].strip()
        if not p or not label or not split:
            empty = [c for c, v in (("path", p), ("label", label), (split_column, split)) if not v]
            note("empty_field", line, f"line {line} ({', '.join(empty)})")
            continue
        if label not in index_of:
            note("unknown_label", line, f"{label!r} (line {line})")
        if split not in KNOWN_SPLITS:
            note("unknown_split", line, f"{split!r} (line {line})")
        if p in seen:
            note("duplicate_path", line, f"{p} (lines {seen[p]} and {line})")
        else:
            seen[p] = line
        if line in bad_lines:
            continue
        group = rec.get(group_column, "").strip() if group_column else None
        extra = {c: rec.get(c, "") for c in extra_columns}
        rows.append(ManifestRow(p, label, index_of[label], split, group or None, extra, line))

    if check_files and rows:
        if not image_root.is_dir() and not all(Path(r.path).is_absolute() for r in rows):
            raise FileNotFoundError(
                f"image folder {image_root} (for manifest {path}) does not exist: get the images and put them "
                f"there, or point the card's image_root / image_root_env variable at them"
            )
        kept = []
        for r in rows:
            f = Path(r.path) if Path(r.path).is_absolute() else image_root / r.path
            if f.is_file():
                kept.append(r)
            else:
                note("missing_file", r.line, f"{f} (line {r.line})")
        rows = kept

    manifest = Manifest(rows, class_names=classes, image_root=image_root, path=path)
    counts = manifest.counts()
    messages: list[ManifestProblem] = []
    described = {
        "empty_field": "rows with an empty path, label or split",
        "unknown_label": f"rows with a label that is not a class of the card (classes: {', '.join(classes)})",
        "unknown_split": f"rows with an unknown split name (allowed: {', '.join(KNOWN_SPLITS)})",
        "duplicate_path": "rows repeating a path already listed",
        "missing_file": f"rows whose image file does not exist under {image_root}" + (f" ({root_hint})" if root_hint else ""),
    }
    for kind, text in described.items():
        if problems[kind]:
            n = len(problems[kind])
            more = f", and {n - len(examples[kind])} more" if n > len(examples[kind]) else ""
            messages.append(ManifestProblem(kind, f"{n} {text}: {'; '.join(examples[kind])}{more}", tuple(problems[kind])))
    for split in REQUIRED_SPLITS:
        if not counts.get(split):
            messages.append(ManifestProblem("empty_split", f"split {split!r} has no usable images"))
    train = counts.get("train", {})
    if train:
        empty = [c for c in classes if not train.get(c)]
        if empty:
            messages.append(
                ManifestProblem("no_training_image", f"class(es) with no training image: {', '.join(empty)} (the head cannot learn them)")
            )
    report = ManifestReport(path, len(records), messages, counts)
    manifest.report = report
    if strict:
        report.raise_if_problems()
    elif messages:
        log.warning("%s", report.summary())
    return manifest


def _read_csv(
    path: Path, *, required: Sequence[str], group_column: str | None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, record)`` pairs of a CSV, with clear errors for a malformed file."""
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {path} is not UTF-8 text ({exc}); save it as a UTF-8 CSV") from None
    if "\x00" in text:
        raise ValueError(f"manifest {path} contains NUL bytes, so it is not a CSV text file; export it again as CSV")
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"manifest {path} is empty; it needs a header line 'path,label,split' and one row per image") from None
    except csv.Error as exc:
        raise ValueError(f"manifest {path} is not a valid CSV ({exc})") from None
    needed = list(required) + ([group_column] if group_column else [])
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"manifest {path} lacks the column(s) {', '.join(missing)} (header: {','.join(header) or '(empty)'}); "
            f"a manifest needs the columns path,label,{required[2]}"
            + (f" and the card's group column {group_column}" if group_column else "")
        )
    if len(set(header)) != len(header):
        dupes = sorted(c for c, n in Counter(header).items() if n > 1)
        raise ValueError(f"manifest {path} repeats the column(s) {', '.join(dupes)} in its header; keep one of each")
    records: list[tuple[int, dict[str, str]]] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"manifest {path} line {line} has {len(fields)} field(s) but the header has {len(header)}; "
                    f"quote values that contain commas (\"a, b\") and check for stray separators"
                )
            records.append((line, dict(zip(header, fields))))
    except csv.Error as exc:
        raise ValueError(f"manifest {path} is not a valid CSV at line {reader.line_num} ({exc}); fix the quoting there") from None
    return header, records


def salted_patient_key(patient: str, salt: str) -> str:
    """A manifest's ``patient_key`` of a patient ID: a salted SHA-256 (16 hex digits), ``""`` for no ID.

    The same patient gets the same key within one salt; the ID itself is never written.
    """
    return hashlib.sha256(f"{salt}:{patient}".encode()).hexdigest()[:16] if patient else ""


def write_manifest(path: str | os.PathLike, rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> Path:
    """Atomically write manifest rows (dicts) as CSV; ``path,label,split`` come first."""
    import io

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
