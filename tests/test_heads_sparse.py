"""The sparse concept head: scikit-learn compatibility, the objective against scikit-learn's, the
path and its selection rules, class weights, the class-concept prior, devices."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.utils.estimator_checks import parametrize_with_checks

from cbm.heads import SparseConceptHead, elastic_net_objective, make_planted_problem, select_path_point, standard_error

EXACT = {"dtype": "float64", "tol": 1e-10, "max_iter": 100_000}


def _expected_failures(estimator):
    # the ordinal form puts the classes on one line: scikit-learn's three blobs in a plane are not
    # graded, so its accuracy floor for any classifier does not apply to it
    return {"check_classifiers_train": "three unordered blobs are not grades of one scale"} if estimator.ordinal is True else {}


@parametrize_with_checks([SparseConceptHead(n_lambdas=20), SparseConceptHead(n_lambdas=20, ordinal=True)],
                         expected_failed_checks=_expected_failures)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def small():
    """300 samples, 20 concepts, 3 classes, 4 informative concepts."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20))
    W = np.zeros((3, 20))
    W[:, :4] = 2 * rng.standard_normal((3, 4))
    z = X @ W.T + np.array([0.8, 0.0, -0.8])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) < rng.random((300, 1))).sum(1)
    return X, y


@pytest.fixture(scope="module")
def planted():
    return make_planted_problem(n_train=3000, n_val=1000, n_test=1000, n_concepts=64, n_classes=4,
                                concepts_per_class=4, n_factors=4, signal=2.0, random_state=3)


def sklearn_objective(coef, intercept, X, y, C, l1_ratio, sample_weight=None):
    """scikit-learn's own parametrisation: C * sum_i s_i loss_i + r |W|_1 + (1 - r)/2 |W|^2."""
    Z = X @ np.asarray(coef).T + intercept
    if Z.shape[1] == 1:  # binomial
        Z = np.hstack([np.zeros_like(Z), Z])
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    data = C * len(y) * log_loss(y, P, sample_weight=w, normalize=False) / len(y)
    W = np.asarray(coef)
    return data + l1_ratio * np.abs(W).sum() + (1 - l1_ratio) / 2 * (W * W).sum()


def fit_saga(X, y, C, l1_ratio, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=C, l1_ratio=l1_ratio, solver="saga", tol=1e-12, max_iter=100_000, **kw).fit(X, y)


@pytest.mark.parametrize("fraction", [0.3, 0.05, 0.005])
def test_objective_matches_sklearn_saga(small, fraction):
    X, y = small
    n, r = len(y), 0.99
    lam = fraction * SparseConceptHead(n_lambdas=1).fit(X, y, X_val=X, y_val=y).lambdas_[0]
    ours = SparseConceptHead(lambdas=[lam], **EXACT).fit(X, y, X_val=X, y_val=y)
    sk = fit_saga(X, y, C=1 / (lam * n), l1_ratio=r)
    C = 1 / (lam * n)
    f_ours = sklearn_objective(ours.coef_, ours.intercept_, X, y, C, r)
    f_sk = sklearn_objective(sk.coef_, sk.intercept_, X, y, C, r)
    assert abs(f_ours - f_sk) / abs(f_sk) < 1e-4
    # the library's objective is sklearn's divided by C * n
    assert elastic_net_objective(ours.coef_, ours.intercept_, X, y, lam, r) == pytest.approx(f_ours / (C * n), rel=1e-10)
    np.testing.assert_array_equal(ours.coef_ != 0, np.abs(sk.coef_) > 1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-5)


def test_binary_is_a_binomial_elastic_net(small):
    """Two classes: rows -w/2, +w/2; w solves sklearn's binomial problem at the documented mapping."""
    X, y = small
    yb = (y == 0).astype(int)
    n, r = len(yb), 0.9
    lam = 0.02
    head = SparseConceptHead(lambdas=[lam], l1_ratio=r, **EXACT).fit(X, yb, X_val=X, y_val=yb)
    assert head.coef_.shape == (2, X.shape[1])
    np.testing.assert_allclose(head.coef_[0], -head.coef_[1], atol=1e-9)
    sk = fit_saga(X, yb, C=1 / (lam * (1 + r) / 2 * n), l1_ratio=2 * r / (1 + r))
    np.testing.assert_allclose(head.coef_[1] - head.coef_[0], sk.coef_[0], atol=1e-5)
    assert head.decision_function(X).shape == (n,)
    np.testing.assert_allclose(head.predict_proba(X), sk.predict_proba(X), atol=1e-6)


