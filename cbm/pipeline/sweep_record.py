"""What cbm records of a sweep, so that its jobs are known by what the files say, not by file times.

``cbm_sweep.json`` in a sweep's folder is written when the sweep starts: a new id, the number of
jobs Hydra's basic sweeper will launch (``null`` for a sweeper whose count cbm cannot tell), and
``finished: false``; it is rewritten with ``finished: true`` when the sweep ends, or when as many
jobs as it planned have ended. A sweep that ends early (an error its sweeper raises, as Optuna's
does at a failed job, or an interrupt) is marked ``stopped`` with why, and stays unfinished.
``cbm_job.json`` in each job's folder
holds that id and the job's state: ``running`` from its start, then ``done`` or ``failed`` (with
the error's first line). A job interrupted stays ``running``. A copy that loses file times
(``git clone``, ``scp -r``, ``rsync`` without ``-t``) keeps all of it, so
:mod:`cbm.pipeline.compare` tells this sweep's jobs from an earlier sweep's in the same folder,
and a job still running from one that failed.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

__all__ = ["JOB_FILE", "SWEEP_FILE", "end_job", "end_sweep", "end_sweep_if_complete", "first_line", "planned_jobs", "read_record",
           "start_job", "start_sweep", "stop_sweep", "sweep_jobs"]

SWEEP_FILE = "cbm_sweep.json"
JOB_FILE = "cbm_job.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """A record file's object, or None where it is missing or not one of ours."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("sweep_id"), str) else None


def _write(path: Path, record: dict[str, Any]) -> None:
    from cbm.utils import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def start_sweep(sweep: Path, planned: int | None) -> str:
    """Record a new sweep in ``sweep`` (a folder used before gets a new id); returns the id."""
    sweep_id = uuid.uuid4().hex
    _write(sweep / SWEEP_FILE, {"sweep_id": sweep_id, "planned_jobs": planned, "finished": False})
    return sweep_id


def end_sweep(sweep: Path) -> None:
    """Mark the sweep recorded in ``sweep`` as finished (every job has ended)."""
    record = read_record(sweep / SWEEP_FILE)
    if record is not None:
        _write(sweep / SWEEP_FILE, {**record, "finished": True})


def stop_sweep(sweep: Path, reason: str) -> None:
    """Mark the sweep recorded in ``sweep`` as stopped before its end, with ``reason``; a sweep
    already marked finished (every planned job ended) stays finished."""
    record = read_record(sweep / SWEEP_FILE)
    if record is not None and not record.get("finished"):
        _write(sweep / SWEEP_FILE, {**record, "stopped": reason})


def sweep_jobs(record: dict[str, Any], folders: list[Path]) -> dict[Path, dict[str, Any]]:
    """The job records, by folder, of those of ``folders`` that belong to the sweep of ``record``."""
    jobs = {folder: read_record(folder / JOB_FILE) for folder in folders}
    return {folder: job for folder, job in jobs.items() if job is not None and job["sweep_id"] == record["sweep_id"]}


def end_sweep_if_complete(sweep: Path) -> None:
    """Mark the sweep finished once as many of its jobs have ended as it planned: a failed job makes
    Hydra's sweeper raise after the last job, so the sweep's own end is never reached then."""
    record = read_record(sweep / SWEEP_FILE)
    if record is None or not isinstance(record.get("planned_jobs"), int):
        return
    jobs = sweep_jobs(record, [folder for folder in sweep.iterdir() if folder.is_dir()])
    if sum(job.get("status") in ("done", "failed") for job in jobs.values()) >= record["planned_jobs"]:
        end_sweep(sweep)


def start_job(job: Path, sweep: Path) -> None:
    """Record that the job in folder ``job`` of the sweep in ``sweep`` is running."""
    record = read_record(sweep / SWEEP_FILE)
    if record is not None:
        _write(job / JOB_FILE, {"sweep_id": record["sweep_id"], "status": "running"})


def end_job(job: Path, error: BaseException | None) -> None:
    """Record the job's end: ``done``, or ``failed`` with the first line of its error."""
    record = read_record(job / JOB_FILE)
    if record is None:
        return
    if error is None:
        _write(job / JOB_FILE, {**record, "status": "done"})
        return
    _write(job / JOB_FILE, {**record, "status": "failed", "error": first_line(error)[:300]})


def first_line(error: BaseException) -> str:
    """What a record keeps of an error: its message's first line, or its type where it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def planned_jobs(config: Any) -> int | None:
    """How many jobs Hydra's basic sweeper launches for ``config`` (its ``hydra.sweeper.params`` and
    the command line's overrides, each comma list one axis of the grid); None for another sweeper
    (Optuna and the like decide as they go) or overrides that cannot be parsed here."""
    try:
        if not str(config.hydra.sweeper._target_).endswith("BasicSweeper"):
            return None
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.params or {}).items()]
        axes: dict[str, int] = {}  # a later override of a key replaces an earlier one, as the sweeper's does
        for override in OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task]):
            sweep = override.is_sweep_override()
            axes[override.get_key_element()] = len(list(override.sweep_string_iterator())) if sweep else 1
    except Exception:  # noqa: BLE001 - the count is a courtesy; the sweep goes on without it
        return None
    return math.prod(axes.values())
