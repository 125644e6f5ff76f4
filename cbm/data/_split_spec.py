"""Checking a card's ``make_splits`` mapping into a :class:`~cbm.data._split_rule.SplitRule`.

:func:`parse_split_spec` validates the rule (pydantic models of :mod:`cbm.data._split_rule`, which
documents the format) against the card's classes and turns the first problem into one sentence
that names the key (``make_splits.label.map ...``) and the fix; :func:`rule_layouts` gives the
rule of each of the card's file layouts. This module imports nothing of the card loader, so the
loader can import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from cbm.data._split_rule import ConfoundedSplit, LabelRule, SplitRule
from cbm.errors import quote

__all__ = ["parse_split_spec", "rule_layout", "rule_layouts"]


def _where(loc: Sequence[Any]) -> str:
    return ".".join(["make_splits", *(str(p) for p in loc)])


def _message(err: ValidationError, prefix: Sequence[Any] = ()) -> str:
    """The first problem of a validation error as one sentence naming the rule's key."""
    e = err.errors(include_url=False)[0]
    loc = [*prefix, *e["loc"]]
    if e["type"] == "unknown_key":
        return f"{_where([*loc, e['ctx']['key']])} is not a split-rule key (keys here: {e['ctx']['allowed']})"
    if e["type"] == "missing":
        return f"{_where(loc)} is missing"
    msg = str(e["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if e["type"] == "split_method":
        return f"{_where([*loc, 'method'])} {msg.removeprefix('method ')}"
    if e["type"] in ("not_mapping", "label_kind", "value_error"):
        return f"{_where(loc)} {msg}"
    return f"{_where(loc)} {msg[:1].lower() + msg[1:]}, got {quote(e.get('input'))}"


def _check_classes(rule: SplitRule, classes: list[str]) -> None:
    """The label, the ties and a confounded split against the card's classes."""
    produced = rule.label.classes()
    strangers = sorted(produced - set(classes))
    if strangers:
        raise ValueError(f"make_splits.label maps to {strangers}, which are not classes of the card ({', '.join(classes)})")
    never = [c for c in classes if c not in produced]
    if never:
        raise ValueError(f"make_splits.label never produces the class(es) {never}; map a source value to each class")
    if isinstance(rule.label, LabelRule):
        odd = sorted(set(rule.label.ties) - set(classes))
        if odd:
            raise ValueError(f"make_splits.label.ties names {odd}, which are not classes of the card ({', '.join(classes)})")
        if rule.label.readers and not rule.rows_by:
            raise ValueError("make_splits.label.readers needs rows_by (the column naming the image each reader's row is about)")
    split = rule.split
    if isinstance(split, ConfoundedSplit):
        groups = split.group.group_names()
        for side in ("id", "ood"):
            mapping = getattr(split, side)
            if set(mapping) != set(classes):
                raise ValueError(f"make_splits.split.{side} must map every class ({', '.join(classes)}) to a group, got {quote(mapping)}")
            odd = sorted(set(mapping.values()) - groups)
            if odd:
                raise ValueError(f"make_splits.split.{side} names group(s) {odd} that the group spec does not define ({', '.join(sorted(groups))})")
        if any(split.id[c] == split.ood[c] for c in classes):
            raise ValueError("make_splits.split gives a class the same group in id and ood; the test split must reverse the association")
    if isinstance(rule.min_per_class, dict):
        bad = sorted(set(rule.min_per_class) - set(rule.split_names()))
        if bad:
            raise ValueError(f"make_splits.min_per_class names {bad}, which the split does not write ({', '.join(rule.split_names())})")


def _validate(raw: Mapping[str, Any], classes: list[str], prefix: Sequence[Any] = ()) -> SplitRule:
    try:
        rule = SplitRule.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_message(err, prefix)) from None
    _check_classes(rule, classes)
    return rule


def parse_split_spec(spec: Any, class_names: Sequence[str]) -> SplitRule:
    """Check a ``make_splits`` mapping against the card's classes.

    Args:
        spec: the card's ``make_splits`` field, as read from YAML.
        class_names: the card's classes, in label order.

    Returns:
        The :class:`SplitRule`; its ``layouts`` are checked too (see :func:`rule_layouts`).

    Raises:
        ValueError: the first problem, naming the key (``make_splits.label.map ...``) and the fix.
    """
    classes = [str(c) for c in class_names]
    if not isinstance(spec, Mapping):
        raise ValueError(f"make_splits must be a mapping, got {quote(spec)}")
    rule = _validate(spec, classes)
    for name in rule.layouts:
        rule_layout(rule, spec, name, classes)
    return rule


def rule_layout(rule: SplitRule, spec: Mapping[str, Any], name: str, class_names: Sequence[str]) -> SplitRule:
    """The rule of one of ``spec``'s layouts: its keys over the rule's own, checked."""
    override = rule.layouts[name]
    if not isinstance(override, Mapping) or "layouts" in override:
        raise ValueError(f"make_splits.layouts.{name} must be a mapping of rule keys (without layouts), got {quote(override)}")
    merged = {**{k: v for k, v in spec.items() if k != "layouts"}, **override}
    layout = _validate(merged, [str(c) for c in class_names], prefix=("layouts", name))
    layout._layout_name = name
    return layout


def rule_layouts(spec: Mapping[str, Any], class_names: Sequence[str]) -> list[SplitRule]:
    """The rule and each of its layouts, the rule's own keys first."""
    rule = parse_split_spec(spec, class_names)
    return [rule, *(rule_layout(rule, spec, name, class_names) for name in rule.layouts)]
