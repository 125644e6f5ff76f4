"""Image feature extraction through the feature cache, on one process or sharded under ``torchrun``.

:func:`encode_images` hashes the dataset's files, looks up the cache folder for this encoder and
these images, and computes only the shards that are missing or fail verification. DataLoader
workers decode and preprocess while the main process runs the model; features are moved to the
CPU per batch and written shard by shard, so memory stays flat however large the dataset.

Under ``torchrun`` (a process group initialised, e.g. by ``cbm features``), rank 0 decides which
shards are missing, each rank computes every ``world``-th of them and reports the shards it wrote
(with their SHA-256), and rank 0 verifies every shard against its report and writes the merged
manifest. The cache folder must be on storage every rank sees (a shared
filesystem across nodes).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from cbm.encoders import distributed
from cbm.encoders.cache import FeatureCache, ShardData
from cbm.encoders.encoder import Encoder
from cbm.encoders.hashing import content_hashes
from cbm.utils import cache_dir, folder_lock

__all__ = ["FeatureSet", "encode_images", "DEFAULT_SHARD_SIZE", "default_num_workers"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
"""Images per cache shard: what a kill can cost at most, and the unit a rank takes."""


@dataclass
class FeatureSet:
    """Image features of a dataset, aligned with the dataset's indices.

    Attributes:
        features: ``(N, D)`` float32, L2-normalised; row ``k`` belongs to ``dataset[indices[k]]``.
        indices: ``(N,)`` int64 dataset indices of the readable images, ascending.
        skipped: the unreadable images (``cbm.data.SkippedItem``: index, path, reason).
        cache_path: the cache folder, or ``None`` without a cache.
        computed: how many images this call encoded (0 when everything came from the cache).
    """

    features: np.ndarray
    indices: np.ndarray
    skipped: list[Any] = field(default_factory=list)
    cache_path: Path | None = None
    computed: int = 0

    def __len__(self) -> int:
        return len(self.indices)


def default_num_workers() -> int:
    """DataLoader workers per process: half this machine's cores, shared among local ranks, at most 8."""
    cores = os.cpu_count() or 2
    return max(1, min(8, cores // (2 * distributed.local_world_size())))


def encode_images(
    encoder: Encoder,
    dataset: Any,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Embed every image of ``dataset``, through the feature cache.

    Args:
        encoder: from :func:`cbm.encoders.create_encoder`.
        dataset: a ``cbm.data.ManifestDataset`` built with the encoder's preprocessing,
            ``card.dataset(split, transform=encoder.transform)``.
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes (decoding overlaps the model); ``None`` =
            :func:`default_num_workers`, 0 = decode in this process.
        cache_dir: cache root; ``None`` = ``cbm.utils.cache_dir("features")``.
        cache: ``False`` computes everything in memory and writes nothing (single process only).
        shard_size: images per cache shard.
        progress: show a progress bar (images/s, ETA).
        desc: the progress bar's label.

    Returns:
        A :class:`FeatureSet`; unreadable images are listed in ``skipped``, not fatal.

    Raises:
        ValueError: the dataset's transform is not the encoder's, or bad arguments.
        OSError: the cache cannot be written (disk full, read-only): the cache as it was stays
            valid, and a re-run resumes from the shards already written.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    paths = _dataset_files(dataset)
    _check_transform(encoder, dataset, cache)
    rank, world = distributed.rank_and_world()
    workers = default_num_workers() if num_workers is None else int(num_workers)
    show = progress and rank == 0
    if not cache:
        if world > 1:
            raise ValueError("encode_images(cache=False) cannot be split across ranks: sharded extraction goes through the cache")
        return _encode_uncached(encoder, dataset, paths, batch_size, workers, shard_size, show, desc)

    store = _open_store(encoder, dataset, paths, cache_dir, shard_size, show)
    _check_shared_folder(store, rank, world)
    with contextlib.ExitStack() as stack:
        if world == 1:  # ranks of one torchrun share a folder by design; separate processes take turns
            stack.enter_context(folder_lock(store.folder, f"the feature cache {store.folder}"))
        valid: dict[int, ShardData] = {}
        current = False

        def scan() -> list[int]:
            nonlocal valid, current
            valid, todo, current = store.scan()
            return todo

        todo: list[int] = distributed.on_rank_zero(scan)
        mine = todo[rank::world]
        if rank == 0:
            log.info("%s: %d images, %d of %d shards cached in %s; computing %d image(s)%s", desc, store.n_items,
                     store.n_shards - len(todo), store.n_shards, store.folder,
                     sum(store.shard_size_of(s) for s in todo), f" on {world} ranks" if world > 1 else "")
        failure = None
        written: dict[int, ShardData] = {}
        try:
            written = _extract(encoder, dataset, store, mine, batch_size, workers, show, desc)
        except Exception as exc:
            if world == 1:
                raise
            failure = f"rank {rank}: {type(exc).__name__}: {exc}"
            log.exception("feature extraction failed on rank %d", rank)
        valid = _gather_shards(store, todo, written, failure, valid, current, world, rank)
        if rank == 0:
            store.remove_stale_temp_files()
        computed = sum(store.shard_size_of(s) for s in todo)
        return _assemble(store, valid, dataset, paths, computed)


# ---------------------------------------------------------------------------- internals
def _open_store(encoder: Encoder, dataset: Any, paths: list, cache_dir, shard_size: int, show: bool) -> FeatureCache:
    """The feature cache of this encoder and these files' contents (hashed on rank 0)."""
    hashes = distributed.on_rank_zero(lambda: content_hashes(paths, missing_ok=True, progress=show, desc="hashing"))
    return FeatureCache(
        Path(cache_dir) if cache_dir is not None else _default_root(),
        encoder_key=encoder.cache_key,
        encoder_info={"name": encoder.name, **encoder.info},
        item_hashes=hashes,
        shard_size=shard_size,
        embed_dim=encoder.embed_dim,
        reading=_reading(dataset),
    )


def _check_shared_folder(store: FeatureCache, rank: int, world: int) -> None:
    """Before any rank computes: every rank must see the cache folder rank 0 writes, or rank 0's merge
    would find none of their shards (a cache on each node's own disk, another CBM_CACHE_DIR per node)."""
    if world == 1:
        return

    def mark() -> str | None:
        try:
            store.folder.mkdir(parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix=".ranks-", suffix=".tmp", dir=store.folder)  # a stale one is swept as a temp file
        except OSError:  # a read-only cache: nothing is written, so nothing to check
            return None
        os.close(fd)
        return os.path.basename(path)

    marker = distributed.on_rank_zero(mark)
    if marker is None:
        return
    seen = distributed.all_gather([(store.folder / marker).is_file(), str(store.folder)])
    if rank == 0:
        (store.folder / marker).unlink(missing_ok=True)
    blind = [f"rank {r} ({folder})" for r, (ok, folder) in enumerate(seen) if not ok]
    if blind:
        raise RuntimeError(
            f"the feature cache is not shared by the ranks: {', '.join(blind[:4])} cannot see the folder rank 0 writes, "
            f"{seen[0][1]}. Every rank writes shards that rank 0 merges, so the cache must be on storage every rank "
            "reads and writes (a shared file system): set CBM_CACHE_DIR or --cache-dir to the same shared folder on every node"
        )


def _gather_shards(store: FeatureCache, todo: list[int], written: dict[int, ShardData], failure: str | None,
                   valid: dict[int, ShardData], current: bool, world: int, rank: int) -> dict[int, ShardData]:
    """Every shard of the cache once this rank's are written: with several ranks, each checked against
    the hash its rank reported, rank 0 writing the manifest; alone, the new shards added to the valid ones."""
    if world == 1:
        valid.update(written)
        if not current:  # a complete, up-to-date cache is only read (it may live on read-only storage)
            try:
                store.write_manifest(valid)
            except PermissionError as exc:  # every shard verified by its own checksum: the features stand
                log.warning("feature cache %s: its manifest could not be written (%s); the features are read from "
                            "verified shards all the same, and a later run with write access completes it",
                            store.folder, exc.strerror or exc)
        return valid
    outcomes = distributed.all_gather({"error": failure, "shards": {str(s): d.sha256 for s, d in written.items()}})
    errors = [o["error"] for o in outcomes if o["error"]]
    if errors:
        raise RuntimeError("sharded feature extraction failed (finished shards are kept; re-run to resume): " + "; ".join(errors))
    shas = {int(s): sha for o in outcomes for s, sha in o["shards"].items()}

    def merge() -> None:
        valid.update({s: store.load(s, shas[s]) for s in todo})
        if not current:
            store.write_manifest(valid)

    distributed.on_rank_zero(merge)  # the other ranks wait for the manifest
    return valid if rank == 0 else store.load_all()


def _default_root() -> Path:
    return cache_dir("features")


def _dataset_files(dataset: Any) -> list[Path]:
    """Absolute image paths of a dataset, in index order (a ManifestDataset has ``file(i)``)."""
    if hasattr(dataset, "file") and hasattr(dataset, "__len__"):
        return [Path(dataset.file(i)) for i in range(len(dataset))]
    raise TypeError(
        f"encode_images needs a dataset that names its image files (a cbm.data.ManifestDataset with .file(i)), "
        f"got {type(dataset).__name__}; build one with card.dataset(split, transform=encoder.transform)"
    )


def _reading(dataset: Any) -> dict[str, Any]:
    """How the dataset reads its files, where that changes the pixels: the data layer's pixel
    pipeline version and a multi-frame DICOM's frame."""
    from cbm.data import PIXEL_PIPELINE_VERSION

    frame = getattr(dataset, "frame", None)
    reading: dict[str, Any] = {"pixel_pipeline": PIXEL_PIPELINE_VERSION}
    if frame not in (None, "middle"):
        reading["frame"] = frame
    return reading


def _check_transform(encoder: Encoder, dataset: Any, cache: bool) -> None:
    """Refuse to cache features of images preprocessed differently from the encoder's own way."""
    transform = getattr(dataset, "transform", None)
    if transform is encoder.transform or transform == encoder.transform:
        return
    if cache:
        raise ValueError(
            f"the dataset's transform ({transform!r}) is not encoder {encoder.name!r}'s preprocessing "
            f"({encoder.transform!r}); build the dataset with card.dataset(split, transform=encoder.transform), "
            "or pass cache=False to embed differently preprocessed images without caching them"
        )
    log.warning("encoding with a transform other than the encoder's own (%r); features are not cached", transform)


def _loader(dataset: Any, order: list[int], batch_size: int, workers: int, device: torch.device) -> DataLoader:
    from cbm.data import skipping_collate

    return DataLoader(
        Subset(dataset, order),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=skipping_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def _pathless(item: Any, dataset: Any) -> str:
    """A skipped image's reason without its path, as the cache keeps it (a path can carry a patient's
    name; the features come back under each item's path of the run that reads them)."""
    reason = item.reason
    for path in ([str(dataset.file(item.index))] if hasattr(dataset, "file") else []) + [str(item.path)]:
        # the reason is one line, its runs of spaces, tabs and newlines made one space: so the path in it too
        for written in dict.fromkeys((path, " ".join(path.split()))):
            if written.strip():
                reason = reason.replace(written, "<image>")
    return reason.replace("image <image>: ", "")  # "ImageReadError: is not an image file ...", the file named beside it


class _Pending:
    """A shard being filled batch by batch."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.features: list[np.ndarray] = []
        self.offsets: list[int] = []
        self.skipped: list[tuple[int, str]] = []

    @property
    def full(self) -> bool:
        return len(self.offsets) + len(self.skipped) == self.n


def _run(
    encoder: Encoder,
    dataset: Any,
    order: list[int],
    shard_size: int,
    shard_lengths: dict[int, int],
    batch_size: int,
    workers: int,
    show: bool,
    desc: str,
    on_shard: Any,
) -> None:
    """Encode the images ``order`` (whole shards, in order), calling ``on_shard(s, pending)`` as each fills."""
    pending = {s: _Pending(n) for s, n in shard_lengths.items()}
    bar = tqdm(total=len(order), desc=desc, unit="img", disable=not show, dynamic_ncols=True)
    try:
        for images, _labels, indices, skipped in _loader(dataset, order, batch_size, workers, encoder.device):
            touched = set()
            if len(indices):
                feats = encoder.encode_image(images).numpy()
                for row, i in enumerate(indices.tolist()):
                    s = i // shard_size
                    pending[s].features.append(feats[row])
                    pending[s].offsets.append(i - s * shard_size)
                    touched.add(s)
            for item in skipped:
                s = item.index // shard_size
                pending[s].skipped.append((item.index - s * shard_size, _pathless(item, dataset)))
                touched.add(s)
            for s in sorted(touched):
                if pending[s].full:
                    on_shard(s, pending.pop(s))
            bar.update(len(indices) + len(skipped))
    finally:
        bar.close()
    if pending:  # a dataset that returned fewer items than it has (should not happen)
        raise RuntimeError(f"the data loader did not return every image of shard(s) {sorted(pending)[:5]}")


def _extract(
    encoder: Encoder,
    dataset: Any,
    store: FeatureCache,
    shards: Sequence[int],
    batch_size: int,
    workers: int,
    show: bool,
    desc: str,
) -> dict[int, ShardData]:
    """Compute and write ``shards``; returns them as written."""
    written: dict[int, ShardData] = {}
    if not shards:
        return written
    order = [i for s in shards for i in range(*store.bounds(s))]
    t0 = time.perf_counter()

    def write(s: int, p: _Pending) -> None:
        feats = np.stack(p.features) if p.features else np.zeros((0, store.embed_dim), np.float32)
        try:
            written[s] = store.write(s, feats, np.array(p.offsets, dtype=np.int64), p.skipped)
        except OSError as exc:
            fix = ("give cbm a cache it may write to (CBM_CACHE_DIR / --cache-dir), or run with the cache off"
                   if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else
                   "free disk space (or set CBM_CACHE_DIR / --cache-dir elsewhere)")
            raise OSError(
                exc.errno,
                f"could not write feature cache shard {s} in {store.folder} ({exc.strerror or exc}); the shards "
                f"already written stay valid: {fix} and re-run to resume",
            ) from exc

    _run(encoder, dataset, order, store.shard_size, {s: store.shard_size_of(s) for s in shards}, batch_size, workers, show, desc, write)
    elapsed = time.perf_counter() - t0
    log.info("%s: encoded %d images in %.1f s (%.1f images/s)", desc, len(order), elapsed, len(order) / max(elapsed, 1e-9))
    return written


def _encode_uncached(
    encoder: Encoder, dataset: Any, paths: list[Path], batch_size: int, workers: int, shard_size: int, show: bool, desc: str
) -> FeatureSet:
    n = len(paths)
    n_shards = -(-n // shard_size)
    lengths = {s: min(shard_size, n - s * shard_size) for s in range(n_shards)}
    shards: dict[int, ShardData] = {}

    def keep(s: int, p: _Pending) -> None:
        feats = np.stack(p.features) if p.features else np.zeros((0, encoder.embed_dim), np.float32)
        shards[s] = ShardData(s, feats, np.array(p.offsets, dtype=np.int64), sorted(p.skipped))

    _run(encoder, dataset, list(range(n)), shard_size, lengths, batch_size, workers, show, desc, keep)
    return _gather(shards, shard_size, n_shards, encoder.embed_dim, dataset, paths, None, n)


def _assemble(store: FeatureCache, shards: dict[int, ShardData], dataset: Any, paths: list[Path], computed: int) -> FeatureSet:
    return _gather(shards, store.shard_size, store.n_shards, store.embed_dim, dataset, paths, store.folder, computed)


def _gather(
    shards: dict[int, ShardData],
    shard_size: int,
    n_shards: int,
    embed_dim: int,
    dataset: Any,
    paths: list[Path],
    folder: Path | None,
    computed: int,
) -> FeatureSet:
    """One FeatureSet from shards: rows in dataset order, skipped items with their paths."""
    from cbm.data import SkippedItem

    feats, idx, skipped = [], [], []
    rows = getattr(dataset, "rows", None)
    for s in range(n_shards):
        shard = shards[s]
        start = s * shard_size
        order = np.argsort(shard.offsets, kind="stable")
        feats.append(shard.features[order])
        idx.append(shard.offsets[order] + start)
        for offset, reason in shard.skipped:
            i = start + offset
            skipped.append(SkippedItem(i, rows[i].path if rows is not None else str(paths[i]), reason))
    features = np.concatenate(feats) if feats else np.zeros((0, embed_dim), np.float32)
    indices = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    return FeatureSet(features=features, indices=indices, skipped=skipped, cache_path=folder, computed=computed)
