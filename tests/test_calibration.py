"""Concept calibration: scores read as P(present), saved with the model, set to 1 / 0 by interventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbm.bottleneck import BottleneckConfig
from cbm.calibration import calibrate, calibrated, fit_calibration
from cbm.data import load_card
from cbm.demo import make_dataset
from cbm.encoders.testing import write_tiny_config
from cbm.errors import ModelFormatError
from cbm.heads import SparseConceptHead
from cbm.model import ConceptBottleneckModel
from cbm.pipeline import fit_model


def test_the_fit_recovers_a_known_logistic_link():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 2))
    truth = (rng.random((20000, 2)) < 1 / (1 + np.exp(-(np.array([2.0, -1.0]) * z + np.array([-0.5, 0.3]))))).astype(float)
    cal = fit_calibration(z, truth)
    np.testing.assert_allclose(cal[0], [2.0, -1.0], atol=0.08)
    np.testing.assert_allclose(cal[1], [-0.5, 0.3], atol=0.06)
    # the same optimum as scikit-learn's logistic regression (ridge C = 1 on the slope)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression().fit(z[:, :1], truth[:, 0])
    assert cal[0, 0] == pytest.approx(lr.coef_[0, 0], abs=1e-3) and cal[1, 0] == pytest.approx(lr.intercept_[0], abs=1e-3)


def test_a_rare_concept_that_its_score_separates_is_fitted_not_diverged():
    """Plain Newton overshoots here (20 present of 1,000, the score skewed) and ran off to a singular
    step; the halved steps reach the optimum that a tightly converged scikit-learn fit reaches."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    for seed in (0, 7, 26):
        rng = np.random.default_rng(seed)
        x = rng.exponential(size=1000)
        t = (x > np.quantile(x, 0.98)).astype(float)
        z = (x - x.mean()) / x.std()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow on the way either
            cal = fit_calibration(z[:, None], t[:, None])
        lr = LogisticRegression(tol=1e-10, max_iter=10_000).fit(z[:, None], t)
        assert cal[0, 0] == pytest.approx(lr.coef_[0, 0], rel=1e-4)
        assert cal[1, 0] == pytest.approx(lr.intercept_[0], rel=1e-4)


def test_a_concept_without_enough_annotations_keeps_its_score():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(100, 3)).astype(np.float32)
    truth = (z > 0).astype(float)
    truth[:, 1] = np.nan  # not annotated
    truth[:, 2] = 0.0
    truth[:5, 2] = 1.0  # five present: fewer than MIN_EACH
    cal = fit_calibration(z, truth)
    assert calibrated(cal).tolist() == [True, False, False]
    values = calibrate(z, cal)
    np.testing.assert_array_equal(values[:, 1:], z[:, 1:])
    assert ((values[:, 0] > 0) & (values[:, 0] < 1)).all()
    order = np.argsort(z[:, 0])
    assert (np.diff(values[order, 0]) >= 0).all(), "monotone in the concept's own score"
    np.testing.assert_array_equal(calibrate(z, None), z)
    with pytest.raises(ValueError, match="same shape"):
        fit_calibration(z, truth[:, :2])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    card = load_card(make_dataset(root / "demo", n=240, confounding=0.9, seed=3, size=64, progress=False))
    encoder = f"{write_tiny_config(root)}@random"
    head = SparseConceptHead(constraint="prior", max_concepts_per_class=8, n_lambdas=8)
    fit = fit_model(card, encoder=encoder, head=head, num_workers=0, bottleneck=BottleneckConfig(calibrate=True))
    return card, fit


