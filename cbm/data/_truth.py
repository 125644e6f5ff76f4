"""Concept truth cells of a manifest (the columns a card's ``concept_truth`` names): present, absent
or not annotated, read the same way when the manifest is checked and when a run measures with them."""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from cbm.errors import ManifestError, quote

__all__ = ["ACCEPTED_TRUTH", "bad_truth_columns", "check_truth_header", "parse_truth"]

log = logging.getLogger(__name__)

_PRESENT = frozenset({"1", "yes", "y", "true", "t", "present"})
_ABSENT = frozenset({"0", "no", "n", "false", "f", "absent"})
_NOT_ANNOTATED = frozenset({"", "na", "n/a", "nan", "null"})  # as R, pandas and spreadsheets write a gap

ACCEPTED_TRUTH = "1/0, yes/no, true/false or present/absent (empty or NA: not annotated)"


def parse_truth(value: object) -> float:
    """``1.0`` (present), ``0.0`` (absent) or NaN (not annotated) for a truth cell; any number equal
    to 1 or 0 counts (``1.00``, as a spreadsheet exports it). Raises ValueError for anything else."""
    v = str(value).strip().lower()
    if v in _NOT_ANNOTATED:
        return math.nan
    if v in _PRESENT:
        return 1.0
    if v in _ABSENT:
        return 0.0
    try:
        number = float(v)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0):
        return number
    raise ValueError(f"{str(value)!r} is not a truth value; use {ACCEPTED_TRUTH}")


def check_truth_header(path: Path, header: Sequence[str], truth_columns: Sequence[str]) -> list[str]:
    """The truth columns to check: all of them, or none where the manifest has none of them (built
    without the annotations, as a card may offer: its runs measure no faithfulness, and say why).
    Raises ManifestError when it has some but not all (a misspelt name)."""
    missing = [c for c in truth_columns if c not in header]
    near = {c: _near(c, header) for c in missing}
    if missing and len(missing) == len(truth_columns) and not any(near.values()):
        log.warning("manifest %s has none of the concept truth columns its card names (%s, ...): it is read as not "
                    "annotated (if it holds them under other names, correct the card's concept_truth)", path, missing[0])
        return []
    if missing:  # some there, or all misspelt (a column of that name in another case or spelling)
        meant = "; ".join(f"{quote(c, 60)} may be {quote(n, 60)}" for c, n in near.items() if n)
        raise ManifestError(path, f"has no column(s) {quote(', '.join(missing))[1:-1]}, which the card's concept_truth "
                                  f"names (header: {quote(','.join(header))[1:-1]}{'; ' + meant if meant else ''})",
                            "Add the column(s), or correct the names in the card's concept_truth", field="line 1")
    return list(truth_columns)


def _near(column: str, header: Sequence[str]) -> str | None:
    """The header's column that ``column`` most likely misspells (another case, a letter or two), if any."""
    cased = [h for h in header if h.casefold() == column.casefold()]
    close = cased or difflib.get_close_matches(column, list(header), n=1, cutoff=0.85)
    return close[0] if close else None


def bad_truth_columns(record: Mapping[str, str], truth_columns: Sequence[str]) -> list[str]:
    """The truth columns whose cell in ``record`` is no truth value."""
    bad = []
    for column in truth_columns:
        try:
            parse_truth(record.get(column, ""))
        except ValueError:
            bad.append(column)
    return bad
