"""Draw a demo scene as a dermoscopy-like RGB image.

Every length is a fraction of the image width and every random draw comes from the scene's own
seed in a fixed order, so a scene renders to the same picture at any size (only the pixel noise
depends on the size). Each core attribute is drawn coarsely enough to be plainly visible at 64 px:
an egg- or blob-shaped contour for asymmetry, large jagged teeth with a sharp edge on irregular
border segments (smooth segments fade out), one colour region per extra colour, a coarse network,
and dots, globules and streaks a few pixels wide. Streaks stay inside the lesion: drawn across its
edge they make a spiky outline that a small encoder cannot tell from jagged border segments.

The renderer is plain numpy + PIL on float32 arrays: about 3 ms for a 128 px image on one core.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cbm.demo.world import COLOURS, FIELD_OF_VIEW_MM, STRUCTURES, Scene

__all__ = ["render_scene", "RENDER_VERSION", "MASK_VERSION", "MASK_NAMES", "COLOUR_RGB", "MARKED_CAST", "UNMARKED_CAST"]

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "light brown": (0.76, 0.54, 0.32),
    "dark brown": (0.30, 0.16, 0.08),
    "black": (0.09, 0.07, 0.07),
    "red": (0.80, 0.25, 0.27),
    "blue-grey": (0.45, 0.54, 0.68),
    "white": (0.97, 0.96, 0.95),
}
"""The RGB (0-1) in which each of the rule's colours is painted."""

_SKIN_LIGHT = np.array([0.96, 0.84, 0.76], np.float32)
_SKIN_DARK = np.array([0.80, 0.62, 0.50], np.float32)
_INK_RGB = np.array([0.52, 0.20, 0.62], np.float32)  # gentian-violet surgical marker
_RULER_RGB = np.array([0.93, 0.92, 0.83], np.float32)
_TICK_RGB = np.array([0.08, 0.08, 0.08], np.float32)
_HAIR_RGB = np.array([0.16, 0.11, 0.08], np.float32)
_STRUCTURELESS_RGB = np.array([0.86, 0.76, 0.76], np.float32)  # a pale pink-grey, unlike any rule colour

MARKED_CAST: tuple[float, float, float] = (1.04, 0.95, 1.07)
"""Colour cast of the clinic that marks lesions (a magenta tint)."""
UNMARKED_CAST: tuple[float, float, float] = (0.98, 1.01, 0.97)
"""Colour cast of the clinic that does not (a faint green-yellow tint)."""

MASK_NAMES: tuple[str, ...] = ("lesion", "irregular border", *COLOURS, *STRUCTURES, "ruler", "ink")
"""What :func:`render_scene` can return a mask of: the lesion, its irregular border segments, the six
colours and five structures of the ABCD rule (the world's names, e.g. "light brown", "globules"),
and the two spurious marks."""
_LESION_MASKS: tuple[str, ...] = MASK_NAMES[:-2]  # what the ruler and the ink can cover

RENDER_VERSION = 6
"""Bumped whenever the drawing changes, so cached corpora and datasets are redrawn."""

MASK_VERSION = 2
"""Bumped whenever the masks change while the pictures do not (2: a mask leaves out what later paint
covers: the network and colours under a colour region or the structureless patch, anything under the
ruler or the ink), so demo datasets are redrawn and older masks refused."""

_ANGLES = 1024  # resolution of the contour tables r(theta); a power of 2 for cheap wrapping


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in units of the image width, shape (size, size) each."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.broadcast_to(c[None, :], (size, size)), np.broadcast_to(c[:, None], (size, size))


