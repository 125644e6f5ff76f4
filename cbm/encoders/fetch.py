"""``cbm fetch-models``: snapshot an encoder into a folder that loads with no network.

On a connected machine, ``cbm fetch-models biomedclip --to DIR`` writes::

    DIR/open_clip_config.json      the model and preprocessing config, plus a "cbm" provenance block
    DIR/open_clip_model.safetensors (or open_clip_pytorch_model.bin)   the weights of both towers
    DIR/text-tower/                the HF text tower's config.json and tokenizer files (BiomedCLIP's
                                   PubMedBERT), referred to by a relative path in the config

Copy ``DIR`` to the offline machine and use the encoder name ``local-dir:DIR``. Without ``--to``, a
preset goes to ``cbm.utils.cache_dir("models", NAME)``, where ``create_encoder(NAME)`` finds it.
The fetched model has the same feature-cache key as the hub original (same weights, and the text
tower counts as its hub id), so features computed online stay valid offline.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import shutil
import tempfile
from pathlib import Path

from cbm.encoders.hashing import file_sha256
from cbm.encoders.loading import ModelSpec
from cbm.encoders.registry import (
    CONFIG_FILE,
    LOCAL_DIR_PREFIX,
    PRESETS,
    WEIGHT_FILES,
    fetched_dir,
    list_encoders,
    resolve_encoder,
)
from cbm.utils import atomic_write_json, set_file_mode

__all__ = ["fetch_model", "TEXT_TOWER_DIR", "TOKENIZER_DIR", "TEXT_TOWER_FILES", "hub_snapshot"]

log = logging.getLogger(__name__)

TEXT_TOWER_DIR = "text-tower"
TOKENIZER_DIR = "text-tokenizer"
TEXT_TOWER_FILES = (
    "config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""What a text tower needs when its weights come with the CLIP checkpoint: config and tokenizer."""