def kkt_residual(head, X, y, lam, l1_ratio, sample_weight=None, prior=None, mu=0.0):
    """Largest violation of the optimality conditions, computed independently of the solver."""
    W, b = head.coef_, head.intercept_
    n = len(y)
    s = np.ones(n) if sample_weight is None else sample_weight
    Z = X @ W.T + b
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    R = (P - np.eye(W.shape[0])[y]) * s[:, None] / n
    G = R.T @ X + lam * (1 - l1_ratio) * W
    shift = 0.0 if prior is None else mu * prior
    pos = np.maximum(lam * l1_ratio - shift, 0) * np.ones_like(W)
    neg = np.maximum(lam * l1_ratio + shift, 0) * np.ones_like(W)
    at_zero = np.maximum(np.maximum(-G - pos, G - neg), 0)
    nonzero = np.abs(G + np.where(W > 0, pos, -neg))
    return max(np.where(W == 0, at_zero, nonzero).max(), np.abs(R.sum(0)).max())


def test_class_weights_balanced(small):
    X, y = small
    counts = np.bincount(y)
    sw = (len(y) / (3 * counts))[y]
    # pure ridge: scikit-learn's lbfgs handles sample weights exactly, so compare objectives
    lam = 0.01
    ours = SparseConceptHead(lambdas=[lam], l1_ratio=0.0, class_weight="balanced", **EXACT).fit(X, y, X_val=X, y_val=y)
    sk = LogisticRegression(C=1 / (lam * len(y)), l1_ratio=0.0, class_weight="balanced", tol=1e-12, max_iter=10_000).fit(X, y)
    C = 1 / (lam * len(y))
    f_ours, f_sk = (sklearn_objective(m.coef_, m.intercept_, X, y, C, 0.0, sw) for m in (ours, sk))
    assert abs(f_ours - f_sk) / f_sk < 1e-6
    # elastic net: the optimality conditions of the weighted problem hold
    head = SparseConceptHead(lambdas=[0.02], class_weight="balanced", **EXACT).fit(X, y, X_val=X, y_val=y)
    assert kkt_residual(head, X, y, 0.02, 0.99, sample_weight=sw) < 1e-7
    # and the rare class is found more often than without weights
    plain = SparseConceptHead(lambdas=[0.02], **EXACT).fit(X, y, X_val=X, y_val=y)
    rare = np.argmin(counts)
    assert (head.predict(X)[y == rare] == rare).mean() > (plain.predict(X)[y == rare] == rare).mean()


def test_class_weight_dict_names_unknown_class(small):
    X, y = small
    with pytest.raises(ValueError, match="unknown classes"):
        SparseConceptHead(class_weight={7: 2.0}).fit(X, y)


def test_a_class_weight_mapping_that_is_no_dict_is_taken_as_a_dict(small):
    """check_params accepted any mapping (a config's, a read-only view) and fit then refused it as 'not
    a dict'."""
    from types import MappingProxyType

    X, y = small
    weights = {0: 1.0, 1: 3.0, 2: 1.0}
    as_dict = SparseConceptHead(lambdas=[0.02], class_weight=weights, **EXACT).fit(X, y, X_val=X, y_val=y)
    view = SparseConceptHead(lambdas=[0.02], class_weight=MappingProxyType(weights), **EXACT)
    view.check_params()
    np.testing.assert_allclose(view.fit(X, y, X_val=X, y_val=y).coef_, as_dict.coef_, atol=1e-8)


def test_class_weights_that_zero_every_sample_are_refused(small):
    """All-zero class weights left no loss: the head kept all-zero weights and predicted one class
    for everything, without a word."""
    X, y = small
    with pytest.raises(ValueError, match="every training sample weight 0"):
        SparseConceptHead(class_weight={0: 0.0, 1: 0.0, 2: 0.0}).fit(X, y)
    with pytest.raises(ValueError, match="every training sample weight 0"):
        SparseConceptHead(class_weight={0: 0.0, 2: 0.0}).fit(X[y != 1], y[y != 1])
    head = SparseConceptHead(class_weight={0: 0.0}, random_state=0).fit(X, y)  # one class left out: allowed
    assert set(head.predict(X)) <= {1, 2}


