"""Manifests: the CSV that lists a dataset's images (``path,label,split[,group,...]``) and its checks.

Reading a manifest never crashes halfway through a run: every problem (missing files, unknown
labels, unknown split names, empty splits, duplicate paths, a class with no training image) is
collected into a :class:`ManifestReport` and reported together. With ``strict=True`` any problem
raises :class:`ManifestError` (of :mod:`cbm.errors`); otherwise the unusable rows are dropped with
one warning. Two problems always raise: one file in two splits (paths are normalised first, so
``./1.png``, ``a/../1.png`` and ``<root>/1.png`` are one file), which leaks test images into
training, and a path outside the image root, unless the card says ``allow_outside_root: true``.
Within one split a repeated file is dropped (it would count twice), like other bad rows; one with a
second label is its own problem (the first label is kept). Labels match the card's classes, and
paths their files, in either Unicode form (composed or decomposed accents), and a quoted cell may
hold a line break. A path written with Windows separators (``sub\\a.png``) that names a file once
written with '/' is its own problem, with that fix.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbm.data._manifest_csv import read_manifest_csv, salted_patient_key, write_manifest
from cbm.data._manifest_files import existing_rows, in_existing_form, note_duplicate
from cbm.data._truth import ACCEPTED_TRUTH, bad_truth_columns, check_truth_header
from cbm.errors import ManifestError, quote, quote_path

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

    kind: str  # missing_file | unknown_label | unknown_split | empty_split | duplicate_path | duplicate_across_splits
    #            | outside_root | bad_path | no_training_image | short_class | empty_field | windows_separator
    #            | relative_to_manifest | confounder_group | confounder_association | unreadable_image (cbm validate)
    message: str
    lines: tuple[int, ...] = ()


FEW_TRAIN = 10
"""Fewer training images of a class than this get a note (``cbm validate``) and a warning (fitting)."""

FEW_VAL = 5
"""Fewer validation images of a class than this get a note and a warning too."""


def few_reason(counts: Mapping[str, int]) -> str:
    """Why a class's images per split (:meth:`ManifestReport.few_images`) are few, naming only the
    splits that are short."""
    why = []
    if 0 < counts.get("train", 0) < FEW_TRAIN:
        why.append(f"the head can hardly learn a class from under {FEW_TRAIN} training images")
    if 0 < counts.get("val", 0) < FEW_VAL:
        why.append(f"validation can hardly judge it on under {FEW_VAL} images")
    return ", and ".join(why)


@dataclass
class ManifestReport:
    """Every problem found in a manifest, reported together."""

    path: Path
    n_rows: int
    problems: list[ManifestProblem] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> images
    written_splits: list[str] = field(default_factory=list)  # the split names the CSV's rows hold, usable or not
    # DICOM Modality -> (line, path as written) of its files, where `cbm validate` read the images' headers
    dicom_modalities: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    # each row no split holds for a problem of its own: {line, split, path, reason} (a run's skipped_files.json)
    left_out: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def few_images(self) -> dict[str, dict[str, int]]:
        """Classes with fewer than :data:`FEW_TRAIN` training or :data:`FEW_VAL` validation images (but
        some): class -> images per split. Not a problem of the manifest, a warning: the head can hardly
        learn such a class, and validation can hardly tell whether it did."""
        train, val = self.counts.get("train", {}), self.counts.get("val", {})
        few = [c for c in train if 0 < train[c] < FEW_TRAIN or 0 < val.get(c, 0) < FEW_VAL]
        return {c: {s: by.get(c, 0) for s, by in self.counts.items()} for c in few}

    def classes_without_val(self) -> list[str]:
        """Classes with no validation image where val holds some: not a problem of the rows, but a run
        and ``cbm.fit`` refuse the manifest (the head is chosen on val), so ``cbm validate`` fails it."""
        return [c for c, n in self.counts.get("val", {}).items() if not n]

    def summary(self) -> str:
        """Human-readable report: counts per split and class, then each problem."""
        lines = [f"manifest {self.path}: {self.n_rows} rows"]
        for split, by_label in self.counts.items():
            total = sum(by_label.values())
            parts = ", ".join(f"{label} {n}" for label, n in by_label.items())
            lines.append(f"  {split}: {total} images ({parts})")
        unseen = self.classes_without_val()
        if unseen:  # not a problem of the rows, but cbm run and cbm.fit refuse it
            lines.append(f"  note: no validation image of {', '.join(unseen)}: the head is chosen on val, so a run "
                         "refuses this card until val holds every class (`cbm make-splits` splits each class)")
        untested = [c for c, n in self.counts.get("test", {}).items() if not n]
        if untested:  # a run goes on, and its test figures average over the classes test holds
            lines.append(f"  note: no test image of {', '.join(untested)}: a run measures nothing of it on test (the "
                         "class averages leave it out; with one class left, test AUROC is not measured)")
        for c, n in self.few_images().items():
            lines.append(f"  note: few images of {c} ({', '.join(f'{s} {k}' for s, k in n.items())}): {few_reason(n)}; "
                         "add images of it, or merge it into another class")
        if self.ok and unseen:
            lines.append("  no problems found in the rows, but a run refuses this manifest (the note above)")
        elif self.ok:
            lines.append("  no problems found in the rows")
        else:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines.extend(f"  - {p.message}" for p in self.problems)
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """Raise :class:`ManifestError` (with this report) if there is any problem."""
        if self.problems:
            shown = "; ".join(p.message for p in self.problems)
            raise ManifestError(self.path, f"has {len(self.problems)} problem(s): {shown}",
                                "Fix or remove the rows named (`cbm validate CARD` lists every problem)", report=self)


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
        """Absolute path of a row's image (in the Unicode form, composed or decomposed, that names a
        file where only that one does, as a checked manifest's rows already are)."""
        row = self.rows[row] if isinstance(row, int) else row
        p = Path(row.path)
        if not row.path.isascii():  # settled once per path: a dataset asks for every image every epoch
            forms = self.__dict__.setdefault("_forms", {})
            if row.path not in forms:
                forms[row.path] = in_existing_form(row, self.image_root).path
            p = Path(forms[row.path])
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
    allow_outside_root: bool = False,
    min_per_class: int | Mapping[str, int] | None = None,
    truth_columns: Sequence[str] = (),
    needed_splits: Sequence[str] = REQUIRED_SPLITS,
    confounder: tuple[str, Mapping[str, str], Mapping[str, str]] | None = None,
) -> Manifest:
    """Read and check a manifest CSV (``needed_splits``: those whose absence is a problem; a manifest
    of cases to explain needs none).

    ``min_per_class`` is the card's promise (its split rule's ``min_per_class``: one number, or one per
    split): a class with fewer usable images in a split is a problem (``short_class``).

    ``truth_columns``: the columns the card's ``concept_truth`` names, each in the header and holding
    truth values (``parse_truth``) in every row. ``root_hint`` is added to the message about missing
    image files (the card says there that the variable naming its image folder is not set).
    ``confounder``: a confounded card's ``(column, id_groups, ood_groups)``, checked against the
    rows (:mod:`cbm.data._confounder`).

    Paths are compared after normalisation (the module docstring; with ``check_files`` two names of
    one file, a link, are one file too). A ``patient_key`` column (``cbm make-splits``) keeps each
    patient in one split. A path that leaves the image root is refused unless ``allow_outside_root``.

    Raises:
        FileNotFoundError: no manifest file, or no image folder (with ``check_files``).
        ManifestError: the file is not a CSV with ``path``, ``label`` and split columns (``report``
            is None); the same file in two splits (a leak between train and test) or a path
            outside the image root, always; any other row problem with ``strict=True``. Its
            ``report`` lists every problem (a bad truth cell and a patient in two splits always
            raise too). Without ``strict``, rows with an unknown label or
            split, a file listed again within its split, a missing file or an unusable path are
            dropped with one warning, and the returned Manifest carries the full ``report``.
    """
    path = Path(path)
    image_root = Path(image_root)
    root = _normal(os.path.abspath(image_root))
    header, records = read_manifest_csv(path, required=("path", "label", split_column), group_column=group_column)
    truth_columns = check_truth_header(path, header, truth_columns)
    classes = list(class_names)
    found = _Problems()
    rows = _usable_rows(records, found, classes, header, split_column, group_column, truth_columns, root,
                        allow_outside_root)

    listed = rows  # every usable row, its image found or not: what the confounder check reads
    if check_files and rows:
        rows = existing_rows(rows, image_root, path, found)
    _note_patients_across_splits(found, rows)

    manifest = Manifest(rows, class_names=classes, image_root=image_root, path=path)
    described = found.described(classes, image_root, root_hint)
    report = ManifestReport(path, len(records), found.messages(described), manifest.counts(),
                            sorted({rec[split_column].strip() for _, rec in records}))
    _whole_file_problems(report, classes, min_per_class, needed_splits)
    if confounder is not None:
        from cbm.data._confounder import confounder_problems

        report.problems += [ManifestProblem(kind, message)
                            for kind, message in confounder_problems(listed, header, group_column, *confounder)]
    report.left_out = found.left_out(records, {r.line for r in rows}, split_column, described)
    manifest.report = report
    fatal = [p for p in report.problems if p.kind in FATAL_PROBLEMS]
    if strict or fatal:
        report.raise_if_problems()
    elif report.problems:
        log.warning("%s", report.summary())  # with its notes (few images of a class)
    elif "train" in needed_splits:  # read to fit a head: say what the summary would note
        for c, n in report.few_images().items():
            log.warning("manifest %s: few images of class %r (%s): %s; add images of it, or merge it into another class",
                        path, c, ", ".join(f"{s} {k}" for s, k in n.items()), few_reason(n))
    return manifest