def _frac(v: np.ndarray) -> np.ndarray:
    """Fractional part (much faster than ``v % 1.0`` on float arrays)."""
    return v - np.floor(v)


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (3, 2 size, 2 size) field of standard normal noise; images take random windows of it
    (drawing fresh normal noise for every pixel would cost a third of the render time)."""
    return np.random.default_rng(20240613).standard_normal((3, 2 * size, 2 * size), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Zero-mean smooth noise (std about 1): a ``cells`` x ``cells`` normal grid, bicubic-upsampled."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _rgb(colour: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """A colour as a (C, 1, 1) float32 array (a (C, H, W) image is returned as is)."""
    colour = np.asarray(colour, np.float32)
    return colour[:, None, None] if colour.ndim == 1 else colour


def _paint(img: np.ndarray, alpha: np.ndarray | float, colour: np.ndarray | tuple[float, ...]) -> None:
    """In place on a (C, H, W) image: ``img = img * (1 - alpha) + colour * alpha``."""
    delta = np.subtract(_rgb(colour), img)
    delta *= alpha
    img += delta


def _paint_discs(img: np.ndarray, centres: np.ndarray | list, radius: float, colour: np.ndarray | tuple,
                 strength: np.ndarray | float, size: int, soft: float | None = None,
                 record: np.ndarray | None = None) -> None:
    """Paint discs on a (C, H, W) image, touching only their bounding boxes; ``strength`` is a mask
    or a scalar, and the edge is ``soft`` wide (default: one pixel, anti-aliased). With ``record``
    (H, W), each pixel keeps the largest alpha any disc painted there."""
    px = 1.0 / size
    soft = max(soft or px, px)
    half = int(math.ceil((radius + soft) * size)) + 1
    for cx, cy in centres:
        i0, j0 = int(cy * size), int(cx * size)
        r0, r1 = max(i0 - half, 0), min(i0 + half + 1, size)
        c0, c1 = max(j0 - half, 0), min(j0 + half + 1, size)
        if r0 >= r1 or c0 >= c1:
            continue
        ys = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5) / size
        xs = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5) / size
        a = np.clip((radius - np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)) / soft + 0.5, 0.0, 1.0)
        if isinstance(strength, np.ndarray):
            a = a * strength[r0:r1, c0:c1]
        else:
            a = a * strength
        _paint(img[:, r0:r1, c0:c1], a, colour)
        if record is not None:
            np.maximum(record[r0:r1, c0:c1], a, out=record[r0:r1, c0:c1])


def _stroke_mask(segments: list[list[tuple[float, float]]], width: float, size: int) -> np.ndarray:
    """Anti-aliased mask (0-1) of polylines ``width`` wide, drawn at 4x and box-reduced (so a hair
    a fraction of a pixel wide is faint rather than a full pixel)."""
    scale = 4
    big = scale * size
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    w = max(1, int(round(width * big)))
    for pts in segments:
        draw.line([(x * big, y * big) for x, y in pts], fill=255, width=w, joint="curve")
    return np.asarray(mask.reduce(scale), dtype=np.float32) / 255.0


def _contour(
    rng: np.random.Generator, asymmetry: int, irregular: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radius (relative to the nominal radius), edge softness and rim darkness over ``_ANGLES`` angles.

    Asymmetry about 0, 1 or 2 axes: an ellipse (symmetric about both axes), an egg (the cos(t)
    term breaks the mirror symmetry about one axis), or an egg with a 3-fold bulge (sin(3t) breaks
    the other). Irregular border segments get large jagged teeth, a sharp edge and a dark rim (the
    pigment stops abruptly); regular ones fade out smoothly.
    """
    t = np.linspace(0.0, 2 * np.pi, _ANGLES, endpoint=False, dtype=np.float32)
    ellipse = rng.uniform(0.0, 0.12)
    egg = rng.uniform(0.26, 0.34)
    bulge = rng.uniform(0.16, 0.22)
    teeth_amp = rng.uniform(0.2, 0.27, size=8)
    teeth_phase = rng.uniform(0.0, 1.0, size=8)
    r = 1.0 + ellipse * np.cos(2 * t)
    if asymmetry >= 1:
        r = r + egg * np.cos(t)
    if asymmetry >= 2:
        r = r + bulge * np.sin(3 * t)
    seg_pos = t / (2 * np.pi) * 8  # 0..8 over the eight 45-degree segments
    seg = np.minimum(seg_pos.astype(int), 7)
    within = seg_pos - seg  # 0..1 inside the segment
    window = np.sin(np.pi * within) ** 0.5  # teeth vanish at segment boundaries
    saw = np.abs(_frac(within * 2.5 + teeth_phase[seg]) - 0.5) * 2.0  # 2-3 triangular teeth
    jag = irregular[seg] * teeth_amp[seg] * window * (saw - 0.5) * 2.0
    r = r * (1.0 + jag)
    soft = np.where(irregular[seg] > 0, 0.025, 0.22).astype(np.float32)
    rim = (irregular[seg] * np.minimum(window * 1.5, 1.0)).astype(np.float32)
    return r.astype(np.float32), soft, rim


