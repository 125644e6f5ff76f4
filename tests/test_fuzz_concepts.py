"""Mutated concept stores (cbm.concepts.fuzz): each one loads into a valid ConceptSet or fails with
one ConceptStoreError that names the file, the field and the fix, never another exception.

Seeded and bounded (a few seconds); ``scripts/fuzz_concepts.py`` runs a larger campaign.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from cbm.concepts.fuzz import MUTATIONS, generated_store, mutate, try_store
from cbm.concepts.store import CardInfo, card_info
from cbm.data import list_cards

N_MUTANTS = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(card, store bytes) for every shipped store, and two stores as an LLM run writes them."""
    cards = [card_info(name) for name in list_cards()]
    stores = [(info, info.store_path.read_bytes()) for info in cards]
    for name in ("ham10000", "nih-cxr14"):
        info = card_info(name)
        stores.append((info, generated_store(info, tmp_path_factory.mktemp(name))))
    return stores


def test_the_unmutated_stores_are_accepted(corpus, tmp_path):
    for i, (info, data) in enumerate(corpus):
        path = tmp_path / f"{i}.json"
        path.write_bytes(data)
        assert try_store(info, path) == ("accepted", ""), info.name


def test_mutated_stores_load_or_fail_clearly(corpus, tmp_path):
    rng = random.Random(20250101)
    outcomes: Counter = Counter()
    kinds: Counter = Counter()
    start = time.monotonic()
    for i in range(N_MUTANTS):
        info, original = rng.choice(corpus)
        kind, data = mutate(original, rng)
        path = tmp_path / f"{i}.json"
        path.write_bytes(data)
        card = CardInfo(info.name, info.modality, info.classes, info.folder)
        outcome, detail = try_store(card, path)
        assert outcome in ("accepted", "clear_error"), f"{kind} of {info.name}: {detail}\nmutant: {data[:400]!r}"
        outcomes[outcome] += 1
        kinds[kind] += 1
    assert outcomes["accepted"] >= 30 and outcomes["clear_error"] >= 30, outcomes
    assert set(kinds) <= set(MUTATIONS) and len(kinds) >= 8, kinds
    assert time.monotonic() - start < 60, "the fuzz test should take seconds"
