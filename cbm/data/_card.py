"""Data cards: one YAML file that says what a dataset is and where its images and manifest live.

A card (``data_cards/<name>/card.yaml``) names the classes (in label order, each with a one-line
clinical description), the modality the concept prompts use, the image root (overridable by an
environment variable), the manifest, the split and group columns, an optional confounder, and the
source, licence, how to obtain the images and how the splits were made. ``make_splits`` (optional)
is the machine-readable split rule ``cbm make-splits`` follows (see :mod:`cbm.data._splits`).

Cards are found by name among the built-in ``data_cards/`` folder and the folders listed in
``$CBM_CARDS_PATH`` (``os.pathsep``-separated; these come first, so a user card can shadow a
built-in one), or given as a path to a ``card.yaml`` or its folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbm.data._card_schema import TEXT_POSITIONS, CardFields, check_card_fields
from cbm.data._manifest import REQUIRED_SPLITS, Manifest, ManifestReport, read_manifest
from cbm.data._yaml import load_yaml
from cbm.errors import CardError, ManifestError, quote
from cbm.resources import resource_dir
from cbm.utils import unknown_name_message

__all__ = [
    "ClassInfo",
    "Confounder",
    "DataCard",
    "CardError",
    "load_card",
    "list_cards",
    "card_dirs",
    "BUILTIN_CARDS_DIR",
    "CARD_FILENAME",
]

log = logging.getLogger(__name__)

CARD_FILENAME = "card.yaml"
BUILTIN_CARDS_DIR = resource_dir("data_cards")  # the checkout's data_cards/, or the wheel's copy (cbm.resources)
@dataclass(frozen=True)
class ClassInfo:
    """One class of a card: its name (the label in manifests) and a one-line clinical description."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Confounder:
    """The spurious cue of a confounded variant.

    Attributes:
        column: the manifest column holding the cue's group (e.g. ``sex``).
        description: what the cue is and how it is confounded, in words.
        id_groups: class -> group its training/validation images come from (in-domain).
        ood_groups: class -> group its test images come from (out-of-domain, association reversed).
    """

    column: str
    description: str = ""
    id_groups: dict[str, str] = field(default_factory=dict)
    ood_groups: dict[str, str] = field(default_factory=dict)


