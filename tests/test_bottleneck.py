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
