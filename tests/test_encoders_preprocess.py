"""An encoder's preprocessing follows open_clip's own for the model's config: the centre crop lands
where torchvision's does, and each resize_mode (shortest, longest, squash) is the one open_clip runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from cbm.data import read_image
from cbm.data.transforms import RESIZE_MODES, CentreCropOrPad, encoder_transform
from cbm.encoders import create_encoder
from cbm.encoders.testing import TINY_CONFIG, write_tiny_config

open_clip = pytest.importorskip("open_clip")
TF = pytest.importorskip("torchvision.transforms.functional")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB, a coarse random field resized up (so resampling filters differ little on it)."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def open_clip_transform(size: int, resize_mode: str, fill_color: int = 0):
    return open_clip.image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode=resize_mode,
                                     fill_color=fill_color)


# (H, W, size): (L - size) % 4 == 3 on an axis is where a crop starting at floor((L - size) / 2) is one
# pixel off torchvision's int(round((L - size) / 2.0)); smaller-than-size sides are padded by both
@pytest.mark.parametrize(
    "h, w, size",
    [(10, 13, 10), (13, 10, 10), (17, 21, 10), (224, 227, 224), (231, 224, 224), (227, 235, 224),
     (12, 14, 10), (16, 16, 16), (5, 12, 8), (7, 4, 8), (3, 3, 6)],
)  # fmt: skip
def test_centre_crop_is_torchvision_center_crop(h, w, size):
    x = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    ours = CentreCropOrPad(size)(x)
    assert torch.equal(ours, TF.center_crop(x, [size, size]))


@pytest.mark.parametrize("h, w", [(16, 19), (19, 16), (16, 23), (16, 17)])
def test_the_whole_pipeline_crops_where_open_clip_does(h, w):
    """The short side is already the model's size, so nothing is resampled: open_clip's output and
    ours differ only by float rounding, and a crop one pixel off would show everywhere."""
    arr = np.random.default_rng(1).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    reference = open_clip_transform(16, "shortest")(Image.fromarray(arr))
    ours = encoder_transform(16, CLIP_MEAN, CLIP_STD)(arr)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def _ultrasound() -> np.ndarray:
    return np.round(read_image(get_testdata_file("US1_UNCI.dcm")).pixels * 255).astype(np.uint8)


@pytest.mark.parametrize("resize_mode", RESIZE_MODES)
@pytest.mark.parametrize("image, size", [("ultrasound", 224), ("wide", 64), ("tall", 64), ("wide", 224)])
def test_each_resize_mode_matches_open_clip(resize_mode, image, size):
    """Shrinking (a 480 x 640 ultrasound) and enlarging (40 x 70 fields): the same geometry as
    open_clip's PIL pipeline, the values within resampling differences (measured < 0.005 mean)."""
    arr = {"ultrasound": _ultrasound, "wide": lambda: smooth_rgb(40, 70), "tall": lambda: smooth_rgb(70, 40)}[image]()
    reference = open_clip_transform(size, resize_mode)(Image.fromarray(arr))
    ours = encoder_transform(size, CLIP_MEAN, CLIP_STD, resize_mode=resize_mode)(arr)
    assert ours.shape == reference.shape == (3, size, size)
    assert (ours - reference).abs().mean() < 0.01


@pytest.mark.parametrize("h, w", [(40, 70), (70, 40), (33, 64)])
def test_longest_pads_with_the_fill_colour_where_open_clip_does(h, w):
    arr = smooth_rgb(h, w, seed=2)
    fill = 200
    reference = open_clip_transform(64, "longest", fill_color=fill)(Image.fromarray(arr))
    ours = encoder_transform(64, CLIP_MEAN, CLIP_STD, resize_mode="longest", fill_color=fill)(arr)
    fill_value = (fill / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    padded = (reference - fill_value[:, None, None]).abs().amax(0) < 1e-5  # open_clip's padding, exactly
    assert 0 < padded.float().mean() < 0.5
    assert ((ours - fill_value[:, None, None]).abs().amax(0) < 1e-5).equal(padded)
    assert (ours - reference).abs().mean() < 0.01


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_very_tall_image_resized_to_one_column_keeps_its_rows(interpolation):
    """"longest" on a 3000 x 20 image: one column of 224 rows. torch's antialiased resize to one column
    gives every row the first row's value; the column must follow open_clip's (a gradient top to bottom)."""
    arr = np.repeat(np.linspace(0, 255, 3000).astype(np.uint8)[:, None, None], 20, axis=1).repeat(3, axis=2)
    reference = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD, resize_mode="longest",
                                          interpolation=interpolation)(Image.fromarray(arr))
    ours = encoder_transform(224, CLIP_MEAN, CLIP_STD, interpolation=interpolation, resize_mode="longest")(arr)
    column = ours[0, :, 111]
    assert column[-1] - column[0] > 3  # black at the top, white at the bottom
    assert (ours - reference).abs().max() < 0.05


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "area"])
@pytest.mark.parametrize("h, w, size", [(2, 999, 17), (999, 2, 17), (40, 5000, 32), (500, 7, 24),
                                     (1911, 56, 40), (1, 1879, 61), (3, 1253, 64)])
