"""A run folder used again (``hydra.run.dir=outputs/ham``, ``run_experiment(out_dir=...)``).

As a run starts, the earlier run's results move into :data:`EARLIER_RUN`: Hydra has already written
this run's config into the folder, and the earlier results must not be read as this run's (a run
that fails on its input, or is interrupted, would otherwise leave them beside that config). They
stay there through failed runs, and go once this run has written its own. Only cbm's own files
move: the results, and a saved model's files (what else a ``model/`` folder holds stays where
it is). An ``earlier_run/`` that cbm did not make is never touched.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cbm.reference import REFERENCE_FILE

__all__ = ["EARLIER_RUN", "MODEL_FILES", "RESULT_FILES", "drop_set_aside", "set_aside_earlier_results"]

log = logging.getLogger(__name__)

EARLIER_RUN = "earlier_run"
"""Where a run folder used again keeps the earlier run's results until this run has written its own."""

RESULT_FILES = ("metrics.json", "results.md", "path.svg", "skipped_files.json", "timings.json")
"""A run's results, in the order it writes them: ``timings.json`` last, so without it they are partial."""

MODEL_FILES = ("model.json", "model.safetensors", REFERENCE_FILE)
"""The files of a saved model (``ConceptBottleneckModel.save``)."""

_MADE_BY_CBM = ".made-by-cbm"


def set_aside_earlier_results(out: Path) -> None:
    """Create ``out`` where it is new; where it holds an earlier run's results, move them into
    :data:`EARLIER_RUN`. Results left partial by an interrupted run (no ``timings.json``) do not
    replace a complete set already there: they are removed, and the complete set stays.

    Raises:
        RuntimeError: ``out/earlier_run`` exists and cbm did not make it.
    """
    out.mkdir(parents=True, exist_ok=True)
    found = [out / f for f in RESULT_FILES if (out / f).is_file()]
    model = [out / "model" / f for f in MODEL_FILES if (out / "model" / f).is_file()] if (out / "model" / "model.json").is_file() else []
    if not found and not model:
        return  # nothing of an earlier run, or it is set aside already (a failed run in between)
    aside = out / EARLIER_RUN
    if aside.exists() and not (aside / _MADE_BY_CBM).is_file():
        raise RuntimeError(f"{aside} is in the way: a run folder used again keeps the earlier run's results there; "
                           "rename or remove that folder, or run in another folder (hydra.run.dir=...)")
    if aside.exists() and not (out / "timings.json").is_file():
        for path in found + model:
            path.unlink()
        log.warning("%s held the partial results of an interrupted run: removed; the complete results of the run "
                    "before stay in %s until this run has written its own", out, aside)
        return
    shutil.rmtree(aside, ignore_errors=True)
    (aside / "model" if model else aside).mkdir(parents=True)
    (aside / _MADE_BY_CBM).write_text("the earlier run's results, set aside by cbm; removed once a run here finishes\n",
                                      encoding="utf-8")
    for path in found:
        path.rename(aside / path.name)
    for path in model:
        path.rename(aside / "model" / path.name)
    if model and not any((out / "model").iterdir()):
        (out / "model").rmdir()
    log.warning("%s held an earlier run's results: they are in %s until this run has written its own", out, aside)


def drop_set_aside(out: Path) -> None:
    """This run's results are written: the earlier run's set aside go (only a folder cbm made)."""
    aside = out / EARLIER_RUN
    if (aside / _MADE_BY_CBM).is_file():
        shutil.rmtree(aside, ignore_errors=True)
