"""The machine-readable split rule of a data card (its ``make_splits`` field), as pydantic models.

``cbm make-splits`` (:mod:`cbm.data._splits`) follows the rule;
:func:`cbm.data._split_spec.parse_split_spec` checks one against the card's classes and says,
for a bad rule, which key is wrong and how. The rule, field by field (``[]`` = optional)::

    make_splits:
      metadata: HAM10000_metadata.csv     # the file(s) the source ships, given with --metadata
                                          # (.csv, .csv.gz, a .zip holding one CSV; XML reports
                                          # as a .tgz/.zip/folder of .xml files, see xml)
      [metadata_help]: where that file comes from
      [folder]: {pattern: REGEX, [exclude]: REGEX, [unique_by]: [names], [layout]: text}
                                          # --metadata is an image folder: the named groups of
                                          # PATTERN (matched on each file's relative path) are
                                          # columns; layout shows a user what the folder holds
      [xml]:                              # --metadata holds XML documents (one per report)
        [each]: parentImage               # one row per matching element (else one per document)
        fields: {name: PATH}              # PATH: "@id" = the row element's attribute; "uId@id",
                                          # "MeSH/major" = from the document root; several
                                          # matches are joined with `separator` (default ";")
      [join]: uid | [md5hash, image_md5]  # several files: inner join, each file on the first of
                                          # these columns it has (without join: concatenated)
      [filter]: {column: [allowed values] | {regex: R} | {not_regex: R}}
      [derive]: {new_column: {from: column, regex: R}}   # first group (or whole match) of R,
                                          # computed in each file that has the column, before joins
                                          # (a file that has new_column itself keeps its own: so
                                          # a column two releases spell differently is one)
      [rows_by]: image_id                 # several rows per image: their label values are merged
      path: "{image_id}.jpg"              # the manifest path, from columns
      label:                              # either a column ...
        column: dx | [first, present, column]
        [separator]: "|"                  # a multi-valued cell
        [value_regex]: "^[^/]+"           # each value reduced to R's first group (or whole match)
        map: {source value: class name}   # rows whose value is not mapped are dropped
        [others]: reject | ignore         # rows with unmapped values besides one mapped one
                                          # (reject: keep single-finding images only)
        [readers]: {column: rad_id, min: 2}   # with rows_by: a class counts when at least `min`
                                          # distinct readers named it; the label is the class
                                          # most readers named
        [ties]: [class, ...]              # a tie goes to the class listed first (else dropped)
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
        method: lists                     # the source's own split, as files listing its rows
        files: {train: train_indexes.csv, val: valid_indexes.csv, test: test_indexes.csv}
        column: indexes                   # the listed values ...
        key: "#row"                       # ... are this column's values ("#row": the 0-based
                                          # row number of the metadata file)
      split:
        method: confounded                # KnoBo's construction for a binary confounded variant
        group: {name: sex, column: sex, map | bins | contains}
        id: {class: group}                # train / val / test_id: each class from one group
        ood: {class: group}               # test: the association reversed
        fractions: {train: 0.8, val: 0.1, test_id: 0.1}   # of the in-domain pool
        [balance]: [val, test_id, test]   # equal class counts (downsampled)
      [max_per_class]: 250                # cap, sampled with the seed before splitting
      [min_per_class]: 25 | {train: 200, val: 25, test: 25}
                                          # the card's promise: fewer images of a class in a
                                          # split is an error (make-splits --allow-short: a warning)
      [keep]: [age, sex]                  # non-PHI columns copied into the manifest (no name, ID, date or free text)
      [truth]: {column: {from: source column, [map]: {source value: 1 | 0}}}
                                          # concept truth written into the manifest: mapped
                                          # values, unmapped ones left empty (not annotated);
                                          # without map, the value is copied
      [group]: {name: skin_tone, column: fitzpatrick_scale, map | bins | contains}
                                          # a group column written into the manifest
      [layouts]: {name: {key: value}}     # other file layouts of the same source: each replaces
                                          # the keys it names (make-splits takes the layout whose
                                          # file names, else whose columns, fit --metadata)
      [seed]: 0

A group spec maps a source column to group names by exact value (``map: {M: male}``), by
numeric range (``bins: {young: [null, 30], old: [70, 120]}``, inclusive, null = open; a DICOM age
string such as ``058Y`` or ``006M`` reads as its years) or by substring (``contains: {barcelona: Barcelona}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from cbm.data._identity import names_a_date_or_free_text, names_a_person
from cbm.errors import quote

__all__ = [
    "SPLIT_NAMES",
    "ROW_NUMBER",
    "SplitRule",
    "SplitSpec",
    "LabelRule",
    "OneHotRule",
    "GroupRule",
    "FolderRule",
    "XmlRule",
    "RandomSplit",
    "ColumnSplit",
    "ListsSplit",
    "ConfoundedSplit",
]

SPLIT_NAMES = ("train", "val", "test", "test_id")
ROW_NUMBER = "#row"  # the pseudo-column of a metadata row's 0-based position in its file


def _text(value: Any) -> Any:
    """YAML scalars (1, 1.0, True) as the text a CSV cell holds; anything else unchanged."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _text_list(value: Any) -> Any:
    """One string or a list of them, as a list of texts."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


Text = Annotated[str, BeforeValidator(_text)]
Texts = Annotated[list[Text], BeforeValidator(_text_list)]
TextMap = dict[Text, Text]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): {quote(value)}") from None
    return value


Regex = Annotated[str, BeforeValidator(_text), AfterValidator(_regex)]


class _Rule(BaseModel):
    """A part of the rule: unknown keys are named with the keys that exist."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise PydanticCustomError("not_mapping", "must be a mapping, got {value}", {"value": quote(data)})
        allowed = sorted(f.alias or n for n, f in cls.model_fields.items())
        unknown = sorted(str(k) for k in data if str(k) not in allowed)
        if unknown:
            raise PydanticCustomError(
                "unknown_key", "{key} is not a split-rule key here (keys: {allowed})",
                {"key": unknown[0], "allowed": ", ".join(allowed)},
            )
        return data


