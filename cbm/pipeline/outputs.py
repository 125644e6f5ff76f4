"""What a run writes for people: ``results.md`` and ``path.svg``."""

from __future__ import annotations

from typing import Any

from cbm.plots import line_chart

__all__ = ["markdown_cell", "results_table", "path_chart"]


def markdown_cell(text: object) -> str:
    """``text`` as one cell of a markdown table: a ``|`` in it (a concept phrase, a folder name) escaped
    and a line break made a space, so the row keeps its columns."""
    return " ".join(str(text).replace("|", "\\|").split())


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def results_table(card_name: str, metrics: dict[str, dict[str, Any]], notes: list[str] | None = None) -> str:
    """``results.md``: methods as rows; ID, OOD, gap, average and concepts per class as columns,
    then the test intervals and any ``notes`` (paragraphs of markdown)."""
    lines = [
        f"# Results: {card_name}",
        "",
        "| method | ID acc | OOD acc | gap | average | test macro-F1 | test AUROC | worst-group | val acc | concepts/class |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in metrics.items():
        cpc = r.get("concepts_per_class")
        lines.append(
            f"| {method} | {_pct(r['id_accuracy'])} | {_pct(r['ood_accuracy'])} | {_pct(r['gap'])} | "
            f"{_pct(r['average'])} | {_pct(r['macro_f1'])} | {_pct(r['macro_auroc'])} | "
            f"{_pct(r.get('worst_group_accuracy'))} | {_pct(r.get('val_accuracy'))} | "
            f"{'–' if cpc is None else f'{cpc:.1f}'} |"
        )
    any_r = next(iter(metrics.values()))
    lines += [
        "",
        (f"Accuracy in %. ID = `{any_r['id_split']}` split, OOD = `{any_r['ood_split']}` split; gap = ID − OOD. "
         if any_r["ood_split"] else
         f"Accuracy in %. ID = `{any_r['id_split']}` split; no out-of-domain split (the card has no confounder). ")
        + "val acc: the validation split, which chose every setting.",
        "Test accuracy with bootstrap 95% intervals:" if any(
            r["test"]["accuracy_ci"][0] is not None for r in metrics.values()) else "Test accuracy (no bootstrap intervals):",
        "",
    ]
    for method, r in metrics.items():
        lo, hi = r["test"]["accuracy_ci"]
        ci = "" if lo is None else f" [{_pct(lo)}, {_pct(hi)}]"
        lines.append(f"- {method}: {_pct(r['accuracy'])}{ci} (n = {r['test']['n']})")
    for note in notes or []:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def path_chart(card_name: str, path: list[dict[str, Any]], selected_index: int) -> str:
    """``path.svg``: validation accuracy against concepts per class along the regularisation path
    (validation only: the split that chose the point; test figures never enter the choice)."""
    order = sorted(range(len(path)), key=lambda i: (path[i]["concepts_per_class"], -path[i]["lambda"]))
    cpc = [path[i]["concepts_per_class"] for i in order]
    series = {"val accuracy (selection)": (cpc, [path[i]["val_accuracy"] for i in order])}
    sel = path[selected_index]
    return line_chart(series, title=f"{card_name}: validation accuracy along the regularisation path",
                      xlabel="concepts per class (non-zero weights)", ylabel="validation accuracy",
                      marker=(sel["concepts_per_class"], sel["val_accuracy"]), marker_label="selected")
