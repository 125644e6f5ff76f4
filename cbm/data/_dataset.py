"""A torch Dataset over manifest rows that never dies on one bad file.

``ManifestDataset[i]`` returns ``(image_tensor, label_index, i)``, or a :class:`SkippedItem` when
the file cannot be read or transformed; :func:`skipping_collate` splits a batch into
``(images, labels, indices, skipped)``. So a DataLoader with workers keeps going past a truncated
PNG or a DICOM without its codec, and :class:`SkippedReport` tells the user at the end which files
were left out and why.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cbm.data._image import FramePolicy, read_image
from cbm.data._manifest import Manifest, ManifestRow

__all__ = ["SkippedItem", "SkippedReport", "ManifestDataset", "skipping_collate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedItem:
    """An item that could not be loaded: its dataset index, file path and the reason."""

    index: int
    path: str
    reason: str


class ManifestDataset(Dataset):
    """Images of manifest rows as tensors, with labels and dataset indices.

    Args:
        manifest: the rows (usually one split, ``card.manifest().split("train")``).
        transform: image -> tensor, e.g. :func:`cbm.data.transforms.encoder_transform` or an
            encoder's ``.transform``; called with a :class:`~cbm.data.LoadedImage`. Without one,
            items are ``(C, H, W)`` float tensors of the image's own size.
        frame: frame policy for multi-frame files (see :func:`cbm.data.read_image`).

    ``dataset[i]`` is ``(image, label_index, i)`` or a :class:`SkippedItem`; ``i`` indexes
    ``dataset.rows``.
    """

    def __init__(
        self,
        manifest: Manifest,
        transform: Callable[[Any], torch.Tensor] | None = None,
        frame: FramePolicy = "middle",
    ) -> None:
        self.manifest = manifest
        self.rows: list[ManifestRow] = list(manifest.rows)
        self.transform = transform
        self.frame = frame

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"ManifestDataset({len(self)} images, root={self.manifest.image_root})"

    @property
    def labels(self) -> list[int]:
        return [r.label_index for r in self.rows]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.rows]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    def file(self, index: int) -> Path:
        """Absolute path of item ``index``'s image."""
        return self.manifest.file(self.rows[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int] | SkippedItem:
        row = self.rows[index]
        try:
            image = read_image(self.manifest.file(row), frame=self.frame)
            if self.transform is not None:
                tensor = self.transform(image)
            else:
                tensor = torch.from_numpy(image.pixels).permute(2, 0, 1).contiguous()
        except Exception as exc:  # one bad file must not end the run (or a DataLoader worker)
            return SkippedItem(index, row.path, _reason(exc))
        return tensor, row.label_index, index


def _reason(exc: BaseException) -> str:
    """One-line reason naming the error type (the message already names the file and the fix)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def skipping_collate(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[SkippedItem]]:
    """Collate ``ManifestDataset`` items into ``(images, labels, indices, skipped)``.

    ``images`` stacks the readable items (an empty tensor when none was readable), ``labels`` and
    ``indices`` are int64, ``skipped`` lists the :class:`SkippedItem` s of the batch. Use it as a
    DataLoader's ``collate_fn``.
    """
    good = [b for b in batch if not isinstance(b, SkippedItem)]
    skipped = [b for b in batch if isinstance(b, SkippedItem)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    shapes = {tuple(g[0].shape) for g in good}
    if len(shapes) > 1:
        raise ValueError(
            f"images in one batch have different shapes {sorted(shapes)}; give the dataset a transform that "
            f"resizes them (e.g. cbm.data.transforms.encoder_transform or the encoder's .transform)"
        )
    images = torch.stack([g[0] for g in good])
    labels = torch.tensor([int(g[1]) for g in good], dtype=torch.long)
    indices = torch.tensor([int(g[2]) for g in good], dtype=torch.long)
    return images, labels, indices, skipped


@dataclass
class SkippedReport:
    """The files a run left out, and why; ``summary()`` is what to print at the end."""

    items: list[SkippedItem] = field(default_factory=list)
    total: int = 0  # items attempted, for "3 of 1200"

    def extend(self, items: Iterable[SkippedItem]) -> None:
        self.items.extend(items)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def summary(self, max_listed: int = 10) -> str:
        """E.g. ``2 of 120 images skipped (ImageReadError 2): a.png: ...``; lists at most ``max_listed``."""
        if not self.items:
            return f"all {self.total} images read" if self.total else "no images skipped"
        of = f" of {self.total}" if self.total else ""
        kinds = Counter(i.reason.split(":", 1)[0] for i in self.items)
        lines = [f"{len(self.items)}{of} images skipped ({', '.join(f'{k} {n}' for k, n in kinds.most_common())}):"]
        lines += [f"  {i.path}: {i.reason}" for i in self.items[:max_listed]]
        if len(self.items) > max_listed:
            lines.append(f"  ... and {len(self.items) - max_listed} more")
        return "\n".join(lines)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``index,path,reason`` rows (atomically)."""
        from cbm.utils import atomic_write_text

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["index", "path", "reason"])
        writer.writerows((i.index, i.path, i.reason) for i in self.items)
        return atomic_write_text(path, buf.getvalue())
