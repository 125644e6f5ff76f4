"""Image-tower architectures that cbm defines, registered with timm so open_clip configs can name them.

An open_clip config names a timm tower by ``vision_cfg.timm_model_name``; timm only builds the
architectures in its registry, and open_clip passes it no other arguments. The towers here are
therefore registered as timm models of their own (:func:`register_towers`, idempotent, called
before any cbm encoder is built):

* ``resnet_tiny_os8``: timm's ``test_resnet`` (deep stem, four stages, 0.37 M parameters) with
  output stride 8: its last two stages are dilated instead of strided, so a 64 px input keeps an
  8 x 8 grid to the end. With average pooling and a linear projection (``timm_pool: avg``,
  ``timm_proj: linear``) the image embedding is the mean of the projected cells, so a concept
  map is exact: the concept's similarity with each cell.
* ``resnet_tiny_os8_vit``: the same CNN as a hybrid ViT's patch embedding (timm's ``HybridEmbed``):
  its 8 x 8 cells are the tokens of a 2-layer transformer (width 128, 4 heads), average-pooled
  without a class token. An average of local cells cannot tell an egg from an ellipse (in a
  55-minute run the CNN alone kept "asymmetric shape" at AUROC 0.53); attention lets every token
  see the whole lesion, while each token stays one cell of the image, so a concept map is the
  cosine of each projected token with the concept (the ``patch-tokens`` method), on 8 x 8.
* ``local_global_cnn``: a plain CNN whose 8 x 8 cells see 27 px each (three stride-2 3 x 3
  convolutions and two stride-1 ones at 64 px), plus a global vector from a strided branch over
  those cells (its receptive field is the whole image) added onto every cell; the embedding is the
  mean of the cells. Colours and structures are local, so a cell's projection can only hold what
  is near it and a CAM map localises by construction; shape is global and lives in the added
  vector. In training the global vector is dropped for half of the images (``drop_global``), so the
  cells must carry every local concept on their own instead of leaving it to the global branch.
  Neither ``resnet_tiny_os8`` (receptive field wider than the image: maps peaked off the lesion)
  nor ``resnet_tiny_os8_vit`` (attention spreads every concept over all tokens) localised in
  55-minute runs (pointing 0.40, below a map fixed on the middle cell). ``demo-clip`` uses it
  (pointing 0.83 against 0.75 for a map fixed on the middle cell; docs/demo.md).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

__all__ = ["TOWERS", "LocalGlobalNet", "register_towers", "resnet_tiny_os8", "resnet_tiny_os8_vit", "local_global_cnn"]

TOWERS: dict[str, str] = {
    "resnet_tiny_os8": "timm's test_resnet with dilated last stages (output stride 8: an 8 x 8 grid at 64 px)",
    "resnet_tiny_os8_vit": "resnet_tiny_os8's 8 x 8 cells as the tokens of a 2-layer transformer, average-pooled",
    "local_global_cnn": "8 x 8 cells that see 27 px each, plus a whole-image vector added onto every cell, average-pooled",
}
"""Tower name -> one line about it."""


def resnet_tiny_os8(pretrained: bool = False, **kwargs: Any) -> Any:
    """timm's ``test_resnet`` with output stride 8 (never pretrained: cbm ships its own weights)."""
    import timm

    kwargs.setdefault("output_stride", 8)
    return timm.create_model("test_resnet", pretrained=False, **kwargs)


def resnet_tiny_os8_vit(pretrained: bool = False, **kwargs: Any) -> Any:
    """``resnet_tiny_os8``'s cells as the tokens of a 2-layer transformer (never pretrained)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    backbone = timm.create_model("test_resnet", pretrained=False, output_stride=8, features_only=True, out_indices=(4,))
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these along
        kwargs.pop(key, None)
    settings = {"img_size": 64, "patch_size": 1, "embed_dim": 128, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0,
                "class_token": False, "global_pool": "avg", **kwargs}
    model = VisionTransformer(embed_layer=partial(HybridEmbed, backbone=backbone), **settings)
    # what timm's factory sets on the models it builds (open_clip reads it); no pretrained weights exist
    model.pretrained_cfg = model.default_cfg = {"input_size": (3, settings["img_size"], settings["img_size"]),
                                                "pool_size": None, "num_classes": 0}
    return model


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class LocalGlobalNet(nn.Module):
    """Local cells plus a global vector added onto each (``local_global_cnn``; see the module docstring).

    The interface is the part of timm's that open_clip's ``TimmModel`` and cbm's concept maps use:
    ``forward_features`` gives the ``(N, C, 8, 8)`` cells, ``forward_head`` their average
    (``global_pool``), ``reset_classifier`` and ``num_features``; there is no classifier.

    Args:
        width: channels of a cell (and of the global vector).
        drop_global: in training, the share of images whose global vector is left out.
    """

    def __init__(self, width: int = 128, drop_global: float = 0.5, global_pool: str = "avg", **_: Any) -> None:
        super().__init__()
        from timm.layers import SelectAdaptivePool2d

        # receptive field of a cell: 3, 7, 11, 19, 27, 27 px; the grid is the input / 8
        self.local = nn.Sequential(_conv(3, 32, 3, 2), _conv(32, 48, 3), _conv(48, 64, 3, 2), _conv(64, 96, 3),
                                   _conv(96, width, 3, 2), _conv(width, width, 1))
        self.glob = nn.Sequential(_conv(width, width, 3), _conv(width, width, 3, 2), _conv(width, width, 3),
                                  _conv(width, width, 3, 2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, width))
        self.drop_global = drop_global
        self.num_features = width
        self.num_classes = 0
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool or "avg", flatten=True)
        self.pretrained_cfg = self.default_cfg = {"input_size": (3, 64, 64), "pool_size": (8, 8), "num_classes": 0}

    def reset_classifier(self, num_classes: int = 0, global_pool: str = "avg") -> None:
        from timm.layers import SelectAdaptivePool2d

        if num_classes:
            raise ValueError("local_global_cnn has no classifier; use it as an open_clip image tower")
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool or "avg", flatten=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.local(x)
        whole = self.glob(cells)
        if self.training and self.drop_global > 0:
            keep = torch.rand(len(x), 1, device=x.device) >= self.drop_global
            whole = whole * keep.to(whole.dtype)
        return cells + whole[:, :, None, None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.global_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def local_global_cnn(pretrained: bool = False, **kwargs: Any) -> LocalGlobalNet:
    """:class:`LocalGlobalNet` (never pretrained: cbm ships its own weights)."""
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "num_classes"):  # timm's factory passes these along
        kwargs.pop(key, None)
    return LocalGlobalNet(**kwargs)


def register_towers() -> None:
    """Register cbm's towers with timm (once per process)."""
    from timm.models import is_model, register_model

    for build in (resnet_tiny_os8, resnet_tiny_os8_vit, local_global_cnn):  # timm registers each under its function's name
        if not is_model(build.__name__):
            register_model(build)
