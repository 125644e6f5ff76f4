"""A confounded card's groups against its manifest: the groups its ``confounder`` names must be
values of the group column, and each class's images must mostly come from the group the card says.

A card's ``confounder.id_groups`` (class -> the group its training, validation and in-domain test
images come from) and ``ood_groups`` (the group of its out-of-domain test images) describe the
manifest to every reader of a run: the class card, ``results.md``. A group spelt otherwise than in
the manifest ("Vienna" against "vienna"), or the two maps swapped, would describe another dataset;
the rows tell, so they are checked (every usable row, its image found or not: a partial download
is the missing files' problem). The association is judged by a rule fixed here: a class is
reported in a split where the images of the group the card does *not* give it there outnumber
those of the group it does by more than :data:`MARGIN` of the class's images in that split *and*
by more than twice the spread a fair coin would give (``2 sqrt(n)``). So a world drawn without an
association (half and half, even in a split of a few images) is not reported, and one whose maps
are swapped is, once a class has a dozen images in the split. A class that a map leaves out is not
checked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cbm.errors import quote

__all__ = ["MARGIN", "confounder_problems"]

MARGIN = 0.10
"""How much more often (as a share of a class's images in a split) the other group must occur; and
by more than ``2 sqrt(n)`` images, twice the spread of the difference under a fair coin."""


def confounder_problems(rows: Sequence[Any], header: Sequence[str], group_column: str | None, column: str,
                        id_groups: Mapping[str, str], ood_groups: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(kind, message)`` of each disagreement between the card's confounder (its ``column`` and
    maps) and ``rows`` (manifest rows; ``header``, the manifest's columns; the confounder's column is
    the rows' ``group`` where it is the card's ``group_column``, else one of their ``extra``):
    ``confounder_group`` for a column the manifest lacks or a group no row holds,
    ``confounder_association`` for a class whose images in a split mostly come from the other group."""
    if column != group_column and column not in header:
        return [("confounder_group", f"no column {quote(column, 60)}, the card's confounder.column: add it, or name "
                                     "the column that holds the groups")]
    groups = [r.group if column == group_column else (r.extra.get(column) or "").strip() or None for r in rows]
    held = Counter(g for g in groups if g)
    named = sorted(set(id_groups.values()) | set(ood_groups.values()))
    absent = [g for g in named if g not in held]
    out = []
    if absent and rows:
        values = ", ".join(quote(g, 60) for g, _ in held.most_common(8)) or "none: it is empty in every row"
        out.append(("confounder_group", (
                    f"the card's confounder names the group(s) {', '.join(quote(g, 60) for g in absent)}, which no "
                    f"row's {quote(column, 60)} holds (its values: {values}); spell the groups in the card's "
                    f"confounder.id_groups and ood_groups as the manifest does")))
    counts: dict[tuple[str, str], Counter] = {}
    for r, g in zip(rows, groups):
        counts.setdefault((r.split, r.label), Counter())[g] += 1
    for (split, label), seen in sorted(counts.items()):
        expected = (ood_groups if split == "test" else id_groups).get(label)
        other = (id_groups if split == "test" else ood_groups).get(label)
        if expected is None or other is None or expected == other or expected in absent:
            continue
        n = sum(seen.values())
        if seen[other] - seen[expected] > max(MARGIN * n, 2 * math.sqrt(n)):
            side = "confounder.ood_groups (out of domain)" if split == "test" else "confounder.id_groups (in domain)"
            out.append(("confounder_association", (
                        f"class {quote(label, 60)} in split {quote(split, 60)}: {seen[other]} of its {n} images come "
                        f"from {quote(other, 60)} and {seen[expected]} from {quote(expected, 60)}, the group the "
                        f"card's {side} gives it; correct the card's maps (swapped?) or the manifest's splits")))
    return out
