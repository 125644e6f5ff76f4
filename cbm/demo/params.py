"""The parameters of a demo dataset, checked: whole numbers where they must be, each in its range.

A config may give a whole number as 1000.0 (``1e3``): it is taken as 1000. Anything else out of
place is a ``ValueError`` that names the parameter, raised before anything is written.
"""

from __future__ import annotations

import numpy as np

from cbm.demo.world import class_names

__all__ = ["SPLITS", "SPLIT_FRACTIONS", "checked_parameters"]

SPLITS = ("train", "val", "test_id", "test")
SPLIT_FRACTIONS = (0.5, 0.15, 0.15, 0.2)


def _whole(name: str, value: object) -> int:
    """``value`` as an int when it is a whole number (1000 or 1000.0, as a config may give it)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name}={value!r} must be a whole number")


def checked_parameters(
    n: object, confounding: object, classes: object, seed: object, size: object
) -> tuple[int, float, int, int, int]:
    """The parameters as numbers of the right kind, or a ValueError naming the one out of range."""
    if isinstance(confounding, (bool, str)) or not isinstance(confounding, (int, float, np.integer, np.floating)):
        raise ValueError(f"confounding={confounding!r} must be a number in [0, 1] (0.5 = no association, 0.95 = strong)")
    n, classes, seed, size = (_whole(k, v) for k, v in (("n", n), ("classes", classes), ("seed", seed), ("size", size)))
    if seed < 0:
        raise ValueError(f"seed={seed} must be 0 or more")
    _check(n, float(confounding), classes, size)
    return n, float(confounding), classes, seed, size


def _check(n: int, confounding: float, classes: int, size: int) -> None:
    class_names(classes)
    if not 0.0 <= confounding <= 1.0:
        raise ValueError(f"confounding={confounding!r} must lie in [0, 1] (0.5 = no association, 0.95 = strong)")
    if n < 3 * classes * len(SPLITS):
        raise ValueError(
            f"n={n} is too small for {classes} classes in {len(SPLITS)} splits; use n >= {3 * classes * len(SPLITS)}"
        )
    if not 16 <= size <= 1024:
        raise ValueError(f"size={size} px is outside 16-1024")
