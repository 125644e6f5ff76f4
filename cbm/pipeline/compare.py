"""Runs side by side: the summary of a sweep, and ``cbm compare``.

Each run folder's ``metrics.json`` (with its Hydra overrides, where ``cbm run`` wrote them) becomes
a row: the figure a sweep optimises (a validation figure), the faithful head's validation and test
accuracy, its sparsity and faithfulness, and the linear probe for reference. Among the runs of one
dataset, the one the sweep would choose (the highest optimised figure) is marked; the choice reads
that validation figure only, and the test columns are there to be read, not to choose by. A folder
without ``metrics.json`` (a job that failed or was interrupted) is listed as such.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbm.selection import AUTO_METRIC, check_optimized_metric, selection_figure

__all__ = ["compare_runs", "comparison_table", "intervention_points", "run_folders"]


def intervention_points(faithfulness: dict[str, Any]) -> list[dict[str, Any]]:
    """A faithfulness block's intervention curve, its points (none where it was not measured: then
    ``intervention`` is ``{"measured": False, "reason": ...}``)."""
    curve = faithfulness.get("intervention")
    return curve if isinstance(curve, list) else []


def _is_run(folder: Path) -> bool:
    return (folder / "metrics.json").is_file() or (folder / ".hydra").is_dir()


def _this_sweeps(sweep: Path, jobs: list[Path]) -> list[Path]:
    """The jobs of the sweep that last ran in ``sweep``: those whose config was written after its
    ``multirun.yaml`` (a folder used for an earlier sweep keeps that sweep's other jobs)."""
    started = sweep / "multirun.yaml"
    if not started.is_file():
        return jobs
    since = started.stat().st_mtime

    def written(job: Path) -> float:  # the job's config files (rewritten in place when a job runs again)
        return max((f.stat().st_mtime for f in (job / ".hydra").glob("*.yaml")), default=since)

    return [j for j in jobs if not (j / ".hydra").is_dir() or written(j) >= since]


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
        jobs = [c for c in p.iterdir() if c.is_dir() and _is_run(c)]
        if not jobs:
            raise FileNotFoundError(f"{p}: neither a run folder (metrics.json) nor a sweep's folder (numbered run folders)")
        out += sorted(_this_sweeps(p, jobs), key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name))
    seen: set[Path] = set()
    return [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]


