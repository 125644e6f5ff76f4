"""The content-addressed feature cache: safetensors shards plus a ``manifest.json``.

Layout::

    <cache>/<encoder.cache_key>/<dataset key>/
        manifest.json                           encoder, preprocessing, precision, per-image SHA-256, shards
        shard-00000-<shard key>.safetensors     features (n, D) float32 + local offsets; metadata
        shard-00001-<shard key>.safetensors
        ...

The encoder key covers the architecture, weights hash, preprocessing and precision; the dataset
key covers the content hash of every image, in order, the shard size, and how images are read
(which frame of a multi-frame DICOM). Shard ``s`` holds
images ``[s * shard_size, (s + 1) * shard_size)``; its key is the hash of the encoder key and those
images' content hashes, so a shard with the same images under the same encoder is found (and
copied) from a sibling dataset folder instead of being recomputed.

Every file is written atomically (a temp file in the same folder, then ``os.replace``), so a
kill or a full disk leaves either the old file or the new one. Every shard read is verified:
the format and keys in its metadata, the count, shape, dtype and range of its tensors, the unit
norm of its rows, and, when the manifest lists it, its SHA-256. A shard that fails is reported and
recomputed. Image paths are not stored (they can carry patient names); only content hashes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbm.utils import atomic_write_bytes, atomic_write_json, safetensors_metadata, sha256_bytes, stable_hash

__all__ = ["FeatureCache", "ShardData", "CorruptShard", "FORMAT", "dataset_key"]

log = logging.getLogger(__name__)

FORMAT = "cbm-features/1"
_STALE_TMP_SECONDS = 3600.0
_NORM_TOLERANCE = 1e-3

# Skips that say more about the machine than the file: a codec not installed, the pixel budget
# ($CBM_MAX_PIXELS), no access. A shard holding one is read again on the next run, not served.
_MACHINE_SKIPS = ("MissingCodecError", "PermissionError", "TimeoutError", "OSError")


def _may_read_now(reason: str) -> bool:
    """Whether an image skipped for ``reason`` (``"Type: message"``) may read on another run."""
    return reason.startswith(_MACHINE_SKIPS) or "CBM_MAX_PIXELS" in reason


def _content_digest(features: np.ndarray, offsets: np.ndarray, skipped: list[tuple[int, str]]) -> str:
    """SHA-256 of a shard's contents, kept in its own metadata: a shard verifies without a manifest."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(features, np.float32).tobytes())
    h.update(np.ascontiguousarray(offsets, np.int64).tobytes())
    h.update(json.dumps(skipped).encode())
    return h.hexdigest()


def _sibling_hash(shard_path: Path) -> str | None:
    """The SHA-256 another dataset folder's manifest lists for ``shard_path`` (None where it lists none)."""
    manifest = shard_path.parent / "manifest.json"
    try:
        stamp = manifest.stat().st_mtime_ns
    except OSError:
        return None
    return _manifest_hashes(str(manifest), stamp).get(shard_path.name)


@functools.lru_cache(maxsize=8)
def _manifest_hashes(manifest: str, stamp: int) -> dict[str, str]:
    """``shard file -> SHA-256`` of a manifest (read once per version, ``stamp``: not once per shard:
    a manifest lists every image's hash, megabytes for a large dataset)."""
    del stamp  # part of the cache key only
    try:
        data = json.loads(Path(manifest).read_text(encoding="utf-8"))
        return {r["file"]: r.get("sha256") for r in data.get("shards", []) if isinstance(r, dict) and "file" in r}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


class CorruptShard(Exception):
    """A shard file that exists but cannot be trusted (the message says why)."""


class UnvouchedShard(CorruptShard):
    """A shard written before shards carried their own checksum, with no manifest listing it (a run
    of an older cbm stopped before its end): not damaged as far as anyone knows, just unverifiable."""


@dataclass
class ShardData:
    """One verified shard in memory."""

    index: int  # shard number within its dataset
    features: np.ndarray  # (n_ok, D) float32, L2-normalised rows
    offsets: np.ndarray  # (n_ok,) int64 positions within the shard
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (position within the shard, reason)
    sha256: str = ""  # of the file
    file: str = ""  # file name within the dataset folder

    def record(self, n_items: int) -> dict[str, Any]:
        """The manifest's entry for this shard."""
        return {
            "index": self.index,
            "file": self.file,
            "sha256": self.sha256,
            "n_items": n_items,
            "n_features": int(len(self.offsets)),
            "n_skipped": len(self.skipped),
        }