def test_a_thin_strip_is_resized_only_where_the_crop_keeps_it(interpolation, h, w, size, monkeypatch):
    """"shortest" would make a 2 x 999 strip 17 x 8,491 and crop 17 x 17 of it: only that window is
    computed (here at any size), with the values the whole resize gives there."""
    import cbm.data.transforms as transforms
    from cbm.data.transforms import ResizeShortestSide

    monkeypatch.setattr(transforms, "_WHOLE_PIXELS", 0)

    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    whole = CentreCropOrPad(size)(ResizeShortestSide(size, interpolation)(x))
    window = CentreCropOrPad(size)(ResizeShortestSide(size, interpolation, centre_only=True)(x))
    torch.testing.assert_close(window, whole, rtol=0, atol=2e-4)


def test_a_strip_within_the_pixel_budget_does_not_need_gigabytes(monkeypatch):
    """A 1 x 200,000 strip (200,000 pixels) resized whole to 224 high would be 224 x 44,800,000 x 3
    floats (120 GB) before the crop; no resize that large is asked of torch."""
    interpolate = torch.nn.functional.interpolate

    def bounded(x, size=None, **kwargs):
        assert size is None or size[0] * size[1] <= 10_000_000, f"a resize to {size} asked for"
        return interpolate(x, size=size, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", bounded)
    strip = np.random.default_rng(0).integers(0, 256, (1, 200_000, 3), dtype=np.uint8)
    assert encoder_transform(224, CLIP_MEAN, CLIP_STD)(strip).shape == (3, 224, 224)


def test_squash_keeps_the_whole_image_and_shortest_crops_it():
    """A bright band at the left edge of a wide image: cut by the centre crop, kept by squash."""
    arr = np.full((40, 80), 30, np.uint8)
    arr[:, :8] = 250
    shortest = encoder_transform(32, (0.0,), (1.0,))(arr)[0]
    squash = encoder_transform(32, (0.0,), (1.0,), resize_mode="squash")(arr)[0]
    assert shortest[:, 0].mean() < 0.2
    assert squash[:, 0].mean() > 0.9 and squash.shape == (32, 32)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"resize_mode": "stretch"}, "resize_mode 'stretch' is not one of shortest, longest, squash"),
     ({"fill_color": 300}, "fill_color must be one grey level from 0 to 255"),
     ({"fill_color": (1, 2, 3)}, "fill_color must be one grey level")],
)  # fmt: skip
def test_bad_preprocessing_is_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        encoder_transform(16, CLIP_MEAN, CLIP_STD, **kwargs)


def _encoder(folder, name: str, **preprocess):
    return create_encoder(f"{write_tiny_config(folder, name, dict(TINY_CONFIG, preprocess_cfg=preprocess))}@random")


def test_the_model_config_resize_mode_is_followed_and_keys_the_cache(tmp_path):
    shortest, squash = _encoder(tmp_path, "shortest"), _encoder(tmp_path, "squash", resize_mode="squash")
    longest, longest_grey = _encoder(tmp_path, "longest", resize_mode="longest"), _encoder(
        tmp_path, "longest-grey", resize_mode="longest", fill_color=128)
    assert shortest.transform.config["resize_mode"] == "shortest" and "fill_color" not in shortest.transform.config
    assert squash.transform.config["resize_mode"] == "squash"
    assert longest_grey.transform.config["fill_color"] == 128
    keys = {e.cache_key for e in (shortest, squash, longest, longest_grey)}
    assert len(keys) == 4  # the same weights, other pixels: other cached features
    arr = smooth_rgb(40, 70)
    for enc, mode, fill in ((shortest, "shortest", 0), (squash, "squash", 0), (longest_grey, "longest", 128)):
        expected = encoder_transform(64, CLIP_MEAN, CLIP_STD, resize_mode=mode, fill_color=fill)(arr)
        assert torch.equal(enc.transform(arr), expected)
        reference = open_clip_transform(64, mode, fill_color=fill)(Image.fromarray(arr))
        assert (enc.transform(arr) - reference).abs().mean() < 0.01


def test_a_resize_mode_cbm_does_not_know_names_the_encoder(tmp_path):
    with pytest.raises(ValueError, match=r"encoder '.*stretchy.*'.*resize_mode 'stretch'"):
        _encoder(tmp_path, "stretchy", resize_mode="stretch")
