"""The concept store and ConceptSet (cbm.concepts.store)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbm.concepts import ConceptSet, load_concepts, save_curated
from cbm.concepts.store import CardInfo, read_store
from cbm.errors import ConceptStoreError


@pytest.fixture
def card(tmp_path):
    return CardInfo("toy-cxr", "chest x-ray", (("normal", None), ("pneumonia", None), ("effusion", None)), tmp_path)


def test_concept_set_orders_concepts_and_builds_a_multi_hot_prior():
    concepts = ConceptSet(
        classes=["normal", "pneumonia", "effusion"],
        by_class={
            "pneumonia": ["consolidation", "air bronchograms", "blunted costophrenic angle"],
            "normal": ["clear lung fields", "sharp costophrenic angles"],
            "effusion": ["blunted costophrenic angle", "meniscus sign"],
        },
    )
    assert concepts.concepts == [
        "clear lung fields", "sharp costophrenic angles", "consolidation", "air bronchograms",
        "blunted costophrenic angle", "meniscus sign",
    ]
    assert len(concepts) == 6
    prior = concepts.prior()
    expected = np.array(
        [[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=np.float32
    )
    np.testing.assert_array_equal(prior, expected)  # the shared concept is in both rows, not only the first
    other = ConceptSet(classes=concepts.classes, by_class={**concepts.by_class, "effusion": ["meniscus sign"]})
    assert other.key != concepts.key
    with pytest.raises(ValueError, match=r"no concept list for classes \['effusion'\]: give one for every class"):
        ConceptSet(classes=["normal", "effusion"], by_class={"normal": ["x"]})
    with pytest.raises(ValueError, match=r"\['efusion'\] are not its classes \(a typo\?\)"):
        ConceptSet(classes=["normal", "effusion"], by_class={"normal": ["x"], "efusion": ["y"]})


def test_save_curated_then_load_in_card_order(card):
    path = save_curated(card, {"pneumonia": ["lobar consolidation", " air  bronchograms "], "normal": ["clear lungs"]},
                        note="radiology teaching")
    assert path == card.folder / "concepts.json"
    save_curated(card, {"effusion": ["meniscus sign"]})  # other classes stay
    concepts = load_concepts(card)
    assert concepts.classes == ["normal", "pneumonia", "effusion"]
    assert concepts.by_class == {
        "normal": ["clear lungs"], "pneumonia": ["lobar consolidation", "air bronchograms"], "effusion": ["meniscus sign"]
    }
    assert set(concepts.sources.values()) == {"curated"}
    doc = json.loads(path.read_text())
    assert doc["format"] == "cbm-concepts/1" and doc["card"] == "toy-cxr"
    assert doc["by_class"]["pneumonia"]["note"] == "radiology teaching"
    assert list(doc["by_class"]) == ["normal", "pneumonia", "effusion"]


def test_save_curated_refuses_bad_lists(card, tmp_path):
    with pytest.raises(ValueError, match=r"lists 'Air bronchogram' twice \(as 'air bronchograms' too\)"):
        save_curated(card, {"pneumonia": ["air bronchograms", "Air bronchogram"]})
    with pytest.raises(ValueError, match="needs a non-empty list"):
        save_curated(card, {"pneumonia": []})
    with pytest.raises(ValueError, match="needs a non-empty list"):
        save_curated(card, {"pneumonia": "consolidation"})
    with pytest.raises(ValueError, match="empty concept phrase"):
        save_curated(card, {"pneumonia": ["consolidation", "  "]})
    with pytest.raises(ValueError, match=r"classes \['covid'\] are not in card 'toy-cxr'"):
        save_curated(card, {"covid": ["ground-glass opacities"]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_curated(tmp_path / "missing" / "folder", {"a": ["b c"]})
    assert not (card.folder / "concepts.json").exists()


def test_save_curated_into_a_bare_folder_keeps_the_given_order(tmp_path):
    path = save_curated(tmp_path, {"b_class": ["dark ring"], "a_class": ["bright spot"]}, note="demo world")
    concepts = load_concepts(path)
    assert concepts.classes == ["b_class", "a_class"] and concepts.path == path


def test_a_plain_class_to_concepts_file_is_read_as_curated(card):
    card.store_path.write_text(json.dumps({"normal": ["clear lungs"], "pneumonia": ["consolidation"],
                                           "effusion": ["meniscus sign"]}))
    concepts = load_concepts(card)
    assert concepts.by_class["pneumonia"] == ["consolidation"]
    assert set(concepts.sources.values()) == {"curated"}


STORE = '{"format": "cbm-concepts/1", "by_class": {"normal": %s}}'


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ('{"format": "cbm-concepts/1", "by_class": {', None, r"is not valid JSON \(line 1, column \d+"),
        ('["x"]', None, "must hold a JSON object, not list"),
        ('{"format": "cbm-concepts/9", "by_class": {}}', "$.format", "is 'cbm-concepts/9'; this version of cbm reads"),
        ('{"format": "cbm-concepts/1"}', "$.by_class", "is missing"),
        ('{"by_class": {}}', "$.format", 'is missing. Add "format": "cbm-concepts/1"'),
        (STORE % '{"concepts": "clear"}', "$.by_class.normal.concepts", "must be a list, not 'clear'"),
        (STORE % '{"concepts": [], "source": "gpt"}', "$.by_class.normal.source", "is 'gpt', which is not allowed. "
         "Use 'curated' .* or 'llm'"),
        (STORE % '{"concepts": ["a b"], "llm": "gpt"}', "$.by_class.normal.llm", "must be an object, not 'gpt'"),
        (STORE % '{"concepts": ["a b"], "removed": [{"concept": "x", "reason": "y"}]}',
         "$.by_class.normal.removed[0].rule", 'is missing. Each removed item is {"concept"'),
        (STORE % '{"concepts": ["a b"], "removed": null}', "$.by_class.normal.removed", "must be a list, not None"),
        (STORE % '{"concepts": ["a b"], "llm": {"seed": "0"}}', "$.by_class.normal.llm.seed", "must be an integer"),
        ('{"format": "cbm-concepts/1", "filter": {"config": {"min_chars": "3"}}, "by_class": {}}',
         "$.filter.config.min_chars", 'must be an integer, not \\\'3\\\'. Delete "filter"'),
        ('{"format": "cbm-concepts/1", "rejected": [], "by_class": {}}', "$.rejected", "must be an object"),
        ('{"format": "cbm-concepts/1", "classes": ["a", "a"], "by_class": {}}', "$.classes", "names 'a' twice"),
        ('{"format": "cbm-concepts/1", "by_class": {"seb k": {"concepts": [1]}}}', '$.by_class["seb k"].concepts[0]',
         "must be a string, not 1. Give a list of short phrases"),
        ('{"normal": "clear lungs"}', "$.normal", "must be a list of strings"),
        ('{"normal": ["clear lungs", "  "]}', "$.normal[1]", "is an empty phrase"),
        ('{"normal": ["clear lungs", "Clear  lungs"]}', "$.normal[1]", r"lists 'Clear  lungs' again \(as 'clear lungs'"),
        ('{"normal": ["clear lungs"], "normal": ["sharp angles"]}', None, "has the key 'normal' twice"),
    ],
)
def test_a_malformed_store_names_the_file_the_field_and_the_problem(card, content, field, message):
    card.store_path.write_text(content)
    with pytest.raises(ConceptStoreError, match=message) as info:
        load_concepts(card)
    assert info.value.path == card.store_path and str(card.store_path) in str(info.value)
    assert info.value.field == field and info.value.fix


def test_a_store_that_is_not_utf8_or_nests_too_deep_is_one_clear_error(card):
    card.store_path.write_bytes('{"normal": ["caf\u00e9 au lait"]}'.encode("latin-1"))
    with pytest.raises(ConceptStoreError, match=r"is not UTF-8 text \(byte 0xe9 at offset 16\). Save the file as UTF-8"):
        load_concepts(card)
    card.store_path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConceptStoreError, match="nested too deeply"):
        load_concepts(card)
    card.store_path.write_text('{"format": "cbm-concepts/1", "by_class": {"normal": {"concepts": ["a b"], '
                               '"llm": {"seed": ' + "9" * 5000 + "}}}}")
    with pytest.raises(ConceptStoreError, match="holds a value JSON cannot give"):
        load_concepts(card)
    card.store_path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"normal": ["clear lungs"], "pneumonia": ["consolidation"],
                                                               "effusion": ["meniscus sign"]}).encode())
    assert load_concepts(card).by_class["normal"] == ["clear lungs"]  # a byte-order mark is fine


def test_a_store_that_lacks_a_class_says_how_to_fill_it(card, caplog):
    save_curated(card.folder / "concepts.json", {"normal": ["clear lungs"], "pneumonia": ["consolidation"]})
    # the card is not a built-in one, so the command names it by its folder
    with pytest.raises(ConceptStoreError, match=r"no concept list for classes \['effusion'\].*cbm concepts /\S+ --llm"):
        load_concepts(card)
    save_curated(card.folder / "concepts.json", {"effusion": ["meniscus sign"], "old_class": ["x y"]})
    assert load_concepts(card).classes == ["normal", "pneumonia", "effusion"]
    assert "ignored: ['old_class']" in caplog.text


def test_a_store_naming_a_class_the_card_lacks_says_to_rename_it(card):
    """A class misspelt in concepts.json is a rename, not a list for an LLM to generate."""
    save_curated(card.folder / "concepts.json", {"normal": ["clear lungs"], "pneumonia": ["consolidation"],
                                                 "efusion": ["meniscus sign"]})
    with pytest.raises(ConceptStoreError, match=r"no concept list for classes \['effusion'\].*"
                                                r"'efusion' is not a class of the card: did you mean 'effusion'\?"):
        load_concepts(card)


def test_a_hand_edit_of_a_generated_list_reads_as_curated(card, caplog):
    doc = {
        "format": "cbm-concepts/1",
        "by_class": {"normal": {"source": "llm", "concepts": ["clear lungs", "sharp angles"], "digest": "0" * 16,
                                "llm": {"model": "m"}}},
    }
    card.store_path.write_text(json.dumps(doc))
    assert read_store(card.store_path)["by_class"]["normal"]["source"] == "curated"
    assert "edited by hand" in caplog.text


def test_a_set_built_in_code_and_the_provenance_summary(card):
    given = ConceptSet.from_mapping(["normal", "pneumonia"], {"normal": [" clear  lungs", "clear lungs"], "pneumonia": ["consolidation"]})
    assert given.by_class["normal"] == ["clear lungs"] and given.sources == {"normal": "given", "pneumonia": "given"}
    assert given.provenance["store"] is None and given.provenance["classes"]["pneumonia"] == {"source": "given"}
    with pytest.raises(ValueError, match=r"classes \['covid'\] that are not among"):
        ConceptSet.from_mapping(["normal"], {"normal": ["x"], "covid": ["y"]})

    doc = {
        "format": "cbm-concepts/1",
        "by_class": {
            "normal": {"source": "curated", "concepts": ["clear lungs"]},
            "pneumonia": {"source": "llm", "concepts": ["consolidation"], "llm": {
                "model": "m", "server_host": "h:1", "prompt_version": "v1", "temperature": 0.0, "seed": 0,
                "date": "2025-01-01", "raw_response": "{...}", "usage": {"total_tokens": 5}}},
            "effusion": {"source": "curated", "concepts": ["meniscus sign"]},
        },
    }
    card.store_path.write_text(json.dumps(doc))
    provenance = load_concepts(card).provenance
    assert provenance["store"] == str(card.store_path)
    assert provenance["classes"]["normal"] == {"source": "curated"}
    assert provenance["classes"]["pneumonia"] == {
        "source": "llm", "model": "m", "server_host": "h:1", "prompt_version": "v1", "temperature": 0.0, "seed": 0,
        "date": "2025-01-01",
    }  # the raw answer stays in the file
    json.dumps(provenance)


def test_a_store_written_in_another_unicode_form_matches_the_cards_classes(tmp_path):
    import json
    import unicodedata

    from cbm.concepts.store import concept_set_from_store

    composed = unicodedata.normalize("NFC", "nævus café")
    doc = {"format": "cbm-concepts/1", "classes": [unicodedata.normalize("NFD", composed)],
           "by_class": {unicodedata.normalize("NFD", composed): {"source": "curated", "concepts": ["regular network"]}}}
    cs = concept_set_from_store(json.loads(json.dumps(doc)), [composed], tmp_path / "concepts.json")
    assert cs.by_class == {composed: ["regular network"]}
