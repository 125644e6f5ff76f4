"""The encoder registry: names -> models, the way open_clip and timm find theirs.

An encoder name is one of:

- a preset from :func:`list_encoders` (``biomedclip``, ``clip-vit-b-16``, ``demo-clip``);
- ``hf-hub:ORG/REPO``: an open_clip model on the Hugging Face hub (config and weights);
- ``local-dir:DIR``: a folder with ``open_clip_config.json`` and weights, as written by
  ``cbm fetch-models`` or open_clip's ``push_to_hf_hub``;
- ``ARCH@WEIGHTS``: an architecture with weights. ``ARCH`` is an open_clip architecture name
  (``ViT-B-16``) or a model-config ``.json`` file; ``WEIGHTS`` is a checkpoint file
  (``.safetensors``, or ``.pt``/``.pth``/``.bin`` holding only tensors), an open_clip pretrained
  tag of ``ARCH`` (``openai``, ``laion2b_s34b_b88k``, ...), or ``random`` (seeded random
  initialisation: for tests and benchmarks). ``hf-hub:`` and ``local-dir:`` sources take
  ``@WEIGHTS`` too, to pair their architecture with other weights (or none).

Presets resolve to such names; a preset that has been fetched with ``cbm fetch-models NAME``
(into ``cbm.utils.cache_dir("models", NAME)``) is loaded from there, with no network.

Presets are registered with :func:`register_encoder`, as timm's ``@register_model`` registers its
models: cbm's own two at import, and any package's through the ``cbm.encoders`` entry-point group
(a callable that registers its encoders when the registry is first asked for a name). The demo
world's ``demo-clip`` comes in that way, from ``cbm.demo.encoder:register``::

    [project.entry-points."cbm.encoders"]
    demo-clip = "cbm.demo.encoder:register"
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cbm.encoders.encoder import Encoder, resolve_device, resolve_precision
from cbm.encoders.loading import (
    RANDOM_WEIGHTS,
    ModelSpec,
    architecture_id,
    build_model,
    build_tokenizer,
    preprocess_config,
    read_model_config,
    weights_id,
)
from cbm.utils import cache_dir, unknown_name_message

__all__ = [
    "EncoderPreset",
    "PRESETS",
    "ENTRY_POINT_GROUP",
    "register_encoder",
    "list_encoders",
    "resolve_encoder",
    "create_encoder",
    "fetched_dir",
    "HUB_PREFIX",
    "LOCAL_DIR_PREFIX",
    "CONFIG_FILE",
    "WEIGHT_FILES",
    "CHECKPOINT_SUFFIXES",
]

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
"""Weights files of an open_clip folder or hub repo, in order of preference (safetensors first)."""
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_NAME_FORMS = (
    "hf-hub:ORG/REPO, local-dir:DIR, or ARCH@WEIGHTS (ARCH an open_clip architecture or a model-config "
    ".json file; WEIGHTS a checkpoint file, an open_clip pretrained tag, or 'random')"
)


@dataclass(frozen=True)
class EncoderPreset:
    """A short name for an encoder."""

    name: str  # the preset's name
    target: Callable[[], str]  # the full encoder name it stands for (may check files and raise)
    description: str  # one line for people


ENTRY_POINT_GROUP = "cbm.encoders"
"""Entry points of this group are called (no arguments) to register encoders, once per process."""

PRESETS: dict[str, EncoderPreset] = {}
_plugins_state = "unloaded"  # "loading" while this process calls them, then "loaded"
_plugins_lock = threading.RLock()


def register_encoder(name: str, target: Callable[[], str] | str, description: str, *, replace: bool = False) -> None:
    """Register a preset: ``create_encoder(name)`` then builds what ``target`` names.

    Args:
        name: the preset's name (``demo-clip``).
        target: the full encoder name it stands for (``hf-hub:...``, ``ARCH@WEIGHTS``, ...), or a
            function returning it when asked (it may check that files exist and raise).
        description: one line for people (named when another registration of ``name`` is refused).
        replace: allow replacing an existing preset of that name (else a ``ValueError``).
    """
    if name in PRESETS and not replace and PRESETS[name].target is not target:
        raise ValueError(f"encoder preset {name!r} is already registered ({PRESETS[name].description}); "
                         "pass replace=True to replace it")
    with _plugins_lock:  # not while another thread lists them
        PRESETS[name] = EncoderPreset(name, target if callable(target) else (lambda: target), description)


def _load_plugins() -> None:
    """Call every ``cbm.encoders`` entry point once (a broken plugin is logged, not fatal). Another
    thread asking meanwhile waits until all have registered (it saw a registry without them); a plugin
    that asks while registering is answered at once."""
    global _plugins_state
    if _plugins_state == "loaded":
        return
    with _plugins_lock:
        if _plugins_state != "unloaded":  # loaded while this thread waited, or this thread is loading them
            return
        _plugins_state = "loading"
        from importlib.metadata import entry_points

        try:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    ep.load()()
                except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
                    log.warning("encoder plugin %s (%s) failed to register: %s", ep.name, ep.value, exc)
        finally:
            _plugins_state = "loaded"


register_encoder(
    "biomedclip",
    lambda: f"{HUB_PREFIX}microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "BiomedCLIP (PubMedBERT text tower, ViT-B/16 at 224 px), trained on PMC-15M figure-caption pairs",
)
register_encoder("clip-vit-b-16", "ViT-B-16@openai", "OpenAI CLIP ViT-B/16 at 224 px")


def list_encoders() -> list[str]:
    """Names of the encoder presets (any ``hf-hub:``, ``local-dir:`` or ``ARCH@WEIGHTS`` name works too)."""
    _load_plugins()
    with _plugins_lock:
        return sorted(PRESETS)


def fetched_dir(preset: str) -> Path:
    """Where ``cbm fetch-models PRESET`` puts a preset by default (``cache_dir("models", PRESET)``)."""
    return cache_dir("models") / preset


def create_encoder(name: str, device: str | None = None, precision: str | None = None) -> Encoder:
    """Create an encoder by name (see the module docstring for the forms a name takes).

    Args:
        name: a preset (``list_encoders()``), ``hf-hub:ORG/REPO``, ``local-dir:DIR`` or ``ARCH@WEIGHTS``.
        device: ``cpu``, ``cuda``, ``cuda:N``; ``None`` = the current CUDA device if any, else CPU.
        precision: ``fp32``, ``bf16``, ``fp16``; ``None`` = bf16 (or fp16) autocast on CUDA, fp32 on CPU.

    Raises:
        ValueError: unknown name (the message lists the presets and the closest match), bad
            precision, refused or mismatched checkpoint.
        FileNotFoundError: a named file or folder does not exist.
        RuntimeError: a hub download failed (offline?), or a needed optional package is missing.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    spec = resolve_encoder(name)
    model = build_model(spec)
    preprocess = preprocess_config(model, spec)
    info = {
        "architecture": architecture_id(spec),
        "weights": weights_id(spec),
        "embed_dim": int(spec.model_cfg["embed_dim"]),
    }
    encoder = Encoder(
        name=spec.name,
        model=model.to(dev),
        tokenizer=build_tokenizer(spec),
        preprocess=preprocess,
        device=dev,
        precision=prec,
        info=info,
        cache_name=spec.cache_name,
    )
    log.info("encoder %s: %s on %s (%s)", spec.name, spec.origin, dev, prec)
    return encoder


