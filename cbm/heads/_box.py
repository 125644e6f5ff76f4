"""L-BFGS-B for the path's one-sided subproblems (the faithful head's).

Where every weight may take at most one sign (cbm's faithful head: a concept may push only towards
the classes the concept store lists it under, and is zero elsewhere), the L1 price of a weight of
sign ``s`` is ``price * s * w`` on the feasible set, a linear function. The problem restricted to a
working set is then smooth with bounds (``[0, inf)``, ``(-inf, 0]`` or ``[0, 0]`` per weight,
intercepts free), and a bound-constrained quasi-Newton method (L-BFGS-B: Byrd, Lu, Nocedal and Zhu
1995, as scipy ships it) reached the tolerance in fewer products with ``X`` than the proximal
gradient on the benchmark's large paths, where the constraints slow FISTA's linear rate
(``scripts/bench_head.py --solvers ours,ours_signs``; docs/benchmarks.md). On small problems in
float32 it can take more, where its line search stalls in rounding and FISTA finishes.

Each evaluation costs one product with the working columns and one with their transpose, as a FISTA
iteration without backtracking does. The logits are computed in the data's dtype (float32 by
default); the loss and its residual in float64, so that the line search's sufficient-decrease test
is not lost in float32 rounding near the optimum. Where the search stalls short of the tolerance
anyway, :func:`solve_one_sided` says so, and the caller finishes with FISTA from its point. Not on
Apple's ``mps`` device, which has no float64: FISTA solves the faithful path there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from threadpoolctl import ThreadpoolController

__all__ = ["is_one_sided", "solve_one_sided"]

# Correction pairs L-BFGS-B keeps (scipy's default is 10): on the signs-only path of 50,000 x 512 x 10
# (scripts/bench_head.py) 30 took 10 % fewer evaluations than 10, and 50 no fewer than 30.
_MEMORY = 30


def is_one_sided(pos, neg) -> bool:
    """Whether every weight has at most one allowed sign (an infinite price on the other side), on a
    device with float64 (not ``mps``)."""
    if not torch.is_tensor(pos) or pos.device.type == "mps":
        return False
    return bool((torch.isinf(pos) | torch.isinf(neg)).all())


@functools.cache
def _numpy_scipy_blas() -> ThreadpoolController:
    """The BLAS libraries numpy and scipy bring with them (not torch's, whose products run inside
    the evaluations): L-BFGS-B's own work, on vectors of a few thousand entries, runs there, and
    more than one thread there only spins (twice the CPU time for the same wall time here)."""
    controller = ThreadpoolController()
    own = [lib.filepath for lib in controller.lib_controllers if lib.user_api == "blas"
           and any(part.split(".")[0] in ("numpy", "scipy") for part in Path(lib.filepath).parts)]
    return controller.select(filepath=own)


class _BudgetSpent(Exception):
    """The evaluations allowed are spent (scipy checks ``maxfun`` only between iterations)."""


def solve_one_sided(problem, cols: torch.Tensor, W: torch.Tensor, b: torch.Tensor, pos, neg, l2: float,
                    tol_abs: float, max_evals: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, bool]:
    """Solve the one-sided problem restricted to the concepts ``cols`` from ``(W, b)``.

    Returns the restricted weights ``(rows, a)``, the intercepts, the logits ``(K, n)``, the
    evaluations spent and whether the largest projected-gradient entry fell to ``tol_abs``.
    """
    XA_T = problem.XT.index_select(0, cols)
    dtype, device = XA_T.dtype, XA_T.device
    p_a, n_a = pos.index_select(1, cols), neg.index_select(1, cols)
    up_ok, down_ok = ~torch.isinf(p_a), ~torch.isinf(n_a)
    # the penalty's slope on the feasible set: +pos for a non-negative weight, -neg for a non-positive
    price = torch.where(up_ok, p_a, torch.where(down_ok, -n_a, torch.zeros_like(p_a))).double().cpu().numpy().ravel()
    lo = np.where(down_ok.cpu().numpy().ravel(), -np.inf, 0.0)
    hi = np.where(up_ok.cpu().numpy().ravel(), np.inf, 0.0)
    rows, a = W.shape[0], cols.numel()
    m, K = rows * a, b.numel()
    seen = {"evaluations": 0, "value": np.inf, "x": None, "grad": None}

    def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        if seen["evaluations"] >= max_evals:
            raise _BudgetSpent
        seen["evaluations"] += 1
        Wt = torch.from_numpy(x[:m]).to(device=device, dtype=dtype).view(rows, a)
        bt = torch.from_numpy(x[m:]).to(device=device, dtype=dtype)
        # float64 logits promote the loss and its residual to float64 (targets and weights are exact in it)
        loss, RT = problem.loss_and_residual(problem.logits(Wt, bt, XA_T).double())
        loss = float(loss)
        gW = problem.gradient(RT.to(dtype), XA_T).double().cpu().numpy().ravel()
        w = x[:m]
        grad = np.concatenate([gW + price + l2 * w, RT.sum(1).cpu().numpy()])
        value = loss + float(price @ w) + 0.5 * l2 * float(w @ w)
        if value <= seen["value"]:  # every point L-BFGS-B evaluates is feasible
            seen.update(value=value, x=x.copy(), grad=grad)
        return value, grad

    lower, upper = np.concatenate([lo, np.full(K, -np.inf)]), np.concatenate([hi, np.full(K, np.inf)])  # b is free
    x0 = np.clip(np.concatenate([W.index_select(1, cols).double().cpu().numpy().ravel(), b.double().cpu().numpy()]),
                 lower, upper)
    try:
        with _numpy_scipy_blas().limit(limits=1):
            res = minimize(value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=Bounds(lower, upper),
                           options={"maxiter": max_evals, "maxfun": max_evals, "gtol": tol_abs, "ftol": 1e-13,
                                    "maxcor": _MEMORY})
        x, g = res.x, res.jac
    except _BudgetSpent:  # the best point evaluated
        x, g = seen["x"], seen["grad"]
    # the projected gradient: at a bound only the part pointing out of the feasible set counts
    pg = np.where(x <= lower, np.minimum(g, 0.0), g)
    pg = np.where(x >= upper, np.maximum(pg, 0.0), pg)
    converged = float(np.abs(pg).max(initial=0.0)) <= tol_abs
    W_a = torch.from_numpy(x[:m]).to(device=device, dtype=dtype).view(rows, a)
    b_new = torch.from_numpy(x[m:]).to(device=device, dtype=dtype)
    return W_a, b_new, problem.logits(W_a, b_new, XA_T), seen["evaluations"], converged