class FolderRule(_Rule):
    """The metadata is an image folder; the pattern's named groups become columns."""

    pattern: Regex
    exclude: Regex | None = None
    unique_by: Texts = []
    layout: str = ""  # what the folder holds, in words, for messages


class XmlRule(_Rule):
    """Rows from XML documents: one per ``each`` element (or per document), fields by path."""

    each: str | None = None
    fields: dict[Text, Text]
    separator: str = ";"

    @model_validator(mode="after")
    def _has_fields(self) -> XmlRule:
        if not self.fields:
            raise ValueError("fields must name at least one column")
        return self


class DeriveRule(_Rule):
    """A new column: the first group (or whole match) of ``regex`` in column ``from``."""

    source: Text = Field(alias="from")
    regex: Regex


class TruthRule(_Rule):
    """A concept-truth column: ``map`` (source value -> 1/0) or a plain copy of column ``from``."""

    source: Text = Field(alias="from")
    map: TextMap | None = None


class ReadersRule(_Rule):
    """Several readers per image: a class counts when at least ``min`` distinct readers named it."""

    column: Text
    min: int = Field(1, ge=1)


class LabelRule(_Rule):
    """The label from a column's values mapped to classes."""

    column: Texts
    separator: str | None = None
    value_regex: Regex | None = None
    map: TextMap
    others: Literal["ignore", "reject"] = "ignore"
    readers: ReadersRule | None = None
    ties: Texts = []

    @model_validator(mode="after")
    def _check(self) -> LabelRule:
        if not self.map:
            raise ValueError("map must map at least one source value to a class")
        return self

    def classes(self) -> set[str]:
        """The classes the map produces."""
        return set(self.map.values())


class OneHotRule(_Rule):
    """The label from one-hot columns (one column per class)."""

    one_hot: TextMap
    positive: Texts = ["1", "1.0"]
    exclusive_with: Texts = []

    def classes(self) -> set[str]:
        """The classes the one-hot columns stand for."""
        return set(self.one_hot.values())


