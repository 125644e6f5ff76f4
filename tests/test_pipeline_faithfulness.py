"""Faithfulness figures: sign agreement, interventions, the oracle, cue leakage, and their refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cbm.pipeline.faithfulness import _sign_agreement, intervention_curve
from cbm.pipeline.inputs import SplitData
from cbm.pipeline.truth import UNRELATED_PHI, check_store, check_truth_names, phi_matrix, truth_matrix


def _world(n: int = 2000, seed: int = 0):
    """Two classes; concept a and b follow the label, u is unrelated; scores are truth plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    truth = np.stack([(rng.random(n) < np.where(y == 1, 0.9, 0.1)),
                      (rng.random(n) < np.where(y == 1, 0.2, 0.8)),
                      rng.random(n) < 0.5], 1).astype(float)
    z = (truth - 0.5) * 2 + rng.normal(0, 1.2, truth.shape)
    return y, truth, z.astype(np.float32)


def test_phi_and_sign_agreement_count_unrelated_concepts_as_disagreeing():
    y, truth, _ = _world()
    phi = phi_matrix(truth, y, 2)
    assert phi[1, 0] > 0.6 and phi[1, 1] < -0.5 and abs(phi[1, 2]) < UNRELATED_PHI
    names = ["a", "b", "u"]
    faithful = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])  # a -> class 1, b -> class 0
    r = _sign_agreement(faithful, names, names, phi, ["n", "m"])
    assert r["sign_agreement"] == 1.0 and r["disagreeing"] == []
    contrary = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]])  # the unrelated u gets a weight
    r = _sign_agreement(contrary, names, names, phi, ["n", "m"])
    assert r["sign_agreement"] == pytest.approx(3 / 4)
    assert r["disagreeing"][0]["concept"] == "u"
    wrong = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # a pushes towards the class it argues against
    assert _sign_agreement(wrong, names, names, phi, ["n", "m"])["sign_agreement"] == 0.0
    # a weight on a concept without truth is set aside, and its share reported
    r = _sign_agreement(faithful, names, ["a"], phi[:, :1], ["n", "m"])
    assert r["sign_agreement"] == 1.0 and r["weight_without_truth"] == pytest.approx(1 / 3)


def test_interventions_of_a_faithful_head_help_and_of_a_contrast_head_hurt():
    y, truth, z = _world(seed=1)
    names = ["a", "b", "u"]
    # the levels of images annotated absent / present (what the model keeps when the card has truth)
    levels = tuple(np.array([z[truth[:, j] == v, j].mean() for j in range(3)], np.float32) for v in (0, 1))
    evaluations = {"id": (z, y, truth, names)}
    faithful = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    curve, order = intervention_curve(faithful, np.zeros(2, np.float32), names, levels, evaluations)
    assert [p["k"] for p in curve] == [0, 1, 2] and order == ["a", "b"]
    acc = [p["id_accuracy"] for p in curve]
    assert acc[0] < acc[1] < acc[2]
    # each step's cases set right and set wrong account for its change in accuracy, and test it
    from cbm.pipeline.faithfulness import step_test

    assert "id_changed" not in curve[0]
    for before, point in zip(curve, curve[1:]):
        changed = point["id_changed"]
        assert changed["gained"] - changed["lost"] == round(len(y) * (point["id_accuracy"] - before["id_accuracy"]))
        assert changed["gained"] > changed["lost"] > 0 and step_test(changed) < 0.01
    assert step_test({"gained": 10, "lost": 12}) > 0.5 and step_test({"gained": 0, "lost": 0}) == 1.0
    # opposite phrases whose scores share a large common part (what every prompt shares): a head
    # that uses their difference with one sign is hurt when one of them is set from the truth
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 3, len(y))[:, None]
    opposite = np.stack([truth[:, 0], 1 - truth[:, 0]], 1)
    zo = (opposite - 0.5) + shared + rng.normal(0, 0.3, opposite.shape)
    zo = ((zo - zo.mean(0)) / zo.std(0)).astype(np.float32)
    lv = tuple(np.array([zo[opposite[:, j] == v, j].mean() for j in range(2)], np.float32) for v in (0, 1))
    contrast = np.array([[0.0, 0.0], [3.0, -3.0]], np.float32)
    curve, _ = intervention_curve(contrast, np.zeros(2, np.float32), ["a", "not a"], lv, {"id": (zo, y, opposite, ["a", "not a"])})
    assert curve[1]["id_accuracy"] < curve[0]["id_accuracy"] - 0.05
    with pytest.raises(ValueError, match=r"no weight to \['u'\]"):
        intervention_curve(faithful, np.zeros(2, np.float32), names, levels, evaluations, concepts=["u"])
    # a concept annotated on no case of an evaluated split is no step of the curve (it would be flat)
    blank = truth.copy()
    blank[:, 1] = np.nan
    two = {"id": (z, y, truth, names), "ood": (z, y, blank, names)}
    curve, order = intervention_curve(faithful, np.zeros(2, np.float32), names, levels, two)
    assert order == ["a"] and [p["k"] for p in curve] == [0, 1]


