"""Seeded mutations of concept stores, and the check that every mutant loads or fails clearly.

Shared by the fuzz test (``tests/test_fuzz_concepts.py``, a few hundred mutants) and the larger
campaign (``scripts/fuzz_concepts.py``)::

    rng = random.Random(0)
    name, data = mutate(original_bytes, rng)        # e.g. ("retype", b'{"format": ...}')
    outcome, detail = try_store(card, path)         # "accepted" | "clear_error" | "unclear_error"

A mutant is *accepted* when it loads into a valid :class:`~cbm.concepts.ConceptSet` and every path
that reads a store (``cbm concepts --removed``, a no-server ``generate_concepts`` that filters
again) runs; *clear_error* when it raises :class:`~cbm.errors.ConceptStoreError` naming the file and
a fix; anything else (another exception, or an error that does not name the file) is *unclear_error*
(the outcome names of ``scripts/fuzz_inputs.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cbm.errors import ConceptStoreError

__all__ = ["MUTATIONS", "mutate", "try_store", "check_concept_set", "generated_store"]

_Loc = list[Any]


def _locations(node: Any, loc: _Loc | None = None) -> list[_Loc]:
    """Every path (list of keys and indices) into a JSON tree, the root included."""
    loc = loc or []
    out = [loc]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _locations(value, [*loc, key])
    elif isinstance(node, list):
        for i, value in enumerate(node[:50]):  # long lists: their head is enough
            out += _locations(value, [*loc, i])
    return out


def _get(doc: Any, loc: _Loc) -> Any:
    for part in loc:
        doc = doc[part]
    return doc


def _set(doc: Any, loc: _Loc, value: Any) -> Any:
    if not loc:
        return value
    _get(doc, loc[:-1])[loc[-1]] = value
    return doc


def _odd_value(rng: random.Random) -> Any:
    """A value of a random type, some of them huge."""
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: 0, lambda: -1, lambda: 2.5, lambda: 10**30, lambda: "",
        lambda: "gpt", lambda: [], lambda: {}, lambda: [1, 2], lambda: {"a": 1}, lambda: ["x", None],
        lambda: [{"concept": "x"}], lambda: "y" * 200_000, lambda: ["p"] * 20_000,
        lambda: [[[[[["deep"]]]]]], lambda: float("nan"), lambda: "é\u0000\ud7ff",
    ]
    return rng.choice(choices)()


def _tree(doc: Any, rng: random.Random) -> tuple[str, Any]:
    """A structural mutation of the parsed store: retype, delete, add, rename or duplicate."""
    loc = rng.choice(_locations(doc))
    node = _get(doc, loc)
    containers = [p for p in _locations(doc) if isinstance(_get(doc, p), (dict, list))]
    kind = rng.choice(["retype", "retype", "delete", "add", "rename", "duplicate", "empty"])
    if kind == "retype":
        return kind, _set(doc, loc, _odd_value(rng))
    if kind == "empty":
        return kind, _set(doc, loc, type(node)() if isinstance(node, (dict, list, str)) else None)
    parent = _get(doc, rng.choice(containers))
    if kind == "delete" and parent:
        if isinstance(parent, dict):
            del parent[rng.choice(list(parent))]
        else:
            del parent[rng.randrange(len(parent))]
    elif kind == "add":
        if isinstance(parent, dict):
            parent[rng.choice(["source", "llm", "removed", "proposed", "note", "filter", "rejected", "classes", "zzz"])] = (
                _odd_value(rng))
        else:
            parent.insert(rng.randrange(len(parent) + 1), _odd_value(rng))
    elif kind == "rename" and isinstance(parent, dict) and parent:
        key = rng.choice(list(parent))
        parent[key[:-1] or "_"] = parent.pop(key)
    elif kind == "duplicate" and isinstance(parent, list) and parent:
        parent.append(parent[rng.randrange(len(parent))])
    return kind, doc


def _bytes(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """A mutation of the file's bytes: truncation, another encoding, a stray byte, a BOM."""
    kind = rng.choice(["truncate", "encoding", "byte", "bom", "nest"])
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    if kind == "encoding":
        text = data.decode("utf-8").replace("a", "\u00e4", 1)
        return kind, text.encode(rng.choice(["latin-1", "utf-16", "utf-32", "cp1252"]), errors="replace")
    if kind == "byte":
        i = rng.randrange(len(data))
        return kind, data[:i] + bytes([rng.choice([0x00, 0x80, 0xC3, 0xFF, 0x22, 0x7B])]) + data[i:]
    if kind == "bom":
        return kind, b"\xef\xbb\xbf" + data
    depth = rng.choice([100, 5_000, 200_000])
    return kind, b"[" * depth + b"]" * depth


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of a store file's bytes: ``(what was done, the new bytes)``."""
    if rng.random() < 0.25:
        return _bytes(data, rng)
    doc = json.loads(data.decode("utf-8"))
    kind, doc = _tree(doc, rng)
    return kind, json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", errors="surrogatepass")


