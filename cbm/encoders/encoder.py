"""The :class:`Encoder`: an open_clip model with its tokenizer, preprocessing, device and precision.

An encoder carries its own preprocessing (:attr:`Encoder.transform`, built from the model's
preprocess config, resize mode included, with :func:`cbm.data.transforms.encoder_transform`), so
weights are never paired with the wrong resize or normalisation. Both towers return L2-normalised float32 features
on the CPU, whatever the device and precision the model runs in.

Precision: ``fp32`` everywhere, or autocast with ``bf16`` / ``fp16`` (CUDA; ``bf16`` also on the
CPU). ``None`` means ``bf16`` on a CUDA device that supports it (else ``fp16``), ``fp32`` on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cbm.utils import stable_hash

__all__ = ["Encoder", "EncoderTransform", "PRECISIONS", "resolve_device", "resolve_precision"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
_PRECISION_ALIASES = {
    "fp32": "fp32", "float32": "fp32", "32": "fp32",
    "bf16": "bf16", "bfloat16": "bf16", "amp_bf16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "amp": "fp16", "16": "fp16",
}  # fmt: skip
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_KEY_VERSION = 1  # bump when the features an encoder computes change meaning


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or the current CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # a meta or other device has no data to compute on
        raise ValueError(f"device {device!r} cannot run an encoder; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available here; use the CPU (cpu)")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """One of :data:`PRECISIONS` for ``device``; ``None`` picks the fastest safe one."""
    if precision is None:
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    key = _PRECISION_ALIASES.get(str(precision).lower())
    if key is None:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (or null for the device's default)")
    if key == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {device}); use fp32 or bf16 on the CPU")
    return key


class EncoderTransform:
    """An encoder's preprocessing: image (LoadedImage, array or path) -> ``(3, size, size)`` tensor.

    Wraps :func:`cbm.data.transforms.encoder_transform` and keeps the settings it was built
    from in :attr:`config`, which is part of the encoder's cache key: the resize mode always,
    the fill colour when the mode pads (``longest``), since only then does it change the pixels.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        fill_color: float = 0,
    ) -> None:
        from cbm.data.transforms import encoder_transform

        self._pipeline = encoder_transform(
            size, mean, std, interpolation=interpolation, resize_mode=resize_mode, fill_color=fill_color
        )
        self.config: dict[str, Any] = {
            "size": int(size), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "interpolation": interpolation, "resize_mode": resize_mode,
        }  # fmt: skip
        if resize_mode == "longest":
            self.config["fill_color"] = fill_color

    def __call__(self, image: Any) -> torch.Tensor:
        return self._pipeline(image)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncoderTransform) and other.config == self.config

    __hash__ = None  # mutable-looking object compared by value; not meant as a dict key

    def __repr__(self) -> str:
        c = self.config
        fill = f", fill_color={c['fill_color']!r}" if "fill_color" in c else ""
        return (f"EncoderTransform(size={c['size']}, mean={c['mean']}, std={c['std']}, interpolation={c['interpolation']!r}, "
                f"resize_mode={c['resize_mode']!r}{fill})")


