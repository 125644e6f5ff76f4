"""The wheel: it carries conf/ and data_cards/, and an installed cbm runs from any folder.

Builds the wheel from a copy of the checkout, installs it (without dependencies) into a fresh
venv outside the checkout that borrows this environment's site-packages through a ``.pth`` file
(so torch is not installed again), and runs ``cbm run`` on a small demo world from a temporary
folder to the end. About a minute on two cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from cbm.resources import RESOURCES, resource_dir

REPO = Path(__file__).resolve().parents[1]
_IGNORED = {".venv", ".git", "outputs", "multirun", "build", "dist", "__pycache__", ".pytest_cache", ".cache", ".whl", ".gl"}


def _copy_checkout(dst: Path) -> None:
    """The files a clean clone has (git's view when there is one), copied to ``dst``."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        for rel in listed.stdout.decode().split("\0"):
            src = REPO / rel
            if rel and src.is_file():
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / rel)
        return
    shutil.copytree(REPO, dst, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in _IGNORED or n.endswith(".egg-info")])


def test_resources_are_the_checkout_folders_here():
    for name in RESOURCES:
        assert resource_dir(name) == REPO / name
    with pytest.raises(ValueError, match="unknown cbm resource 'cards'; the resources are conf, data_cards"):
        resource_dir("cards")


@pytest.mark.slow
def test_wheel_installs_and_cbm_run_works_from_any_folder(tmp_path):
    src = tmp_path / "src"
    _copy_checkout(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("cbm-*.whl"))
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"cbm/_resources/conf/config.yaml", "cbm/_resources/conf/dataset/demo.yaml",
            "cbm/_resources/data_cards/ham10000/card.yaml", "cbm/_resources/data_cards/derm7pt/concepts.json"} <= names
    assert not [n for n in names if n.endswith("manifest.csv") or "/images/" in n]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co. from this env

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CBM_CARDS_PATH")}
    env.update(CBM_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    where = subprocess.run([str(python), "-c", "import cbm, cbm.run, cbm.data; print(cbm.__file__); print(cbm.run.CONFIG_DIR); "
                            "print(cbm.data.BUILTIN_CARDS_DIR)"], cwd=work, env=env, check=True, capture_output=True, text=True)
    for line in where.stdout.split():
        assert line.startswith(str(venv)), where.stdout  # the installed copy, not the checkout
    cards = subprocess.run([str(venv / "bin" / "cbm"), "cards"], cwd=work, env=env, capture_output=True, text=True)
    assert cards.returncode == 0 and "derm7pt" in cards.stdout and "vindr-cxr" in cards.stdout, cards.stderr

    run = subprocess.run([str(venv / "bin" / "cbm"), "run", "dataset.demo.n=300", "evaluation.n_bootstrap=50"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "run folder:" in run.stdout and "| cbm |" in run.stdout
    results = list(work.glob("outputs/demo-derm/*/results.md"))
    assert len(results) == 1 and (results[0].parent / "model").is_dir()