def _card(tmp_path, mapping):
    return SimpleNamespace(name="toy", path=tmp_path / "card.yaml", manifest_path=tmp_path / "manifest.csv",
                           concept_truth=mapping)


def test_truth_columns_are_parsed_and_bad_names_or_values_are_refused(tmp_path):
    card = _card(tmp_path, {"irregular border": "t_border", "dots": "t_dots"})
    split = SplitData("test", np.zeros((4, 2), np.float32), np.zeros(4, int), None, ["a", "b", "c", "d"],
                      extras=[{"t_border": "1", "t_dots": "absent"}, {"t_border": "no", "t_dots": ""},
                              {"t_border": "TRUE", "t_dots": "present"}, {"t_border": "0", "t_dots": "yes"}])
    names, truth = truth_matrix(card, split, ["dots", "irregular border", "streaks"])
    assert names == ["dots", "irregular border"]
    np.testing.assert_array_equal(truth[:, 1], [1, 0, 1, 0])
    assert np.isnan(truth[1, 0]) and truth[0, 0] == 0 and truth[3, 0] == 1
    split.extras[0]["t_dots"] = "maybe"
    with pytest.raises(ValueError, match=r"t_dots.*'maybe'.*1/0, yes/no"):
        truth_matrix(card, split, ["dots"])
    typo = _card(tmp_path, {"irregular borders": "t_border", "dots": "t_dots"})
    with pytest.raises(ValueError, match=r"'irregular borders' \(closest: 'irregular border'"):
        check_truth_names(typo, ["irregular border", "dots"])
    check_truth_names(card, ["dots"], store_names=["irregular border"])  # a store concept is fine


def test_a_card_without_truth_is_not_measured_and_says_why():
    from cbm.pipeline.faithfulness import measure_faithfulness

    model = SimpleNamespace(bottleneck=SimpleNamespace(concept_names=["a"]), coef=np.array([[-1.0], [1.0]]),
                            intercept=np.zeros(2), concept_scores_from_features=lambda f: f[:, :1],
                            concept_values=lambda z: z)
    card = SimpleNamespace(name="plain", concept_truth={}, group_column="ruler")
    out = measure_faithfulness(model, card, {})
    assert out == {"measured": False, "reason": "card 'plain' names no concept truth columns (concept_truth)"}
    # the cue needs no concept truth: a card with a group gets its leakage all the same
    rng = np.random.default_rng(0)
    labels, cue = np.repeat([0, 1], 100), np.tile([0, 1], 100)
    feature = (labels + 0.8 * cue + rng.normal(0, 0.5, 200))[:, None].astype(np.float32)  # the concept reads the cue
    test = SplitData("test", feature, labels, np.where(cue == 1, "ruler", "none"), [str(i) for i in range(200)])
    out = measure_faithfulness(model, card, {"test": test})
    assert out["measured"] is False and out["reason"].startswith("card 'plain' names no concept truth")
    assert out["cue_leakage"]["logit_auroc"] > 0.8 and out["cue_leakage"]["scores_auroc"] > 0.8