@dataclass
class DataCard:
    """A dataset described by a card file. Build with :func:`load_card`.

    ``class_names`` gives the label order used everywhere downstream; ``manifest()`` reads and
    checks the manifest; ``dataset(split, transform)`` gives a torch Dataset of one split.
    """

    name: str
    modality: str
    task: str
    classes: tuple[ClassInfo, ...]
    manifest_path: Path
    path: Path  # the card.yaml
    title: str = ""
    image_root_setting: str = "."
    image_root_env: str | None = None
    split_column: str = "split"
    group_column: str | None = None
    confounder: Confounder | None = None
    nuisance_prompts: tuple[str, ...] = ()
    concept_truth: dict[str, str] = field(default_factory=dict)  # concept phrase -> manifest column
    source: str = ""
    licence: str = ""
    obtain: str = ""
    split_rule: str = ""
    make_splits: dict[str, Any] | None = None
    allow_outside_root: bool = False  # manifest paths may leave the image folder (absolute or ../)
    ordered_classes: bool = False  # the classes are grades of one scale, lowest first
    _cache: dict[tuple, Manifest] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"DataCard({self.name!r}, {len(self.classes)} classes, {self.modality}, {self.path})"

    @property
    def folder(self) -> Path:
        """The folder holding the card file (and its concepts.json)."""
        return self.path.parent

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def image_root(self) -> Path:
        """The image folder: ``$<image_root_env>`` when set (a relative value from the current
        directory, as the shell that set it reads it), else ``image_root`` from the card (a relative
        one from the card's folder)."""
        env = os.environ.get(self.image_root_env) if self.image_root_env else None
        if env:
            return Path(os.path.abspath(os.path.expanduser(env)))
        root = Path(os.path.expanduser(self.image_root_setting))
        return root if root.is_absolute() else Path(os.path.normpath(self.folder / root))

    def where_to_get_images(self) -> str:
        """One paragraph: where the images go and how to obtain them."""
        env = f" (or set ${self.image_root_env} to their folder)" if self.image_root_env else ""
        how = f" How to get them: {self.obtain.strip()}" if self.obtain else ""
        return f"Put the images under {self.image_root}{env}.{how}"

    def unset_root_variable(self) -> str | None:
        """A hint for missing images when the card's ``image_root_env`` variable is not set (else None)."""
        if self.image_root_env and not os.environ.get(self.image_root_env):
            return (f"${self.image_root_env}, which names the image folder, is not set, so images are looked for "
                    f"in {self.image_root}; if they are elsewhere, export {self.image_root_env}=/path/to/the/images")
        return None

    def missing_images_hint(self) -> str | None:
        """What to add to a report of image files the image folder lacks (None: nothing): the unset root
        variable, and for a card built by make-splits, that a manifest written before the images were
        there names them as the metadata does, not where they were unpacked."""
        hints = [self.unset_root_variable() or ""]
        if self.make_splits:
            card = card_command_name(self.name, self.folder)
            hints.append(f"a manifest written by `cbm make-splits --no-image-check` names each image as the metadata "
                         f"does; once the images are there, run `cbm make-splits {card} --metadata ... --force` again: "
                         f"it finds each one by name in the subfolders of {self.image_root} and keeps every image "
                         f"in the split it had")
        return "; ".join(h for h in hints if h) or None

    def manifest(self, strict: bool = False, check_files: bool = True,
                 needed_splits: Sequence[str] | None = None) -> Manifest:
        """Read and check the card's manifest (see :func:`cbm.data.read_manifest`; ``needed_splits``:
        those whose absence is a problem, by default the ones a run needs; ``()`` to explain a card
        of test images alone).

        Raises:
            FileNotFoundError: no manifest yet (the message says how to build it) or no image folder.
            ManifestError: with ``strict=True``, any problem in the rows (all listed together).
        """
        if not self.manifest_path.is_file():
            raise FileNotFoundError(self._no_manifest_message())
        needed = REQUIRED_SPLITS if needed_splits is None else tuple(needed_splits)
        key = (strict, check_files, needed, str(self.image_root), self.manifest_path.stat().st_mtime_ns)
        if key not in self._cache:
            try:
                manifest = read_manifest(
                    self.manifest_path,
                    class_names=self.class_names,
                    image_root=self.image_root,
                    split_column=self.split_column,
                    group_column=self.group_column,
                    check_files=check_files,
                    strict=strict,
                    root_hint=self.missing_images_hint(),
                    allow_outside_root=self.allow_outside_root,
                    min_per_class=(self.make_splits or {}).get("min_per_class"),
                    truth_columns=list(dict.fromkeys(self.concept_truth.values())),
                    needed_splits=needed,
                    confounder=(c.column, c.id_groups, c.ood_groups) if (c := self.confounder) else None,
                )
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc}. {self.where_to_get_images()}") from None
            self._cache.clear()
            self._cache[key] = manifest
        return self._cache[key]

    def validate(self, check_files: bool = True) -> ManifestReport:
        """Every problem of the manifest, without raising for row problems (a leak between splits
        and paths outside the image folder included, which :meth:`manifest` raises for)."""
        try:
            manifest = self.manifest(strict=False, check_files=check_files)
        except ManifestError as exc:
            if exc.report is None:  # the file's structure, not its rows
                raise
            return exc.report
        assert manifest.report is not None
        return manifest.report

    def dataset(self, split: str, transform: Callable[[Any], Any] | None = None, *, frame: str | int = "middle", strict: bool = False):
        """A :class:`~cbm.data.ManifestDataset` of one split (``train``, ``val``, ``test``, ...)."""
        from cbm.data._dataset import ManifestDataset

        manifest = self.manifest(strict=strict)
        part = manifest.split(split)
        if not len(part):
            raise ValueError(
                f"card {self.name!r} has no images in split {split!r} (manifest {self.manifest_path}); "
                f"splits present: {', '.join(manifest.split_names()) or 'none'}"
            )
        return ManifestDataset(part, transform=transform, frame=frame)

    def to_dict(self) -> dict[str, Any]:
        """The card's fields as plain data (for run records)."""
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "modality": self.modality,
            "task": self.task,
            "classes": [{"name": c.name, "description": c.description} for c in self.classes],
            "image_root": self.image_root_setting,
            "image_root_env": self.image_root_env,
            "manifest": str(self.manifest_path),
            "split_column": self.split_column,
            "group_column": self.group_column,
            "confounder": None,
            "nuisance_prompts": list(self.nuisance_prompts),
            "concept_truth": dict(self.concept_truth),
            "source": self.source,
            "licence": self.licence,
            "allow_outside_root": self.allow_outside_root,
            "ordered_classes": self.ordered_classes,
        }
        if self.confounder:
            c = self.confounder
            out["confounder"] = {"column": c.column, "description": c.description, "id_groups": c.id_groups, "ood_groups": c.ood_groups}
        return out

    def _no_manifest_message(self) -> str:
        build = (
            f"Build it from the source's metadata with `cbm make-splits {self.name} --metadata <file>`"
            + (f" (metadata: {self.make_splits.get('metadata_help') or self.make_splits.get('metadata')})" if self.make_splits else "")
            if self.make_splits
            else "Write it as a CSV with the columns path,label,split (path relative to the image folder)"
        )
        return f"card {self.name!r} has no manifest yet at {self.manifest_path}. {build}. {self.where_to_get_images()}"


