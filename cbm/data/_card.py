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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cbm.data._manifest import Manifest, ManifestReport, read_manifest
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
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TASKS = ("multiclass", "binary")

# field -> (required, one-line help used in error messages)
_FIELDS: dict[str, tuple[bool, str]] = {
    "name": (True, "a lower-case id made of a-z, 0-9, '_' and '-', e.g. ham10000"),
    "title": (False, "one line for people"),
    "modality": (True, "words the concept prompts use, e.g. 'dermoscopy' or 'chest x-ray'"),
    "task": (True, "multiclass or binary"),
    "classes": (True, "a list of {name, description}, in label order"),
    "image_root": (False, "the image folder, relative to the card folder or absolute (default: the card folder)"),
    "image_root_env": (False, "an environment variable that overrides image_root when set"),
    "manifest": (True, "the manifest CSV, relative to the card folder or absolute"),
    "split_column": (False, "the manifest column holding train/val/test (default: split)"),
    "group_column": (False, "an optional manifest column naming a group (hospital, sex, ...)"),
    "confounder": (False, "{column, description, id_groups, ood_groups} for a confounded variant"),
    "nuisance_prompts": (False, "a list of image artefacts no concept score may follow, e.g. [ruler, ink marking]"),
    "concept_truth": (False, "{concept phrase: manifest column} holding each concept's annotated truth (1/0, yes/no, "
                      "true/false, present/absent; empty = not annotated)"),
    "source": (False, "citation or URL of the dataset"),
    "licence": (False, "the dataset's licence"),
    "obtain": (False, "how to get the images"),
    "split_rule": (False, "how train/val/test were built, in words"),
    "make_splits": (False, "the machine-readable split rule used by `cbm make-splits`"),
}


class CardError(ValueError):
    """An invalid card; the message names the file, the field, the bad value and the fix."""

    def __init__(self, path: Path | str, field_name: str | None, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.field = field_name
        where = f" field {field_name!r}" if field_name else ""
        super().__init__(f"data card {self.path}:{where} {problem}. {fix}")


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
        """The image folder: ``$<image_root_env>`` when set, else ``image_root`` from the card."""
        env = os.environ.get(self.image_root_env) if self.image_root_env else None
        root = Path(os.path.expanduser(env or self.image_root_setting))
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

    def manifest(self, strict: bool = False, check_files: bool = True) -> Manifest:
        """Read and check the card's manifest (see :func:`cbm.data.read_manifest`).

        Raises:
            FileNotFoundError: no manifest yet (the message says how to build it) or no image folder.
            ManifestError: with ``strict=True``, any problem in the rows (all listed together).
        """
        if not self.manifest_path.is_file():
            raise FileNotFoundError(self._no_manifest_message())
        key = (strict, check_files, str(self.image_root), self.manifest_path.stat().st_mtime_ns)
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
                    root_hint=self.unset_root_variable(),
                )
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc}. {self.where_to_get_images()}") from None
            self._cache.clear()
            self._cache[key] = manifest
        return self._cache[key]

    def validate(self, check_files: bool = True) -> ManifestReport:
        """Every problem of the manifest, without raising for row problems."""
        manifest = self.manifest(strict=False, check_files=check_files)
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
    if path.is_dir():
        path = path / CARD_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CARD_FILENAME} in folder {path.parent}; a card folder holds card.yaml (see data_cards/ham10000)")
        return _parse_card(path)
    if path.is_file():
        return _parse_card(path)
    if os.sep in text or "/" in text or text.endswith((".yaml", ".yml")):
        raise FileNotFoundError(f"data card not found: {path}")
    index = _index()
    if text not in index:
        raise ValueError(
            unknown_name_message("data card", text, index)
            + " Cards are searched in $CBM_CARDS_PATH and the built-in data_cards folder; a path to a card.yaml works too."
        )
    return _parse_card(index[text])


