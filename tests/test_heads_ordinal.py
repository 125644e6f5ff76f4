"""The sparse head's ordinal form: one weight vector shared by ordered classes, its optimality,
its sign constraints from the store, and how the pipeline and the card switch it on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from cbm.heads import SparseConceptHead, ordinal_directions, ordinal_positions
from cbm.pipeline import make_head

EXACT = {"dtype": "float64", "tol": 1e-10, "max_iter": 100_000}


@pytest.fixture(scope="module")
def graded():
    """2,000 cases graded 0/1/2 by thresholds on a latent score of 3 of 6 concepts."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((2000, 6))
    latent = X @ np.array([1.5, -1.0, 0.7, 0.0, 0.0, 0.0]) + rng.logistic(size=2000) * 0.5
    y = np.digitize(latent, [-0.8, 0.8])
    return X, y


def ordinal_objective(X, y, s, lam, r):
    """The ordinal problem in its own parametrisation (w, b), written independently of the solver."""
    n, C = X.shape

    def f(v):
        w, b = v[:C], v[C:]
        Z = np.outer(X @ w, s) + b
        top = Z.max(1)
        lse = np.log(np.exp(Z - top[:, None]).sum(1)) + top
        P = np.exp(Z - lse[:, None])
        loss = (lse - Z[np.arange(n), y]).mean()
        R = (P - np.eye(len(s))[y]) / n
        grad_w = X.T @ (R @ s) + lam * r * np.sign(w) + lam * (1 - r) * w
        return loss + lam * r * np.abs(w).sum() + 0.5 * lam * (1 - r) * w @ w, np.concatenate([grad_w, R.sum(0)])

    return f


def test_positions_and_directions_from_the_store():
    np.testing.assert_allclose(ordinal_positions(3), [-1, 0, 1])
    np.testing.assert_allclose(ordinal_positions(4), [-1.5, -0.5, 0.5, 1.5])
    prior = np.array([  # benign, suspicious, melanoma x 5 concepts
        [1, 0, 0, 0, 1],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 0, 1],
    ])
    # the nevus's concept lowers the grade, melanoma's (and one listed under suspicious and melanoma)
    # raises it; one of the middle class alone, one listed nowhere and one listed at both ends: none
    np.testing.assert_array_equal(ordinal_directions(prior), [-1, 0, 1, 0, 0])


def test_a_faithful_ordinal_head_on_four_grades_contradicts_nothing_and_a_wrong_direction_is_named_once():
    """Every row of a four-grade ordinal head is a multiple of the shared vector, so a finding of grade 1
    also weighs on grade 0; judged per entry, the faithful head would contradict its own store. It is
    judged by the grade direction each concept moves instead."""
    from cbm.heads import contradicting_entries

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 4))
    t = -1.0 * X[:, 0] - 0.8 * X[:, 1] + 0.8 * X[:, 2] + 1.0 * X[:, 3] + rng.normal(scale=0.5, size=1200)
    y = np.digitize(t, np.quantile(t, [0.25, 0.5, 0.75]))  # grades 0 < 1 < 2 < 3
    prior = np.eye(4)  # concept j listed under grade j only: down, down, up, up
    head = SparseConceptHead(ordinal=True, constraint="prior", prior=prior, n_lambdas=15, intervention_training=False,
                             random_state=0).fit(X, y)
    assert np.count_nonzero(head.coef_[0]) == 4  # grade 0 shows grade 1's finding too
    assert contradicting_entries(head.coef_, prior, ordinal=True) == []
    assert contradicting_entries(head.coef_, prior) != []  # what a per-entry reading said
    wrong = head.coef_.copy()
    wrong[:, 1] *= -1  # grade 1's finding now raises the grade
    assert contradicting_entries(wrong, prior, ordinal=True) == [(3, 1, pytest.approx(abs(wrong[3, 1] - wrong[0, 1])))]


