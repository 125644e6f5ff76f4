"""Build step of the wheel: it carries conf/ and data_cards/ as cbm/_resources/ (found by cbm.resources).

Everything else about the package is in pyproject.toml. In a checkout, and in an editable install,
cbm reads the folders at the top of the repository instead, so this step only runs for real builds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# folder -> the files of it that belong to cbm (not the manifests and images make-splits puts beside cards)
RESOURCES = {"conf": ("*.yaml",), "data_cards": ("card.yaml", "concepts.json")}


class BuildPyWithResources(build_py):
    """``build_py``, then a copy of each resource folder into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name, patterns in RESOURCES.items():
            for pattern in patterns:
                for src in sorted((root / name).rglob(pattern)):
                    dst = Path(self.build_lib, "cbm", "_resources", src.relative_to(root))
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildPyWithResources})
