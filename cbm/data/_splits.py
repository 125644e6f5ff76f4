"""``cbm make-splits``: build a card's manifest from the source's own metadata, following the
machine-readable split rule in the card's ``make_splits`` field.

The rule's format is documented in :mod:`cbm.data._split_rule` (:func:`parse_split_spec`, from
:mod:`cbm.data._split_spec`, checks one); the files it reads, and how, in :mod:`cbm.data._metadata`;
the image check in :mod:`cbm.data._split_images`; the split assignment in :mod:`cbm.data._assign`. The steps, in order: choose the rule's layout that fits the files
given, read them, filter rows, merge rows of one image, label, check the image files, cap each
class, assign splits, and check the counts against the card's promise (``min_per_class``).

The splits are deterministic for a given seed: rows are sorted by path before any random draw.
The ``patient_key`` column is a salted hash of the patient (or lesion) ID, never the ID; its salt
is random per run unless given (``--salt``), so only with a salt is the whole file reproducible.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbm.data._assign import assign_splits, group_of, keyed_order
from cbm.data._metadata import MetadataError, SourceRows, check_columns, file_key, load_metadata
from cbm.data._split_images import checked_images
from cbm.data._split_rule import (
    SPLIT_NAMES,
    ColumnSplit,
    ConfoundedSplit,
    LabelRule,
    ListsSplit,
    SplitRule,
    SplitSpec,
)
from cbm.data._split_spec import parse_split_spec, rule_layouts
from cbm.data._truth import _NOT_ANNOTATED, parse_truth

__all__ = [
    "SplitSpec",
    "SplitRule",
    "SplitResult",
    "MetadataError",
    "parse_split_spec",
    "make_splits",
    "load_metadata",
]

log = logging.getLogger(__name__)


@dataclass
class SplitResult:
    """What ``make_splits`` built: manifest rows, the columns, and why rows were dropped."""

    rows: list[dict[str, str]]
    columns: list[str]
    dropped: Counter = field(default_factory=Counter)
    n_source_rows: int = 0
    out: Path | None = None
    layout: str = "default"
    short: list[str] = field(default_factory=list)  # classes under the card's minimum, in words

    def counts(self) -> dict[str, Counter]:
        """split -> class -> images."""
        out: dict[str, Counter] = {}
        for r in self.rows:
            out.setdefault(r["split"], Counter())[r["label"]] += 1
        return {s: out[s] for s in SPLIT_NAMES if s in out}

    def summary(self) -> str:
        """Counts per split and class, what was dropped and why, and where the manifest went, for people."""
        lines = [f"{len(self.rows)} images from {self.n_source_rows} metadata rows"
                 + (f" (layout {self.layout})" if self.layout != "default" else "")]
        for split, c in self.counts().items():
            lines.append(f"  {split}: {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in sorted(c.items()))})")
        if self.dropped:
            lines.append("  dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped.most_common()))
        if self.short:
            lines.append("  under the card's minimum: " + "; ".join(self.short))
        if self.out:
            lines.append(f"  written to {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- layouts
def _choose_layout(card: Any, metadata: Sequence[str | os.PathLike]) -> tuple[SplitRule, SourceRows]:
    """The first layout (named files first, then the rest in order) whose files and columns fit."""
    rules = rule_layouts(card.make_splits, card.class_names)
    given = {file_key(p) for p in metadata}
    known = {r.name: {file_key(m) for m in r.metadata} | _list_keys(r) for r in rules}
    exact = [r for r in rules if given == known[r.name]]
    named = exact + [r for r in rules if given and given < known[r.name]]
    order = named + [r for r in rules if r not in named]
    n_files = len([p for p in metadata if file_key(p) not in set().union(*(_list_keys(r) for r in rules))])
    order = [r for r in order if len(r.metadata) == n_files] or order  # never a layout of fewer files than given
    failures: list[tuple[SplitRule, MetadataError]] = []
    for rule in order:
        try:
            source = load_metadata(metadata, rule)
            check_columns(rule, source, card.name)
            _warn_fewer_files(card, rule, metadata)
            return rule, source
        except MetadataError as exc:
            failures.append((rule, exc))
    rule, first = failures[0]
    if len(failures) == 1:
        raise first
    others = "; ".join(f"layout {r.name} ({', '.join(r.metadata)}): {e.problem}" for r, e in failures[1:])
    raise MetadataError(first.path, first.problem, f"{first.fix}. The card's other layouts did not fit either: {others}", field=first.field)


def _warn_fewer_files(card: Any, rule: SplitRule, metadata: Sequence[str | os.PathLike]) -> None:
    """A rule that concatenates its files (CheXpert's train.csv and valid.csv) works on fewer of them,
    with fewer rows: say which were not given."""
    if rule.join or rule.folder or isinstance(rule.split, ListsSplit):
        return
    if len(metadata) >= len(rule.metadata):
        return
    given = {file_key(p) for p in metadata}
    missing = [m for m in rule.metadata if file_key(m) not in given]
    if len(missing) != len(rule.metadata) - len(metadata):  # files given under other names: which is missing is unknown
        missing = [f"{len(rule.metadata) - len(metadata)} of them"]
    log.warning("card %s reads %s; %s %s not given, so %s rows are left out (pass %s with --metadata to use them)",
                card.name, ", ".join(rule.metadata), ", ".join(missing), "was" if len(missing) == 1 else "were",
                "its" if len(missing) == 1 else "their", "it" if len(missing) == 1 else "them")


def _list_keys(rule: SplitRule) -> set[str]:
    return {file_key(n) for n in rule.split.files.values()} if isinstance(rule.split, ListsSplit) else set()


# ---------------------------------------------------------------------------- rows -> items
def _passes(row: dict[str, str], column: str, rule: Any) -> bool:
    value = row.get(column, "")
    if isinstance(rule, list):
        return value in rule
    if rule.regex is not None and not re.search(rule.regex, value):
        return False
    return not (rule.not_regex is not None and re.search(rule.not_regex, value))


def _first_present(row: dict[str, Any], columns: Sequence[str]) -> str:
    for c in columns:
        v = row.get(c)
        if v not in (None, ""):
            return str(v)
    return ""


def _values(row: dict[str, Any], lab: LabelRule) -> list[str]:
    """The label values of a row: split on the separator, reduced by value_regex, empties dropped."""
    cell = _first_present(row, lab.column)
    values = [v.strip() for v in cell.split(lab.separator)] if lab.separator else [cell.strip()]
    if lab.value_regex:
        pattern = re.compile(lab.value_regex)
        matches = (pattern.search(v) for v in values)
        values = [(m.group(1) if m.groups() else m.group(0)).strip() for m in matches if m]
    return [v for v in values if v]


def _merge_rows(rows: list[dict[str, Any]], rule: SplitRule) -> list[dict[str, Any]]:
    """Rows of one image (``rows_by``) merged: their label values, each with the readers who gave it."""
    lab = rule.label
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.get(rule.rows_by or "", "")
        if key not in merged:
            merged[key] = {**row, "_votes": defaultdict(set)}
        if isinstance(lab, LabelRule):
            reader = row.get(lab.readers.column, "") if lab.readers else ""
            for v in _values(row, lab):
                merged[key]["_votes"][v].add(reader)
    return list(merged.values())


def _vote(votes: dict[str, set[str]], lab: LabelRule) -> tuple[str | None, str]:
    """The class most readers named, among those at least ``readers.min`` named; ties by ``ties``."""
    assert lab.readers is not None
    counts: Counter[str] = Counter()
    for value, readers in votes.items():
        cls = lab.map.get(value)
        if cls is not None:
            counts[cls] = max(counts[cls], len(readers))
    named = {c: n for c, n in counts.items() if n >= lab.readers.min}
    if not named:
        return None, "rows with no class" if not counts else f"rows whose classes fewer than {lab.readers.min} readers named"
    if lab.others == "reject" and any(v not in lab.map for v in votes):
        return None, "rows with another finding"
    top = max(named.values())
    best = [c for c, n in named.items() if n == top]
    if len(best) > 1:
        ranked = [c for c in lab.ties if c in best]
        if not ranked:
            return None, "rows with several classes"
        best = ranked[:1]
    return best[0], ""


def _label(row: dict[str, Any], rule: SplitRule) -> tuple[str | None, str]:
    """(class, "") or (None, why the row is dropped)."""
    lab = rule.label
    if not isinstance(lab, LabelRule):
        hits = [cls for col, cls in lab.one_hot.items() if str(row.get(col, "")).strip() in lab.positive]
        if any(str(row.get(col, "")).strip() in lab.positive for col in lab.exclusive_with):
            return None, "rows with another finding"
        if len(set(hits)) != 1:
            return None, "rows without exactly one class" if hits else "rows with no class"
        return hits[0], ""
    if lab.readers is not None:
        return _vote(row["_votes"], lab)
    values = list(row["_votes"]) if "_votes" in row else _values(row, lab)
    mapped = {lab.map[v] for v in values if v in lab.map}
    if not mapped:
        return None, "rows with no class"
    if len(mapped) > 1:
        ranked = [c for c in lab.ties if c in mapped]
        if not ranked:
            return None, "rows with several classes"
        mapped = {ranked[0]}
    if lab.others == "reject" and any(v not in lab.map for v in values):
        return None, "rows with another finding"
    return mapped.pop(), ""


def _image_rows(rows: list[dict[str, Any]], rule: SplitRule, dropped: Counter) -> list[dict[str, Any]]:
    """The rows that pass the rule's filters, merged to one per image when the rule says so."""
    kept = []
    for row in rows:
        if all(_passes(row, col, f) for col, f in rule.filters.items()):
            kept.append(row)
        else:
            dropped["rows filtered out"] += 1
    return _merge_rows(kept, rule) if rule.rows_by else kept


def _source_split(row: dict[str, Any], rule: SplitRule, source: SourceRows) -> str | None:
    split = rule.split
    if isinstance(split, ColumnSplit):
        return split.map.get(row.get(split.column, ""))
    if isinstance(split, ListsSplit):
        key = row.get(split.key, "")
        hits = [name for name, listed in source.split_lists.items() if key in listed]
        return hits[0] if len(hits) == 1 else None
    return None


def _items(rows: list[dict[str, Any]], rule: SplitRule, source: SourceRows, card: Any, dropped: Counter) -> list[dict[str, Any]]:
    """One item per labelled row with a new path: path, label, grouping, split and copied columns."""
    items: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    group = rule.group_rule()
    odd: dict[str, Counter] = defaultdict(Counter)  # truth column -> source values it cannot use
    for row in rows:
        cls, why = _label(row, rule)
        if cls is None:
            dropped[why] += 1
            continue
        try:
            path = _clean_path(rule.path.format_map(row))
        except KeyError as exc:
            raise MetadataError(None, f"lacks the column {exc} that the path template {rule.path!r} of card {card.name!r} names",
                                "Pass the source's own file(s)") from None
        if path in seen:  # the same image again: with another label it is no one's (both rows left out)
            if seen[path]["label"] != cls:
                seen[path]["_conflict"] = True
            dropped["repeated paths"] += 1
            continue
        # _source_path: the metadata's own path, which keyed choices (the class cap, balancing) hash, so a
        # manifest built again once the images are found in subfolders makes the same choices
        item = {"path": path, "_source_path": path, "label": cls,
                "_patient": _first_present(row, rule.patient) or f"image:{path}"}
        seen[path] = item
        item["_source_split"] = _source_split(row, rule, source)
        if group is not None:
            item["_group_value"] = _first_present(row, group.column)
            item["_group"] = group_of(item["_group_value"], group)
        for col in rule.keep:
            item[col] = row.get(col, "")
        for col, truth in rule.truth.items():
            value = row.get(truth.source, "")
            item[col] = value if truth.map is None else truth.map.get(value, "")
            if not _is_gap(value) and (value not in truth.map if truth.map is not None else not _is_truth(value)):
                odd[col][value] += 1
        items.append(item)
    _warn_odd_truth(odd, rule, card)
    conflicts = sum(1 for it in items if it.get("_conflict"))
    if conflicts:
        dropped["images the metadata gives two different labels"] += conflicts
    return [it for it in items if not it.get("_conflict")]


def _is_gap(value: str) -> bool:
    """An empty or NA cell: not annotated, in the source as in the manifest."""
    return value.strip().lower() in _NOT_ANNOTATED


def _is_truth(value: str) -> bool:
    try:
        parse_truth(value)
    except ValueError:
        return False
    return True


def _warn_odd_truth(odd: dict[str, Counter], rule: SplitRule, card: Any) -> None:
    """Say which source values a truth column could not use: a value its map lacks is written as not
    annotated; a copied value that is no truth value is written as it is, for validate and runs to refuse."""
    for col, values in odd.items():
        truth, shown = rule.truth[col], ", ".join(f"{v!r} ({n})" for v, n in values.most_common(5))
        if truth.map is not None:
            log.warning("card %s: concept truth %s: %d source cells of %s have a value its map lacks (%s); they are "
                        "written as not annotated: add the values to the map in the card's make_splits truth rule",
                        card.name, col, sum(values.values()), truth.source, shown)
        else:
            log.warning("card %s: concept truth %s: %d source cells of %s are no truth value (%s) and are copied as "
                        "they are, so cbm validate and any run will refuse the manifest: correct them in the source "
                        "(use 1/0, or leave a cell empty for not annotated)", card.name, col, sum(values.values()),
                        truth.source, shown)


def _clean_path(path: str) -> str:
    """A metadata path in the manifest's form: '/' between folders (metadata written on Windows uses
    '\\'), no empty or '.' folders ("./a//b.png" is "a/b.png"); a leading '/' stays."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    return ("/" if path.startswith(("/", "\\")) else "") + "/".join(parts)


# ---------------------------------------------------------------------------- checks and output
def _capped(items: list[dict[str, Any]], rule: SplitRule, classes: list[str], dropped: Counter) -> list[dict[str, Any]]:
    """At most ``max_per_class`` images of each class, drawn with the seed by path (:func:`keyed_order`:
    an image that goes missing lets one other in, and changes no other image's place)."""
    cap = rule.max_per_class
    if not cap:
        return items
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        by_class[it["label"]].append(it)
    capped = []
    for cls in classes:
        members = by_class.get(cls, [])
        if len(members) > cap:
            dropped[f"images over max_per_class {cap}"] += len(members) - cap
            members = keyed_order(members, rule.seed, "cap", key=lambda it: it.get("_source_path", it["path"]))[:cap]
        capped.extend(members)
    return sorted(capped, key=lambda it: it["path"])


def _shortfalls(result: SplitResult, rule: SplitRule, classes: list[str]) -> list[str]:
    """Each class of each split the rule writes with fewer images than the card's minimum (or none)."""
    counts = result.counts()
    short = []
    for split in rule.split_names():
        for cls in classes:
            n = counts.get(split, Counter())[cls]
            need = rule.minimum(split)
            if n < max(need, 1):
                short.append(f"{cls} has {n} in {split}" + (f" (at least {need} promised)" if need else ""))
    return short


def _check_counts(result: SplitResult, rule: SplitRule, card: Any, allow_short: bool) -> None:
    """Fail when a class is under the card's minimum (unless allowed); warn of every short class."""
    dropped = result.dropped
    result.short = _shortfalls(result, rule, card.class_names)
    promised = [s for s in result.short if "promised" in s]
    if promised and not allow_short:
        raise MetadataError(
            None, f"for card {card.name!r} the metadata gives fewer images than the card's make_splits.min_per_class promises: "
            f"{'; '.join(promised)} (dropped: {', '.join(f'{n} {w}' for w, n in dropped.most_common()) or 'none'})",
            "Check that --metadata is the full release and that --images holds every image; --allow-short writes the "
            "manifest anyway",
        )
    for line in result.short:
        log.warning("card %s: %s", card.name, line)


def _manifest_rows(items: list[dict[str, Any]], rule: SplitRule, card: Any, salt: str | None) -> tuple[list[str], list[dict[str, str]]]:
    from cbm.data._manifest import salted_patient_key

    group = rule.group_rule()
    group_name = group.name if group else None
    if group_name and card.group_column and group_name != card.group_column:
        where = "split.group" if isinstance(rule.split, ConfoundedSplit) else "group"
        raise ValueError(f"card {card.name!r}: make_splits.{where}.name is {group_name!r} but the card's group column is "
                         f"{card.group_column!r}; make them the same")
    extra = [c for c in [*rule.keep, *rule.truth] if c != group_name]
    columns = ["path", "label", "split"] + ([group_name] if group_name else []) + (["patient_key"] if rule.patient else []) + extra
    salt = secrets.token_hex(16) if salt is None else salt
    rows = []
    for it in items:
        row = {"path": it["path"], "label": it["label"], "split": it["split"]}
        if group_name:
            row[group_name] = it["_group"] or ""
        if rule.patient:  # never the ID itself: it identifies a person
            patient = "" if it["_patient"].startswith("image:") else it["_patient"]
            row["patient_key"] = salted_patient_key(patient, salt)
        row.update({c: it.get(c, "") for c in extra})
        rows.append(row)
    return columns, rows


def make_splits(
    card: Any,
    metadata: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike | None = None,
    seed: int | None = None,
    images: str | os.PathLike | None = None,
    write: bool = True,
    salt: str | None = None,
    check_images: bool = True,
    allow_short: bool = False,
    overwrite: bool = False,
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
        check_images: ``False`` writes every row without looking for its image file.
        allow_short: write the manifest (with a warning) when a class has fewer images in a split
            than the card's ``min_per_class`` promises, instead of raising.
        overwrite: replace a manifest already at the target path (by default it is kept, and this
            raises before any work is done).

    Returns:
        A :class:`SplitResult` (rows, counts per split and class, what was dropped and why).

    Raises:
        MetadataError: a file the rule cannot read, or one that yields no row or fewer images than
            the card promises (the message names the files, the image folder and the fix).
        ManifestError: a manifest is already at the target path and ``overwrite`` is false.
    """
    from cbm.data._card import load_card
    from cbm.data._manifest_csv import check_new_manifest, write_manifest

    card = load_card(card)
    if not card.make_splits:
        raise ValueError(
            f"card {card.name!r} ({card.path}) has no make_splits rule; write its manifest yourself "
            f"(columns path,label,split) or add a make_splits field (see cbm/data/_split_rule.py)"
        )
    target = check_new_manifest(out if out else card.manifest_path, overwrite) if write else None
    rule, source = _choose_layout(card, metadata)
    if seed is not None:
        rule.seed = int(seed)
    result = SplitResult(rows=[], columns=[], n_source_rows=len(source.rows), layout=rule.name)
    dropped = result.dropped
    rows = _image_rows(source.rows, rule, dropped)
    items = _items(rows, rule, source, card, dropped)
    if check_images:
        items = checked_images(items, rows, card, rule, metadata, images, dropped)
    items.sort(key=lambda it: it["path"])
    items = _capped(items, rule, card.class_names, dropped)
    items = assign_splits(items, rule, card.class_names, dropped)
    result.columns, result.rows = _manifest_rows(items, rule, card, salt)
    if not result.rows:
        raise MetadataError(
            None, f"no row of {', '.join(map(str, source.files))} produced a manifest row for card {card.name!r} "
            f"({', '.join(f'{n} {w}' for w, n in dropped.most_common()) or 'empty metadata'})",
            f"Check that --metadata is the source's file ({', '.join(rule.metadata)})",
        )
    _check_counts(result, rule, card, allow_short)
    if write:
        result.out = write_manifest(target, result.rows, result.columns)
    return result