def resolve_encoder(name: str) -> ModelSpec:
    """The architecture, preprocessing and weights file a name stands for (downloading if needed).

    Raises:
        ValueError, FileNotFoundError, RuntimeError: as :func:`create_encoder`.
    """
    _load_plugins()
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an encoder name must be a non-empty string, got {name!r}; presets: {', '.join(list_encoders())}")
    name = name.strip()
    if name in PRESETS:
        local = fetched_dir(name)
        target = f"{LOCAL_DIR_PREFIX}{local}" if (local / CONFIG_FILE).is_file() else PRESETS[name].target()
        try:
            spec = resolve_encoder(target)
        except RuntimeError as exc:  # say which preset failed, and fetch it by its short name
            raise RuntimeError(f"preset {name!r}: {exc}".replace("fetch-models NAME", f"fetch-models {name}")) from None
        spec.name = name
        return spec
    source, sep, weights = _split_weights(name)
    if sep and source in PRESETS:  # "demo-clip@random": a preset brings its own weights
        raise ValueError(f"encoder {name!r}: the preset {source!r} brings its weights and takes no @WEIGHTS; give "
                         f"{source!r} alone. Other forms: {_NAME_FORMS}.")
    if not sep and Path(name).expanduser().is_dir():  # a folder given without its prefix
        raise ValueError(f"encoder {name!r} is a folder: give it as {LOCAL_DIR_PREFIX}{name} (a folder holding "
                         f"{CONFIG_FILE} and its weights, as `cbm fetch-models --to` writes)")
    if source.startswith(HUB_PREFIX):
        spec = _from_hub(source[len(HUB_PREFIX) :], name, load_weights=not weights)
    elif source.startswith(LOCAL_DIR_PREFIX):
        spec = _from_local_dir(Path(source[len(LOCAL_DIR_PREFIX) :]).expanduser(), name, load_weights=not weights)
    elif sep:
        return _from_architecture(source, weights, name)
    else:
        raise ValueError(_unknown(name))
    if weights:
        spec.weights, spec.origin = _weights_file(weights, name), f"{spec.origin} architecture, weights {weights}"
    return spec


