"""Building open_clip models from a config, and loading their weights safely.

Every encoder name resolves (see :mod:`cbm.encoders.registry`) to a :class:`ModelSpec`: an
open_clip model config, preprocessing overrides, and a weights file (or none, for a seeded
random initialisation). This module turns a spec into a model with its tokenizer and
preprocessing, and nothing else: no downloads happen here.

Loading is safe by default. A safetensors file (known by its first bytes, whatever its name) is
read with safetensors; a PyTorch checkpoint with ``torch.load(..., weights_only=True)``, so a
pickle that holds more than tensors is refused rather than executed. A checkpoint that does not fit its architecture is reported with the
missing, unexpected and mis-shaped keys instead of loading half a model.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cbm.encoders.hashing import file_sha256

__all__ = [
    "ModelSpec",
    "RANDOM_WEIGHTS",
    "RANDOM_SEED",
    "read_model_config",
    "build_model",
    "build_tokenizer",
    "read_state_dict",
    "load_weights",
    "preprocess_config",
    "weights_id",
    "architecture_id",
]

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
"""The weights name that asks for no checkpoint: a random initialisation with :data:`RANDOM_SEED`."""
RANDOM_SEED = 0
"""Seed of random initialisations, so two processes (or two runs) build the same random model."""

_TEXT_TOWER_KEYS = ("hf_model_name", "hf_tokenizer_name")
_MAX_LISTED_KEYS = 8


@dataclass
class ModelSpec:
    """An encoder's architecture and weights, resolved from a registry name."""

    name: str  # the name the encoder was created from ("biomedclip", "ViT-B-16@openai", ...)
    model_cfg: dict[str, Any]  # open_clip model config: embed_dim, vision_cfg, text_cfg
    preprocess_cfg: dict[str, Any]  # preprocessing overrides (mean, std, interpolation, ...)
    weights: Path | None  # checkpoint file; None = random initialisation with RANDOM_SEED
    origin: str  # where architecture and weights came from, for people and the cache manifest
    tokenizer_name: str | None = None  # a built-in open_clip architecture whose tokenizer to use
    text_tower_ids: dict[str, str] | None = None  # hub ids of a fetched local text tower (for the cache key)
    cache_name: str | None = None  # the name its cache key starts with, when not ``name`` (a fetched preset's)