def test_the_method_calibrates_every_annotated_concept(world):
    card, fit = world
    model = fit.model
    on = model.calibrated()
    assert on.any()
    names = model.bottleneck.concept_names
    assert all(names[j] in card.concept_truth for j in np.flatnonzero(on))
    np.testing.assert_allclose(fit.values["test"], model.concept_values(fit.scores["test"]), atol=1e-6)
    assert ((fit.values["test"][:, on] > 0) & (fit.values["test"][:, on] < 1)).all()
    # the head weighs the values: the logits are values @ coef + bias
    feats = fit.splits["test"].features
    np.testing.assert_allclose(model.decision_function_from_features(feats),
                               fit.values["test"] @ model.coef.T + model.intercept, atol=1e-4)
    # interventions set a calibrated concept to 0 / 1, the others to their score levels
    absent, present = model.presence_levels()
    lo, hi = model.score_levels()
    assert (absent[on] == 0).all() and (present[on] == 1).all()
    np.testing.assert_array_equal(absent[~on], lo[~on])
    # the intervention-aware fit saw the truth as 0 / 1 for the calibrated concepts
    known = fit.truth["train"][:, on]
    assert set(np.unique(known[~np.isnan(known)])) <= {0.0, 1.0}
    # a contribution is weight x value, and the explanation says which values are probabilities
    exp = model.explain_features(feats[0])
    for c in exp.contributions[exp.predicted]:
        assert c.contribution == pytest.approx(c.weight * c.value, abs=1e-5)
        assert c.calibrated == bool(on[names.index(c.concept)])
    offsets = model.value_offsets()
    assert (offsets[~on] == 0).all()
    np.testing.assert_allclose(offsets[on], fit.values["train"][:, on].mean(0), atol=1e-4)


def test_calibration_can_be_turned_off(world):
    card, fit = world
    off = fit_model(card, encoder=fit.encoder, head=SparseConceptHead(constraint="prior", n_lambdas=4),
                                 splits=fit.splits, bottleneck=BottleneckConfig(calibrate=False))
    assert off.model.calibration is None and not off.model.calibrated().any()
    np.testing.assert_array_equal(off.values["val"], off.scores["val"])


def test_auto_chooses_probabilities_or_scores_by_the_stated_rule_on_val(world):
    from cbm.heads import standard_error
    from cbm.pipeline.fitting import CUE_FROM_LOGIT_LIMIT, target_misses

    card, fit = world
    auto = fit_model(card, encoder=fit.encoder, head=SparseConceptHead(constraint="prior", n_lambdas=4),
                     splits=fit.splits, bottleneck=BottleneckConfig(calibrate="auto"))
    choice = auto.model.info["calibration_choice"]
    p, q = choice["probabilities"], choice["scores"]
    n = len(fit.splits["val"])
    for f in (p, q):  # the figures the rule read are the curve's own
        assert f["val_target_misses"] == target_misses(f["val_intervention_curve"], f["val_oracle"])
        assert f["val_intervention_accuracy"] == pytest.approx(np.mean(f["val_intervention_curve"]))
    bar = max(p["val_oracle"], q["val_oracle"])  # both ends are judged against the higher oracle
    assert choice["val_common_oracle"] == bar
    misses = [target_misses(f["val_intervention_curve"], bar) for f in (p, q)]
    assert misses == [p["val_target_misses_common_oracle"], q["val_target_misses_common_oracle"]]
    if misses[0] != misses[1]:
        targets = misses[0] < misses[1]
    else:
        targets = p["val_intervention_accuracy"] >= q["val_intervention_accuracy"]
    limit = max(CUE_FROM_LOGIT_LIMIT, q["val_cue_from_logit"] or 0.0)
    expected = (targets
                and p["val_accuracy"] >= q["val_accuracy"] - standard_error(q["val_accuracy"], n)
                and (p["val_cue_from_logit"] is None or p["val_cue_from_logit"] - p["val_cue_from_logit_se"] <= limit))
    assert choice["chosen"] == ("probabilities" if expected else "scores")
    assert auto.model.calibrated().any() == expected
    # the chosen head is the one the model carries: the same as fitting with that setting outright
    fixed = fit_model(card, encoder=fit.encoder, head=SparseConceptHead(constraint="prior", n_lambdas=4),
                      splits=fit.splits, bottleneck=BottleneckConfig(calibrate=expected))
    np.testing.assert_allclose(auto.model.coef, fixed.model.coef, atol=1e-5)
    assert "calibration_choice" not in fixed.model.info
    with pytest.raises(ValueError, match='calibrate must be true, false or "auto"'):
        fit_model(card, encoder=fit.encoder, splits=fit.splits, bottleneck=BottleneckConfig(calibrate="yes"))


