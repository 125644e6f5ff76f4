"""cbm.data.transforms: the MONAI encoder pipeline keeps orientation, matches open_clip's, and
gives the same tensor for a PNG and a DICOM of the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from cbm.data import read_image
from cbm.data.transforms import encoder_transform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def corner_image(h: int, w: int) -> np.ndarray:
    """uint8 grey, dark, with a bright block in the top-left corner and a mid-grey bar on the right."""
    img = np.full((h, w), 30, np.uint8)
    img[: h // 3, : w // 3] = 250
    img[:, -w // 8 :] = 120
    return img


def test_shape_dtype_and_grey_to_three_channels():
    t = encoder_transform(32, CLIP_MEAN, CLIP_STD)(corner_image(40, 70))
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32 and type(t) is torch.Tensor
    unnormalised = t * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]
    torch.testing.assert_close(unnormalised[0], unnormalised[1])
    torch.testing.assert_close(unnormalised[1], unnormalised[2])


@pytest.mark.parametrize("h, w", [(40, 70), (70, 40), (33, 33)])
def test_orientation_is_kept(h, w):
    """No transposition anywhere: the bright block stays top-left, the bar stays right."""
    t = encoder_transform(30, (0.0,), (1.0,))(corner_image(h, w))[0]
    s = t.shape[0]
    top_left, bottom_right = t[: s // 5, : s // 5].mean(), t[-s // 5 :, -s // 4 : -s // 8].mean()
    assert top_left > 0.9 and bottom_right < 0.2
    # the resize keeps the aspect ratio before the crop, so the bar survives on the right edge only
    # when the crop keeps that edge (wide images lose it to the centre crop)
    if w <= h:
        assert t[:, -2:].mean() == pytest.approx(120 / 255, abs=0.02)


def test_png_and_dicom_of_the_same_pixels_give_the_same_tensor(tmp_path):
    img = corner_image(48, 80)
    img[5:9, 40:70] = 200  # more asymmetry
    Image.fromarray(img).save(tmp_path / "x.png")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", generate_uid(), "OT"
    ds.set_pixel_data(img, "MONOCHROME2", 8)
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    transform = encoder_transform(24, CLIP_MEAN, CLIP_STD)
    from_png, from_dicom = transform(read_image(tmp_path / "x.png")), transform(read_image(tmp_path / "x.dcm"))
    torch.testing.assert_close(from_png, from_dicom, rtol=0, atol=0)
    torch.testing.assert_close(transform(tmp_path / "x.dcm"), from_dicom)  # a path works too


def test_matches_open_clip_preprocessing():
    """On a real RGB ultrasound image, our MONAI pipeline and open_clip's PIL/torchvision one agree
    to well under one grey level on average (measured 0.003 in normalised units)."""
    open_clip = pytest.importorskip("open_clip")
    image = read_image(get_testdata_file("US1_UNCI.dcm"))
    u8 = np.round(image.pixels * 255).astype(np.uint8)
    reference = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(Image.fromarray(u8))
    ours = encoder_transform(224, CLIP_MEAN, CLIP_STD)(u8)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 0.01


def test_integer_float_and_rgba_inputs_agree():
    rgb = np.stack([corner_image(20, 20)] * 3, -1)
    rgba = np.concatenate([rgb, np.full((20, 20, 1), 7, np.uint8)], -1)
    transform = encoder_transform(20, CLIP_MEAN, CLIP_STD)
    a, b, c = transform(rgb), transform(rgb.astype(np.float32) / 255), transform(rgba)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"size": 0}, "size must be"),
        ({"mean": (0.1, 0.2)}, "mean needs 1 or 3 values"),
        ({"std": (0.0,)}, "std must be positive"),
        ({"interpolation": "lanczos"}, "interpolation 'lanczos'"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    args = {"size": 16, "mean": CLIP_MEAN, "std": CLIP_STD, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        encoder_transform(**args)