class GroupRule(_Rule):
    """A source column mapped to group names by value, numeric range or substring."""

    name: Text | None = None
    column: Texts
    map: TextMap | None = None
    bins: dict[Text, list[float | None]] | None = None
    contains: TextMap | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> GroupRule:
        kinds = [k for k in ("map", "bins", "contains") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("needs exactly one of map, bins or contains")
        if not getattr(self, kinds[0]):
            raise ValueError(f"{kinds[0]} must be a non-empty mapping")
        for group, bounds in (self.bins or {}).items():
            if len(bounds) != 2:
                raise ValueError(f"bins.{group} must be [low, high] (numbers or null), got {quote(bounds)}")
        if self.name is None:
            self.name = self.column[0]
        return self

    @property
    def kind(self) -> str:
        """map, bins or contains."""
        return next(k for k in ("map", "bins", "contains") if getattr(self, k) is not None)

    @property
    def table(self) -> dict[str, Any]:
        """The mapping of the group's kind."""
        return dict(getattr(self, self.kind))

    def group_names(self) -> set[str]:
        """The names of the groups this spec defines."""
        return set(self.map.values()) if self.map is not None else set(self.table)


def _fractions(allowed: Sequence[str]) -> BeforeValidator:
    """A validator of split fractions: some of ``allowed`` (train included), non-negative, summing to 1."""

    def check(value: Any) -> Any:
        if not isinstance(value, Mapping) or set(map(str, value)) - set(allowed) or "train" not in value:
            raise ValueError(f"must map some of {', '.join(allowed)} (train included) to fractions, got {quote(value)}")
        values = [float(v) for v in value.values()]
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"must be non-negative and sum to 1, got {quote(dict(value))}")
        return {str(k): float(v) for k, v in value.items()}
    return BeforeValidator(check)


class RandomSplit(_Rule):
    """Grouped by patient, stratified by class."""

    method: Literal["random"]
    fractions: Annotated[dict[str, float], _fractions(("train", "val", "test"))] = {"train": 0.8, "val": 0.1, "test": 0.1}


def _split_names(names: Any) -> Any:
    """Names of splits cbm writes (train, val, test, test_id), given as the keys or values of a mapping."""
    bad = sorted(set(names) - set(SPLIT_NAMES))
    if bad or not names:
        raise ValueError(f"names {quote(bad or names)}; use train, val, test or test_id")
    return names


class ColumnSplit(_Rule):
    """The source's own split, from a column (``map``: source value -> split)."""

    method: Literal["column"]
    column: Text
    map: Annotated[TextMap, AfterValidator(lambda m: _split_names(m.values()) and m)]
    val_from_train: float = Field(0.0, ge=0.0, lt=1.0)


class ListsSplit(_Rule):
    """The source's own split, as files that list the rows of each split (``files``: split -> file name)."""

    method: Literal["lists"]
    files: Annotated[TextMap, AfterValidator(_split_names)]
    column: Text
    key: Text = ROW_NUMBER
    val_from_train: float = Field(0.0, ge=0.0, lt=1.0)


class ConfoundedSplit(_Rule):
    """KnoBo's confounded construction: each class from one group in-domain, the other in test."""

    method: Literal["confounded"]
    group: GroupRule
    id: TextMap
    ood: TextMap
    fractions: Annotated[dict[str, float], _fractions(("train", "val", "test_id"))] = {"train": 0.8, "val": 0.1, "test_id": 0.1}
    balance: Texts = ["val", "test_id", "test"]


_SPLITS = {"random": RandomSplit, "column": ColumnSplit, "lists": ListsSplit, "confounded": ConfoundedSplit}
Split = RandomSplit | ColumnSplit | ListsSplit | ConfoundedSplit


def _split(value: Any) -> Any:
    """Pick the split model by its method, with the methods named when it is not one of them."""
    if isinstance(value, (RandomSplit, ColumnSplit, ListsSplit, ConfoundedSplit)):
        return value
    method = value.get("method") if isinstance(value, Mapping) else None
    if method not in _SPLITS:
        raise PydanticCustomError(
            "split_method", "method must be {methods}, got {value}",
            {"methods": ", ".join(list(_SPLITS)[:-1]) + " or " + list(_SPLITS)[-1], "value": quote(method)},
        )
    return _SPLITS[method].model_validate(value)


def _label(value: Any) -> Any:
    if isinstance(value, (LabelRule, OneHotRule)):
        return value
    if isinstance(value, Mapping) and "one_hot" in value:
        return OneHotRule.model_validate(value)
    if isinstance(value, Mapping) and "column" not in value:
        raise PydanticCustomError("label_kind", "needs column and map (or one_hot), got {value}", {"value": quote(value)})
    return LabelRule.model_validate(value)


class FilterRegex(_Rule):
    """Keep rows whose value matches ``regex`` and not ``not_regex``."""

    regex: Regex | None = None
    not_regex: Regex | None = None

    @model_validator(mode="after")
    def _compiles(self) -> FilterRegex:
        if self.regex is None and self.not_regex is None:
            raise ValueError("needs regex or not_regex")
        return self


def _path_template(value: str) -> str:
    if "{" not in value:
        raise ValueError(f"must be a template naming columns, like '{{image_id}}.jpg', got {quote(value)}")
    return value


