"""The shape of the code: one-way layers (import-linter), no import circles, short files and functions.

The layers are declared in pyproject.toml (``[tool.importlinter]``) and described in
docs/architecture.md. A function may run past the length limit only when its docstring says why
(the words "on purpose").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cbm"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def test_layers_contract_is_kept(capsys):
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"))
    out = capsys.readouterr().out
    assert code == 0, "an import goes up a layer ([tool.importlinter] in pyproject.toml):\n" + out[-3000:]


def test_no_import_circles():
    import grimp

    graph = grimp.build_graph("cbm")
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(importer=imported, imported=module):
                circles.append(f"{module} -> {imported} -> ... -> {module}")
    assert not circles, "import circles:\n" + "\n".join(circles)


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts)


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_short(path):
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n") + 1
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {lines} lines (at most {MAX_FILE_LINES}): split it"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and "on purpose" not in (ast.get_docstring(node) or ""):
                long.append(f"{node.name} ({length} lines, line {node.lineno})")
    assert not long, (f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines whose docstring does not "
                      f"say why (\"... on purpose: ...\"): {', '.join(long)}")


def test_import_cbm_is_light_and_its_subpackages_are_attributes():
    """`import cbm` loads no torch; `cbm.pipeline.run_experiment` works after it alone, as the README writes it."""
    import subprocess
    import sys

    code = ("import sys, cbm; assert 'torch' not in sys.modules, 'torch loaded'; "
            "assert callable(cbm.pipeline.run_experiment) and cbm.heads.SparseConceptHead")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
