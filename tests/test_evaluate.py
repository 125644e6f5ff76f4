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
    assert m["macro_f1"].value == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
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
    assert m["balanced_accuracy"].value == 1.0  # the one class's recall, as scikit-learn gives it


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


def test_class_averages_skip_a_class_the_split_lacks_as_scikit_learn_does():
    y = np.array([0, 0, 1, 1, 0, 1])  # three classes, the third absent and never predicted
    p = np.eye(3)[y] * 0.8 + 0.1
    m = classification_metrics(y, p, n_bootstrap=100)
    pred = p.argmax(1)
    assert m["macro_f1"].value == pytest.approx(f1_score(y, pred, average="macro")) == 1.0
    assert m["balanced_accuracy"].value == 1.0 and m["macro_auroc"].value == 1.0
    assert m["macro_f1"].ci_low == 1.0  # every resample holds both classes


def test_the_bootstrap_keeps_every_class_in_every_resample():
    y = np.array([0] * 49 + [1] * 49 + [2] * 2)  # a rare class: a plain bootstrap drops it in 13 % of resamples
    p = np.tile([0.4, 0.3, 0.3], (100, 1))
    p[:49] = [0.6, 0.2, 0.2]  # class 0 always right, classes 1 and 2 always wrong: recalls 1, 0, 0 in any resample
    m = classification_metrics(y, p, n_bootstrap=400, seed=0)
    ba = m["balanced_accuracy"]
    # a resample without class 2 would average two recalls (0.5) and stretch the interval above the value
    assert ba.value == pytest.approx(1 / 3) and ba.ci_low == ba.ci_high == ba.value


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 1], [[np.nan, 0.5], [0.2, 0.8], [0.3, 0.7]], "non-finite values .* in 1 of 3 rows, the first at row 0"),
        ([0, 1, 1], [[0.5, 0.5], [0.2, np.inf], [0.3, 0.7]], "non-finite"),
        ([0, 1.7, 1.2], [[0.5, 0.5], [0.2, 0.8], [0.3, 0.7]], "must hold class indices"),
        (["a", "b", "b"], [[0.5, 0.5], [0.2, 0.8], [0.3, 0.7]], "must hold class indices"),
        ([[0], [1], [1]], [[0.5, 0.5], [0.2, 0.8], [0.3, 0.7]], "1-D array"),
    ],
)
def test_bad_inputs_are_refused(y, p, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(np.array(y), np.array(p), n_bootstrap=0)


def test_worst_group_leaves_out_samples_without_a_group():
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    assert worst_group_accuracy(y, pred, np.array(["a", None, "a", ""], dtype=object)) == (1.0, "class=0,group=a")
    # a run names the class, as metrics.json and results.md show it
    assert worst_group_accuracy(y, pred, np.array(["a", None, "a", ""], dtype=object), ["nevus", "melanoma"]) == (
        1.0, "class=nevus,group=a")


def test_results_table_says_when_a_card_has_no_out_of_domain_split():
    """A card without a confounder has one test split, in-domain: the table's note says so rather than
    naming an OOD split '–'."""
    from cbm.pipeline.outputs import results_table

    row = {"id_accuracy": 0.9, "ood_accuracy": None, "gap": None, "average": 0.9, "macro_f1": 0.88, "macro_auroc": 0.95,
           "val_accuracy": 0.91, "concepts_per_class": 4.0, "accuracy": 0.9,
           "test": {"accuracy_ci": [0.85, 0.94], "n": 200}}
    plain = results_table("own", {"cbm": {**row, "id_split": "test", "ood_split": None}})
    assert "ID = `test` split; no out-of-domain split (the card has no confounder)." in plain and "`–`" not in plain
    confounded = results_table("own", {"cbm": {**row, "id_split": "test_id", "ood_split": "test"}})
    assert "ID = `test_id` split, OOD = `test` split; gap = ID − OOD." in confounded


def test_the_operating_point_bootstrap_of_a_large_split_is_drawn_in_chunks():
    import tracemalloc

    from cbm.evaluate import operating_point

    y, p = _problem(40_000, 2)
    tracemalloc.start()
    try:
        out = operating_point(y, p, ["a", "b"], n_bootstrap=200)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100e6  # all 200 resamples' index arrays at once: over 200 MB
    value, low, high = out["sensitivity"]["b"]
    assert low <= value <= high and high - low < 0.03
