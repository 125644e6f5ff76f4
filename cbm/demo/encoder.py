"""``demo-clip``: the small CLIP pretrained on the demo world, shipped in ``cbm/demo/assets/``.

The assets are a plain open_clip model config (``demo-clip.json``, registered under the name
``demo-clip`` with ``open_clip.add_model_config``), the weights (``demo-clip.safetensors``, the
model's fp16 state dict) and the training record (``demo-clip.training.json``). The model uses
open_clip's default preprocessing (bicubic resize of the shortest side to 64 px, centre crop,
OpenAI mean and std) and the standard CLIP tokenizer, so any open_clip loader can build it::

    import open_clip
    from cbm.demo.encoder import ASSETS, register_config
    register_config()
    model = open_clip.create_model("demo-clip", pretrained=str(ASSETS / "demo-clip.safetensors"))

``load_demo_clip()`` does exactly that and returns the tokenizer and preprocessing too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["ASSETS", "MODEL_NAME", "CONFIG_PATH", "WEIGHTS_PATH", "RECORD_PATH", "register", "register_config", "load_demo_clip"]

log = logging.getLogger(__name__)

MODEL_NAME = "demo-clip"
ASSETS = Path(__file__).resolve().parent / "assets"
CONFIG_PATH = ASSETS / f"{MODEL_NAME}.json"
WEIGHTS_PATH = ASSETS / f"{MODEL_NAME}.safetensors"
RECORD_PATH = ASSETS / f"{MODEL_NAME}.training.json"


def _target() -> str:
    """The encoder name ``demo-clip`` stands for: the shipped config and weights (checked to exist)."""
    missing = [p for p in (CONFIG_PATH, WEIGHTS_PATH) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the demo-clip encoder's assets are missing ({', '.join(str(p) for p in missing)}); they ship with cbm, "
            "so reinstall it, or produce them with `python scripts/pretrain_demo_clip.py`"
        )
    return f"{CONFIG_PATH}@{WEIGHTS_PATH}"


def register() -> None:
    """Register ``demo-clip`` with cbm's encoder registry: the ``cbm.encoders`` entry point of the package."""
    from cbm.encoders.registry import register_encoder

    register_encoder(MODEL_NAME, _target, "the demo world's small CLIP (64 px), shipped in cbm/demo/assets")


def register_config(path: Path = CONFIG_PATH) -> str:
    """Register the ``demo-clip`` architecture with open_clip (idempotent); returns its name."""
    import open_clip

    if not path.is_file():
        raise FileNotFoundError(
            f"the demo-clip config {path} is missing; reinstall cbm, or train the encoder with "
            "`python scripts/pretrain_demo_clip.py`"
        )
    from cbm.encoders.towers import register_towers

    register_towers()
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(path)
    return MODEL_NAME


def load_demo_clip(device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """Build ``demo-clip`` with its shipped weights, offline.

    Returns ``(model, tokenizer, preprocess_cfg)``: the open_clip model in eval mode, its
    tokenizer, and the preprocessing the model was trained for (size, mean, std, interpolation,
    resize_mode).
    """
    import open_clip

    register_config()
    if not WEIGHTS_PATH.is_file():
        raise FileNotFoundError(
            f"the demo-clip weights {WEIGHTS_PATH} are missing; train them with "
            "`python scripts/pretrain_demo_clip.py` (about an hour on two CPU cores)"
        )
    model = open_clip.create_model(MODEL_NAME, pretrained=str(WEIGHTS_PATH), device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    return model, tokenizer, preprocess_cfg


def model_config(path: Path = CONFIG_PATH) -> dict[str, Any]:
    """The shipped open_clip model config as a dict."""
    return json.loads(path.read_text(encoding="utf-8"))
