"""The errors cbm raises for bad input, one family per kind of input.

Every error about a file a user gave (an image, a data card, a manifest, a concept store, a saved
model) is an :class:`InputError`: its message names the file, the field or offset when there is
one, what is wrong (quoting at most :data:`QUOTE_LIMIT` characters of a bad value) and the fix.
The ``cbm`` command prints such an error as one line, never a traceback.

    try:
        card = load_card("my-derm/card.yaml")
    except InputError as err:
        print(err.path, err.field, err.fix)

They subclass ``ValueError``, so code that caught ``ValueError`` before still does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

__all__ = [
    "QUOTE_LIMIT",
    "quote",
    "quote_path",
    "InputError",
    "ImageError",
    "CardError",
    "ManifestError",
    "ConceptStoreError",
    "ModelFormatError",
    "error_text",
]

QUOTE_LIMIT = 200
"""The most characters of a bad value an error message quotes."""


def error_text(exc: BaseException) -> str:
    """The line the ``cbm`` command prints for a user-facing error: its message, and for a disk that
    is full (or over quota) while writing a named file, what to do about it."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno in _FULL and exc.filename is not None:
        text += (f"; free space on the disk holding {Path(exc.filename).parent} (or write to another disk) and run "
                 "again: files are written whole or not at all, and what was finished is reused")
    return text


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (a huge or nested bad value stays a short message)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote_path(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A path in quotes as its user wrote it, cut as :func:`quote` cuts: a backslash (a Windows path)
    stays one backslash, where ``repr`` doubles it; a character that cannot be printed is escaped."""
    text = "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value)) + "'"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class InputError(ValueError):
    """A bad input file: ``path``, optional ``field`` (or offset), ``problem`` and ``fix``.

    The message reads ``<kind> <path>: <field> <problem>. <fix>``.
    """

    kind = "input"

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str = "", *, field: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f" {self.path}:" if self.path is not None else ":"
        what = f" {self.field_label(field)}" if field else ""
        text = f"{self.kind}{where}{what} {problem}".rstrip(". ")
        super().__init__(f"{text}. {fix}" if fix else text)

    def __reduce__(self):  # picklable across processes (DataLoader workers) with its fields
        return (_rebuild, (type(self), self.path, self.problem, self.fix, self.field))

    @staticmethod
    def field_label(field: str) -> str:
        """How the message names the field (a kind may spell it out)."""
        return field


def _rebuild(cls, path, problem, fix, field):
    return cls(path, problem, fix, field=field)


class ImageError(InputError):
    """An image file that cannot be read, or whose header and data disagree."""

    kind = "image"


class CardError(InputError):
    """An invalid data card (``card.yaml``)."""

    kind = "data card"

    @staticmethod
    def field_label(field: str) -> str:
        return field if field.startswith("line ") else f"field {field!r}"


class ManifestError(InputError):
    """An invalid manifest CSV; ``report`` holds every problem when the manifest was checked as a whole."""

    kind = "manifest"

    def __init__(self, path: str | os.PathLike | None, problem: str, fix: str = "", *, field: str | None = None,
                 report: Any = None) -> None:
        super().__init__(path, problem, fix, field=field)
        self.report = report  # a cbm.data.ManifestReport, or None for an error in the file's structure

    def __reduce__(self):
        return (_rebuild_manifest, (self.path, self.problem, self.fix, self.field, self.report))


def _rebuild_manifest(path, problem, fix, field, report):
    return ManifestError(path, problem, fix, field=field, report=report)


class ConceptStoreError(InputError):
    """An invalid concept store (``concepts.json``)."""

    kind = "concept store"


class ModelFormatError(InputError):
    """A saved model folder that is damaged, incomplete or from an incompatible cbm."""

    kind = "model"
