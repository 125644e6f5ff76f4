"""The demo world's ground truth: the ABCD rule, the attribute prior and the concepts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cbm.demo.world import (
    ABCD_CONCEPTS,
    COLOURS,
    CORE_CONCEPTS,
    DEMO_CONCEPTS,
    STRUCTURES,
    Lesion,
    abcd_label,
    concept_by_phrase,
    concept_truth,
    demo_concepts,
    lesion_attributes,
    sample_lesion,
    tds_tenths,
    total_dermoscopy_score,
)


def _stolz(a: int, b: int, c: int, d: int) -> str:
    """The rule as published, in decimal arithmetic (Stolz et al. 1994)."""
    from decimal import Decimal

    tds = Decimal("1.3") * a + Decimal("0.1") * b + Decimal("0.5") * c + Decimal("0.5") * d
    if tds > Decimal("5.45"):
        return "melanoma"
    if tds >= Decimal("4.75"):
        return "suspicious lesion"
    return "benign nevus"


def test_label_rule_matches_stolz_on_every_attribute_combination():
    for a, b, c, d in itertools.product(range(3), range(9), range(1, 7), range(6)):
        expected = _stolz(a, b, c, d)
        tenths = tds_tenths(a, b, c, d)
        assert abcd_label(tenths, 3) == expected
        assert abcd_label(tenths, 2) == ("melanoma" if expected == "melanoma" else "benign nevus")
        assert total_dermoscopy_score(a, b, c, d) == pytest.approx(1.3 * a + 0.1 * b + 0.5 * c + 0.5 * d)


def test_thresholds_are_exact_at_the_boundaries():
    # 4.7 benign, 4.8 suspicious, 5.4 suspicious, 5.5 melanoma (TDS moves in steps of 0.1)
    assert total_dermoscopy_score(1, 4, 3, 3) == pytest.approx(4.7)
    assert abcd_label(tds_tenths(1, 4, 3, 3), 3) == "benign nevus"
    assert abcd_label(tds_tenths(1, 5, 3, 3), 3) == "suspicious lesion"
    assert total_dermoscopy_score(2, 0, 3, 2) == pytest.approx(5.1)
    assert abcd_label(tds_tenths(1, 1, 4, 4), 3) == "suspicious lesion"  # 5.4
    assert abcd_label(tds_tenths(1, 2, 4, 4), 3) == "melanoma"  # 5.5


@pytest.mark.parametrize("bad", [(3, 0, 1, 0), (0, 9, 1, 0), (0, 0, 0, 0), (0, 0, 7, 0), (0, 0, 1, 6), (-1, 0, 1, 0)])
def test_attributes_outside_the_rule_are_rejected(bad):
    with pytest.raises(ValueError, match="range"):
        tds_tenths(*bad)


def test_unknown_class_count_is_rejected():
    with pytest.raises(ValueError, match="2 or 3"):
        abcd_label(50, classes=4)


@pytest.mark.parametrize("classes", [2, 3])
def test_conditioned_lesions_carry_their_label(classes):
    rng = np.random.default_rng(0)
    for label in demo_concepts(classes):
        for _ in range(200):
            lesion = sample_lesion(rng, label=label, classes=classes)
            assert lesion.label(classes) == label
            assert lesion.label(3) == label or classes == 2
            assert any(c in lesion.colours for c in ("light brown", "dark brown"))
            assert lesion.base_colour in lesion.colours


def test_two_class_world_never_draws_the_suspicious_band():
    rng = np.random.default_rng(1)
    tds = [sample_lesion(rng, label=lab, classes=2).tds for lab in ("benign nevus", "melanoma") for _ in range(500)]
    assert not any(4.75 <= t <= 5.45 for t in tds)


def test_sampling_is_deterministic_per_seed():
    a = [sample_lesion(np.random.default_rng([7, i])) for i in range(20)]
    b = [sample_lesion(np.random.default_rng([7, i])) for i in range(20)]
    c = [sample_lesion(np.random.default_rng([8, i])) for i in range(20)]
    assert a == b
    assert a != c


def test_prior_covers_every_attribute_value():
    rng = np.random.default_rng(2)
    lesions = [sample_lesion(rng) for _ in range(3000)]
    assert {x.asymmetry for x in lesions} == {0, 1, 2}
    assert {x.border for x in lesions} == set(range(9))
    assert {len(x.colours) for x in lesions} == set(range(1, 7))
    assert {len(x.structures) for x in lesions} == set(range(6))
    for colour in COLOURS:
        assert 0.3 < np.mean([colour in x.colours for x in lesions]) < 0.9
    for structure in STRUCTURES:
        assert 0.3 < np.mean([structure in x.structures for x in lesions]) < 0.7


def test_lesion_validates_its_base_colour():
    with pytest.raises(ValueError, match="brown"):
        Lesion(0, 0, ("black",), (), 5.0, "black")


def test_concept_truth_follows_the_attributes():
    lesion = Lesion(2, 5, ("light brown", "blue-grey", "white"), ("dots",), 7.0, "light brown")
    row = lesion_attributes(lesion)
    assert row["tds"] == pytest.approx(1.3 * 2 + 0.5 + 1.5 + 0.5)
    truth = {c.phrase: bool(concept_truth([row], c.phrase)[0]) for c in CORE_CONCEPTS}
    assert truth["asymmetric shape"] and truth["irregular border"] and truth["three or more colours"]
    assert not truth["three or more structures"]
    assert truth["blue-grey areas"] and truth["white areas"] and not truth["red areas"]
    assert truth["dots"] and not truth["streaks"] and truth["large diameter"]
    # a negative phrase is the complement of its concept
    assert concept_truth([row], "regular border")[0] != concept_truth([row], "irregular border")[0]
    assert concept_truth({"border": [0, 3, 4, 8]}, "regular border").tolist() == [True, True, False, False]


def test_unknown_concept_names_the_closest_one():
    with pytest.raises(ValueError, match="irregular border"):
        concept_by_phrase("irregular borders")


def test_curated_concepts_are_known_and_abcd_has_one_per_letter():
    from cbm.demo.world import RULE_DETAIL_CONCEPTS

    known = {c.phrase for c in CORE_CONCEPTS} | {c.negative for c in CORE_CONCEPTS} | {c.phrase for c in RULE_DETAIL_CONCEPTS}
    for cls, phrases in DEMO_CONCEPTS.items():
        assert phrases and set(phrases) <= known, cls
    assert sorted(ABCD_CONCEPTS) == ["A", "B", "C", "D"]
    assert list(demo_concepts(2)) == ["benign nevus", "melanoma"]
    # every colour and structure has a concept in both worlds (C and D are counts over them)
    for classes in (2, 3):
        phrases = {p for v in demo_concepts(classes).values() for p in v}
        for concept in CORE_CONCEPTS:
            if concept.letter in ("C", "D") and concept.attribute not in ("n_colours", "n_structures"):
                assert concept.phrase in phrases, (classes, concept.phrase)
    assert list(demo_concepts(3)) == ["benign nevus", "suspicious lesion", "melanoma"]


def test_the_store_truths_determine_the_rule_score():
    """The curated concepts' 0/1 truths give A, C and D exactly (two asymmetry concepts, every colour
    and structure), so a head set from the truth can know what the rule knows (bar B's fine grain)."""
    from cbm.demo.world import sample_lesion

    rng = np.random.default_rng(0)
    phrases = [p for p in dict.fromkeys(p for v in demo_concepts(2).values() for p in v)]
    for _ in range(200):
        lesion = sample_lesion(rng)
        row = lesion_attributes(lesion)
        truth = {p: bool(concept_truth([row], p)[0]) for p in phrases}
        a = int(truth["asymmetric shape"]) + int(truth["asymmetric in two axes"])
        colours = sum(truth[p] for p in ("tan pigment", "dark brown pigment", "black pigment", "red areas",
                                         "blue-grey areas", "white areas"))
        structures = sum(truth[p] for p in ("pigment network", "dots", "globules", "streaks", "structureless areas"))
        assert (a, colours, structures) == (lesion.asymmetry, len(lesion.colours), len(lesion.structures))


def test_abcd_rule_agreement_reads_the_letters_off_a_head():
    from cbm.demo import abcd_rule_agreement

    names = ["asymmetric shape", "irregular border", "three or more colours", "three or more structures", "dots"]
    rule_like = np.array([[-1.3, -0.1, -0.5, -0.4, 0.0], [1.3, 0.1, 0.5, 0.4, 2.0]])
    got = abcd_rule_agreement(names, rule_like, ["benign nevus", "melanoma"])
    assert got["weights"] == pytest.approx({"A": 2.6, "B": 0.2, "C": 1.0, "D": 0.8})
    assert got["spearman"] == pytest.approx(0.9487, abs=1e-4)  # the best a strict order gets (C, D tie)
    # a negative phrase counts against its letter; the order reversed gives a negative correlation
    negated = ["symmetric shape", "regular border", "one or two colours", "at most two structures"]
    got = abcd_rule_agreement(negated, rule_like[:, :4], ["benign nevus", "melanoma"])
    assert got["weights"]["A"] == pytest.approx(-2.6) and got["spearman"] < 0
    # 3 classes: melanoma minus benign nevus; a missing letter is None and the rest still ranked
    three = np.array([[0, 0, 0], [5, 5, 5], [1.0, 0.2, 0.5]])
    got = abcd_rule_agreement(names[:3], three, ["benign nevus", "suspicious lesion", "melanoma"])
    assert got["weights"]["D"] is None and got["letters_found"] == 3 and got["spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="benign nevus"):
        abcd_rule_agreement(names, rule_like, ["a", "b"])


@pytest.mark.parametrize("classes", [2, 3])
def test_the_store_lists_each_concept_the_way_the_rule_counts_it(classes):
    """A concept listed under melanoma (or the suspicious lesion, which it tells from the nevus)
    never lowers the rule's score when present, one listed under the nevus never raises it (bar the
    diameter, which the label ignores): a faithful head, whose weights follow the store, can then
    weigh every criterion the way the rule does."""
    from cbm.demo.world import sample_lesion

    rng = np.random.default_rng(0)
    rows = [lesion_attributes(sample_lesion(rng)) for _ in range(3000)]
    tds = np.array([r["tds"] for r in rows])
    store = demo_concepts(classes)
    for cls, sign in (("melanoma", 1), ("suspicious lesion", 1), ("benign nevus", -1)):
        for phrase in store.get(cls, []):
            if "diameter" in phrase:
                continue
            present = concept_truth(rows, phrase)
            gain = tds[present].mean() - tds[~present].mean()
            assert sign * gain > 0.2, (cls, phrase, gain)
