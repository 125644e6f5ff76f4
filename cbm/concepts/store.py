"""The concept store: ``concepts.json`` beside a card's ``card.yaml``, and :class:`ConceptSet`.

The file (format ``cbm-concepts/1``)::

    {
      "format": "cbm-concepts/1",
      "card": "ham10000", "modality": "dermoscopy",
      "classes": ["melanoma", ...],                  # card order when last written
      "updated": "2025-01-01T00:00:00+00:00",
      "filter": {"config": {...}, "embedder": null, "key": "...", "inputs": "..."},
      "by_class": {
        "melanoma": {
          "source": "llm",                           # or "curated"
          "concepts": ["irregular border", ...],     # the kept concepts: what everything downstream uses
          "removed": [{"concept": ..., "rule": ..., "reason": ...}],
          "proposed": [...],                         # the LLM's phrases, before filtering
          "digest": "...",                           # hash of "concepts" as written: a hand edit shows
          "llm": {"prompt_version", "model", "server_host", "temperature", "seed", "date",
                  "request_key", "raw_response", ...}
        },
        "nevus": {"source": "curated", "concepts": [...], "note": "ABCD rule"}
      },
      "rejected": {                                  # only while a class's last answer was unusable
        "melanoma": {"reason": "...", "raw_response": "...", "model": "...", "date": "..."}
      }
    }

Hand edits are welcome: set ``"source": "curated"`` on a class (or just edit its ``concepts``:
a list that no longer matches its ``digest`` is taken as curated), and no later run replaces it
without being told to (``replace_curated``). A plain ``{"class": ["concept", ...]}`` file, as
LaBo ships, is read as a fully curated store.

Writes are atomic (temp file + ``os.replace``) and made under a lock on the store's folder, so
concurrent runs leave a valid file and the later one finds the earlier one's answers.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import json
import logging
import os
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbm.concepts._store_schema import check_store, json_path
from cbm.errors import ConceptStoreError, quote
from cbm.utils import atomic_write_json, folder_lock, stable_hash

__all__ = [
    "STORE_FORMAT",
    "STORE_FILENAME",
    "CardInfo",
    "ConceptSet",
    "card_info",
    "read_store",
    "write_store",
    "store_lock",
    "load_concepts",
    "save_curated",
]

log = logging.getLogger(__name__)

STORE_FORMAT = "cbm-concepts/1"
STORE_FILENAME = "concepts.json"
# what ConceptSet.llm carries from a class's "llm" record (the raw answer and usage stay in the file)
_PROVENANCE = ("model", "served_model", "response_model", "server_host", "prompt_version", "temperature", "seed", "date")


@dataclass(frozen=True)
class CardInfo:
    """What the concept stage needs from a data card."""

    name: str
    modality: str
    classes: tuple[tuple[str, str | None], ...]  # (name, description) in card (label index) order
    folder: Path | None  # where card.yaml is; the store goes beside it

    @property
    def class_names(self) -> list[str]:
        """Class names in card order."""
        return [name for name, _ in self.classes]

    @property
    def store_path(self) -> Path:
        """``<card folder>/concepts.json``."""
        if self.folder is None:
            raise ValueError(f"card {self.name!r} has no folder on disk, so its concept store has no place; pass store_path")
        return self.folder / STORE_FILENAME


def _card_folder(card: Any) -> Path | None:
    for attr in ("folder", "root", "card_dir", "directory", "path"):
        value = getattr(card, attr, None)
        if value is None or callable(value):
            continue
        path = Path(value)
        return path.parent if path.suffix in (".yaml", ".yml") else path
    return None


def card_info(card: Any) -> CardInfo:
    """A :class:`CardInfo` from a ``cbm.data.DataCard``, a card name or a card folder/``card.yaml`` path."""
    if isinstance(card, CardInfo):
        return card
    if isinstance(card, (str, os.PathLike)):
        from cbm.data import load_card

        card = load_card(card)
    try:
        classes = tuple((c.name, getattr(c, "description", None)) for c in card.classes)
    except (AttributeError, TypeError):
        classes = tuple((name, None) for name in card.class_names)
    return CardInfo(name=card.name, modality=card.modality, classes=classes, folder=_card_folder(card))


@dataclass
class ConceptSet:
    """The concepts of a card's classes, as the store keeps them.

    Attributes:
        classes: class names in card order (the head's label order).
        by_class: class -> its kept concepts (a concept may belong to several classes).
        concepts: every kept concept once, in order of first appearance (class order, then rank).
        sources: class -> ``"curated"``, ``"llm"`` or ``"given"`` (built in code, no store).
        removed: class -> concepts the filter removed, each ``{"concept", "rule", "reason"}``.
        llm: class -> how its list was generated (model, server host, prompt version, temperature,
            seed, date), for LLM lists; the raw answers stay in the store.
        path: the store file, if read from or written to one.
    """

    classes: list[str]
    by_class: dict[str, list[str]]
    sources: dict[str, str] = field(default_factory=dict)
    removed: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    llm: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None
    concepts: list[str] = field(init=False)

    def __post_init__(self) -> None:
        missing = [c for c in self.classes if c not in self.by_class]
        if missing:
            extra = [c for c in self.by_class if c not in self.classes]
            raise ValueError(f"ConceptSet: no concept list for classes {missing}: give one for every class of the card "
                             f"({self.classes})" + (f"; {extra} are not its classes (a typo?)" if extra else ""))
        self.by_class = {c: list(self.by_class[c]) for c in self.classes}
        self.concepts = list(dict.fromkeys(c for name in self.classes for c in self.by_class[name]))

    @classmethod
    def from_mapping(cls, classes: Sequence[str], by_class: Mapping[str, Sequence[str]]) -> ConceptSet:
        """A set built in code: ``{class: [concepts]}`` for every class in ``classes`` (phrases trimmed)."""
        if isinstance(by_class, Mapping):
            unknown = [c for c in by_class if c not in classes]
            if unknown:
                raise ValueError(f"concepts given for classes {unknown} that are not among {list(classes)}")
        lists = {name: [phrases] if isinstance(phrases, str) else phrases  # a string is one phrase, not letters
                 for name, phrases in by_class.items()}
        tidy = {
            str(name): list(dict.fromkeys(" ".join(str(p).split()) for p in phrases if str(p).strip()))
            for name, phrases in lists.items()
        }
        return cls(classes=list(classes), by_class=tidy, sources={c: "given" for c in classes})

    def __len__(self) -> int:
        return len(self.concepts)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"ConceptSet({len(self.classes)} classes, {len(self.concepts)} concepts{where})"

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the lists come from, JSON-ready: store path, content key, and per class its source
        (and for LLM lists the model, server host, prompt version, temperature, seed and date)."""
        return {
            "store": str(self.path) if self.path else None,
            "key": self.key,
            "classes": {c: {"source": self.sources.get(c, "given"), **self.llm.get(c, {})} for c in self.classes},
        }

    @property
    def key(self) -> str:
        """Content hash of the classes and their concepts (for downstream caches)."""
        return stable_hash({"classes": self.classes, "by_class": self.by_class})

    def prior(self) -> np.ndarray:
        """Multi-hot class x concept matrix ``(K, C)`` float32: 1 where the concept belongs to the class.

        A concept proposed for several classes is 1 in each of their rows (not only the first's).
        """
        index = {c: j for j, c in enumerate(self.concepts)}
        prior = np.zeros((len(self.classes), len(self.concepts)), dtype=np.float32)
        for i, name in enumerate(self.classes):
            for concept in self.by_class[name]:
                prior[i, index[concept]] = 1.0
        return prior


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _concept_list(value: Any, path: Path, loc: list[str | int]) -> list[str]:
    """``value`` if it is a list of distinct, non-empty phrases; else :class:`ConceptStoreError` at ``loc``."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ConceptStoreError(path, f"must be a list of strings, not {quote(value, 80)}",
                                "Give a list of short phrases (strings), most important first", field=json_path(loc))
    seen: dict[str, int] = {}
    for i, phrase in enumerate(value):
        key = " ".join(phrase.lower().split())
        if not key:
            raise ConceptStoreError(path, "is an empty phrase", "Remove it", field=json_path([*loc, i]))
        if key in seen:
            raise ConceptStoreError(path, f"lists {quote(phrase, 80)} again (as {quote(value[seen[key]], 80)} at "
                                    f"[{seen[key]}] too)", "Keep one of the two", field=json_path([*loc, i]))
        seen[key] = i
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]], path: Path) -> dict:
    """``json.loads`` hook: a key written twice in one object is an error (JSON would keep the last)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ConceptStoreError(path, f"has the key {quote(key, 80)} twice in one object",
                                    "Merge the two entries into one")
        out[key] = value
    return out


def _parse(path: Path) -> Any:
    """The JSON value in the file at ``path`` (``FileNotFoundError`` if none), or :class:`ConceptStoreError`."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # an editor's byte-order mark is fine
    except UnicodeDecodeError as exc:
        raise ConceptStoreError(path, f"is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})",
                                "Save the file as UTF-8") from None
    fix = "Fix the file by hand, restore it from version control, or delete it to generate a new one"
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _no_repeated_keys(pairs, path))
    except json.JSONDecodeError as exc:
        raise ConceptStoreError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                                fix) from None
    except RecursionError:
        raise ConceptStoreError(path, "is not a concept store: its JSON is nested too deeply", fix) from None
    except ConceptStoreError:
        raise
    except ValueError as exc:  # e.g. an integer longer than Python reads
        raise ConceptStoreError(path, f"holds a value JSON cannot give ({exc})", fix) from None


def read_store(path: str | os.PathLike) -> dict | None:
    """The store document at ``path`` (``None`` if there is no file), checked and normalised.

    Hand-edited lists (``concepts`` no longer matching their ``digest``) come back marked curated.

    Raises:
        ConceptStoreError: the file is not UTF-8, not JSON, or breaks the format (names the field).
    """
    path = Path(path)
    try:
        doc = _parse(path)
    except FileNotFoundError:
        return None
    if not isinstance(doc, dict):
        raise ConceptStoreError(path, f"must hold a JSON object, not {type(doc).__name__}",
                                'Write {"format": "cbm-concepts/1", "by_class": {...}} (see cbm/concepts/store.py)')
    if "format" not in doc and "by_class" in doc:
        raise ConceptStoreError(path, "is missing", f'Add "format": "{STORE_FORMAT}"', field="$.format")
    if "format" not in doc:  # a plain {"class": [concepts]} file, as LaBo ships: all curated
        by_class = {name: {"source": "curated", "concepts": _concept_list(v, path, [name])} for name, v in doc.items()}
        return {"format": STORE_FORMAT, "classes": list(by_class), "by_class": by_class}
    if doc["format"] != STORE_FORMAT:
        raise ConceptStoreError(path, f"is {quote(doc['format'], 80)}; this version of cbm reads {STORE_FORMAT!r}",
                                "Use a cbm that reads that format, or convert the file", field="$.format")
    check_store(path, doc)
    by_class = doc["by_class"]
    for name, entry in by_class.items():
        _concept_list(entry["concepts"], path, ["by_class", name, "concepts"])
        source = entry.setdefault("source", "curated")
        if source == "llm" and entry.get("digest") not in (None, stable_hash(entry["concepts"])):
            where = f"concept store {path}, class {name!r}"
            log.warning("%s: the concept list was edited by hand; keeping it as curated", where)
            entry["source"] = "curated"
            entry["note"] = entry.get("note") or f"hand-edited after generation by {entry.get('llm', {}).get('model')}"
        elif source == "llm":
            entry.setdefault("proposed", list(entry["concepts"]))  # filtering starts from the kept list then
    doc.setdefault("classes", list(by_class))
    return doc


def write_store(path: str | os.PathLike, doc: dict) -> Path:
    """Write the store atomically (class entries in ``doc['classes']`` order, digests refreshed)."""
    by_class = doc["by_class"]
    order = [c for c in doc["classes"] if c in by_class] + [c for c in by_class if c not in doc["classes"]]
    for entry in by_class.values():
        if entry.get("source") == "llm":
            entry["digest"] = stable_hash(entry["concepts"])
    head = ("card", "modality", "classes", "updated", "filter")
    out = {"format": STORE_FORMAT, **{k: doc[k] for k in head if k in doc}}
    out.update({k: v for k, v in doc.items() if k not in (*head, "format", "by_class")})
    out["by_class"] = {c: by_class[c] for c in order}
    try:
        return atomic_write_json(path, out)
    except OSError as exc:
        raise RuntimeError(
            f"cannot write the concept store {str(path)!r} ({exc.strerror or exc}); make the folder writable "
            "or write the store elsewhere (store_path=..., `cbm concepts --store PATH`)"
        ) from None


def store_lock(path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock for writing the store at ``path``: an ``flock`` on its folder.

    Locking the folder itself leaves no lock file behind in card folders. Other cbm processes
    writing a store there wait; readers never need the lock (writes are atomic).
    """
    return folder_lock(Path(path).parent, f"the concept store {path}")


def new_store(info: CardInfo) -> dict:
    """An empty store document for a card."""
    return {"format": STORE_FORMAT, "card": info.name, "modality": info.modality,
            "classes": info.class_names, "by_class": {}}


def concept_set_from_store(doc: dict, classes: Sequence[str] | None, path: Path | None, *,
                           card: CardInfo | None = None, warned: Collection[str] = ()) -> ConceptSet:
    """The :class:`ConceptSet` of ``classes`` (default: the store's own) in a store document.

    ``card`` is the card the store belongs to, named in the fix of a missing class; a class with no
    concepts is warned of unless it is in ``warned`` (its caller said so already).
    """
    classes = list(classes) if classes is not None else list(doc["classes"])
    # a class written in another Unicode form (a macOS editor decomposes "nævus") is the same class
    nfc = {unicodedata.normalize("NFC", c): c for c in classes}
    by_class = {nfc.get(unicodedata.normalize("NFC", k), k): v for k, v in doc["by_class"].items()}
    missing = [c for c in classes if c not in by_class]
    extra = [c for c in by_class if c not in classes]
    if missing:
        ref = card_reference(card) if card is not None else doc.get("card") or "CARD"
        renames = [(c, difflib.get_close_matches(c, missing, n=1, cutoff=0.6)) for c in extra]
        rename = "".join(f"{quote(c, 60)} is not a class of the card: did you mean {quote(close[0], 60)}? "
                         for c, close in renames if close)
        run = f"run `cbm concepts {ref} --llm PRESET` to generate them, or add them by hand"
        raise ConceptStoreError(
            path, f"has no concept list for classes {quote(missing)} (it has {quote(list(by_class))})",
            f"{rename}Rename it in the store, or {run}" if rename else run[0].upper() + run[1:], field="$.by_class",
        )
    if extra:
        log.warning("concept store %s lists classes the card does not have, ignored: %s", path, extra)
    for name in classes:
        if not by_class[name]["concepts"] and name not in warned:
            log.warning("concept store %s: class %r has no concepts", path, name)
    return ConceptSet(
        classes=classes,
        by_class={c: by_class[c]["concepts"] for c in classes},
        sources={c: by_class[c]["source"] for c in classes},
        removed={c: list(by_class[c].get("removed", [])) for c in classes},
        llm={c: {k: v for k, v in by_class[c]["llm"].items() if k in _PROVENANCE} for c in classes if "llm" in by_class[c]},
        path=path,
    )


def load_concepts(card: Any, *, store_path: str | os.PathLike | None = None) -> ConceptSet:
    """The concepts of a card from its store, without asking any LLM.

    Args:
        card: a ``cbm.data.DataCard``, a card name, a card folder or ``card.yaml`` path, or the path
            of a ``concepts.json`` itself (then its own class order is used).
        store_path: read this file instead of the one beside the card.

    Raises:
        FileNotFoundError: there is no store yet (the message says how to make one).
        ConceptStoreError: the store is malformed or lacks a list for a class of the card.
    """
    if store_path is None and isinstance(card, (str, os.PathLike)) and str(card).endswith(".json"):
        path = Path(card)
        doc = read_store(path)
        if doc is None:
            raise FileNotFoundError(f"concept store {str(path)!r} does not exist")
        return concept_set_from_store(doc, None, path)
    info = card_info(card)
    path = Path(store_path) if store_path is not None else info.store_path
    doc = read_store(path)
    if doc is None:
        raise FileNotFoundError(
            f"card {info.name!r} has no concept list yet ({str(path)!r} does not exist): run "
            f"`cbm concepts {card_reference(info)} --llm PRESET` to ask an LLM (presets in conf/llm), or write "
            "one by hand (cbm.concepts.save_curated), or give the concepts to the run: `cbm run "
            "'concepts.list={class: [phrases]}'`, or cbm.fit(..., concepts={class: [phrases]})"
        )
    doc.setdefault("card", info.name)
    return concept_set_from_store(doc, info.class_names, path, card=info)


def card_reference(info: CardInfo) -> str:
    """How a command line names the card: by name when that finds this card, else by its folder
    (:func:`cbm.data.card_command_name`)."""
    from cbm.data import card_command_name

    return info.name if info.folder is None else card_command_name(info.name, info.folder)


def _folder_and_classes(card_or_folder: Any) -> tuple[Path, list[str] | None, CardInfo | None]:
    """Where to write a curated list, and the card's classes if a card is there."""
    if isinstance(card_or_folder, (str, os.PathLike)):
        path = Path(card_or_folder)
        if path.suffix == ".json":
            return path.parent, None, None  # handled by the caller as the store path itself
        folder = path.parent if path.suffix in (".yaml", ".yml") else path
        if folder.is_dir() and not (folder / "card.yaml").is_file():
            return folder, None, None
        if not folder.exists() and len(path.parts) > 1:
            raise FileNotFoundError(f"folder {str(folder)!r} does not exist; create it or pass a card")
    info = card_info(card_or_folder)
    return info.store_path.parent, info.class_names, info


def save_curated(
    card_or_folder: Any,
    concepts: Mapping[str, Sequence[str]],
    *,
    note: str | None = None,
) -> Path:
    """Write hand-chosen concept lists into a card's store, marked curated; returns the store path.

    Args:
        card_or_folder: a ``DataCard``, a card name, a card folder (with or without ``card.yaml``
            yet: ``cbm demo make`` may write the list first) or a ``concepts.json`` path.
        concepts: class -> concept phrases, most important first. Classes not given keep what the
            store has; given classes replace their entries (this call is the explicit edit).
        note: where the lists come from (e.g. "ABCD rule and 7-point checklist"), kept in the store.

    Raises:
        ValueError: an empty list or phrase, a repeated phrase, or a class the card does not have.
    """
    from cbm.concepts.filtering import phrase_key

    if not concepts:
        raise ValueError("save_curated: no classes given")
    if isinstance(card_or_folder, (str, os.PathLike)) and str(card_or_folder).endswith(".json"):
        path, card_classes, info = Path(card_or_folder), None, None
    else:
        folder, card_classes, info = _folder_and_classes(card_or_folder)
        path = folder / STORE_FILENAME
    cleaned: dict[str, list[str]] = {}
    for name, phrases in concepts.items():
        if isinstance(phrases, str) or not isinstance(phrases, Sequence) or not phrases:
            raise ValueError(f"save_curated: class {name!r} needs a non-empty list of concept phrases")
        seen: dict[str, str] = {}
        for phrase in phrases:
            text = " ".join(str(phrase).split())
            if not text:
                raise ValueError(f"save_curated: class {name!r} has an empty concept phrase")
            key = phrase_key(text)
            if key in seen:
                raise ValueError(f"save_curated: class {name!r} lists {text!r} twice (as {seen[key]!r} too)")
            seen[key] = text
        cleaned[str(name)] = list(seen.values())
    if card_classes is not None:
        unknown = [c for c in cleaned if c not in card_classes]
        if unknown:
            raise ValueError(f"save_curated: classes {unknown} are not in card {info.name!r} (classes: {card_classes})")
    with store_lock(path):
        doc = read_store(path) or {"format": STORE_FORMAT, "classes": [], "by_class": {}}
        if info is not None:
            doc.update(card=info.name, modality=info.modality)
            doc["classes"] = info.class_names
        else:
            doc["classes"] = list(dict.fromkeys([*doc.get("classes", []), *cleaned]))
        for name, phrases in cleaned.items():
            entry = {"source": "curated", "concepts": phrases}
            if note:
                entry["note"] = note
            doc["by_class"][name] = entry
        doc["updated"] = _now()
        write_store(path, doc)
    log.info("wrote curated concepts for %d classes to %s", len(cleaned), path)
    return path
