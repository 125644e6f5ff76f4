"""Small helpers shared by every stage: cache location, atomic writes, hashing, name lookup."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "cache_dir",
    "atomic_write_bytes",
    "atomic_write_files",
    "atomic_write_text",
    "atomic_write_json",
    "naming_file",
    "exit_with_parent",
    "sha256_file",
    "sha256_bytes",
    "safetensors_metadata",
    "stable_hash",
    "unknown_name_message",
    "jsonable",
    "softmax",
    "torch_threads",
]


def cache_dir(*parts: str) -> Path:
    """Root of cbm's caches (``$CBM_CACHE_DIR``, default ``~/.cache/cbm``), joined with ``parts``.

    The folder is created if missing, where it can be: in a cache shared read-only the path is
    returned all the same (what only reads it works; a write there fails with its own message).
    """
    root = Path(os.environ.get("CBM_CACHE_DIR") or Path.home() / ".cache" / "cbm")
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        pass
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` would give a new file (0o666 less the umask).

    Temp files (``tempfile.mkstemp``) and ``safetensors`` are created owner-only (0o600); what cbm
    writes for others to read (models, caches, reports, datasets) is set back to this mode.
    """
    return 0o666 & ~_umask()


def set_file_mode(fd: int) -> None:
    """Give an open file :func:`file_mode`'s bits; where the system or mount cannot, leave it as it is."""
    try:
        os.fchmod(fd, file_mode())
    except (AttributeError, OSError):  # no fchmod (Windows before Python 3.13), or a mount that refuses it
        pass


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive POSIX advisory lock (``flock``) on ``folder`` itself while the block runs.

    Another process taking the same lock waits (``what`` names what is being written, for the log
    line). Locking the folder through a read-only handle leaves no lock file behind. Where no lock
    can be had (no ``fcntl``, a file system without locks such as some NFS mounts, a folder that
    cannot be made), the block runs without one: every write in cbm is atomic anyway.
    """
    folder = Path(folder)
    try:
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another cbm process is writing %s; waiting for it", what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK (NFS without locking), ENOSYS (a mount without flock)
            log.warning("cannot lock %s (%s); going on without the lock", folder, exc.strerror or exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A reader sees either the old file or the complete new one, never a half-written file; if the
    write fails (disk full, kill), the old file stays as it was.
    """
    path = Path(path)
    atomic_write_files({path: data})
    return path


def atomic_write_files(files: dict[Path, bytes | None], *, fsync: bool = True) -> None:
    """Write several files of one folder together: each to a temp file of its own (fsync, unless
    ``fsync`` is false: a file that is simply made again if a crash loses it), and only when all are
    written, each moved into place (``None``: that file is removed). A failed write (a full disk)
    leaves every file as it was, and its OSError names the file."""
    temps: dict[Path, str] = {}
    path = None
    try:
        for path, data in files.items():
            if data is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            set_file_mode(fd)  # mkstemp makes it owner-only
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        for path, data in files.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(temps[path], path)
    except BaseException as exc:
        for tmp in temps.values():  # those already moved into place are gone from here
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and path is not None:
            raise naming_file(exc, path) from exc
        raise


def naming_file(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` with the file it was writing: a write or an fsync that fails (a full disk) raises
    an OSError that names no file, which would reach the user as a bare "[Errno 28] No space left on
    device". One that names a file already is returned as it is."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path`` (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON (sorted keys off, UTF-8, trailing newline)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` block of a safetensors file's header (``ValueError`` or ``struct.error``
    where the header is damaged)."""
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError(f"header of {length} bytes in a {len(data)}-byte file")
    header = json.loads(data[8 : 8 + length])
    meta = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("__metadata__ is not an object")
    return meta


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Short hex hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def unknown_name_message(kind: str, name: str, available: Iterable[str], *, lead: bool = True) -> str:
    """Error text for an unknown registry name: the available names and the closest match.

    ``lead=False`` leaves out the opening "Unknown <kind> <name>." for messages that already say it.
    """
    names = sorted(available)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.4)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    opening = f"Unknown {kind} {name!r}. " if lead else ""
    return f"{opening}{hint}Available: {', '.join(names) or '(none)'}."


def jsonable(v: Any) -> Any:
    """``v`` as plain JSON data: numpy scalars and arrays become Python numbers and lists, mappings and
    sequences are converted item by item, anything else becomes its ``repr``."""
    import numpy as np

    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return repr(v)


def softmax(z: Any) -> Any:
    """Row-wise softmax of a ``(n, K)`` array of logits (numerically stable), as float64 numpy."""
    import numpy as np

    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:  # no rows (an empty batch): max has nothing to reduce
        return z
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch CPU threads, restoring the setting after (``None``: leave it alone)."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def exit_with_parent(creator: int | None = None, interval: float = 0.5) -> None:
    """Pool initializer (``ProcessPoolExecutor(initializer=exit_with_parent, initargs=(os.getpid(),))``):
    the worker ends once the process that started it is gone. A worker forked from it holds the write
    end of the pipe it reads its next job from, so a parent killed outright (SIGKILL, the OOM killer)
    would otherwise leave every worker waiting for a job forever. The parent is whichever process
    started the worker (the pool's process, or a fork server, which ends with it); ``creator``, the
    pool's process, tells a parent gone before the worker got here (the worker already adopted) from
    init as the parent from the start (cbm as a container's first process)."""
    import threading
    import time

    parent = os.getppid()
    if creator is not None and parent != creator and _gone(creator):  # killed before the watch began
        os._exit(1)
    if parent == 1:  # started by init itself: it outlives us anyway
        return

    def watch() -> None:
        while os.getppid() == parent:  # once the parent is gone, the worker is adopted by another process
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (no such process, or one that is dead but not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: it exists
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False
