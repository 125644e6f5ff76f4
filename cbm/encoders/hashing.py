"""Content hashes of files (images, checkpoints), each file read once.

A feature cache is keyed by what the files *contain*, so renaming or copying an image keeps its
features and editing one in place invalidates them. Reading every file on every run would cost
more than the cache saves on a large dataset, so each hash is remembered in a small JSON memo
under ``cbm.utils.cache_dir("file-hashes")``, keyed by path and stamped with the file's size,
modification and change times and inode: an unchanged file is only ``stat``-ed, a changed one
(any of the four) is read and hashed again.
The memo only decides *when* to re-read; the hash itself is always SHA-256 of the content.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from cbm.utils import atomic_write_json, cache_dir, sha256_file, stable_hash

__all__ = ["file_sha256", "content_hashes", "MISSING"]

log = logging.getLogger(__name__)

_MEMO_VERSION = 2  # 2: the change time and the inode joined the stamp


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of one file's content, read only if it changed since it was last hashed."""
    return content_hashes([path], progress=False)[0]


MISSING = "missing"
"""The hash :func:`content_hashes` gives a file it cannot read, when ``missing_ok``."""


def content_hashes(
    paths: Sequence[str | os.PathLike],
    *,
    missing_ok: bool = False,
    progress: bool = True,
    desc: str = "hashing",
) -> list[str]:
    """SHA-256 of each file's content, in the order given.

    Args:
        paths: files to hash (duplicates allowed).
        missing_ok: give a missing or unreadable file the hash :data:`MISSING` instead of raising
            (a dataset reports such files itself, as skipped items).
        progress: show a progress bar while files are read.
        desc: the progress bar's label.

    Raises:
        FileNotFoundError: a file is missing and ``missing_ok`` is false (the message names it).
    """
    resolved = [Path(p).resolve() for p in paths]
    if not resolved:
        return []
    root = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    memo_path = cache_dir("file-hashes") / f"{stable_hash(str(root))}.json"
    memo = _read_memo(memo_path, root)
    out: list[str] = []
    changed = 0
    bar = tqdm(total=len(resolved), desc=desc, unit="file", disable=not progress, leave=False)
    for path in resolved:
        key = str(path.relative_to(root))
        try:
            st = path.stat()
            # size and both times and the inode: a copy over the file (cp -p, rsync -a) that keeps the
            # size and the modification time still moves the change time
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            entry = memo.get(key)
            if entry is None or entry[:4] != stamp:
                entry = [*stamp, sha256_file(path)]
                memo[key] = entry
                changed += 1
            out.append(entry[4])
        except OSError as exc:
            if not missing_ok:
                bar.close()
                raise FileNotFoundError(f"cannot read {path} ({exc.strerror or exc}); check the manifest and the image root") from None
            out.append(MISSING)
        bar.update()
    bar.close()
    if changed:
        try:
            atomic_write_json(memo_path, {"version": _MEMO_VERSION, "root": str(root), "files": memo}, indent=None)
        except OSError as exc:  # the memo only saves time; a failed write must not fail the run
            log.warning("could not save the file-hash memo %s: %s", memo_path, exc)
    return out


def _read_memo(path: Path, root: Path) -> dict[str, list]:
    """The memo's ``relative path -> [size, mtime_ns, ctime_ns, inode, sha256]`` map, or empty if absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") == _MEMO_VERSION and data.get("root") == str(root):
            return dict(data["files"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("ignoring unreadable file-hash memo %s: %s", path, exc)
    return {}
