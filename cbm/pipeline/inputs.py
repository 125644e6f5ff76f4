"""What a run starts from: the card, its concepts, and the encoded images of every split.

Each step checks what it can before anything expensive happens: the manifest's splits and
classes before the encoder loads, the concept store before any image is encoded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbm.errors import ManifestError

__all__ = [
    "SplitData",
    "resolve_card",
    "resolve_concepts",
    "extract_splits",
    "check_splits_present",
    "check_every_class_trains",
    "check_manifest_classes",
    "require_split",
    "store_beyond",
    "check_centring",
    "class_weight_by_index",
]

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    """Image features of one split, aligned with labels, groups and the manifest's other columns."""

    name: str
    features: np.ndarray  # (n, D) float32, L2-normalised
    labels: np.ndarray  # (n,) class indices
    groups: np.ndarray | None  # (n,) group names ("" = no value), or None
    paths: list[str]
    extras: list[dict[str, str]] = field(default_factory=list)  # each row's other manifest columns
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # (n,) each image's row among the manifest's rows of this split (they differ from 0..n-1 once an
    # unreadable image is skipped); None where the split was built by hand (then they are 0..n-1)
    indices: np.ndarray | None = None
    skipped_lines: list[int] = field(default_factory=list)  # each skipped image's manifest line, where known

    def __len__(self) -> int:
        return len(self.labels)


def resolve_card(card: Any):
    """A ``DataCard`` from a card object, a card name or a path to a ``card.yaml`` (or its folder)."""
    from cbm.data import DataCard, load_card

    if isinstance(card, DataCard):
        return card
    if card is None:
        raise ValueError("no dataset given: pass a data card (a name such as ham10000, a path, or a DataCard)")
    return load_card(card)


def resolve_concepts(card, concepts: Any = None, *, llm: dict | None = None, embed=None, embed_id: str | None = None):
    """A ``ConceptSet`` for the card: given explicitly, from its store, or generated with an LLM preset."""
    from cbm.concepts import ConceptSet, generate_concepts, load_concepts

    if concepts is None:
        if llm and llm.get("base_url") and llm.get("model"):
            return generate_concepts(card, llm, embed=embed, embed_id=embed_id)
        return load_concepts(card)
    if isinstance(concepts, ConceptSet):
        return concepts
    if isinstance(concepts, dict):
        cset = ConceptSet.from_mapping(card.class_names, concepts)
    elif isinstance(concepts, (list, tuple)):
        cset = ConceptSet.from_mapping(card.class_names, {c: list(concepts) for c in card.class_names})
    else:
        raise TypeError(f"concepts must be None, a ConceptSet, a {{class: [concepts]}} dict or a list; got {type(concepts).__name__}")
    if not len(cset):
        raise ValueError(f"the concepts given ({concepts!r}) hold no phrase: give at least one, or none at all "
                         "(concepts=None; in cbm run concepts.list=null) for the card's concept store")
    bare = [c for c in card.class_names if not cset.by_class.get(c)]
    if bare:
        log.warning("the concepts given list none for class(es) %s: a faithful head gives them no weight of their own",
                    ", ".join(bare))
    return cset


def extract_splits(
    card,
    encoder,
    splits: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int | None = 2,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, SplitData]:
    """Encode every image of the given splits (default: all in the manifest), through the feature cache."""
    from cbm.encoders import encode_images

    manifest = card.manifest()
    names = list(splits) if splits is not None else manifest.split_names()
    out: dict[str, SplitData] = {}
    for name in names:
        part = manifest.split(name)
        if len(part) == 0:
            continue
        dataset = card.dataset(name, transform=encoder.transform)
        fs = encode_images(encoder, dataset, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir)
        rows = [part.rows[i] for i in np.asarray(fs.indices, dtype=np.int64)]
        groups = None
        if card.group_column:
            groups = np.array(["" if r.group is None else str(r.group) for r in rows])
        out[name] = SplitData(
            name=name,
            features=np.asarray(fs.features, dtype=np.float32),
            labels=np.array([r.label_index for r in rows], dtype=np.int64),
            groups=groups,
            paths=[str(r.path) for r in rows],
            extras=[dict(r.extra) for r in rows],
            skipped=[(str(s.path), str(s.reason)) for s in fs.skipped],
            indices=np.asarray(fs.indices, dtype=np.int64),
            skipped_lines=[part.rows[s.index].line for s in fs.skipped],
        )
        if fs.skipped:
            shown = "; ".join(f"{path} ({reason})" for path, reason in out[name].skipped[:5])
            more = f"; and {len(fs.skipped) - 5} more" if len(fs.skipped) > 5 else ""
            log.warning("%s split: %d unreadable image(s) skipped: %s%s", name, len(fs.skipped), shown, more)
    return out


def check_splits_present(card, needed: Sequence[str] = ("train", "val", "test")) -> None:
    """Raise before any encoding when the manifest lacks a split a run needs."""
    manifest = card.manifest()
    absent = [s for s in needed if s not in manifest.split_names()]
    report = getattr(manifest, "report", None)
    if absent and report is not None and report.problems and _rows_were_dropped(report, absent):  # the problems say why
        shown = "; ".join(p.message for p in report.problems[:3]) + ("; ..." if len(report.problems) > 3 else "")
        raise ManifestError(card.manifest_path, f"card {card.name!r} has no usable {', '.join(absent)} rows: the "
                            f"manifest's rows were left out for {len(report.problems)} problem(s): {shown}",
                            "Fix them (`cbm validate CARD` lists every problem and its rows)", report=report)
    if absent:
        raise ManifestError(
            card.manifest_path, f"card {card.name!r} has no {', '.join(absent)} rows; a run needs train and val to "
            "fit and choose, and test to measure",
            f"Add them (split column {getattr(card, 'split_column', 'split')!r}), or build the splits with "
            "`cbm make-splits`")