# ---------------------------------------------------------------------------- validation
def _parse_card(path: Path) -> DataCard:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CardError(path, None, f"is not valid YAML ({exc})", "Fix the YAML syntax (indentation, quotes, colons)") from None
    except UnicodeDecodeError:
        raise CardError(path, None, "is not UTF-8 text", "Save the card as UTF-8") from None
    if not isinstance(raw, Mapping):
        raise CardError(path, None, f"must be a mapping of fields, not {type(raw).__name__}", "See data_cards/ham10000/card.yaml for the layout")
    unknown = [k for k in raw if k not in _FIELDS]
    if unknown:
        raise CardError(path, str(unknown[0]), "is not a card field",
                        unknown_name_message("field", str(unknown[0]), _FIELDS, lead=False))
    for key, (required, help_text) in _FIELDS.items():
        if required and (raw.get(key) is None or raw.get(key) == ""):
            raise CardError(path, key, "is missing", f"Add it: {help_text}")

    name = _text(path, raw, "name")
    if not _NAME_RE.match(name):
        raise CardError(path, "name", f"has the bad value {name!r}", f"Use {_FIELDS['name'][1]}")
    task = _text(path, raw, "task")
    if task not in _TASKS:
        raise CardError(path, "task", f"has the bad value {task!r}", "Use multiclass or binary")
    classes = _classes(path, raw.get("classes"))
    if task == "binary" and len(classes) != 2:
        raise CardError(path, "classes", f"lists {len(classes)} classes for a binary task", "A binary card has exactly 2 classes")
    names = [c.name for c in classes]

    manifest = Path(os.path.expanduser(_text(path, raw, "manifest")))
    confounder = _confounder(path, raw.get("confounder"), names)
    group_column = _text(path, raw, "group_column", required=False) or (confounder.column if confounder else None)
    make_splits = raw.get("make_splits")
    if make_splits is not None:
        from cbm.data._splits import parse_split_spec

        try:
            parse_split_spec(make_splits, names)
        except ValueError as exc:
            raise CardError(path, "make_splits", str(exc), "See cbm/data/_splits.py for the split rule format") from None
    card = DataCard(
        name=name,
        title=_text(path, raw, "title", required=False) or name,
        modality=_text(path, raw, "modality"),
        task=task,
        classes=tuple(classes),
        manifest_path=manifest if manifest.is_absolute() else path.parent / manifest,
        path=path.resolve(),
        image_root_setting=_text(path, raw, "image_root", required=False) or ".",
        image_root_env=_text(path, raw, "image_root_env", required=False) or None,
        split_column=_text(path, raw, "split_column", required=False) or "split",
        group_column=group_column,
        confounder=confounder,
        nuisance_prompts=_prompts(path, raw.get("nuisance_prompts")),
        concept_truth=_concept_truth(path, raw.get("concept_truth")),
        source=_text(path, raw, "source", required=False),
        licence=_text(path, raw, "licence", required=False),
        obtain=_text(path, raw, "obtain", required=False),
        split_rule=_text(path, raw, "split_rule", required=False),
        make_splits=dict(make_splits) if make_splits else None,
    )
    if card.image_root_env and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", card.image_root_env):
        raise CardError(path, "image_root_env", f"has the bad value {card.image_root_env!r}", "Use an environment variable name such as CBM_HAM10000_ROOT")
    if path.parent.name != name and path.parent.resolve() != BUILTIN_CARDS_DIR:
        log.debug("card %s is named %r but lives in folder %r", path, name, path.parent.name)
    return card


def _text(path: Path, raw: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            raise CardError(path, key, "is missing", f"Add it: {_FIELDS[key][1]}")
        return ""
    if isinstance(value, (dict, list)):
        raise CardError(path, key, f"has the bad value {value!r} (a {type(value).__name__})", f"Use a single string: {_FIELDS[key][1]}")
    return str(value).strip()


def _classes(path: Path, value: Any) -> list[ClassInfo]:
    if not isinstance(value, list) or not value:
        raise CardError(path, "classes", f"has the bad value {value!r}", "Give a non-empty list of {name, description} entries, in label order")
    out: list[ClassInfo] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or not str(item.get("name") or "").strip():
            raise CardError(path, f"classes[{i}]", f"has the bad value {item!r}", "Each class is {name: ..., description: ...}")
        extra = [k for k in item if k not in ("name", "description")]
        if extra:
            raise CardError(path, f"classes[{i}].{extra[0]}", "is not a class field", "A class has only name and description")
        out.append(ClassInfo(str(item["name"]).strip(), str(item.get("description") or "").strip()))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CardError(path, "classes", f"repeats the class name(s) {', '.join(dupes)}", "Give every class a distinct name")
    if len(out) < 2:
        raise CardError(path, "classes", f"lists only {len(out)} class", "A classifier needs at least 2 classes")
    return out


def _prompts(path: Path, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise CardError(path, "nuisance_prompts", f"has the bad value {value!r}", "Use a list of short phrases, e.g. [ruler, ink marking]")
    return tuple(v.strip() for v in value)


def _concept_truth(path: Path, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k.strip() and isinstance(v, str) and v.strip() for k, v in value.items()
    ):
        raise CardError(
            path, "concept_truth", f"has the bad value {value!r}",
            "Map each annotated concept phrase to the manifest column holding its truth, e.g. "
            "{'irregular border': 'truth_irregular_border'}",
        )
    return {k.strip(): v.strip() for k, v in value.items()}


def _confounder(path: Path, value: Any, class_names: list[str]) -> Confounder | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not value.get("column"):
        raise CardError(path, "confounder", f"has the bad value {value!r}", "Use {column, description, id_groups, ood_groups} or null")
    extra = [k for k in value if k not in ("column", "description", "id_groups", "ood_groups")]
    if extra:
        raise CardError(path, f"confounder.{extra[0]}", "is not a confounder field", "Use column, description, id_groups and ood_groups")
    groups: dict[str, dict[str, str]] = {}
    for key in ("id_groups", "ood_groups"):
        g = value.get(key) or {}
        if not isinstance(g, Mapping) or any(k not in class_names for k in g):
            raise CardError(
                path, f"confounder.{key}", f"has the bad value {g!r}",
                f"Map each class ({', '.join(class_names)}) to the group its images come from",
            )
        groups[key] = {str(k): str(v) for k, v in g.items()}
    return Confounder(str(value["column"]), str(value.get("description") or "").strip(), groups["id_groups"], groups["ood_groups"])
