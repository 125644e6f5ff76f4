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
  The demo world's ``demo-clip`` uses it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

__all__ = ["TOWERS", "register_towers", "resnet_tiny_os8", "resnet_tiny_os8_vit"]

TOWERS: dict[str, str] = {
    "resnet_tiny_os8": "timm's test_resnet with dilated last stages (output stride 8: an 8 x 8 grid at 64 px)",
    "resnet_tiny_os8_vit": "resnet_tiny_os8's 8 x 8 cells as the tokens of a 2-layer transformer, average-pooled",
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


def register_towers() -> None:
    """Register cbm's towers with timm (once per process)."""
    from timm.models import is_model, register_model

    for build in (resnet_tiny_os8, resnet_tiny_os8_vit):  # timm registers each under its function's name
        if not is_model(build.__name__):
            register_model(build)
