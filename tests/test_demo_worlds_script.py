"""scripts/demo_worlds.py end to end on small worlds: the targets per world and the cue-free reference."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from script_support import load_script

import cbm


def _script():
    return load_script("demo_worlds")


@pytest.mark.slow
def test_demo_worlds_reports_each_world_beside_its_cue_free_twin(tmp_path, capsys):
    out = tmp_path / "worlds.json"
    assert _script().main(["--n", "300", "--seeds", "1", "--confounding", "0.95", "--classes", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == json.loads(capsys.readouterr().out)
    (world,), (twin,) = result["worlds"], result["cue_free"]
    assert (world["classes"], world["seed"], world["confounding"]) == (2, 1, 0.95)
    assert (twin["classes"], twin["seed"], twin["confounding"]) == (2, 1, 0.5)
    figures = world["figures"]
    assert figures["cue_free_probe_id"] == twin["linear_probe_id"]
    assert figures["id_vs_cue_free_probe"] == round(100 * (figures["cbm_id"] - twin["linear_probe_id"]), 1)
    assert set(world["targets"]) == {
        "gap", "ood_vs_zero_shot", "ood_vs_dense", "id_vs_probe", "concepts_per_class", "cue_logit_auroc",
        "sign_agreement", "intervention_never_falls", "intervention_end", "no_weight_on_large_diameter"}
    assert result["targets_met"]["gap"] == f"{int(world['targets']['gap'])}/1"
    # the code that measured them, so a table can name its commit
    head = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    assert result["code"]["cbm"] == cbm.__version__
    assert result["code"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    curve = figures["intervention"]
    assert curve[0]["k"] == 0 and all("ood_changed" in p for p in curve[1:])
    # the figures the targets read are the ones reported
    assert world["targets"]["gap"] == (figures["gap"] <= 0.02 + 1e-9)
    assert world["targets"]["id_vs_probe"] == (figures["cbm_id"] >= figures["probe_id"] - 0.04 - 1e-9)


def test_a_figure_exactly_on_a_targets_bound_meets_it_and_no_curve_meets_none():
    """Accuracies are counts over n: a gap of exactly 24 of 1,200 images computes as 0.020000000000000018."""
    from types import SimpleNamespace

    import numpy as np

    def metrics(id_acc, ood_acc, curve):
        acc = {"id_accuracy": id_acc, "ood_accuracy": ood_acc}
        return {"cbm": {**acc, "gap": id_acc - ood_acc, "concepts_per_class": 8.0,
                        "faithfulness": {"intervention": curve, "oracle": {"id_accuracy": 0.72, "ood_accuracy": 0.72},
                                         "sign_agreement": 0.98, "cue_leakage": {"logit_auroc": 0.6}}},
                "linear_probe": {"id_accuracy": id_acc + 0.04, "ood_accuracy": 0.5},
                "zero_shot": {"ood_accuracy": ood_acc}, "dense_concepts": {"ood_accuracy": ood_acc}}

    model = SimpleNamespace(bottleneck=SimpleNamespace(concept_names=["a"]), coef=np.zeros((2, 1)), info={})
    id_acc, ood_acc = 824 / 1200, 800 / 1200
    assert id_acc - ood_acc > 0.02
    curve = [{"k": 0, "id_accuracy": id_acc, "ood_accuracy": ood_acc},
             {"k": 1, "id_accuracy": id_acc - 0.005, "ood_accuracy": ood_acc - 0.005},
             {"k": 2, "id_accuracy": 0.70, "ood_accuracy": 0.70}]  # falls by exactly 0.5, ends at oracle - 2
    targets = _script().check_world(metrics(id_acc, ood_acc, curve), model, 2)["targets"]
    assert all(targets.values()), targets
    targets = _script().check_world(metrics(id_acc, ood_acc, []), model, 2)["targets"]
    assert not targets["intervention_never_falls"] and not targets["intervention_end"]


def test_set_refuses_what_the_script_sets_itself(capsys):
    for override in ("seed=3", "dataset.demo.n=100", "evaluation.n_bootstrap=5", "save_model=false"):
        with pytest.raises(SystemExit):
            _script().main(["--seeds", "1", "--set", override])
        assert "this script sets dataset, seed, evaluation, save_model itself" in capsys.readouterr().err