def test_target_misses_counts_falls_and_a_short_end():
    from cbm.pipeline.fitting import target_misses

    assert target_misses([], 0.9) is None
    assert target_misses([0.80, 0.85, 0.90, 0.95], 0.96) == 0  # never falls; the end reaches oracle - 2
    assert target_misses([0.80, 0.796, 0.90, 0.95], 0.96) == 0  # a dip of 0.4 points is not a fall
    assert target_misses([0.80, 0.79, 0.90, 0.95], 0.96) == 1  # a fall of one point
    assert target_misses([0.80, 0.85, 0.90, 0.92], 0.96) == 1  # the end is 2 points short of oracle - 2
    assert target_misses([0.80, 0.70, 0.75, 0.78], None) == 2  # a fall, and an end below k = 0


def test_the_values_rule_reads_the_targets_first_then_the_mean():
    from cbm.pipeline.fitting import values_rule_passes

    def figures(misses, mean, accuracy=0.9, cue=0.5):
        return {"val_target_misses": misses, "val_intervention_accuracy": mean, "val_accuracy": accuracy,
                "val_cue_from_logit": cue}

    assert values_rule_passes(figures(0, 0.90), figures(1, 0.95), 600)  # fewer misses wins over the mean
    assert not values_rule_passes(figures(2, 0.99), figures(1, 0.90), 600)  # more misses loses
    assert values_rule_passes(figures(1, 0.95), figures(1, 0.94), 600)  # a tie: the mean decides
    assert not values_rule_passes(figures(1, 0.93), figures(1, 0.94), 600)
    assert not values_rule_passes(figures(0, 0.95, accuracy=0.85), figures(1, 0.90), 600)  # (b): 5 points below
    assert not values_rule_passes(figures(0, 0.95, cue=0.7), figures(1, 0.90), 600)  # (c): the cue
    assert values_rule_passes(figures(0, 0.95, cue=0.64), figures(1, 0.90, cue=0.68), 600)  # less than the old's
    assert not values_rule_passes(figures(0, 0.95, cue=0.66), figures(1, 0.90, cue=0.64), 600)
    assert values_rule_passes(figures(None, 0.95), figures(0, 0.94), 600)  # unmeasured misses: the mean
    # (c) grants the cue one standard error, as (b) grants accuracy: a figure read on few images is uncertain
    assert values_rule_passes({**figures(0, 0.95, cue=0.62), "val_cue_from_logit_se": 0.03}, figures(1, 0.90), 600)
    assert not values_rule_passes({**figures(0, 0.95, cue=0.62), "val_cue_from_logit_se": 0.01}, figures(1, 0.90), 600)


def test_the_values_rule_judges_both_ends_against_the_higher_oracle():
    from cbm.pipeline.fitting import common_oracle_misses, values_rule_passes

    def figures(curve, oracle, own):
        return {"val_intervention_curve": curve, "val_oracle": oracle, "val_target_misses": own,
                "val_intervention_accuracy": float(np.mean(curve)), "val_accuracy": curve[0], "val_cue_from_logit": 0.5}

    low_ceiling = figures([0.70, 0.70, 0.72, 0.73], 0.66, 0)  # no miss against its own oracle, one against 0.84
    high_ceiling = figures([0.70, 0.75, 0.76, 0.77], 0.84, 1)  # ends below 0.82: one miss
    assert common_oracle_misses(low_ceiling, high_ceiling) == (0.84, 1, 1)
    assert not values_rule_passes(low_ceiling, high_ceiling, 900)  # a tie on misses; its mean is lower
    reaches = figures([0.70, 0.71, 0.72, 0.83], 0.66, 0)
    assert values_rule_passes(reaches, high_ceiling, 900)
    one_oracle = {**low_ceiling, "val_oracle": None}  # with one oracle, both ends against it
    assert common_oracle_misses(one_oracle, high_ceiling) == (0.84, 1, 1)
    no_oracle = {**high_ceiling, "val_oracle": None}
    assert common_oracle_misses({**low_ceiling, "val_oracle": None}, no_oracle) == (None, 0, 1)
    no_curve = {**low_ceiling, "val_intervention_curve": np.array([])}  # without a curve: the recorded misses
    assert common_oracle_misses(no_curve, high_ceiling) == (None, 0, 1)