def test_a_selected_head_without_concepts_is_warned_of():
    """With 3.5 % of cases in one class (class weights or not), validation accuracy chose the all-zero
    first point: a head that answers the majority class for everything, without a word."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (1.5 * X[:, 0] + rng.normal(size=2000) > 3.2).astype(int)
    with pytest.warns(UserWarning, match="uses no concept: the head answers one class for every case"):
        head = SparseConceptHead(class_weight="balanced", random_state=0).fit(X, y)
    assert not np.any(head.coef_)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseConceptHead(random_state=0, n_lambdas=10).fit(X, (X[:, 0] > 0).astype(int))


@pytest.mark.parametrize("scale", [1e18, 1e39])
def test_inputs_too_large_for_the_solver_precision_are_refused(small, scale):
    """At 1e18 the float32 path stayed at zero with a warning to raise max_iter; at 1e39 (finite in
    float64, infinite in float32) it stayed at zero without a word."""
    X, y = small
    with pytest.raises(ValueError, match=r"the inputs reach .*standardise them .* or use dtype='float64'"):
        SparseConceptHead(n_lambdas=5).fit(X * scale, y)
    if scale < 1e20:  # float64 holds it: the path leaves zero and predicts as on the unscaled inputs
        big = SparseConceptHead(n_lambdas=5, dtype="float64", random_state=0).fit(X * scale, y)
        plain = SparseConceptHead(n_lambdas=5, dtype="float64", random_state=0).fit(X, y)
        assert np.count_nonzero(big.coef_) and np.mean(big.predict(X * scale) == plain.predict(X)) > 0.95


def test_path_runs_from_all_zero_down(small):
    X, y = small
    head = SparseConceptHead(**EXACT).fit(X, y, X_val=X, y_val=y)
    assert len(head.path_) == 50 and np.all(np.diff(head.lambdas_) < 0)
    assert head.lambdas_[-1] == pytest.approx(head.lambdas_[0] * 1e-3)
    assert head.path_[0]["nnz"] == 0 and head.path_[-1]["nnz"] > head.path_[10]["nnz"]
    assert head.path_coefs_.shape == (50, 3, 20) and head.path_intercepts_.shape == (50, 3)
    assert set(head.path_[0]) == {"lambda", "val_accuracy", "train_loss", "objective", "nnz",
                                  "concepts_per_class", "n_iter", "converged", "seconds"}
    # lambda_max is the smallest lambda that zeroes everything: just below it a weight appears
    below = SparseConceptHead(lambdas=[0.999 * head.lambdas_[0]], **EXACT).fit(X, y, X_val=X, y_val=y)
    assert np.count_nonzero(below.coef_) >= 1
    # every point is an optimum of its own lambda
    for i in (5, 25, 49):
        head.select_point(i)
        assert kkt_residual(head, X, y, head.lambda_, 0.99) < 1e-7


def test_select_point_switches_model(small):
    X, y = small
    head = SparseConceptHead(n_lambdas=10).fit(X, y, X_val=X, y_val=y)
    chosen = head.selected_index_
    head.select_point(-1)
    assert head.selected_index_ == 9 and head.lambda_ == head.lambdas_[-1]
    np.testing.assert_array_equal(head.coef_, head.path_coefs_[-1])
    assert head.concepts_per_class() == pytest.approx(head.path_[-1]["concepts_per_class"])
    head.select_point(chosen)
    with pytest.raises(IndexError, match="has 10 points"):
        head.select_point(10)


def test_recovers_planted_concepts(planted):
    p = planted
    head = SparseConceptHead(random_state=0).fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    found = head.coef_ != 0
    assert (found & p.support).sum() >= 0.9 * p.support.sum()
    assert head.concepts_per_class() <= 3 * p.support.sum(1).mean()
    z = p.X_test @ p.coef.T + p.intercept
    oracle = (z.argmax(1) == p.y_test).mean()
    assert head.score(p.X_test, p.y_test) > oracle - 0.03
    assert head.validation_ == {"source": "given", "n": 1000}


def test_concept_budget(planted):
    p = planted
    head = SparseConceptHead(max_concepts_per_class=2).fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    assert head.concepts_per_class() <= 2
    densest = SparseConceptHead(selection="concepts", max_concepts_per_class=2).fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    within = [q["concepts_per_class"] for q in densest.path_ if q["concepts_per_class"] <= 2]
    assert densest.concepts_per_class() == max(within)


def test_internal_holdout_is_stratified_and_reproducible(planted):
    p = planted
    a = SparseConceptHead(n_lambdas=10, random_state=1).fit(p.X_train, p.y_train)
    b = SparseConceptHead(n_lambdas=10, random_state=1).fit(p.X_train, p.y_train)
    assert a.validation_ == {"source": "holdout", "n": 600}
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert [q["val_accuracy"] for q in a.path_] == [q["val_accuracy"] for q in b.path_]


def test_selection_rules():
    def point(lam, acc, cpc):
        return {"lambda": lam, "val_accuracy": acc, "concepts_per_class": cpc}

    path = [point(1.0, 0.30, 0), point(0.5, 0.80, 2), point(0.25, 0.84, 5), point(0.1, 0.85, 9), point(0.05, 0.85, 12)]
    # 1-SE: se of 0.85 on 100 samples is 0.036, so 0.84 (5 concepts) ties with the best and is sparser
    assert standard_error(0.85, 100) == pytest.approx(0.0357, abs=1e-4)
    assert standard_error(1.0, 100) == 0.0
    assert select_path_point(path, n_val=100) == 2
    # on 10,000 samples the se is 0.0036: only the two 0.85 points tie, the sparser one wins
    assert select_path_point(path, n_val=10_000) == 3
    assert select_path_point(path, accuracy_tolerance=0.0) == 3
    assert select_path_point(path, accuracy_tolerance=0.06) == 1
    assert select_path_point(path, max_concepts_per_class=4, accuracy_tolerance=0.0) == 1
    assert select_path_point(path, "concepts", max_concepts_per_class=10) == 3
    with pytest.raises(ValueError, match="no path point"):
        select_path_point(path, max_concepts_per_class=-1)


def test_prior_solution_is_optimal_and_changes_the_choice():
    """Two identical concepts: the prior's entry decides which one a class uses."""
    rng = np.random.default_rng(5)
    n = 400
    signal = rng.standard_normal(n)
    X = np.column_stack([signal, signal, rng.standard_normal((n, 4))])
    y = (signal + 0.5 * rng.standard_normal(n) > 0).astype(int)
    prior = np.zeros((2, 6))
    prior[1, 1] = 1.0  # class 1 owns concept 1 (the twin of concept 0)
    lam, mu = 0.01, 0.005
    plain = SparseConceptHead(lambdas=[lam], **EXACT).fit(X, y, X_val=X, y_val=y)
    np.testing.assert_allclose(plain.coef_[:, 0], plain.coef_[:, 1], atol=1e-8)  # an even split
    head = SparseConceptHead(lambdas=[lam], prior=prior, prior_strength=mu, **EXACT).fit(X, y, X_val=X, y_val=y)
    assert head.coef_[1, 1] > 0 and head.coef_[1, 0] == 0
    assert kkt_residual(head, X, y, lam, 0.99, prior=prior, mu=mu) < 1e-8
    # and the top of the path still has every weight at zero
    path = SparseConceptHead(prior=prior, prior_strength=mu, n_lambdas=5).fit(X, y, X_val=X, y_val=y)
    assert path.path_[0]["nnz"] == 0