def _rows_were_dropped(report, absent: Sequence[str]) -> bool:
    """Whether the manifest's CSV has rows of an ``absent`` split (dropped for their problems), or of a
    split name that reads as one ("validation" for val): then the problems, not a split never
    written, are the cause."""
    from cbm.data import KNOWN_SPLITS

    written = set(report.written_splits)
    unknown = {w.lower() for w in written if w not in KNOWN_SPLITS}
    return any(name in written or any(w[:3] == name[:3] for w in unknown) for name in absent)


def check_every_class_trains(card, trained: Sequence[str], validated: Sequence[str] | None = None) -> None:
    """Raise when a class of the card has no training images (the head could not learn it), or, given
    ``validated``, no validation images (the head is chosen on val: with a class missing there, the
    sparsest head that predicts the classes val holds wins, down to one that predicts one class)."""
    absent = [c for c in card.class_names if c not in set(trained)]
    if absent:
        raise ManifestError(card.manifest_path, f"card {card.name!r}: no usable training images of class(es) {absent}; "
                            "every class needs train rows", "Add them, or drop the class from the card's classes")
    unseen = [] if validated is None else [c for c in card.class_names if c not in set(validated)]
    if unseen:
        raise ManifestError(
            card.manifest_path, f"card {card.name!r}: no usable validation images of class(es) {unseen}; the head is "
            "chosen on val, which must hold every class",
            "Move some of its rows to val (`cbm make-splits` splits each class), or drop the class from the card's classes")


def check_manifest_classes(card) -> None:
    """:func:`check_every_class_trains` on the manifest's rows, before any image is encoded."""
    counts = card.manifest().counts()  # its reading warns of a class with few images (cbm.data.read_manifest)
    check_every_class_trains(card, *([c for c in card.class_names if counts.get(s, {}).get(c)] for s in ("train", "val")))


_ROLES = {"train": "the head is fitted on train", "val": "the head is chosen on val",
          "test": "test is where a run measures the method", "test_id": "test_id is where a run measures in-domain accuracy"}


def require_split(splits: dict[str, SplitData], name: str, card) -> SplitData:
    """The split ``name``, or an error naming the manifest (and an unset image-root variable); where the
    split's rows are there but none of their images could be read, the error names those files."""
    split = splits.get(name)
    if split is not None and len(split) == 0 and split.skipped:
        shown = "; ".join(f"{path} ({reason})" for path, reason in split.skipped[:3])
        more = f"; and {len(split.skipped) - 3} more" if len(split.skipped) > 3 else ""
        raise ManifestError(
            card.manifest_path, f"card {card.name!r}: none of the {len(split.skipped)} {name!r} image(s) could be read: "
            f"{shown}{more}; {_ROLES.get(name, 'a split the manifest names is evaluated, so it needs images')}",
            "Replace those files with readable copies (`cbm validate CARD` checks every image), or give the split "
            "readable images")
    if split is None or len(split) == 0:
        hint = card.unset_root_variable() if hasattr(card, "unset_root_variable") else None
        raise ValueError(
            f"card {card.name!r} has no usable {name!r} images (manifest {card.manifest_path}); "
            f"every run needs train and val splits, and test for evaluation" + (f"; {hint}" if hint else "")
        )
    return split


def class_weight_by_index(class_weight: Any, class_names: Sequence[str]) -> Any:
    """A head's ``class_weight`` as it is fitted, on class indices: a ``{class: weight}`` mapping may name
    a class (``{melanoma: 2}``, as a config does) or give its index; one that is neither, or a weight
    that is not a finite number of 0 or more, is refused before anything is encoded. Anything else is
    returned as it is."""
    from collections.abc import Mapping

    if not isinstance(class_weight, Mapping):
        return class_weight
    names = list(class_names)
    by_index: dict[int, float] = {}
    for key, weight in class_weight.items():
        index = names.index(key) if key in names else key
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
            raise ValueError(f"class_weight names {key!r}, which is no class of this card; its classes are "
                             f"{', '.join(names)} (or their indices 0-{len(names) - 1})")
        try:
            by_index[index] = float(weight)
        except (TypeError, ValueError):
            by_index[index] = float("nan")
        if not 0 <= by_index[index] < float("inf"):
            raise ValueError(f"class_weight of {key!r} is {weight!r}: give a finite number, 0 or more")
    return by_index


def store_beyond(card, names: list[str]) -> list[str]:
    """The card's stored concepts that ``names`` (given explicitly) lack: centring uses them too
    (a short list's own mean is a poor estimate of what every prompt shares: see cbm.bottleneck)."""
    from cbm.concepts import load_concepts

    try:
        store = load_concepts(card).concepts
    except (FileNotFoundError, ValueError):
        return []
    given = set(names)
    return [c for c in dict.fromkeys(store) if c not in given]


def check_centring(card, names: list[str], centre: bool) -> None:
    """Refuse, before any image is encoded, centring on fewer than two concepts (the run's and the
    card's store's together): the bottleneck subtracts their mean, which one concept would make zero."""
    if centre and len(names) + len(store_beyond(card, names)) < 2:
        raise ValueError(
            f"card {card.name!r} has {len(names)} concept ({', '.join(map(repr, names))}) in its store and the run's "
            "list together, but the bottleneck is centred on the mean of the concepts, which needs at least 2: add "
            "concepts to the card's store or the run's list (one "
            "concept can say little about the classes), or turn centring off (`bottleneck.centre=false` in a run; "
            "cbm.fit(..., bottleneck=cbm.bottleneck.BottleneckConfig(centre=False)) in Python)")