MUTATIONS = ("retype", "delete", "add", "rename", "duplicate", "empty", "truncate", "encoding", "byte", "bom", "nest")
"""The names :func:`mutate` reports."""


def check_concept_set(concepts: Any) -> None:
    """Assert that a loaded :class:`~cbm.concepts.ConceptSet` is usable downstream."""
    assert all(isinstance(c, str) for c in concepts.classes)
    for name in concepts.classes:
        phrases = concepts.by_class[name]
        assert all(isinstance(p, str) and p.strip() for p in phrases), name
    assert concepts.prior().shape == (len(concepts.classes), len(concepts.concepts))
    json.dumps(concepts.provenance)
    for items in concepts.removed.values():
        assert all(isinstance(item["concept"], str) and isinstance(item["reason"], str) for item in items)


def try_store(card: Any, path: Path) -> tuple[str, str]:
    """Load the store at ``path`` for ``card`` every way cbm reads one: ``(outcome, detail)``."""
    from cbm.concepts.cli import run_concepts
    from cbm.concepts.generate import generate_concepts
    from cbm.concepts.store import load_concepts

    try:
        check_concept_set(load_concepts(card, store_path=path))
        args = argparse.Namespace(card=card, store=str(path), removed=True, llm=None, refresh=False,
                                  replace_curated=False, model=None, base_url=None, encoder=None, max_per_class=None,
                                  keep_prompt_examples=None)
        with contextlib.redirect_stdout(io.StringIO()):
            run_concepts(args)
        check_concept_set(generate_concepts(card, None, store_path=path, progress=False))
    except ConceptStoreError as err:
        if err.path != path or not err.fix or str(path) not in str(err):
            return "unclear_error", f"ConceptStoreError without the file or a fix: {err}"
        return "clear_error", str(err)
    except Exception as err:  # noqa: BLE001 - anything else is what the fuzzing looks for
        return "unclear_error", f"{type(err).__name__}: {err}"[:500]
    return "accepted", ""


def generated_store(card: Any, folder: Path) -> bytes:
    """The bytes of a store as an LLM run writes it for ``card`` (every generated field, a rejected
    class, removed phrases), made by :func:`~cbm.concepts.generate_concepts` against a scripted server."""
    from cbm.concepts.generate import ConceptGenerationError, generate_concepts
    from cbm.concepts.llm import LLMConfig
    from cbm.concepts.store import card_info, load_concepts
    from cbm.concepts.testing import Reply, ScriptedLLMServer, class_asked

    info = card_info(card)
    phrases = load_concepts(info).by_class
    names = {" ".join(n.replace("_", " ").split()): n for n in info.class_names}
    last = info.class_names[-1]

    def responder(request: dict, n: int) -> Reply:
        name = names[class_asked(request)]
        if name == last:
            return Reply(content='{"concepts": "not a list"}')  # unusable: kept under "rejected"
        return Reply.concepts(class_asked(request), [*phrases[name], name, "feature", "x" * 90])

    path = folder / "concepts.json"
    path.write_bytes(info.store_path.read_bytes())  # the last class keeps its curated list
    with ScriptedLLMServer(responder=responder) as server:
        config = LLMConfig(base_url=server.base_url, model="fuzz-model", max_retries=0)
        with contextlib.suppress(ConceptGenerationError):
            generate_concepts(info, config, store_path=path, replace_curated=True, progress=False)
    return path.read_bytes()
