"""Concept filtering (cbm.concepts.filtering): every rule, and that nothing disappears silently."""

from __future__ import annotations

import numpy as np
import pytest

from cbm.concepts.filtering import FilterConfig, clean_phrase, filter_concepts, phrase_key
from cbm.concepts.testing import char_ngram_embed

CLASSES = ["melanoma", "melanocytic_nevus", "seborrheic keratosis"]


def rules(result):
    return {r["concept"]: r["rule"] for r in result.removed}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  Irregular   Border. ", "irregular border"),
        ("1. Blue-White Veil", "blue-white veil"),
        ("- \u201cdotted vessels\u201d;", "dotted vessels"),
        ("ETT tip above the carina", "ETT tip above the carina"),
        ("2) Kerley B lines", "kerley b lines"),
        (".-type of skin lesion", "type of skin lesion"),  # a small model's stray punctuation
    ],
)
def test_clean_phrase(raw, clean):
    assert clean_phrase(raw) == clean


def test_phrase_key_folds_case_plurals_hyphens_and_articles():
    assert phrase_key("The Irregular Borders") == phrase_key("irregular border")
    assert phrase_key("blue-white veil") == phrase_key("Blue white veils")
    assert phrase_key("opacities") == phrase_key("opacity")
    assert phrase_key("keratoses") == phrase_key("keratosis") and phrase_key("metastases") == "metastasis"
    assert phrase_key("atelectasis") == "atelectasis" and phrase_key("diffuse") == "diffuse"
    assert phrase_key("irregular border") != phrase_key("regular border")
    # -es plurals of s/x/ch/sh words, and -se words that are no Greek -sis plurals
    assert phrase_key("multiple masses") == "multiple mass" and phrase_key("white patches") == phrase_key("white patch")
    assert phrase_key("headaches") == phrase_key("headache") and phrase_key("diseases") == phrase_key("disease")
    assert phrase_key("aches") == phrase_key("ache")
    assert phrase_key("psoriases") == "psoriasis" and phrase_key("rashes") == "rash"


def test_one_stem_with_another_degree_prefix_is_never_merged():
    """hyperechoic / hypoechoic are opposite findings however close a text tower puts them."""
    def close(texts):  # an embedder that sees these findings as one, and far from the class names
        return np.array([[1.0, 0, 0] if "echoic" in t else [0, 1.0, 0] if "calcification" in t else [0, 0, 1.0]
                         for t in texts], np.float32)

    proposals = {"melanoma": ["hyperechoic nodule", "macrocalcifications"],
                 "melanocytic_nevus": ["hypoechoic nodule", "microcalcifications", "isoechoic nodule"]}
    config = FilterConfig(duplicate_threshold=0.92)
    results = filter_concepts(proposals, CLASSES, embed=close, config=config)
    assert results["melanocytic_nevus"].kept == proposals["melanocytic_nevus"]
    assert results["melanoma"].kept == proposals["melanoma"]


def test_string_rules_clean_limit_and_catch_class_names():
    proposals = {
        "melanoma": [
            "Irregular border.",
            "x",
            "  ",
            "a very long description of many features seen in the lesion at once",
            "melanoma-specific network",  # names its own class
            "seborrheic keratoses-like pattern",  # names another class, plural folded
            "melanocytic network",  # "melanocytic" alone is not the class "melanocytic nevus"
            "irregular borders",  # same concept as the first, in other words
            "irregular border",  # repeated verbatim
        ]
    }
    result = filter_concepts(proposals, CLASSES)["melanoma"]
    assert result.kept == ["irregular border", "melanocytic network"]
    removed = {r["concept"]: (r["rule"], r["reason"]) for r in result.removed}
    assert removed["x"][0] == "length" and "too short" in removed["x"][1]
    assert removed["  "][0] == "empty"
    assert removed["a very long description of many features seen in the lesion at once"][0] == "length"
    assert removed["melanoma-specific network"] == ("leakage", "names the class 'melanoma'")
    assert removed["seborrheic keratoses-like pattern"] == ("leakage", "names the class 'seborrheic keratosis'")
    assert removed["irregular borders"][0] == "duplicate" and "'irregular border'" in removed["irregular borders"][1]
    assert removed["irregular border"] == ("duplicate", "repeated")
    # every proposal is accounted for: kept or removed with a reason
    assert len(result.kept) + len(result.removed) == len(proposals["melanoma"])


