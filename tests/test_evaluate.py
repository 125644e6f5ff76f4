"""Metrics are held against scikit-learn's; intervals bracket the value; robustness arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cbm.evaluate import classification_metrics, robustness_summary, worst_group_accuracy


def _problem(n: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.3
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_point_values_match_sklearn(k):
    y, p = _problem(400, k, seed=k)
    m = classification_metrics(y, p, n_bootstrap=0)
    pred = p.argmax(1)
    assert m["accuracy"].value == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"].value == pytest.approx(f1_score(y, pred, average="macro", labels=range(k), zero_division=0))
    ref_auc = roc_auc_score(y, p[:, 1]) if k == 2 else roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert m["macro_auroc"].value == pytest.approx(ref_auc)


def test_bootstrap_interval_brackets_value_and_is_reproducible():
    y, p = _problem(300, 3)
    a = classification_metrics(y, p, n_bootstrap=300, seed=1)
    b = classification_metrics(y, p, n_bootstrap=300, seed=1)
    for name, est in a.items():
        assert est.ci_low <= est.value <= est.ci_high, name
        assert est.ci_high - est.ci_low < 0.2, name
        assert est == b[name]


def test_auroc_undefined_with_one_class_present():
    y = np.zeros(20, dtype=int)
    p = np.tile([0.7, 0.3], (20, 1))
    m = classification_metrics(y, p, n_bootstrap=50)
    assert m["accuracy"].value == 1.0
    assert m["macro_auroc"].value is None
    assert m["balanced_accuracy"].value is None


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="proba must be"):
        classification_metrics(np.zeros(3, int), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(np.array([0, 5]), np.full((2, 2), 0.5))


def test_worst_group_and_summary():
    y = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 1, 0, 0, 1])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    acc, cell = worst_group_accuracy(y, pred, groups)
    assert acc == 0.0 and cell in {"class=1,group=b", "class=0,group=b"}
    s = robustness_summary(0.9, 0.6)
    assert s["gap"] == pytest.approx(0.3) and s["average"] == pytest.approx(0.75)
    assert robustness_summary(0.9, None)["gap"] is None
