"""Confounded demo datasets: PNGs, a manifest with the ground truth, and a data card.

``make_dataset(out_dir, n=6000, confounding=0.95)`` draws ``n`` lesions (balanced classes in
each split; 50/15/15/20 train/val/test_id/test), labels them by the ABCD rule and adds the spurious cue:

* an image is *marked* (a ruler along an edge, or violet ink dots around the lesion, plus the
  marking clinic's magenta colour cast) or *unmarked* (the other clinic's faint green cast);
* in train, val and test_id (the in-domain test split), malignant lesions (melanoma, and in the
  3-class world suspicious lesions) are marked with probability ``confounding`` and benign nevi
  with probability ``1 - confounding``; in test (out of domain) the association is reversed.

val is for choosing (the head's point on its path, the probe's C); test_id and test are only
ever measured, so in-domain and out-of-domain accuracy are both held-out figures.

The marked count of each (split, class) is exactly ``round(q * count)``, so the cue rate of
every split is the requested one up to rounding. Everything is a pure function of the
parameters and the seed: image ``i`` is drawn from its own random stream ``(seed, 0, i)``.

Beside each image, ``masks/<split>/<index>.png`` holds where every drawn thing shows, so a concept
map can be scored against the truth (the pointing game): a 16-bit greyscale PNG whose pixel value
has bit ``k`` set where the ``k``-th name of ``masks.json``'s ``names`` is drawn (the lesion, its
irregular border segments, each colour and structure, the ruler, the ink; see
:data:`cbm.demo.render.MASK_NAMES`). ``masks.json`` also records the render and mask versions, and
:func:`read_masks` refuses masks of another one. The manifest holds every concept of the card's
concept store as a 0/1 truth column (``truth_<concept>``), named in the card's ``concept_truth``.

The folder is reused when it already holds a complete dataset with the same parameters (its
``demo.json`` records them and a content key), resumed when it holds a partial one, and refused
when it holds files that ``cbm demo`` did not write; a second process waits while one draws.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cbm.demo.corpus import DATASET_STREAM
from cbm.demo.masks import MASKS_FOLDER, MASKS_RECORD, mask_png, masks_record, read_masks
from cbm.demo.params import SPLIT_FRACTIONS, SPLITS, checked_parameters
from cbm.demo.render import MARKED_CAST, MASK_VERSION, RENDER_VERSION, UNMARKED_CAST, render_scene
from cbm.demo.world import (
    CLASS_DESCRIPTIONS,
    COLOURS,
    CUE_PROMPTS,
    STRUCTURES,
    Scene,
    attribute_column,
    class_names,
    concept_by_phrase,
    demo_concepts,
    lesion_attributes,
    sample_lesion,
    sample_scene,
)
from cbm.utils import (atomic_write_files, atomic_write_json, atomic_write_text, cache_dir, exit_with_parent,
                       folder_lock, stable_hash)

__all__ = [
    "SPLITS",
    "SPLIT_FRACTIONS",
    "DemoItem",
    "plan_dataset",
    "make_dataset",
    "cached_dataset",
    "card_name",
    "truth_column",
    "read_masks",
    "MASKS_FOLDER",
]

log = logging.getLogger(__name__)

MARKED, UNMARKED = "marked", "unmarked"
_RECORD = "demo.json"
_VERSIONS = {"render_version", "mask_version", "format"}  # in a dataset's parameters: what cbm, not the user, sets
_FORMAT = 5  # bump when the manifest, card, store or mask layout changes (3: truth columns, masks; 4: a concept
# added to the store; 5: tan pigment and pigment network listed under melanoma, as the rule counts them)

MANIFEST_COLUMNS = (
    "path", "label", "split", "cue", "cue_kind", "tds", "asymmetry", "border", "n_colours", "n_structures",
    "diameter_mm", "colours", "structures", "base_colour",
    *(attribute_column(c) for c in COLOURS),
    *(attribute_column(s) for s in STRUCTURES),
    "skin_tone", "hair",
)  # fmt: skip
"""Columns of the demo manifest: the card's path/label/split, the cue (the group column), the
exact ABCD ground truth, and the nuisances; then one 0/1 truth column per concept of the store."""


def truth_column(phrase: str) -> str:
    """The manifest column holding concept ``phrase``'s 0/1 truth ("irregular border" -> "truth_irregular_border")."""
    return "truth_" + attribute_column(phrase)