def _usable_rows(records: list[tuple[int, dict[str, str]]], found: _Problems, classes: list[str], header: list[str],
                 split_column: str, group_column: str | None, truth_columns: Sequence[str], root: str,
                 allow_outside_root: bool) -> list[ManifestRow]:
    """The rows without a problem of their own (each problem noted in ``found``), in file order."""
    # labels compare in one Unicode form: macOS tools write "nævus" decomposed, a card typed by hand composed
    index_of = {unicodedata.normalize("NFC", name): i for i, name in enumerate(classes)}
    rows: list[ManifestRow] = []
    seen: dict[str, tuple[int, str, str]] = {}  # normalised path -> (line, split, label) of its first usable row
    extra_columns = [c for c in header if c not in ("path", "label", split_column, group_column)]
    for line, rec in records:
        p, label, split = rec["path"].strip(), rec["label"].strip(), rec[split_column].strip()
        if not p or not label or not split:
            empty = [c for c, v in (("path", p), ("label", label), (split_column, split)) if not v]
            found.note("empty_field", line, f"line {line} ({', '.join(empty)})")
            continue
        if unicodedata.normalize("NFC", label) not in index_of:
            spelt = next((c for c in index_of if c.casefold() == unicodedata.normalize("NFC", label).casefold()), None)
            hint = f": the class is {quote(spelt, 80)}, and labels are case-sensitive" if spelt else ""
            found.note("unknown_label", line, f"{quote(label, 80)} (line {line}{hint})")
        if split not in KNOWN_SPLITS:
            meant = _meant_split(split)
            found.note("unknown_split", line, f"{quote(split, 80)} (line {line}{f': did you mean {meant!r}?' if meant else ''})")
        for column in bad_truth_columns(rec, truth_columns):
            found.note("bad_truth", line, f"{quote(rec.get(column, ''), 40)} in {quote(column, 60)} (line {line})")
        key = _normal(os.path.join(root, p))
        # an absolute path through the image folder's link target names a file inside it too
        if not allow_outside_root and not _inside(key, root) and not _inside(os.path.realpath(key), os.path.realpath(root)):
            found.note("outside_root", line, f"{quote_path(p, 80)} (line {line})")
        note_duplicate(found, seen, key, quote_path(p, 80)[1:-1], line, split, unicodedata.normalize("NFC", label),
                        usable=line not in found.bad_lines)
        if line in found.bad_lines:
            continue
        group = rec.get(group_column, "").strip() if group_column else None
        k = index_of[unicodedata.normalize("NFC", label)]
        rows.append(ManifestRow(p, classes[k], k, split, group or None, {c: rec.get(c, "") for c in extra_columns}, line))
    return rows


