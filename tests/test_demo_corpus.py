"""Captions of the pretraining corpus: truthful, both sides of a graded attribute, no negated
statements, exact tokens."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cbm.demo.corpus import (
    CORPUS_STREAM,
    DATASET_STREAM,
    EVAL_STREAM,
    SELECT_STREAM,
    CaptionTokenizer,
    caption,
    caption_pieces,
    corpus_scene,
    render_for_encoder,
    said_when_absent,
)
from cbm.demo.world import CORE_CONCEPTS, lesion_attributes


def test_streams_are_distinct_and_scenes_deterministic():
    assert len({DATASET_STREAM, CORPUS_STREAM, EVAL_STREAM, SELECT_STREAM}) == 4
    assert corpus_scene(3) == corpus_scene(3)
    assert corpus_scene(3) != corpus_scene(3, stream=EVAL_STREAM)
    assert corpus_scene(3, seed=0) != corpus_scene(3, seed=1)


def test_cue_is_independent_of_the_diagnosis_in_the_corpus():
    scenes = [corpus_scene(i) for i in range(3000)]
    malignant = np.array([s.lesion.label(3) != "benign nevus" for s in scenes])
    marked = np.array([s.cue != "none" for s in scenes])
    assert abs(marked[malignant].mean() - marked[~malignant].mean()) < 0.05
    assert Counter(s.cue for s in scenes).keys() == {"none", "ruler", "ink"}


def test_every_statement_is_true_of_its_image():
    rng = np.random.default_rng(0)
    by_phrase = {c.phrase: (c, True) for c in CORE_CONCEPTS} | {c.negative: (c, False) for c in CORE_CONCEPTS}
    marks = {"ruler": "ruler", "violet ink marks": "ink"}
    checked = 0
    for i in range(400):
        scene = corpus_scene(i)
        values = lesion_attributes(scene.lesion)
        for piece in caption_pieces(scene, rng)[1:]:
            if piece in by_phrase:
                concept, positive = by_phrase[piece]
                assert bool(concept.truth([values[concept.attribute]])[0]) == positive, (piece, values)
                checked += 1
            elif piece in marks:
                assert scene.cue == marks[piece]
            elif piece == "hair":
                assert scene.hair
    assert checked > 1000


@pytest.fixture(scope="module")
def statement_counts() -> Counter:
    rng = np.random.default_rng(1)
    return Counter(piece for i in range(1500) for piece in caption_pieces(corpus_scene(i), rng)[1:])


@pytest.mark.parametrize("concept", CORE_CONCEPTS, ids=lambda c: c.phrase)
def test_graded_attributes_are_stated_both_ways_and_nothing_is_negated(concept, statement_counts):
    pos, neg = statement_counts[concept.phrase], statement_counts[concept.negative]
    assert pos > 60
    if said_when_absent(concept):  # "regular border" as well as "irregular border"
        assert neg > 60 and 0.2 < pos / (pos + neg) < 0.8
    else:  # a colour or structure is named when present, never denied ("no dots")
        assert neg == 0


def test_no_statement_is_a_negation(statement_counts):
    assert not [piece for piece in statement_counts if piece.startswith("no ")]


def test_diagnosis_words_are_rare_and_follow_the_lay_impression_not_the_rule():
    from sklearn.metrics import roc_auc_score

    from cbm.demo.corpus import IMPRESSION_RATE, lay_impression

    rng = np.random.default_rng(2)
    said, truth = [], []
    n = 4000
    for i in range(n):
        scene = corpus_scene(i)
        head = caption_pieces(scene, rng)[0]
        for label, words in (("melanoma", "melanoma"), ("benign nevus", "benign"), ("suspicious lesion", "suspicious")):
            if words in head:
                said.append(label)
                truth.append(scene.lesion.label(3))
    assert 0.5 * IMPRESSION_RATE * n < len(said) < 1.5 * IMPRESSION_RATE * n
    # the words follow the impression, which agrees with the rule only loosely
    agree = np.mean([s == t for s, t in zip(said, truth)])
    assert agree < 0.7
    lesions = [corpus_scene(i).lesion for i in range(3000)]
    two = [x for x in lesions if x.label(3) != "suspicious lesion"]
    impression = [("benign nevus", "suspicious lesion", "melanoma").index(lay_impression(x)) for x in two]
    auroc = roc_auc_score([x.label(3) == "melanoma" for x in two], impression)
    assert 0.6 < auroc < 0.8


def test_lay_impression_reads_darkness_and_variegation():
    from cbm.demo.corpus import lay_impression
    from cbm.demo.world import Lesion

    plain = Lesion(2, 8, ("light brown",), ("pigment network", "dots", "globules", "streaks"), 7.0, "light brown")
    dark = Lesion(0, 0, ("light brown", "black"), (), 5.0, "light brown")
    both = Lesion(0, 0, ("light brown", "dark brown", "blue-grey"), (), 5.0, "light brown")
    assert plain.label(3) == "melanoma" and lay_impression(plain) == "benign nevus"
    assert lay_impression(dark) == "suspicious lesion"
    assert both.label(3) == "benign nevus" and lay_impression(both) == "melanoma"


def test_piecewise_tokens_equal_the_tokenizer_on_the_caption():
    import open_clip

    tok = open_clip.get_tokenizer("RN50")
    fast = CaptionTokenizer(tok, 48)
    rng = np.random.default_rng(3)
    for i in range(300):
        pieces = caption_pieces(corpus_scene(i), rng)
        ids = fast.ids(pieces)
        assert len(ids) <= 48
        ref = tok([" ".join(p for p in (pieces[0], ", ".join(pieces[1:])) if p)], context_length=77)[0]
        ref = ref[ref > 0].tolist()
        if len(ref) <= 48:
            assert ids == ref
        else:  # statements dropped from the end until it fits
            assert ids[:-1] == ref[: len(ids) - 1] and ids[-1] == tok.eot_token_id
    batch = fast.batch([caption_pieces(corpus_scene(i), rng) for i in range(8)])
    assert batch.shape[0] == 8 and (batch[:, 0] == tok.sot_token_id).all()


def test_caption_is_the_joined_pieces():
    text = caption(corpus_scene(0), np.random.default_rng(4))
    assert isinstance(text, str) and len(text) > 5 and "  " not in text


@pytest.mark.parametrize("method", ["native", "box", "bicubic", "bicubic-noaa"])
def test_every_resize_path_gives_nearly_the_same_image(method):
    scene = corpus_scene(5)
    ref = render_for_encoder(scene, 48, "box").astype(np.float32)
    img = render_for_encoder(scene, 48, method)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert np.abs(img.astype(np.float32) - ref).mean() < 6.0


def test_plain_bicubic_matches_torch_without_antialiasing():
    import torch

    from cbm.demo.render import render_scene

    big = render_scene(corpus_scene(6), 64)
    t = torch.from_numpy(big).permute(2, 0, 1)[None].float()
    ref = torch.nn.functional.interpolate(t, size=(32, 32), mode="bicubic", align_corners=False, antialias=False)
    ref = ref[0].permute(1, 2, 0).round().clamp(0, 255).numpy()
    assert np.abs(render_for_encoder(corpus_scene(6), 32, "bicubic-noaa").astype(np.float32) - ref).max() <= 1


def test_unknown_resize_method_is_named():
    with pytest.raises(ValueError, match="bicubic-noaa"):
        render_for_encoder(corpus_scene(0), 32, "lanczos")


def test_a_hard_negative_changes_one_statement_into_a_false_one():
    """NegCLIP's hard negative: the same caption with exactly one statement made false of the image
    (a graded attribute stated the other way, a present colour or structure swapped for an absent
    one of its kind); the head and the marks stay."""
    from cbm.demo.corpus import contradiction

    rng = np.random.default_rng(3)
    by_phrase = {c.phrase: (c, True) for c in CORE_CONCEPTS} | {c.negative: (c, False) for c in CORE_CONCEPTS}
    made = 0
    for i in range(300):
        scene = corpus_scene(i)
        values = lesion_attributes(scene.lesion)
        pieces = caption_pieces(scene, rng)
        negative = contradiction(pieces, scene.lesion, rng)
        if negative is None:
            continue
        made += 1
        changed = [(a, b) for a, b in zip(pieces, negative) if a != b]
        assert len(negative) == len(pieces) and len(changed) == 1 and changed[0][0] != pieces[0]
        concept, positive = by_phrase[changed[0][1]]
        assert bool(concept.truth([values[concept.attribute]])[0]) != positive, (changed, values)
    assert made > 250
    assert contradiction(["dermoscopy of a lesion with", "ruler", "hair"], corpus_scene(0).lesion, rng) is None


def test_a_caption_is_true_of_its_own_image_and_not_of_every_other():
    """true_statements: every statement of every caption is in its own scene's set, and the set
    holds one side of each graded attribute only (so a caption can be false of another image)."""
    from cbm.demo.corpus import true_statements

    rng = np.random.default_rng(5)
    fits_other = 0
    for i in range(300):
        scene, other = corpus_scene(i), corpus_scene(i + 300)
        truths = true_statements(scene)
        pieces = caption_pieces(scene, rng)
        assert all(p in truths for p in pieces[1:]), (pieces, sorted(truths))
        for concept in CORE_CONCEPTS:
            assert not (concept.phrase in truths and concept.negative in truths)
        fits_other += all(p in true_statements(other) for p in pieces[1:])
    assert 0 < fits_other < 150  # a short caption may fit another lesion; most captions do not