def test_multiword_class_names_match_as_whole_words_only():
    result = filter_concepts({"melanoma": ["seborrheic pattern", "keratosis pilaris-like dots"]}, CLASSES)["melanoma"]
    assert result.kept == ["seborrheic pattern", "keratosis pilaris-like dots"]


def test_a_concept_of_several_classes_is_one_concept_with_the_first_wording():
    proposals = {
        "melanoma": ["blue-white veil", "irregular dots"],
        "melanocytic_nevus": ["Blue-white veils", "regular network"],
        "seborrheic keratosis": ["blue-white veil", "milia-like cysts"],
    }
    results = filter_concepts(proposals, CLASSES)
    assert results["melanocytic_nevus"].kept == ["blue-white veil", "regular network"]
    merged = results["melanocytic_nevus"].removed[0]
    assert merged["rule"] == "merged" and "'blue-white veil'" in merged["reason"] and "'melanoma'" in merged["reason"]
    # classes without proposals (not answered yet) are simply not in the result
    partial = filter_concepts({k: proposals[k] for k in ("melanocytic_nevus", "seborrheic keratosis")}, CLASSES)
    assert sorted(partial) == ["melanocytic_nevus", "seborrheic keratosis"]
    assert partial["seborrheic keratosis"].kept == ["blue-white veils", "milia-like cysts"]
    assert "proposed for 'melanocytic_nevus'" in partial["seborrheic keratosis"].removed[0]["reason"]
    # the same words verbatim are simply shared, nothing to report
    assert results["seborrheic keratosis"].kept == ["blue-white veil", "milia-like cysts"]
    assert results["seborrheic keratosis"].removed == []


def test_embedding_rules_catch_paraphrases_and_near_names_but_never_merge_opposites():
    config = FilterConfig(duplicate_threshold=0.7, leakage_threshold=0.5)
    proposals = {
        "melanoma": ["blue-white veil", "irregular pigment network", "atypical network", "melanomatous streaks"],
        "melanocytic_nevus": ["bluish-white veil", "regular pigment network", "typical network", "dotted vessels",
                              "dotted vessel pattern"],
    }
    without = filter_concepts(proposals, CLASSES, config=config)
    assert "bluish-white veil" in without["melanocytic_nevus"].kept  # spelling differs: strings alone miss it
    assert "melanomatous streaks" in without["melanoma"].kept

    results = filter_concepts(proposals, CLASSES, embed=char_ngram_embed, config=config)
    melanoma, nevus = results["melanoma"], results["melanocytic_nevus"]
    assert melanoma.kept == ["blue-white veil", "irregular pigment network", "atypical network"]
    leak = next(r for r in melanoma.removed if r["concept"] == "melanomatous streaks")
    assert leak["rule"] == "leakage" and "class name 'melanoma' (cosine" in leak["reason"]
    assert nevus.kept == ["blue-white veil", "regular pigment network", "typical network", "dotted vessels"]
    assert rules(nevus) == {"bluish-white veil": "merged", "dotted vessel pattern": "duplicate"}
    assert "cosine" in nevus.removed[0]["reason"]


def test_curated_lists_are_kept_verbatim_and_their_wording_wins():
    curated = {"melanoma": ["Asymmetry in two axes", "melanoma-pattern score"]}  # a person's choice: untouched
    proposals = {"melanocytic_nevus": ["asymmetry in two axes", "symmetric shape"]}
    results = filter_concepts(proposals, CLASSES, curated=curated)
    assert results["melanoma"].kept == curated["melanoma"] and results["melanoma"].removed == []
    assert results["melanocytic_nevus"].kept == ["Asymmetry in two axes", "symmetric shape"]
    assert rules(results["melanocytic_nevus"]) == {"asymmetry in two axes": "merged"}


