"""scripts/calibrated_inputs.py: the per-concept calibration, and the script end to end on a small world."""

from __future__ import annotations

import json

import numpy as np
import pytest
from script_support import load_script


def _script():
    return load_script("calibrated_inputs")


def test_each_concept_is_calibrated_on_its_own_score_and_truth():
    rng = np.random.default_rng(0)
    t = (rng.random((400, 3)) < 0.4).astype(float)
    z = t * 2.0 + rng.normal(size=t.shape)
    z[:, 1] = -z[:, 1]  # a score that falls as the concept appears: the map falls too
    t[:, 2] = np.nan  # no annotations: stays at 0.5
    t[:5, 0] = np.nan
    probs = _script().calibrate({"train": z, "test": z[:50]}, {"train": t})
    p = probs["train"]
    assert np.all((p >= 0) & (p <= 1)) and np.all(p[:, 2] == 0.5)
    order = np.argsort(z[:, 0])
    assert np.all(np.diff(p[order, 0]) >= 0)
    order = np.argsort(z[:, 1])
    assert np.all(np.diff(p[order, 1]) <= 0)
    known = ~np.isnan(t[:, 0])
    assert p[known & (t[:, 0] == 1), 0].mean() > 0.7 > 0.3 > p[known & (t[:, 0] == 0), 0].mean()
    np.testing.assert_allclose(probs["test"], p[:50])


@pytest.mark.slow
def test_calibrated_inputs_end_to_end(tmp_path):
    out = tmp_path / "c.json"
    assert _script().main(["--n", "300", "--seed", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["world"] == {"classes": 2, "seed": 1, "confounding": 0.95, "n": 300}
    for method in ("calibrated", "default"):
        points = result[method]["intervention"]
        assert points[0]["k"] == 0 and all(0 <= q["id_accuracy"] <= 1 and 0 <= q["ood_accuracy"] <= 1 for q in points)
        assert result[method]["concepts_per_class"] <= 8
