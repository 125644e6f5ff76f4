"""``cbm make-splits``: build a card's manifest from the source's own metadata, following the
machine-readable split rule in the card's ``make_splits`` field.

The rule, field by field (``[]`` = optional)::

    make_splits:
      metadata: HAM10000_metadata.csv     # the file(s) the source ships, given with --metadata
      [metadata_help]: where that file comes from
      [folder]: {pattern: REGEX, [exclude]: REGEX, [unique_by]: [names]}
                                          # --metadata is an image folder: the named groups of
                                          # PATTERN (matched on each file's relative path) are columns
      [join]: uid                         # several metadata files: inner join on this column
                                          # (without join they are concatenated)
      [filter]: {column: [allowed values] | {regex: R} | {not_regex: R}}
      [derive]: {new_column: {from: column, regex: R}}      # first group (or whole match) of R
      [rows_by]: image_id                 # several rows per image: their label values are merged
      path: "{image_id}.jpg"              # the manifest path, from columns
      label:                              # either a column ...
        column: dx | [first, present, column]
        [separator]: "|"                  # a multi-valued cell
        map: {source value: class name}   # rows whose value is not mapped are dropped
        [others]: reject | ignore         # rows with unmapped values besides one mapped one
                                          # (reject: keep single-finding images only)
      label:                              # ... or one-hot columns
        one_hot: {column: class name}
        [positive]: ["1", "1.0"]
        [exclusive_with]: [columns]       # rows positive in any of these are dropped
      [patient]: lesion_id | [columns]    # grouping: no patient/lesion in two splits
      split:
        method: random                    # grouped by patient, stratified by class
        fractions: {train: 0.8, val: 0.1, test: 0.1}
      split:
        method: column                    # the source's own split
        column: split
        map: {train: train, val: val, test: test}
        [val_from_train]: 0.1             # carve val out of train (grouped by patient)
      split:
        method: confounded                # KnoBo's construction for a binary confounded variant
        group: {name: sex, column: sex, map | bins | contains}
        id: {class: group}                # train / val / test_id: each class from one group
        ood: {class: group}               # test: the association reversed
        fractions: {train: 0.8, val: 0.1, test_id: 0.1}   # of the in-domain pool
        [balance]: [val, test_id, test]   # equal class counts (downsampled)
      [max_per_class]: 250                # cap, sampled with the seed before splitting
      [keep]: [age, sex]                  # non-PHI columns copied into the manifest
      [seed]: 0

A group spec maps a source column to group names by exact value (``map: {M: male}``), by
numeric range (``bins: {young: [null, 30], old: [70, 120]}``, inclusive, null = open) or by
substring (``contains: {barcelona: Barcelona}``).

The splits are deterministic for a given seed: rows are sorted by path before any random draw.
The ``patient_key`` column is a salted hash of the patient (or lesion) ID, never the ID; its salt
is random per run unless given (``--salt``), so only with a salt is the whole file reproducible.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import secrets
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SplitSpec", "SplitResult", "parse_split_spec", "make_splits", "load_metadata"]

log = logging.getLogger(__name__)

_SPEC_KEYS = {
    "metadata", "metadata_help", "folder", "join", "filter", "derive", "rows_by", "path", "label",
    "patient", "split", "max_per_class", "keep", "seed",
}
_SPLIT_NAMES = ("train", "val", "test", "test_id")


@dataclass
class SplitSpec:
    """A parsed, checked ``make_splits`` rule (see the module docstring for each field)."""

    metadata: list[str]
    metadata_help: str
    folder: dict[str, Any] | None
    join: str | None
    filters: dict[str, Any]
    derive: dict[str, dict[str, str]]
    rows_by: str | None
    path: str
    label: dict[str, Any]
    patient: list[str]
    split: dict[str, Any]
    max_per_class: int | None
    keep: list[str]
    seed: int


@dataclass
class SplitResult:
    """What ``make_splits`` built: manifest rows, the columns, and why rows were dropped."""

    rows: list[dict[str, str]]
    columns: list[str]
    dropped: Counter = field(default_factory=Counter)
    n_source_rows: int = 0
    out: Path | None = None

    def counts(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for r in self.rows:
            out.setdefault(r["split"], Counter())[r["label"]] += 1
        return {s: out[s] for s in _SPLIT_NAMES if s in out}

    def summary(self) -> str:
        lines = [f"{len(self.rows)} images from {self.n_source_rows} metadata rows"]
        for split, c in self.counts().items():
            lines.append(f"  {split}: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})")
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common()))
        if self.out:
            lines.append(f"  written to {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- parsing
def _fail(where: str, problem: str) -> ValueError:
    return ValueError(f"{where} {problem}")


def _str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (str, int, float)) for v in value):
        return [str(v) for v in value]
    raise _fail(where, f"must be a string or a list of strings, got {value!r}")


def _group_spec(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or "column" not in raw:
        raise _fail(where, f"must be {{name, column, map | bins | contains}}, got {raw!r}")
    kinds = [k for k in ("map", "bins", "contains") if k in raw]
    if len(kinds) != 1:
        raise _fail(where, "needs exactly one of map, bins or contains")
    extra = set(raw) - {"name", "column", "map", "bins", "contains"}
    if extra:
        raise _fail(where, f"has unknown key(s) {sorted(extra)}")
    kind = kinds[0]
    table = raw[kind]
    if not isinstance(table, Mapping) or not table:
        raise _fail(f"{where}.{kind}", f"must be a non-empty mapping, got {table!r}")
    if kind == "bins":
        for name, bounds in table.items():
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(b is None or isinstance(b, (int, float)) for b in bounds)):
                raise _fail(f"{where}.bins.{name}", f"must be [low, high] (numbers or null), got {bounds!r}")
    return {
        "name": str(raw.get("name") or raw["column"]),
        "columns": _str_list(raw["column"], f"{where}.column"),
        "kind": kind,
        "table": {str(k): v for k, v in table.items()},
    }


def parse_split_spec(raw: Any, class_names: Sequence[str]) -> SplitSpec:
    """Check a ``make_splits`` mapping against the card's classes; ``ValueError`` names the bad key."""
    classes = list(class_names)
    if not isinstance(raw, Mapping):
        raise _fail("make_splits", f"must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - _SPEC_KEYS)
    if unknown:
        raise _fail(f"make_splits.{unknown[0]}", f"is not a split-rule key (keys: {', '.join(sorted(_SPEC_KEYS))})")
    for key in ("metadata", "path", "label", "split"):
        if key not in raw:
            raise _fail(f"make_splits.{key}", "is missing")
    if not isinstance(raw["path"], str) or "{" not in raw["path"]:
        raise _fail("make_splits.path", f"must be a template naming columns, like '{{image_id}}.jpg', got {raw['path']!r}")

    label = raw["label"]
    if not isinstance(label, Mapping):
        raise _fail("make_splits.label", f"must be a mapping, got {label!r}")
    if "one_hot" in label:
        targets = label["one_hot"]
        if not isinstance(targets, Mapping) or not targets:
            raise _fail("make_splits.label.one_hot", "must map columns to class names")
        parsed_label = {
            "kind": "one_hot",
            "one_hot": {str(k): str(v) for k, v in targets.items()},
            "positive": [str(v) for v in label.get("positive", ["1", "1.0"])],
            "exclusive_with": _str_list(label["exclusive_with"], "make_splits.label.exclusive_with") if label.get("exclusive_with") else [],
        }
        produced = set(parsed_label["one_hot"].values())
    else:
        if "column" not in label or not isinstance(label.get("map"), Mapping) or not label["map"]:
            raise _fail("make_splits.label", "needs column and map (or one_hot)")
        others = str(label.get("others", "ignore"))
        if others not in ("ignore", "reject"):
            raise _fail("make_splits.label.others", f"must be ignore or reject, got {others!r}")
        parsed_label = {
            "kind": "column",
            "columns": _str_list(label["column"], "make_splits.label.column"),
            "separator": label.get("separator"),
            "map": {str(k): str(v) for k, v in label["map"].items()},
            "others": others,
        }
        produced = set(parsed_label["map"].values())
    strangers = sorted(produced - set(classes))
    if strangers:
        raise _fail("make_splits.label", f"maps to {strangers}, which are not classes of the card ({', '.join(classes)})")
    never = [c for c in classes if c not in produced]
    if never:
        raise _fail("make_splits.label", f"never produces the class(es) {never}; map a source value to each class")

    split = raw["split"]
    if not isinstance(split, Mapping) or split.get("method") not in ("random", "column", "confounded"):
        raise _fail("make_splits.split.method", f"must be random, column or confounded, got {getattr(split, 'get', lambda _: split)('method')!r}")
    method = split["method"]
    parsed_split: dict[str, Any] = {"method": method}
    if method in ("random", "confounded"):
        default = {"train": 0.8, "val": 0.1, "test": 0.1} if method == "random" else {"train": 0.8, "val": 0.1, "test_id": 0.1}
        fractions = split.get("fractions", default)
        allowed = ("train", "val", "test") if method == "random" else ("train", "val", "test_id")
        if not isinstance(fractions, Mapping) or set(fractions) - set(allowed) or "train" not in fractions:
            raise _fail("make_splits.split.fractions", f"must map some of {', '.join(allowed)} (train included) to fractions, got {fractions!r}")
        values = [float(v) for v in fractions.values()]
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise _fail("make_splits.split.fractions", f"must be non-negative and sum to 1, got {dict(fractions)}")
        parsed_split["fractions"] = {k: float(v) for k, v in fractions.items()}
    if method == "column":
        if "column" not in split or not isinstance(split.get("map"), Mapping):
            raise _fail("make_splits.split", "with method column needs column and map {source value: train|val|test}")
        bad = sorted(set(map(str, split["map"].values())) - set(_SPLIT_NAMES))
        if bad:
            raise _fail("make_splits.split.map", f"maps to {bad}; use train, val, test or test_id")
        parsed_split.update(column=str(split["column"]), map={str(k): str(v) for k, v in split["map"].items()})
        parsed_split["val_from_train"] = float(split.get("val_from_train") or 0.0)
    if method == "confounded":
        group = _group_spec(split.get("group"), "make_splits.split.group")
        groups = set(map(str, group["table"].values())) if group["kind"] == "map" else set(group["table"])
        for side in ("id", "ood"):
            mapping = split.get(side)
            if not isinstance(mapping, Mapping) or set(map(str, mapping)) != set(classes):
                raise _fail(f"make_splits.split.{side}", f"must map every class ({', '.join(classes)}) to a group, got {mapping!r}")
            strangers = sorted(set(map(str, mapping.values())) - groups)
            if strangers:
                raise _fail(f"make_splits.split.{side}", f"names group(s) {strangers} that the group spec does not define ({', '.join(sorted(groups))})")
            parsed_split[side] = {str(k): str(v) for k, v in mapping.items()}
        if any(parsed_split["id"][c] == parsed_split["ood"][c] for c in classes):
            raise _fail("make_splits.split", "gives a class the same group in id and ood; the test split must reverse the association")
        parsed_split["group"] = group
        balance = split.get("balance", ["val", "test_id", "test"])
        parsed_split["balance"] = _str_list(balance, "make_splits.split.balance") if balance else []

    folder = raw.get("folder")
    if folder is not None:
        if not isinstance(folder, Mapping) or "pattern" not in folder:
            raise _fail("make_splits.folder", "must be {pattern, [exclude], [unique_by]}")
        try:
            re.compile(folder["pattern"])
            re.compile(folder.get("exclude") or "x")
        except re.error as exc:
            raise _fail("make_splits.folder", f"has a bad regular expression ({exc})") from None
        folder = {"pattern": folder["pattern"], "exclude": folder.get("exclude"), "unique_by": list(folder.get("unique_by") or [])}
    filters = raw.get("filter") or {}
    if not isinstance(filters, Mapping):
        raise _fail("make_splits.filter", f"must map columns to allowed values, got {filters!r}")
    for col, rule in filters.items():
        if not (isinstance(rule, list) or (isinstance(rule, Mapping) and set(rule) <= {"regex", "not_regex"} and rule)):
            raise _fail(f"make_splits.filter.{col}", f"must be a list of values or {{regex: ...}} / {{not_regex: ...}}, got {rule!r}")
    derive = raw.get("derive") or {}
    for name, rule in derive.items():
        if not isinstance(rule, Mapping) or "from" not in rule or "regex" not in rule:
            raise _fail(f"make_splits.derive.{name}", "must be {from: column, regex: R}")
    max_per_class = raw.get("max_per_class")
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise _fail("make_splits.max_per_class", f"must be a positive integer, got {max_per_class!r}")
    return SplitSpec(
        metadata=_str_list(raw["metadata"], "make_splits.metadata"),
        metadata_help=str(raw.get("metadata_help") or ""),
        folder=folder,
        join=str(raw["join"]) if raw.get("join") else None,
        filters=dict(filters),
        derive={str(k): {"from": str(v["from"]), "regex": str(v["regex"])} for k, v in derive.items()},
        rows_by=str(raw["rows_by"]) if raw.get("rows_by") else None,
        path=raw["path"],
        label=parsed_label,
        patient=_str_list(raw["patient"], "make_splits.patient") if raw.get("patient") else [],
        split=parsed_split,
        max_per_class=max_per_class,
        keep=_str_list(raw["keep"], "make_splits.keep") if raw.get("keep") else [],
        seed=int(raw.get("seed", 0)),
    )


# ---------------------------------------------------------------------------- metadata
def _read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV metadata file (UTF-8, header line), with errors naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    if "\x00" in text:
        raise ValueError(f"metadata {path} contains NUL bytes, so it is not a CSV file; pass the source's metadata CSV")
    reader = csv.DictReader(text.splitlines())
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"metadata {path} is empty; pass the source's metadata CSV")
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise ValueError(
                    f"metadata {path} line {reader.line_num} has "
                    f"{sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])} fields "
                    f"but the header has {len(header)}; the file is malformed or not the source's metadata CSV"
                )
            rows.append({k.strip(): (v or "").strip() for k, v in row.items()})
    except csv.Error as exc:
        raise ValueError(f"metadata {path} is not a valid CSV at line {reader.line_num} ({exc})") from None
    return rows


