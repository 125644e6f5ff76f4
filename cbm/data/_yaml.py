"""A YAML reader for data cards that stays small on hostile input and keeps identifiers as written.

``yaml.safe_load`` builds aliases as shared references, so a 2 KB card with nested aliases
("billion laughs") loads quickly but expands to billions of nodes in anything that walks it (a
check, an error message quoting it). It recurses once per nesting level, so 1,000 nested lists end
in a bare ``RecursionError``. And YAML 1.1 reads ``0x1f`` as 31, ``0123`` as 83, ``1:20`` as 80 and
``no`` as False, so a class named ``0123`` silently becomes ``'83'``.

:func:`load_yaml` refuses a file over :data:`MAX_BYTES`, nesting deeper than :data:`MAX_DEPTH`,
more than :data:`MAX_ALIASES` aliases, a document that aliases would expand past
:data:`MAX_NODES` nodes, a recursive alias and a key given twice in one mapping, each with a
:class:`~cbm.errors.CardError` naming the line. Plain scalars at the positions ``text_at`` names
keep their text exactly (``0123`` stays ``'0123'``); a null stays None.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cbm.errors import CardError, quote

__all__ = ["load_yaml", "MAX_BYTES", "MAX_DEPTH", "MAX_ALIASES", "MAX_NODES"]

MAX_BYTES = 1 << 20  # a card is a few KB
MAX_DEPTH = 32  # cards nest 4 levels deep
MAX_ALIASES = 64  # cards need none; a few are harmless
MAX_NODES = 100_000  # nodes of the document once every alias is expanded
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"

# A position in the document: a tuple of mapping keys, "*" for any sequence item, "*key" / "*value"
# for any key / value of a mapping.
Position = tuple[str, ...]


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and aliases while composing, and refuses repeated keys."""

    def __init__(self, stream: str, path: Path) -> None:
        super().__init__(stream)
        self.path = path
        self.depth = 0
        self.aliases = 0

    def _refuse(self, mark: Any, problem: str, fix: str) -> CardError:
        line = f"line {mark.line + 1}" if mark is not None else None
        return CardError(self.path, problem, fix, field=line)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self._refuse(self.peek_event().start_mark, f"uses more than {MAX_ALIASES} YAML aliases (*name)",
                                   "Write the values out; a card needs no aliases")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._refuse(self.peek_event().start_mark, f"nests lists or mappings more than {MAX_DEPTH} deep",
                               "A card nests a few levels; check the indentation and brackets")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key (a list or mapping as key) is refused below by PyYAML
                continue
            if first != key_node.start_mark.line + 1:
                raise self._refuse(key_node.start_mark, f"gives the key {quote(key, 60)} twice (first on line {first})",
                                   "Keep one of the two")
        return super().construct_mapping(node, deep=deep)


def _expanded(node: Node, path: Path, memo: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """(nodes, depth) under ``node`` once every alias is expanded; memoised, so a shared subtree
    costs once and the recursion never goes deeper than the document as written."""
    key = id(node)
    if key in memo:
        return memo[key]
    where = f"line {node.start_mark.line + 1}"
    if key in open_:
        raise CardError(path, "has a recursive alias (a list or mapping that contains itself)", "Write the values out",
                        field=where)
    open_.add(key)
    children = node.value if isinstance(node, SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else [])
    parts = [_expanded(child, path, memo, open_) for child in children]
    open_.discard(key)
    size, depth = 1 + sum(n for n, _ in parts), 1 + max((d for _, d in parts), default=0)
    if size > MAX_NODES:
        raise CardError(path, f"expands (through its aliases) to more than {MAX_NODES:,} values",
                        "Write the values out without nested aliases; a card holds a few hundred", field=where)
    if depth > MAX_DEPTH:
        raise CardError(path, f"nests lists or mappings (through its aliases) more than {MAX_DEPTH} deep",
                        "A card nests a few levels; write the values out", field=where)
    memo[key] = (size, depth)
    return size, depth


def _matches(pattern: Position, here: Position) -> bool:
    return len(pattern) == len(here) and all(
        p == h or (p == "*value" and h not in ("*", "*key")) for p, h in zip(pattern, here))


def _keep_text(node: Node, positions: Sequence[Position], here: Position = ()) -> None:
    """Retag plain scalars at ``positions`` as strings, so they keep their text."""
    if isinstance(node, ScalarNode):
        if node.style is None and node.tag != _NULL and any(_matches(p, here) for p in positions):
            node.tag = _STR
    elif isinstance(node, SequenceNode):
        for child in node.value:
            _keep_text(child, positions, (*here, "*"))
    elif isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            _keep_text(key_node, positions, (*here, "*key"))
            name = key_node.value if isinstance(key_node, ScalarNode) else "?"
            _keep_text(value_node, positions, (*here, str(name)))


def load_yaml(path: Path, text_at: Sequence[Position] = ()) -> Any:
    """The YAML document of ``path`` within the bounds above; see the module docstring.

    Args:
        path: the file (named in every error).
        text_at: positions whose plain scalars keep their text as a string: mapping keys by
            name, ``"*"`` for any list item, ``"*key"`` for any key of a mapping, ``"*value"``
            for the value of any key (``("name",)``, ``("classes", "*", "name")``,
            ``("concept_truth", "*key")``, ``("concept_truth", "*value")``).

    Raises:
        CardError: too large, not UTF-8, not YAML, over a bound, a repeated key.
    """
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise CardError(path, f"is {size:,} bytes, more than a card's limit of {MAX_BYTES:,}",
                        "A card is a few KB of YAML; check that this is the card file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(path, f"is not UTF-8 text (byte {exc.start})", "Save the card as UTF-8") from None
    loader = None
    try:
        loader = _BoundedLoader(text, path)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded(node, path, {}, set())
        _keep_text(node, text_at)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            line = f"line {mark.line + 1}"
        elif isinstance(getattr(exc, "position", None), int):  # a character YAML does not allow
            line = f"line {text.count(chr(10), 0, exc.position) + 1}"
        else:
            line = None
        reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).split("\n")[0]
        reason = " ".join(str(reason).split())
        raise CardError(path, f"is not valid YAML ({quote(reason, 160)})", "Fix the YAML syntax (indentation, quotes, colons)",
                        field=line) from None
    finally:
        if loader is not None:
            loader.dispose()
