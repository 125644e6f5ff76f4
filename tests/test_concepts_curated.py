"""The curated concept lists shipped with every built-in card (data_cards/<name>/concepts.json).

Parametrised over the card registry itself, so a new card without a usable list fails here the
day it is added.
"""

from __future__ import annotations

import pytest

from cbm.concepts import filter_concepts, load_concepts
from cbm.concepts.filtering import phrase_key
from cbm.concepts.store import STORE_FORMAT, read_store
from cbm.data import list_cards, load_card

CARDS = list_cards()


def test_the_built_in_cards_are_found():
    assert {"ham10000", "nih-cxr14"} <= set(CARDS)


@pytest.mark.parametrize("name", CARDS)
def test_every_built_in_card_has_a_curated_list_for_every_class(name):
    card = load_card(name)
    concepts = load_concepts(card)  # no LLM, no network
    assert concepts.classes == card.class_names
    assert concepts.path == card.folder / "concepts.json"
    assert set(concepts.sources.values()) == {"curated"}
    doc = read_store(concepts.path)
    assert doc["format"] == STORE_FORMAT and doc["card"] == name and doc["classes"] == card.class_names
    for cls in card.class_names:
        assert doc["by_class"][cls].get("note"), f"{name}/{cls}: say where the list comes from"
        assert len(concepts.by_class[cls]) >= 5, f"{name}/{cls}: too few concepts to explain a decision"
    prior = concepts.prior()
    assert prior.shape == (len(card.class_names), len(concepts.concepts))
    assert (prior.sum(axis=1) >= 5).all()


@pytest.mark.parametrize("name", CARDS)
def test_curated_lists_pass_the_filter_unchanged(name):
    """Short visual phrases, no class name inside (of any class), no duplicate in other words."""
    card = load_card(name)
    concepts = load_concepts(card)
    results = filter_concepts(concepts.by_class, card.class_names)
    for cls in card.class_names:
        assert results[cls].removed == [], f"{name}/{cls}: {results[cls].removed}"
        assert [phrase_key(c) for c in results[cls].kept] == [phrase_key(c) for c in concepts.by_class[cls]]