def _folder_table(root: Path, folder: dict[str, Any]) -> list[dict[str, str]]:
    """One row per file under ``root`` whose relative path matches the pattern (named groups = columns)."""
    pattern = re.compile(folder["pattern"])
    exclude = re.compile(folder["exclude"]) if folder.get("exclude") else None
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
            if folder.get("unique_by"):
                key = tuple(row.get(k, "") for k in folder["unique_by"])
                if key in seen:
                    continue
                seen.add(key)
            rows.append(row)
    return rows


def load_metadata(paths: Sequence[str | os.PathLike], spec: SplitSpec) -> list[dict[str, str]]:
    """The source rows: each metadata file (or image folder) read, then joined or concatenated."""
    if not paths:
        raise ValueError(f"no metadata given; pass the source's file(s) with --metadata ({', '.join(spec.metadata)})")
    tables = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"metadata not found: {p} (expected {', '.join(spec.metadata)}{'; ' + spec.metadata_help if spec.metadata_help else ''})")
        if p.is_dir():
            if not spec.folder:
                raise ValueError(f"metadata {p} is a folder but this card's split rule reads a CSV ({', '.join(spec.metadata)})")
            table = _folder_table(p, spec.folder)
            if not table:
                raise ValueError(f"no file under {p} matches the card's folder pattern {spec.folder['pattern']!r}; is it the right folder?")
        else:
            table = _read_table(p)
        tables.append((p, table))
    if len(tables) == 1:
        return tables[0][1]
    if spec.join:
        for p, table in tables:
            if table and spec.join not in table[0]:
                raise ValueError(f"metadata {p} has no column {spec.join!r} to join on (columns: {', '.join(table[0])})")
        joined = tables[0][1]
        for _, table in tables[1:]:
            index: dict[str, list[dict[str, str]]] = defaultdict(list)
            for row in table:
                index[row[spec.join]].append(row)
            joined = [{**left, **right} for left in joined for right in index.get(left[spec.join], [])]
        return joined
    return [row for _, table in tables for row in table]