FATAL_PROBLEMS = ("duplicate_across_splits", "patient_across_splits", "outside_root", "bad_truth")
"""Row problems that raise even without ``strict``: they make every figure of a run wrong."""


def _meant_split(split: str) -> str | None:
    """The split name an unknown one most likely means: ``Train`` train, ``validation`` or ``dev`` val."""
    low = split.lower()
    if low in KNOWN_SPLITS:
        return low
    return next((s for s, starts in (("val", ("val", "dev")), ("train", ("train",)), ("test", ("test",)))
                 if low.startswith(starts)), None)


def _normal(p: str) -> str:
    """``p`` normalised: ``.`` and ``..`` resolved, repeated separators collapsed (``//x`` is ``/x``)."""
    p = os.path.normpath(p)
    return "/" + p.lstrip("/") if p.startswith("//") else p


def _inside(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip(os.sep) + os.sep)


class _Problems:
    """Row problems by kind: the lines, the first few examples, the lines made unusable."""

    def __init__(self) -> None:
        self.lines: dict[str, list[int]] = defaultdict(list)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.bad_lines: set[int] = set()

    def note(self, kind: str, line: int, example: str) -> None:
        self.lines[kind].append(line)
        if len(self.examples[kind]) < _MAX_LISTED:
            self.examples[kind].append(example)
        self.bad_lines.add(line)

    def messages(self, described: dict[str, str]) -> list[ManifestProblem]:
        """One problem per kind noted (``described``: :meth:`described`), with its count and first examples."""
        out = []
        for kind, text in described.items():
            if self.lines[kind]:
                n, shown = len(self.lines[kind]), self.examples[kind]
                more = f", and {n - len(shown)} more" if n > len(shown) else ""
                out.append(ManifestProblem(kind, f"{n} {text}: {'; '.join(shown)}{more}", tuple(self.lines[kind])))
        return out

    def left_out(self, records: list[tuple[int, dict[str, str]]], kept: set[int], split_column: str,
                 described: dict[str, str]) -> list[dict[str, Any]]:
        """Each row with a problem that no split holds: its line, split and path as written, and why."""
        why: dict[int, list[str]] = defaultdict(list)
        for kind, text in described.items():
            reason = "the row " + text.removeprefix("rows ")  # one string per kind, shared by its rows
            for line in self.lines[kind]:
                why[line].append(reason)
        return [{"line": line, "split": rec.get(split_column, "").strip(), "path": rec.get("path", "").strip(),
                 "reason": "; ".join(why[line])} for line, rec in records if line in why and line not in kept]

    @staticmethod
    def described(classes: list[str], image_root: Path, root_hint: str | None) -> dict[str, str]:
        """Each row problem's kind, in words."""
        return {
            "empty_field": "rows with an empty path, label or split",
            "unknown_label": f"rows with a label that is not a class of the card (classes: {quote(', '.join(classes))[1:-1]})",
            "unknown_split": f"rows with an unknown split name (allowed: {', '.join(KNOWN_SPLITS)})",
            "outside_root": f"rows whose path leaves the image folder {image_root} (paths are relative to it, not "
                            "to the manifest; a card that means it says allow_outside_root: true)",
            "duplicate_across_splits": "rows listing a file already listed in another split, a leak between "
                                       "splits (keep each image in one split)",
            "conflicting_label": "rows giving a file already listed in the same split another label (the first "
                                 "row's is kept: correct the wrong one)",
            "patient_across_splits": "rows of a patient already listed in another split, a leak between splits "
                                     "(keep each patient's images in one split: `cbm make-splits` does)",
            "duplicate_path": "rows repeating a file already listed in the same split",
            "bad_truth": f"rows with a concept truth cell that is none of {ACCEPTED_TRUTH} (correct those cells)",
            "bad_path": "rows whose path the file system refuses",
            "windows_separator": "rows whose path separates folders with '\\' (a Windows path), which names no file "
                                 "here: write '/' between folders",
            "relative_to_manifest": f"rows whose path names a file from the manifest's folder, not from the image folder "
                                    f"{image_root} that paths are relative to: write them from there, or set the card's image_root",
            "missing_file": f"rows whose image file does not exist under {image_root}" + (f" ({root_hint})" if root_hint else ""),
        }


