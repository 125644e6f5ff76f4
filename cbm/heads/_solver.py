"""Torch solver for multinomial logistic regression with an elastic-net penalty, along a path.

The problem at one regularisation strength ``lam`` (``r`` = ``l1_ratio``)::

    minimise over W (K, C), b (K,):
        (1/n) * sum_i s_i * CE(softmax(W x_i + b), y_i)
        + lam * r * ||W||_1 + lam * (1 - r) / 2 * ||W||_F^2
        [ - prior term, see below ]

with sample weights ``s_i`` (class weights; 1 by default) and unpenalised intercepts ``b``. This is
scikit-learn's ``LogisticRegression(l1_ratio=r, solver="saga", C=C)`` objective divided by
``C * n``: scikit-learn minimises ``C * sum_i s_i * loss_i + r * ||W||_1 + (1 - r) / 2 * ||W||^2``,
so ``lam = 1 / (C * n)`` (``n`` the number of samples, not the sum of their weights, as in
scikit-learn's SAG/SAGA code). It is also glm-saga's objective with ``lam`` and ``alpha = r``.

Optional class-concept prior ``P`` (K, C) with entries in [-1, 1] (a multi-hot concept store gives
0/1) and strength ``mu``: the L1 price of a weight that agrees in sign with its prior entry drops
by ``mu * |P|`` per unit, and the price of one that disagrees rises by as much. That is KnoBo's
sign-prior penalty ``||tanh(W) - P||_1`` linearised at ``W = 0`` (its slope there is ``-P``), with
the discounted price floored at zero so the problem stays convex and bounded below::

    penalty(W) = sum_kc  max(lam*r - mu*P_kc, 0) * max(W_kc, 0)
                       + max(lam*r + mu*P_kc, 0) * max(-W_kc, 0)   + lam*(1-r)/2 * ||W||^2

Optional sign constraints (``allowed``, a ``(K, C)`` integer mask): ``+1`` lets a weight be zero or
positive only, ``-1`` zero or negative only, ``0`` forces it to zero, ``2`` leaves it free. A
forbidden sign costs an infinite L1 price, so the proximal step, the optimality check and the
path's largest lambda need no other change: the problem stays convex, and a constrained head is
the same solver on a smaller feasible set (cbm's faithful head lets a concept push only towards
the classes the concept store lists it under).

Optional ordinal form (``row_scale``, a ``(K,)`` vector ``s``, for classes with an order): the
weights are one shared vector ``w`` (C,) and class k's logit is ``s_k * (w . x) + b_k``, so ``W``
is the rank-one ``s w^T``; with ``s_k = k - (K - 1) / 2`` that is the adjacent-category logit
model (each class's log-odds against the class below it is ``w . x`` plus a constant). The penalty,
the prior and ``allowed`` then apply to ``w`` (shape ``(1, C)``); the loss gradient with respect
to ``w`` is ``s^T (RT @ X)``, and everything else is the same problem.

Algorithm: full-batch accelerated proximal gradient (FISTA) with an adaptive step (backtracking
that may also grow the step), gradient-based momentum restart, warm starts along a decreasing
lambda grid, and working sets: at each lambda only the concepts in use plus the worst violators of
the optimality conditions (at most as many again) are optimised; a full-gradient KKT check then
adds violators and the subproblem is re-solved until there are none. Inputs are centred inside
(exact, since intercepts are not penalised). The model is linear, so the logits at the
extrapolated point are a linear combination of stored logits: each iteration costs one product
with the working columns of ``X`` (plus one per backtracking step) and one with their transpose.

Where every weight may take at most one sign (``allowed`` without a ``2``: the faithful head), the
restricted problem is smooth with bounds, and each working set is solved by L-BFGS-B instead
(:mod:`cbm.heads._box`); FISTA finishes any search that stops short of the tolerance. The working
sets, the KKT check and the warm starts are the same.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cbm.heads._box import is_one_sided, solve_one_sided

__all__ = ["PathPoint", "elastic_net_objective", "solve_path"]

log = logging.getLogger(__name__)

# Below this L1 share, lambda_max (defined by the L1 part) is taken at this ratio instead, as
# glmnet and glm-saga do: a pure ridge penalty never zeroes a weight.
_MIN_L1_RATIO_FOR_GRID = 1e-3
# Each iteration first tries a step this much longer than the last accepted one.
_STEP_GROWTH = 1.1


@dataclass
class PathPoint:
    """The solution at one lambda of the path."""

    lam: float  # regularisation strength
    coef: np.ndarray  # (K, C) weights
    intercept: np.ndarray  # (K,) biases (softmax is invariant to a common shift of them)
    loss: float  # weighted mean cross-entropy on the fitting data
    objective: float  # loss + penalty (the minimised quantity)
    n_iter: int  # FISTA iterations plus L-BFGS-B evaluations at this lambda, all working-set rounds
    converged: bool  # the optimality residual fell below the tolerance


class _Problem:
    """Fitting data on one device, laid out class-major, and the penalty's thresholds.

    Logits and residuals are kept as ``(K, n)``: with few classes and many samples, products of
    the form ``(K, a) @ (a, n)`` and reductions over the short class axis are the fast ones.
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        n_classes: int,
        l1_ratio: float,
        sample_weight: torch.Tensor | None,
        prior: torch.Tensor | None,
        prior_strength: float,
        allowed: torch.Tensor | None = None,
        row_scale: torch.Tensor | None = None,
    ) -> None:
        n = X.shape[0]
        self.n = n
        # Centred columns: the intercepts are not penalised, so W x + b = W (x - m) + (b + W m) is an
        # exact change of variables, and it keeps the intercepts from fighting the weights when
        # the scores sit far from zero. (C, n): a concept's scores are one contiguous row.
        self.mean = X.mean(0)
        self.XT = (X - self.mean).t().contiguous()
        self.YT = torch.nn.functional.one_hot(y, n_classes).to(X.dtype).t().contiguous()  # (K, n)
        w = torch.ones(n, dtype=X.dtype, device=X.device) if sample_weight is None else sample_weight
        self.w_over_n = w / n
        self.l1_ratio = l1_ratio
        self.prior_shift = None if prior is None or prior_strength == 0 else prior_strength * prior
        # infinite L1 prices for the forbidden signs (None: every sign allowed)
        self.forbid_pos = None if allowed is None else ~((allowed == 1) | (allowed == 2))
        self.forbid_neg = None if allowed is None else ~((allowed == -1) | (allowed == 2))
        # ordinal form: the weights are one row, class k's logits are s_k times its products
        self.scale = None if row_scale is None else row_scale.to(X.dtype)[:, None]  # (K, 1)
        self.rows = n_classes if row_scale is None else 1

    def logits(self, W: torch.Tensor, b: torch.Tensor, XT: torch.Tensor) -> torch.Tensor:
        """Logits ``(K, n)`` of weights ``W`` (``rows`` x a) on the gathered inputs ``XT`` (a, n)."""
        if self.scale is None:
            return torch.addmm(b[:, None], W, XT)
        return b[:, None] + self.scale * W.matmul(XT)

    def full(self, W: torch.Tensor) -> torch.Tensor:
        """The ``(K, C)`` class weights of the solver's weights (the ordinal form's rank-one ``s w^T``)."""
        return W if self.scale is None else self.scale * W

    def thresholds(self, lam: float) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Per-entry L1 prices of a positive and of a negative weight at ``lam`` (inf: forbidden)."""
        base = lam * self.l1_ratio
        if self.prior_shift is None and self.forbid_pos is None:
            return base, base
        shift = 0.0 if self.prior_shift is None else self.prior_shift
        like = self.forbid_pos if self.prior_shift is None else self.prior_shift
        pos = (base - shift + torch.zeros(like.shape, dtype=self.XT.dtype, device=self.XT.device)).clamp(min=0)
        neg = (base + shift + torch.zeros(like.shape, dtype=self.XT.dtype, device=self.XT.device)).clamp(min=0)
        if self.forbid_pos is not None:
            pos = pos.masked_fill(self.forbid_pos, math.inf)
            neg = neg.masked_fill(self.forbid_neg, math.inf)
        return pos, neg

    def loss(self, ZT: torch.Tensor) -> torch.Tensor:
        """Weighted mean cross-entropy of logits ``ZT`` (K, n)."""
        return (self.w_over_n * (torch.logsumexp(ZT, 0) - (ZT * self.YT).sum(0))).sum()

    def loss_and_residual(self, ZT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and ``RT = dloss/dZT`` (K, n); the weight gradient is ``RT @ X``."""
        lse = torch.logsumexp(ZT, 0, keepdim=True)
        loss = (self.w_over_n * (lse.squeeze(0) - (ZT * self.YT).sum(0))).sum()
        RT = (torch.exp(ZT - lse) - self.YT) * self.w_over_n
        return loss, RT

    def gradient(self, RT: torch.Tensor, XT: torch.Tensor | None = None) -> torch.Tensor:
        """Weight gradient ``RT @ X`` (K, C), or over the rows of a gathered ``XT``; in the ordinal
        form ``s^T RT @ X`` (1, C)."""
        if self.scale is not None:
            RT = (self.scale * RT).sum(0, keepdim=True)
        # (K, n) @ (n, a) into a class-major result: 1.2-1.7x faster than (a, n) @ (n, K) transposed
        # with MKL on one thread (scripts/bench_head.py)
        return RT.matmul((self.XT if XT is None else XT).t())