class SplitRule(_Rule):
    """A parsed, checked ``make_splits`` rule (see the module docstring for each field)."""

    metadata: Texts
    metadata_help: str = ""
    folder: FolderRule | None = None
    xml: XmlRule | None = None
    join: Texts = []
    filters: dict[Text, Texts | FilterRegex] = Field({}, alias="filter")
    derive: dict[Text, DeriveRule] = {}
    rows_by: Text | None = None
    path: Annotated[str, AfterValidator(_path_template)]
    label: Annotated[LabelRule | OneHotRule, BeforeValidator(_label)]
    patient: Texts = []
    split: Annotated[Split, BeforeValidator(_split)]
    max_per_class: int | None = Field(None, ge=1)
    min_per_class: int | dict[Text, int] | None = None
    keep: Texts = []
    truth: dict[Text, TruthRule] = {}
    group: GroupRule | None = None
    layouts: dict[Text, Any] = {}
    seed: int = 0
    _layout_name: str = PrivateAttr("default")

    @model_validator(mode="after")
    def _writes_every_split_a_run_needs(self) -> SplitRule:
        """A rule that writes no val or test split makes a manifest every run refuses."""
        absent = [n for n in ("train", "val", "test") if n not in self.split_names()]
        if absent:
            raise ValueError(f"split writes no {', '.join(absent)} split, which every run needs (train and val to fit "
                             "and choose, test to measure); give it a share (split.fractions, split.map, or "
                             "val_from_train for val)")
        return self

    @model_validator(mode="after")
    def _keep_no_identifier(self) -> SplitRule:
        """``keep`` copies columns into the manifest in clear: never the patient column (the manifest
        holds its salted key), nor a column named as an identifier, a date or free text."""
        for column in self.keep:
            if column in self.patient or names_a_person(column):
                why = "the rule's patient column" if column in self.patient else "named as a patient identifier"
                raise ValueError(f"keep names {column!r}, {why}: the manifest would hold it in clear (a patient is "
                                 "grouped by a salted key, patient_key, and never written); leave it out of keep")
            if names_a_date_or_free_text(column):
                raise ValueError(f"keep names {column!r}, named as a date or free text: a full date identifies a patient, "
                                 "and free text (a report, a comment) often holds a name or an ID, so the manifest would "
                                 "hold them in clear; leave it out of keep (derive a year or an age from it instead)")
        return self

    @property
    def name(self) -> str:
        """The layout's name (``"default"`` for the rule's own keys)."""
        return self._layout_name

    def split_names(self) -> list[str]:
        """The splits the rule writes, in the usual order."""
        split = self.split
        names = set(split.fractions) if isinstance(split, (RandomSplit, ConfoundedSplit)) else set()
        names |= set(split.map.values()) if isinstance(split, ColumnSplit) else set()
        names |= set(split.files) if isinstance(split, ListsSplit) else set()
        names |= {"test"} if isinstance(split, ConfoundedSplit) else set()
        names |= {"val"} if getattr(split, "val_from_train", 0) else set()
        return [n for n in SPLIT_NAMES if n in names]

    def minimum(self, split: str) -> int:
        """The fewest images of each class the card promises in ``split`` (0: no promise)."""
        m = self.min_per_class
        return int(m.get(split, 0)) if isinstance(m, dict) else int(m or 0)

    def path_columns(self) -> set[str]:
        """The columns the path template names."""
        return set(re.findall(r"{([^{}]+)}", self.path))

    def group_rule(self) -> GroupRule | None:
        """The group written into the manifest: the confounded split's, else the rule's ``group``."""
        return self.split.group if isinstance(self.split, ConfoundedSplit) else self.group

    def needed_columns(self) -> set[str]:
        """Every source column the rule may read (a reader keeps only these)."""
        lab = self.label
        cols = self.path_columns() | set(self.filters) | set(self.keep) | set(self.patient) | set(self.join)
        cols |= {d.source for d in self.derive.values()} | {t.source for t in self.truth.values()}
        cols |= set(lab.column) if isinstance(lab, LabelRule) else set(lab.one_hot) | set(lab.exclusive_with)
        if isinstance(lab, LabelRule) and lab.readers:
            cols.add(lab.readers.column)
        if self.rows_by:
            cols.add(self.rows_by)
        if isinstance(self.split, (ColumnSplit,)):
            cols.add(self.split.column)
        if isinstance(self.split, ListsSplit):
            cols.add(self.split.key)
        group = self.group_rule()
        if group:
            cols |= set(group.column)
        return cols


SplitSpec = SplitRule  # the name earlier versions used