def test_the_calibration_survives_a_save_and_load(world, tmp_path):
    _, fit = world
    model = fit.model
    folder = model.save(tmp_path / "m")
    again = ConceptBottleneckModel.load(folder)
    np.testing.assert_array_equal(again.calibrated(), model.calibrated())
    np.testing.assert_allclose(np.nan_to_num(again.calibration), np.nan_to_num(model.calibration))
    feats = fit.splits["test"].features
    np.testing.assert_allclose(again.predict_proba_from_features(feats), model.predict_proba_from_features(feats),
                               atol=1e-6)
    for levels, before in zip(again.presence_levels(), model.presence_levels()):
        np.testing.assert_allclose(levels, before)


def test_a_damaged_calibration_is_refused_by_name(world, tmp_path):
    from safetensors.torch import load_file, save_file

    _, fit = world
    folder = fit.model.save(tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["concept_calibration"][2, 0] = 0.5
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "cbm.ConceptBottleneckModel"})
    with pytest.raises(ModelFormatError, match="concept_calibration"):
        ConceptBottleneckModel.load(folder)
    tensors["concept_calibration"] = torch.zeros(2, 3)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelFormatError, match="concept_calibration"):
        ConceptBottleneckModel.load(folder)


def test_the_case_report_shows_probabilities_and_sets_them_to_one_or_zero(world):
    import json
    import re

    from cbm.explain import explain_image, render_case_html

    card, fit = world
    model = fit.model
    row = card.manifest().split("test").rows[0]
    case = explain_image(model, card.image_root / row.path, maps=False)
    html = render_case_html(case, model)
    data = json.loads(re.search(r'<script type="application/json" id="cbm-data">(.*?)</script>', html, re.S).group(1))
    on = {c for c, flag in zip(model.bottleneck.concept_names, model.calibrated()) if flag}
    shown = [i for i, c in enumerate(data["concepts"]) if c in on]
    assert shown, "the head uses a calibrated concept"
    assert all(data["present"][i] == 1 and data["absent"][i] == 0 for i in shown)
    assert all(0 < data["scores"][i] < 1 for i in shown)  # the page's logits start from the probabilities
    assert "as a probability (the training images&#39; annotations calibrate its score): present sets it to 1 and absent to 0" in html
    assert re.search(r'<td class="num">P 0\.\d\d\d</td>', html)
    # the case's own intervention agrees with the model's
    name = data["concepts"][shown[0]]
    feature = model.image_features(card.image_root / row.path)[0]
    expected = model.intervene_features(feature, {name: 1.0})
    got = case.intervene({name: "present"})
    assert [got[c] for c in model.classes] == pytest.approx(expected.tolist(), abs=1e-5)
    # a probability is from 0 to 1: 75 meant as 75 % is refused, and so is a non-finite number
    for bad in (75, -3, float("nan")):
        with pytest.raises(ValueError, match="from 0 to 1|finite"):
            case.intervene({name: bad})


def test_concepts_whose_truth_is_empty_are_set_aside_not_counted_against_the_head(world):
    """A used concept whose truth column is empty on the training split has no association to agree
    with: its weight is reported as without truth, not as disagreeing; a card whose truth columns
    are all empty is not measured (never zeros)."""
    from dataclasses import replace

    from cbm.pipeline.faithfulness import measure_faithfulness

    card, fit = world
    model, names = fit.model, fit.model.bottleneck.concept_names
    used = [c for j, c in enumerate(names) if np.any(model.coef[:, j]) and c in card.concept_truth]
    blank = card.concept_truth[used[0]]
    emptied = dict(fit.splits, train=replace(fit.splits["train"], extras=[{**r, blank: ""} for r in fit.splits["train"].extras]))
    full = measure_faithfulness(model, card, fit.splits)
    part = measure_faithfulness(model, card, emptied)
    assert full["weight_without_truth"] == 0.0 and part["weight_without_truth"] > 0.0
    assert used[0] not in [d["concept"] for d in part["disagreeing"]]
    assert part["concepts_with_truth"] == full["concepts_with_truth"] - 1
    none = {s: replace(d, extras=[{k: ("" if k in card.concept_truth.values() else v) for k, v in r.items()}
                                  for r in d.extras]) for s, d in fit.splits.items()}
    out = measure_faithfulness(model, card, none)
    assert out["measured"] is False and "none annotates training cases of two classes" in out["reason"]
    # annotated on one class only: no association either
    y = fit.splits["train"].labels
    one_class = dict(fit.splits, train=replace(fit.splits["train"], extras=[
        {**r, blank: (r[blank] if y[i] == 0 else "")} for i, r in enumerate(fit.splits["train"].extras)]))
    assert measure_faithfulness(model, card, one_class)["weight_without_truth"] == part["weight_without_truth"]