def test_the_store_is_checked_against_the_truth_of_the_training_split(tmp_path):
    """An entry whose truth is unrelated to its class, argues against it, or has no association
    (annotated on one class only) is dropped; unannotated concepts and entries the truth bears out
    are kept, also with partial annotations; too few annotations judge nothing."""
    y, truth, _ = _world(seed=3)
    truth[::3, 0] = np.nan  # a is annotated on two thirds of the images
    only_m = np.where(y == 1, truth[:, 0], np.nan)  # o: annotated on melanomas only
    columns = {"a": "t_a", "b": "t_b", "u": "t_u", "o": "t_o"}
    extras = [{"t_a": "" if np.isnan(a) else str(int(a)), "t_b": str(int(b)), "t_u": str(int(u)),
               "t_o": "" if np.isnan(o) else str(int(o))} for (a, b, u), o in zip(truth, only_m)]
    split = SplitData("train", np.zeros((len(y), 4), np.float32), y, None, [str(i) for i in range(len(y))], extras=extras)
    card = SimpleNamespace(**vars(_card(tmp_path, columns)), class_names=["n", "m"])
    names = ["unannotated", "u", "o", "b", "a"]  # not in the card's order: the truth's columns differ from these
    prior = np.array([[1, 0, 0, 1, 0], [0, 1, 1, 1, 1]], np.float32)  # b is listed under m too (wrongly), u under m
    checked, record = check_store(card, split, names, prior)
    np.testing.assert_array_equal(checked, [[1, 0, 0, 1, 0], [0, 0, 0, 0, 1]])
    assert record["checked"] and record["concepts_checked"] == 4 and record["threshold"] == UNRELATED_PHI
    assert {(d["class"], d["concept"]) for d in record["dropped"]} == {("m", "b"), ("m", "u"), ("m", "o")}
    assert next(d for d in record["dropped"] if d["concept"] == "o")["association"] is None
    assert record["classes_left_without_concepts"] == []
    assert prior[1, 3] == 1  # the caller's prior is not changed
    only_u = np.array([[0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], np.float32)
    assert check_store(card, split, names, only_u)[1]["classes_left_without_concepts"] == ["m"]
    few = SplitData("train", split.features[:60], y[:60], None, split.paths[:60], extras=extras[:60])
    same, record = check_store(card, few, names, prior)
    np.testing.assert_array_equal(same, prior)
    assert record == {"checked": False, "reason": "no concept of card 'toy' is annotated on 100 training images with at "
                                                  "least 5 present and 5 absent"}
    assert check_store(card, split, ["unannotated"], prior[:, :1])[1]["reason"] == "none of the concepts has a truth column in card 'toy'"
    bare = SimpleNamespace(name="plain", concept_truth={}, class_names=["n", "m"])
    assert check_store(bare, split, names, prior)[1] == {"checked": False, "reason": "card 'plain' names no concept truth columns"}


def test_the_store_check_on_a_real_card_and_its_curated_store():
    """derm7pt's card (7-point checklist truth, values as its manifest writes them) and its curated
    store: the annotated melanoma criteria are judged, one whose truth is unrelated to melanoma in
    these rows is dropped, one that follows melanoma is kept, and the nevus's unannotated concepts
    keep their entries."""
    from cbm.concepts import load_concepts
    from cbm.data import load_card

    card = load_card("derm7pt")
    store = load_concepts(card)
    names = list(store.concepts)
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 600)  # 0 nevus, 1 melanoma
    follows = rng.random(600) < np.where(y == 1, 0.8, 0.2)
    extras = [{column: "" for column in card.concept_truth.values()} for _ in y]
    for row, f in zip(extras, follows):
        row["truth_atypical_pigment_network"] = str(int(f))
        row["truth_blue_whitish_veil"] = str(int(rng.random() < 0.3))  # unrelated to the label here
    split = SplitData("train", np.zeros((600, 1), np.float32), y, None, [f"{i}.jpg" for i in range(600)], extras=extras)
    prior = store.prior()
    checked, record = check_store(card, split, names, prior)
    assert record["checked"] and record["concepts_checked"] == 2  # the other five columns are empty (not annotated)
    assert [(d["class"], d["concept"]) for d in record["dropped"]] == [("melanoma", "blue-whitish veil")]
    mel, nev = card.class_names.index("melanoma"), card.class_names.index("nevus")
    assert checked[mel, names.index("blue-whitish veil")] == 0 and checked[mel, names.index("atypical pigment network")] == 1
    np.testing.assert_array_equal(checked[nev], prior[nev])