def hub_snapshot(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> Path:
    """Download the files of a hub repo that match ``allow_patterns`` into ``local_dir``."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=repo_id, local_dir=str(local_dir), allow_patterns=allow_patterns))


def fetch_model(name: str, to: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Snapshot encoder ``name`` into a folder that ``local-dir:FOLDER`` loads offline.

    Args:
        name: any encoder name with weights (a preset, ``hf-hub:...``, ``ARCH@TAG``, ``ARCH@FILE``).
        to: the folder; ``None`` for a preset means ``cache_dir("models", NAME)``.
        overwrite: replace a folder that already holds a fetched model.

    Returns:
        The folder.

    Raises:
        ValueError: no folder given for a non-preset, a random-init name, or a non-empty folder.
        RuntimeError: a download failed.
    """
    if to is None:
        if name not in list_encoders():
            raise ValueError(f"say where to put {name!r}: fetch_model(name, to=DIR) / cbm fetch-models NAME --to DIR")
        dest = fetched_dir(name)
    else:
        dest = Path(to).expanduser()
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ValueError(
            f"{dest} is not empty; pass overwrite=True (cbm fetch-models --overwrite) to replace what is there, "
            "or choose an empty folder"
        )
    source = _source(name, dest)  # downloads the config and the weights (or finds them in the HF cache)
    if source.weights is None:
        raise ValueError(f"encoder {name!r} has no weights to fetch (random initialisation)")
    # everything is written into a folder beside ``dest`` first and moved in once complete, so a fetch
    # that fails (a dropped download, a full disk) leaves ``dest`` as it was: empty, or the model it held
    parent = _stage_parent(dest)
    stale = sorted(parent.glob(f".{dest.name}.fetching-*"))
    if stale:  # left by a fetch killed outright (its clean-up never ran): they can hold gigabytes
        log.warning("%s holds %d unfinished fetch folder(s) of %s (%s): delete them unless another fetch is "
                    "running now", parent, len(stale), dest.name, ", ".join(p.name for p in stale[:3]))
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetching-", dir=parent))
    try:
        _write_folder(name, source, stage)
        _move_in(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("fetched %s into %s; use the encoder name %s%s", name, dest, LOCAL_DIR_PREFIX, dest)
    return dest


def _stage_parent(dest: Path) -> Path:
    """Where a fetch is staged: beside ``dest`` (where it really is, when it is a link to a folder on
    another disk), or in it where it is the root of a file system of its own (a mounted volume), so
    that moving the fetch in is a rename, not a copy across file systems that ``os.replace`` refuses."""
    real = dest.resolve()
    if real.is_dir() and real.stat().st_dev != real.parent.stat().st_dev:
        return real
    real.parent.mkdir(parents=True, exist_ok=True)
    return real.parent


def _source(name: str, dest: Path) -> ModelSpec:
    """What ``name`` stands for; a preset being fetched again into the folder it is read from comes from its
    origin, not from that folder (whose weights may be the very ones that failed their check)."""
    if name in PRESETS and fetched_dir(name).resolve() == dest.resolve():
        try:
            spec = resolve_encoder(PRESETS[name].target())
        except RuntimeError as exc:
            raise RuntimeError(f"preset {name!r}: {exc}".replace("fetch-models NAME", f"fetch-models {name}")) from None
        spec.name = name
        return spec
    return resolve_encoder(name)


def _move_in(stage: Path, dest: Path) -> None:
    """Move a complete fetch from ``stage`` into ``dest``; the config last, as its presence marks a
    complete fetch. Other files of ``dest`` stay, bar an old weights file under another name (the
    loader's preference could pick it) and the text tower folders the fetch brings anew."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / CONFIG_FILE).unlink(missing_ok=True)
    for old in WEIGHT_FILES:  # one weights file per folder
        if not (stage / old).exists():
            (dest / old).unlink(missing_ok=True)
    for child in sorted(stage.iterdir(), key=lambda p: p.name == CONFIG_FILE):
        target = dest / child.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(child, target)


def _write_folder(name: str, source: ModelSpec, dest: Path) -> None:
    """Copy ``source``'s text tower files and weights into ``dest`` (a new, empty folder), then write its config."""
    model_cfg = copy.deepcopy(source.model_cfg)
    text = model_cfg["text_cfg"]
    text_ids = dict(source.text_tower_ids or {})
    model_id, tokenizer_id = text.get("hf_model_name"), text.get("hf_tokenizer_name")
    if model_id:
        text_ids.setdefault("hf_model_name", model_id)
        text["hf_model_name"] = _copy_text_files(model_id, dest / TEXT_TOWER_DIR)
    if tokenizer_id:
        text_ids.setdefault("hf_tokenizer_name", tokenizer_id)
        if tokenizer_id == model_id:
            text["hf_tokenizer_name"] = TEXT_TOWER_DIR
        else:
            text["hf_tokenizer_name"] = _copy_text_files(tokenizer_id, dest / TOKENIZER_DIR)

    weights_name = source.weights.name if source.weights.name in WEIGHT_FILES else (
        WEIGHT_FILES[0] if source.weights.suffix == ".safetensors" else "open_clip_pytorch_model.bin"
    )
    _copy_file(source.weights, dest / weights_name)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": source.preprocess_cfg,
        "cbm": {
            "name": source.cache_name or name,  # a copy of a fetched preset stays filed under the preset
            "fetched_from": source.origin,
            "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "weights_sha256": file_sha256(dest / weights_name),
            "text_tower_ids": text_ids,
        },
    }
    if source.tokenizer_name:
        config["cbm"]["open_clip_architecture"] = source.tokenizer_name
    atomic_write_json(dest / CONFIG_FILE, config)


def _copy_text_files(ref: str, folder: Path) -> str:
    """Put a text tower's config and tokenizer files in ``folder`` (from the hub, or a local folder); its relative name."""
    if Path(ref).is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for name in TEXT_TOWER_FILES:
            if (Path(ref) / name).is_file():
                _copy_file(Path(ref) / name, folder / name)
    else:
        try:
            hub_snapshot(ref, folder, list(TEXT_TOWER_FILES))
        except Exception as exc:  # noqa: BLE001 - the hub client raises many types
            raise RuntimeError(f"could not download the text tower files of {ref!r} ({type(exc).__name__}: {exc})") from None
    if not any((folder / n).is_file() for n in TEXT_TOWER_FILES):
        raise RuntimeError(f"no config or tokenizer files found for text tower {ref!r} (looked for {', '.join(TEXT_TOWER_FILES)})")
    return folder.name


def _copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (a temp file in ``dst``'s folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    set_file_mode(fd)  # mkstemp makes it owner-only; the copy is for others to read too
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