def _penalty(W: torch.Tensor, pos: torch.Tensor | float, neg: torch.Tensor | float, l2: float) -> torch.Tensor:
    """The penalty's value (asymmetric L1 prices ``pos``/``neg`` plus ridge ``l2``)."""
    up, down = W.clamp(min=0), (-W).clamp(min=0)
    zero = torch.zeros((), dtype=W.dtype, device=W.device)
    # where(...) so that an infinite price times a zero weight costs 0, not nan
    return (torch.where(up > 0, pos * up, zero) + torch.where(down > 0, neg * down, zero)).sum() + 0.5 * l2 * (W * W).sum()


def _prox(V: torch.Tensor, step: float, pos, neg, l2: float) -> torch.Tensor:
    """Proximal map of ``step * penalty``: asymmetric soft-threshold, then ridge shrinkage."""
    out = torch.where(V > step * pos, V - step * pos, torch.where(V < -step * neg, V + step * neg, torch.zeros_like(V)))
    return out / (1.0 + step * l2)


def _kkt_violation(G: torch.Tensor, W: torch.Tensor, pos, neg, l2: float) -> torch.Tensor:
    """Per-entry distance of ``-grad`` from the penalty's subdifferential (0 at the optimum).

    ``G`` is the loss gradient ``RT @ X`` (K, C). For a zero weight the condition is
    ``-neg <= -G <= pos``; for a non-zero weight the gradient must cancel the penalty's slope.
    """
    pos_t = torch.as_tensor(pos, dtype=G.dtype, device=G.device).expand_as(G)
    neg_t = torch.as_tensor(neg, dtype=G.dtype, device=G.device).expand_as(G)
    at_zero = torch.maximum(torch.maximum(-G - pos_t, G - neg_t), torch.zeros_like(G))
    slope = torch.where(W > 0, pos_t, -neg_t) + l2 * W
    return torch.where(W == 0, at_zero, (G + slope).abs())