def test_check_defaults_rules_for_the_store_check_and_the_bottleneck():
    """The stated rules of scripts/check_defaults.py: the store check stays unless the head without
    it is more than one standard error better on validation; the bottleneck rule keeps, among the
    settings within one standard error, the one whose scores leak the cue least; calibration passes
    a world only where it helps interventions at least as much, costs at most one standard error and
    keeps the cue out of the logit."""
    from script_support import load_script

    module = load_script("check_defaults")
    val = lambda acc, cue=0.5: {"val": {"accuracy": acc, "n": 900, "cue_from_scores": cue}}  # noqa: E731
    # one standard error at 0.90 on 900 images is 1.0 point
    assert not module.store_check_costs({"checked": val(0.90), "unchecked": val(0.909)})
    assert module.store_check_costs({"checked": val(0.90), "unchecked": val(0.911)})
    assert module.choose({"plain": val(0.91, 0.6), "centred": val(0.905, 0.4), "nuisance": val(0.88, 0.1)}) == "centred"
    # calibration: kept where the val intervention accuracy is at least the scores', the accuracy within
    # one standard error of theirs and the cue from the logit at most 0.60
    side = lambda acc, helped, cue=0.52, misses=None: {"val": {  # noqa: E731
        "accuracy": acc, "n": 900, "intervention_accuracy": helped, "cue_from_logit": cue, "target_misses": misses}}
    assert module.calibration_passes({"calibrated": side(0.891, 0.95), "scores": side(0.90, 0.94)})
    assert not module.calibration_passes({"calibrated": side(0.889, 0.95), "scores": side(0.90, 0.94)})
    assert not module.calibration_passes({"calibrated": side(0.91, 0.93), "scores": side(0.90, 0.94)})
    assert not module.calibration_passes({"calibrated": side(0.91, 0.95, 0.61), "scores": side(0.90, 0.94)})
    # the targets on val come first: fewer misses pass with a lower mean, more misses fail with a higher one
    assert module.calibration_passes({"calibrated": side(0.91, 0.93, misses=0), "scores": side(0.90, 0.94, misses=2)})
    assert not module.calibration_passes({"calibrated": side(0.91, 0.95, misses=1), "scores": side(0.90, 0.94, misses=0)})
    # both ends are judged against the higher oracle, so a head with a lower ceiling does not meet
    # the end target on that account alone (the ordinal form against the per-class head)
    curve = lambda acc, helped, points, oracle, own: {"val": {  # noqa: E731
        **side(acc, helped)["val"], "intervention_curve": points, "oracle": oracle, "target_misses": own}}
    low_ceiling = curve(0.70, 0.71, [0.70, 0.70, 0.72, 0.73], 0.66, 0)  # no miss against its own oracle, one against 0.84
    per_class = curve(0.69, 0.74, [0.69, 0.75, 0.76, 0.77], 0.84, 1)  # ends below 0.82: one miss
    assert not module.calibration_passes({"ordinal": low_ceiling, "per-class": per_class}, "ordinal", "per-class")
    reaches = curve(0.70, 0.71, [0.70, 0.71, 0.72, 0.83], 0.66, 0)
    assert module.calibration_passes({"ordinal": reaches, "per-class": per_class}, "ordinal", "per-class")


def test_results_name_the_intervention_steps_that_fall_with_their_cases():
    from cbm.pipeline.experiment import _intervention_falls

    curve = [{"k": 0, "id_accuracy": 0.90, "ood_accuracy": 0.90},
             {"k": 1, "id_accuracy": 0.95, "ood_accuracy": 0.897, "id_changed": {"gained": 50, "lost": 5},
              "ood_changed": {"gained": 2, "lost": 5}},
             {"k": 2, "id_accuracy": 0.93, "ood_accuracy": 0.90, "id_changed": {"gained": 5, "lost": 23},
              "ood_changed": {"gained": 4, "lost": 1}}]
    assert _intervention_falls({"intervention": curve}) == ["k = 2 ID -2.0 (+5 / -23, p = 0.001)"]  # OOD's -0.3 is not a fall
    assert _intervention_falls({}) == []
    from cbm.pipeline.experiment import _intervention_steps_text

    assert _intervention_steps_text({"intervention": curve}).endswith(
        "(ID / OOD accuracy as the k most-weighted concepts are set from the truth): "
        "k = 0: 90.0 / 90.0; k = 1: 95.0 / 89.7; k = 2: 93.0 / 90.0.")
    only_id = [{k: v for k, v in p.items() if not k.startswith("ood")} for p in curve]
    assert "(ID accuracy as" in _intervention_steps_text({"intervention": only_id})
    assert _intervention_steps_text({}) is None