def test_the_oracle_fills_unknown_truth_with_the_training_mean_not_absent():
    from cbm.pipeline.faithfulness import fill_unknown
    from cbm.pipeline.truth import truth_columns

    # the oracle's columns: truth whose annotated cases span two classes
    labels = np.array([0, 0, 1, 1])
    truth = np.array([[1.0, np.nan, 1.0, np.nan], [0.0, 1.0, 1.0, np.nan], [1.0, 0.0, np.nan, np.nan],
                      [np.nan, np.nan, np.nan, np.nan]])
    assert truth_columns(truth, labels) == [0, 1]

    train = np.array([[1.0, np.nan], [np.nan, np.nan], [0.0, np.nan], [1.0, np.nan]])
    val = np.array([[np.nan, 0.5]])
    out = fill_unknown({"train": train, "val": val})
    np.testing.assert_allclose(out["train"][1], [2 / 3, 0.0])
    np.testing.assert_allclose(out["val"], [[2 / 3, 0.5]])
    assert not np.isnan(out["train"]).any()


def test_a_misspelt_truth_name_is_refused_by_every_fit(world):
    from dataclasses import replace

    card, fit = world
    first = next(iter(card.concept_truth))
    typo = replace(card, concept_truth={first + "x": card.concept_truth[first],
                                        **{k: v for k, v in card.concept_truth.items() if k != first}})
    for kwargs in ({"check_store": False}, {"head": SparseConceptHead(n_lambdas=4)}):
        with pytest.raises(ValueError, match=rf"'{first}x' \(closest: '{first}'"):
            fit_model(typo, encoder=fit.encoder, splits=fit.splits, num_workers=0, **kwargs)


def test_a_misspelt_truth_name_stops_the_fit_before_any_image_is_encoded(world, monkeypatch):
    from dataclasses import replace

    import cbm.pipeline.fitting as fitting

    card, fit = world
    first = next(iter(card.concept_truth))
    typo = replace(card, concept_truth={first + "x": card.concept_truth[first]})

    def encoded(*args, **kwargs):
        raise AssertionError("images were encoded before the card's truth names were checked")

    monkeypatch.setattr(fitting, "extract_splits", encoded)
    with pytest.raises(ValueError, match=rf"'{first}x'"):
        fit_model(typo, encoder=fit.encoder, num_workers=0, check_store=False)


def test_an_intervention_on_a_concept_the_head_does_not_use_says_so(world):
    _, fit = world
    model = fit.model
    names = model.bottleneck.concept_names
    unused = next(c for j, c in enumerate(names) if not np.any(model.coef[:, j]))
    feature = fit.splits["test"].features[0]
    with pytest.warns(UserWarning, match=rf"no weight to \['{unused}'\]: setting them changes no prediction") as record:
        same = model.intervene_features(feature, {unused: 1.0})
    assert record[0].filename == __file__  # the warning names the caller's line
    from cbm.explain import explain_image

    case = explain_image(model, fit.card.image_root / fit.splits["test"].paths[0])
    with pytest.warns(UserWarning, match="changes no prediction") as record:
        case.intervene({unused: "present"})
    assert record[0].filename == __file__
    np.testing.assert_allclose(same, model.intervene_features(feature, {}), atol=1e-6)