def test_the_cap_keeps_the_first_concepts_and_records_the_rest():
    proposals = {"melanoma": [f"feature number {i}" for i in range(6)]}
    result = filter_concepts(proposals, CLASSES, config=FilterConfig(max_per_class=4))["melanoma"]
    assert result.kept == [f"feature number {i}" for i in range(4)]
    assert [(r["concept"], r["rule"]) for r in result.removed] == [("feature number 4", "cap"), ("feature number 5", "cap")]


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"classes \['nevus'\] are not among"):
        filter_concepts({"nevus": ["x y z"]}, CLASSES)
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for 5 texts"):
        filter_concepts({"melanoma": ["abc", "def"]}, CLASSES, embed=lambda texts: np.ones((2, 3)))
    with pytest.raises(ValueError, match="max_per_class must be at least 1"):
        FilterConfig(max_per_class=0)
    with pytest.raises(ValueError, match=r"unknown settings \['cap'\]"):
        FilterConfig().updated({"cap": 3})


def test_copies_of_the_prompt_are_removed_with_their_rule():
    offered = {"feature": "placeholder", "blue-white veil": "example"}
    proposals = {"melanoma": ["Feature", "feature 3", "features", "Blue-white veils", "featureless centre",
                              "irregular border"]}
    result = filter_concepts(proposals, CLASSES, prompt_phrases=offered)["melanoma"]
    assert result.kept == ["featureless centre", "irregular border"]
    assert rules(result) == {"feature": "placeholder", "feature 3": "placeholder", "features": "placeholder",
                             "blue-white veils": "example"}
    assert result.removed[0]["reason"] == "the answer template's placeholder 'feature', not a concept"
    kept = filter_concepts(proposals, CLASSES, prompt_phrases=offered,
                           config=FilterConfig(keep_prompt_examples=True))["melanoma"]
    assert "blue-white veils" in kept.kept and "feature" not in kept.kept  # the placeholder always goes
    curated = filter_concepts({}, CLASSES, curated={"melanoma": ["blue-white veil"]}, prompt_phrases=offered)
    assert curated["melanoma"].kept == ["blue-white veil"]  # a person's list is not filtered


def test_filter_settings_are_type_checked():
    with pytest.raises(ValueError, match="max_per_class"):
        FilterConfig(max_per_class="3")
    with pytest.raises(ValueError, match="min_chars"):
        FilterConfig.from_dict({"min_chars": 2.5})


def test_phrases_in_other_scripts_stay_distinct_and_their_class_names_leak():
    """An answer in Chinese or Russian is words too: before, every such phrase had the empty key, so
    all of them were one concept (kept for the first class only)."""
    out = filter_concepts({"melanoma": ["不对称形状", "多种颜色"], "nevus": ["对称形状"]}, ["melanoma", "nevus"])
    assert out["melanoma"].kept == ["不对称形状", "多种颜色"] and out["nevus"].kept == ["对称形状"]
    out = filter_concepts({"меланома": ["меланома in situ", "неровный край"]}, ["меланома", "невус"])
    assert out["меланома"].kept == ["неровный край"] and out["меланома"].removed[0]["rule"] == "leakage"


def test_latin_plurals_initials_and_numbered_names_leak_the_class():
    classes = ["nevus", "basal cell carcinoma", "covid-19"]
    out = filter_concepts({"nevus": ["resembles other nevi", "regular network"],
                           "basal cell carcinoma": ["BCC-like arborizing vessels", "arborizing vessels"],
                           "covid-19": ["COVID-like ground glass", "peripheral ground glass"]}, classes)
    assert out["nevus"].kept == ["regular network"]
    assert out["basal cell carcinoma"].kept == ["arborizing vessels"]
    assert out["covid-19"].kept == ["peripheral ground glass"]
    assert phrase_key("bullae") == phrase_key("bulla") and phrase_key("emboli") == phrase_key("embolus")


def test_one_item_holding_a_list_is_split_into_its_concepts():
    out = filter_concepts({"melanoma": ["irregular border, blue-white structures, multiple colours",
                                        "- atypical dots\n- regression structures", "dark, irregular, asymmetric lesion"]},
                          ["melanoma", "nevus"])
    assert out["melanoma"].kept == ["irregular border", "blue-white structures", "multiple colours", "atypical dots",
                                    "regression structures", "dark, irregular, asymmetric lesion"]