class Encoder:
    """A vision-language encoder ready to embed images and texts.

    Created by :func:`cbm.encoders.create_encoder`; not meant to be built by hand.

    Attributes:
        name: the registry name it was created from.
        model: the open_clip model (eval mode, weights frozen) on :attr:`device`.
        tokenizer: the model's open_clip tokenizer.
        transform: its preprocessing (:class:`EncoderTransform`).
        device: where the model runs.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        embed_dim: size of the joint embedding.
        info: what the cache key is made of (architecture, weights id, preprocessing, precision).
        cache_key: a folder-safe id of :attr:`info`, ``<name>-<hash>`` (a folder fetched from a
            preset uses the preset's name, so it shares the preset's cached features).
    """

    def __init__(
        self,
        *,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        preprocess: dict[str, Any],
        device: torch.device,
        precision: str,
        info: dict[str, Any],
        cache_name: str | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.preprocess = dict(preprocess)
        self.transform = _encoder_transform(name, preprocess)
        self.info = {**info, "preprocess": self.transform.config, "precision": precision, "version": CACHE_KEY_VERSION}
        self.cache_key = f"{_slug(cache_name or name)}-{stable_hash(self.info)}"
        self.embed_dim = int(info["embed_dim"])

    def __repr__(self) -> str:
        return f"Encoder({self.name!r}, device={self.device}, precision={self.precision}, embed_dim={self.embed_dim})"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of :attr:`precision` (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images ``(B, 3, S, S)``: L2-normalised float32 ``(B, D)`` on the CPU."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_image takes a (B, 3, S, S) batch from encoder.transform, got shape {tuple(images.shape)}")
        with torch.inference_mode(), self.autocast():
            x = images.to(self.device, non_blocking=True)
            feats = self.model.encode_image(x)
            feats = F.normalize(feats.float(), dim=-1)
        return feats.cpu()

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embed texts as given (no templates): L2-normalised float32 ``(N, D)`` on the CPU.

        See :func:`cbm.encoders.encode_texts` for prompt ensembling over templates.
        """
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string; wrap it in a list")
        texts = list(texts)
        if not texts:
            return torch.zeros((0, self.embed_dim), dtype=torch.float32)
        out, full = [], []
        pad = _pad_id(self.tokenizer)
        with torch.inference_mode(), self.autocast():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[start : start + batch_size])
                # the tokenizer cuts a text at the tower's length without a word: a last token that is not
                # padding means the text filled it (and was cut, unless it fits exactly)
                full += [t for t, last in zip(texts[start : start + batch_size], tokens[:, -1].tolist()) if last != pad]
                self._check_tokens(tokens)
                feats = self.model.encode_text(tokens.to(self.device, non_blocking=True))
                out.append(F.normalize(feats.float(), dim=-1).cpu())
        if full:
            log.warning("%d text(s) fill the text tower's %d tokens, so their end is cut (texts that differ only there "
                        "embed alike); shorten them: %s", len(full), int(tokens.shape[1]),
                        "; ".join(repr(t[:80]) for t in full[:3]))
        return torch.cat(out)


    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """A token id beyond the text tower's vocabulary means the tokenizer is not the tower's (an index error otherwise)."""
        vocab = getattr(self.model, "vocab_size", None)
        if isinstance(vocab, int) and vocab > 0 and tokens.numel() and int(tokens.max()) >= vocab:
            raise ValueError(
                f"encoder {self.name!r}: its tokenizer gives token id {int(tokens.max())}, but the text tower has "
                f"{vocab} tokens: the tokenizer is not the text tower's. Check text_cfg's vocab_size and "
                "hf_tokenizer_name in the model config against the text tower the weights belong to"
            )


def _pad_id(tokenizer: Any) -> int:
    """The token a tokenizer pads with: a Hugging Face tokenizer's own (RoBERTa's is 1), open_clip's 0."""
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def _encoder_transform(name: str, preprocess: dict[str, Any]) -> EncoderTransform:
    """The transform of ``preprocess`` (the model's config); a setting cbm cannot follow names the encoder."""
    try:
        return EncoderTransform(
            preprocess["size"], preprocess["mean"], preprocess["std"], preprocess["interpolation"],
            resize_mode=preprocess.get("resize_mode", "shortest"), fill_color=preprocess.get("fill_color", 0),
        )  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"encoder {name!r} asks for preprocessing cbm cannot reproduce: {exc}") from None


def _slug(name: str) -> str:
    """A short, folder-safe rendering of an encoder name, for people reading the cache folder."""
    parts = [part.rstrip("/").rsplit("/", 1)[-1] for part in name.split("@")]
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in "_".join(parts))
    return (keep.strip("._") or "encoder")[:48]