def _overrides(folder: Path) -> list[str]:
    import yaml

    path = folder / ".hydra" / "overrides.yaml"
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else []
    except (OSError, yaml.YAMLError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _dataset(folder: Path) -> tuple[str | None, str | None]:
    """The run's card name (the first line of its ``results.md``, ``# Results: <card>``) and what
    tells its dataset from others of that name: its ``dataset`` config (every demo world is
    ``demo-derm``; its seed and confounding make it another dataset), where ``cbm run`` wrote it."""
    import yaml

    try:
        name = (folder / "results.md").read_text(encoding="utf-8").splitlines()[0].removeprefix("# Results:").strip()
    except (OSError, IndexError):
        name = None
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
        node = {k: v for k, v in (config.get("dataset") or {}).items() if k != "extra_metrics"}
        key = json.dumps(node, sort_keys=True, default=str)
    except (OSError, AttributeError, yaml.YAMLError):
        key = None
    return name or None, key or name or None


def _row(folder: Path, optimized_metric: str) -> dict[str, Any]:
    name, key = _dataset(folder)
    row: dict[str, Any] = {"run": str(folder), "overrides": _overrides(folder), "dataset": name, "dataset_key": key}
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {**row, "status": "no results: the job failed or was interrupted (see its run.log)"}
    except (OSError, ValueError) as exc:
        return {**row, "status": f"metrics.json unreadable ({exc})"}
    if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
        return {**row, "status": "metrics.json unreadable (not a run's figures: an object of methods)"}
    cbm = metrics.get("cbm") or {}
    f = cbm.get("faithfulness") or {}
    curve = intervention_points(f)
    name, value = selection_figure(metrics, optimized_metric)
    probe = metrics.get("linear_probe") or {}
    return {**row, "status": "ok", "selection": {"figure": name, "value": value}, "cbm": {
        **{k: cbm.get(k) for k in ("val_accuracy", "val_worst_group_accuracy", "id_accuracy", "ood_accuracy", "gap",
                                   "concepts_per_class")},
        "sign_agreement": f.get("sign_agreement"),
        "intervention_end": {k: curve[-1].get(k) for k in ("id_accuracy", "ood_accuracy") if k in curve[-1]} if curve else None,
        "cue_logit_auroc": (f.get("cue_leakage") or {}).get("logit_auroc"),
    }, "linear_probe": {k: probe.get(k) for k in ("id_accuracy", "ood_accuracy")} if probe else None}


def compare_runs(paths: Sequence[str | os.PathLike], optimized_metric: str = AUTO_METRIC) -> list[dict[str, Any]]:
    """One row per run folder (:func:`run_folders`); ``chosen`` marks, per dataset (its config, where
    ``cbm run`` wrote it, else its card's name), the run with the highest ``optimized_metric`` (a
    validation figure, :func:`cbm.selection.check_optimized_metric`; ties: the first)."""
    check_optimized_metric(optimized_metric)
    rows = [_row(f, optimized_metric) for f in run_folders(paths)]
    best: dict[Any, dict[str, Any]] = {}
    for r in rows:
        value, key = (r.get("selection") or {}).get("value"), r["dataset_key"]
        if value is not None and (key not in best or value > best[key]["selection"]["value"]):
            best[key] = r
    for r in rows:
        r["chosen"] = any(r is b for b in best.values())
    return rows


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _end_text(end: dict[str, Any]) -> str:
    """The curve's last point, ID / OOD, or the one of them a card's truth allowed, named."""
    if len(end) == 2:
        return f"{_pct(end['id_accuracy'])} / {_pct(end['ood_accuracy'])}"
    return " ".join(f"{_pct(v)} ({k.split('_')[0].upper()} only)" for k, v in end.items()) or "–"


def comparison_table(rows: list[dict[str, Any]], root: str | os.PathLike | None = None) -> str:
    """The rows as markdown (run folders relative to ``root`` where they lie below it)."""
    figures = sorted({r["selection"]["figure"] for r in rows if r.get("selection")})
    lines = [
        "| run | overrides | dataset | selection (val) | cbm val acc | cbm ID | cbm OOD | gap | concepts/class | "
        "sign agreement | interventions end ID / OOD | cue from logit | probe ID / OOD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name, full = r["run"], Path(os.path.abspath(r["run"]))
        if root is not None and full != Path(os.path.abspath(root)) and full.is_relative_to(os.path.abspath(root)):
            name = str(full.relative_to(os.path.abspath(root)))
        overrides = " ".join(f"`{o}`".replace("|", "\\|") for o in r["overrides"]) or "–"
        if r["status"] != "ok":
            lines.append(f"| {name} | {overrides} | {r['dataset'] or '–'} | {r['status']} |" + " |" * 9)
            continue
        c, end, probe = r["cbm"], r["cbm"]["intervention_end"] or {}, r["linear_probe"] or {}
        cpc = c.get("concepts_per_class")
        lines.append(
            f"| {name}{' **(chosen)**' if r['chosen'] else ''} | {overrides} | {r['dataset'] or '–'} | "
            f"{_pct(r['selection']['value'])} | {_pct(c['val_accuracy'])} | {_pct(c['id_accuracy'])} | "
            f"{_pct(c['ood_accuracy'])} | {_pct(c['gap'])} | {'–' if cpc is None else f'{cpc:.1f}'} | "
            f"{'–' if c['sign_agreement'] is None else format(c['sign_agreement'], '.3f')} | "
            f"{_end_text(end)} | "
            f"{'–' if c['cue_logit_auroc'] is None else format(c['cue_logit_auroc'], '.3f')} | "
            f"{' / '.join(_pct(probe.get(k)) for k in ('id_accuracy', 'ood_accuracy')) if probe else '–'} |")
    note = (f"Accuracy in %. selection: {', '.join(figures) or 'the optimised figure'}, on the validation split; "
            "**(chosen)** marks the run of each dataset with the highest, as a sweep would choose. The test columns "
            "(ID, OOD, interventions, probe) are there to read, not to choose by.")
    return "\n".join([*lines, "", note]) + "\n"
