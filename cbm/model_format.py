"""Writing and reading a saved model folder: ``model.json`` and ``model.safetensors`` (and
``reference.safetensors``), every field and tensor checked before
:meth:`cbm.model.ConceptBottleneckModel.load` uses them, and ``model.json`` built and checked
before :func:`write_model` writes any file. A damaged or foreign file raises
:class:`~cbm.errors.ModelFormatError` naming the file, the field and the fix. ``model.json``
records the SHA-256 of ``model.safetensors`` (``weights_sha256``) and of the training reference
(``reference_sha256``, null for a model without one), so weights or a reference edited after
saving, or those of another save beside this ``model.json``, are refused (older models have no
digest);
the weights' own metadata holds the class and concept names they were saved with, so a
``model.json`` whose names were edited (a concept renamed: its weight would be explained under
another name) is refused too."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from cbm.data import PIXEL_PIPELINE_VERSION
from cbm.errors import ModelFormatError, quote
from cbm.utils import safetensors_metadata, sha256_bytes

__all__ = ["FORMAT", "FORMAT_VERSION", "REFERENCE_FILE", "REFIT", "check_names", "check_reference_digest", "read_meta",
           "read_tensors", "weights_metadata", "write_model"]

FORMAT = "cbm.ConceptBottleneckModel"
REFERENCE_FILE = "reference.safetensors"  # the training reference beside the model (cbm.reference)
# 2: the bottleneck's concept offset and nuisance basis (version 1 loads as plain cosines)
# 3: the concept store's class-concept prior (older models have none: their weights cannot be checked against it)
# 4: the concepts' calibration to probabilities (older models weigh standardised scores)
FORMAT_VERSION = 4
log = logging.getLogger(__name__)
REFIT = "Save the model again from its run (`cbm run` writes <run dir>/model), or fit it again with cbm.fit"


def weights_metadata(classes: list[str], concepts: list[str]) -> dict[str, str]:
    """The string metadata ``model.safetensors`` is saved with: its format, and the names its weights
    belong to (under the weights' digest, so that ``model.json``'s names can be checked on load)."""
    return {"format": FORMAT, "version": str(FORMAT_VERSION), "classes": json.dumps(classes),
            "concepts": json.dumps(concepts)}


# what the readers of a model expect of model.json's info, where present (a hand edit gets a named error)
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "card": (dict,), "data": (dict,), "head": (dict,), "concept_source": (dict,), "bottleneck": (dict,),
    "store_check": (dict,), "calibration_choice": (dict,), "interventions": (dict,), "path": (dict,),
    "metrics": (dict,), "levels_from_truth": (list,), "templates": (list,),
}


def check_names(classes: Any, concepts: Any) -> str | None:
    """What is wrong with a model's class and concept names (at least 2 and 1 distinct non-empty
    strings), or None; the reader and :func:`write_model` both ask."""
    for key, names, least in (("classes", classes, 2), ("concepts", concepts, 1)):
        if not isinstance(names, list) or len(names) < least or not all(isinstance(n, str) and n.strip() for n in names):
            return f"{key} has the bad value {quote(names)}: a list of at least {least} non-empty names"
        if len(set(names)) != len(names):
            return f"{key} repeats {quote(sorted({n for n in names if names.count(n) > 1}))}"
    return None


def write_model(model: Any, folder: Path) -> Path:
    """Write a model's folder: ``model.json`` built and checked (names, JSON-ready ``info``) with the
    digests of the weights and the training reference before any file is written; then all three
    written aside and moved into place together, so a save that fails leaves a model already there
    loadable."""
    from safetensors.torch import save as safetensors_bytes

    from cbm.utils import atomic_write_files

    if problem := check_names(model.classes, model.bottleneck.concept_names):
        raise ValueError(f"cannot save this model: its {problem}")
    try:  # its arrays as they are now (they may have been changed since it was made)
        check_shapes(len(model.classes), model.bottleneck.n_concepts, np.asarray(model.coef), np.asarray(model.intercept),
                     model.concept_prior, model.concept_levels, model.calibration)
    except ValueError as exc:
        raise ValueError(f"cannot save this model: {exc}") from None
    weights = safetensors_bytes(model.state_tensors(), metadata=weights_metadata(model.classes, model.bottleneck.concept_names))
    reference = model.reference.to_bytes() if model.reference is not None else None
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "encoder": model.encoder_name, "encoder_key": model.encoder_key,
            "weights_sha256": sha256_bytes(weights),  # load refuses weights that are not these
            "reference_sha256": None if reference is None else sha256_bytes(reference),  # ... and another reference
            "classes": model.classes, "concepts": model.bottleneck.concept_names, "bottleneck": model.bottleneck.debiasing,
            "concepts_per_class": model.concepts_per_class(), "info": model.info}
    try:  # numpy numbers as Python's, NaN and infinity as null ("not measured"), anything else refused
        text = json.dumps(_plain(meta), indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot save this model: model.json would not be standard JSON ({exc}); make every value "
                         "of model.info a str, int, float, bool, None, list or dict") from None
    # every file written aside first, then all moved into place: a failed write (a full disk) leaves
    # the model already in the folder as it was
    atomic_write_files({folder / "model.safetensors": weights, folder / REFERENCE_FILE: reference,
                        folder / "model.json": (text + "\n").encode("utf-8")})
    return folder


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as None (JSON's null)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def check_shapes(k: int, c: int, coef: np.ndarray, intercept: np.ndarray, prior: np.ndarray | None,
                 levels: np.ndarray | None, calibration: np.ndarray | None) -> None:
    """A model's arrays fit its ``k`` classes and ``c`` concepts, and its weights are finite (ValueError
    naming the array: a model that predicts NaN, or that its own loader would refuse, is not made)."""
    if coef.shape != (k, c) or intercept.shape != (k,):
        raise ValueError(f"head shapes coef {coef.shape}, intercept {intercept.shape} do not fit {k} classes x {c} concepts")
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ValueError("the head's coef or intercept holds NaN or infinite values (a head whose fit diverged): fit it "
                         "again on standardised concept values, with a stronger penalty or in float64")
    if prior is not None and prior.shape != (k, c):
        raise ValueError(f"concept_prior has shape {prior.shape}; expected {k} classes x {c} concepts")
    if levels is not None and levels.shape != (2, c):
        raise ValueError(f"concept_levels has shape {levels.shape}; expected (2, {c})")
    if calibration is not None and calibration.shape != (2, c):
        raise ValueError(f"calibration has shape {calibration.shape}; expected (2, {c})")
    if calibration is not None:
        off = np.isnan(calibration)
        if (off[0] != off[1]).any() or not np.isfinite(calibration[:, ~off[0]]).all():
            raise ValueError("calibration: each concept's slope and intercept are both finite (calibrated) "
                             "or both NaN (weighed as its score)")


def check_reference_digest(folder: Path, meta: dict[str, Any]) -> bool:
    """A reference file that is the one ``model.json`` was saved with (models saved before the
    digest was recorded are not checked); True where ``model.json`` names one the folder lacks."""
    if "reference_sha256" not in meta:
        return False
    path, digest = folder / REFERENCE_FILE, meta["reference_sha256"]
    lost = digest is not None and not path.is_file()
    if lost:  # copied without it: loads, but answers where it would have abstained
        log.warning("%s: model.json was saved with a training reference, but %s is missing: this copy of the model "
                    "cannot flag an image unlike its training images (no out-of-distribution score, no similar "
                    "cases, and its greyscale check no longer knows how many training images were grey); copy %s "
                    "from the model's own folder to restore it", folder, REFERENCE_FILE, REFERENCE_FILE)
    if digest is None and path.is_file():
        raise ModelFormatError(path, "is beside a model.json saved without a training reference (another model's?)",
                               "Delete it, or save the model again from its run")
    if digest is not None and path.is_file() and sha256_bytes(path.read_bytes()) != digest:
        raise ModelFormatError(path, "is not the training reference model.json was saved with (its SHA-256 differs "
                               "from model.json's reference_sha256: edited, or another model's)",
                               f"{REFIT} (or delete the file: the model then cannot abstain)")
    return lost


def read_meta(path: Path) -> dict[str, Any]:
    """``model.json``, every field checked; raises :class:`ModelFormatError` naming the field."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8-sig"))  # a byte-order mark (an editor's) is no damage
    except UnicodeDecodeError:
        raise ModelFormatError(path, "is not UTF-8 text", REFIT) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(path, f"is not valid JSON ({str(exc)[:120]})", REFIT) from None
    if not isinstance(meta, dict):
        raise ModelFormatError(path, f"holds a {type(meta).__name__}, not a JSON object", REFIT)
    if meta.get("format") != FORMAT:
        raise ModelFormatError(path, f"is not a cbm model (format {quote(meta.get('format'))}, expected {FORMAT!r})",
                               "Give the folder that `cbm run` wrote as <run dir>/model")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(path, f"has the bad value {quote(version)}", REFIT, field="version")
    if version > FORMAT_VERSION:
        raise ModelFormatError(path, f"has format version {version}, newer than this cbm understands ({FORMAT_VERSION})",
                               "Upgrade cbm", field="version")
    if not isinstance(meta.get("encoder"), str) or not meta["encoder"].strip():
        raise ModelFormatError(path, f"has the bad value {quote(meta.get('encoder'))}", "It names the encoder, e.g. demo-clip",
                               field="encoder")
    if meta.get("encoder_key") is not None and not isinstance(meta["encoder_key"], str):
        raise ModelFormatError(path, f"has the bad value {quote(meta['encoder_key'])}", REFIT, field="encoder_key")
    if problem := check_names(meta.get("classes"), meta.get("concepts")):
        key, _, what = problem.partition(" ")
        raise ModelFormatError(path, what, REFIT, field=key)
    bottleneck = meta.get("bottleneck") or {}
    prompts = bottleneck.get("nuisance_prompts", []) if isinstance(bottleneck, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ModelFormatError(path, f"has the bad value {quote(bottleneck)}", REFIT, field="bottleneck.nuisance_prompts")
    meta["bottleneck"] = {**(bottleneck if isinstance(bottleneck, dict) else {}), "nuisance_prompts": prompts}
    for key, file in (("weights_sha256", "model.safetensors"), ("reference_sha256", "reference.safetensors")):
        digest = meta.get(key)
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
            raise ModelFormatError(path, f"has the bad value {quote(digest)}: the SHA-256 of {file}, in hex", REFIT,
                                   field=key)
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise ModelFormatError(path, f"has the bad value {quote(info)}", "It holds a JSON object", field="info")
    for key, types in _INFO_TYPES.items():  # null stands for "not recorded" (store_check with the check off)
        if info.get(key) is not None and not isinstance(info[key], types):
            kind = " or ".join({"dict": "an object", "list": "a list"}[t.__name__] for t in types if t is not type(None))
            raise ModelFormatError(path, f"has the bad value {quote(info[key], 80)}: {kind} (or null) expected", REFIT,
                                   field=f"info.{key}")
    if not all(isinstance(c, str) for c in info.get("levels_from_truth") or []):
        raise ModelFormatError(path, "lists something that is not a concept name", REFIT, field="info.levels_from_truth")
    meta["info"] = info
    pipeline = info.get("pixel_pipeline")
    if isinstance(pipeline, int) and not isinstance(pipeline, bool) and pipeline != PIXEL_PIPELINE_VERSION:
        log.warning("%s: the model was trained on images read by cbm's pixel pipeline %d; this cbm reads them with %d "
                    "(see PIXEL_PIPELINE_VERSION in cbm.data), so its concept scores may shift; fit it again to match",
                    path, pipeline, PIXEL_PIPELINE_VERSION)
    return meta


def read_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``model.safetensors``, every tensor checked against ``model.json`` (shape, dtype, finite values,
    then the file's digest where ``model.json`` records one); bfloat16 tensors are read as float32."""
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
        raise ModelFormatError(path, f"cannot be read as safetensors ({type(exc).__name__}: {str(exc)[:120]})",
                               REFIT) from None
    # numpy has no bfloat16 (another tool's cast); float32 holds every bfloat16 value
    tensors = {name: t.float() if t.dtype == torch.bfloat16 else t for name, t in tensors.items()}
    k, c = len(meta["classes"]), len(meta["concepts"])
    emb = tensors.get("concept_embeddings")
    d = int(emb.shape[1]) if emb is not None and emb.dim() == 2 else -1
    shapes: dict[str, tuple[int, ...] | None] = {
        "coef": (k, c), "intercept": (k,), "concept_embeddings": (c, d), "score_mean": (c,), "score_std": (c,),
    }
    optional = {"concept_offset": (d,), "train_raw_scores_sorted": None, "concept_prior": (k, c), "concept_levels": (2, c),
                "concept_calibration": (3, c)}
    for name, shape in {**shapes, **optional}.items():
        t = tensors.get(name)
        if t is None:
            if name in shapes:
                raise ModelFormatError(path, "is missing", REFIT, field=f"tensor {name}")
            continue
        if not t.is_floating_point():
            raise ModelFormatError(path, f"has dtype {t.dtype}, not a float", REFIT, field=f"tensor {name}")
        expected = shape if shape is not None else (None, c)
        if t.dim() != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
            raise ModelFormatError(path, f"has shape {tuple(t.shape)}; the model has {k} classes and {c} concepts, "
                                   f"so {tuple('n' if e is None else e for e in expected)} was expected",
                                   REFIT, field=f"tensor {name}")
        if not bool(torch.isfinite(t).all()):
            raise ModelFormatError(path, "holds NaN or infinite values", REFIT, field=f"tensor {name}")
    if bool((tensors["score_std"] <= 0).any()):
        raise ModelFormatError(path, "holds a zero or negative standard deviation", REFIT, field="tensor score_std")
    if bool((tensors["concept_embeddings"].norm(dim=1) == 0).any()):
        raise ModelFormatError(path, "holds an all-zero concept embedding", REFIT, field="tensor concept_embeddings")
    basis = tensors.get("nuisance_basis")
    if basis is not None and (basis.dim() != 2 or basis.shape[1] != d or not bool(torch.isfinite(basis).all())):
        raise ModelFormatError(path, f"has shape {tuple(basis.shape)} or non-finite values; finite (m, {d}) expected",
                               REFIT, field="tensor nuisance_basis")
    prior = tensors.get("concept_prior")
    if prior is not None and bool(((prior < 0) | (prior > 1)).any()):
        raise ModelFormatError(path, "holds values outside [0, 1]", REFIT, field="tensor concept_prior")
    calibration = tensors.get("concept_calibration")
    if calibration is not None and not bool(((calibration[2] == 0) | (calibration[2] == 1)).all()):
        raise ModelFormatError(path, "has a third row (which concepts are calibrated) that is not all 0 or 1", REFIT,
                               field="tensor concept_calibration")
    if meta.get("weights_sha256") is not None and sha256_bytes(data) != meta["weights_sha256"]:
        raise ModelFormatError(path, "holds not the weights model.json was saved with (its SHA-256 differs from "
                               "model.json's weights_sha256: edited, or written by another save)",
                               f"{REFIT} (for an edit you made on purpose, delete weights_sha256 from model.json)")
    _check_names(path, data, meta)
    return tensors


def _check_names(path: Path, data: bytes, meta: dict[str, Any]) -> None:
    """The class and concept names of ``model.json`` are those the weights were saved with (where the
    weights' metadata records them: models saved before it did are not checked)."""
    try:
        saved = safetensors_metadata(data)
    except (struct.error, ValueError):  # the tensors were read, so this is not expected
        return
    for key in ("classes", "concepts"):
        if key not in saved:
            continue
        try:
            names = json.loads(saved[key])
        except (TypeError, ValueError):
            raise ModelFormatError(path, f"has a damaged {key} list in its metadata", REFIT) from None
        if names != meta[key]:
            diff = next(((a, b) for a, b in zip(meta[key], names) if a != b), None)
            example = (f"{quote(diff[0], 60)} where the weights were saved with {quote(diff[1], 60)}" if diff
                       else f"{len(meta[key])} names where the weights were saved with {len(names)}")
            raise ModelFormatError(path.with_name("model.json"), f"are not the {key} model.safetensors was saved with "
                                   f"({example}): a weight would be explained under another name",
                                   f"Put the names back, or {REFIT[0].lower()}{REFIT[1:]}", field=key)
