"""Baselines: the linear probe and the dense concept head (C chosen on validation), zero-shot logits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from cbm.heads import DenseConceptHead, LinearProbe, SparseConceptHead, make_planted_problem, zero_shot_logits


@parametrize_with_checks([LinearProbe(Cs=3), DenseConceptHead(Cs=3)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def planted():
    return make_planted_problem(n_train=1500, n_val=500, n_concepts=40, n_classes=3, concepts_per_class=3,
                                n_factors=4, signal=2.0, random_state=7)


def test_linear_probe_picks_c_on_validation_and_applies_to_raw_features(planted):
    p = planted
    rng = np.random.default_rng(0)
    # raw features far from standardised: an offset and very different scales per column
    scale = rng.uniform(0.01, 10, p.X_train.shape[1])
    raw_train, raw_val = p.X_train * scale + 5, p.X_val * scale + 5
    probe = LinearProbe(Cs=[1e-3, 1e-2, 1e-1, 1.0]).fit(raw_train, p.y_train, X_val=raw_val, y_val=p.y_val)
    accs = [s["val_accuracy"] for s in probe.scores_]
    assert [s["C"] for s in probe.scores_] == [1e-3, 1e-2, 1e-1, 1.0]
    assert probe.C_ == max(probe.scores_, key=lambda s: (s["val_accuracy"], -s["val_log_loss"]))["C"]
    assert max(accs) > accs[0]  # the grid matters: the strongest penalty is clearly worse here
    # standardisation is folded into coef_: the same model as scaler + logistic regression (up to
    # lbfgs's tolerance: the probe was warm-started along the grid, the reference was not)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C_, max_iter=1000)).fit(raw_train, p.y_train)
    np.testing.assert_allclose(probe.predict_proba(raw_val), ref.predict_proba(raw_val), atol=5e-3)
    assert probe.validation_ == {"source": "given", "n": 500}


def test_binary_convention_matches_sparse_head(planted):
    p = planted
    yb, yvb = (p.y_train == 0).astype(int), (p.y_val == 0).astype(int)
    probe = LinearProbe(Cs=3).fit(p.X_train, yb, X_val=p.X_val, y_val=yvb)
    assert probe.coef_.shape == (2, p.X_train.shape[1])
    np.testing.assert_allclose(probe.coef_[0], -probe.coef_[1])
    ref = LogisticRegression(C=probe.C_, max_iter=1000).fit((p.X_train - p.X_train.mean(0)) / p.X_train.std(0), yb)
    assert probe.decision_function(p.X_val).shape == (len(yvb),)
    np.testing.assert_allclose(
        probe.predict_proba(p.X_val)[:, 1],
        ref.predict_proba((p.X_val - p.X_train.mean(0)) / p.X_train.std(0))[:, 1],
        atol=5e-3,
    )


def test_dense_head_uses_every_concept(planted):
    p = planted
    dense = DenseConceptHead().fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    sparse = SparseConceptHead().fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    assert np.count_nonzero(dense.coef_) == dense.coef_.size
    assert sparse.concepts_per_class() < 0.5 * p.X_train.shape[1]
    assert abs(dense.score(p.X_val, p.y_val) - sparse.score(p.X_val, p.y_val)) < 0.05


def test_every_c_is_solved_not_left_at_the_warm_start():
    """Warm-started along the grid on nearly separable data, each C must still get its own optimum:
    with lbfgs's usual tolerance the larger Cs kept the previous C's solution, tied with it on
    validation, and the choice between them followed rounding (the machine)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(12)
    X, X_val = rng.standard_normal((600, 12)), rng.standard_normal((300, 12))
    y, y_val = (X @ w + 0.3 * rng.standard_normal(600) > 0).astype(int), (X_val @ w > 0).astype(int)
    grid = [1.0, 10.0, 100.0, 1e3, 1e4]
    dense = DenseConceptHead(Cs=grid).fit(X, y, X_val=X_val, y_val=y_val)
    for entry in dense.scores_:
        ref = LogisticRegression(C=entry["C"], tol=1e-10, max_iter=100_000).fit(X, y)
        ref_loss = -np.mean(ref.predict_log_proba(X_val)[np.arange(len(y_val)), y_val])
        assert entry["val_log_loss"] == pytest.approx(ref_loss, rel=1e-3), entry["C"]
        assert entry["converged"]
    assert len({round(e["val_log_loss"], 6) for e in dense.scores_}) == len(grid)  # no two Cs share a stale solution


def test_bad_c_grid_is_a_clear_error(planted):
    p = planted
    with pytest.raises(ValueError, match="Cs must hold finite positive values"):
        LinearProbe(Cs=[0.0, 1.0]).fit(p.X_train, p.y_train)


def test_zero_shot_logits():
    rng = np.random.default_rng(0)
    text = rng.standard_normal((3, 16)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 1, 0])
    images = 3 * text[labels] + 0.3 * rng.standard_normal((6, 16))  # near their class prompt, unnormalised
    logits = zero_shot_logits(images, text)
    assert logits.shape == (6, 3)
    np.testing.assert_array_equal(logits.argmax(1), labels)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(logits, 100 * unit(images) @ unit(text).T, rtol=1e-5)
    np.testing.assert_allclose(zero_shot_logits(images, text, temperature=1.0), logits / 100, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        zero_shot_logits(images, text, temperature=0.0)
    with pytest.raises(ValueError, match="same embedding width"):
        zero_shot_logits(images, text[:, :8])