# ---------------------------------------------------------------------------- finding cards
def card_dirs() -> list[Path]:
    """Folders searched for cards by name: ``$CBM_CARDS_PATH`` entries, then the built-in folder."""
    extra = [Path(p).expanduser() for p in os.environ.get("CBM_CARDS_PATH", "").split(os.pathsep) if p.strip()]
    return [*extra, BUILTIN_CARDS_DIR]


def _index() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for base in card_dirs():
        if not base.is_dir():
            continue
        if (base / CARD_FILENAME).is_file():  # a path entry may be a card folder itself
            found.setdefault(base.name, base / CARD_FILENAME)
        for sub in sorted(base.iterdir()):
            if (sub / CARD_FILENAME).is_file():
                found.setdefault(sub.name, sub / CARD_FILENAME)
    return found


def card_command_name(name: str, folder: str | os.PathLike) -> str:
    """How a command line names the card called ``name`` in ``folder``: by its name where that finds this
    card (``cbm cards`` lists it), else by its folder."""
    found = _index().get(name)
    return name if found is not None and found.parent.resolve() == Path(folder).resolve() else str(folder)


def list_cards() -> list[str]:
    """Names of every card found (built-in and ``$CBM_CARDS_PATH``), sorted."""
    return sorted(_index())


def load_card(name_or_path: str | os.PathLike | DataCard) -> DataCard:
    """A validated :class:`DataCard` from a card name, a ``card.yaml`` path or its folder.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an unknown name (the message lists the cards and the closest match), or a
            :class:`CardError` naming the file, the field, the bad value and the fix.
    """
    if isinstance(name_or_path, DataCard):
        return name_or_path
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            path = path / CARD_FILENAME
            if not path.is_file():
                raise FileNotFoundError(f"no {CARD_FILENAME} in folder {path.parent}; a card folder holds card.yaml (see data_cards/ham10000)")
            return _parse_card(path)
        if path.is_file():
            return _parse_card(path)
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission
        if isinstance(exc, (FileNotFoundError, CardError)):
            raise
        raise CardError(path, f"cannot be opened ({type(exc).__name__}: {quote(str(exc))})",
                        "Check the card's path and its permissions") from None
    if os.sep in text or "/" in text or text.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"data card not found: {path}. Check the path; a card is a card.yaml, its folder, "
                                "or a card name (`cbm cards` lists them)")
    index = _index()
    if text not in index:
        named = _folders_named(text, index)
        hint = (f" The card in {named[0].parent} has {quote(text, 80)} in its name: field, but a card is found by its "
                f"folder's name: use {quote(named[0].parent.name, 80)}, or rename the folder." if named else "")
        raise ValueError(
            unknown_name_message("data card", quote(text, 80)[1:-1], index) + hint
            + " Cards are searched in $CBM_CARDS_PATH and the built-in data_cards folder; a path to a card.yaml works too."
        )
    return _parse_card(index[text])