def test_results_say_which_concept_values_the_head_weighs_and_why():
    from cbm.pipeline.experiment import _calibration_note

    assert _calibration_note(None) is None
    choice = {"chosen": "scores", "rule": "the stated rule",
              "probabilities": {"val_accuracy": 0.688, "val_intervention_accuracy": 0.741, "val_cue_from_logit": 0.565},
              "scores": {"val_accuracy": 0.68, "val_intervention_accuracy": 0.745, "val_cue_from_logit": None,
                         "val_target_misses": 1}}
    note = _calibration_note(choice)
    assert note.startswith("Concept values: the head weighs scores, chosen on validation")
    assert "probabilities intervention accuracy 74.1, accuracy 68.8, cue from the logit 0.565" in note
    assert "scores 1 miss of the intervention targets, intervention accuracy 74.5, accuracy 68.0;" in note
    assert _calibration_note({"chosen": "scores", "reason": "no concept could be calibrated"}) == (
        "Concept values: scores (no concept could be calibrated).")


def test_cue_leakage_reads_the_cue_from_the_scores_and_from_the_logit():
    """A cue that concept 1 carries within each class: the scores give it away (cross-validated), the
    logit of a head that ignores concept 1 does not, one that weighs it does; the logit-only form
    (``from_scores=False``, what the values rule reads) gives the same logit figure without the
    scores'."""
    from cbm.pipeline.faithfulness import cue_leakage

    rng = np.random.default_rng(0)
    n = 1200
    y, cue = rng.integers(0, 2, n), rng.integers(0, 2, n)
    z = np.stack([y + rng.normal(0, 1, n), cue + rng.normal(0, 0.5, n)], 1).astype(np.float32)
    split = SplitData("val", z, y, np.where(cue == 1, "marked", "clean"), [""] * n)
    card = SimpleNamespace(name="toy", group_column="marker")
    blind = cue_leakage(card, {"val": split}, {"val": z}, np.array([[-1.0, 0.0], [1.0, 0.0]]), np.zeros(2),
                        split_names=("val",))
    assert blind["scores_auroc"] > 0.8 and blind["logit_auroc"] < 0.6
    assert blind["values"] == ["clean", "marked"] and blind["n"] == n
    reads = cue_leakage(card, {"val": split}, {"val": z}, np.array([[-1.0, -3.0], [1.0, 3.0]]), np.zeros(2),
                        split_names=("val",), from_scores=False)
    assert "scores_auroc" not in reads and reads["logit_auroc"] > 0.8
    assert 0 < reads["logit_auroc_se"] < blind["logit_auroc_se"] < 0.05  # a higher AUROC is read more surely
    # the names of the cue's two values do not matter: the standard error counts the value ranked higher
    renamed = SplitData("val", z, y, np.where(cue == 1, "amarked", "zclean"), [""] * n)
    flipped = cue_leakage(card, {"val": renamed}, {"val": z}, np.array([[-1.0, -3.0], [1.0, 3.0]]), np.zeros(2),
                          split_names=("val",), from_scores=False)
    assert flipped["logit_auroc"] == pytest.approx(reads["logit_auroc"])
    assert flipped["logit_auroc_se"] == pytest.approx(reads["logit_auroc_se"])
    none = cue_leakage(card, {"val": SplitData("val", z, y, None, [""] * n)}, {"val": z}, np.zeros((2, 2)),
                       np.zeros(2), split_names=("val",))
    assert none["measured"] is False and "names no group" in none["reason"]


def test_the_auroc_standard_error_is_hanley_and_mcneils():
    """At 0.5 it is the Mann-Whitney statistic's spread under no association; it shrinks with more
    cases of the rarer value and towards an AUROC of 1."""
    from cbm.pipeline.faithfulness import auroc_standard_error

    assert auroc_standard_error(0.5, 10, 100) == pytest.approx(np.sqrt(111 / (12 * 10 * 100)))
    assert auroc_standard_error(0.6, 5, 400) > 2 * auroc_standard_error(0.6, 100, 400)
    assert auroc_standard_error(0.95, 50, 50) < auroc_standard_error(0.6, 50, 50)
    with pytest.raises(ValueError, match="cases of both values"):
        auroc_standard_error(0.7, 0, 10)
    rng = np.random.default_rng(0)  # and it matches the spread of AUROCs drawn at 0.5
    from sklearn.metrics import roc_auc_score
    draws = [roc_auc_score(np.r_[np.ones(10), np.zeros(100)], rng.random(110)) for _ in range(2000)]
    assert np.std(draws) == pytest.approx(auroc_standard_error(0.5, 10, 100), rel=0.1)


