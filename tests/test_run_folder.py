"""A run folder used again: the earlier run's results are set aside as a run starts, kept through
failed and interrupted runs, and dropped once a run has written its own; nothing else is touched."""

from __future__ import annotations

import pytest

from cbm.pipeline.run_folder import EARLIER_RUN, drop_set_aside, set_aside_earlier_results


def _results(folder, tag: str, complete: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.json", "results.md", "path.svg", *(["timings.json"] if complete else [])):
        (folder / name).write_text(tag)
    (folder / "model").mkdir(exist_ok=True)
    for name in ("model.json", "model.safetensors", "reference.safetensors"):
        (folder / "model" / name).write_text(tag)


def test_results_are_set_aside_and_a_models_other_files_stay(tmp_path):
    run = tmp_path / "run"
    _results(run, "first")
    (run / "model" / "explained").mkdir()
    (run / "model" / "explained" / "case.html").write_text("mine")  # cbm explain --out run/model/explained
    (run / "notes.txt").write_text("mine too")
    set_aside_earlier_results(run)
    aside = run / EARLIER_RUN
    assert (aside / "metrics.json").read_text() == "first" and (aside / "model" / "model.json").read_text() == "first"
    assert not (run / "metrics.json").exists() and not (run / "model" / "model.json").exists()
    assert (run / "model" / "explained" / "case.html").read_text() == "mine" and (run / "notes.txt").is_file()
    set_aside_earlier_results(run)  # a failed run in between: the set-aside results stay
    assert (aside / "metrics.json").read_text() == "first"
    drop_set_aside(run)
    assert not aside.exists() and (run / "model" / "explained" / "case.html").is_file()


def test_an_interrupted_runs_partial_results_do_not_replace_complete_ones(tmp_path):
    run = tmp_path / "run"
    _results(run, "complete")
    set_aside_earlier_results(run)
    _results(run, "partial", complete=False)  # interrupted after metrics.json, before timings.json
    set_aside_earlier_results(run)
    assert (run / EARLIER_RUN / "metrics.json").read_text() == "complete"
    assert (run / EARLIER_RUN / "model" / "model.json").read_text() == "complete"
    assert not (run / "metrics.json").exists()
    _results(run, "second")  # a complete run replaces them
    set_aside_earlier_results(run)
    assert (run / EARLIER_RUN / "metrics.json").read_text() == "second"


def test_an_earlier_run_folder_cbm_did_not_make_is_never_touched(tmp_path):
    run = tmp_path / "run"
    _results(run, "first")
    (run / EARLIER_RUN).mkdir()
    (run / EARLIER_RUN / "mine.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="earlier_run is in the way"):
        set_aside_earlier_results(run)
    assert (run / "metrics.json").read_text() == "first"
    drop_set_aside(run)
    assert (run / EARLIER_RUN / "mine.txt").read_text() == "mine"


def test_a_new_folder_is_made_and_a_model_folder_that_is_not_a_model_stays(tmp_path):
    run = tmp_path / "new" / "run"
    set_aside_earlier_results(run)
    assert run.is_dir() and not (run / EARLIER_RUN).exists()
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_text("not a saved model: no model.json")
    set_aside_earlier_results(run)
    assert (run / "model" / "model.safetensors").is_file() and not (run / EARLIER_RUN).exists()