def _split_weights(name: str) -> tuple[str, str, str]:
    """``(source, "@", weights)``, or ``(name, "", "")``: the ``@`` that separates the weights, where a
    folder or file name may hold an ``@`` too (the last ``@`` whose left side is an existing path wins)."""
    def path_of(source: str) -> Path:
        return Path(source[len(LOCAL_DIR_PREFIX):] if source.startswith(LOCAL_DIR_PREFIX) else source).expanduser()

    if name.startswith(LOCAL_DIR_PREFIX) and path_of(name).is_dir():
        return name, "", ""
    first = name.split("@", 1)[0]
    named = first.startswith(HUB_PREFIX) or (os.sep not in first and not first.endswith(".json"))
    if "@" in name and not name.startswith(LOCAL_DIR_PREFIX) and named:
        return first, "@", name[len(first) + 1:]  # an architecture or hub name holds no @: the weights follow the first
    for i in range(len(name) - 1, 0, -1):
        if name[i] == "@" and path_of(name[:i]).exists():
            return name[:i], "@", name[i + 1:]
    source, sep, weights = name.rpartition("@")
    return (source, sep, weights) if sep else (name, "", "")


def _unknown(name: str) -> str:
    import open_clip

    if name in open_clip.list_models() or name.endswith(".json"):
        tags = open_clip.list_pretrained_tags_by_model(name)
        tag_hint = f"{name}@{tags[0]} (tags: {', '.join(tags)}), " if tags else ""
        return f"architecture {name!r} needs weights: {tag_hint}{name}@/path/to/weights.safetensors, or {name}@{RANDOM_WEIGHTS}"
    return f"{unknown_name_message('encoder', name, list_encoders())} Other forms: {_NAME_FORMS}."


def _weights_file(weights: str, name: str) -> Path | None:
    """``None`` for ``random``; otherwise the existing checkpoint file ``weights`` names."""
    if weights == RANDOM_WEIGHTS:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights {weights!r} of encoder {name!r} is not an existing checkpoint file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}) nor {RANDOM_WEIGHTS!r}"
        )
    return path