def _toy_model_card_and_splits(tmp_path):
    """A model scoring three concepts as its features (a -> class 1, b -> class 0), its card with a
    truth column per concept, and train, val and test splits whose rows carry the truth."""
    y, truth, z = _world(n=900, seed=3)
    names = ["a", "b", "u"]
    card = SimpleNamespace(name="toy", path=tmp_path / "card.yaml", manifest_path=tmp_path / "manifest.csv",
                           concept_truth={c: f"t_{c}" for c in names}, confounder=None, group_column=None)
    levels = tuple(np.array([z[truth[:, j] == v, j].mean() for j in range(3)], np.float32) for v in (0, 1))
    model = SimpleNamespace(
        bottleneck=SimpleNamespace(concept_names=names), classes=["n", "m"], concept_prior=None,
        coef=np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32), intercept=np.zeros(2, np.float32),
        concept_scores_from_features=lambda f: f, concept_values=lambda s: s,
        presence_levels=lambda: levels, score_levels=lambda: levels)

    def split(name, idx):
        rows = [{"path": str(i), **{f"t_{c}": str(int(truth[i, j])) for j, c in enumerate(names)}} for i in idx]
        return SplitData(name, z[idx], y[idx], None, [str(i) for i in idx], rows)

    splits = {"train": split("train", np.arange(0, 500)), "val": split("val", np.arange(500, 700)),
              "test": split("test", np.arange(700, 900))}
    return model, card, splits


def test_faithfulness_of_a_split_of_ones_own_making(tmp_path):
    from cbm.heads import DenseConceptHead
    from cbm.pipeline.faithfulness import measure_faithfulness

    model, card, splits = _toy_model_card_and_splits(tmp_path)
    full = measure_faithfulness(model, card, splits, head=DenseConceptHead())
    assert full["oracle"]["id_accuracy"] > 0.85 and full["measured"] and [p["k"] for p in full["intervention"]] == [0, 1, 2]
    assert "splits_without_truth" not in full and set(full["concept_auroc"]) == {"a", "b", "u"}
    assert full["splits"] == {"id": "test"}  # no confounder: the in-domain figures are test's
    confounded = SimpleNamespace(**{**vars(card), "confounder": "site"})
    assert measure_faithfulness(model, confounded, splits)["splits"] == {"id": "val", "ood": "test"}  # no test_id
    # a split without the splits the figures need: one error naming them and where to get them
    with pytest.raises(ValueError, match=r"needs the train, val and test splits.*missing: train, val.*extract_splits"):
        measure_faithfulness(model, card, {"test": splits["test"]})
    # a test split of one's own whose rows lack the truth columns, or carry no manifest columns at all:
    # measured where truth exists, and the block says which split had none
    test = splits["test"]
    for rows in ([{"path": p} for p in test.paths], []):
        own = SplitData("mine", test.features, test.labels, None, test.paths, rows)
        out = measure_faithfulness(model, card, {**splits, "test": own}, head=DenseConceptHead())
        assert out["measured"] and out["splits_without_truth"] == ["test"]
        # no curve, no ceiling fitted on truth the split does not have, no concept AUROC: each says why
        for part in ("oracle", "intervention", "concept_auroc"):
            assert out[part] == {"measured": False, "reason": "the test split of card 'toy' annotates no concept truth; "
                                                              "fill its truth columns in the manifest"}
        assert out["mean_concept_auroc"] is None and out["intervention_order"] == []
        assert out["sign_agreement"] == pytest.approx(full["sign_agreement"])  # read on train, as before
    short = SplitData("mine", test.features, test.labels, None, test.paths, test.extras[:3])
    with pytest.raises(ValueError, match=r"split 'mine' has 200 images but 3 rows"):
        measure_faithfulness(model, card, {**splits, "test": short})