# ---------------------------------------------------------------------------- building
def _passes(row: dict[str, str], column: str, rule: Any) -> bool:
    value = row.get(column, "")
    if isinstance(rule, list):
        return value in {str(v) for v in rule}
    if "regex" in rule and not re.search(rule["regex"], value):
        return False
    return not ("not_regex" in rule and re.search(rule["not_regex"], value))


def _first_present(row: Mapping[str, Any], columns: list[str]) -> str:
    for c in columns:
        v = row.get(c)
        if v not in (None, ""):
            return str(v)
    return ""


def _label(row: dict[str, Any], spec: SplitSpec) -> tuple[str | None, str]:
    """(class, "") or (None, why the row is dropped)."""
    lab = spec.label
    if lab["kind"] == "one_hot":
        hits = [cls for col, cls in lab["one_hot"].items() if str(row.get(col, "")).strip() in lab["positive"]]
        if any(str(row.get(col, "")).strip() in lab["positive"] for col in lab["exclusive_with"]):
            return None, "rows with another finding"
        if len(set(hits)) != 1:
            return None, "rows without exactly one class" if hits else "rows with no class"
        return hits[0], ""
    if "_values" in row:
        values = list(row["_values"])
    else:
        cell = _first_present(row, lab["columns"])
        values = [v.strip() for v in cell.split(lab["separator"])] if lab["separator"] else [cell]
    values = [v for v in values if v]
    mapped = {lab["map"][v] for v in values if v in lab["map"]}
    if not mapped:
        return None, "rows with no class"
    if len(mapped) > 1:
        return None, "rows with several classes"
    if lab["others"] == "reject" and any(v not in lab["map"] for v in values):
        return None, "rows with another finding"
    return mapped.pop(), ""


