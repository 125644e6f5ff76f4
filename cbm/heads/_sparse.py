"""``SparseConceptHead``: the concept bottleneck's sparse linear head, as a scikit-learn estimator."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from cbm.heads._checks import DTYPES, check_head_params, check_prior, check_truth
from cbm.heads._common import (
    LinearHeadMixin,
    check_train_data,
    forget_fit,
    ordinal_directions,
    ordinal_positions,
    sample_weights,
    validation_data,
)
from cbm.heads._interventions import intervened_copies, intervention_accuracies, intervention_order
from cbm.heads._selection import select_path_point
from cbm.heads._solver import PathPoint, solve_path
from cbm.utils import torch_threads

__all__ = ["SparseConceptHead", "ordinal_directions", "ordinal_positions"]

log = logging.getLogger(__name__)

# multiply-adds per pass over the data below which the solver runs on one CPU thread
_SMALL_PROBLEM = 10_000_000
# intervention-aware fitting: a path on the all-truth copy, then one on copies intervened in the
# order of the first path's selected head (more paths, each in its predecessor's order, did not
# settle the order on the default world in 4, and its validation curves were as good after 2)
_INTERVENTION_ROUNDS = 2


def _collect_path(points, n_points: int, n_classes: int, val_acc: list[float]) -> tuple[list[dict], list, list]:
    """Run the path solver to its end with a progress bar; one record per point, with its weights."""
    path, coefs, intercepts = [], [], []
    bar = tqdm(points, total=n_points, desc="sparse head path", unit="lambda", disable=None, leave=False)
    t_prev = time.perf_counter()
    for point in bar:
        acc = val_acc[-1]  # appended by the solver's on_point just before the point was yielded
        nnz = int(np.count_nonzero(point.coef))
        now = time.perf_counter()
        path.append({
            "lambda": point.lam, "val_accuracy": acc, "train_loss": point.loss, "objective": point.objective,
            "nnz": nnz, "concepts_per_class": nnz / n_classes, "n_iter": point.n_iter,
            "converged": point.converged, "seconds": now - t_prev,
        })
        t_prev = now
        coefs.append(point.coef)
        intercepts.append(point.intercept)
        bar.set_postfix(nnz=nnz, val_acc=f"{acc:.3f}")
    return path, coefs, intercepts


class SparseConceptHead(LinearHeadMixin, ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with an elastic-net penalty (mostly L1), fitted along a path.

    The head maps concept scores (one column per concept, standardised upstream) to classes.
    ``fit`` solves the penalised problem for a decreasing grid of lambdas, from the smallest
    lambda that zeroes every weight down to ``lambda_min_ratio`` times it, each solution warm
    starting the next, and keeps the point chosen on the validation split (``X_val, y_val``, or
    an internal stratified holdout of the training data; never the test split). At a lambda it
    minimises::

        (1/n) sum_i s_i CE(softmax(W x_i + b), y_i) + lam * (l1_ratio * |W|_1 + (1 - l1_ratio)/2 * |W|^2)

    which is scikit-learn's ``LogisticRegression(l1_ratio=l1_ratio, solver="saga", C=1/(lam*n))``
    objective up to the constant factor ``C * n`` (``s_i`` are class weights; intercepts are not
    penalised). The solver is FISTA in torch on ``device``, or L-BFGS-B on each working set where
    every weight has at most one allowed sign (``constraint="prior"``; see ``cbm.heads._solver``).

    Selection (``selection="accuracy"``, the default): the highest validation accuracy, and among
    points within ``accuracy_tolerance`` of it the sparsest (fewest non-zero weights per class,
    then the higher validation accuracy, then the larger lambda). Give it standardised scores (as
    cbm's bottleneck makes them): ``tol`` is relative to the largest loss gradient at zero, so
    columns of very different scales can stop a point early. ``accuracy_tolerance="se"`` is a
    one-standard-error rule: the tolerance is the binomial standard error ``sqrt(a * (1 - a) /
    n_val)`` of the best accuracy ``a``, so a denser model must beat a sparser one by more than
    noise. With
    ``max_concepts_per_class`` set, only points with at most that many non-zero weights per class
    (on average) compete. ``selection="concepts"`` instead takes the densest point within
    ``max_concepts_per_class`` (the papers' "k concepts per class" setting).

    Binary problems keep the multinomial form: ``coef_`` is ``(2, C)`` and, with any ridge share
    (``l1_ratio < 1``), the rows converge to ``-w/2`` and ``+w/2``; ``decision_function`` returns
    the margin ``(n,)`` of the second class over the first, as scikit-learn does. This equals a
    binomial elastic net on ``w`` with strength ``lam * (1 + l1_ratio) / 2`` and L1 share
    ``2 * l1_ratio / (1 + l1_ratio)``.

    Class-concept prior (``prior``, ``(K, C)`` in [-1, 1], e.g. the concept store's multi-hot
    ``ConceptSet.prior()``): with ``prior_strength`` mu > 0, a weight that agrees in sign with its
    prior entry pays ``mu * |P|`` less L1 per unit and one that disagrees pays as much more: the
    linearisation at zero of KnoBo's ``||tanh(W) - P||_1`` penalty, kept convex. Prior concepts
    so enter the path earlier and with the expected sign. The problem is convex and each point is
    solved to tolerance, so no initialisation could change the solution; the prior acts through
    this penalty only.

    Faithful head (``constraint="prior"``, cbm's default): a weight may only push a concept towards
    the classes the concept store lists it under. With the store's multi-hot ``prior`` P, the weight
    of class k on concept c must be >= 0 where ``P[k, c] > 0`` and is 0 elsewhere, so each class's
    logit is a non-negative sum of its own concepts' scores: a high "asymmetric shape" score can
    only raise melanoma, a high "symmetric shape" score only the nevus, and a concept no class lists
    gets no weight. Opposite phrases of one attribute listed under different classes therefore never
    act as a contrast with one sign. The constraint is a convex feasible set, solved by the same
    path solver (an infinite L1 price on the forbidden signs); ``constraint=None`` is the
    unconstrained head.

    Ordinal form (``ordinal=True``, for classes that are grades of one scale, listed lowest first:
    benign < suspicious < melanoma, a Kellgren-Lawrence or retinopathy grade): one weight vector
    ``w`` shared by all classes, class k's weights ``(k - (K - 1) / 2) * w``, so each class's
    log-odds against the class below it is ``w . x`` plus a constant (the adjacent-category logit
    model). A middle class is then the band between its neighbours on one learnt scale, instead of
    a row of its own that its concepts, associated with both neighbours, hardly inform. Faithful
    (with ``constraint="prior"``), a concept may only move the grade in the direction of the
    classes the store lists it under (``ordinal_directions``): up for melanoma's concepts, down for
    the nevus's, not at all for a concept of the middle class alone. The sparsity budget is the same
    mean number of non-zero weights per class (with three classes, 12 concepts in use make 8 per
    class: the middle class shows none, its neighbours all). ``ordinal="auto"`` lets the
    pipeline decide from the data card (``ordered_classes``, three or more classes); fitted
    directly, "auto" is the per-class head. The grades are in the order of ``classes_`` (the
    sorted labels: give integer grades, or label indices as the pipeline does, not names that
    sort otherwise). With two classes (positions -1/2, +1/2) it is the per-class head under pure L1;
    with a ridge share its ridge, on ``w``, is twice the per-class pair's (on ``-w/2, +w/2``).

    Intervention-aware fitting (``intervention_training=True``, used only when ``fit`` is given
    concept truth): a concept's score carries more than its truth (a "symmetric shape" score also
    grades how asymmetric a lesion is), so a head fitted on scores alone leans on that grading and
    falls when a clinician sets the concept to present or absent. With truth, the path is fitted on
    the training scores plus a copy with every annotated concept set from the truth; the selected
    head's most-weighted concepts give an order, and the path is fitted again on the scores plus
    one copy per step k = 1, 2, 4, ..., all of that order (its k first concepts set from the truth,
    as the faithfulness curve intervenes) and the all-truth copy. In each path, selection keeps,
    among the points within the accuracy tolerance of the best plain validation accuracy, the one
    whose validation intervention curve has the highest mean (then the sparsest): plain accuracy
    first, and among heads as accurate the one that takes help best. Without truth nothing changes.

    Args:
        l1_ratio: L1 share of the penalty (0.99: mostly L1, a little ridge for stability).
        n_lambdas: number of log-spaced lambdas on the path (ignored when ``lambdas`` is given).
        lambda_min_ratio: the smallest lambda as a fraction of the largest.
        lambdas: an explicit grid instead (sorted largest first for warm starts).
        selection: "accuracy" or "concepts" (see above).
        max_concepts_per_class: sparsity budget (mean non-zero weights per class), or None.
        accuracy_tolerance: "se" (one-standard-error rule) or a float (0 = strictly the best).
        class_weight: None, "balanced" (weights inverse to class frequency) or {label: weight}.
        prior: ``(n_classes, n_concepts)`` class-concept prior, rows in ``classes_`` order.
        use_prior: the pipeline should fill ``prior`` from the concept store; fitting with
            ``use_prior=True`` and no ``prior`` is an error.
        constraint: ``"prior"`` (weights only where ``prior > 0``, and non-negative there) or
            ``None`` (unconstrained). ``"prior"`` needs ``prior``; the pipeline fills it.
        ordinal: True (the ordinal form above), False (one weight row per class) or "auto" (the
            pipeline decides from the card; False when fitted directly).
        intervention_training: fit and select for interventions when ``fit`` gets concept truth.
        prior_strength: mu, in the units of the loss gradient (0 disables the prior penalty).
        validation_fraction: holdout share of the training data when no ``X_val`` is given.
        tol: per-lambda stopping tolerance, relative to the largest loss gradient at ``W = 0``.
        max_iter: cap per lambda on FISTA iterations and L-BFGS-B evaluations together.
        device: torch device of the solver ("cpu", "cuda", "cuda:1", ...).
        n_threads: torch CPU threads during ``fit`` (restored afterwards). ``None``: one thread
            for small problems (below ``1e7`` multiply-adds per pass over the data), where
            threading only adds synchronisation (and on a busy machine a lot of it), else torch's
            current setting.
        dtype: solver precision, "float32" or "float64".
        random_state: seed of the internal validation holdout.

    Attributes:
        classes_: class labels, in the order of ``coef_``'s rows.
        coef_: ``(n_classes, n_features)`` weights of the selected point.
        intercept_: ``(n_classes,)`` biases of the selected point.
        lambda_: the selected lambda; selected_index_: its index on the path.
        lambdas_: the grid, largest first.
        path_: one dict per lambda: lambda, val_accuracy, train_loss, objective, nnz,
            concepts_per_class, n_iter, converged, seconds (to fit and score that point); with
            concept truth also val_intervention_accuracy (the mean of its validation intervention curve).
        path_coefs_: ``(n_lambdas, n_classes, n_features)``; path_intercepts_: ``(n_lambdas, n_classes)``.
        validation_: where the selection split came from ("given" or "holdout") and its size.
        n_iter_: FISTA iterations plus L-BFGS-B evaluations over the whole path.
        interventions_: with concept truth, the intervention-aware fit (rounds, whether the order
            repeated, training copies, seconds, the selected head's intervention order as column
            indices); else None.
        n_features_in_: number of concepts seen in fit.
    """

    def __init__(
        self,
        *,
        l1_ratio: float = 0.99,
        n_lambdas: int = 50,
        lambda_min_ratio: float = 1e-3,
        lambdas: Sequence[float] | None = None,
        selection: str = "accuracy",
        max_concepts_per_class: float | None = None,
        accuracy_tolerance: float | str = "se",
        class_weight: dict | str | None = None,
        prior: np.ndarray | None = None,
        use_prior: bool = False,
        prior_strength: float = 0.0,
        constraint: str | None = None,
        ordinal: bool | str = False,
        intervention_training: bool = True,
        validation_fraction: float = 0.2,
        tol: float = 1e-4,
        max_iter: int = 1000,
        device: str = "cpu",
        n_threads: int | None = None,
        dtype: str = "float32",
        random_state: int | None = None,
    ) -> None:
        self.l1_ratio = l1_ratio
        self.n_lambdas = n_lambdas
        self.lambda_min_ratio = lambda_min_ratio
        self.lambdas = lambdas
        self.selection = selection
        self.max_concepts_per_class = max_concepts_per_class
        self.accuracy_tolerance = accuracy_tolerance
        self.class_weight = class_weight
        self.prior = prior
        self.use_prior = use_prior
        self.prior_strength = prior_strength
        self.constraint = constraint
        self.ordinal = ordinal
        self.intervention_training = intervention_training
        self.validation_fraction = validation_fraction
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.n_threads = n_threads
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------------------------- fitting
    def fit(self, X: Any, y: Any, *, X_val: Any = None, y_val: Any = None, truth: Any = None,
            truth_val: Any = None) -> SparseConceptHead:
        """Fit the regularisation path on ``X, y`` and select a point on the validation split.

        Args:
            X: ``(n, n_concepts)`` concept scores; y: ``(n,)`` class labels.
            X_val, y_val: the validation split (never the test split). Without them an
                internal stratified holdout of ``validation_fraction`` of ``X`` is used, and the
                path is fitted on the rest.
            truth, truth_val: concept truth of ``X`` and ``X_val``, same shapes: the score that
                means "present" or "absent" for each annotated case and concept, NaN where not
                annotated (``truth_val`` is needed with ``X_val``). With them and
                ``intervention_training``, the head is fitted to hold under interventions (see
                the class docstring).
        """
        self.check_params()
        forget_fit(self)
        X, y_enc, classes = check_train_data(self, X, y)
        self.classes_ = classes
        n_classes, n_features = len(classes), X.shape[1]
        truth = check_truth(truth, X.shape, "truth") if self.intervention_training else None
        if truth is not None and X_val is not None:
            if truth_val is None:
                raise ValueError("truth was given without truth_val: pass the validation split's concept truth too "
                                 "(NaN where not annotated), or set intervention_training=False")
            truth_val = check_truth(truth_val, np.shape(X_val), "truth_val")
            if truth_val is None:  # nothing annotated on val: no curve to select by
                warnings.warn("truth_val annotates no case: fitting without intervention-aware selection "
                              "(annotate some validation cases to use it)", UserWarning, stacklevel=2)
                truth = None
        stacked = X if truth is None or X_val is not None else np.hstack([X, truth])
        X_fit, y_fit, X_v, y_v, source = validation_data(
            self, stacked, y_enc, classes, X_val, y_val, self.validation_fraction, self.random_state
        )
        if truth is not None and X_val is None:  # the holdout split the truth with the scores
            X_fit, truth_fit = X_fit[:, :n_features], X_fit[:, n_features:]
            X_v, truth_val = X_v[:, :n_features], X_v[:, n_features:]
        else:
            truth_fit = truth
        prior = check_prior(self, n_classes, n_features)
        rounds = 1 if truth_fit is None else _INTERVENTION_ROUNDS
        order = fitted_for = None  # the selected head's intervention order; the one its copies were made in
        t0 = time.perf_counter()
        for _ in range(rounds):
            fitted_for = order
            copies = [] if truth_fit is None else intervened_copies(X_fit, truth_fit, order)
            path, coefs, intercepts = self._fit_path(
                np.concatenate([X_fit, *copies]), np.tile(y_fit, 1 + len(copies)), X_v, y_v, prior, classes)
            if truth_fit is not None:
                for point, W, b in zip(path, coefs, intercepts):
                    point["val_intervention_accuracy"] = float(np.mean(intervention_accuracies(W, b, X_v, y_v, truth_val)))
            index = select_path_point(path, self.selection, self.max_concepts_per_class, self.accuracy_tolerance, len(y_v))
            if truth_fit is not None:
                order = intervention_order(coefs[index], ~np.all(np.isnan(truth_val), axis=0))
        self.path_ = path
        self.path_coefs_ = np.stack(coefs)
        self.path_intercepts_ = np.stack(intercepts)
        self.lambdas_ = np.array([p["lambda"] for p in path])
        self.n_iter_ = int(sum(p["n_iter"] for p in path))
        self.validation_ = {"source": source, "n": int(len(y_v))}
        self.interventions_ = None if truth_fit is None else {
            "rounds": rounds, "order_repeated": order == fitted_for,
            "training_copies": len(copies), "seconds": time.perf_counter() - t0, "order": [int(c) for c in order],
        }
        self.select_point(index)
        if not np.any(self.coef_) and np.any(self.path_coefs_):  # selection took the intercept-only point
            warnings.warn(
                f"the selected path point (#{index}, validation accuracy {path[index]['val_accuracy']:.4f}) uses no "
                "concept: the head answers one class for every case. Validation accuracy chose it (with imbalanced "
                "classes, predicting the majority scores well); look at path_ and pick a point with select_point(i), "
                "or give a validation split where the concepts matter", UserWarning, stacklevel=2)
        log.info(
            "sparse head: %d lambdas, selected #%d (lambda %.3g): val accuracy %.4f, %.1f concepts per class",
            len(path), index, self.lambda_, path[index]["val_accuracy"], path[index]["concepts_per_class"],
        )
        return self

    def _fit_path(self, X_fit: np.ndarray, y_fit: np.ndarray, X_v: np.ndarray, y_v: np.ndarray,
                  prior: np.ndarray | None, classes: np.ndarray) -> tuple[list[dict], list, list]:
        """The whole regularisation path on ``X_fit``, each point scored on the validation split."""
        n_classes, n_features = len(classes), X_fit.shape[1]
        scale = ordinal_positions(n_classes) if self.ordinal is True else None
        if self.constraint is None:
            allowed = None
        elif scale is None:
            allowed = np.where(prior > 0, 1, 0)
        else:  # one sign per concept for the shared weight vector
            allowed = ordinal_directions(prior)[None, :]
        weights = sample_weights(self.class_weight, y_fit, classes)
        device, dtype = self._torch_device(), DTYPES[self.dtype]
        big = float(np.abs(X_fit).max(initial=0.0))
        if big * big * len(X_fit) >= torch.finfo(dtype).max:  # the step 1/L (L ~ n |x|^2) would underflow
            raise ValueError(f"the inputs reach {big:.3g}: at that scale {self.dtype} cannot hold the solver's steps "
                             f"(their squares times the {len(X_fit)} samples overflow it), and the path would stay at "
                             "zero; standardise them (cbm's bottleneck gives standardised scores) or use dtype='float64'")
        # a read-only array (a memmap, a pandas 3 frame) is copied: torch warns on one it cannot write
        as_t = lambda a: torch.as_tensor(np.array(a) if not np.asarray(a).flags.writeable else np.asarray(a),  # noqa: E731
                                         dtype=dtype, device=device)
        Xt, yt = as_t(X_fit), torch.as_tensor(y_fit, dtype=torch.long, device=device)
        Xv, yv = as_t(X_v), torch.as_tensor(y_v, dtype=torch.long, device=device)
        grid = None if self.lambdas is None else sorted((float(v) for v in self.lambdas), reverse=True)

        val_acc: list[float] = []

        def score_val(_: int, point: PathPoint, W: torch.Tensor, b: torch.Tensor) -> None:
            pred = torch.addmm(b, Xv, W.t()).argmax(1)
            val_acc.append(float((pred == yv).to(torch.float64).mean()))

        points = solve_path(
            Xt, yt, n_classes, grid,
            l1_ratio=float(self.l1_ratio), n_lambdas=int(self.n_lambdas),
            lambda_min_ratio=float(self.lambda_min_ratio),
            sample_weight=None if weights is None else as_t(weights),
            # the ordinal form takes the prior as its signs (allowed) only: no prior penalty there
            prior=None if prior is None or scale is not None else as_t(prior), prior_strength=float(self.prior_strength),
            allowed=None if allowed is None else torch.as_tensor(allowed, dtype=torch.int8, device=device),
            row_scale=None if scale is None else as_t(scale),
            tol=float(self.tol), max_iter=int(self.max_iter), on_point=score_val,
        )
        n_points = len(grid) if grid is not None else int(self.n_lambdas)
        threads = self.n_threads
        if threads is None and X_fit.shape[0] * n_features * n_classes < _SMALL_PROBLEM:
            threads = 1
        with torch_threads(threads if device.type == "cpu" else None):
            path, coefs, intercepts = _collect_path(points, n_points, n_classes, val_acc)
        not_converged = sum(not p["converged"] for p in path)
        if not_converged:
            warnings.warn(
                f"{not_converged} of {len(path)} path points stopped at max_iter={self.max_iter} before reaching "
                f"tol={self.tol}; raise max_iter (or tol) for exact solutions",
                ConvergenceWarning,
                stacklevel=3,
            )
        return path, coefs, intercepts

    def select_point(self, index: int) -> SparseConceptHead:
        """Use path point ``index`` (negative counts from the end) as the model; returns self.

        No refitting happens: every point's weights are kept in ``path_coefs_``.
        """
        check_is_fitted(self, "path_")
        n = len(self.path_)
        if not -n <= int(index) < n:
            raise IndexError(f"path point {index} does not exist; the path has {n} points (0..{n - 1})")
        index = int(index) % n
        self.selected_index_ = index
        self.lambda_ = float(self.lambdas_[index])
        self.coef_ = self.path_coefs_[index].copy()
        self.intercept_ = self.path_intercepts_[index].copy()
        return self

    def concepts_per_class(self) -> float:
        """Mean number of non-zero weights per class in the selected model."""
        check_is_fitted(self, "coef_")
        return float(np.count_nonzero(self.coef_, axis=1).mean())

    # ------------------------------------------------------------------------------ checks
    def uses_truth(self) -> bool:
        """Whether ``fit`` takes concept truth (``truth``, ``truth_val``) for intervention-aware fitting."""
        return bool(self.intervention_training)

    def needs_prior(self) -> bool:
        """Whether fitting needs the concept store's class-concept ``prior`` (the pipeline fills it)."""
        return bool(self.use_prior) or self.constraint == "prior"

    def check_params(self) -> None:
        """Raise ``ValueError`` for a bad setting (done by ``fit``; callable before any data exists)."""
        check_head_params(self)

    def _torch_device(self) -> torch.device:
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"device {self.device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:1')") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} was asked for, but torch sees no CUDA device; use device='cpu'")
        return device