def test_a_card_without_a_confounder_says_the_curve_has_no_out_of_domain_figure(world):
    from dataclasses import replace

    from cbm.pipeline.experiment import _faithfulness_table
    from cbm.pipeline.faithfulness import measure_faithfulness

    card, fit = world
    assert "ood" not in measure_faithfulness(fit.model, card, fit.splits)  # the demo card has a confounder
    plain = replace(card, confounder=None, group_column=None)
    splits = {s: replace(d, groups=None) for s, d in fit.splits.items()}
    out = measure_faithfulness(fit.model, plain, splits)
    assert out["ood"]["measured"] is False and "names no confounder" in out["ood"]["reason"]
    assert all("ood_accuracy" not in p for p in out["intervention"])
    assert out["cue_leakage"]["measured"] is False
    table = _faithfulness_table({"cbm": {"faithfulness": out}})
    assert "(ID only)" in table
    assert f"Not measured: {out['ood']['reason']}." in table and f"Not measured: {out['cue_leakage']['reason']}." in table


def test_a_part_no_evaluated_split_annotates_says_so(world):
    """Truth on the training split alone: the sign agreement is measured (it reads train), the concept
    AUROC, the curve and the oracle say they were not measured and why (never a curve of k = 0 alone,
    which reads as interventions that change nothing); truth missing out of domain only gives the
    curve in domain."""
    from dataclasses import replace

    from cbm.pipeline.experiment import _faithfulness_table
    from cbm.pipeline.faithfulness import measure_faithfulness

    card, fit = world
    columns = set(card.concept_truth.values())
    blank = lambda d: replace(d, extras=[{k: ("" if k in columns else v) for k, v in r.items()} for r in d.extras])  # noqa: E731
    head = SparseConceptHead(constraint="prior", max_concepts_per_class=8)
    train_only = {s: (d if s == "train" else blank(d)) for s, d in fit.splits.items()}
    out = measure_faithfulness(fit.model, card, train_only, head=head)
    assert out["measured"] is True and out["sign_agreement"] is not None
    for part in ("concept_auroc", "intervention", "oracle"):
        assert out[part]["measured"] is False and "annotates no concept truth" in out[part]["reason"], part
    assert out["mean_concept_auroc"] is None
    row = next(line for line in _faithfulness_table({"cbm": {"faithfulness": out}}).splitlines() if line.startswith("| cbm"))
    assert "not measured: the test_id and test split" in row and "→" not in row
    no_ood = {s: (blank(d) if s == "test" else d) for s, d in fit.splits.items()}
    out = measure_faithfulness(fit.model, card, no_ood)
    assert out["concept_auroc"]["measured"] is False
    assert len(out["intervention"]) > 1 and all("ood_accuracy" not in p and "id_accuracy" in p for p in out["intervention"])
    assert "(ID only)" in _faithfulness_table({"cbm": {"faithfulness": out}})
    no_id = {s: (blank(d) if s == "test_id" else d) for s, d in fit.splits.items()}
    out = measure_faithfulness(fit.model, card, no_id)
    assert all("id_accuracy" not in p and "ood_accuracy" in p for p in out["intervention"])
    assert "(OOD only)" in _faithfulness_table({"cbm": {"faithfulness": out}})


def test_faithfulness_of_a_model_on_some_of_the_stores_concepts(world):
    """A model fitted on a few of the store's concepts is measured against a card whose truth names
    the others too (they are the store's); the card may be given as its path; an intervention order
    naming an unknown concept says which and what is close."""
    from cbm.pipeline.faithfulness import intervention_curve, measure_faithfulness

    card, fit = world
    annotated = [c for c in fit.model.bottleneck.concept_names if c in card.concept_truth]
    few = {card.class_names[0]: annotated[:2], card.class_names[1]: annotated[2:4]}
    model = fit_model(card, encoder=fit.encoder, concepts=few, splits=fit.splits, num_workers=0,
                      head=SparseConceptHead(constraint="prior", n_lambdas=8)).model
    assert len(model.bottleneck.concept_names) == 4 and len(card.concept_truth) > 4
    out = measure_faithfulness(model, card.path, fit.splits)
    assert out["measured"] is True and set(out["concept_auroc"]) <= {c for v in few.values() for c in v}
    with pytest.raises(ValueError, match=r"no such concept in the model: 'symetric shape' \(closest: 'symmetric shape'"):
        intervention_curve(fit.model.coef, fit.model.intercept, fit.model.bottleneck.concept_names,
                           fit.model.presence_levels(), {}, concepts=["symetric shape"])
