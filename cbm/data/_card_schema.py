"""The fields of a data card as pydantic models, and their errors as one :class:`~cbm.errors.CardError`.

:func:`check_card_fields` validates the mapping read from ``card.yaml`` (by
:func:`cbm.data._yaml.load_yaml`, which keeps the text of the positions in :data:`TEXT_POSITIONS`
as written) and turns pydantic's first error into a message that names the file, the field (``name``,
``classes[2]``, ``confounder.id_groups``), the bad value (at most 200 characters of it) and the fix.
The checks that relate fields to each other (a binary task has 2 classes, a confounder names
classes of the card) follow in :mod:`cbm.data._card`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from cbm.errors import CardError, quote
from cbm.utils import unknown_name_message

__all__ = ["CardFields", "ClassEntry", "ConfounderEntry", "check_card_fields", "FIELD_HELP", "TEXT_POSITIONS"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
ENV_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

# field -> one-line help used in error messages (and the order errors are reported in)
FIELD_HELP: dict[str, str] = {
    "name": "a lower-case id made of a-z, 0-9, '_' and '-', e.g. ham10000",
    "title": "one line for people",
    "modality": "words the concept prompts use, e.g. 'dermoscopy' or 'chest x-ray'",
    "task": "multiclass or binary",
    "classes": "a list of {name, description}, in label order",
    "ordered_classes": "true when the classes are grades of one scale, listed lowest first (default false)",
    "image_root": "the image folder, relative to the card folder or absolute (default: the card folder)",
    "image_root_env": "an environment variable that overrides image_root when set",
    "manifest": "the manifest CSV, relative to the card folder or absolute",
    "split_column": "the manifest column holding train/val/test (default: split)",
    "group_column": "an optional manifest column naming a group (hospital, sex, ...)",
    "confounder": "{column, description, id_groups, ood_groups} for a confounded variant",
    "nuisance_prompts": "a list of image artefacts no concept score may follow, e.g. [ruler, ink marking]",
    "concept_truth": "{concept phrase: manifest column} holding each concept's annotated truth (1/0, yes/no, "
                     "true/false, present/absent; empty or NA = not annotated)",
    "source": "citation or URL of the dataset",
    "licence": "the dataset's licence",
    "obtain": "how to get the images",
    "split_rule": "how train/val/test were built, in words",
    "make_splits": "the machine-readable split rule used by `cbm make-splits`",
    "allow_outside_root": "true to accept manifest paths outside the image folder (default false)",
}
_TEXT_FIELDS = ("name", "title", "modality", "task", "image_root", "image_root_env", "manifest", "split_column",
                "group_column", "source", "licence", "obtain", "split_rule")
TEXT_POSITIONS: tuple[tuple[str, ...], ...] = (
    ("*key",), *((f,) for f in _TEXT_FIELDS),
    ("classes", "*"), ("classes", "*", "*key"), ("classes", "*", "name"), ("classes", "*", "description"),
    ("confounder", "*key"), ("confounder", "column"), ("confounder", "description"),
    *((("confounder", side, part) for side in ("id_groups", "ood_groups") for part in ("*key", "*value"))),
    ("nuisance_prompts", "*"), ("concept_truth", "*key"), ("concept_truth", "*value"),
)
"""Positions whose plain YAML scalars are read as the text written (a class ``0123`` stays '0123')."""

Text = Annotated[str, StringConstraints(strip_whitespace=True)]
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ClassEntry(_Strict):
    """One class: its name (the label in manifests) and a one-line clinical description."""

    name: Phrase
    description: Text = ""

    @model_validator(mode="before")
    @classmethod
    def _plain_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("description", mode="before")
    @classmethod
    def _no_description(cls, value: Any) -> Any:
        return "" if value is None else value


class ConfounderEntry(_Strict):
    """The spurious cue of a confounded variant (see :class:`cbm.data.Confounder`)."""

    column: Phrase
    description: Text = ""
    id_groups: dict[Phrase, Text] = Field(default_factory=dict)
    ood_groups: dict[Phrase, Text] = Field(default_factory=dict)

    @field_validator("description", "id_groups", "ood_groups", mode="before")
    @classmethod
    def _empty(cls, value: Any, info: Any) -> Any:
        return ({} if info.field_name != "description" else "") if value is None else value


class CardFields(_Strict):
    """Every field of ``card.yaml``, each checked on its own (see :data:`FIELD_HELP`)."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, pattern=NAME_PATTERN)]
    title: Text | None = None
    modality: Phrase
    task: Literal["multiclass", "binary"]
    classes: list[ClassEntry] = Field(min_length=1)
    ordered_classes: bool = False
    image_root: Text | None = None
    image_root_env: Annotated[str, StringConstraints(strip_whitespace=True, pattern=ENV_PATTERN)] | None = None
    manifest: Phrase
    split_column: Text | None = None
    group_column: Text | None = None
    confounder: ConfounderEntry | None = None
    nuisance_prompts: list[Phrase] | None = None
    concept_truth: dict[Phrase, Phrase] | None = None
    source: Text | None = None
    licence: Text | None = None
    obtain: Text | None = None
    split_rule: Text | None = None
    make_splits: Any = None  # checked by cbm.data._splits.parse_split_spec, which knows the rule format
    allow_outside_root: bool = False

    @field_validator("image_root_env", mode="before")
    @classmethod
    def _blank_env(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


# fixes of a bad value, by field (as reported); text fields not listed get "Use a single string: <help>"
_FIXES = {
    "name": f"Use {FIELD_HELP['name']}",
    "task": "Use multiclass or binary",
    "classes": "Give a non-empty list of {name, description} entries, in label order",
    "confounder": "Use {column, description, id_groups, ood_groups} or null",
    "nuisance_prompts": "Use a list of short phrases, e.g. [ruler, ink marking]",
    "concept_truth": "Map each annotated concept phrase to the manifest column holding its truth, e.g. "
                     "{'irregular border': 'truth_irregular_border'}",
    "image_root_env": "Use an environment variable name such as CBM_HAM10000_ROOT",
    "allow_outside_root": "Use true or false",
    "ordered_classes": "Use true (the classes are grades, lowest first) or false",
    "make_splits": "See cbm/data/_split_rule.py for the split rule format",
}
_REQUIRED = ("name", "modality", "task", "classes", "manifest")


def check_card_fields(raw: dict[str, Any], path: Path) -> CardFields:
    """The card's fields, validated; the first problem raises a :class:`CardError`."""
    if all(k in FIELD_HELP for k in raw):  # an unknown field is named first (by pydantic, below)
        for key in _REQUIRED:  # an empty value is as missing as an absent one
            if raw.get(key) is None or (isinstance(raw.get(key), str) and not raw[key].strip()):
                raise CardError(path, "is missing", f"Add it: {FIELD_HELP[key]}", field=key)
    try:
        return CardFields.model_validate(raw)
    except ValidationError as exc:
        raise _card_error(exc, raw, path) from None


def _card_error(exc: ValidationError, raw: dict[str, Any], path: Path) -> CardError:
    """Pydantic's first error (unknown fields first, then in field order) as a CardError."""
    order = list(FIELD_HELP)
    errors = sorted(exc.errors(include_url=False), key=lambda e: (
        e["type"] != "extra_forbidden", order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order else len(order)))
    e = errors[0]
    loc = list(e["loc"])
    top = str(loc[0]) if loc else ""
    if e["type"] == "extra_forbidden":
        key = _short(str(loc[-1]))
        if len(loc) == 1:
            return CardError(path, "is not a card field", unknown_name_message("field", str(loc[0]), FIELD_HELP, lead=False),
                             field=key)
        if top == "classes":
            return CardError(path, "is not a class field", "A class has only name and description",
                             field=f"classes[{loc[1]}].{key}")
        return CardError(path, "is not a confounder field", "Use column, description, id_groups and ood_groups",
                         field=f"confounder.{key}")
    if e["type"] == "missing" and len(loc) == 1:
        return CardError(path, "is missing", f"Add it: {FIELD_HELP[top]}", field=top)
    if top == "classes" and len(loc) > 1 and isinstance(loc[1], int):
        field, value, fix = f"classes[{loc[1]}]", raw["classes"][loc[1]], "Each class is {name: ..., description: ...}"
    elif top == "confounder" and len(loc) > 1 and isinstance(raw.get("confounder"), dict):
        field, fix = f"confounder.{loc[1]}", _FIXES["confounder"]
        value = raw["confounder"].get(loc[1])
    else:
        field, value = top, raw.get(top)
        fix = _FIXES.get(top) or f"Use a single string: {FIELD_HELP.get(top, '')}"
    if e["type"] == "missing":
        return CardError(path, f"lacks {_short(str(loc[-1]))!r}", fix, field=field)
    kind = f" (a {type(value).__name__})" if isinstance(value, (dict, list)) and field in _TEXT_FIELDS else ""
    return CardError(path, f"has the bad value {quote(value)}{kind}", fix, field=field)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
