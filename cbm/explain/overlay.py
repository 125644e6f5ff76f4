"""How concept maps are shown: one hue and a contour over the image, a colour scale, the grid stated.

A map says where in this image a concept is most similar (relative to the rest of the image; how
present the concept is, is its score). It is drawn honestly:

* **one hue** (:data:`OVERLAY_RGB`, a vivid green that no lesion, skin or radiograph has) whose
  opacity grows with the map value, and a **contour** where the map crosses half its range, so the
  overlay cannot be mistaken for a blue-grey structure or a red area, as a rainbow's ends can;
* the **grid is stated**: a map has one value per cell of the encoder's grid (8 x 8 for
  ``demo-clip``'s CNN, 14 x 14 for a ViT-B/16), smoothed only for display; below
  :data:`MIN_MAP_GRID` cells a side no map is drawn ("too coarse to localise");
* a **colour scale** beside the maps says what the hue and the line mean.
"""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["MIN_MAP_GRID", "OVERLAY_RGB", "heat_overlay", "jpeg_data_uri", "grid_statement", "thumbnail"]

MIN_MAP_GRID = 4
"""A map with fewer cells on a side than this cannot localise a finding; none is drawn."""
OVERLAY_RGB = (0, 200, 83)
_CONTOUR_LEVEL = 0.5


def jpeg_data_uri(image: np.ndarray | bytes, quality: int = 85) -> str:
    """A ``data:`` URI of an ``(h, w, 3)`` uint8 image (or of JPEG bytes as they are)."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk so its longest side is at most ``side`` pixels."""
    from PIL import Image

    img = Image.fromarray(image)
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(img)


def _edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with a 4-neighbour outside it, thickened by one pixel."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    edge = mask & ~inner
    thick = edge.copy()
    thick[1:] |= edge[:-1]
    thick[:, 1:] |= edge[:, :-1]
    return thick


def heat_overlay(image: np.ndarray, heat: np.ndarray, crop: tuple[int, ...], *, opacity: float = 0.45) -> np.ndarray:
    """Lay a concept map over the image in one hue, with a contour at half the map's range.

    Args:
        image: ``(H, W, 3)`` uint8.
        heat: ``(h, w)`` map in [0, 1] over the encoder's input square (row 0 at the top), upsampled
            bilinearly.
        crop: ``(left, top, width, height)`` in ``image`` pixels of what that square covers (``(left,
            top, side)`` for a square); it may reach past the image's edges (a padded input), and
            the image outside it is dimmed.
        opacity: the hue's opacity at the map's highest cell (none at its lowest).
    """
    from PIL import Image

    left, top, box_w, box_h = crop if len(crop) == 4 else (*crop, crop[2])
    up = np.asarray(Image.fromarray(np.asarray(heat, np.float32), mode="F").resize((box_w, box_h), Image.Resampling.BILINEAR))
    up = np.clip(up, 0.0, 1.0)
    contour = _edge(up >= _CONTOUR_LEVEL)
    out = image.astype(np.float32) * 0.5  # dim what the encoder did not see
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + box_w, image.shape[1]), min(top + box_h, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    inside = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    region = image[y0:y1, x0:x1].astype(np.float32)
    alpha = opacity * up[inside][..., None]
    hue = np.array(OVERLAY_RGB, np.float32)
    tinted = region * (1.0 - alpha) + hue * alpha
    tinted[contour[inside]] = hue
    out[y0:y1, x0:x1] = tinted
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def grid_statement(grid: tuple[int, int] | None, method: str | None = None) -> tuple[bool, str]:
    """(whether maps are drawn, the sentence that says the grid) for an encoder's map grid;
    Grad-CAM's grid is that of the tower's last spatial layer, which need not be the finest grid
    the model sees the image on (demo-clip's 2 x 2 global branch follows its 8 x 8 cells)."""
    if grid is None:
        return False, "Concept maps were not computed for this report."
    h, w = int(grid[0]), int(grid[1])
    if min(h, w) < MIN_MAP_GRID:
        whose = ("Grad-CAM reads the model's last spatial layer, a grid" if method == "grad-cam"
                 else "The model sees this image on a grid")
        return False, f"{whose} of {h} x {w} cells, too coarse to localise a finding, so no maps are drawn."
    article = "an" if str(h).startswith("8") or h in (11, 18) else "a"
    return True, (f"Each map has one value per cell of {article} {h} x {w} grid over the square the model sees (a cell is "
                  f"1/{w} of its width), smoothed for display.")