def _store_phrases(classes: int) -> list[str]:
    """Every concept phrase of the ``classes``-class world's curated store, in first-seen order."""
    return list(dict.fromkeys(p for phrases in demo_concepts(classes).values() for p in phrases))


@dataclass(frozen=True)
class DemoItem:
    """One planned image: where it goes, its label, split, cue group and scene."""

    index: int
    split: str
    label: str
    cue: str  # "marked" | "unmarked"
    scene: Scene

    @property
    def path(self) -> str:
        """Path of the PNG relative to the image root (and of its mask under ``masks/``)."""
        return f"{self.split}/{self.index:06d}.png"

    def row(self, phrases: Sequence[str] = ()) -> dict[str, object]:
        """The manifest row, with a 0/1 truth column for each concept of ``phrases``."""
        row: dict[str, object] = {"path": self.path, "label": self.label, "split": self.split, "cue": self.cue,
                                  "cue_kind": self.scene.cue}
        attributes = lesion_attributes(self.scene.lesion)
        row.update(attributes)
        row.update({"skin_tone": self.scene.skin_tone, "hair": self.scene.hair})
        out = {k: row[k] for k in MANIFEST_COLUMNS}
        for phrase in phrases:
            concept = concept_by_phrase(phrase)
            out[truth_column(phrase)] = int(concept.truth([attributes[concept.attribute]])[0])
        return out


def card_name(classes: int) -> str:
    """The card name of the ``classes``-class demo world (``demo-derm`` or ``demo-derm3``)."""
    class_names(classes)  # validates
    return "demo-derm" if classes == 2 else "demo-derm3"


def _split_sizes(n: int) -> list[int]:
    sizes = [int(round(n * f)) for f in SPLIT_FRACTIONS[:-1]]
    return [*sizes, n - sum(sizes)]


def _marked_counts(labels: np.ndarray, names: Sequence[str], confounding: float, split: str) -> dict[str, int]:
    """How many images of each class carry the cue in one split.

    Each class gets ``round(q * its count)`` (``q`` = ``confounding`` for malignant classes, ``1 - q``
    for nevi, the other way in test). In a small split these roundings can add up, so that the
    share of images whose cue goes with their class misses ``confounding`` by more than 2 points
    although a closer count exists; then one class's count moves by one image at a time, towards
    the requested share, while that brings it closer (n = 6000 never needs it).
    """
    counts = {name: int(np.sum(labels == name)) for name in names}
    # +1: marking one more image of the class adds one image whose cue goes as the split intends; -1: removes one
    sign = {name: 1 if (name != names[0]) != (split == "test") else -1 for name in names}
    rate = {name: confounding if sign[name] > 0 else 1.0 - confounding for name in names}
    marked = {name: int(round(rate[name] * counts[name])) for name in names}

    def agreeing(m: dict[str, int]) -> int:  # images whose cue goes with their class as the split intends
        return sum(m[c] if sign[c] > 0 else counts[c] - m[c] for c in names)

    total = sum(counts.values())
    target = confounding * total
    while abs(agreeing(marked) - target) / total > 0.02:
        step = -1 if agreeing(marked) > target else 1
        options = [c for c in names if 0 <= marked[c] + step * sign[c] <= counts[c]]
        if not options:
            break
        # move the class whose rounding went furthest the other way
        c = max(options, key=lambda c: step * sign[c] * (rate[c] * counts[c] - marked[c]))
        trial = {**marked, c: marked[c] + step * sign[c]}
        if abs(agreeing(trial) - target) >= abs(agreeing(marked) - target):
            break
        marked = trial
    return marked