def dataset_key(item_hashes: list[str], shard_size: int, reading: dict[str, Any] | None = None) -> str:
    """Key of a dataset folder: the content hash of every image in order, the shard size, and how
    images are read (the frame of a multi-frame DICOM)."""
    return stable_hash({"items": item_hashes, "shard_size": int(shard_size), "reading": reading or {}}, length=24)


class FeatureCache:
    """One dataset's features under one encoder, in ``<root>/<encoder key>/<dataset key>/``.

    Args:
        root: the cache root (``cbm.utils.cache_dir("features")`` by default in ``encode_images``).
        encoder_key: ``encoder.cache_key``.
        encoder_info: what the key is made of (stored in the manifest for people and checks).
        item_hashes: SHA-256 of each image's content, in dataset order.
        shard_size: images per shard.
        embed_dim: feature size.
        reading: how the dataset reads images, when it matters (``{"frame": "middle"}``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        encoder_key: str,
        encoder_info: dict[str, Any],
        item_hashes: list[str],
        shard_size: int,
        embed_dim: int,
        reading: dict[str, Any] | None = None,
    ) -> None:
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.encoder_key = encoder_key
        self.encoder_info = encoder_info
        self.item_hashes = list(item_hashes)
        self.shard_size = int(shard_size)
        self.embed_dim = int(embed_dim)
        self.reading = dict(reading or {})
        self.key = dataset_key(self.item_hashes, self.shard_size, self.reading)
        self.folder = Path(root) / encoder_key / self.key
        self.manifest_path = self.folder / "manifest.json"

    # ------------------------------------------------------------------ geometry
    @property
    def n_items(self) -> int:
        return len(self.item_hashes)

    @property
    def n_shards(self) -> int:
        return -(-self.n_items // self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        """Dataset positions ``[start, stop)`` of ``shard``."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_items)

    def shard_size_of(self, shard: int) -> int:
        start, stop = self.bounds(shard)
        return stop - start

    def shard_key(self, shard: int) -> str:
        start, stop = self.bounds(shard)
        return stable_hash({"encoder": self.encoder_key, "reading": self.reading, "items": self.item_hashes[start:stop]}, length=24)

    def shard_file(self, shard: int) -> str:
        return f"shard-{shard:05d}-{self.shard_key(shard)}.safetensors"

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The folder's manifest if it belongs to this encoder and dataset; ``None`` otherwise.

        A manifest written by another encoder, preprocessing or precision, or for other images,
        is reported and ignored (its shards are then verified one by one, and rejected).
        """
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("feature cache manifest %s is unreadable (%s); a shard is kept only where its own checksum "
                        "verifies, and the others are recomputed", self.manifest_path, exc)
            return None
        problems = []
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            problems.append(f"format {data.get('format') if isinstance(data, dict) else None!r} (expected {FORMAT!r})")
        else:
            enc, ds = data.get("encoder"), data.get("dataset")
            if not isinstance(enc, dict) or not isinstance(ds, dict) or not isinstance(data.get("shards"), list):
                problems.append("fields of the wrong type (encoder, dataset, shards)")
            elif enc.get("cache_key") != self.encoder_key:
                problems.append(f"encoder {enc.get('name')!r} with key {enc.get('cache_key')!r} (this one is {self.encoder_key!r})")
            elif (
                ds.get("item_sha256") != self.item_hashes
                or ds.get("shard_size") != self.shard_size
                or ds.get("reading", {}) != self.reading
            ):
                problems.append("other images, shard size or reading")
        if problems:
            log.warning(
                "feature cache manifest %s describes %s; it is not used: a shard is kept only where its own checksum "
                "verifies, and the others are recomputed", self.manifest_path, "; ".join(problems),
            )
            return None
        return data

    def write_manifest(self, shards: dict[int, ShardData]) -> Path:
        """Write ``manifest.json`` (atomically) listing every shard; the cache is then complete."""
        missing = [s for s in range(self.n_shards) if s not in shards]
        if missing:
            raise RuntimeError(f"cannot write the manifest of {self.folder}: shards {missing[:10]} are missing")
        from cbm._version import __version__

        manifest = {
            "format": FORMAT,
            "complete": True,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cbm_version": __version__,
            "encoder": {"cache_key": self.encoder_key, **self.encoder_info},
            "dataset": {
                "key": self.key,
                "n_items": self.n_items,
                "shard_size": self.shard_size,
                "reading": self.reading,
                "n_features": int(sum(len(shards[s].offsets) for s in shards)),
                "n_skipped": int(sum(len(shards[s].skipped) for s in shards)),
                "item_sha256": self.item_hashes,
            },
            "shards": [shards[s].record(self.shard_size_of(s)) for s in range(self.n_shards)],
        }
        return atomic_write_json(self.manifest_path, manifest, indent=1)

    # ------------------------------------------------------------------ shards
    def scan(self) -> tuple[dict[int, ShardData], list[int], bool]:
        """Verified shards on disk (or adopted from sibling folders), the shards still to compute, and
        whether the manifest already lists exactly the shards found (so it need not be rewritten)."""
        listed = self._listed_hashes()
        valid: dict[int, ShardData] = {}
        todo: list[int] = []
        for s in range(self.n_shards):
            shard = self._load_or_report(s, listed.get(self.shard_file(s))) or self._adopt(s)
            if shard is not None and any(_may_read_now(reason) for _, reason in shard.skipped):
                log.info("feature cache %s: shard %d skipped images for a reason of this machine's (a codec, the "
                         "pixel budget, access); reading them again", self.folder, s)
                shard = None
            if shard is None:
                todo.append(s)
            else:
                valid[s] = shard
        current = not todo and all(listed.get(d.file) == d.sha256 for d in valid.values())
        return valid, todo, current

    def load_all(self) -> dict[int, ShardData]:
        """Every shard, each verified against the manifest (for ranks reading what rank 0 merged).

        Raises:
            RuntimeError: no valid manifest, or a shard is missing or fails verification.
        """
        listed = self._listed_hashes()
        if not listed:
            raise RuntimeError(f"feature cache {self.folder} has no valid manifest to read the shards by")
        try:
            return {s: self.load(s, listed.get(self.shard_file(s)) or "unlisted") for s in range(self.n_shards)}
        except (FileNotFoundError, CorruptShard) as exc:
            raise RuntimeError(f"feature cache {self.folder} is incomplete or damaged ({exc}); re-run to repair it") from None

    def _listed_hashes(self) -> dict[str, str]:
        """``shard file -> SHA-256`` from this folder's manifest (empty without a valid one)."""
        manifest = self.read_manifest() or {}
        return {r["file"]: r.get("sha256") for r in manifest.get("shards", []) if isinstance(r, dict) and "file" in r}

    def load(self, shard: int, expected_sha256: str | None = None) -> ShardData:
        """Read and verify one shard.

        Raises:
            FileNotFoundError: the shard has not been written.
            CorruptShard: it exists but fails verification.
        """
        return self._read(self.folder / self.shard_file(shard), shard, expected_sha256)[0]

    def write(self, shard: int, features: np.ndarray, offsets: np.ndarray, skipped: list[tuple[int, str]]) -> ShardData:
        """Write one shard atomically and return it as it will be read back."""
        from safetensors.numpy import save

        n = self.shard_size_of(shard)
        features = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.embed_dim)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        skipped = sorted((int(o), str(r)) for o, r in skipped)
        metadata = {
            "format": FORMAT,
            "encoder_key": self.encoder_key,
            "shard_key": self.shard_key(shard),
            "n_items": str(n),
            "embed_dim": str(self.embed_dim),
            "skipped": json.dumps(skipped),
            "content_sha256": _content_digest(features, offsets, skipped),
        }
        data = save({"features": features, "offsets": offsets}, metadata=metadata)
        file = self.shard_file(shard)
        atomic_write_bytes(self.folder / file, data)
        return ShardData(shard, features, offsets, skipped, sha256_bytes(data), file)

    def remove_stale_temp_files(self, older_than: float = _STALE_TMP_SECONDS) -> int:
        """Delete temp files a killed writer left behind (only old ones: another run may be writing)."""
        removed = 0
        now = time.time()
        for tmp in self.folder.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
            except PermissionError:  # a cache shared read-only: leave what its owner left
                log.debug("cannot remove the stale temp file %s (read-only cache)", tmp)
        return removed

    def _load_or_report(self, shard: int, expected_sha256: str | None) -> ShardData | None:
        try:
            return self.load(shard, expected_sha256)
        except FileNotFoundError:
            return None
        except UnvouchedShard as exc:
            log.info("feature cache shard %s cannot be verified (%s); recomputing it", self.folder / self.shard_file(shard), exc)
            return None
        except CorruptShard as exc:
            log.warning("feature cache shard %s is corrupt (%s); recomputing it", self.folder / self.shard_file(shard), exc)
            return None

    def _adopt(self, shard: int) -> ShardData | None:
        """The same shard (same images, same encoder) from another dataset folder, copied here."""
        pattern = f"shard-*-{self.shard_key(shard)}.safetensors"
        for other in sorted(self.folder.parent.glob(f"*/{pattern}")):
            if other.parent == self.folder:
                continue
            try:  # verified by its own checksum, or by the hash its folder's manifest lists for it
                found, data = self._read(other, shard, _sibling_hash(other))
            except (FileNotFoundError, CorruptShard):
                continue
            found.file = self.shard_file(shard)
            try:
                atomic_write_bytes(self.folder / found.file, data)
            except PermissionError:  # a cache shared read-only: serve the sibling's verified copy as it is
                log.debug("shard %d read from %s (this folder is read-only)", shard, other)
                return found
            log.debug("shard %d reused from %s", shard, other)
            return found
        return None

    def _read(self, path: Path, shard: int, expected_sha256: str | None) -> tuple[ShardData, bytes]:
        data = path.read_bytes()  # FileNotFoundError propagates: "not written yet"
        digest = sha256_bytes(data)
        if expected_sha256 and digest != expected_sha256:
            raise CorruptShard(f"its SHA-256 {digest[:12]}... differs from the manifest's {expected_sha256[:12]}...")
        try:
            meta = safetensors_metadata(data)
            from safetensors.numpy import load

            tensors = load(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same: not a usable shard
            raise CorruptShard(f"unreadable safetensors file ({type(exc).__name__}: {exc})") from None
        n = self.shard_size_of(shard)
        expect = {"format": FORMAT, "encoder_key": self.encoder_key, "shard_key": self.shard_key(shard), "n_items": str(n)}
        wrong = [f"{k}={meta.get(k)!r} (expected {v!r})" for k, v in expect.items() if meta.get(k) != v]
        if wrong:
            raise CorruptShard("metadata does not match: " + ", ".join(wrong))
        if set(tensors) != {"features", "offsets"}:
            raise CorruptShard(f"tensors {sorted(tensors)} (expected features, offsets)")
        features, offsets = tensors["features"], tensors["offsets"]
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[1] != self.embed_dim:
            raise CorruptShard(f"features {features.dtype} {features.shape} (expected float32 (n, {self.embed_dim}))")
        if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) != len(features):
            raise CorruptShard(f"offsets {offsets.dtype} {offsets.shape} do not match {len(features)} feature rows")
        try:
            skipped = [(int(o), str(r)) for o, r in json.loads(meta.get("skipped", "[]"))]
        except (ValueError, TypeError) as exc:
            raise CorruptShard(f"unreadable skipped list ({exc})") from None
        if "content_sha256" in meta and meta["content_sha256"] != _content_digest(features, offsets, skipped):
            raise CorruptShard("its features differ from the checksum it was written with")
        if "content_sha256" not in meta and not expected_sha256:  # written before shards carried one
            raise UnvouchedShard("written by an older cbm before its run ended: no checksum of its own, and no "
                                 "manifest lists it")
        positions = np.concatenate([offsets, np.array([o for o, _ in skipped], dtype=np.int64)])
        if len(positions) != n or not np.array_equal(np.sort(positions), np.arange(n)):
            raise CorruptShard(f"{len(offsets)} features + {len(skipped)} skipped do not cover its {n} images exactly once")
        if len(features):
            norms = np.linalg.norm(features, axis=1)
            bad = ~np.isfinite(norms) | ((np.abs(norms - 1.0) > _NORM_TOLERANCE) & (norms != 0.0))
            if bad.any():
                raise CorruptShard(f"{int(bad.sum())} feature row(s) are not finite unit vectors")
        return ShardData(shard, features, offsets, skipped, digest, path.name), data
