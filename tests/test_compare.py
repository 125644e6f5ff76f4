"""Runs side by side (cbm.pipeline.compare): which runs are one sweep's, which are one dataset's, and
what is chosen, on run folders written here by hand (`cbm run`'s own are tested in test_run.py)."""

from __future__ import annotations

import json
import os

import pytest

from cbm.pipeline.compare import (
    compare_runs,
    comparison_table,
    run_folders,
    sweep_notes,
)
from cbm.pipeline.sweep_record import end_sweep, stop_sweep


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



def test_a_nan_validation_figure_is_not_measured_not_a_crash(tmp_path):
    from cbm.run import sweep_value

    _run(tmp_path / "0", float("nan"))  # json writes NaN, and reads it back
    _run(tmp_path / "1", 0.9)
    rows = compare_runs([tmp_path])
    assert rows[0]["selection"]["value"] is None and [r["chosen"] for r in rows] == [False, True]
    with pytest.raises(ValueError, match="was not measured"):
        sweep_value({"cbm": {"val_accuracy": float("nan")}}, "cbm.val_accuracy")


def test_a_run_made_to_be_chosen_by_a_test_figure_is_not_chosen_by_it(tmp_path):
    for n, val in ((0, 0.95), (1, 0.90)):  # a run configured so before cbm refused it; ood is the test figure
        _run(tmp_path / str(n), val, ood=0.5 + n * 0.4)
        config = tmp_path / str(n) / ".hydra" / "config.yaml"
        config.write_text(config.read_text() + "optimized_metric: cbm.ood_accuracy\n")
    rows = compare_runs([tmp_path])
    assert not any(r["chosen"] for r in rows) and all(r["selection"]["value"] is None for r in rows)
    table = comparison_table(rows)
    assert "never a test figure" in table and "selection: cbm.ood_accuracy" not in table
    assert [r["chosen"] for r in compare_runs([tmp_path], "cbm.val_accuracy")] == [True, False]

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
    _run(tmp_path / "3", 0.9)
    metrics = json.loads((tmp_path / "3" / "metrics.json").read_text())
    metrics["cbm"]["val_accuracy"] = "x"  # hand-edited: compare stopped with "could not convert string to float"
    (tmp_path / "3" / "metrics.json").write_text(json.dumps(metrics))
    rows = compare_runs([tmp_path], "cbm.val_accuracy")
    assert rows[1]["status"].startswith("metrics.json unreadable") and rows[2]["status"].startswith("no results")
    assert rows[3]["status"] == ("metrics.json unreadable (its cbm.val_accuracy is not a number: could not convert "
                                 "string to float: 'x')")
    table = comparison_table(rows, root=tmp_path)
    body = [line for line in table.splitlines() if line.startswith("| 0")]
    assert "a\\|b" in body[0] and len(body[0].replace("\\|", "").split("|")) == len(table.splitlines()[0].split("|"))