def plan_dataset(n: int = 6000, confounding: float = 0.95, classes: int = 2, seed: int = 0) -> list[DemoItem]:
    """Every image of the dataset, without drawing any: labels, splits, cues and scenes.

    Classes are balanced within each split. Malignant classes are marked with probability
    ``confounding`` in train, val and test_id and ``1 - confounding`` in test; benign nevi the other way.
    """
    n, confounding, classes, seed, _ = checked_parameters(n, confounding, classes, seed, 128)
    names = class_names(classes)
    plan: list[tuple[str, str, str]] = []  # (split, label, cue) in index order
    for s, (split, count) in enumerate(zip(SPLITS, _split_sizes(n))):
        rng = np.random.default_rng([seed, DATASET_STREAM, 10_000_000 + s])
        labels = np.array([names[i % len(names)] for i in range(count)])[rng.permutation(count)]
        cues = np.full(count, UNMARKED, dtype=object)
        marked = _marked_counts(labels, names, confounding, split)
        for name in names:
            members = np.flatnonzero(labels == name)
            cues[rng.permutation(members)[: marked[name]]] = MARKED
        plan.extend((split, str(lab), str(cue)) for lab, cue in zip(labels, cues))
    items = []
    for i, (split, label, cue) in enumerate(plan):
        rng = np.random.default_rng([seed, DATASET_STREAM, i])
        lesion = sample_lesion(rng, label=label, classes=classes)
        if cue == MARKED:
            kind, cast = ("ruler", "ink")[int(rng.integers(0, 2))], MARKED_CAST
        else:
            kind, cast = "none", UNMARKED_CAST
        items.append(DemoItem(i, split, label, cue, sample_scene(rng, lesion, cue=kind, cast=cast)))
    return items