def _folders_named(name: str, index: dict[str, Path]) -> list[Path]:
    """The cards of ``index`` whose ``name:`` field is ``name`` (a card that cannot be read is passed over)."""
    named = []
    for path in index.values():
        try:
            raw = load_yaml(path)
        except (OSError, ValueError):
            continue
        if isinstance(raw, dict) and raw.get("name") == name:
            named.append(path)
    return named


# ---------------------------------------------------------------------------- validation
def _parse_card(path: Path) -> DataCard:
    raw = load_yaml(path, text_at=TEXT_POSITIONS)
    if not isinstance(raw, dict):
        raise CardError(path, f"must be a mapping of fields, not {type(raw).__name__}", "See data_cards/ham10000/card.yaml for the layout")
    fields = check_card_fields(raw, path)
    classes = [ClassInfo(c.name, c.description) for c in fields.classes]
    names = [c.name for c in classes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CardError(path, f"repeats the class name(s) {quote(', '.join(dupes))[1:-1]}", "Give every class a distinct name",
                        field="classes")
    if fields.task == "binary" and len(classes) != 2:
        raise CardError(path, f"lists {len(classes)} classes for a binary task", "A binary card has exactly 2 classes", field="classes")
    if len(classes) < 2:
        raise CardError(path, f"lists only {len(classes)} class", "A classifier needs at least 2 classes", field="classes")
    confounder = _confounder(path, fields, names)
    if fields.make_splits is not None:
        from cbm.data._split_spec import parse_split_spec

        try:
            parse_split_spec(fields.make_splits, names)
        except ValueError as exc:
            raise CardError(path, str(exc), "See cbm/data/_split_rule.py for the split rule format", field="make_splits") from None
    manifest = Path(os.path.expanduser(fields.manifest))
    card = DataCard(
        name=fields.name,
        title=fields.title or fields.name,
        modality=fields.modality,
        task=fields.task,
        classes=tuple(classes),
        manifest_path=manifest if manifest.is_absolute() else Path(os.path.abspath(path)).parent / manifest,
        path=path.resolve(),
        image_root_setting=fields.image_root or ".",
        image_root_env=fields.image_root_env,
        split_column=fields.split_column or "split",
        group_column=fields.group_column or (confounder.column if confounder else None),
        confounder=confounder,
        nuisance_prompts=tuple(fields.nuisance_prompts or ()),
        concept_truth=dict(fields.concept_truth or {}),
        source=fields.source or "",
        licence=fields.licence or "",
        obtain=fields.obtain or "",
        split_rule=fields.split_rule or "",
        make_splits=dict(fields.make_splits) if fields.make_splits else None,
        allow_outside_root=fields.allow_outside_root,
        ordered_classes=fields.ordered_classes,
    )
    if path.parent.name != card.name and path.parent.resolve() != BUILTIN_CARDS_DIR:
        log.debug("card %s is named %r but lives in folder %r", path, card.name, path.parent.name)
    return card


def _confounder(path: Path, fields: CardFields, class_names: list[str]) -> Confounder | None:
    c = fields.confounder
    if c is None:
        return None
    for key in ("id_groups", "ood_groups"):
        groups = getattr(c, key)
        if any(k not in class_names for k in groups):
            raise CardError(
                path, f"has the bad value {quote(groups)}",
                f"Map each class ({quote(', '.join(class_names))[1:-1]}) to the group its images come from",
                field=f"confounder.{key}",
            )
    return Confounder(c.column, c.description, dict(c.id_groups), dict(c.ood_groups))
