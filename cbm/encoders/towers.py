"""Image-tower architectures that cbm defines, registered with timm so open_clip configs can name them.

An open_clip config names a timm tower by ``vision_cfg.timm_model_name``; timm only builds the
architectures in its registry, and open_clip passes it no other arguments. The towers here are
therefore registered as timm models of their own (:func:`register_towers`, idempotent, called
before any cbm encoder is built):

* ``resnet_tiny_os8``: timm's ``test_resnet`` (deep stem, four stages, 0.37 M parameters) with
  output stride 8: its last two stages are dilated instead of strided, so a 64 px input keeps an
  8 x 8 grid to the end. With average pooling and a linear projection (``timm_pool: avg``,
  ``timm_proj: linear``) the image embedding is the mean of the projected cells, so a concept
  map is exact: the concept's similarity with each cell. The demo world's ``demo-clip`` uses it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TOWERS", "register_towers", "resnet_tiny_os8"]

TOWERS: dict[str, str] = {
    "resnet_tiny_os8": "timm's test_resnet with dilated last stages (output stride 8: an 8 x 8 grid at 64 px)",
}
"""Tower name -> one line about it."""


def resnet_tiny_os8(pretrained: bool = False, **kwargs: Any) -> Any:
    """timm's ``test_resnet`` with output stride 8 (never pretrained: cbm ships its own weights)."""
    import timm

    kwargs.setdefault("output_stride", 8)
    return timm.create_model("test_resnet", pretrained=False, **kwargs)


def register_towers() -> None:
    """Register cbm's towers with timm (once per process)."""
    from timm.models import is_model, register_model

    for build in (resnet_tiny_os8,):  # timm registers each under its function's name
        if not is_model(build.__name__):
            register_model(build)
