"""Vision-language encoders (open_clip) and the feature cache.

    from cbm.encoders import create_encoder, encode_images, encode_texts
    enc = create_encoder("biomedclip")                     # or "demo-clip", "hf-hub:...", "local-dir:DIR", "ViT-B-16@openai"
    train = card.dataset("train", transform=enc.transform)  # the encoder carries its preprocessing
    fs = encode_images(enc, train)                          # cached: FeatureSet(features (N, D), indices, skipped)
    text = encode_texts(enc, ["irregular border"], modality="dermoscopy")   # prompt ensembling

Modules: :mod:`~cbm.encoders.registry` (names, presets, ``create_encoder``),
:mod:`~cbm.encoders.loading` (configs, safe checkpoint loading), :mod:`~cbm.encoders.encoder`
(the :class:`Encoder`, device and precision), :mod:`~cbm.encoders.text` (prompt templates),
:mod:`~cbm.encoders.extract` (``encode_images``), :mod:`~cbm.encoders.cache` (shards + manifest),
:mod:`~cbm.encoders.hashing` (content hashes), :mod:`~cbm.encoders.distributed` (``torchrun``),
:mod:`~cbm.encoders.fetch` (``cbm fetch-models``), :mod:`~cbm.encoders.cli` (``cbm features``).
"""

from __future__ import annotations

from cbm.encoders.cache import CorruptShard, FeatureCache
from cbm.encoders.encoder import PRECISIONS, Encoder, EncoderTransform
from cbm.encoders.extract import DEFAULT_SHARD_SIZE, FeatureSet, encode_images
from cbm.encoders.fetch import fetch_model
from cbm.encoders.registry import PRESETS, create_encoder, list_encoders, register_encoder, resolve_encoder
from cbm.encoders.text import MODALITY_TEMPLATES, default_templates, encode_texts

__all__ = [
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "resolve_encoder",
    "PRESETS",
    "Encoder",
    "EncoderTransform",
    "PRECISIONS",
    "encode_images",
    "FeatureSet",
    "DEFAULT_SHARD_SIZE",
    "encode_texts",
    "default_templates",
    "MODALITY_TEMPLATES",
    "FeatureCache",
    "CorruptShard",
    "fetch_model",
]
