"""Findings language (cbm.explain.findings): two-sided axes, wording, directions, the summary sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbm.explain.findings import (
    axis_text,
    class_reliance,
    concept_axes,
    findings,
    format_probability,
    percentile_text,
    summary_sentence,
    unused_concepts,
)

CARDS = Path(__file__).resolve().parents[1] / "data_cards"


def _store(name: str) -> list[str]:
    data = json.loads((CARDS / name / "concepts.json").read_text())
    return list(dict.fromkeys(c for v in data["by_class"].values() for c in v.get("concepts", [])))


def _pairs(names) -> set[frozenset]:
    return {frozenset((a.low, a.high)) for a in concept_axes(names)}


def test_axes_of_the_demo_concepts():
    from cbm.demo.world import demo_concepts

    for classes in (2, 3):
        names = list(dict.fromkeys(c for v in demo_concepts(classes).values() for c in v))
        assert _pairs(names) == {frozenset(p) for p in [
            ("symmetric shape", "asymmetric shape"), ("regular border", "irregular border"),
            ("one or two colours", "three or more colours"), ("at most two structures", "three or more structures"),
            ("small diameter", "large diameter")]}


@pytest.mark.parametrize("card, expected", [
    ("ham10000", [("symmetric shape", "asymmetry in two axes"), ("smooth regular border", "irregular border"),
                  ("regular pigment network", "atypical pigment network"), ("one or two colours", "multiple colours"),
                  ("regular dots and globules", "irregular dots and globules")]),
    ("chexpert", [("sharp costophrenic angles", "blunted costophrenic angle"),
                  ("cardiothoracic ratio below 0.5", "cardiothoracic ratio above 0.5"),
                  ("well-defined hemidiaphragms", "obscured hemidiaphragm"), ("crisp heart borders", "obscured heart border"),
                  ("mediastinal shift toward the opacity", "mediastinal shift away from the opacity")]),
    ("covid-qu-ex", [("absent pleural fluid", "pleural fluid")]),
    ("pad-ufes-20", [("irregular border", "smooth regular border"), ("asymmetry in two axes", "symmetric shape")]),
    ("skincon", []),
])
def test_axes_of_built_in_concept_stores(card, expected):
    assert _pairs(_store(card)) == {frozenset(p) for p in expected}


def test_axes_never_pair_different_attributes_and_pair_each_concept_once():
    for card in sorted(p.name for p in CARDS.iterdir() if (p / "concepts.json").is_file()):
        names = _store(card)
        seen = [c for a in concept_axes(names) for c in (a.low, a.high)]
        assert len(seen) == len(set(seen)), card
    assert _pairs(["irregular streaks", "regular pigment network", "absent pigment network", "network fading",
                   "round well-defined opacity", "ill-defined opacity", "papule", "macule"]) == set()
    assert _pairs(["dots", "no dots", "interstitial opacities"]) == {frozenset(("dots", "no dots"))}


def test_axis_wording_keeps_the_shared_words_once():
    assert axis_text("irregular border", "regular border") == "Irregular, not regular border"
    assert axis_text("three or more colours", "one or two colours") == "Three or more, not one or two colours"
    assert axis_text("symmetric shape", "asymmetry in two axes") == "Symmetric shape, not asymmetry in two axes"
    assert axis_text("symmetric shape", "asymmetric shape", "between") == "Between symmetric and asymmetric shape"


def _one(scores, pct, coef, names, axes=()):
    return findings(scores, pct, np.asarray(coef, np.float32), ["melanoma", "nevus"], names, "melanoma", "nevus",
                    axes)


def test_an_absent_finding_is_said_as_absent_with_its_direction():
    """The issue's case: symmetric shape at the 21st percentile with a negative melanoma weight is
    "Not symmetric shape -> favours melanoma", not "symmetric shape +2.20 to melanoma"."""
    names = ["symmetric shape", "asymmetric shape", "globules"]
    coef = [[-2.2, 0.0, 0.0], [0.0, 0.0, 0.6]]  # melanoma: symmetric shape negative; nevus: globules
    axes = concept_axes(names)
    out = _one({"symmetric shape": -1.0, "asymmetric shape": 0.4, "globules": -1.3},
               {"symmetric shape": 21.0, "asymmetric shape": 60.0, "globules": 9.0}, coef, names, axes)
    by_text = {f.text: f for f in out}
    sym = by_text["Not symmetric shape"]  # only one pole has a weight: no axis
    assert sym.state == "absent" and sym.favours == "melanoma" and sym.effect == pytest.approx(2.2)
    assert sym.where == "21st percentile" and sym.seen is None
    glob = by_text["No globules"]
    assert glob.favours == "melanoma" and glob.effect == pytest.approx(0.78) and glob.seen is None
    assert [f.text for f in out] == ["Not symmetric shape", "No globules"]


def test_the_state_follows_the_percentile_the_page_shows():
    """The page says "at or below the 35th it reads as absent": 35.3, shown as the 35th, is absent,
    and 64.6, shown as the 65th, present (they read as borderline before)."""
    names = ["globules", "dots"]
    coef = [[0.0, 0.0], [0.8, 0.5]]
    out = _one({"globules": -0.4, "dots": 0.4}, {"globules": 35.33, "dots": 64.6}, coef, names, concept_axes(names))
    by_where = {f.where: f.state for f in out}
    assert by_where == {"35th percentile": "absent", "65th percentile": "present"}


def test_a_finding_never_reads_against_the_value_the_head_weighs():
    """A concept read as a probability that most training images show: at the 31st percentile it is
    still 0.99 likely, above the training mean of 0.71, so it pushes towards melanoma. It reads
    borderline, not "No tan pigment -> favours melanoma"; one below its mean at the 70th, likewise."""
    names = ["tan pigment", "dots", "globules"]
    coef = np.array([[0.0, 0.0, 0.0], [2.15, 1.5, 1.0]])  # benign nevus, melanoma
    values = {"tan pigment": 0.99 - 0.71, "dots": 0.60 - 0.75, "globules": -0.5}
    out = findings({"tan pigment": -0.2, "dots": 0.5, "globules": -1.0}, {"tan pigment": 31.0, "dots": 70.0,
                   "globules": 10.0}, coef, ["benign nevus", "melanoma"], names, "melanoma", "benign nevus",
                   concept_axes(names), values=values)
    by_concept = {f.concepts[0]: f for f in out}
    tan, dots, glob = by_concept["tan pigment"], by_concept["dots"], by_concept["globules"]
    assert tan.favours == "melanoma" and tan.state == "borderline" and tan.text == "Borderline: tan pigment"
    assert tan.seen == "tan pigment"  # a borderline finding keeps its map
    assert dots.favours == "benign nevus" and dots.state == "borderline"
    assert dots.seen is None  # it rests on dots being below their average: where they are strongest is no evidence
    assert glob.state == "absent" and glob.text == "No globules" and glob.favours == "benign nevus"


def test_a_concept_read_as_a_probability_is_judged_by_it():
    """A clinician's complaint on the demo: "symmetric shape" at P 0.01 sat at the 49th percentile
    (most training lesions are asymmetric) and read "Borderline: symmetric shape -> favours
    melanoma", hiding that the model saw no symmetry; "dark brown pigment" at P 0.99 at the 30th.
    With their probabilities the findings say what the model read, the percentile beside it."""
    names = ["symmetric shape", "dark brown pigment", "dots", "globules", "asymmetric shape"]
    coef = np.array([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.8, 1.2, 0.9, 0.0]])  # benign nevus, melanoma
    probs = {"symmetric shape": 0.004, "dark brown pigment": 0.99, "dots": 0.5, "globules": 0.30, "asymmetric shape": 0.9}
    means = {"symmetric shape": 0.30, "dark brown pigment": 0.73, "dots": 0.45, "globules": 0.20, "asymmetric shape": 0.7}
    pct = {"symmetric shape": 49.0, "dark brown pigment": 30.0, "dots": 60.0, "globules": 50.0, "asymmetric shape": 55.0}
    out = findings({c: 0.0 for c in names}, pct, coef, ["benign nevus", "melanoma"], names, "melanoma",
                   "benign nevus", concept_axes(names), values={c: probs[c] - means[c] for c in names},
                   probabilities=probs)
    by = {f.concepts[0]: f for f in out}
    assert by["symmetric shape"].text == "Not symmetric shape" and by["symmetric shape"].state == "absent"
    assert by["symmetric shape"].favours == "melanoma" and by["symmetric shape"].seen is None
    assert by["symmetric shape"].where == "P(present) <1 %, 49th percentile"
    assert by["dark brown pigment"].text == "Dark brown pigment" and by["dark brown pigment"].state == "present"
    assert by["dots"].state == "borderline"
    # P 0.30 says absent, but above the training mean of 0.20 the head counts it towards melanoma
    assert by["globules"].state == "borderline" and by["globules"].favours == "melanoma"
    sentence = summary_sentence("melanoma", "benign nevus", {"melanoma": 0.7, "benign nevus": 0.3}, out)
    assert "symmetric shape absent (P(present) <1 %, 49th percentile)" in sentence


def test_an_axis_with_both_poles_weighted_is_one_finding():
    names = ["symmetric shape", "asymmetric shape"]
    coef = [[0.0, 1.5], [1.0, 0.0]]
    axes = concept_axes(names)
    (f,) = _one({"symmetric shape": -1.2, "asymmetric shape": 1.1}, {"symmetric shape": 12.0, "asymmetric shape": 86.0},
                coef, names, axes)
    assert f.text == "Asymmetric, not symmetric shape" and f.state == "present" and f.seen == "asymmetric shape"
    assert f.favours == "melanoma" and f.effect == pytest.approx(1.5 * 1.1 + 1.2)
    assert f.where == "symmetric shape: 12th percentile; asymmetric shape: 86th percentile"
    (both,) = _one({"symmetric shape": 1.2, "asymmetric shape": 1.1}, {"symmetric shape": 89.0, "asymmetric shape": 80.0},
                   coef, names, axes)
    assert both.text == "Symmetric and asymmetric shape both score high" and both.state == "borderline"
    (mid,) = _one({"symmetric shape": 0.0, "asymmetric shape": 0.1}, {"symmetric shape": 50.0, "asymmetric shape": 55.0},
                  coef, names, axes)
    assert mid.text == "Between symmetric and asymmetric shape"


def test_two_classes_have_one_panel_not_a_mirror():
    """With two classes the findings against the runner-up are the whole decision: each concept
    appears once, favouring one class or the other (not once per class with opposite signs)."""
    names = ["a", "b", "c"]
    coef = [[1.0, 0.0, -0.5], [0.0, 0.8, 0.5]]
    out = _one({"a": 1.0, "b": 1.0, "c": -1.0}, {"a": 80.0, "b": 80.0, "c": 20.0}, coef, names)
    assert sorted(c for f in out for c in f.concepts) == names
    assert {f.text: f.favours for f in out} == {"A": "melanoma", "B": "nevus", "No c": "melanoma"}


def test_class_reliance_and_unused_concepts():
    names = ["symmetric shape", "asymmetric shape", "globules", "streaks"]
    coef = np.array([[-0.5, 2.0, 0.0, 0.0], [1.0, 0.0, 0.3, 0.0]], np.float32)
    three = np.vstack([coef, np.zeros((1, 4), np.float32)])
    out = class_reliance(three, ["melanoma", "nevus", "other"], names, concept_axes(names))
    assert out["melanoma"] == [("Asymmetric, not symmetric shape", 2.5)] and out["other"] == []
    assert out["nevus"] == [("Symmetric shape", 1.0), ("Globules", pytest.approx(0.3))]
    assert unused_concepts(coef, names) == ["streaks"]
    # two classes: each class's weight less the other's (the log-odds the report's odds are in), a
    # concept once under the class its presence favours; a head's split +w/2, -w/2 reads as w
    out = class_reliance(coef, ["melanoma", "nevus"], names, concept_axes(names))
    assert out["melanoma"] == [("Asymmetric, not symmetric shape", 3.5)]
    assert out["nevus"] == [("Symmetric, not asymmetric shape", 3.5), ("Globules", pytest.approx(0.3))]
    split = class_reliance(np.array([[0.5, 0.0], [-0.5, 0.0]]), ["melanoma", "nevus"], ["globules", "streaks"])
    assert split == {"melanoma": [("Globules", 1.0)], "nevus": []}


def test_numbers_for_people():
    assert [format_probability(p) for p in (0.999, 0.991, 0.99, 0.889, 0.5, 0.011, 0.004)] == [
        ">99 %", ">99 %", "99 %", "89 %", "50 %", "1 %", "<1 %"]
    assert [percentile_text(p) for p in (21.3, 1.0, 2.2, 3.0, 11.0, 12.0, 13.0, 99.7, 100.0, 0.0, None)] == [
        "21st percentile", "1st percentile", "2nd percentile", "3rd percentile", "11th percentile", "12th percentile",
        "13th percentile", "99th percentile", "higher than every training image", "lower than every training image",
        "percentile unknown"]


def test_summary_sentence():
    names = ["irregular border", "globules"]
    coef = [[1.0, 0.0], [0.0, 0.9]]
    out = _one({"irregular border": 1.5, "globules": 1.2}, {"irregular border": 90.0, "globules": 82.0}, coef, names)
    text = summary_sentence("melanoma", "nevus", {"melanoma": 0.995, "nevus": 0.005}, out)
    assert text == ("The model favours melanoma (>99 %) over nevus (<1 %), chiefly on irregular border "
                    "(90th percentile); globules (82nd percentile) points the other way.")
    assert "no single finding" in summary_sentence("melanoma", "nevus", {"melanoma": 0.6, "nevus": 0.4}, [])
    # an absent finding reads as a low score, not as the concept
    low = _one({"irregular border": -1.5, "globules": 0.0}, {"irregular border": 10.0, "globules": 50.0},
               [[-1.0, 0.0], [0.0, 0.9]], names)
    assert summary_sentence("melanoma", "nevus", {"melanoma": 0.8, "nevus": 0.2}, low) == (
        "The model favours melanoma (80 %) over nevus (20 %), chiefly on irregular border scoring low (10th percentile).")


@pytest.mark.parametrize("name, absent", [
    ("asymmetric in two axes", "Not asymmetric in two axes"),  # a description: "No asymmetric in two axes" reads wrong
    ("enlarged", "Not enlarged"),
    ("pigmented at the centre", "Not pigmented at the centre"),
    ("globules", "No globules"),  # things
    ("irregular border", "No irregular border"),
    ("blue-white veil", "No blue-white veil"),
    ("enlarged heart", "No enlarged heart"),
    ("stent in the artery", "No stent in the artery"),  # nouns whose ending an adjective could have
    ("implant at the site", "No implant at the site"),
    ("pigment in the dermis", "No pigment in the dermis"),
    ("scar on the skin", "No scar on the skin"),
    ("metal in the field", "No metal in the field"),
    ("nodular at the margin", "Not nodular at the margin"),
    ("cable in the chest", "No cable in the chest"),
    ("adhesive on the skin", "No adhesive on the skin"),
])
def test_an_absent_description_reads_not_and_an_absent_thing_no(name, absent):
    from cbm.explain.findings import _single

    state, text, seen = _single(name, 10.0, -1.2, attribute=False, value=-1.0)
    assert (state, text, seen) == ("absent", absent, None)
    # the class card words a concept that pushes away from a class the same way
    from cbm.explain.findings import class_reliance

    assert class_reliance(np.array([[-1.0], [1.0], [0.0]]), ["a", "b", "c"], [name])["a"] == [(absent, 1.0)]