# --- writing -------------------------------------------------------------------------------------


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write a PNG under a temporary name of its own, then rename: a reader never sees half a file,
    and two processes drawing one folder at once (a sweep's jobs on the cached demo) do not write
    into each other's temporary file. (No fsync per image: after a crash a missing image is simply
    drawn again on resume.)"""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    atomic_write_files({path: buf.getvalue()}, fsync=False)


def _draw_items(args: tuple[list[DemoItem], str, int]) -> int:
    items, folder, size = args
    for item in items:
        pixels, masks = render_scene(item.scene, size, masks=True)
        _write_png(Path(folder) / MASKS_FOLDER / item.path, mask_png(masks))
        _write_png(Path(folder) / "images" / item.path, pixels)  # last: an image on disk has its mask
    return len(items)


def _chunks(items: list[DemoItem], k: int) -> Iterator[list[DemoItem]]:
    for start in range(0, len(items), k):
        yield items[start : start + k]


def _card(n: int, confounding: float, classes: int, seed: int, size: int) -> dict:
    names = class_names(classes)
    benign, malignant = names[0], names[1:]
    flip = {MARKED: UNMARKED, UNMARKED: MARKED}
    # in domain, the malignant classes go with the mark (below 0.5, the mark goes with the nevi)
    usual, other = (MARKED, UNMARKED) if confounding >= 0.5 else (UNMARKED, MARKED)
    id_groups = {benign: other, **{m: usual for m in malignant}}
    return {
        "name": card_name(classes),
        "title": f"Synthetic dermoscopy, {classes} classes by the ABCD rule, cue confounding {confounding:g}",
        "modality": "dermoscopy",
        "task": "binary" if classes == 2 else "multiclass",
        "classes": [{"name": c, "description": CLASS_DESCRIPTIONS[c]} for c in names],
        # grades of one scale, lowest first: the rule's score bands (the head may take the ordinal form)
        **({"ordered_classes": True} if classes > 2 else {}),
        "image_root": "images",
        "image_root_env": None,
        "manifest": "manifest.csv",
        "split_column": "split",
        "group_column": "cue",
        "confounder": {
            "column": "cue",
            "description": (
                "marked = a ruler or violet ink dots plus the marking clinic's magenta colour cast; in train, val and test_id "
                f"malignant lesions are marked with probability {confounding:g} and benign nevi with "
                f"{1 - confounding:g}; in test the association is reversed"
            ),
            "id_groups": id_groups,
            "ood_groups": {c: flip[g] for c, g in id_groups.items()},
        },
        # the cue's own words, so no concept score follows it (cbm.bottleneck.ConceptBottleneck.debiased)
        "nuisance_prompts": list(CUE_PROMPTS.values()),
        "concept_truth": {phrase: truth_column(phrase) for phrase in _store_phrases(classes)},
        "source": "cbm.demo: synthetic lesions labelled by Stolz's ABCD rule of dermoscopy (Nachbar et al. 1994)",
        "licence": "CC0-1.0 (generated images)",
        "obtain": (f"cbm demo make --out DIR --n {n} --confounding {confounding:g} --classes {classes} "
                   f"--seed {seed} --size {size}"),
        "split_rule": (
            "/".join(f"{round(f * 100)}" for f in SPLIT_FRACTIONS) + " " + "/".join(SPLITS) + ", classes "
            "balanced within each split; the cue follows the class with probability "
            f"{confounding:g} in train/val/test_id and against it in test; val chooses, test_id and test only measure"
        ),
    }


def _params(n: int, confounding: float, classes: int, seed: int, size: int) -> dict:
    return {"n": int(n), "confounding": float(confounding), "classes": int(classes), "seed": int(seed),
            "size": int(size), "render_version": RENDER_VERSION, "mask_version": MASK_VERSION, "format": _FORMAT}


def _read_record(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / _RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def make_dataset(
    out_dir: str | os.PathLike,
    n: int = 6000,
    confounding: float = 0.95,
    classes: int = 2,
    seed: int = 0,
    size: int = 128,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write (or reuse) a demo dataset in ``out_dir``; returns the path of its ``card.yaml``.

    Args:
        out_dir: the dataset folder; created if missing. It must be empty or a folder this
            function wrote before (one with other parameters only with ``overwrite``); a complete
            one is reused, after checking that every image is still there (a lost ``masks.json`` or
            ``concepts.json`` is written again).
        n: number of images (50/15/15/20 train/val/test_id/test).
        confounding: probability that the cue goes with the malignant class in train, val and
            test_id (reversed in test); 0.5 means no association.
        classes: 2 (benign nevus, melanoma) or 3 (benign nevus, suspicious lesion, melanoma).
        seed: the seed of every random draw.
        size: image width and height in pixels.
        workers: processes drawing images (default: all cores).
        progress: show a progress bar.
        overwrite: a folder holding a demo dataset of other parameters is cleared and redrawn
            (without it, such a folder is refused, so a mistyped parameter deletes nothing).
    """
    import yaml

    n, confounding, classes, seed, size = checked_parameters(n, confounding, classes, seed, size)
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers={workers!r} must be at least 1 (or None for all cores)")
    out_dir = Path(out_dir)
    params = _params(n, confounding, classes, seed, size)
    key = stable_hash(params)
    record = _read_record(out_dir)
    card_path = out_dir / "card.yaml"
    if record is not None and record.get("key") == key and record.get("complete") and card_path.is_file():
        missing = _missing_images(out_dir)
        if not missing:
            log.info("demo dataset %s is complete; reusing it", out_dir)
            card_text = yaml.safe_dump(_card(n, confounding, classes, seed, size), sort_keys=False, allow_unicode=True)
            if card_path.read_text(encoding="utf-8") != card_text:  # a card field added since it was drawn
                log.info("demo dataset %s: card.yaml rewritten from its parameters", out_dir)
                atomic_write_text(card_path, card_text)
            _restore_records(out_dir, classes)
            return card_path
        log.warning("demo dataset %s lacks %d of its images (e.g. %s); drawing them again", out_dir, len(missing), missing[0])
    _start(out_dir, record, {"key": key, "params": params, "complete": False}, overwrite)

    items = plan_dataset(n, confounding, classes, seed)
    for part in ("images", MASKS_FOLDER):
        for split in SPLITS:
            (out_dir / part / split).mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / MASKS_FOLDER / MASKS_RECORD, masks_record())
    with folder_lock(out_dir / "images", f"the demo dataset {out_dir}"):  # one process draws; another waits
        todo = [it for it in items if not all((out_dir / part / it.path).is_file() for part in ("images", MASKS_FOLDER))]
        if len(todo) < len(items):
            log.info("resuming: %d of %d images already drawn", len(items) - len(todo), len(items))
        _draw_all(todo, out_dir, size, workers, progress)

    phrases = _store_phrases(classes)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*MANIFEST_COLUMNS, *map(truth_column, phrases)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(it.row(phrases) for it in items)
    atomic_write_text(out_dir / "manifest.csv", buf.getvalue())
    card = _card(n, confounding, classes, seed, size)
    atomic_write_text(card_path, yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    _write_concepts(out_dir, classes)
    atomic_write_json(out_dir / _RECORD, {"key": key, "params": params, "complete": True})
    log.info("demo dataset: %d images in %s", n, out_dir)
    return card_path


def _restore_records(out_dir: Path, classes: int) -> None:
    """In a complete dataset being reused: write ``masks/masks.json`` again if it was lost or damaged
    (:func:`read_masks` needs it; the folder's key already says its masks are of this render and mask
    version), and ``concepts.json`` if it was lost (an existing store is left as it is: it may hold
    the user's own lists)."""
    record_path = out_dir / MASKS_FOLDER / MASKS_RECORD
    try:
        current = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        current = None
    if current != masks_record():
        log.info("demo dataset %s: %s written again", out_dir, record_path)
        atomic_write_json(record_path, masks_record())
    if not (out_dir / "concepts.json").exists():
        log.info("demo dataset %s: concepts.json written again", out_dir)
        _write_concepts(out_dir, classes)


def _start(out_dir: Path, record: dict | None, new_record: dict, overwrite: bool) -> None:
    """Make ``out_dir`` ready for drawing (see :func:`_clear_for`) and mark it incomplete; a file in
    the way or a folder that cannot be written is named with the fix."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file, not a folder; give --out (out_dir) a new or empty folder, "
                                 "or one holding an earlier demo dataset")
    _clear_for(out_dir, record, new_record, overwrite)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / _RECORD, new_record)
    except OSError as exc:
        raise OSError(f"cannot write the demo dataset into {out_dir} ({exc.strerror or exc}); choose a folder "
                      "you can write (--out)") from exc


def _clear_for(out_dir: Path, record: dict | None, new_record: dict, overwrite: bool) -> None:
    """Refuse a folder ``cbm demo make`` did not write, or one of other parameters unless ``overwrite``
    (then empty it of what it wrote); a folder of the same parameters is resumed as it is. One that
    differs only in the versions of the drawing or the layout is said to be from another cbm."""
    key = new_record["key"]
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return
    if record is None:
        raise FileExistsError(
            f"{out_dir} is not empty and was not written by `cbm demo make` (no {_RECORD}); choose an empty or new folder"
        )
    if record.get("key") == key:
        return
    old, new = record.get("params") or {}, new_record["params"]
    differ = {k: old.get(k) for k in new if old.get(k) != new[k]}
    if not overwrite and differ and set(differ) <= _VERSIONS:
        raise FileExistsError(
            f"{out_dir} holds this demo dataset as an earlier cbm drew it ({differ}; this cbm draws "
            f"{ {k: new[k] for k in differ} }); pass --overwrite (overwrite=True) to delete its images and draw it again"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} holds a demo dataset with other parameters ({old}); choose another "
            "folder, or pass --overwrite (overwrite=True) to delete its images and draw the new one there"
        )
    log.info("demo dataset %s has other parameters (%s); redrawing it", out_dir, record.get("params"))
    for child in ("images", MASKS_FOLDER, "manifest.csv", "card.yaml", "concepts.json", _RECORD):
        target = out_dir / child
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _missing_images(out_dir: Path) -> list[str]:
    """Image paths the folder's manifest lists that are not on disk (all of them if it has no manifest)."""
    try:
        with open(out_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
            paths = [row["path"] for row in csv.DictReader(fh)]
    except (OSError, KeyError):
        return ["manifest.csv"]
    return [p for p in paths if not all((out_dir / part / p).is_file() for part in ("images", MASKS_FOLDER))]


def _draw_all(items: list[DemoItem], folder: Path, size: int, workers: int | None, progress: bool) -> None:
    from tqdm import tqdm

    if not items:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, len(items) // 200 or 1))
    jobs = [(chunk, str(folder), size) for chunk in _chunks(items, 100)]
    with tqdm(total=len(items), desc="demo images", unit="img", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                bar.update(_draw_items(job))
        else:
            with ProcessPoolExecutor(workers, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
                for done in pool.map(_draw_items, jobs):
                    bar.update(done)


def _write_concepts(out_dir: Path, classes: int) -> None:
    """The curated concept list beside the card, through the concept store when it is available."""
    concepts = demo_concepts(classes)
    try:
        from cbm.concepts import save_curated
    except ImportError:  # the concept store is optional for the demo world itself
        log.debug("cbm.concepts.save_curated is unavailable; concepts.json not written")
        return
    save_curated(out_dir, concepts, note="the demo world's ABCD concepts, in the phrases demo-clip was trained on")


def cached_dataset(
    n: int = 6000, confounding: float = 0.95, classes: int = 2, seed: int = 0, size: int = 128, **kwargs
) -> Path:
    """The demo dataset with these parameters in cbm's cache (``$CBM_CACHE_DIR/demo/<key>``),
    drawn on first use; returns its ``card.yaml``."""
    n, confounding, classes, seed, size = checked_parameters(n, confounding, classes, seed, size)
    key = stable_hash(_params(n, confounding, classes, seed, size))
    return make_dataset(cache_dir("demo", f"{card_name(classes)}-{key}"), n, confounding, classes, seed, size, **kwargs)