def _from_architecture(arch: str, weights: str, name: str) -> ModelSpec:
    """``ARCH@WEIGHTS``: a built-in open_clip architecture or a config file, with weights."""
    import open_clip

    tokenizer_name = None
    if arch in open_clip.list_models():
        model_cfg, preprocess = open_clip.get_model_config(arch), {}
        tokenizer_name, origin = arch, f"open_clip {arch}"
    elif arch.endswith(".json") or os.sep in arch or Path(arch).is_file():
        model_cfg, preprocess, _ = read_model_config(Path(arch).expanduser())
        origin = f"config {arch}"
    else:
        raise ValueError(
            f"encoder {name!r}: {unknown_name_message('open_clip architecture', arch, open_clip.list_models())} "
            "Or give a model-config .json file."
        )
    spec = ModelSpec(name=name, model_cfg=model_cfg, preprocess_cfg=preprocess, weights=None, origin=origin, tokenizer_name=tokenizer_name)
    looks_like_file = Path(weights).suffix in CHECKPOINT_SUFFIXES or os.sep in weights or Path(weights).exists()
    if weights == RANDOM_WEIGHTS or looks_like_file:
        spec.weights = _weights_file(weights, name)
        spec.origin += ", random init" if spec.weights is None else f", weights {spec.weights}"
        return spec
    tag_cfg = open_clip.get_pretrained_cfg(arch, weights) if tokenizer_name else {}
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch) if tokenizer_name else []
        raise ValueError(
            f"weights {weights!r} of encoder {name!r} is not a checkpoint file, {RANDOM_WEIGHTS!r}, or an open_clip "
            f"pretrained tag of {arch}" + (f" ({', '.join(tags)})" if tags else "")
        )
    spec.weights = _download(lambda: open_clip.download_pretrained(tag_cfg), name)
    spec.preprocess_cfg = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "fill_color") if k in tag_cfg}
    spec.model_cfg["quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    spec.origin += f", pretrained {weights}"
    return spec


def _from_hub(repo_id: str, name: str, *, load_weights: bool = True) -> ModelSpec:
    """``hf-hub:ORG/REPO``: config and (unless other weights are given) weights from the hub or its cache."""
    config = _download(lambda: hub_download(repo_id, CONFIG_FILE), name)
    model_cfg, preprocess, _ = read_model_config(config)
    spec = ModelSpec(name=name, model_cfg=model_cfg, preprocess_cfg=preprocess, weights=None, origin=f"{HUB_PREFIX}{repo_id}")
    if load_weights:
        errors = []
        for filename in WEIGHT_FILES:
            try:
                spec.weights = Path(hub_download(repo_id, filename))
                break
            except Exception as exc:  # noqa: BLE001 - the hub client raises many types; all mean "not this file"
                errors.append(f"{filename}: {type(exc).__name__}")
        else:
            raise RuntimeError(
                f"encoder {name!r}: no weights found in hub repo {repo_id} ({'; '.join(errors)}). "
                f"{_OFFLINE_HINT}"
            )
    return spec


def _from_local_dir(folder: Path, name: str, *, load_weights: bool = True) -> ModelSpec:
    """``local-dir:DIR``: ``open_clip_config.json`` and weights from a folder (text tower paths relative to it)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"encoder {name!r}: folder {folder} does not exist")
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"encoder {name!r}: {folder} has no {CONFIG_FILE} (the model's architecture and preprocessing); "
            f"a folder written by `cbm fetch-models NAME --to {folder}` has it, or write one beside the weights"
        )
    model_cfg, preprocess, extra = read_model_config(folder / CONFIG_FILE)
    text = model_cfg["text_cfg"]
    for key in ("hf_model_name", "hf_tokenizer_name"):
        value = text.get(key)
        if value and not os.path.isabs(value) and (folder / value).is_dir():
            text[key] = str((folder / value).resolve())
    spec = ModelSpec(
        name=name,
        model_cfg=model_cfg,
        preprocess_cfg=preprocess,
        weights=None,
        origin=f"{LOCAL_DIR_PREFIX}{folder}",
        tokenizer_name=(extra.get("cbm") or {}).get("open_clip_architecture"),
        text_tower_ids=(extra.get("cbm") or {}).get("text_tower_ids"),
        # a folder `cbm fetch-models PRESET` wrote files its features with the preset's: same weights, same cache
        cache_name=(extra.get("cbm") or {}).get("name"),
    )
    if load_weights:
        found = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
        if not found:
            raise FileNotFoundError(_no_weights(folder, name))
        spec.weights = found[0]
        recorded = (extra.get("cbm") or {}).get("weights_sha256")
        if recorded:  # `cbm fetch-models` wrote the weights' hash: other weights must not pass as the preset
            from cbm.encoders.hashing import file_sha256

            actual = file_sha256(spec.weights)
            if actual != recorded:
                raise ValueError(
                    f"encoder {name!r}: {spec.weights} is not the file {folder / CONFIG_FILE} records (SHA-256 "
                    f"{actual[:12]}..., recorded {recorded[:12]}...); fetch it again with `cbm fetch-models "
                    f"{(extra.get('cbm') or {}).get('name') or 'NAME'} --to "
                    f"{folder} --overwrite`, or for other weights remove the \"cbm\" block from {CONFIG_FILE}"
                )
    return spec


def _no_weights(folder: Path, name: str) -> str:
    """What to do about a ``local-dir:`` folder without a weights file of a known name."""
    others = sorted(p.name for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if others:
        target = WEIGHT_FILES[0] if others[0].endswith(".safetensors") else WEIGHT_FILES[2]
        fix = (f"it holds {', '.join(others[:5])}: rename the weights to {target}, or name the file in the "
               f"encoder name: {LOCAL_DIR_PREFIX}{folder}@{folder / others[0]}")
    else:
        fix = f"fetch them with `cbm fetch-models NAME --to {folder}`"
    return f"encoder {name!r}: no weights in {folder} (expected one of {', '.join(WEIGHT_FILES)}); {fix}"


_OFFLINE_HINT = (
    "Without internet, fetch the model on a connected machine with `cbm fetch-models NAME --to DIR`, "
    "copy DIR over, and use the encoder name local-dir:DIR (export HF_HUB_OFFLINE=1 on a machine without "
    "internet: the hub is then not asked, so this error comes at once, not after its retries)"
)


def hub_download(repo_id: str, filename: str) -> str:
    """One file of a Hugging Face hub repo (from the local HF cache when offline); its local path."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename)


def _download(fetch: Callable[[], str | Path], name: str) -> Path:
    """Run a download, turning the hub client's many failure types into one clear error."""
    try:
        return Path(fetch())
    except Exception as exc:  # noqa: BLE001 - network, offline mode, missing repo: all need the same advice
        raise RuntimeError(f"encoder {name!r}: download failed ({type(exc).__name__}: {exc}). {_OFFLINE_HINT}") from None