def _group(row: dict[str, Any], group: dict[str, Any]) -> str | None:
    value = _first_present(row, group["columns"])
    if value == "":
        return None
    table = group["table"]
    if group["kind"] == "map":
        return table.get(value)
    if group["kind"] == "contains":
        hits = [name for name, needle in table.items() if str(needle).lower() in value.lower()]
        return hits[0] if len(hits) == 1 else None
    try:
        x = float(value)
    except ValueError:
        return None
    for name, (lo, hi) in table.items():
        if (lo is None or x >= lo) and (hi is None or x <= hi):
            return name
    return None


def _grouped_split(
    items: list[dict[str, str]], fractions: dict[str, float], rng: np.random.Generator, class_order: list[str]
) -> None:
    """Assign ``item["split"]`` by patient, stratified by each patient's majority class."""
    patients: dict[str, list[dict[str, str]]] = defaultdict(list)
    for it in items:
        patients[it["_patient"]].append(it)
    strata: dict[str, list[str]] = defaultdict(list)
    rank = {c: i for i, c in enumerate(class_order)}
    for key in sorted(patients):
        labels = Counter(it["label"] for it in patients[key])
        top = min(labels, key=lambda c: (-labels[c], rank[c]))
        strata[top].append(key)
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    for cls in class_order:
        keys = strata.get(cls, [])
        order = [keys[i] for i in rng.permutation(len(keys))]
        total = sum(len(patients[k]) for k in order)
        done = 0
        for key in order:
            n = len(patients[key])
            position = (done + n / 2) / total
            split = names[min(int(np.searchsorted(bounds, position, side="right")), len(names) - 1)]
            for it in patients[key]:
                it["split"] = split
            done += n


