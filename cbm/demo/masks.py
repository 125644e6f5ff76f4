"""The masks of a demo dataset: where each drawn thing shows, one 16-bit PNG per image.

``masks/<split>/<index>.png`` has bit ``k`` set where the ``k``-th name of ``masks/masks.json``'s
``names`` shows (:data:`cbm.demo.render.MASK_NAMES`); ``masks.json`` also records the render and
mask versions, and :func:`read_masks` refuses masks of another one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cbm.demo.render import MASK_NAMES, MASK_VERSION, RENDER_VERSION

__all__ = ["MASKS_FOLDER", "MASKS_RECORD", "mask_png", "masks_record", "read_masks"]

MASKS_FOLDER = "masks"
MASKS_RECORD = "masks.json"


def mask_png(masks: dict[str, np.ndarray]) -> np.ndarray:
    """The masks as one uint16 image: bit ``k`` set where ``MASK_NAMES[k]`` is drawn."""
    bits = np.zeros(next(iter(masks.values())).shape, np.uint16)
    for k, name in enumerate(MASK_NAMES):
        bits |= masks[name].astype(np.uint16) << k
    return bits


def masks_record() -> dict:
    """The content of ``masks.json`` this cbm writes."""
    return {
        "names": list(MASK_NAMES), "render_version": RENDER_VERSION, "mask_version": MASK_VERSION,
        "encoding": "16-bit greyscale PNG per image, same path as the image; bit k set where names[k] is drawn",
    }


def read_masks(folder: str | os.PathLike, path: str) -> dict[str, np.ndarray]:
    """The boolean masks ``{name: (H, W)}`` of image ``path`` (as the manifest writes it) of the
    demo dataset in ``folder``.

    Raises:
        FileNotFoundError: the dataset has no masks (made before they existed: draw it again).
        ValueError: the masks were drawn by another render version or another layout (the world
            changed since: draw the dataset again with ``cbm demo make --overwrite``).
    """
    folder = Path(folder)
    record_path = folder / MASKS_FOLDER / MASKS_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder} has no masks ({record_path} is missing); run `cbm demo make` on it again "
                                "with its parameters (the `obtain` line of its card.yaml): it writes what is missing") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{record_path} is unreadable ({exc}); run `cbm demo make` on the folder again with its "
                         "parameters (the `obtain` line of its card.yaml)") from None
    if (record.get("render_version") != RENDER_VERSION or record.get("mask_version") != MASK_VERSION
            or list(record.get("names", [])) != list(MASK_NAMES)):
        raise ValueError(
            f"the masks in {folder / MASKS_FOLDER} are from render version {record.get('render_version')!r}, mask "
            f"version {record.get('mask_version')!r}, with names {record.get('names')!r}; this cbm draws render version "
            f"{RENDER_VERSION}, mask version {MASK_VERSION}, with {list(MASK_NAMES)}: the world changed since, so draw "
            "the dataset again (`cbm demo make --out DIR --overwrite`)"
        )
    bits = np.asarray(Image.open(folder / MASKS_FOLDER / path)).astype(np.uint32)
    return {name: (bits >> k) & 1 == 1 for k, name in enumerate(MASK_NAMES)}
