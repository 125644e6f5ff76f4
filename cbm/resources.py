"""Where cbm's configs (``conf/``) and built-in data cards (``data_cards/``) are at run time.

In a source checkout (and an editable install) they are the folders at the top of the
repository. A wheel carries copies inside the package, as ``cbm/_resources/conf`` and
``cbm/_resources/data_cards`` (``setup.py`` copies them at build time), so an installed cbm finds
them from any folder:

    >>> from cbm.resources import resource_dir
    >>> resource_dir("conf") / "config.yaml"
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RESOURCES", "PACKAGED", "resource_dir"]

RESOURCES = ("conf", "data_cards")
PACKAGED = "_resources"  # the folder inside the package that a wheel's copies live in


def resource_dir(name: str) -> Path:
    """The folder of one of cbm's resources: the package's copy (a wheel), else the checkout's.

    Args:
        name: ``"conf"`` or ``"data_cards"``.

    Returns:
        The folder; in a checkout that lacks it, the path where it belongs (callers say what is missing).
    """
    if name not in RESOURCES:
        raise ValueError(f"unknown cbm resource {name!r}; the resources are {', '.join(RESOURCES)}")
    packaged = Path(str(resources.files("cbm"))) / PACKAGED / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / name