def test_the_oracle_of_a_head_carrying_the_whole_store_sees_only_the_annotated_concepts(tmp_path):
    # a card annotating some of its concepts: the faithful head's unconstrained twin is cloned with the
    # store's whole prior, which it does not need, and its oracle (fitted on the annotated columns)
    # was refused for the prior's shape after every head had been fitted
    from cbm.heads import SparseConceptHead
    from cbm.pipeline.experiment import _unconstrained_twin
    from cbm.pipeline.faithfulness import measure_faithfulness

    model, card, splits = _toy_model_card_and_splits(tmp_path)
    card.concept_truth = {c: card.concept_truth[c] for c in ("a", "b")}  # "u" is not annotated
    prior = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    model.concept_prior = prior
    faithful = SparseConceptHead(constraint="prior", prior=prior)
    for head in (faithful, _unconstrained_twin(faithful)):
        out = measure_faithfulness(model, card, splits, head=head)
        assert out["concepts_with_truth"] == 2 and out["oracle"]["id_accuracy"] > 0.85
    assert np.array_equal(_unconstrained_twin(faithful).prior, prior)  # the twin itself keeps the store's prior


def test_a_split_with_non_finite_scores_is_refused_by_name_and_partial_truth_shows_its_coverage(tmp_path):
    from cbm.pipeline.experiment import _faithfulness_table
    from cbm.pipeline.faithfulness import measure_faithfulness

    model, card, splits = _toy_model_card_and_splits(tmp_path)
    test = splits["test"]
    features = test.features.copy()
    features[[3, 7]] = np.nan
    broken = SplitData("test", features, test.labels, None, test.paths, test.extras)
    with pytest.raises(ValueError, match=rf"split 'test': 2 case\(s\) have non-finite .*{test.paths[3]}, {test.paths[7]}: re-encode"):
        measure_faithfulness(model, card, {**splits, "test": broken})
    # truth for one concept only: sign agreement judges the weight on it, and the table says how much that is
    card.concept_truth = {"a": card.concept_truth["a"]}
    model.coef = np.array([[0.0, 9.0, 0.0], [1.0, 0.0, 0.0]], np.float32)  # 90 % of the weight on b, without truth
    f = measure_faithfulness(model, card, splits, store_names=["a", "b", "u"])
    assert f["weight_without_truth"] == pytest.approx(0.9)
    row = _faithfulness_table({"cbm": {"faithfulness": f}}).splitlines()[4]
    assert row.startswith(f"| cbm | {f['sign_agreement']:.3f} (judged on 10.0 % of the weight; the rest is on concepts without truth) |")
    f["weight_without_truth"] = 0.0
    assert "judged on" not in _faithfulness_table({"cbm": {"faithfulness": f}})
    # a concept the test split annotates one way only has no AUROC, and the mean says over how many it is
    model.coef = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    card.concept_truth = {c: f"t_{c}" for c in ("a", "b", "u")}
    rows = [{**r, "t_u": "1"} for r in test.extras]
    one_way = SplitData("test", test.features, test.labels, None, test.paths, rows)
    f = measure_faithfulness(model, card, {**splits, "test": one_way})
    assert f["concept_auroc"]["u"] is None and f["mean_concept_auroc_of"] == 2 and f["concepts_with_truth"] == 3
    assert f["mean_concept_auroc"] == pytest.approx(np.mean([f["concept_auroc"]["a"], f["concept_auroc"]["b"]]))
    assert "(of 2 of 3 concepts: the others lack both values in test)" in _faithfulness_table({"cbm": {"faithfulness": f}})


def test_present_and_absent_are_annotated_means_only_where_enough_images_are_annotated(tmp_path):
    from cbm.pipeline.levels import levels_from_truth, truth_levels

    _, card, splits = _toy_model_card_and_splits(tmp_path)
    train = splits["train"]
    rows = [dict(r) for r in train.extras]
    present = [r for r in rows if r["t_b"] == "1"]
    for r in present[3:]:  # "b" annotated present on 3 images only, absent on many: too few to average
        r["t_b"] = ""
    train = SplitData("train", train.features, train.labels, None, train.paths, rows)
    names = ["a", "b", "u"]
    assert levels_from_truth(card, train, names) == ["a", "u"]
    levels = truth_levels(card, train, names, train.features)
    a_truth = np.array([float(r["t_a"]) for r in rows])
    assert levels[1, 0] == pytest.approx(train.features[a_truth == 1, 0].mean(), abs=1e-5)
    assert levels[:, 1] == pytest.approx(np.percentile(train.features[:, 1], [5, 95]), abs=1e-5)