def test_prior_errors(small):
    X, y = small
    with pytest.raises(ValueError, match="use_prior=True but no prior"):
        SparseConceptHead(use_prior=True).fit(X, y)
    with pytest.raises(ValueError, match=r"prior has shape \(2, 20\)"):
        SparseConceptHead(prior=np.zeros((2, 20)), prior_strength=0.1).fit(X, y)
    # a class absent from the training labels: the message says which classes the labels hold
    with pytest.raises(ValueError, match=r"the training labels hold \[0, 2\]: a class they lack has no row"):
        SparseConceptHead(prior=np.ones((3, 20)), constraint="prior").fit(X[y != 1], y[y != 1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        SparseConceptHead(prior=2 * np.ones((3, 20)), prior_strength=0.1).fit(X, y)


def test_validation_split_errors(small):
    X, y = small
    with pytest.raises(ValueError, match="both X_val and y_val"):
        SparseConceptHead().fit(X, y, X_val=X)
    with pytest.raises(ValueError, match=r"y_val has labels the training data lacks: \[9\]"):
        SparseConceptHead().fit(X, y, X_val=X[:10], y_val=np.full(10, 9))
    with pytest.raises(ValueError, match="X has 3 features"):
        SparseConceptHead().fit(X, y, X_val=X[:, :3], y_val=y)
    with pytest.raises(ValueError, match='selection="concepts" needs max_concepts_per_class'):
        SparseConceptHead(selection="concepts").fit(X, y)


def test_float32_matches_float64(small):
    X, y = small
    a = SparseConceptHead(n_lambdas=10, tol=1e-6, max_iter=10_000).fit(X, y, X_val=X, y_val=y)
    b = SparseConceptHead(n_lambdas=10, **EXACT).fit(X, y, X_val=X, y_val=y)
    np.testing.assert_allclose(a.path_coefs_, b.path_coefs_, atol=2e-3)
    np.testing.assert_allclose([q["objective"] for q in a.path_], [q["objective"] for q in b.path_], rtol=1e-5)


def test_not_converged_warns(small):
    X, y = small
    with pytest.warns(ConvergenceWarning, match="stopped at max_iter=1"):
        SparseConceptHead(n_lambdas=5, max_iter=1, tol=1e-12).fit(X, y, X_val=X, y_val=y)


def test_cuda_unavailable_is_a_clear_error(small):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    X, y = small
    with pytest.raises(RuntimeError, match="no CUDA device; use device='cpu'"):
        SparseConceptHead(device="cuda").fit(X, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(planted):
    p = planted
    cpu = SparseConceptHead(n_lambdas=20, **EXACT).fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    gpu = SparseConceptHead(n_lambdas=20, device="cuda", **EXACT).fit(p.X_train, p.y_train, X_val=p.X_val, y_val=p.y_val)
    np.testing.assert_allclose(gpu.path_coefs_, cpu.path_coefs_, atol=1e-6)
    assert gpu.selected_index_ == cpu.selected_index_


# ------------------------------------------------------------------ intervention-aware fitting
def _graded_world(n: int, seed: int):
    """Three parts t1..t3 (label: at least two present) seen through noisy scores, and a summary
    concept whose score grades the count but whose truth only says "at least one": a head on
    scores leans on the summary, and setting the summary from its truth takes that grading away."""
    rng = np.random.default_rng(seed)
    parts = (rng.random((n, 3)) < 0.5).astype(float)
    count = parts.sum(1)
    y = (count >= 2).astype(int)
    scores = np.column_stack([parts + rng.normal(0, 0.5, parts.shape), count + rng.normal(0, 0.35, n)])
    truth = np.column_stack([parts, (count >= 1).astype(float)])
    mean, std = scores.mean(0), scores.std(0)
    z = (scores - mean) / std
    return z, y, truth


def _truth_values(z, truth):
    """Present/absent at the mean score of the cases annotated so (what the pipeline uses)."""
    levels = np.array([[z[truth[:, c] == v, c].mean() for c in range(z.shape[1])] for v in (0, 1)])
    return np.where(truth == 1, levels[1], levels[0])


def _curve(head, z, y, t):
    from cbm.heads import intervention_accuracies

    coef, b = head.coef_, head.intercept_
    return intervention_accuracies(coef, b, z, y, t)


def test_intervention_aware_fitting_makes_interventions_help():
    z, y, truth = _graded_world(3000, 0)
    zv, yv, truth_v = _graded_world(1500, 1)
    t, tv = _truth_values(z, truth), _truth_values(zv, truth_v)
    plain = SparseConceptHead(intervention_training=False).fit(z, y, X_val=zv, y_val=yv)
    aware = SparseConceptHead().fit(z, y, X_val=zv, y_val=yv, truth=t, truth_val=tv)
    curve_plain, curve_aware = _curve(plain, zv, yv, tv), _curve(aware, zv, yv, tv)
    # the plain head falls when its most-weighted concept (the summary) is set from the truth
    assert min(np.diff(curve_plain)) < -0.05
    # the aware head ends where the truth decides (the label is a function of the parts), and its
    # curve is higher throughout on average
    assert curve_plain[-1] < 0.7 and curve_aware[-1] > 0.99
    assert np.mean(curve_aware) > np.mean(curve_plain) + 0.1
    assert aware.score(zv, yv) > plain.score(zv, yv) - 0.03  # and costs little without help
    assert aware.interventions_["rounds"] == 2 and aware.interventions_["training_copies"] >= 2
    assert all("val_intervention_accuracy" in p for p in aware.path_)
    assert plain.interventions_ is None and "val_intervention_accuracy" not in plain.path_[0]


def test_intervention_aware_fitting_without_truth_is_the_plain_fit(small):
    X, y = small
    a = SparseConceptHead(n_lambdas=15).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    b = SparseConceptHead(n_lambdas=15, intervention_training=False).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    nothing = np.full((200, X.shape[1]), np.nan)  # truth given, but nothing annotated
    c = SparseConceptHead(n_lambdas=15).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:], truth=nothing,
                                            truth_val=np.full((100, X.shape[1]), np.nan))
    for other in (b, c):
        assert other.selected_index_ == a.selected_index_
        np.testing.assert_allclose(other.coef_, a.coef_, atol=1e-6)
    assert a.interventions_ is None and c.interventions_ is None
    # truth on the training cases but none on validation: no curve to select by, said, not a crash
    with pytest.warns(UserWarning, match="truth_val annotates no case"):
        d = SparseConceptHead(n_lambdas=15).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:], truth=X[:200] > 0,
                                                truth_val=np.full((100, X.shape[1]), np.nan))
    assert d.interventions_ is None
    np.testing.assert_allclose(d.coef_, a.coef_, atol=1e-6)