def render_scene(scene: Scene, size: int = 128, *, masks: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw ``scene`` as a ``(size, size, 3)`` uint8 RGB image (row 0 = top).

    With ``masks=True`` it returns ``(image, masks)``: a boolean ``(size, size)`` mask per name of
    :data:`MASK_NAMES` where that thing shows in the image (its paint's alpha, less what later
    paint covers, above one half): the lesion, its irregular border segments (the dark rim), each
    colour region (the base colour where no other colour or the structureless patch covers it), each
    structure, the ruler and the ink marks. A network or colour under a later colour region or the
    structureless patch, and anything under the ruler or the ink, is left out. Absent things have
    empty masks.

    One long function on purpose: every random draw comes from the scene's own stream in a fixed
    order, whether or not its part is drawn, so that a scene renders to the same picture at every
    size; split into helpers, that order would be spread over several places.
    """
    if size < 16:
        raise ValueError(f"size={size} is too small to draw a lesion; use at least 16 px (128 is the default)")
    lesion = scene.lesion
    rng = np.random.default_rng(scene.seed)
    x, y = _grid(size)
    px = 1.0 / size

    # Skin: tone, smooth blotchiness, a fine texture and some redness. Channel-first throughout.
    skin_rgb = (1 - scene.skin_tone) * _SKIN_LIGHT + scene.skin_tone * _SKIN_DARK
    skin_rgb = skin_rgb * rng.uniform(0.97, 1.03, size=3).astype(np.float32)
    texture = 1.0 + 0.035 * _smooth_noise(rng, 5, size) + 0.015 * _smooth_noise(rng, 24, size)
    img = _rgb(skin_rgb) * texture[None]
    redness = np.clip(_smooth_noise(rng, 4, size), 0, None) * 0.03
    img[1:] -= redness[None]

    # Lesion geometry: the contour r(theta) relative to the nominal radius, per pixel via a table.
    radius = lesion.diameter_mm / FIELD_OF_VIEW_MM / 2.0
    cx, cy = 0.5 + rng.normal(0, 0.03), 0.5 + rng.normal(0, 0.03)
    rot = rng.uniform(0.0, 2 * np.pi)
    irregular = np.zeros(8, np.float32)
    irregular[rng.choice(8, size=lesion.border, replace=False)] = 1.0
    r_tab, soft_tab, rim_tab = _contour(rng, lesion.asymmetry, irregular)
    dx, dy = x - cx, y - cy
    rho = np.sqrt(dx * dx + dy * dy) / radius
    turn = (np.arctan2(dy, dx) - rot) * (_ANGLES / (2 * np.pi)) + 2 * _ANGLES
    idx = turn.astype(np.int32) & (_ANGLES - 1)
    r_pix = r_tab[idx]
    soft_pix = np.maximum(soft_tab[idx], px / radius)
    inside = np.clip((r_pix - rho) / soft_pix + 0.5, 0.0, 1.0)
    core = np.clip((0.82 * r_pix - rho) * 10.0, 0.0, 1.0)  # the interior, away from the border

    def lesion_point(rel: float, angle: float) -> tuple[float, float]:
        """Image point at ``rel`` x the local contour radius, at lesion angle ``angle``."""
        k = int(angle * (_ANGLES / (2 * np.pi)) + 2 * _ANGLES) & (_ANGLES - 1)
        rr = rel * float(r_tab[k]) * radius
        return cx + rr * math.cos(angle + rot), cy + rr * math.sin(angle + rot)

    # Lesion body: the base colour, a little darker towards the centre, mottled.
    base = np.asarray(COLOUR_RGB[lesion.base_colour], np.float32)
    shading = 1.0 + 0.05 * _smooth_noise(rng, 9, size) - 0.05 * np.clip(1 - rho, 0, 1)
    # irregular segments: the pigment stops abruptly at a dark rim, a band 1/5 of the radius wide
    rim = rim_tab[idx] * np.clip(1.0 - (r_pix - rho) * 5.0, 0.0, 1.0)
    shading -= 0.5 * rim
    _paint(img, inside, _rgb(base) * shading[None])
    drawn: dict[str, np.ndarray] = {name: np.zeros((size, size), np.float32) for name in MASK_NAMES} if masks else {}
    record = drawn.get  # None for everything when no masks are asked for
    if masks:
        drawn["lesion"] = inside
        drawn["irregular border"] = rim * inside

    structures = set(lesion.structures)
    free = inside * core  # where dots and globules may go

    # Pigment network: a coarse grid of dark lines over the interior.
    net_angle, net_phase = rng.uniform(0, np.pi / 2), rng.uniform(0, 1, size=2)
    if "pigment network" in structures:
        spacing, width = 0.068, 0.021
        ca, sa = math.cos(net_angle), math.sin(net_angle)
        lines = np.zeros_like(x)
        for k, coord in enumerate((dx * ca + dy * sa, -dx * sa + dy * ca)):
            dist = np.abs(_frac(coord * (1.0 / spacing) + net_phase[k]) - 0.5) * spacing
            lines = np.maximum(lines, np.clip((width / 2 - (spacing / 2 - dist)) / px + 0.5, 0.0, 1.0))
        fade = np.clip((0.95 * r_pix - rho) / 0.15, 0, 1)
        _paint(img, 0.85 * lines * inside * fade, base * 0.45)
        if masks:
            drawn["pigment network"] = lines * inside * fade

    # Extra colours: one soft region each, spread around the lesion.
    extra = [c for c in lesion.colours if c != lesion.base_colour]
    start = rng.uniform(0.0, 2 * np.pi)
    blob_draws = rng.uniform(0.0, 1.0, size=(6, 3))
    for k, colour in enumerate(extra):
        angle = start + 2 * np.pi * k / len(extra) + 0.4 * (blob_draws[k, 0] - 0.5)
        rel = 0.52 + 0.08 * blob_draws[k, 1]
        br = (0.31 + 0.06 * blob_draws[k, 2]) * radius
        if colour in COLOUR_RGB and colour.endswith("brown"):
            # the second brown takes a whole side of the lesion: a two-tone lesion, not a speck
            rel, br = 0.45, (0.5 + 0.06 * blob_draws[k, 2]) * radius
        blob = np.zeros((size, size), np.float32) if masks else None
        _paint_discs(img, [lesion_point(rel, angle)], br, COLOUR_RGB[colour], 0.92 * inside, size, soft=0.25 * br,
                     record=blob)
        if masks:  # the region hides the network and the colour regions painted before it
            _occlude(drawn, blob, ("pigment network", *extra[:k]))
            drawn[colour] = np.maximum(drawn[colour], blob)

    # Structureless area: a pale, flat, texture-free zone in the middle that erases other structures.
    sl_angle = rng.uniform(0.0, 2 * np.pi)
    sl_rel, sl_size = rng.uniform(0.0, 0.15), rng.uniform(0.36, 0.42)
    if "structureless areas" in structures:
        patch = np.zeros((1, size, size), np.float32)
        centre = lesion_point(sl_rel, sl_angle)
        _paint_discs(patch, [centre], sl_size * radius, (1.0,), 1.0, size, soft=0.06 * radius)
        patch = patch[0] * inside
        _paint(img, patch, 0.1 * base + 0.9 * _STRUCTURELESS_RGB)
        if masks:  # painted over the network and the colour regions: they no longer show there
            _occlude(drawn, patch, ("pigment network", *extra))
            drawn["structureless areas"] = patch
        free = free * (1.0 - patch)

    # Dots (small, black), globules (larger, brown), streaks (radial, towards the periphery).
    n_dots, n_glob, n_streaks = int(rng.integers(9, 15)), int(rng.integers(5, 8)), int(rng.integers(8, 13))
    dot_pos = rng.uniform(0.0, 1.0, size=(14, 2))
    glob_pos = rng.uniform(0.0, 1.0, size=(7, 2))
    streak_draws = rng.uniform(0.0, 1.0, size=(12, 2))
    streak_arc = rng.uniform(0.0, 2 * np.pi)

    def spread(pos: np.ndarray, reach: float) -> list[tuple[float, float]]:
        return [lesion_point(reach * math.sqrt(u), 2 * np.pi * v) for u, v in pos]

    if "globules" in structures:
        glob_rgb = np.clip(base * 0.5 + np.array([0.12, 0.05, 0.0], np.float32), 0, 1)
        _paint_discs(img, spread(glob_pos[:n_glob], 0.62), 0.042, glob_rgb, free, size, record=record("globules"))
    if "dots" in structures:
        _paint_discs(img, spread(dot_pos[:n_dots], 0.68), 0.021, COLOUR_RGB["black"], free, size, record=record("dots"))
    if "streaks" in structures:
        strokes = []
        for k in range(n_streaks):
            angle = streak_arc + 2 * np.pi * (k + 0.5 * streak_draws[k, 0]) / n_streaks
            strokes.append([lesion_point(0.45, angle), lesion_point(0.88 + 0.07 * streak_draws[k, 1], angle)])
        streaks = _stroke_mask(strokes, 0.02, size) * inside
        _paint(img, 0.9 * streaks, base * 0.35)
        if masks:
            drawn["streaks"] = streaks

    # The spurious cue: a ruler along one edge, or violet ink dots circling the lesion.
    ruler_side, ruler_offset = int(rng.integers(0, 4)), rng.uniform(0.0, 0.03)
    ink_n, ink_rel, ink_start = int(rng.integers(6, 10)), rng.uniform(1.3, 1.5), rng.uniform(0, 2 * np.pi)
    if scene.cue == "ruler":
        body = _draw_ruler(img, ruler_side, ruler_offset, size)
        if masks:
            _occlude(drawn, body, _LESION_MASKS)
            drawn["ruler"] = body
    elif scene.cue == "ink":
        ring = [lesion_point(ink_rel, ink_start + 2 * np.pi * k / ink_n) for k in range(ink_n)]
        _paint_discs(img, np.clip(np.array(ring), 0.03, 0.97), 0.024, _INK_RGB, 0.95, size, record=record("ink"))
        if masks:
            _occlude(drawn, drawn["ink"], _LESION_MASKS)

    # Hair: thin dark curves across the image.
    hair_draws = rng.uniform(0.0, 1.0, size=(8, 6))
    if scene.hair:
        curves = []
        tt = np.linspace(0, 1, 12)[:, None]
        for h in hair_draws[: scene.hair]:
            p0 = np.array([h[0], 0.0]) if h[4] < 0.5 else np.array([0.0, h[0]])
            p2 = np.array([h[1], 1.0]) if h[4] < 0.5 else np.array([1.0, h[1]])
            pts = (1 - tt) ** 2 * p0 + 2 * (1 - tt) * tt * np.array([h[2], h[3]]) + tt**2 * p2
            curves.append([tuple(p) for p in pts])
        _paint(img, 0.85 * _stroke_mask(curves, 0.007, size), _HAIR_RGB)

    # Lighting, vignetting and the clinic's colour cast.
    light_angle, light_amp = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.08)
    vignette = rng.uniform(0.05, 0.25)
    shade = 1.0 + light_amp * 2 * (math.cos(light_angle) * (x - 0.5) + math.sin(light_angle) * (y - 0.5))
    shade -= vignette * 2 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    img *= shade[None] * 255.0
    img *= _rgb(scene.cast)

    # Optics and sensor: blur, then noise (a window of a fixed noise field; only this depends on size).
    blur = rng.uniform(0.0, 0.005) * size
    noise_level = rng.uniform(0.004, 0.02)
    out = np.clip(img.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
    if blur > 0.25:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(blur)))
    oy, ox = np.random.default_rng([scene.seed, size]).integers(0, size, size=2)
    noise = _noise_bank(size)[:, oy : oy + size, ox : ox + size].transpose(1, 2, 0)
    image = np.clip(out + noise * (noise_level * 255.0) + 0.5, 0, 255).astype(np.uint8)
    if not masks:
        return image
    if lesion.base_colour in drawn:  # the base colour shows where no colour region, pale patch or mark covers it
        cover = [drawn[c] for c in lesion.colours if c != lesion.base_colour] + [drawn["structureless areas"]]
        drawn[lesion.base_colour] = drawn["lesion"] * (1.0 - np.max(cover, axis=0))
    return image, {name: drawn[name] > 0.5 for name in MASK_NAMES}


def _occlude(drawn: dict[str, np.ndarray], alpha: np.ndarray, names: tuple[str, ...] | list[str]) -> None:
    """Masks ``names`` lose what paint of opacity ``alpha`` (H, W) now covers: a mask says where its
    thing shows in the image, not where it was painted before something else went over it."""
    for name in names:
        drawn[name] = drawn[name] * (1.0 - alpha)


def _draw_ruler(img: np.ndarray, side: int, offset: float, size: int) -> np.ndarray:
    """In place on a (3, H, W) image: a light ruler band along image edge ``side`` (0 top, 1 right,
    2 bottom, 3 left), with a tick every millimetre and a long tick every 5 mm; returns the band's alpha."""
    band = 0.11
    mm = 1.0 / FIELD_OF_VIEW_MM
    a0, a1 = offset, offset + band  # the band's extent across the edge, from the edge inwards
    strokes = []
    for k in range(int(1.0 / mm) + 1):
        along = (k + 0.5) * mm
        depth = 0.065 if k % 5 == 0 else 0.035
        strokes.append([(along, a0), (along, a0 + depth)])
    strokes.append([(0.0, a0 + 0.004), (1.0, a0 + 0.004)])
    ticks = _stroke_mask(strokes, 0.009, size)
    _, y = _grid(size)
    body = np.clip((y - a0) * size + 0.5, 0, 1) * np.clip((a1 - y) * size + 0.5, 0, 1)
    # Drawn for the top edge, then turned to the chosen side.
    body, ticks = np.rot90(body, -side), np.rot90(ticks, -side)
    _paint(img, body, _RULER_RGB)
    _paint(img, ticks * body, _TICK_RGB)
    return body