def _worst_violators(G, W, pos, neg, l2: float, tol_abs: float, exclude: torch.Tensor, budget: int) -> torch.Tensor:
    """Mask of the at most ``max(budget, 10)`` concepts outside ``exclude`` that break optimality most."""
    score = _kkt_violation(G, W, pos, neg, l2).max(0).values
    score = torch.where(exclude, torch.zeros_like(score), score)
    candidates = score > tol_abs
    k = max(budget, 10)
    if int(candidates.sum()) > k:
        candidates = torch.zeros_like(candidates)
        candidates[score.topk(k).indices] = True
    return candidates


def _gradient_at_zero(problem: _Problem, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal intercepts with all weights zero (weighted log class frequencies) and the gradient there."""
    freq = (problem.w_over_n * problem.YT).sum(1)
    b0 = torch.log(freq.clamp(min=torch.finfo(freq.dtype).tiny))
    b0 = b0 - b0.mean()
    _, R0 = problem.loss_and_residual(b0[:, None].expand(n_classes, problem.n).contiguous())
    return b0, problem.gradient(R0)


def _lambda_max(problem: _Problem, n_classes: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The smallest lambda with every weight at zero, the intercepts there and the loss gradient there.

    Zero is optimal for an entry iff ``|G - mu P| <= lam * r`` (with the prior's shift). For
    ``l1_ratio`` below 1e-3 the value for 1e-3 is returned: a ridge penalty never zeroes a weight.
    """
    b0, G0 = _gradient_at_zero(problem, n_classes)
    shifted = G0 if problem.prior_shift is None else G0 - problem.prior_shift
    if problem.forbid_pos is None:
        top = float(shifted.abs().max())
    else:  # only the allowed directions can leave zero: a positive weight where -G > 0, a negative where G > 0
        pull = torch.maximum((-shifted).masked_fill(problem.forbid_pos, 0.0), shifted.masked_fill(problem.forbid_neg, 0.0))
        top = float(pull.clamp(min=0).max())
    lam = top / max(problem.l1_ratio, _MIN_L1_RATIO_FOR_GRID)
    return lam, b0, G0


def elastic_net_objective(
    coef: np.ndarray,
    intercept: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    lam: float,
    l1_ratio: float,
    sample_weight: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    prior_strength: float = 0.0,
    allowed: np.ndarray | None = None,
) -> float:
    """The objective :func:`solve_path` minimises (in its per-class form; the ordinal form's penalty
    is on the shared vector), evaluated in float64 numpy for any weights (``inf`` for weights with a
    sign that ``allowed`` forbids).

    Args:
        coef: ``(K, C)`` weights; intercept: ``(K,)`` biases.
        X: ``(n, C)`` inputs; y: ``(n,)`` class indices in ``0..K-1``.
        lam, l1_ratio: penalty strength and L1 share.
        sample_weight: ``(n,)`` weights of the per-sample losses (the sum is still divided by n).
        prior, prior_strength: optional class-concept prior (see the module docstring).
        allowed: optional ``(K, C)`` sign constraints (see the module docstring).
    """
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(coef, dtype=np.float64)
    Z = X @ W.T + np.asarray(intercept, dtype=np.float64)
    zmax = Z.max(1, keepdims=True)
    lse = np.log(np.exp(Z - zmax).sum(1)) + zmax[:, 0]
    per_sample = lse - Z[np.arange(len(y)), np.asarray(y)]
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    loss = float((w * per_sample).sum() / len(y))
    base = lam * l1_ratio
    shift = 0.0 if prior is None else prior_strength * np.asarray(prior, dtype=np.float64)
    pos, neg = np.maximum(base - shift, 0.0), np.maximum(base + shift, 0.0)
    pen = (pos * np.maximum(W, 0) + neg * np.maximum(-W, 0)).sum() + 0.5 * lam * (1 - l1_ratio) * (W * W).sum()
    if allowed is not None:
        a = np.asarray(allowed)
        if np.any((W > 0) & (a != 1) & (a != 2)) or np.any((W < 0) & (a != -1) & (a != 2)):
            return float("inf")
    return loss + float(pen)


def _fista(
    problem: _Problem,
    cols: torch.Tensor,
    W: torch.Tensor,
    b: torch.Tensor,
    pos,
    neg,
    l2: float,
    L: float,
    tol_abs: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int, bool]:
    """Solve the problem restricted to the concepts ``cols``.

    Returns the restricted weights, the intercepts, the logits ``(K, n)``, the last step
    constant, the iterations spent and whether the residual fell below ``tol_abs``.
    """
    XA_T = problem.XT.index_select(0, cols)  # (a, n)
    if torch.is_tensor(pos):
        pos, neg = pos.index_select(1, cols), neg.index_select(1, cols)
    W_cur, b_cur = W.index_select(1, cols), b.clone()
    Z_cur = problem.logits(W_cur, b_cur, XA_T)
    W_prev, b_prev, Z_prev = W_cur, b_cur, Z_cur
    theta_prev, theta = 1.0, 1.0
    # float32 rounding in the loss must not read as a failed sufficient-decrease test
    slack_rel = 10 * torch.finfo(W.dtype).eps
    for it in range(1, max_iter + 1):
        beta = (theta_prev - 1.0) / theta
        if beta > 0:  # the model is linear: the extrapolated logits need no product with X
            Wy, by = W_cur + beta * (W_cur - W_prev), b_cur + beta * (b_cur - b_prev)
            Zy = Z_cur + beta * (Z_cur - Z_prev)
        else:
            Wy, by, Zy = W_cur, b_cur, Z_cur
        loss_y, RT = problem.loss_and_residual(Zy)
        gW, gb = problem.gradient(RT, XA_T), RT.sum(1)
        loss_y = float(loss_y)
        L_try = L / _STEP_GROWTH
        while True:
            step = 1.0 / L_try
            W_new = _prox(Wy - step * gW, step, pos, neg, l2)
            b_new = by - step * gb
            Z_new = problem.logits(W_new, b_new, XA_T)
            dW, db = W_new - Wy, b_new - by
            sq = float((dW * dW).sum() + (db * db).sum())
            lin = float((gW * dW).sum() + (gb * db).sum())
            loss_new = float(problem.loss(Z_new))
            if sq == 0.0 or loss_new <= loss_y + lin + 0.5 * L_try * sq + slack_rel * abs(loss_y):
                break
            L_try *= 2.0
        L = L_try
        # gradient-mapping residual: zero exactly at a minimiser of the restricted problem
        residual = L * max(float(dW.abs().max()), float(db.abs().max()))
        # restart the momentum when it points uphill (O'Donoghue & Candes' gradient scheme)
        restart = float(((Wy - W_new) * (W_new - W_cur)).sum() + ((by - b_new) * (b_new - b_cur)).sum()) > 0
        W_prev, b_prev, Z_prev = W_cur, b_cur, Z_cur
        W_cur, b_cur, Z_cur = W_new, b_new, Z_new
        if residual <= tol_abs:
            return W_cur, b_cur, Z_cur, L, it, True
        if restart:
            theta_prev, theta = 1.0, 1.0
        else:
            theta_prev, theta = theta, (1.0 + math.sqrt(1.0 + 4.0 * theta * theta)) / 2.0
    return W_cur, b_cur, Z_cur, L, max_iter, False


def _solve_at(problem: _Problem, n_classes: int, W: torch.Tensor, b: torch.Tensor, G: torch.Tensor, pos, neg,
              l2: float, L: float, tol_abs: float, max_iter: int):
    """One lambda: FISTA, or L-BFGS-B where every weight is one-sided, on a working set (the concepts
    in use plus the worst violators of the zero condition, at most doubling it per round,
    Celer/skglm-style), then a full-gradient KKT check
    that adds violators until there are none. Returns ``(W, b, L, loss, G, n_iter, converged)``."""
    one_sided = is_one_sided(pos, neg)
    in_use = (W != 0).any(0)
    active = in_use | _worst_violators(G, W, pos, neg, l2, tol_abs, in_use, int(in_use.sum()))
    n_iter = 0
    while True:
        cols = torch.nonzero(active).flatten()
        if cols.numel() > 0:
            ok = False
            if one_sided:
                W_a, b, Z, it, ok = solve_one_sided(problem, cols, W, b, pos, neg, l2, tol_abs, max(max_iter - n_iter, 1))
                n_iter += it
                W = torch.zeros_like(W).index_copy_(1, cols, W_a)
            if not ok and (not one_sided or n_iter < max_iter):  # FISTA, or FISTA finishes a stalled search
                W_a, b, Z, L, it, ok = _fista(problem, cols, W, b, pos, neg, l2, L, tol_abs, max(max_iter - n_iter, 1))
                n_iter += it
                W = torch.zeros_like(W).index_copy_(1, cols, W_a)
        else:
            # no concept may enter: only the intercepts move, to their closed form
            b = _gradient_at_zero(problem, n_classes)[0]
            Z = b[:, None].expand(n_classes, problem.n).contiguous()
            ok = True
        loss, RT = problem.loss_and_residual(Z)
        G = problem.gradient(RT)
        new = _worst_violators(G, W, pos, neg, l2, tol_abs, active, int(active.sum()))
        if not bool(new.any()) or n_iter >= max_iter:
            return W, b, L, loss, G, n_iter, ok and not bool(new.any())
        active |= new


def _check_shapes(n_classes: int, n_features: int, prior, allowed, row_scale) -> None:
    """``prior`` and ``allowed`` have one row per class, or one row in the ordinal form."""
    rows = n_classes if row_scale is None else 1
    for name, given in (("prior", prior), ("allowed", allowed)):
        if given is not None and tuple(given.shape) != (rows, n_features):
            raise ValueError(f"{name} has shape {tuple(given.shape)}; it must be ({rows}, {n_features})"
                             + (" with row_scale (one row for the shared weight vector)" if row_scale is not None else ""))


def solve_path(
    X: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lambdas: Sequence[float] | None,
    *,
    l1_ratio: float = 0.99,
    n_lambdas: int = 50,
    lambda_min_ratio: float = 1e-3,
    sample_weight: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
    prior_strength: float = 0.0,
    allowed: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    on_point: Callable[[int, PathPoint, torch.Tensor, torch.Tensor], None] | None = None,
) -> Iterator[PathPoint]:
    """Fit the regularisation path, yielding one :class:`PathPoint` per lambda (largest first).

    Args:
        X: ``(n, C)`` float tensor (its dtype and device are the solver's); y: ``(n,)`` class
            indices (long, same device).
        n_classes: K; every class should occur in ``y``.
        lambdas: decreasing grid; ``None`` builds ``n_lambdas`` log-spaced values from
            the smallest lambda that zeroes every weight down to ``lambda_min_ratio`` times it.
        l1_ratio: L1 share of the penalty, in [0, 1].
        sample_weight: ``(n,)`` per-sample loss weights (class weights), or ``None``.
        prior: ``(K, C)`` class-concept prior with entries in [-1, 1]; prior_strength: its ``mu``.
        allowed: ``(K, C)`` sign constraints (``+1`` non-negative, ``-1`` non-positive, ``0`` zero,
            ``2`` free), or ``None`` for none; ``(1, C)`` with ``row_scale``, as ``prior`` is.
        row_scale: ``(K,)`` class positions ``s`` of the ordinal form (one weight vector ``w``,
            class k's weights ``s_k w``; see the module docstring), or ``None``. The points'
            ``coef`` is still the ``(K, C)`` matrix ``s w^T``.
        tol: stop a lambda when the largest optimality residual (gradient-mapping and KKT
            violations) is below ``tol`` times the largest loss gradient at ``W = 0``.
        max_iter: cap per lambda on FISTA iterations and L-BFGS-B evaluations (over its working-set rounds).
        on_point: called with ``(index, point, W, b)`` (device tensors) before each point is
            yielded, e.g. to score a validation split without a copy to the host.
    """
    n, n_features = X.shape
    _check_shapes(n_classes, n_features, prior, allowed, row_scale)
    problem = _Problem(X, y, n_classes, l1_ratio, sample_weight, prior, prior_strength, allowed, row_scale)
    lam_top, b, G = _lambda_max(problem, n_classes)
    if lambdas is None:
        lambdas = np.geomspace(lam_top, lam_top * lambda_min_ratio, n_lambdas) if lam_top > 0 else np.zeros(1)
    lambdas = [float(v) for v in lambdas]
    if any(a < c for a, c in zip(lambdas, lambdas[1:])):
        raise ValueError(f"the lambda grid must be decreasing (largest first) for warm starts; got {lambdas[:5]}...")
    W = torch.zeros(problem.rows, n_features, dtype=X.dtype, device=X.device)
    scale = float(G.abs().max())
    tol_abs = tol * (scale if scale > 0 else 1.0)
    # Boehning's bound on the loss Hessian, 1/2 * max(s) * ||[X 1]||_2^2 / n, with the trace for the
    # spectral norm, bounds the step constant from above; the adaptive step starts at a tenth of
    # it and finds the local curvature (far smaller once the model is confident) by itself.
    L = 0.05 * float(problem.w_over_n.max()) * n * (float((problem.XT * problem.XT).sum(0).mean()) + 1.0)
    if problem.scale is not None:  # the ordinal form's logits move by s_k per unit of w
        L *= max(1.0, float((problem.scale * problem.scale).sum()))
    for index, lam in enumerate(lambdas):
        pos, neg = problem.thresholds(lam)
        l2 = lam * (1.0 - l1_ratio)
        W, b, L, loss, G, n_iter, converged = _solve_at(problem, n_classes, W, b, G, pos, neg, l2, L, tol_abs, max_iter)
        b = b - b.mean()
        W_full = problem.full(W)
        b_raw = b - W_full @ problem.mean  # intercepts for the uncentred inputs
        objective = float(loss) + float(_penalty(W, pos, neg, l2))
        point = PathPoint(
            lam=lam,
            coef=W_full.detach().cpu().double().numpy(),
            intercept=b_raw.detach().cpu().double().numpy(),
            loss=float(loss),
            objective=objective,
            n_iter=n_iter,
            converged=converged,
        )
        if not converged:
            log.debug("lambda %.3g: stopped after %d iterations without reaching tol=%g", lam, n_iter, tol)
        if on_point is not None:
            on_point(index, point, W_full, b_raw)
        yield point
