"""Runs side by side: the summary of a sweep, and ``cbm compare``.

Each run folder's ``metrics.json`` (with its Hydra overrides, where ``cbm run`` wrote them) becomes
a row: the figure a sweep optimises (a validation figure), the faithful head's validation and test
accuracy, its sparsity and faithfulness, and the linear probe for reference. Among the runs of one
dataset, the one the sweep would choose (the highest optimised figure; by default the one each run
was made with) is marked; the choice reads that validation figure only, and the test columns are
there to be read, not to choose by. A folder without ``metrics.json`` is listed as failed (with
its error), still running, or interrupted, as far as the sweep's records
(:mod:`cbm.pipeline.sweep_record`) tell; they also tell which job folders are the last sweep's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbm.pipeline.outputs import markdown_cell
from cbm.pipeline.sweep_record import JOB_FILE, SWEEP_FILE, read_record, sweep_jobs
from cbm.selection import (
    AUTO_METRIC,
    VALIDATION_FIGURES,
    check_optimized_metric,
    selection_figure,
)

__all__ = ["compare_runs", "comparison_table", "intervention_points", "run_folders", "sweep_notes"]


def intervention_points(faithfulness: dict[str, Any]) -> list[dict[str, Any]]:
    """A faithfulness block's intervention curve, its points (none where it was not measured: then
    ``intervention`` is ``{"measured": False, "reason": ...}``)."""
    curve = faithfulness.get("intervention")
    return curve if isinstance(curve, list) else []


def _is_run(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / ".hydra").is_dir()


def _this_sweeps(sweep: Path, jobs: list[Path]) -> list[Path]:
    """The jobs of the sweep that last ran in ``sweep`` (a folder used for an earlier sweep keeps that
    sweep's other jobs): those that hold its id (:mod:`cbm.pipeline.sweep_record`); for a sweep from
    before cbm kept records, those whose config was written after its ``multirun.yaml``."""
    record = read_record(sweep / SWEEP_FILE)
    if record is not None:
        return list(sweep_jobs(record, jobs))
    started = sweep / "multirun.yaml"
    if not started.is_file():
        return jobs
    since = started.stat().st_mtime

    def written(job: Path) -> float:  # the job's config files (rewritten in place when a job runs again)
        return max((f.stat().st_mtime for f in (job / ".hydra").glob("*.yaml")), default=since)

    return [j for j in jobs if not (j / ".hydra").is_dir() or written(j) >= since]


def _jobs(folder: Path) -> list[Path]:
    return [c for c in folder.iterdir() if c.is_dir() and _is_run(c)]


def run_folders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders, each once: each path that is one (it holds ``metrics.json`` or a ``.hydra``
    folder), else the numbered folders of the sweep that last ran under it, in number order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such folder; give run folders (outputs/<card>/<time>) or a sweep's "
                                    "folder (multirun/<time>)")
        if _is_run(p):
            out.append(p)
            continue
        jobs = _jobs(p)
        if not jobs:
            raise FileNotFoundError(f"{p}: neither a run folder (metrics.json) nor a sweep's folder (numbered run folders)")
        out += sorted(_this_sweeps(p, jobs), key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name))
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def sweep_notes(paths: Sequence[str | os.PathLike]) -> list[str]:
    """For each of ``paths`` that is a sweep's folder: whether the sweep finished, how many of its
    jobs have started (of how many, where its sweeper's count is known), and how many job folders
    of an earlier sweep in that folder are left out of the table."""
    notes = []
    for p in map(Path, paths):
        if not p.is_dir() or _is_run(p) or not (jobs := _jobs(p)):
            continue
        kept = len(_this_sweeps(p, jobs))
        earlier = f"; {len(jobs) - kept} job folder(s) of an earlier sweep in this folder are left out" if kept < len(jobs) else ""
        record = read_record(p / SWEEP_FILE)
        if record is None:
            notes.append(f"Sweep {p.name}: {kept} job(s){earlier} (a sweep from before cbm kept sweep records: its "
                         "jobs are told from an earlier sweep's by file times, which a copy may not keep).")
        elif record.get("finished"):
            notes.append(f"Sweep {p.name}: finished; {kept} job(s){earlier}.")
        else:
            planned = record.get("planned_jobs")
            of = f" of {planned}" if isinstance(planned, int) else ""
            state = (f"**stopped** ({record['stopped']})" if isinstance(record.get("stopped"), str)
                     else "**not finished** (still running, or stopped)")
            notes.append(f"Sweep {p.name}: {state}: {kept}{of} job(s) have started{earlier}.")
    return notes


def _overrides(folder: Path) -> list[str]:
    import yaml

    path = folder / ".hydra" / "overrides.yaml"
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _config(folder: Path) -> dict[str, Any] | None:
    """The run's composed config, where ``cbm run`` wrote it (``.hydra/config.yaml``)."""
    import yaml

    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _dataset(folder: Path, config: dict[str, Any] | None) -> tuple[str | None, str | None, bool]:
    """The run's card name (the first line of its ``results.md``, ``# Results: <card>``), what tells
    its dataset from others of that name, and whether that came from its config: its ``dataset``
    config (every demo world is ``demo-derm``; its seed and confounding make it another dataset),
    where ``cbm run`` wrote it; else (a run of ``run_experiment``) its model's card and split sizes."""
    try:
        name = (folder / "results.md").read_text(encoding="utf-8").splitlines()[0].removeprefix("# Results:").strip()
    except (OSError, IndexError):
        name = None
    node = (config or {}).get("dataset")
    if isinstance(node, dict):
        return name or None, json.dumps({k: v for k, v in node.items() if k != "extra_metrics"}, sort_keys=True,
                                         default=str), True
    try:
        info = json.loads((folder / "model" / "model.json").read_text(encoding="utf-8-sig"))["info"]  # as the loader reads it
        key = json.dumps({"card": info["card"], "sizes": {k: v.get("n") for k, v in info["data"].items()}}, sort_keys=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        key = None
    return name or None, key or name or None, False


def _missing_results(folder: Path) -> str:
    """Why a run folder has no ``metrics.json``, as far as its sweep's records tell."""
    job = read_record(folder / JOB_FILE) or {}
    if job.get("status") == "failed":
        return f"failed: {job.get('error') or 'see its run.log'}"
    sweep = read_record(folder.parent / SWEEP_FILE) or {}
    if (job.get("status") == "running" and sweep.get("sweep_id") == job["sweep_id"] and not sweep.get("finished")
            and not sweep.get("stopped")):
        return "no results yet: still running, or stopped (see its run.log)"
    if job.get("status") == "running":
        return "no results: interrupted (see its run.log)"
    return "no results: the job failed or was interrupted (see its run.log)"


def _row(folder: Path, optimized_metric: str | None) -> dict[str, Any]:
    config = _config(folder)
    name, key, from_config = _dataset(folder, config)
    row: dict[str, Any] = {"run": str(folder), "overrides": _overrides(folder), "dataset": name, "dataset_key": key,
                           "dataset_from_config": from_config}
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {**row, "status": _missing_results(folder)}
    except (OSError, ValueError) as exc:
        return {**row, "status": f"metrics.json unreadable ({exc})"}
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        return {**row, "status": "metrics.json unreadable (not a run's figures: an object of methods)"}
    refused = None
    if optimized_metric is None:  # the figure the run was made to be chosen by
        optimized_metric = str((config or {}).get("optimized_metric") or AUTO_METRIC)
        try:  # a config a run would refuse now (a test figure) chooses nothing
            check_optimized_metric(optimized_metric)
        except ValueError as exc:
            refused = f"{folder} is not chosen: its config's {exc}; give --metric to choose among these runs"
    cbm = metrics.get("cbm") or {}
    f = cbm.get("faithfulness") or {}
    curve = intervention_points(f)
    try:
        name, value = selection_figure(metrics, optimized_metric)
    except (TypeError, ValueError) as exc:  # a hand-edited figure that is no number: this run's row says so
        return {**row, "status": f"metrics.json unreadable (its {optimized_metric} is not a number: {exc})"}
    probe = metrics.get("linear_probe") or {}
    selection = {"figure": name, "value": value} if refused is None else {"figure": name, "value": None, "refused": True}
    return {**row, "status": "ok", "selection": selection, **({"not_chosen": refused} if refused else {}), "cbm": {
        **{k: cbm.get(k) for k in ("val_accuracy", "val_worst_group_accuracy", "id_accuracy", "id_split",
                                   "ood_accuracy", "gap", "concepts_per_class")},
        "sign_agreement": f.get("sign_agreement"),
        "intervention_end": {k: curve[-1].get(k) for k in ("id_accuracy", "ood_accuracy") if k in curve[-1]} if curve else None,
        "cue_logit_auroc": (f.get("cue_leakage") or {}).get("logit_auroc"),
    }, "linear_probe": {k: probe.get(k) for k in ("id_accuracy", "ood_accuracy")} if probe else None,
        "val_figures": sorted(f"{m}.{k}" for m, r in metrics.items() for k, v in r.items()
                              if k in VALIDATION_FIGURES and v is not None)}


def _choose(rows: list[dict[str, Any]]) -> None:
    """Mark each dataset's chosen run (the highest selection figure; ties: the first, the others named
    in ``tied_with``); none where its runs were selected on different figures (``not_chosen``)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        r["chosen"] = False
        if r.get("selection"):
            groups.setdefault(r["dataset_key"], []).append(r)
    for members in groups.values():
        figures = sorted({r["selection"]["figure"] for r in members})
        if len(figures) > 1:
            for r in members:
                r["not_chosen"] = (f"the runs of {r['dataset'] or 'this dataset'} were made to be chosen by different "
                                   f"figures ({', '.join(figures)}): give --metric to choose among them")
            continue
        members = [r for r in members if r["selection"]["value"] is not None]
        if not members:
            continue
        top = max(r["selection"]["value"] for r in members)
        best = [r for r in members if r["selection"]["value"] == top]
        best[0]["chosen"] = True
        best[0]["tied_with"] = [r["run"] for r in best[1:]]


def compare_runs(paths: Sequence[str | os.PathLike], optimized_metric: str | None = None) -> list[dict[str, Any]]:
    """One row per run folder (:func:`run_folders`); ``chosen`` marks, per dataset (its config, where
    ``cbm run`` wrote it, else its card and split sizes), the run with the highest validation
    figure: ``optimized_metric`` (:func:`cbm.selection.check_optimized_metric`), or by default the
    one each run was made with (its config's ``optimized_metric``; ``auto`` where it has none; one that
    is not a validation figure, which ``cbm run`` refuses, chooses nothing and is named in ``not_chosen``)."""
    if optimized_metric is not None:
        check_optimized_metric(optimized_metric)
    rows = [_row(f, optimized_metric) for f in run_folders(paths)]
    measured = [r for r in rows if r["status"] == "ok"]
    if optimized_metric not in (None, AUTO_METRIC) and measured and all(r["selection"]["value"] is None for r in measured):
        known = sorted({f for r in measured for f in r["val_figures"]})
        raise ValueError(f"--metric {optimized_metric}: no run measured it; they measured {', '.join(known) or 'none'}")
    _choose(rows)
    return rows


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _end_text(end: dict[str, Any]) -> str:
    """The curve's last point, ID / OOD, or the one of them a card's truth allowed, named."""
    if len(end) == 2:
        return f"{_pct(end['id_accuracy'])} / {_pct(end['ood_accuracy'])}"
    return " ".join(f"{_pct(v)} ({k.split('_')[0].upper()} only)" for k, v in end.items()) or "–"


def _chosen_text(r: dict[str, Any]) -> str:
    if not r["chosen"]:
        return ""
    tied = len(r.get("tied_with") or [])
    return f" **(chosen; tied with {tied} other{'s' if tied > 1 else ''})**" if tied else " **(chosen)**"


def _notes(rows: list[dict[str, Any]], figures: list[str]) -> list[str]:
    """The footnote: what chose, and what a reader could misread in the rows."""
    note = (f"Accuracy in %. selection: {', '.join(figures) or 'the optimised figure'}, on the validation split; "
            "**(chosen)** marks the run of each dataset with the highest (ties: the first listed), as a sweep would "
            "choose. The test columns (ID, OOD, interventions, probe) are there to read, not to choose by.")
    out = [note]
    if any((r.get("cbm") or {}).get("id_split") == "val" for r in rows):
        out.append("ID (val): the card has no `test_id` split, so that run's ID figure is measured on the validation "
                   "split, the one it was also chosen on.")
    out += sorted({r["not_chosen"] for r in rows if r.get("not_chosen")})
    if any(r["status"] == "ok" and not r["dataset_from_config"] for r in rows):
        out.append("Runs without a Hydra config (made by `run_experiment`) are told apart by their card's name, title "
                   "and split sizes only.")
    return out


def comparison_table(rows: list[dict[str, Any]], root: str | os.PathLike | None = None,
                     notes: Sequence[str] = ()) -> str:
    """The rows as markdown (run folders relative to ``root`` where they lie below it), after the
    ``notes`` (e.g. :func:`sweep_notes`)."""
    figures = sorted({r["selection"]["figure"] for r in rows if r.get("selection") and not r["selection"].get("refused")})
    lines = [
        *notes, *([""] if notes else []),
        ("| run | overrides | dataset | selection (val) | cbm val acc | cbm ID | cbm OOD | gap | concepts/class | "
         "sign agreement | interventions end ID / OOD | cue from logit | probe ID / OOD |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, full = r["run"], Path(os.path.abspath(r["run"]))
        if root is not None and full != Path(os.path.abspath(root)) and full.is_relative_to(os.path.abspath(root)):
            name = str(full.relative_to(os.path.abspath(root)))
        name = markdown_cell(name)  # a folder named "try|2" keeps the row's columns
        overrides = " ".join(f"`{o}`".replace("|", "\\|") for o in r["overrides"]) or "–"
        if r["status"] != "ok":
            lines.append(f"| {name} | {overrides} | {r['dataset'] or '–'} | {r['status'].replace('|', '/')} |" + " |" * 9)
            continue
        c, end, probe = r["cbm"], r["cbm"]["intervention_end"] or {}, r["linear_probe"] or {}
        cpc = c.get("concepts_per_class")
        figure = f" ({r['selection']['figure']})" if len(figures) > 1 else ""
        lines.append(
            f"| {name}{_chosen_text(r)} | {overrides} | {r['dataset'] or '–'} | "
            f"{_pct(r['selection']['value'])}{figure} | {_pct(c['val_accuracy'])} | "
            f"{_pct(c['id_accuracy'])}{' (val)' if c.get('id_split') == 'val' else ''} | "
            f"{_pct(c['ood_accuracy'])} | {_pct(c['gap'])} | {'–' if cpc is None else f'{cpc:.1f}'} | "
            f"{'–' if c['sign_agreement'] is None else format(c['sign_agreement'], '.3f')} | "
            f"{_end_text(end)} | "
            f"{'–' if c['cue_logit_auroc'] is None else format(c['cue_logit_auroc'], '.3f')} | "
            f"{' / '.join(_pct(probe.get(k)) for k in ('id_accuracy', 'ood_accuracy')) if probe else '–'} |")
    return "\n".join([*lines, "", "\n\n".join(_notes(rows, figures))]) + "\n"