def test_the_ordinal_form_is_optimal_and_shares_one_vector(graded):
    """Signs fixed by the store: the problem is smooth on its feasible set, so L-BFGS-B solves it too."""
    X, y = graded
    prior = np.zeros((3, 6))
    prior[2, [0, 2, 5]] = 1  # melanoma's concepts raise the grade
    prior[0, 1] = 1  # the nevus's lowers it
    lam, r = 0.005, 0.9
    head = SparseConceptHead(lambdas=[lam], l1_ratio=r, constraint="prior", prior=prior, ordinal=True,
                             intervention_training=False, **EXACT).fit(X, y, X_val=X, y_val=y)
    s = ordinal_positions(3)
    w = head.coef_[2]
    np.testing.assert_allclose(head.coef_, np.outer(s, w), atol=1e-12)  # rows -w, 0, +w
    assert w[0] > 0 and w[1] < 0 and w[2] > 0 and w[3] == 0 and w[4] == 0
    bounds = [(0, None), (None, 0), (0, None), (0, 0), (0, 0), (0, None)] + [(None, None)] * 3
    ref = minimize(ordinal_objective(X, y, s, lam, r), np.zeros(9), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-12})
    np.testing.assert_allclose(w, ref.x[:6], atol=1e-5)
    # the intercepts are those of the uncentred inputs: the same probabilities as the reference
    Z = np.outer(X @ ref.x[:6], s) + ref.x[6:]
    P = np.exp(Z - Z.max(1, keepdims=True))
    np.testing.assert_allclose(head.predict_proba(X), P / P.sum(1, keepdims=True), atol=1e-5)


def test_the_ordinal_path_and_its_middle_class(graded):
    X, y = graded
    head = SparseConceptHead(ordinal=True, n_lambdas=20, intervention_training=False).fit(X, y)
    assert head.path_[0]["nnz"] == 0  # the top of the path zeroes w
    assert np.all(head.coef_[1] == 0)  # the middle class keeps its bias alone
    np.testing.assert_allclose(head.coef_[0], -head.coef_[2])
    # one scale: the middle class wins in a band between its neighbours
    t = np.linspace(-6, 6, 400)[:, None] * head.coef_[2] / np.linalg.norm(head.coef_[2]) ** 2
    pred = head.predict(t - t.mean(0) + X.mean(0))
    assert list(dict.fromkeys(pred)) == [0, 1, 2]
    assert head.score(X, y) > 0.7


def test_ordinal_settings_are_checked(graded):
    X, y = graded
    with pytest.raises(ValueError, match='ordinal must be true, false or "auto"'):
        SparseConceptHead(ordinal="yes").fit(X, y)
    with pytest.raises(ValueError, match="prior penalty"):
        SparseConceptHead(ordinal=True, prior=np.zeros((3, 6)), prior_strength=0.1).fit(X, y)
    # "auto" fitted directly is the per-class head
    auto = SparseConceptHead(ordinal="auto", n_lambdas=5, intervention_training=False, random_state=0).fit(X, y)
    plain = SparseConceptHead(n_lambdas=5, intervention_training=False, random_state=0).fit(X, y)
    np.testing.assert_allclose(auto.coef_, plain.coef_)


def test_the_pipeline_resolves_auto_from_the_card():
    head = SparseConceptHead(ordinal="auto")
    assert make_head(head, None, ordered=True).ordinal is True
    assert make_head(head, None, ordered=False).ordinal is False
    assert make_head(SparseConceptHead(ordinal=False), None, ordered=True).ordinal is False
    # the default head keeps one row per class (scripts/check_defaults.py --ordinal chose it)
    assert make_head(None, None, ordered=True).ordinal is False


def test_with_two_classes_the_ordinal_form_is_the_per_class_head_with_its_ridge_doubled():
    """Two grades sit at -1/2 and +1/2, so the ordinal rows are the per-class head's pair -w/2, +w/2: under
    pure L1 the two heads are one, and with a ridge share the ordinal ridge, on w, is twice the pair's."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 6))
    y = (X[:, 0] - X[:, 1] + 0.7 * rng.standard_normal(200) > 0).astype(int)
    lam, r = 0.01, 0.9
    for plain_lam, plain_r, ord_r in ((lam, 1.0, 1.0), (lam * (2 - r), r / (2 - r), r)):
        plain = SparseConceptHead(lambdas=[plain_lam], l1_ratio=plain_r, **EXACT).fit(X, y, X_val=X, y_val=y)
        ordinal = SparseConceptHead(lambdas=[lam], l1_ratio=ord_r, ordinal=True, **EXACT).fit(X, y, X_val=X, y_val=y)
        net = ordinal.coef_[1] - ordinal.coef_[0]
        assert np.count_nonzero(net) >= 2
        np.testing.assert_allclose(net, plain.coef_[1] - plain.coef_[0], atol=1e-6)
        np.testing.assert_allclose(ordinal.predict_proba(X), plain.predict_proba(X), atol=1e-6)