def _balance(items: list[dict[str, str]], split: str, rng: np.random.Generator) -> list[dict[str, str]]:
    """Drop random images of the larger classes of ``split`` until every class has the same count."""
    part = [it for it in items if it.get("split") == split]
    by_class: dict[str, list[dict[str, str]]] = defaultdict(list)
    for it in part:
        by_class[it["label"]].append(it)
    if len(by_class) < 2:
        return items
    n = min(len(v) for v in by_class.values())
    drop = set()
    for cls in sorted(by_class):
        members = by_class[cls]
        if len(members) > n:
            for i in rng.permutation(len(members))[n:]:
                drop.add(id(members[i]))
    return [it for it in items if id(it) not in drop]


def _image_index(root: Path) -> dict[str, list[str]]:
    """basename -> relative paths of every file under ``root``."""
    index: dict[str, list[str]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            index[name].append(Path(dirpath, name).relative_to(root).as_posix())
    return index


def make_splits(
    card: Any,
    metadata: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    images: str | os.PathLike | None = None,
    write: bool = True,
    salt: str | None = None,
) -> SplitResult:
    """Build (and by default write) a card's manifest from the source's metadata.

    Patients (or lesions) group the split but get no column of their own: with the rule's
    ``patient`` column set, the manifest's ``patient_key`` is a salted SHA-256 of the ID (the
    same patient, the same key within one manifest), as ``cbm index-dicom --patient-key`` writes.
    (Sources that name image files by patient still carry the ID in ``path``.)

    Args:
        card: a DataCard, card name or path; its ``make_splits`` rule is followed.
        metadata: the source's metadata file(s), or the image folder for folder-based sources.
        out: where to write the manifest (default: the card's manifest path).
        seed: overrides the rule's seed.
        images: the image folder; when given (or when the card's image root exists), manifest paths
            are checked there, a file found elsewhere under it by name is used at its real
            relative path, and rows whose image is absent are dropped.
        write: write the CSV (``False`` returns the rows only).
        salt: the salt of ``patient_key`` (default: random per run, and not stored).

    Returns:
        A :class:`SplitResult` (rows, counts per split and class, what was dropped and why).
    """
    from cbm.data._card import load_card
    from cbm.data._manifest import salted_patient_key, write_manifest

    card = load_card(card)
    if not card.make_splits:
        raise ValueError(
            f"card {card.name!r} ({card.path}) has no make_splits rule; write its manifest yourself "
            f"(columns path,label,split) or add a make_splits field (see cbm/data/_splits.py)"
        )
    spec = parse_split_spec(card.make_splits, card.class_names)
    if seed is not None:
        spec.seed = int(seed)
    rng = np.random.default_rng(spec.seed)
    source = load_metadata(metadata, spec)
    result = SplitResult(rows=[], columns=[], n_source_rows=len(source))
    dropped = result.dropped
    needed = {c for c in re.findall(r"{([^{}]+)}", spec.path)}
    if source:
        available = set(source[0]) | set(spec.derive)
        missing = sorted((needed | set(spec.filters) | set(spec.keep)) - available)
        lab = spec.label
        alternatives = [lab.get("columns", [])] if lab["kind"] == "column" else [[c] for c in lab["one_hot"]]
        alternatives += [spec.patient] if spec.patient else []
        if spec.split["method"] == "column":
            alternatives.append([spec.split["column"]])
        if spec.split["method"] == "confounded":
            alternatives.append(spec.split["group"]["columns"])
        missing += [" or ".join(cols) for cols in alternatives if cols and not set(cols) & available]
        if missing:
            raise ValueError(
                f"the metadata lacks the column(s) {', '.join(missing)} that card {card.name!r} needs "
                f"(columns found: {', '.join(sorted(source[0]))}); pass the source's own file ({', '.join(spec.metadata)})"
            )

    rows = []
    for row in source:
        if all(_passes(row, col, rule) for col, rule in spec.filters.items()):
            rows.append(row)
        else:
            dropped["rows filtered out"] += 1
    for row in rows:
        for name, rule in spec.derive.items():
            m = re.search(rule["regex"], row.get(rule["from"], ""))
            row[name] = (m.group(1) if m and m.groups() else m.group(0)) if m else ""
    if spec.rows_by:
        merged: dict[str, dict[str, Any]] = {}
        for row in rows:
            key = row.get(spec.rows_by, "")
            lab = spec.label
            cell = _first_present(row, lab.get("columns", []))
            values = [v.strip() for v in cell.split(lab["separator"])] if lab.get("separator") else [cell]
            if key not in merged:
                merged[key] = {**row, "_values": set()}
            merged[key]["_values"].update(v for v in values if v)
        rows = list(merged.values())

    items: list[dict[str, Any]] = []
    seen_paths: set[str] = set()
    for row in rows:
        cls, why = _label(row, spec)
        if cls is None:
            dropped[why] += 1
            continue
        try:
            path = spec.path.format_map(row)
        except KeyError as exc:
            raise ValueError(f"card {card.name!r}: the path template {spec.path!r} names the column {exc} that the metadata lacks") from None
        if path in seen_paths:
            dropped["repeated paths"] += 1
            continue
        seen_paths.add(path)
        item = {"path": path, "label": cls, "_patient": _first_present(row, spec.patient) or f"image:{path}"}
        if spec.split["method"] == "column":
            item["_source_split"] = row.get(spec.split["column"], "")
        if spec.split["method"] == "confounded":
            item["_group"] = _group(row, spec.split["group"])
            item["_group_value"] = _first_present(row, spec.split["group"]["columns"])
        for col in spec.keep:
            item[col] = row.get(col, "")
        items.append(item)

    folders = [Path(m) for m in metadata if Path(m).is_dir()]
    if images:
        root: Path | None = Path(images)
    elif spec.folder and folders:
        root = folders[0]  # folder sources: manifest paths are relative to that folder
        if card.image_root.resolve() != root.resolve():
            hint = f"set {card.image_root_env}={root}" if card.image_root_env else f"point image_root at {root}"
            log.warning("manifest paths are relative to %s; %s so the card finds the images", root, hint)
    else:
        root = card.image_root if card.image_root.is_dir() else None
    if root is not None:
        index = _image_index(root)
        found = []
        for it in items:
            if (root / it["path"]).is_file():
                found.append(it)
            elif len(index.get(Path(it["path"]).name, [])) == 1:
                it["path"] = index[Path(it["path"]).name][0]
                found.append(it)
            else:
                dropped["rows whose image is not under " + str(root)] += 1
        items = found
    else:
        log.info("image folder %s does not exist yet; manifest paths are not checked", card.image_root)

    items.sort(key=lambda it: it["path"])
    if spec.max_per_class:
        by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for it in items:
            by_class[it["label"]].append(it)
        capped = []
        for cls in card.class_names:
            members = by_class.get(cls, [])
            if len(members) > spec.max_per_class:
                dropped[f"rows over max_per_class {spec.max_per_class}"] += len(members) - spec.max_per_class
                keep = sorted(rng.permutation(len(members))[: spec.max_per_class])
                members = [members[i] for i in keep]
            capped.extend(members)
        items = sorted(capped, key=lambda it: it["path"])

    items = _assign_splits(items, spec, card.class_names, rng, dropped)
    group_name = spec.split["group"]["name"] if spec.split["method"] == "confounded" else None
    if group_name and card.group_column and group_name != card.group_column:
        raise ValueError(
            f"card {card.name!r}: make_splits.split.group.name is {group_name!r} but the card's group column is "
            f"{card.group_column!r}; make them the same"
        )
    columns = ["path", "label", "split"] + ([group_name] if group_name else []) + (["patient_key"] if spec.patient else []) + [
        c for c in spec.keep if c != group_name
    ]
    salt = secrets.token_hex(16) if salt is None else salt
    for it in items:
        row = {"path": it["path"], "label": it["label"], "split": it["split"]}
        if group_name:
            row[group_name] = it["_group"]
        if spec.patient:  # never the ID itself: it identifies a person
            patient = "" if it["_patient"].startswith("image:") else it["_patient"]
            row["patient_key"] = salted_patient_key(patient, salt)
        row.update({c: it.get(c, "") for c in spec.keep if c != group_name})
        result.rows.append(row)
    result.columns = columns
    if not result.rows:
        raise ValueError(
            f"card {card.name!r}: no metadata row produced a manifest row ({', '.join(f'{n} {w}' for w, n in dropped.most_common()) or 'empty metadata'}); "
            f"check that --metadata is the source's file ({', '.join(spec.metadata)})"
        )
    if write:
        result.out = write_manifest(Path(out) if out else card.manifest_path, result.rows, columns)
    return result


def _assign_splits(
    items: list[dict[str, Any]], spec: SplitSpec, class_order: list[str], rng: np.random.Generator, dropped: Counter
) -> list[dict[str, Any]]:
    split = spec.split
    if split["method"] == "random":
        _grouped_split(items, split["fractions"], rng, class_order)
        return items
    if split["method"] == "column":
        kept = []
        for it in items:
            s = split["map"].get(it["_source_split"])
            if s is None:
                dropped["rows outside the source's splits"] += 1
                continue
            it["split"] = s
            kept.append(it)
        share = split.get("val_from_train") or 0.0
        if share:
            train = [it for it in kept if it["split"] == "train"]
            _grouped_split(train, {"train": 1.0 - share, "val": share}, rng, class_order)
        return kept
    # confounded: each class from one group in-domain, from the other out-of-domain
    id_map, ood_map = split["id"], split["ood"]
    side: dict[int, str] = {}
    unmatched: Counter[str] = Counter()
    for it in items:
        g = it["_group"]
        if g is not None and g == id_map[it["label"]]:
            side[id(it)] = "id"
        elif g is not None and g == ood_map[it["label"]]:
            side[id(it)] = "ood"
        else:
            dropped["rows outside the confounded groups"] += 1
            if g is None and it.get("_group_value") and split["group"]["kind"] != "bins":
                unmatched[repr(it["_group_value"])] += 1  # (an empty value, or an age between bins, is left out by design)
    if unmatched:
        group = split["group"]
        known = {"map": "values", "contains": "substrings"}[group["kind"]]
        log.warning(
            "%d rows have a %s value that none of the rule's %s (%s) takes, e.g. %s; they are left out. If these "
            "should count, the metadata spells the groups differently from the card's make_splits.split.group.%s",
            sum(unmatched.values()), "/".join(group["columns"]), known,
            ", ".join(f"{k}: {v}" for k, v in group["table"].items())[:200],
            ", ".join(f"{v} ({n})" for v, n in unmatched.most_common(5)), group["kind"],
        )
    items = [it for it in items if id(it) in side]
    by_patient: dict[str, set[str]] = defaultdict(set)
    for it in items:
        by_patient[it["_patient"]].add(side[id(it)])
    both = sorted(k for k, sides in by_patient.items() if len(sides) > 1)
    choice = dict(zip(both, rng.choice(["id", "ood"], size=len(both)))) if both else {}
    kept = []
    for it in items:
        if it["_patient"] in choice and choice[it["_patient"]] != side[id(it)]:
            dropped["rows of patients already on the other side"] += 1
            continue
        kept.append(it)
    in_domain = [it for it in kept if side[id(it)] == "id"]
    _grouped_split(in_domain, split["fractions"], rng, class_order)
    for it in kept:
        if side[id(it)] == "ood":
            it["split"] = "test"
    for name in split.get("balance", []):
        before = len(kept)
        kept = _balance(kept, name, rng)
        if before > len(kept):
            dropped[f"rows removed to balance {name}"] += before - len(kept)
    return kept