def test_intervention_aware_fitting_on_an_internal_holdout():
    z, y, truth = _graded_world(2000, 3)
    head = SparseConceptHead(random_state=0).fit(z, y, truth=_truth_values(z, truth))
    assert head.validation_["source"] == "holdout" and head.interventions_ is not None
    zt, yt, tt = _graded_world(1000, 4)
    assert _curve(head, zt, yt, _truth_values(zt, tt))[-1] > 0.98


def test_intervention_aware_fitting_bad_truth_is_named(small):
    X, y = small
    with pytest.raises(ValueError, match="truth has shape"):
        SparseConceptHead(n_lambdas=5).fit(X, y, truth=np.zeros((10, 3)))
    with pytest.raises(ValueError, match="without truth_val"):
        SparseConceptHead(n_lambdas=5).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:], truth=np.zeros((200, 20)))
    with pytest.raises(ValueError, match="infinite"):
        SparseConceptHead(n_lambdas=5).fit(X, y, truth=np.full(X.shape, np.inf))


def test_selection_prefers_the_best_intervention_curve_among_accurate_points():
    path = [
        {"lambda": 3.0, "val_accuracy": 0.80, "concepts_per_class": 1.0, "val_intervention_accuracy": 0.99},
        {"lambda": 2.0, "val_accuracy": 0.90, "concepts_per_class": 2.0, "val_intervention_accuracy": 0.85},
        {"lambda": 1.0, "val_accuracy": 0.905, "concepts_per_class": 4.0, "val_intervention_accuracy": 0.97},
        {"lambda": 0.5, "val_accuracy": 0.91, "concepts_per_class": 9.0, "val_intervention_accuracy": 0.99},
    ]
    # within one standard error of the best (0.91, n = 1000: 0.009): points 1 and 2 (3 is over the budget)
    assert select_path_point(path, max_concepts_per_class=8, n_val=1000) == 2
    plain = [{k: v for k, v in p.items() if k != "val_intervention_accuracy"} for p in path]
    assert select_path_point(plain, max_concepts_per_class=8, n_val=1000) == 1


