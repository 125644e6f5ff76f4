"""Concept scores are cosines, standardised with training statistics that survive a save/load."""

from __future__ import annotations

import numpy as np
import pytest

from cbm.bottleneck import ConceptBottleneck, cosine_scores


def test_cosine_scores_ignore_scale():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))
    s = cosine_scores(img * 7.0, txt * 0.1)
    ref = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    np.testing.assert_allclose(s, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="same embedding width"):
        cosine_scores(img, rng.normal(size=(3, 9)))


def test_standardisation_uses_train_statistics_only():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(200, 16)), rng.normal(loc=0.5, size=(50, 16))
    b = ConceptBottleneck(["a", "b", "c"], rng.normal(size=(3, 16)))
    z = b.fit_transform(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    zt = b.transform(test)
    ref = (b.raw_scores(test) - b.raw_scores(train).mean(0)) / b.raw_scores(train).std(0)
    np.testing.assert_allclose(zt, ref, rtol=1e-4, atol=1e-5)
    again = ConceptBottleneck.from_state(b.concept_names, b.state_tensors())
    np.testing.assert_allclose(again.transform(test), zt, rtol=1e-6)
    sub = b.subset(["c", "a"])
    np.testing.assert_allclose(sub.transform(test), zt[:, [2, 0]], rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="unique"):
        ConceptBottleneck(["a", "a"], np.eye(2))
    with pytest.raises(RuntimeError, match="not fitted"):
        ConceptBottleneck(["a"], np.ones((1, 2))).transform(np.ones((1, 2)))
    with pytest.raises(ValueError, match="at least 2 concepts"):
        ConceptBottleneck.debiased(["a"], np.ones((1, 2)))
    # a basis of another width: named, not numpy's "cannot reshape array of size 5"
    with pytest.raises(ValueError, match=r"nuisance_basis has shape \(1, 5\); its rows must have the concept embeddings' width 8"):
        ConceptBottleneck(["a", "b"], np.ones((2, 8)), nuisance_basis=np.ones((1, 5)))
    assert ConceptBottleneck(["a", "b"], np.eye(2, 8), nuisance_basis=np.eye(8)[2]).nuisance_basis.shape == (1, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_and_embeddings_are_refused(bad):
    """A NaN or infinite feature row made every concept's training mean and std NaN, so every score of
    every image was NaN, without a word; the row is named instead."""
    rng = np.random.default_rng(0)
    emb, feats = rng.normal(size=(3, 8)), rng.normal(size=(20, 8))
    b = ConceptBottleneck.debiased(["a", "b", "c"], emb)
    damaged = feats.copy()
    damaged[7, 2] = bad
    with pytest.raises(ValueError, match=r"image features hold NaN or infinite values \(row 7\)"):
        b.fit(damaged)
    b.fit(feats)
    with pytest.raises(ValueError, match=r"row 7\)"):
        b.transform(damaged)
    with pytest.raises(ValueError, match="image features hold NaN"):
        cosine_scores(damaged, emb)
    emb_bad = emb.copy()
    emb_bad[1, 0] = bad
    with pytest.raises(ValueError, match=r"concept embeddings hold NaN or infinite values \(row 1\)"):
        ConceptBottleneck(["a", "b", "c"], emb_bad)
    with pytest.raises(ValueError, match="nuisance embeddings hold NaN"):
        ConceptBottleneck.debiased(["a", "b", "c"], emb, nuisance_embeddings=emb_bad)
    assert b.transform(feats[:0]).shape == (0, 3)  # an empty batch is no damaged one


def _confounded_world(seed=0, n=400, dim=32):
    """Text embeddings sharing a common prompt part (plus a little of the cue's own direction), and
    images whose features carry the cue along its text embedding, as an encoder that sees a ruler does."""
    rng = np.random.default_rng(seed)
    common, cue_text = rng.normal(size=dim), rng.normal(size=dim)
    own = rng.normal(size=(4, dim))
    concepts = 2.0 * common + 0.8 * cue_text + own  # every prompt leans the same way
    cue = rng.random(n) < 0.5
    present = rng.random((n, 4)) < 0.5
    feats = present.astype(float) @ own + 1.5 * cue[:, None] * cue_text + 2.0 * common + 0.3 * rng.normal(size=(n, dim))
    return concepts, cue_text, feats, cue, present


def _corr(a, b):
    return abs(float(np.corrcoef(a, b)[0, 1]))


def test_centring_and_nuisance_prompts_keep_the_cue_out_of_concept_scores():
    concepts, cue_text, feats, cue, present = _confounded_world()
    names = ["a", "b", "c", "d"]
    plain = ConceptBottleneck(names, concepts).fit(feats)
    debiased = ConceptBottleneck.debiased(names, concepts, nuisance_embeddings=cue_text[None], nuisance_prompts=["ruler"])
    debiased.fit(feats)
    zp, zd = plain.transform(feats), debiased.transform(feats)
    leak_plain = max(_corr(zp[:, j], cue) for j in range(4))
    leak_debiased = max(_corr(zd[:, j], cue) for j in range(4))
    assert leak_plain > 0.3 and leak_debiased < 0.1, (leak_plain, leak_debiased)
    # ... and every concept score follows its own concept better than before
    for j in range(4):
        assert _corr(zd[:, j], present[:, j]) > max(0.7, _corr(zp[:, j], present[:, j]) + 0.1)
    # the directions are unit vectors orthogonal to the (centred) nuisance direction
    np.testing.assert_allclose(np.linalg.norm(debiased.directions, axis=1), 1, rtol=1e-5)
    assert np.abs(debiased.directions @ debiased.nuisance_basis.T).max() < 1e-5
    assert debiased.debiasing == {"centred": True, "nuisance_prompts": ["ruler"]}
    # the offset and projection are saved: a reload (and a subset) scores exactly the same
    again = ConceptBottleneck.from_state(names, debiased.state_tensors(), ["ruler"])
    np.testing.assert_allclose(again.transform(feats), zd, rtol=1e-5, atol=1e-5)
    assert again.debiasing == debiased.debiasing
    np.testing.assert_allclose(debiased.subset(["d", "b"]).transform(feats), zd[:, [3, 1]], rtol=1e-5, atol=1e-5)
    # centring alone is not the same as plain cosines
    assert not np.allclose(ConceptBottleneck.debiased(names, concepts).fit_transform(feats), zp, atol=1e-3)


def test_a_concept_that_is_a_nuisance_prompt_is_refused():
    concepts, cue_text, *_ = _confounded_world()
    emb = np.vstack([concepts, cue_text])
    with pytest.raises(ValueError, match=r"\['ruler'\].*drop them"):
        ConceptBottleneck.debiased(["a", "b", "c", "d", "ruler"], emb, nuisance_embeddings=cue_text[None],
                                   nuisance_prompts=["ruler"])
    with pytest.raises(ValueError, match="1 nuisance prompts but 2"):
        ConceptBottleneck.debiased(["a", "b", "c", "d"], concepts, nuisance_embeddings=np.vstack([cue_text, -cue_text]),
                                   nuisance_prompts=["ruler"])


def test_one_nuisance_prompt_is_one_prompt_not_its_letters():
    from cbm.bottleneck import BottleneckConfig

    # `cbm run bottleneck.nuisance_prompts=ruler` gives a string: it was projected out letter by letter
    assert list(BottleneckConfig(nuisance_prompts="ruler").nuisance_prompts) == ["ruler"]
    assert BottleneckConfig(nuisance_prompts=None).nuisance_prompts is None
    assert list(BottleneckConfig(nuisance_prompts=["ruler", "ink marking"]).nuisance_prompts) == ["ruler", "ink marking"]
    for bad in (5, ["ruler", 5], [""]):
        with pytest.raises(ValueError, match="nuisance_prompts must be a list of prompts"):
            BottleneckConfig(nuisance_prompts=bad)
