"""Drawing demo scenes: deterministic, size-independent, and every attribute shows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from cbm.demo.render import COLOUR_RGB, render_scene
from cbm.demo.world import Lesion, Scene

PLAIN = Lesion(0, 0, ("light brown",), (), 7.0, "light brown")


def _scene(lesion: Lesion = PLAIN, **kw) -> Scene:
    return Scene(lesion=lesion, seed=kw.pop("seed", 11), **kw)


def _near(img: np.ndarray, rgb: tuple[float, float, float], tol: float = 0.09) -> np.ndarray:
    """Pixels within ``tol`` (0-1 per channel) of colour ``rgb``."""
    return (np.abs(img.astype(np.float32) / 255.0 - np.asarray(rgb)) < tol).all(axis=-1)


def test_same_scene_same_pixels_and_seed_changes_them():
    a, b = render_scene(_scene(), 96), render_scene(_scene(), 96)
    assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_scene(_scene(seed=12), 96))


def test_a_scene_is_the_same_picture_at_any_size():
    big = render_scene(_scene(), 128).astype(np.float32)
    small = render_scene(_scene(), 64).astype(np.float32)
    shrunk = big.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    other = render_scene(_scene(seed=99), 64).astype(np.float32)
    assert np.abs(shrunk - small).mean() < 4.0  # grey levels: noise and anti-aliasing only
    assert np.abs(other - small).mean() > 3 * np.abs(shrunk - small).mean()


def test_too_small_size_is_rejected():
    with pytest.raises(ValueError, match="at least 16"):
        render_scene(_scene(), 8)


@pytest.mark.parametrize("colour", ["red", "blue-grey", "white", "black"])
def test_each_extra_colour_is_painted(colour):
    lesion = Lesion(0, 0, ("light brown", colour), (), 7.0, "light brown")
    with_colour = _near(render_scene(_scene(lesion), 128), COLOUR_RGB[colour]).sum()
    without = _near(render_scene(_scene(), 128), COLOUR_RGB[colour]).sum()
    assert with_colour > 60 and with_colour > 5 * without


def test_lesion_size_follows_the_diameter():
    def dark(d: float) -> int:
        img = render_scene(_scene(Lesion(0, 0, ("dark brown",), (), d, "dark brown")), 128)
        return int((img.astype(int).sum(-1) < 330).sum())

    assert dark(7.8) > 3 * dark(4.2)


def test_border_segments_and_asymmetry_change_the_outline():
    def mask(lesion: Lesion) -> np.ndarray:
        return render_scene(_scene(lesion), 128).astype(int).sum(-1) < 400

    base = mask(PLAIN)
    for changed in (replace(PLAIN, border=8), replace(PLAIN, asymmetry=2)):
        assert (mask(changed) != base).mean() > 0.02


@pytest.mark.parametrize("structure", ["pigment network", "dots", "globules", "streaks", "structureless areas"])
def test_each_structure_changes_the_lesion(structure):
    plain = render_scene(_scene(), 128).astype(np.float32)
    drawn = render_scene(_scene(replace(PLAIN, structures=(structure,))), 128).astype(np.float32)
    changed = (np.abs(drawn - plain).max(-1) > 40).sum()
    assert changed > 120, f"{structure} changed only {changed} pixels"


def test_cues_draw_a_ruler_or_violet_ink_and_none_draws_neither():
    violet = (0.52, 0.20, 0.62)
    none, ruler, ink = (render_scene(_scene(cue=c), 128) for c in ("none", "ruler", "ink"))
    assert _near(ink, violet, 0.12).sum() > 40 and _near(none, violet, 0.12).sum() == 0
    band = np.abs(ruler.astype(int) - none.astype(int)).max(-1) > 30
    edges = [band[:16].mean(), band[-16:].mean(), band[:, :16].mean(), band[:, -16:].mean()]
    assert max(edges) > 0.5  # one edge is covered by the ruler


def test_colour_cast_tints_the_whole_image():
    plain = render_scene(_scene(), 64).astype(np.float32)
    tinted = render_scene(_scene(cast=(1.06, 0.94, 1.06)), 64).astype(np.float32)
    ratio = tinted.reshape(-1, 3).mean(0) / plain.reshape(-1, 3).mean(0)
    assert ratio[0] > 1.03 and ratio[1] < 0.97 and ratio[2] > 1.03


def test_a_mask_leaves_out_what_later_paint_covers():
    """The network and the colour regions under the structureless patch or a later colour region
    no longer show there, so their masks (the pointing game's truth) must leave those pixels out."""
    lesion = Lesion(1, 2, ("light brown", "dark brown", "red", "blue-grey"), ("pigment network", "structureless areas"),
                    7.5, "light brown")
    image, masks = render_scene(_scene(lesion, seed=5), 128, masks=True)
    patch = masks["structureless areas"]
    assert patch.sum() > 200
    for name in ("pigment network", "light brown", "dark brown", "red", "blue-grey"):
        assert masks[name].any(), name
        assert not (masks[name] & patch).any(), name
    for colour in ("dark brown", "red", "blue-grey"):
        assert not (masks["pigment network"] & masks[colour]).any(), colour
    # where the network mask is, the network's dark lines show: darker than the rest of the base colour
    rest = masks["light brown"] & ~masks["pigment network"]
    assert image[masks["pigment network"]].mean() < image[rest].mean() - 20


def test_the_ruler_and_the_ink_cover_the_lesion_masks():
    big = Lesion(2, 8, ("light brown", "red", "white"), ("pigment network", "dots", "streaks"), 8.0, "light brown")
    covered = 0
    for seed in range(40):
        for cue in ("ruler", "ink"):
            _, bare = render_scene(_scene(big, seed=seed), 96, masks=True)
            _, marked = render_scene(_scene(big, seed=seed, cue=cue), 96, masks=True)
            covered += int((bare["lesion"] & marked[cue]).any())
            for name in ("lesion", "irregular border", "light brown", "red", "white", "pigment network", "streaks"):
                assert not (marked[name] & marked[cue]).any(), (seed, cue, name)
    assert covered > 0  # some lesion reached under a mark
