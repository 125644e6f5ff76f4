"""Per-case explanations (cbm.explain.case): prediction, flags, findings, maps, similar cases, interventions.

The models and helpers are in ``tests/explain_support.py`` (fixtures registered in conftest.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from explain_support import CLASSES, CONCEPTS, WEIGHTS, make_image, write_phi_dicom


def test_explanation_matches_the_model(tiny_model):
    from cbm.explain import explain_image

    image = make_image(1)
    case = explain_image(tiny_model, image, top_k=3)
    expected = tiny_model.predict_proba_from_features(case.feature[None])[0]
    assert case.predicted == CLASSES[int(expected.argmax())]
    assert np.allclose([case.explanation.probabilities[c] for c in CLASSES], expected, atol=1e-5)
    # the feature the maps path computed is the encoder's own embedding of the image
    direct = tiny_model.encoder.encode_image(tiny_model.encoder.transform(image)[None])[0].numpy()
    assert np.allclose(case.feature, direct, atol=1e-5)
    # every concept has its training percentile, the same the contributions carry
    assert set(case.percentiles) == set(CONCEPTS) and all(0 <= p <= 100 for p in case.percentiles.values())
    for c in case.explanation.contributions[case.predicted]:
        assert case.percentiles[c.concept] == pytest.approx(c.percentile)


def test_an_image_array_in_0_255_is_scaled_or_refused_not_misread(tiny_model):
    """uint8 arrays are scaled by 255 (as the encoder's transform does); a float array beyond [0, 1]
    is refused with the fix, rather than explained as a different image."""
    image = np.clip(make_image(1), 0, 1)
    as_uint8 = np.round(image * 255).astype(np.uint8)
    same = tiny_model.explain(as_uint8).probabilities
    expected = tiny_model.explain(as_uint8.astype(np.float32) / 255).probabilities
    assert [same[c] for c in CLASSES] == pytest.approx([expected[c] for c in CLASSES], abs=1e-5)
    with pytest.raises(ValueError, match="divide by 255"):
        tiny_model.explain(as_uint8.astype(np.float32))
    for dtype in (np.int64, np.int16):  # no range known from the type: refused, not divided by 2**63 - 1
        with pytest.raises(ValueError, match=f"{np.dtype(dtype).name} has no known range"):
            tiny_model.explain(as_uint8.astype(dtype))
    with pytest.raises(ValueError, match="NaN"):
        tiny_model.predict_proba(np.full((8, 8, 3), np.nan, np.float32))


def test_findings_weigh_the_predicted_class_against_the_runner_up(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(2), maps=False)
    expl = case.explanation
    k, r = CLASSES.index(expl.predicted), CLASSES.index(expl.runner_up)
    diff = tiny_model.coef[k] - tiny_model.coef[r]
    # every concept that separates the two classes is in exactly one finding
    used = sorted(c for f in case.findings for c in f.concepts)
    assert used == sorted(c for j, c in enumerate(CONCEPTS) if diff[j] != 0)
    # a finding's effect is its concepts' share of the logit difference, signed towards the class it favours
    for f in case.findings:
        effect = sum(diff[CONCEPTS.index(c)] * expl.scores[c] for c in f.concepts)
        assert f.effect == pytest.approx(abs(effect), abs=1e-5)
        assert f.favours == (expl.predicted if effect >= 0 else expl.runner_up)
        assert f.odds_factor == pytest.approx(np.exp(f.effect), rel=1e-6)
    assert [f.effect for f in case.findings] == sorted((f.effect for f in case.findings), reverse=True)
    # the findings and the biases add up to the logit difference
    logits = tiny_model.decision_function_from_features(case.feature[None])[0]
    signed = sum(f.effect if f.favours == expl.predicted else -f.effect for f in case.findings)
    assert signed + expl.intercepts[expl.predicted] - expl.intercepts[expl.runner_up] == pytest.approx(
        float(logits[k] - logits[r]), abs=1e-4)


def test_absent_findings_are_worded_as_absent_and_get_no_map(tiny_model, monkeypatch):
    """A finding's words follow where its score sits among the training images, not the sign of
    its contribution; a concept scored as absent is not mapped."""
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(3), top_k=8)
    for f in case.findings:
        (p,) = f.percentiles if len(f.concepts) == 1 else (None,)
        if p is None:
            continue
        if p <= 35:
            assert f.state == "absent" and f.text.startswith(("No ", "Not ")) and f.seen is None
        elif p >= 65:
            assert f.state == "present" and f.text[0].isupper() and f.seen == f.concepts[0]
    mapped = set(case.maps.concepts)
    assert mapped == {f.seen for f in case.findings if f.seen}
    assert not mapped & {c for f in case.findings if f.state == "absent" for c in f.concepts}


def test_maps_need_a_grid_of_at_least_4_cells(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(4), top_k=3)
    assert case.grid == (4, 4) and case.maps.method == "patch-tokens"  # 64 px / 16 px patches
    assert case.maps.maps.shape[1:] == (4, 4) and case.maps.maps.min() >= 0 and case.maps.maps.max() <= 1


def test_demo_clip_maps_are_drawn_only_from_4_x_4_cells(demo_model):
    """The shipped demo-clip gives a 2 x 2 grid (8 x 8 once retrained): below 4 x 4 no map is
    computed, and the report says why."""
    from cbm.explain import explain_image, render_case_html

    model, card = demo_model
    row = card.manifest().split("test_id").rows[0]
    case = explain_image(model, card.image_root / row.path)
    html = render_case_html(case)
    if min(case.grid) < 4:
        assert case.maps.concepts == [] and "too coarse to localise" in html and 'class="concept-map"' not in html
    else:
        assert case.maps.concepts and f"{case.grid[0]} x {case.grid[1]} grid" in html


def test_similar_training_cases_are_the_nearest_in_feature_space(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(105), maps=False)  # a training image (seed 100 + 5)
    ref = tiny_model.reference
    assert len(case.neighbours) == 4
    sims = ref.similarities(case.feature)[0]
    assert [n.similarity for n in case.neighbours] == pytest.approx(sorted(sims, reverse=True)[:4], abs=1e-5)
    first = case.neighbours[0]
    assert first.row == 5 and first.similarity == pytest.approx(1.0, abs=1e-3)  # the image itself
    assert first.label == CLASSES[5 % 3] and first.thumbnail[:3] == b"\xff\xd8\xff"
    assert explain_image(tiny_model, make_image(105), maps=False, neighbours=0).neighbours == []


def test_intervention_present_and_absent_move_the_prediction(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(3), maps=False)
    assert case.maps is None and case.grid is None
    absent, present = tiny_model.presence_levels()
    assert np.all(present > absent)
    seen = case.explanation.probabilities
    yes = case.intervene({"irregular border": "present", "blue-white veil": "present"})
    no = case.intervene({"irregular border": "absent", "blue-white veil": "absent"})
    assert yes["melanoma"] > no["melanoma"]  # both concepts carry positive melanoma weights
    assert sum(yes.values()) == pytest.approx(1.0, abs=1e-6)
    j = CONCEPTS.index("irregular border")
    ref = tiny_model.intervene_features(case.feature, {"irregular border": float(present[j])})
    assert list(case.intervene({"irregular border": "present"}).values()) == pytest.approx(list(ref), abs=1e-6)
    same = case.intervene({"irregular border": case.explanation.scores["irregular border"]})
    assert list(same.values()) == pytest.approx(list(seen.values()), abs=1e-6)
    assert WEIGHTS["melanoma"]["irregular border"] > 0


def test_intervention_bad_input_is_named(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(4), maps=False)
    with pytest.raises(KeyError, match="unknown concept 'irregular bordr'; did you mean 'irregular border'"):
        case.intervene({"irregular bordr": "present"})  # worded as the model words it
    with pytest.raises(TypeError, match="overrides must be a mapping of concept name"):
        case.intervene([("irregular border", "present")])
    with pytest.raises(ValueError, match="present"):
        case.intervene({"irregular border": "yes"})
    with pytest.raises(ValueError, match="is True; use 'present', 'absent' or a number"):  # not a score of 1.0
        case.intervene({"irregular border": True})
    for value in (None, [1.0]):  # "reset" from JSON, or a list: named, not a bare TypeError from float()
        with pytest.raises(ValueError, match=rf"'irregular border' is {re.escape(repr(value))}; use 'present'"):
            case.intervene({"irregular border": value})
    assert list(case.intervene({"irregular border": np.float32(1.0)}).values()) == pytest.approx(
        list(case.intervene({"irregular border": 1}).values()), abs=1e-6)
    # the model takes the words too, as the case does
    assert list(tiny_model.intervene_features(case.feature, {"irregular border": "present"})) == pytest.approx(
        list(case.intervene({"irregular border": "present"}).values()), abs=1e-6)


def test_grey_and_non_square_images_are_displayed_with_the_crop(tiny_model):
    from cbm.explain import explain_image

    grey = make_image(5, (120, 60)).mean(-1, keepdims=True)
    case = explain_image(tiny_model, grey, max_side=90)
    assert case.image.shape == (90, 45, 3) and case.image.dtype == np.uint8
    assert case.crop == (0, 22, 45, 45)  # the centred square the encoder saw, in display pixels
    assert [f.code for f in case.flags][:1] == ["greyscale"] and case.withheld
    with pytest.raises(ValueError, match=r"got \(4, 4, 5\)"):
        explain_image(tiny_model, np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="top_k"):
        explain_image(tiny_model, grey, top_k=0)


@pytest.mark.parametrize(("mode", "crop", "note"), [
    ("squash", (0, 0, 45, 90), "squeezed into a square; its maps are stretched back over the image"),
    ("longest", (-22, 0, 90, 90), "padded to a square; its maps cover the image whole"),
])
def test_maps_lie_where_an_encoder_that_squashes_or_pads_looks(tiny_model, monkeypatch, mode, crop, note):
    """An encoder that squashes (SigLIP's tags) or pads the image sees all of it: the maps cover the
    whole image, and no margin is dimmed as unseen, which the centre crop's box would do."""
    from cbm.encoders.encoder import EncoderTransform
    from cbm.explain import explain_image, render_case_html

    c = tiny_model.encoder.transform.config
    monkeypatch.setattr(tiny_model.encoder, "transform",
                        EncoderTransform(c["size"], c["mean"], c["std"], c["interpolation"], resize_mode=mode))
    case = explain_image(tiny_model, make_image(5, (120, 60)), max_side=90, top_k=2)
    assert case.crop == crop
    assert note in render_case_html(case)
    if case.maps is not None and len(case.maps.concepts):
        from cbm.explain.overlay import heat_overlay

        out = heat_overlay(case.image, np.zeros_like(case.maps.maps[0]), case.crop)
        assert np.array_equal(out, case.image)  # a cold map over a fully seen image: nothing dimmed


def test_the_python_api_carries_the_same_flags(tiny_model, tmp_path):
    """``model.explain`` (the Python API) withholds for the same reasons a report does."""
    from cbm.explain import explain_image

    dcm = tmp_path / "slice.dcm"
    write_phi_dicom(dcm)
    api = tiny_model.explain(dcm)
    case = explain_image(tiny_model, dcm, maps=False)
    assert api.withheld and [f.code for f in api.flags] == [f.code for f in case.flags]
    assert {"modality", "greyscale"} <= {f.code for f in api.flags}
    assert api.can_abstain and api.ood_score == pytest.approx(case.explanation.ood_score, rel=1e-4)
    fine = tiny_model.explain(make_image(101))  # a training image: nothing amiss
    assert not fine.withheld and fine.flags == []
