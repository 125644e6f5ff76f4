"""Assigning manifest rows to splits: grouped by patient, stratified by class, deterministic.

Every random choice is a seeded hash of the item it is about (:func:`keyed_order`), not a draw
from a generator shared by all of them: a patient's place in the order is the same however many
others there are, so an image that goes missing (or a new one) changes its own row and at most the
rows at a split's boundary, not every split of the manifest. (With one shared generator, deleting
one of 6,949 NIH images moved 460 of the 3,039 rows both manifests kept to other splits.)

:func:`grouped_split` is the one helper behind every random split cbm writes (``cbm make-splits``
and ``cbm index-dicom --split``); :func:`assign_splits` applies a card's split rule (random, the
source's own column or lists, or KnoBo's confounded construction).

Items are plain dicts with ``label``, ``_patient`` (the grouping key) and, depending on the rule,
``_source_split``, ``_group`` and ``_group_value``; the functions set ``split``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from cbm.data._split_rule import ColumnSplit, ConfoundedSplit, GroupRule, ListsSplit, RandomSplit, SplitRule

__all__ = ["grouped_split", "balance", "assign_splits", "group_of", "number_of", "keyed_order"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A DICOM age string (Age String, VR AS): three digits and a unit, "058Y", "006M", "010W", "030D";
# some copies of NIH ChestX-ray14's metadata spell the Patient Age column so.
_AGE_STRING = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY])\s*$", re.IGNORECASE)
_YEARS_PER_UNIT = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
_MISSING = frozenset({"nan", "na", "n/a", "none", "null", "unknown", "-"})  # how metadata spells a missing value


def keyed_order(items: Iterable[T], seed: int, purpose: str, key: Callable[[T], str] = str) -> list[T]:
    """``items`` in a random order drawn from ``seed`` in which each item's place among the others
    does not depend on which others there are: sorted by a SHA-256 of the seed, ``purpose`` and
    ``key(item)`` (a patient key, an image path)."""
    return sorted(items, key=lambda it: hashlib.sha256(f"{seed}\0{purpose}\0{key(it)}".encode()).digest())


def grouped_split(
    items: list[dict[str, Any]], fractions: dict[str, float], seed: int, class_order: list[str]
) -> None:
    """Set ``item["split"]`` by patient (``item["_patient"]``), stratified by each patient's majority class.

    Args:
        items: rows with ``label`` and ``_patient``; every row of one patient gets one split.
        fractions: split name -> share of the images, e.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``.
        seed: the seed of the patients' order within each class (:func:`keyed_order`).
        class_order: the classes in label order; a patient's tie between classes goes to the first.
    """
    patients: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        patients[it["_patient"]].append(it)
    strata: dict[str, list[str]] = defaultdict(list)
    rank = {c: i for i, c in enumerate(class_order)}
    for key in sorted(patients):
        labels = Counter(it["label"] for it in patients[key])
        top = min(labels, key=lambda c: (-labels[c], rank.get(c, len(rank))))
        strata[top].append(key)
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    for cls in class_order:
        keys = strata.get(cls, [])
        order = keyed_order(keys, seed, "split")
        total = sum(len(patients[k]) for k in order)
        done, placed = 0, {}
        for key in order:
            n = len(patients[key])
            position = (done + n / 2) / total
            placed[key] = (position, names[min(int(np.searchsorted(bounds, position, side="right")), len(names) - 1)])
            done += n
        _fill_empty_splits(placed, {k: len(patients[k]) for k in placed}, names, bounds, fractions)
        for key, (_, split) in placed.items():
            for it in patients[key]:
                it["split"] = split


def _fill_empty_splits(placed: dict[str, tuple[float, str]], sizes: dict[str, int], names: list[str], bounds: np.ndarray,
                       fractions: dict[str, float]) -> None:
    """A split with a share that one class's patients left empty (a few patients with many images each:
    a class of 9 patients went 6 / 0 / 3, and a run refuses a val split without the class) gets the
    patient with the fewest images (``sizes``), of those nearest its share's middle, from a split that
    keeps another, where the class has a patient for each split; so a patient of 200 images never
    leaves train with 4. Nothing moves in a class whose every split got a patient."""
    wanted = [n for n in names if fractions[n] > 0]
    if len(placed) < len(wanted):
        return
    for i, name in enumerate(names):
        if name not in wanted or any(split == name for _, split in placed.values()):
            continue
        middle = (bounds[i] - fractions[name] / 2)
        count = Counter(split for _, split in placed.values())
        movable = [k for k, (_, split) in placed.items() if count[split] > 1]
        key = min(movable, key=lambda k: (sizes[k], abs(placed[k][0] - middle), k))
        placed[key] = (placed[key][0], name)


def balance(items: list[dict[str, Any]], split: str, seed: int) -> list[dict[str, Any]]:
    """Drop random images (by the metadata's own path, ``_source_path`` where the images were found
    elsewhere, :func:`keyed_order`) of the larger classes of ``split`` until every class has the
    same count."""
    by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for it in items:
        if it.get("split") == split:
            by_class[it["label"]].append(it)
    if len(by_class) < 2:
        return items
    n = min(len(v) for v in by_class.values())
    drop = set()
    for cls in sorted(by_class):
        for it in keyed_order(by_class[cls], seed, f"balance {split}", key=lambda it: it.get("_source_path", it["path"]))[n:]:
            drop.add(id(it))
    return [it for it in items if id(it) not in drop]


def group_of(value: str, group: GroupRule) -> str | None:
    """The group a source value belongs to (None: in no group)."""
    if value == "":
        return None
    table = group.table
    if group.kind == "map":
        return table.get(value)
    if group.kind == "contains":
        hits = [name for name, needle in table.items() if str(needle).lower() in value.lower()]
        return hits[0] if len(hits) == 1 else None
    x = number_of(value)
    if x is None:
        return None
    for name, (lo, hi) in table.items():
        if (lo is None or x >= lo) and (hi is None or x <= hi):
            return name
    return None


def number_of(value: str) -> float | None:
    """A metadata value as a number for ``bins``: a plain number, or a DICOM age string ("058Y" is 58,
    "006M" half a year) in years; None for anything else (or a value that is not finite)."""
    try:
        x = float(value)
    except ValueError:
        match = _AGE_STRING.match(value)
        if match is None:
            return None
        x = float(match.group(1)) * _YEARS_PER_UNIT[match.group(2).upper()]
    return x if np.isfinite(x) else None


def assign_splits(
    items: list[dict[str, Any]], rule: SplitRule, class_order: list[str], dropped: Counter
) -> list[dict[str, Any]]:
    """Give every item its split by the rule (drawn from ``rule.seed``); returns the items kept
    (``dropped`` counts the others)."""
    split = rule.split
    if isinstance(split, RandomSplit):
        grouped_split(items, split.fractions, rule.seed, class_order)
        return items
    if isinstance(split, (ColumnSplit, ListsSplit)):
        kept = []
        for it in items:
            s = it.get("_source_split")
            if s is None:
                dropped["rows outside the source's splits"] += 1
                continue
            it["split"] = s
            kept.append(it)
        kept = _one_split_per_patient(kept, dropped)
        if split.val_from_train:
            train = [it for it in kept if it["split"] == "train"]
            grouped_split(train, {"train": 1.0 - split.val_from_train, "val": split.val_from_train}, rule.seed, class_order)
        return kept
    return _confounded(items, split, class_order, rule.seed, dropped)


_SPLIT_RANK = {"train": 0, "val": 1, "test_id": 2, "test": 3}


def _one_split_per_patient(items: list[dict[str, Any]], dropped: Counter) -> list[dict[str, Any]]:
    """A source's own splits may put one patient in two: keep the patient's rows of the last split
    (test before val before train, so the evaluation splits stay as the source made them)."""
    last: dict[str, str] = {}
    for it in items:
        p, s = it["_patient"], it["split"]
        if _SPLIT_RANK.get(s, 0) >= _SPLIT_RANK.get(last.get(p, s), 0):
            last[p] = s
    kept = [it for it in items if last[it["_patient"]] == it["split"]]
    if len(kept) < len(items):
        dropped["rows of patients the source also lists in a later split (kept there)"] += len(items) - len(kept)
    return kept


def _warn_unmatched(unmatched: Counter, group: GroupRule) -> None:
    if group.kind == "bins":
        log.warning(
            "%d rows have a %s value that is not a number (nor a DICOM age such as 058Y), e.g. %s; they are left "
            "out. If these should count, convert the column to numbers before make-splits",
            sum(unmatched.values()), "/".join(group.column), ", ".join(f"{v} ({n})" for v, n in unmatched.most_common(5)),
        )
        return
    known = {"map": "values", "contains": "substrings"}[group.kind]
    log.warning(
        "%d rows have a %s value that none of the rule's %s (%s) takes, e.g. %s; they are left out. If these "
        "should count, the metadata spells the groups differently from the card's make_splits.split.group.%s",
        sum(unmatched.values()), "/".join(group.column), known,
        ", ".join(f"{k}: {v}" for k, v in group.table.items())[:200],
        ", ".join(f"{v} ({n})" for v, n in unmatched.most_common(5)), group.kind,
    )


def _confounded(
    items: list[dict[str, Any]], split: ConfoundedSplit, class_order: list[str], seed: int, dropped: Counter
) -> list[dict[str, Any]]:
    """Each class from one group in-domain (train/val/test_id), from the other in test."""
    side: dict[int, str] = {}
    unmatched: Counter[str] = Counter()
    for it in items:
        g = it["_group"]
        if g is not None and g == split.id[it["label"]]:
            side[id(it)] = "id"
        elif g is not None and g == split.ood[it["label"]]:
            side[id(it)] = "ood"
        else:
            dropped["rows outside the confounded groups"] += 1
            value = (it.get("_group_value") or "").strip()
            # a missing value, or a number between the bins, is left out by design; a value that no bin can
            # read is named
            if g is None and value and value.lower() not in _MISSING and (
                    split.group.kind != "bins" or number_of(value) is None):
                unmatched[repr(value)] += 1
    if unmatched:
        _warn_unmatched(unmatched, split.group)
    items = [it for it in items if id(it) in side]
    by_patient: dict[str, set[str]] = defaultdict(set)
    for it in items:
        by_patient[it["_patient"]].add(side[id(it)])
    both = sorted(k for k, sides in by_patient.items() if len(sides) > 1)
    # a patient on both sides keeps one, by a seeded hash of the patient alone
    choice = {k: ("id", "ood")[hashlib.sha256(f"{seed}\0side\0{k}".encode()).digest()[0] & 1] for k in both}
    kept = []
    for it in items:
        if it["_patient"] in choice and choice[it["_patient"]] != side[id(it)]:
            dropped["rows of patients already on the other side"] += 1
            continue
        kept.append(it)
    in_domain = [it for it in kept if side[id(it)] == "id"]
    grouped_split(in_domain, split.fractions, seed, class_order)
    for it in kept:
        if side[id(it)] == "ood":
            it["split"] = "test"
    for name in split.balance:
        before = len(kept)
        kept = balance(kept, name, seed)
        if before > len(kept):
            dropped[f"rows removed to balance {name}"] += before - len(kept)
    return kept