def _note_patients_across_splits(found: _Problems, rows: list[ManifestRow]) -> None:
    """A ``patient_key`` in two splits: the patient's images would teach and test the model at once."""
    first: dict[str, ManifestRow] = {}
    for r in rows:
        key = r.extra.get("patient_key", "").strip()
        if key and first.setdefault(key, r).split != r.split:
            f = first[key]
            found.note("patient_across_splits", r.line, f"patient_key {quote(key, 40)} ({f.split} on line {f.line}, "
                                                        f"{r.split} on line {r.line})")


def _whole_file_problems(report: ManifestReport, classes: list[str], min_per_class: int | Mapping[str, int] | None = None,
                         needed_splits: Sequence[str] = REQUIRED_SPLITS) -> None:
    """Splits without images, classes without a training image, classes short of the card's promise."""
    counts = report.counts
    for split, per_class in sorted(counts.items()):
        least = int(min_per_class.get(split, 0)) if isinstance(min_per_class, Mapping) else int(min_per_class or 0)
        short = [f"{c} {per_class.get(c, 0)}" for c in classes if per_class.get(c, 0) < least]
        if short:
            report.problems.append(ManifestProblem(
                "short_class", f"split {split!r} holds fewer than the card's promised {least} images of "
                f"{quote(', '.join(short))[1:-1]} (make_splits.min_per_class)"))
    for split in needed_splits:
        if not counts.get(split):
            report.problems.append(ManifestProblem("empty_split", f"split {split!r} has no usable images"))
    train = counts.get("train", {})
    if train and "train" in needed_splits:
        empty = [c for c in classes if not train.get(c)]
        if empty:
            report.problems.append(ManifestProblem(
                "no_training_image", f"class(es) with no training image: {quote(', '.join(empty))[1:-1]} (the head cannot learn them)"))
