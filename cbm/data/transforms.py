"""MONAI preprocessing that reproduces a CLIP-style encoder's expected input.

``encoder_transform(size, mean, std)`` turns a :class:`~cbm.data.LoadedImage`, an ``(H, W[, C])``
array or an image path into a ``(3, size, size)`` float32 tensor the way open_clip's inference
transform does for the model's ``resize_mode``:

- ``shortest`` (the default): resize the shortest side to ``size``, centre crop;
- ``longest``: resize the longest side to ``size``, pad the other evenly with ``fill_color``;
- ``squash``: resize both sides to ``size`` (the aspect ratio is not kept), no crop;

then grey to three channels and normalise with the encoder's mean and std. Resizing is torch's
antialiased bicubic, the same filter torchvision applies, so on 8-bit RGB or grey images the result
follows open_clip's PIL pipeline to about 0.004 in normalised units on average (PIL rounds to 8 bits
between its two passes, so enlarged noise differs more); the crop and pad place the image exactly
where torchvision's ``center_crop`` and open_clip's ``CenterCropOrPad`` do. Palette, 1-bit, alpha,
CMYK and YCbCr images reach it as RGB (:func:`cbm.data.read_image`), where open_clip resizes them
in their own mode (see docs/encoders.md).

Orientation: our readers return ``(H, W, C)`` with row 0 at the top; the first transform moves
channels first, ``(C, H, W)``, and nothing transposes the spatial axes. (MONAI's own ``LoadImage``
with its PIL reader returns ``(W, H)`` arrays, which is why we do not load through it: a PNG and a
DICOM of the same pixels must give the same tensor.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose, Transform

from cbm.data._image import LoadedImage, read_image
from cbm.data._image_base import sixteen_bit_range

__all__ = [
    "encoder_transform", "channels_last", "unit_pixels", "ToChannelFirst", "ResizeShortestSide", "ResizeLongestSide",
    "ResizeSquash", "CentreCropOrPad", "GreyToRGB", "Normalize", "INTERPOLATIONS", "RESIZE_MODES",
]  # fmt: skip

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "area")
RESIZE_MODES = ("shortest", "longest", "squash")  # open_clip's PreprocessCfg.resize_mode values


class ToChannelFirst(Transform):
    """LoadedImage / path / ``(H, W)`` or ``(H, W, C)`` array / ``(C, H, W)`` torch tensor -> float32
    ``(C, H, W)`` tensor in [0, 1].

    Arrays and tensors are scaled to [0, 1] alike (:func:`unit_pixels`: uint8 by 255, floats must
    be in [0, 1]); an alpha channel is dropped.
    """

    def __call__(self, data: Any) -> torch.Tensor:
        if isinstance(data, (str, os.PathLike)):
            data = read_image(data)
        if isinstance(data, LoadedImage):
            data = data.pixels
        arr = unit_pixels(channels_last(data))
        if arr.shape[2] in (2, 4):  # grey+alpha, RGBA: drop alpha as PIL's convert does
            arr = arr[..., : arr.shape[2] - 1]
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()


# float32 rounding of values computed in [0, 1]
_UNIT_SLACK = 1e-3


def channels_last(arr: Any) -> np.ndarray:
    """An image array as ``(H, W, C)`` with C in 1..4 and at least one pixel (``(H, W)`` gets C = 1); a
    ValueError naming the shape otherwise, and the fix where the array is channels first. A torch
    tensor is ``(C, H, W)`` or ``(H, W)``, as torchvision gives images, and is moved channels last."""
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu()
        if t.ndim not in (2, 3) or (t.ndim == 3 and t.shape[0] not in (1, 2, 3, 4)) or t.numel() == 0:
            looks = t.ndim == 3 and t.shape[2] in (1, 2, 3, 4) and t.numel()
            raise ValueError(f"an image tensor must be (C, H, W) with C in 1..4, or (H, W) (channels first, as "
                             f"torchvision gives images); got {tuple(t.shape)}"
                             + (", which looks (H, W, C): give t.permute(2, 0, 1)" if looks else ""))
        if t.dtype not in (torch.uint8, torch.uint16, torch.bool) and not t.is_floating_point():
            raise ValueError(f"an image tensor of {t.dtype} has no known range: give torch.uint8 (0-255), torch.uint16 "
                             "or floats in [0, 1] (e.g. t.to(torch.uint8) for 0-255 values)")
        arr = t.permute(1, 2, 0) if t.ndim == 3 else t
        arr = arr.numpy() if arr.dtype != torch.bfloat16 else arr.float().numpy()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.size == 0:
        flipped = arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] > 4
        hint = (": it looks channels first (C, H, W); give arr.transpose(1, 2, 0)" if flipped
                else ": it has no pixels" if arr.size == 0 else "")
        raise ValueError(f"an image array must be (H, W) or (H, W, C) with C in 1..4 (channels last); got {arr.shape}{hint}")
    return arr


def unit_pixels(arr: np.ndarray) -> np.ndarray:
    """An image array as float32 in [0, 1]: uint8 is scaled by 255 and uint16 stretched from its
    smallest to its largest value, alpha left out (:func:`cbm.data.sixteen_bit_range`, as a 16-bit
    PNG file is read); a float array
    must already be in [0, 1] and finite; any other integer type (int64 of 0-255, a signed CT array)
    is refused with the fix, since its range cannot be told from its type."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        colour = arr[..., : {2: 1, 4: 3}[arr.shape[-1]]] if arr.ndim == 3 and arr.shape[-1] in (2, 4) else arr
        lo, hi = sixteen_bit_range(colour)
        out = arr.astype(np.float32)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        return np.clip(out, 0.0, 1.0, out=out)
    if np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"an image array of {arr.dtype} has no known range: give uint8 (0-255), uint16 (0-65535) "
                         "or floats in [0, 1] (e.g. arr.astype(np.uint8) for 0-255 values)")
    arr = np.asarray(arr, np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("an image array holds NaN or infinite values; give pixel values in [0, 1]")
    if arr.size and (arr.min() < -_UNIT_SLACK or arr.max() > 1 + _UNIT_SLACK):
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_UNIT_SLACK and -5 <= lo and hi <= 5:  # what a mean/std normalisation gives
            hint = (" (it looks normalised with a mean and std: pass the pixels before that normalisation, which "
                    "the encoder's own transform does)")
        elif lo < -_UNIT_SLACK:  # CT numbers and other signed ranges
            hint = " (rescale or window it to [0, 1]; a DICOM file given as a path is read through its own window)"
        elif hi <= 255:
            hint = " (it looks like 0-255: divide by 255, or pass the uint8 array itself)"
        else:
            hint = ""
        raise ValueError(f"a float image array must hold values in [0, 1]; this one ranges from {lo:g} to {hi:g}{hint}")
    return np.clip(arr, 0.0, 1.0)


class _Resize(Transform):
    """Resize ``(C, H, W)`` to the size :meth:`output_size` picks.

    Uses ``torch.nn.functional.interpolate`` with ``antialias=True`` for bicubic/bilinear, which
    is the filter torchvision and PIL use when shrinking; values are clamped back to [0, 1]. An
    image already of that size is returned as it is (as torchvision does).
    """

    def __init__(self, size: int, interpolation: str = "bicubic") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        self.size = int(size)
        self.interpolation = interpolation

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.resize_to(img, *self.output_size(int(img.shape[-2]), int(img.shape[-1])))

    def resize_to(self, img: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
        """``img`` resized to ``new_h`` x ``new_w`` with this transform's filter."""
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if (new_h, new_w) == (h, w):
            return img
        kwargs: dict[str, Any] = {}
        if self.interpolation in ("bicubic", "bilinear"):
            kwargs = {"align_corners": False, "antialias": True}
        resize = lambda x, hw: torch.nn.functional.interpolate(x, size=hw, mode=self.interpolation, **kwargs)  # noqa: E731
        if new_w == 1 and new_h != h and kwargs:
            # torch's antialiased resize to one column gives every row the first row's value (a very
            # tall image in "longest" mode): the width first, then the height along a row (the same
            # separable filter, in two passes)
            out = resize(resize(img[None].float(), (h, 1)).transpose(-1, -2), (1, new_h)).transpose(-1, -2)[0]
        else:
            out = resize(img[None].float(), (new_h, new_w))[0]
        return out.clamp_(0.0, 1.0)


class ResizeShortestSide(_Resize):
    """Resize so the shorter side is ``size``, keeping the aspect ratio (torchvision's rule for an
    int size: the longer side becomes ``int(size * long / short)``).

    ``centre_only``: where the resized image would have over :data:`_WHOLE_PIXELS` pixels (a
    2 x 30,000 strip becomes 224 x 3,360,000), only the central ``size`` pixels of its longer side
    are computed, the ones the centre crop that follows keeps, with the same values: a thin strip
    within the pixel budget would otherwise need gigabytes.
    """

    def __init__(self, size: int, interpolation: str = "bicubic", centre_only: bool = False) -> None:
        super().__init__(size, interpolation)
        self.centre_only = centre_only

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if h <= w else (new_long, new_short)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = int(img.shape[-2]), int(img.shape[-1])
        new_h, new_w = self.output_size(h, w)
        if not self.centre_only or new_h * new_w <= _WHOLE_PIXELS:
            return super().__call__(img)
        axis = -1 if new_w >= new_h else -2  # the longer side: its centre window first, then the shorter side
        start = int(round((max(new_h, new_w) - self.size) / 2.0))  # where CentreCropOrPad starts
        index, weight = _window_weights(int(img.shape[axis]), max(new_h, new_w), start, self.size, self.interpolation)
        x = img.float().movedim(axis, -1)
        x = (x[..., index] * weight).sum(-1).movedim(-1, axis)  # clamped once, after both sides, as in one pass
        return _Resize(1, self.interpolation).resize_to(x, self.size, self.size)


_WHOLE_PIXELS = 1 << 22  # 4.2 million: 50 MB of float RGB


def _window_weights(n_in: int, n_out: int, start: int, count: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The input indices ``(count, K)`` and weights of outputs ``start`` .. ``start + count`` of a resize
    of ``n_in`` samples to ``n_out`` along one axis, as torch's ``interpolate`` computes them (antialiased
    bicubic with a = -0.5 or bilinear, PIL's filters; nearest; area, an average over each output's span)."""
    scale = n_in / n_out
    j = torch.arange(start, start + count, dtype=torch.float64)
    if mode == "nearest":  # in float32, as torch computes it (float64 puts some outputs one input over)
        scale32 = torch.tensor(n_in, dtype=torch.float32) / n_out
        return torch.clamp((j.float() * scale32).floor().long(), max=n_in - 1)[:, None], torch.ones(count, 1)
    if mode == "area":  # torch's adaptive average pool, in whole numbers (floats put some spans one input off)
        out = torch.arange(start, start + count, dtype=torch.int64)
        lo, hi = (out * n_in) // n_out, -((-(out + 1) * n_in) // n_out)
    else:
        support = (2.0 if mode == "bicubic" else 1.0) * max(scale, 1.0)
        centre = scale * (j + 0.5)
        lo = torch.clamp((centre - support + 0.5).floor(), min=0).long()
        hi = torch.clamp((centre + support + 0.5).floor(), max=n_in).long()
    k = torch.arange(int((hi - lo).max()))
    index = lo[:, None] + k[None, :]
    if mode == "area":
        weight = torch.ones(index.shape, dtype=torch.float64)
    else:
        x = ((index - centre[:, None] + 0.5) / max(scale, 1.0)).abs()
        if mode == "bicubic":
            a = -0.5
            weight = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                                 torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
        else:
            weight = torch.clamp(1 - x, min=0)
    weight = torch.where(index < hi[:, None], weight, torch.zeros_like(weight))
    return torch.clamp(index, max=n_in - 1), (weight / weight.sum(1, keepdim=True)).float()


class ResizeLongestSide(_Resize):
    """Resize so the longer side is ``size``, keeping the aspect ratio (open_clip's
    ``ResizeKeepRatio(longest=1)``: each side becomes ``round(side / max(h / size, w / size))``)."""

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        ratio = max(h / self.size, w / self.size)
        return max(1, round(h / ratio)), max(1, round(w / ratio))


class ResizeSquash(_Resize):
    """Resize both sides to ``size`` (open_clip's ``squash``): the aspect ratio is not kept."""

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return self.size, self.size


class CentreCropOrPad(Transform):
    """Cut the central ``size`` x ``size`` window of ``(C, H, W)``, padding a side shorter than ``size``
    with ``fill`` first: torchvision's ``center_crop`` and open_clip's ``CenterCropOrPad``, pixel for pixel.

    Padding puts ``(size - n) // 2`` pixels before and the rest after; a crop starts at
    ``int(round((n - size) / 2.0))`` (Python's rounding, half to even), where MONAI's
    ``CenterSpatialCrop`` starts one pixel earlier when ``(n - size) % 4 == 3``.
    """

    def __init__(self, size: int, fill: float = 0.0) -> None:
        self.size = int(size)
        self.fill = float(fill)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = int(img.shape[-2]), int(img.shape[-1])
        if h < self.size or w < self.size:
            dh, dw = max(self.size - h, 0), max(self.size - w, 0)
            img = torch.nn.functional.pad(img, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), value=self.fill)
            h, w = int(img.shape[-2]), int(img.shape[-1])
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return img[..., top : top + self.size, left : left + self.size]


class GreyToRGB(Transform):
    """Repeat a one-channel ``(1, H, W)`` image to three channels; three channels pass through."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[0] == 1:
            return img.expand(3, *img.shape[1:]).contiguous()
        if img.shape[0] != 3:
            raise ValueError(f"expected 1 or 3 channels, got {img.shape[0]}")
        return img


class Normalize(Transform):
    """``(img - mean) / std`` per channel of a ``(3, H, W)`` tensor; returns a plain float32 tensor.

    (MONAI's ``NormalizeIntensity(channel_wise=True)`` does the same channel by channel through its
    metadata machinery, about 100x slower on a 224 x 224 image; this is one broadcast.)
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, img: Any) -> torch.Tensor:
        img = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
        return ((img.to(torch.float32) - self.mean) / self.std).contiguous()


def encoder_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    fill_color: float = 0,
) -> Compose:
    """The MONAI pipeline an encoder expects: image -> ``(3, size, size)`` float32 tensor.

    Args:
        size: the encoder's input side in pixels (e.g. 224).
        mean: per-channel mean to subtract (1 or 3 values), e.g. OpenAI CLIP's
            ``(0.48145466, 0.4578275, 0.40821073)``.
        std: per-channel standard deviation to divide by (1 or 3 values).
        interpolation: ``"bicubic"`` (CLIP's), ``"bilinear"``, ``"nearest"`` or ``"area"``.
        resize_mode: open_clip's ``resize_mode``: ``"shortest"`` (resize the shortest side,
            centre crop), ``"longest"`` (resize the longest side, pad to a square) or ``"squash"``
            (resize both sides, no crop).
        fill_color: the grey level, 0-255 as in open_clip's ``fill_color``, that ``"longest"`` pads with.

    Returns:
        A callable ``monai.transforms.Compose`` accepting a LoadedImage, an ``(H, W[, C])`` array
        (floats in [0, 1] or integers) or an image path.
    """
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}")
    mean3 = _per_channel(mean, "mean")
    std3 = _per_channel(std, "std")
    if any(s <= 0 for s in std3):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    if isinstance(fill_color, bool) or not isinstance(fill_color, (int, float)) or not 0 <= fill_color <= 255:
        raise ValueError(f"fill_color must be one grey level from 0 to 255, got {fill_color!r}")
    size = int(size)
    if resize_mode == "shortest":
        geometry = [ResizeShortestSide(size, interpolation, centre_only=True), CentreCropOrPad(size)]
    elif resize_mode == "longest":
        geometry = [ResizeLongestSide(size, interpolation), CentreCropOrPad(size, fill=fill_color / 255.0)]
    else:
        geometry = [ResizeSquash(size, interpolation)]
    return Compose([ToChannelFirst(), *geometry, GreyToRGB(), Normalize(mean3, std3)])


def _per_channel(values: Sequence[float], name: str) -> list[float]:
    vals = [float(v) for v in (values if isinstance(values, Sequence) else [values])]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ValueError(f"{name} needs 1 or 3 values (one per channel), got {len(vals)}: {tuple(values)}")
    return vals
