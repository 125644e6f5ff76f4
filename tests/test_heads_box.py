"""The one-sided (faithful) path: L-BFGS-B on each working set, checked against the optimality
conditions computed here in float64, against the FISTA solution of the same problem, and with
FISTA finishing a search that stops short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cbm.heads._solver as solver
from cbm.heads import elastic_net_objective, make_planted_problem
from cbm.heads._box import is_one_sided, solve_one_sided
from cbm.heads._solver import solve_path


@pytest.fixture(scope="module")
def problem():
    p = make_planted_problem(n_train=1500, n_val=10, n_test=10, n_concepts=30, n_classes=3,
                             concepts_per_class=3, n_factors=3, signal=2.0, random_state=5)
    rng = np.random.default_rng(5)
    allowed = rng.choice([1, -1, 0], size=(3, 30), p=[0.5, 0.3, 0.2])  # every weight one-sided
    return p.X_train, p.y_train, allowed


def kkt_violation(W, b, X, y, lam, r, allowed, sample_weight=None, shift=None):
    """Largest breach of the optimality conditions of the one-sided problem, in float64 numpy
    (``shift``: the prior's ``mu * P``, which lowers the L1 price of a positive weight and raises a
    negative one's, floored at zero)."""
    Z = X @ W.T + b
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    s = np.ones(len(y)) if sample_weight is None else sample_weight
    R = (P - np.eye(W.shape[0])[y]) * s[:, None] / len(y)
    G = R.T @ X + lam * (1 - r) * W  # smooth part's gradient
    shift = np.zeros_like(W) if shift is None else shift
    out = np.abs(R.sum(0)).max()  # free intercepts
    for (k, c), a in np.ndenumerate(allowed):
        if a == 0:
            continue
        price = max(lam * r - shift[k, c], 0.0) if a == 1 else max(lam * r + shift[k, c], 0.0)
        sign = float(a)
        if W[k, c] != 0:
            out = max(out, abs(G[k, c] + sign * price))
        else:  # moving in the allowed direction must not lower the objective
            out = max(out, max(-(sign * G[k, c] + price), 0.0))
    return out


def test_one_sided_is_told_from_free_signs():
    inf = float("inf")
    assert is_one_sided(torch.tensor([[1.0, inf, inf]]), torch.tensor([[inf, 2.0, inf]]))
    assert not is_one_sided(torch.tensor([[1.0, inf]]), torch.tensor([[1.0, inf]]))  # the first is free
    assert not is_one_sided(1.0, 1.0)  # no constraints at all


def test_one_sided_path_is_optimal_and_respects_the_signs(problem, monkeypatch):
    X, y, allowed = problem

    finished = []
    fista = solver._fista

    def counted_fista(*a, **k):
        finished.append(1)
        return fista(*a, **k)

    monkeypatch.setattr(solver, "_fista", counted_fista)
    points = list(solve_path(torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y), 3, None, l1_ratio=0.9,
                             n_lambdas=12, allowed=torch.as_tensor(allowed, dtype=torch.int8), tol=1e-6,
                             max_iter=100_000))
    assert sum(int((pt.coef != 0).sum()) for pt in points) > 0
    for pt in points:
        assert pt.converged
        assert np.all(pt.coef[allowed == 0] == 0)
        assert np.all(pt.coef[allowed == 1] >= 0) and np.all(pt.coef[allowed == -1] <= 0)
        # tol is relative to the largest gradient at zero, 0.23 here
        assert kkt_violation(pt.coef, pt.intercept, X, y, pt.lam, 0.9, allowed) < 1e-6
    assert len(finished) <= 2  # L-BFGS-B reaches the tolerance by itself (a wrong gradient: every time not)


def test_one_sided_path_matches_fista_on_the_same_problem(problem, monkeypatch):
    X, y, allowed = problem
    args = (torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y), 3, None)
    kw = {"l1_ratio": 0.99, "n_lambdas": 15, "allowed": torch.as_tensor(allowed, dtype=torch.int8), "tol": 1e-5,
          "max_iter": 20_000}
    ours = list(solve_path(*args, **kw))
    monkeypatch.setattr(solver, "is_one_sided", lambda pos, neg: False)  # FISTA alone
    fista = list(solve_path(*args, **kw))
    for a, f in zip(ours, fista):
        obj_a = elastic_net_objective(a.coef, a.intercept, X, y, a.lam, 0.99, allowed=allowed)
        obj_f = elastic_net_objective(f.coef, f.intercept, X, y, f.lam, 0.99, allowed=allowed)
        assert np.isfinite(obj_a) and obj_a <= obj_f + 1e-5 * abs(obj_f)


def test_a_search_cut_short_is_finished_by_fista(problem, monkeypatch):
    X, y, allowed = problem
    calls = []

    def one_evaluation(*a, **k):  # L-BFGS-B allowed a single evaluation: it cannot converge
        out = solve_one_sided(*a[:-1], max_evals=1)
        calls.append(out[-1])
        return out

    monkeypatch.setattr(solver, "solve_one_sided", one_evaluation)
    points = list(solve_path(torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y), 3, None, l1_ratio=0.9,
                             n_lambdas=6, allowed=torch.as_tensor(allowed, dtype=torch.int8), tol=1e-8,
                             max_iter=100_000))
    assert calls and not any(calls)
    for pt in points:
        assert pt.converged
        assert kkt_violation(pt.coef, pt.intercept, X, y, pt.lam, 0.9, allowed) < 1e-6


def test_one_sided_path_with_sample_weights_and_a_prior_is_optimal(problem):
    X, y, allowed = problem
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.2, 3.0, len(y))
    prior = np.where(allowed == 1, 1.0, np.where(allowed == -1, -1.0, 0.0)) * rng.uniform(0.3, 1.0, allowed.shape)
    mu = 0.02
    points = list(solve_path(torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y), 3, None, l1_ratio=0.9,
                             n_lambdas=8, sample_weight=torch.as_tensor(weights), prior=torch.as_tensor(prior),
                             prior_strength=mu, allowed=torch.as_tensor(allowed, dtype=torch.int8), tol=1e-6,
                             max_iter=100_000))
    assert sum(int((pt.coef != 0).sum()) for pt in points) > 0
    for pt in points:
        assert pt.converged
        assert kkt_violation(pt.coef, pt.intercept, X, y, pt.lam, 0.9, allowed, weights, mu * prior) < 2e-6


def test_the_evaluation_budget_is_kept(problem):
    X, y, allowed = problem
    for cap in (1, 3, 7, 25):
        points = list(solve_path(torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y), 3, None,
                                 l1_ratio=0.9, n_lambdas=6, allowed=torch.as_tensor(allowed, dtype=torch.int8),
                                 tol=1e-9, max_iter=cap))
        assert all(pt.n_iter <= cap for pt in points), (cap, [pt.n_iter for pt in points])
