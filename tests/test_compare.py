"""Runs side by side (cbm.pipeline.compare): which runs are one sweep's, which are one dataset's, and
what is chosen, on run folders written here by hand (`cbm run`'s own are tested in test_run.py)."""

from __future__ import annotations

import json
import os

import pytest

from cbm.pipeline.compare import compare_runs, comparison_table, run_folders


def _run(folder, val: float, *, seed: int = 0, overrides=("head.l1_ratio=0.9",), ood: float = 0.9) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / ".hydra" / "config.yaml").write_text(f"dataset:\n  name: demo-derm\n  demo:\n    seed: {seed}\n")
    (folder / "results.md").write_text("# Results: demo-derm\n")
    (folder / "metrics.json").write_text(json.dumps({"cbm": {
        "val_accuracy": val, "val_worst_group_accuracy": None, "id_accuracy": 0.8, "ood_accuracy": ood, "gap": -0.1,
        "concepts_per_class": 8.0, "faithfulness": {"intervention": {"measured": False, "reason": "no truth"}}}}))


def test_one_run_per_dataset_is_chosen_by_its_validation_figure(tmp_path):
    _run(tmp_path / "0", 0.90, seed=1)
    _run(tmp_path / "1", 0.95, seed=1, ood=0.5)
    _run(tmp_path / "2", 0.80, seed=2, ood=0.99)  # another demo world of the same card name
    rows = compare_runs([tmp_path])
    assert [r["chosen"] for r in rows] == [False, True, True]  # the test column (ood) chooses nothing
    assert all(r["selection"]["figure"] == "cbm.val_accuracy" for r in rows)  # auto, without groups
    assert rows[0]["cbm"]["intervention_end"] is None  # a curve not measured is no end
    with pytest.raises(ValueError, match="never a test figure"):
        compare_runs([tmp_path], "cbm.ood_accuracy")


def test_a_sweep_folder_used_again_lists_only_its_last_sweeps_jobs(tmp_path):
    for n in range(3):
        _run(tmp_path / str(n), 0.9)
    (tmp_path / "multirun.yaml").write_text("the second sweep\n")
    start = (tmp_path / "multirun.yaml").stat().st_mtime
    for n in range(3):  # the first sweep's jobs, older than the second sweep's start
        for f in (tmp_path / str(n) / ".hydra").glob("*.yaml"):
            os.utime(f, (start - 60, start - 60))
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- head.l1_ratio=0.5\n")  # job 0 ran again
    assert run_folders([tmp_path]) == [tmp_path / "0"]
    assert run_folders([tmp_path, tmp_path / "0", tmp_path / "2"]) == [tmp_path / "0", tmp_path / "2"]  # each once


def test_unreadable_figures_and_odd_overrides_make_rows_not_errors(tmp_path):
    _run(tmp_path / "0", 0.9, overrides=("concepts.templates=[a|b {}]",))
    _run(tmp_path / "1", 0.9)
    (tmp_path / "1" / "metrics.json").write_text("[1, 2]")
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a job that failed before writing results
    rows = compare_runs([tmp_path])
    assert rows[1]["status"].startswith("metrics.json unreadable") and rows[2]["status"].startswith("no results")
    table = comparison_table(rows, root=tmp_path)
    body = [line for line in table.splitlines() if line.startswith("| 0")]
    assert "a\\|b" in body[0] and len(body[0].replace("\\|", "").split("|")) == len(table.splitlines()[0].split("|"))
