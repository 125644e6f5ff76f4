"""A manifest's rows against the file system: which name an image file, what to say of those that
do not (a Windows separator, a path written from the manifest's folder or the current one, a name
in another letter case), and two names of one file (a link) as one file. Split from ``_manifest``."""

from __future__ import annotations

import functools
import os
import stat
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

from cbm.errors import quote, quote_path

__all__ = ["existing_rows", "in_existing_form", "note_duplicate"]


def note_duplicate(found: Any, seen: dict[Any, tuple[int, str, str]], key: Any, shown: str, line: int, split: str,
                    label: str, usable: bool) -> None:
    """Note a usable row naming a file an earlier usable row named: a leak across splits, a second label
    for it, else a repeat (a row already left out for a problem of its own is not noted again, as a
    repeat it may not be)."""
    if not usable:
        return
    if key not in seen:
        seen[key] = (line, split, label)
        return
    first, first_split, first_label = seen[key]
    if split != first_split:
        found.note("duplicate_across_splits", line, f"{shown} ({first_split} on line {first}, {split} on line {line})")
    elif label != first_label:
        found.note("conflicting_label", line, f"{shown} ({quote(first_label, 60)} on line {first}, "
                                              f"{quote(label, 60)} on line {line})")
    else:
        found.note("duplicate_path", line, f"{shown} (lines {first} and {line})")


def existing_rows(rows: list[Any], image_root: Path, path: Path, found: Any) -> list[Any]:
    """The rows (``ManifestRow``) whose image file exists; two names of one file (a link) count as a
    duplicate. ``found`` notes the problems (``_manifest._Problems``; typed loosely, as importing it
    would make an import circle)."""
    if not image_root.is_dir() and not all(Path(r.path).is_absolute() for r in rows):
        raise FileNotFoundError(
            f"image folder {image_root} (for manifest {path}) does not exist: get the images and put them "
            f"there, or point the card's image_root / image_root_env variable at them"
        )
    _other_case.cache_clear()  # folders read by an earlier check may have changed since
    kept: list[Any] = []
    seen: dict[tuple[int, int], tuple[int, str, str]] = {}
    for r in rows:
        r = in_existing_form(r, image_root)
        f = Path(r.path) if Path(r.path).is_absolute() else image_root / r.path
        try:
            info = f.stat()
        except FileNotFoundError:
            slashed = _slashed(r.path, image_root)
            if slashed:  # written on Windows: the same path with '/' names the file
                found.note("windows_separator", r.line, f"{quote_path(r.path, 80)} (line {r.line}: {quote_path(slashed, 80)[1:-1]} exists)")
            elif not Path(r.path).is_absolute() and _names_file(r.path, path.parent):  # written from the CSV's folder
                found.note("relative_to_manifest", r.line, f"{quote_path(r.path, 80)} (line {r.line})")
            else:
                hint = _missing_hint(r.path, f)
                found.note("missing_file", r.line, f"{quote_path(f, 120)[1:-1]} (line {r.line}{': ' + hint if hint else ''})")
            continue
        except (OSError, ValueError) as exc:  # a name too long, a loop of links, no permission
            found.note("bad_path", r.line, f"{quote_path(r.path, 80)} (line {r.line}: {exc.strerror if isinstance(exc, OSError) else exc})")
            continue
        if not stat.S_ISREG(info.st_mode):
            found.note("missing_file", r.line, f"{quote_path(f, 120)[1:-1]} (line {r.line}, not a file)")
            continue
        before = len(found.bad_lines)
        note_duplicate(found, seen, (info.st_dev, info.st_ino), quote_path(r.path, 80)[1:-1], r.line, r.split, r.label,
                        usable=True)
        if len(found.bad_lines) == before:
            kept.append(r)
    return kept


def in_existing_form(row: Any, image_root: Path) -> Any:
    """``row`` with its path in the Unicode form (composed or decomposed) that names a file, where only
    that one does: macOS tools write names decomposed, most others composed, and the file system compares bytes."""
    if row.path.isascii():
        return row
    forms = [row.path] + [unicodedata.normalize(form, row.path) for form in ("NFC", "NFD")]
    found = next((p for p in forms if _names_file(p, image_root)), row.path)
    return row if found == row.path else replace(row, path=found)


def _names_file(path: str, image_root: Path) -> bool:
    """Whether ``path`` (relative to ``image_root``) names a file; a name the file system refuses names none."""
    try:
        return (Path(path) if Path(path).is_absolute() else image_root / path).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _slashed(path: str, image_root: Path) -> str | None:
    """``path`` with its backslashes made '/', where that names a file and the original does not."""
    if "\\" not in path or os.sep != "/":
        return None
    slashed = path.replace("\\", "/")
    return slashed if _names_file(slashed, image_root) else None


def _missing_hint(path: str, f: Path) -> str | None:
    """What names the file a missing row meant, where something does: the same name in another
    letter case (``.JPG`` for ``.jpg``), or the path read from the current folder."""
    other = _other_case(str(f.parent)).get(f.name.casefold())
    if other and other != f.name:
        return f"{quote_path(other, 80)[1:-1]} exists there; file names are case-sensitive"
    if not Path(path).is_absolute() and _names_file(path, Path.cwd()):
        return (f"it names a file from the current folder {quote_path(Path.cwd(), 80)[1:-1]}; paths are relative to "
                "the image folder")
    return None


@functools.lru_cache(maxsize=256)
def _other_case(folder: str) -> dict[str, str]:
    """A folder's file names by their case-folded form (read once per folder per manifest check:
    :func:`existing_rows` clears the cache)."""
    try:
        return {name.casefold(): name for name in os.listdir(folder)}
    except OSError:
        return {}