def test_a_run_folder_with_a_pipe_in_its_name_keeps_the_rows_columns(tmp_path):
    _run(tmp_path / "try|2", 0.9)
    table = comparison_table(compare_runs([tmp_path / "try|2"]), root=tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| try"))
    assert row.startswith("| try\\|2") and len(row.replace("\\|", "").split("|")) == len(table.splitlines()[0].split("|"))


def test_a_concept_with_a_pipe_in_a_not_measured_reason_keeps_results_mds_faithfulness_row():
    from cbm.pipeline.experiment import _faithfulness_table

    reason = "card 'x' maps concepts to truth columns (pigment | network), but none annotates training cases"
    table = _faithfulness_table({"cbm": {"faithfulness": {"measured": False, "reason": reason}}}).splitlines()
    header, row = table[2], table[4]
    assert "pigment \\| network" in row and len(row.replace("\\|", "").split("|")) == len(header.split("|"))


def _records(sweep, jobs: dict[str, str], *, finished: bool, planned=None) -> None:
    """The records of sweep "s2" in ``sweep``: its own, and each job's of ``jobs`` (folder -> status)."""
    (sweep / "cbm_sweep.json").write_text(json.dumps({"sweep_id": "s2", "planned_jobs": planned, "finished": finished}))
    for job, status in jobs.items():
        (sweep / job / "cbm_job.json").write_text(json.dumps({"sweep_id": "s2", "status": status,
                                                              **({"error": "head.l1_ratio=2 is not in [0, 1]"}
                                                                 if status == "failed" else {})}))


def test_sweep_records_tell_this_sweeps_jobs_and_what_became_of_them(tmp_path):
    _run(tmp_path / "0", 0.9)
    for job in ("1", "2", "3"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
    _run(tmp_path / "4", 0.95)  # an earlier sweep's job: another id, whatever its file times
    _records(tmp_path, {"0": "done", "1": "failed", "2": "running", "3": "running"}, finished=False, planned=6)
    (tmp_path / "4" / "cbm_job.json").write_text(json.dumps({"sweep_id": "s1", "status": "done"}))
    rows = compare_runs([tmp_path])
    assert [r["run"][-1] for r in rows] == ["0", "1", "2", "3"] and rows[0]["chosen"]
    assert rows[1]["status"] == "failed: head.l1_ratio=2 is not in [0, 1]"
    assert rows[2]["status"].startswith("no results yet: still running, or stopped")
    notes = sweep_notes([tmp_path])
    assert notes == ["Sweep " + tmp_path.name + ": **not finished** (still running, or stopped): 4 of 6 job(s) have "
                     "started; 1 job folder(s) of an earlier sweep in this folder are left out."]
    assert comparison_table(rows, root=tmp_path, notes=notes).startswith(notes[0] + "\n\n| run |")
    _records(tmp_path, {}, finished=True)  # the sweep ended: a job still 'running' was interrupted
    assert compare_runs([tmp_path])[2]["status"] == "no results: interrupted (see its run.log)"
    assert sweep_notes([tmp_path])[0].startswith(f"Sweep {tmp_path.name}: finished; 4 job(s); 1 job folder")
    # a sweep that ended early (its sweeper raised, or an interrupt): said so, and its running job was interrupted
    _records(tmp_path, {}, finished=False)
    stop_sweep(tmp_path, "interrupted")
    assert compare_runs([tmp_path])[2]["status"] == "no results: interrupted (see its run.log)"
    assert sweep_notes([tmp_path])[0].startswith(f"Sweep {tmp_path.name}: **stopped** (interrupted): 4 job(s) have started")
    end_sweep(tmp_path)
    stop_sweep(tmp_path, "too late")  # a finished sweep stays finished
    assert sweep_notes([tmp_path])[0].startswith(f"Sweep {tmp_path.name}: finished; 4 job(s)")


def test_each_run_is_chosen_by_its_own_figure_ties_are_named_and_id_on_val_is_marked(tmp_path):
    for n, val in enumerate((0.9, 0.9, 0.8)):
        _run(tmp_path / str(n), val)
    rows = compare_runs([tmp_path])
    assert [r["chosen"] for r in rows] == [True, False, False] and rows[0]["tied_with"] == [str(tmp_path / "1")]
    assert "| 0 **(chosen; tied with 1 other)** |" in comparison_table(rows, root=tmp_path)
    # a run made to be chosen by another figure than its dataset's other runs: none is chosen, and the table says so
    with open(tmp_path / "2" / ".hydra" / "config.yaml", "a") as f:
        f.write("optimized_metric: linear_probe.val_accuracy\n")
    rows = compare_runs([tmp_path])
    assert not any(r["chosen"] for r in rows) and "give --metric to choose among them" in comparison_table(rows)
    assert sum(r["chosen"] for r in compare_runs([tmp_path], "cbm.val_accuracy")) == 1
    with pytest.raises(ValueError, match="no run measured it; they measured cbm.val_accuracy"):
        compare_runs([tmp_path], "cbm_unconstrianed.val_accuracy")  # a misspelt method chooses nothing silently no more
    metrics = json.loads((tmp_path / "0" / "metrics.json").read_text())
    metrics["cbm"]["id_split"] = "val"
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(metrics))
    table = comparison_table(compare_runs([tmp_path], "cbm.val_accuracy"))
    assert "| 80.0 (val) |" in table and "ID (val): the card has no `test_id` split" in table


def test_runs_without_a_hydra_config_are_told_apart_by_their_model_card(tmp_path):
    for n, title in enumerate(("cue 0.95", "cue 0.8")):
        _run(tmp_path / str(n), 0.9)
        (tmp_path / str(n) / ".hydra" / "config.yaml").unlink()
        (tmp_path / str(n) / "model").mkdir()
        (tmp_path / str(n) / "model" / "model.json").write_text(json.dumps({"info": {
            "card": {"name": "demo-derm", "title": title}, "data": {"train": {"n": 30}, "val": {"n": 10}}}}))
    rows = compare_runs([tmp_path / "0", tmp_path / "1"])
    assert [r["chosen"] for r in rows] == [True, True] and "told apart by their card's name" in comparison_table(rows)
