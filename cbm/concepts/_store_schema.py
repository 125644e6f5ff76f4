"""The shape of a concept store (``concepts.json``) as pydantic models, and its errors as one family.

:func:`check_store` holds a parsed store document to these models (strict types: ``"llm": "gpt"``
or a ``removed`` item without ``rule`` are refused, not carried along until something downstream
trips over them) and turns the first problem into a
:class:`~cbm.errors.ConceptStoreError` that names the file, the field as a JSON path
(``$.by_class.melanoma.removed[2].rule``), what is wrong and the fix. Keys the models do not know
are kept (a hand-written note stays in the file); ``null`` where a value is expected is an error.
The document itself stays a plain ``dict``: the store code reads and writes it as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cbm.errors import ConceptStoreError, quote

__all__ = ["check_store", "json_path", "store_error"]

_FORMAT_HELP = "the format is described at the top of cbm/concepts/store.py"


class _Part(BaseModel):
    """Strict types; keys not declared here are kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class _Removed(_Part):
    concept: str
    rule: str
    reason: str


class _LLMRecord(_Part):
    # a default of None is not validated, so a missing key is fine and an explicit null is not
    prompt_version: str | None = None
    model: str | None = None
    served_model: str | None = None
    response_model: str | None = None
    server_host: str | None = None
    temperature: float | None = None
    seed: int | None = None
    n_concepts: int | None = None
    structured_output: str | None = None
    date: str | None = None
    request_key: str | None = None
    attempts: int | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    raw_response: str | None = None


class _ClassEntry(_Part):
    source: Literal["curated", "llm"] = "curated"
    concepts: list[str]
    removed: list[_Removed] = None  # type: ignore[assignment]
    proposed: list[str] = None  # type: ignore[assignment]
    digest: str = None  # type: ignore[assignment]
    note: str = None  # type: ignore[assignment]
    llm: _LLMRecord = None  # type: ignore[assignment]


class _Filter(_Part):
    config: dict[str, Any] | None = None
    embedder: str | None = None
    key: str | None = None
    inputs: str | None = None


class _Rejected(_Part):
    reason: str | None = None
    raw_response: str | None = None
    model: str | None = None
    served_model: str | None = None
    date: str | None = None


class _Store(_Part):
    format: str
    card: str = None  # type: ignore[assignment]
    modality: str = None  # type: ignore[assignment]
    classes: list[str] = None  # type: ignore[assignment]
    updated: str = None  # type: ignore[assignment]
    filter: _Filter | None = None
    by_class: dict[str, _ClassEntry]
    rejected: dict[str, _Rejected] = None  # type: ignore[assignment]


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def json_path(loc: Sequence[str | int]) -> str:
    """``("by_class", "seb k", "removed", 2)`` -> ``$.by_class["seb k"].removed[2]``."""
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            key = json.dumps(part, ensure_ascii=False)
            out += f"[{key if len(key) <= 60 else key[:56] + '...' + chr(34)}]"
    return out


def _fix_for(loc: Sequence[str | int]) -> str:
    """What to do about a bad value at ``loc``, by the part of the store it is in."""
    head = loc[0] if loc else None
    if head == "by_class" and len(loc) >= 3:
        key = loc[2]
        if key in ("concepts", "proposed"):
            return "Give a list of short phrases (strings), most important first"
        if key == "removed":
            return ('Each removed item is {"concept": ..., "rule": ..., "reason": ...}, all strings; '
                    "fix the item or delete it")
        if key == "llm":
            return ('The "llm" record is written by `cbm concepts --llm`: restore it from a backup or version '
                    'control, or delete it and set "source": "curated" to keep the list as your own')
        if key == "source":
            return "Use 'curated' (a list a person chose) or 'llm' (a generated list)"
        return f"Use a string there, or delete the key ({_FORMAT_HELP})"
    if head == "by_class":
        return ('Give each class an object such as {"source": "curated", "concepts": ["phrase", ...]}, '
                f"keyed by class name ({_FORMAT_HELP})")
    if head == "filter":
        return 'Delete "filter"; the next run filters again with the default settings'
    if head == "rejected":
        return 'Delete "rejected"; it only keeps the text of an unusable LLM answer'
    if head == "classes":
        return "Give the class names as a list of strings, in card order"
    return f"Fix it by hand ({_FORMAT_HELP}), or restore the file from version control"


_KINDS = {
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
}


def store_error(path: Path, exc: ValidationError, prefix: Sequence[str | int] = ()) -> ConceptStoreError:
    """The first problem of a pydantic ``ValidationError`` as a :class:`ConceptStoreError` at ``prefix``."""
    error = exc.errors(include_url=False)[0]
    loc = [*prefix, *error["loc"]]
    kind = error["type"]
    if kind == "missing":
        problem = "is missing"
    elif kind in _KINDS:
        problem = f"must be {_KINDS[kind]}, not {quote(error.get('input'), 80)}"
    elif kind == "literal_error":
        problem = f"is {quote(error.get('input'), 80)}, which is not allowed"
    else:  # e.g. a value error raised by a model's own check
        problem = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    return ConceptStoreError(path, problem, _fix_for(loc), field=json_path(loc) if loc else None)


def check_store(path: Path, doc: dict) -> None:
    """Raise :class:`ConceptStoreError` at the first field of ``doc`` that breaks the store's format."""
    try:
        _Store.model_validate(doc)
    except ValidationError as exc:
        raise store_error(path, exc) from None
    classes = doc.get("classes") or []
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ConceptStoreError(path, f"names {quote(repeated[0], 80)} twice", "Keep one of the two",
                                field=json_path(["classes"]))
    config = (doc.get("filter") or {}).get("config")
    if config is not None:
        from cbm.concepts.filtering import FilterConfig

        try:
            FilterConfig.from_dict(config)
        except ValidationError as exc:
            raise store_error(path, exc, ("filter", "config")) from None