def test_a_large_holdout_keeps_every_class_in_the_fitting_part():
    """At validation_fraction 0.75 a stratified split put both samples of a 2-sample class into
    validation: the sparse head fitted a class it never saw, the dense one crashed (IndexError)."""
    from cbm.heads import DenseConceptHead

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 4))
    y = np.r_[np.zeros(2, int), rng.integers(1, 3, 198)]
    head = SparseConceptHead(n_lambdas=5, validation_fraction=0.75, random_state=0).fit(X, y)
    assert head.intercept_[0] > -20  # class 0 was fitted on (it sat near -60 when never seen)
    assert DenseConceptHead(Cs=3, validation_fraction=0.75, random_state=0).fit(X, y).predict_proba(X).shape == (200, 3)


def test_a_fit_that_fails_leaves_the_head_unfitted_not_half_updated():
    from sklearn.exceptions import NotFittedError

    p = make_planted_problem(n_train=600, n_val=200, n_concepts=16, n_classes=3, concepts_per_class=3, random_state=5)
    head = SparseConceptHead(n_lambdas=5).fit(p.X_train, p.y_train)
    with pytest.raises(ValueError, match="y_val has labels the training data lacks"):
        head.fit(p.X_train, np.array([5, 6, 7])[p.y_train], X_val=p.X_val, y_val=p.y_val)
    with pytest.raises(NotFittedError):  # before: the old weights answered with the new labels
        head.predict(p.X_val[:8])


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -0.1])
def test_a_prior_strength_that_is_no_finite_non_negative_number_is_refused(strength):
    # a NaN strength fitted all-zero weights (a head that predicts one class) without a word
    with pytest.raises(ValueError, match="prior_strength must be a finite number >= 0"):
        SparseConceptHead(use_prior=True, prior_strength=strength).check_params()