def read_model_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read an open_clip config file: ``(model_cfg, preprocess_cfg, extra)``.

    Two layouts are accepted: the hub's ``open_clip_config.json`` (``{"model_cfg": ...,
    "preprocess_cfg": ...}``) and a plain model config (``{"embed_dim": ..., "vision_cfg": ...,
    "text_cfg": ...}``, optionally with a ``"preprocess_cfg"`` block). ``extra`` holds any other
    top-level fields of the hub layout (cbm's own ``"cbm"`` provenance block of a fetched model).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not JSON, or not a model config (the message names the missing fields).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"model config {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"model config {path} must hold a JSON object, got {type(data).__name__}")
    if "model_cfg" in data:
        model_cfg = dict(data["model_cfg"])
        preprocess = dict(data.get("preprocess_cfg") or {})
        extra = {k: v for k, v in data.items() if k not in ("model_cfg", "preprocess_cfg")}
    else:
        model_cfg = dict(data)
        preprocess = dict(model_cfg.pop("preprocess_cfg", None) or {})
        extra = {}
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ValueError(
            f"model config {path} lacks {', '.join(missing)}: expected an open_clip model config "
            '({"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}) or an open_clip_config.json '
            '({"model_cfg": {...}, "preprocess_cfg": {...}})'
        )
    return model_cfg, preprocess, extra


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """The open_clip model of ``spec`` on the CPU, in eval mode, weights frozen.

    Towers are built without their own pretrained weights (no timm or transformers download);
    then the spec's checkpoint is loaded, or, without one, the random initialisation is seeded
    with :data:`RANDOM_SEED` so it is the same in every process.

    Raises:
        RuntimeError: an HF text tower without ``transformers`` installed, or whose config cannot
            be found offline.
        ValueError: the checkpoint is refused or does not match the architecture.
    """
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg

    from cbm.encoders.towers import register_towers

    register_towers()  # a config may name one of cbm's own image towers
    cfg = copy.deepcopy(spec.model_cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    hf_text = "hf_model_name" in text
    if hf_text and importlib.util.find_spec("transformers") is None:
        raise RuntimeError(
            f"encoder {spec.name!r} has a Hugging Face text tower ({text['hf_model_name']}), which needs "
            "the transformers package: pip install 'cbm[hf]'"
        )
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if hf_text:
        text["hf_model_pretrained"] = False
    custom_text = bool(cfg.pop("custom_text", False)) or hf_text
    model_class = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = model_class(**cfg)
    except TypeError as exc:
        raise ValueError(f"the model config of encoder {spec.name!r} ({spec.origin}) is not valid for open_clip: {exc}") from None
    except OSError as exc:
        if hf_text:
            raise RuntimeError(
                f"encoder {spec.name!r}: the text tower config {text['hf_model_name']!r} could not be read ({exc}). "
                "Offline, fetch the model on a connected machine with `cbm fetch-models NAME --to DIR`, copy DIR "
                "over, and use the encoder name local-dir:DIR"
            ) from None
        raise
    _fit_timm_input_size(model, vision.get("image_size"))
    if spec.weights is not None:
        load_weights(model, read_state_dict(spec.weights), source=str(spec.weights))
    set_model_preprocess_cfg(model, preprocess_config(model, spec))
    model.eval()
    model.requires_grad_(False)
    return model


def _fit_timm_input_size(model: torch.nn.Module, image_size: Any) -> None:
    """A timm ViT tower is built at timm's default size; resize it to the config's ``image_size`` (as
    open_clip does for ``force_image_size``), before the weights are loaded."""
    visual = getattr(model, "visual", None)
    current = getattr(getattr(getattr(visual, "trunk", None), "patch_embed", None), "img_size", None)
    if image_size is None or current is None or not hasattr(visual, "set_input_size"):
        return
    wanted = tuple(image_size) if isinstance(image_size, (list, tuple)) else (int(image_size), int(image_size))
    if tuple(current) != wanted:
        visual.set_input_size(wanted)


def build_tokenizer(spec: ModelSpec) -> Any:
    """The open_clip tokenizer of ``spec``'s text tower (CLIP BPE, or the HF tokenizer it names)."""
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    if spec.tokenizer_name:
        return open_clip.get_tokenizer(spec.tokenizer_name)
    text = spec.model_cfg["text_cfg"]
    context = int(text.get("context_length", DEFAULT_CONTEXT_LENGTH))
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(text["hf_tokenizer_name"], context_length=context, tokenizer_mode=text.get("tokenizer_mode"), **kwargs)
    return SimpleTokenizer(context_length=context, **kwargs)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, safely.

    The file's first bytes say what it is, whatever its name: a safetensors file (also one saved
    as ``.bin``) is read with safetensors; a PyTorch checkpoint (zip or pickle) with
    ``torch.load(weights_only=True)``. A Git LFS pointer or any other file (an HTML error page
    saved under the weights' name) is named as such, not taken for a pickle. A
    ``{"state_dict": ...}`` wrapper and a DataParallel ``module.`` prefix are removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint, or is a pickle of arbitrary objects (refused).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    kind, head = _checkpoint_kind(path)
    if kind == "lfs-pointer":
        raise ValueError(
            f"checkpoint {path} is a Git LFS pointer, not the weights: the repository was cloned without its large "
            "files. Fetch them (git lfs pull in the clone), or download the model with `cbm fetch-models NAME --to DIR`"
        )
    if kind == "pytorch":
        state = _read_torch(path)
    elif kind == "safetensors" or path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        raise ValueError(
            f"checkpoint {path} is neither a PyTorch checkpoint nor a safetensors file (it begins {head[:24]!r}); "
            "a failed download often leaves an error page under the weights' name: re-download or re-export it"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _checkpoint_kind(path: Path) -> tuple[str, bytes]:
    """``(kind, first bytes)``: ``safetensors``, ``pytorch`` (torch.save's zip, or a pickle), ``lfs-pointer`` or ``other``."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "lfs-pointer", head
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip; a pickle of protocol 2 or later
        return "pytorch", head
    header = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and 8 + header <= path.stat().st_size:  # safetensors: header length, then its JSON
        return "safetensors", head
    return "other", head


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} is not a readable safetensors file ({exc}); re-download or re-export it") from None


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        said = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's message carries terminal colour codes
        first = said.splitlines()[0] if said else type(exc).__name__
        raise ValueError(
            f"checkpoint {path} was refused: it is a pickle holding more than tensors, and unpickling it "
            f"could run arbitrary code (torch.load(weights_only=True) said: {first}). If you trust its "
            "source, convert it once to safetensors: load it in a separate session with "
            "torch.load(path, weights_only=False) and save its state_dict with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors')"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"checkpoint {path} could not be read ({exc}); is it a PyTorch or safetensors file?") from None


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly, after open_clip's format conversions.

    Raises:
        ValueError: keys missing from the checkpoint, keys the model does not have, or shapes that
            differ; the message lists them (the first few of each) and says how to fix it.
    """
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    state = convert_state_dict(model, dict(state_dict))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        target = getattr(model, name, None)
        if name in state and target is not None and state[name].ndim != target.ndim:
            state[name] = state[name].reshape(target.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])  # a CLIP checkpoint in a SigLIP-style model
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (
            ("missing from the checkpoint", missing),
            ("not in the model (unexpected)", unexpected),
            ("with a different shape (checkpoint vs model)", mis_shaped),
        ):
            if keys:
                shown = ", ".join(keys[:_MAX_LISTED_KEYS]) + (f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")
                parts.append(f"{len(keys)} key(s) {label}: {shown}")
        raise ValueError(
            f"checkpoint {source} does not match the model architecture ({type(model).__name__}): "
            + "; ".join(parts)
            + ". Pair the weights with the architecture config they were trained with (ARCH@WEIGHTS)."
        )
    model.load_state_dict(state, strict=True)


def preprocess_config(model: torch.nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """The image preprocessing the model expects: size (from the model), mean, std, interpolation, resize_mode
    and fill_color (open_clip's ``PreprocessCfg`` fields)."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), spec.preprocess_cfg)
    size = getattr(getattr(model, "visual", None), "image_size", None) or cfg["size"]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"encoder {spec.name!r} expects non-square {tuple(size)} inputs; only square inputs are supported")
        size = size[0]
    return {
        "size": int(size),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": str(cfg["interpolation"]),
        "resize_mode": str(cfg["resize_mode"]),
        "fill_color": cfg["fill_color"],
    }


def weights_id(spec: ModelSpec) -> str:
    """Identity of the weights: the checkpoint's SHA-256, or the seeded random initialisation."""
    if spec.weights is None:
        import open_clip

        return f"random-seed{RANDOM_SEED}-torch{torch.__version__}-open_clip{open_clip.__version__}"
    return "sha256:" + file_sha256(spec.weights)


def architecture_id(spec: ModelSpec) -> dict[str, Any]:
    """The model config as the cache key sees it: a fetched text tower counts as its hub original."""
    cfg = copy.deepcopy(spec.model_cfg)
    for key, original in (spec.text_tower_ids or {}).items():
        if key in _TEXT_TOWER_KEYS:
            cfg["text_cfg"][key] = original
    return cfg
