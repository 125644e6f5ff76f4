"""``ConceptBottleneckModel``: encoder + concepts + standardiser + sparse head, as one object.

The model never looks at an image except through its concept scores: an image is embedded by the
encoder, scored against every concept (cosine, standardised with the training statistics), and
the head's linear weights turn the scores into class probabilities. So every prediction can be
written as a sum of ``weight[class, concept] * score[concept]`` terms.

Saved as a folder: ``model.json`` (classes, concepts, encoder name and cache key, head settings,
metrics, provenance) and ``model.safetensors`` (head weights, concept embeddings, score
statistics, the concept store's class-concept prior), and ``reference.safetensors`` when the model
has a training reference (:mod:`cbm.reference`: out-of-distribution score, nearest training
images). No pickle. :meth:`ConceptBottleneckModel.load`
checks every field and tensor before it returns, and a damaged or foreign folder raises
:class:`~cbm.errors.ModelFormatError` naming the file and the field.

The model is the saved artefact only: training lives in :mod:`cbm.pipeline` (``cbm.fit``).

    model = cbm.fit("ham10000", encoder="biomedclip")
    model.predict(["case1.png", "case2.dcm"])
    model.explain("case1.png").top_concepts()
    model.save("runs/ham"); ConceptBottleneckModel.load("runs/ham")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from cbm.bottleneck import ConceptBottleneck
from cbm.errors import ModelFormatError, quote
from cbm.reference import REFERENCE_FILE, Flag, TrainingReference, as_pixels, image_flags, prediction_flags
from cbm.utils import atomic_write_bytes, atomic_write_json, softmax

__all__ = ["ConceptBottleneckModel", "Prediction", "ConceptContribution"]

log = logging.getLogger(__name__)

FORMAT = "cbm.ConceptBottleneckModel"
# 2: the bottleneck's concept offset and nuisance basis (version 1 loads as plain cosines)
# 3: the concept store's class-concept prior (older models have none: their weights cannot be checked against it)
FORMAT_VERSION = 3
ImageLike = Any  # a path (str | PathLike), a cbm.data.LoadedImage, or an (H, W[, C]) array in [0, 1]

# "Present" / "absent" set a concept's score to where the training images at these percentiles sit.
PRESENT_PERCENTILE = 95.0
ABSENT_PERCENTILE = 5.0
_FALLBACK_LEVEL = 2.0  # +-2 standard deviations when the model folder has no training scores


@dataclass(frozen=True)
class ConceptContribution:
    """One concept's share of a class logit: ``weight * score``."""

    concept: str
    weight: float
    score: float  # standardised concept score of this image (0 = training mean, 1 = one std above)
    percentile: float | None  # where the raw score sits in the training distribution, 0-100
    contribution: float


@dataclass
class Prediction:
    """What the model predicted for one image, and why: probabilities and every concept's share."""

    predicted: str
    probabilities: dict[str, float]
    runner_up: str | None
    # class -> contributions sorted by |contribution|, non-zero weights only
    contributions: dict[str, list[ConceptContribution]]
    intercepts: dict[str, float]
    scores: dict[str, float] = field(default_factory=dict)  # every concept's standardised score
    # why the model does not answer for this image (cbm.reference: image checks, out-of-distribution)
    flags: list[Flag] = field(default_factory=list)
    ood_score: float | None = None  # the out-of-distribution score (None without a reference)
    can_abstain: bool = False  # whether the model has an out-of-distribution threshold

    @property
    def withheld(self) -> bool:
        """True when a flag says the prediction should not be read (it is kept, for "shown anyway")."""
        return bool(self.flags)

    def top_concepts(self, cls: str | None = None, k: int = 5) -> list[ConceptContribution]:
        """The ``k`` largest contributions (by absolute value) to ``cls`` (default: the predicted class)."""
        return self.contributions[cls or self.predicted][:k]


class ConceptBottleneckModel:
    """A trained concept-bottleneck classifier.

    Args:
        encoder_name: registry name of the vision-language encoder (``cbm.encoders``).
        classes: class names, in the order of the head's rows.
        bottleneck: the fitted concept bottleneck (concept names, text embeddings, statistics).
        coef: ``(n_classes, n_concepts)`` head weights on standardised scores.
        intercept: ``(n_classes,)`` head biases.
        encoder_key: the encoder's cache key at training time (weights hash, preprocessing,
            precision); a mismatch at load time is reported, because scores would shift.
        train_raw_scores: ``(n_train, n_concepts)`` raw training scores (percentiles, intervention levels).
        concept_prior: ``(n_classes, n_concepts)`` 0/1: the classes the concept store lists each
            concept under, less the entries the training card's concept truth did not bear out
            (``cbm.pipeline.faithfulness.check_store``): what a faithful weight must agree with;
            ``None`` for older models.
        concept_levels: ``(2, n_concepts)``: the standardised score that means "absent" (row 0)
            and "present" (row 1) for each concept, when the training card annotated concept truth
            (the mean score of the training images annotated absent / present); ``None``: the
            training scores' 5th and 95th percentiles stand in (:meth:`presence_levels`).
        info: free JSON-serialisable facts (card, metrics, head settings, provenance).
        reference: the training reference (out-of-distribution score, nearest training images);
            ``None`` for models saved before it existed, which cannot abstain.
    """

    def __init__(
        self,
        encoder_name: str,
        classes: Sequence[str],
        bottleneck: ConceptBottleneck,
        coef: np.ndarray,
        intercept: np.ndarray,
        *,
        encoder_key: str | None = None,
        train_raw_scores: np.ndarray | None = None,
        concept_prior: np.ndarray | None = None,
        concept_levels: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
        reference: TrainingReference | None = None,
    ) -> None:
        self.encoder_name = encoder_name
        self.classes = list(classes)
        self.bottleneck = bottleneck
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.encoder_key = encoder_key
        # sorted raw training scores per concept (n_train, C): percentiles for explanations
        self.train_raw_scores = None if train_raw_scores is None else np.sort(np.asarray(train_raw_scores, np.float32), 0)
        self.concept_prior = None if concept_prior is None else np.asarray(concept_prior, np.float32)
        self.info = dict(info or {})
        self.reference = reference
        self._encoder = None
        k, c = len(self.classes), bottleneck.n_concepts
        if self.coef.shape != (k, c) or self.intercept.shape != (k,):
            raise ValueError(
                f"head shapes coef {self.coef.shape}, intercept {self.intercept.shape} do not fit "
                f"{k} classes x {c} concepts"
            )
        if self.concept_prior is not None and self.concept_prior.shape != (k, c):
            raise ValueError(f"concept_prior has shape {self.concept_prior.shape}; expected {k} classes x {c} concepts")
        self.concept_levels = None if concept_levels is None else np.asarray(concept_levels, np.float32)
        if self.concept_levels is not None and self.concept_levels.shape != (2, c):
            raise ValueError(f"concept_levels has shape {self.concept_levels.shape}; expected (2, {c})")

    def presence_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Standardised scores that mean "absent" and "present" for each concept, ``(C,)`` each.

        Interventions (the report's controls, the faithfulness curve) set a concept to one of them.
        Where the training card annotated the concept, they are the mean scores of the training
        images annotated absent and present (:attr:`concept_levels`): a concept set from the truth
        then sits where such images sit, and the head weighs it as it learnt to. Otherwise they are
        the training images' raw scores at :data:`ABSENT_PERCENTILE` and :data:`PRESENT_PERCENTILE`
        (a clearly low or clearly high score the model has seen), standardised like any score;
        -2 and +2 when the model folder holds no training scores either.
        """
        if self.concept_levels is not None:
            return self.concept_levels[0].copy(), self.concept_levels[1].copy()
        bn = self.bottleneck
        raw = self.train_raw_scores
        if raw is None or len(raw) < 2 or bn.mean_ is None or bn.std_ is None:
            c = bn.n_concepts
            return np.full(c, -_FALLBACK_LEVEL, np.float32), np.full(c, _FALLBACK_LEVEL, np.float32)
        lo, hi = np.percentile(raw, [ABSENT_PERCENTILE, PRESENT_PERCENTILE], axis=0)
        return ((lo - bn.mean_) / bn.std_).astype(np.float32), ((hi - bn.mean_) / bn.std_).astype(np.float32)

    def contradicting_weights(self) -> list[tuple[str, str, float]]:
        """``(class, concept, weight)`` for every non-zero weight that pushes a concept towards a class
        the concept store does not list it under (or away from one it does); empty without a prior."""
        if self.concept_prior is None:
            return []
        out = []
        names = self.bottleneck.concept_names
        for k, j in zip(*np.nonzero(self.coef)):
            listed = self.concept_prior[k, j] > 0
            if (self.coef[k, j] > 0) != listed:
                out.append((self.classes[k], names[j], float(self.coef[k, j])))
        return out

    # ------------------------------------------------------------------ the encoder
    @property
    def encoder(self):
        """The encoder, created on first use (so loading a model for inspection stays cheap)."""
        if self._encoder is None:
            from cbm.encoders import create_encoder

            self._encoder = create_encoder(self.encoder_name)
            key = getattr(self._encoder, "cache_key", None)
            if self.encoder_key and key and key != self.encoder_key:
                log.warning(
                    "encoder %s now has cache key %s but the model was trained with %s: weights, "
                    "preprocessing or precision changed, so concept scores may shift",
                    self.encoder_name, key, self.encoder_key,
                )
        return self._encoder

    def set_encoder(self, encoder: Any) -> None:
        """Use an already created encoder (saves creating it twice in one process)."""
        self._encoder = encoder

    def image_features(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Embed images (paths, ``LoadedImage`` objects or arrays) with the model's encoder, ``(n, D)``."""
        from cbm.data import LoadedImage, read_image

        items = [images] if isinstance(images, (str, os.PathLike, LoadedImage, np.ndarray)) else list(images)
        if isinstance(images, np.ndarray) and images.ndim == 4:
            items = list(images)
        enc = self.encoder
        out = []
        for start in range(0, len(items), batch_size):
            batch = []
            for item in items[start : start + batch_size]:
                if isinstance(item, (str, os.PathLike)):
                    item = read_image(item)
                batch.append(enc.transform(item))
            out.append(enc.encode_image(torch.stack(batch)))
        return torch.cat(out).numpy() if out else np.zeros((0, self.bottleneck.concept_embeddings.shape[1]), np.float32)

    # ------------------------------------------------------------------ prediction
    def concept_scores_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Standardised concept scores ``(n, n_concepts)`` of precomputed image features."""
        return self.bottleneck.transform(features)

    def decision_function_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.concept_scores_from_features(features) @ self.coef.T + self.intercept

    def predict_proba_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` of precomputed image features."""
        return softmax(self.decision_function_from_features(features))

    def concept_scores(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Standardised concept scores ``(n, n_concepts)`` of images."""
        return self.concept_scores_from_features(self.image_features(images))

    def predict_proba(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in :attr:`classes` order."""
        return self.predict_proba_from_features(self.image_features(images))

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> list[str]:
        """Predicted class names."""
        return [self.classes[i] for i in self.predict_proba(images).argmax(1)]

    # ------------------------------------------------------------------ explanation
    def score_percentiles(self, raw_scores: np.ndarray) -> np.ndarray | None:
        """Percentile (0-100) of each raw concept score in the training distribution; ``(C,)``."""
        if self.train_raw_scores is None:
            return None
        ref = self.train_raw_scores
        n = len(ref)
        below = np.array([np.searchsorted(ref[:, j], raw_scores[j], side="right") for j in range(ref.shape[1])])
        return 100.0 * below / n

    def explain_features(self, feature: np.ndarray | torch.Tensor, *, image_flags: Sequence[Flag] = ()) -> Prediction:
        """Explain one image from its feature vector ``(D,)``.

        ``image_flags`` are the image checks' flags (:func:`cbm.reference.image_flags`); the training
        reference adds its out-of-distribution flag. A flagged prediction is ``withheld``.
        """
        feat = np.asarray(feature, np.float32).reshape(1, -1)
        raw = self.bottleneck.raw_scores(feat)[0]
        z = self.bottleneck.transform(feat)[0]
        pct = self.score_percentiles(raw)
        logits = z @ self.coef.T + self.intercept
        proba = softmax(logits[None])[0]
        order = np.argsort(-proba)
        names = self.bottleneck.concept_names
        contributions: dict[str, list[ConceptContribution]] = {}
        for k, cls in enumerate(self.classes):
            rows = [
                ConceptContribution(
                    names[j], float(self.coef[k, j]), float(z[j]),
                    None if pct is None else float(pct[j]), float(self.coef[k, j] * z[j]),
                )
                for j in np.flatnonzero(self.coef[k])
            ]
            contributions[cls] = sorted(rows, key=lambda c: -abs(c.contribution))
        return Prediction(
            predicted=self.classes[order[0]],
            probabilities={c: float(p) for c, p in zip(self.classes, proba)},
            runner_up=self.classes[order[1]] if len(order) > 1 else None,
            contributions=contributions,
            intercepts={c: float(b) for c, b in zip(self.classes, self.intercept)},
            scores={n: float(s) for n, s in zip(names, z)},
            **prediction_flags(self.reference, feat[0], image_flags),
        )

    def explain(self, image: ImageLike) -> Prediction:
        """Explain one image: probabilities, the concepts that drove each class, and the flags
        under which the prediction is withheld (image checks against the card's modality, and the
        out-of-distribution score)."""
        pixels, meta, loaded = as_pixels(image)
        checks = image_flags(((self.info or {}).get("card") or {}).get("modality"), pixels, meta)
        return self.explain_features(self.image_features(loaded)[0], image_flags=checks)

    def intervene_features(self, feature: np.ndarray, overrides: dict[str, float]) -> np.ndarray:
        """Class probabilities after setting some standardised concept scores by hand.

        The classic concept-bottleneck test-time intervention: a clinician marks a concept present
        (e.g. a high score such as +2) or absent (e.g. -2) and sees how the prediction changes.
        """
        z = self.bottleneck.transform(np.asarray(feature, np.float32).reshape(1, -1))[0].copy()
        index = {c: i for i, c in enumerate(self.bottleneck.concept_names)}
        for name, value in overrides.items():
            if name not in index:
                raise KeyError(f"unknown concept {name!r}; the model's concepts are {self.bottleneck.concept_names}")
            z[index[name]] = float(value)
        return softmax((z @ self.coef.T + self.intercept)[None])[0]

    def concepts_per_class(self) -> float:
        """Mean number of concepts with a non-zero weight per class."""
        return float((self.coef != 0).sum(1).mean())

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``model.json`` + ``model.safetensors`` into ``folder`` (created if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "coef": torch.from_numpy(self.coef.copy()),
            "intercept": torch.from_numpy(self.intercept.copy()),
            **self.bottleneck.state_tensors(),
        }
        if self.train_raw_scores is not None:
            tensors["train_raw_scores_sorted"] = torch.from_numpy(self.train_raw_scores.copy())
        if self.concept_prior is not None:
            tensors["concept_prior"] = torch.from_numpy(self.concept_prior.copy())
        if self.concept_levels is not None:
            tensors["concept_levels"] = torch.from_numpy(self.concept_levels.copy())
        atomic_write_bytes(folder / "model.safetensors", safetensors_bytes(
            tensors, metadata={"format": FORMAT, "version": str(FORMAT_VERSION)}))
        atomic_write_json(
            folder / "model.json",
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "encoder": self.encoder_name,
                "encoder_key": self.encoder_key,
                "classes": self.classes,
                "concepts": self.bottleneck.concept_names,
                "bottleneck": self.bottleneck.debiasing,
                "concepts_per_class": self.concepts_per_class(),
                "info": self.info,
            },
        )
        if self.reference is not None:
            self.reference.save(folder)
        else:  # an earlier model's reference in this folder would not describe this one
            (folder / REFERENCE_FILE).unlink(missing_ok=True)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConceptBottleneckModel:
        """Load a model folder written by :meth:`save`, checking every field and tensor first.

        Raises:
            FileNotFoundError: the folder lacks ``model.json`` or ``model.safetensors``.
            ModelFormatError: a file is damaged, from another program or a newer cbm, or holds
                a field or tensor of the wrong type, shape or value (the message names which).
        """
        folder = Path(folder)
        meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: a model folder holds model.json and model.safetensors "
                    "(written by ConceptBottleneckModel.save or `cbm run`, in <run dir>/model)"
                )
        meta = _read_meta(meta_path)
        tensors = _read_tensors(weights_path, meta)
        try:
            bottleneck = ConceptBottleneck.from_state(meta["concepts"], tensors, meta["bottleneck"]["nuisance_prompts"])
        except ValueError as exc:
            raise ModelFormatError(weights_path, f"holds concept embeddings cbm cannot use ({exc})", _REFIT) from None
        raw = tensors.get("train_raw_scores_sorted")
        prior, levels = tensors.get("concept_prior"), tensors.get("concept_levels")
        reference = TrainingReference.load(folder, classes=meta["classes"], dim=int(tensors["concept_embeddings"].shape[1]))
        return cls(
            meta["encoder"], meta["classes"], bottleneck, tensors["coef"].numpy(), tensors["intercept"].numpy(),
            encoder_key=meta.get("encoder_key"),
            train_raw_scores=None if raw is None else raw.numpy(),
            concept_prior=None if prior is None else prior.numpy(),
            concept_levels=None if levels is None else levels.numpy(),
            info=meta["info"],
            reference=reference,
        )

    def __repr__(self) -> str:
        return (
            f"ConceptBottleneckModel(encoder={self.encoder_name!r}, classes={self.classes}, "
            f"concepts={self.bottleneck.n_concepts}, concepts_per_class={self.concepts_per_class():.1f})"
        )


# --------------------------------------------------------------------------------- loading checks
_REFIT = "Save the model again from its run (`cbm run` writes <run dir>/model), or fit it again with cbm.fit"


def _read_meta(path: Path) -> dict[str, Any]:
    """``model.json``, every field checked; raises :class:`ModelFormatError` naming the field."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFormatError(path, "is not UTF-8 text", _REFIT) from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(path, f"is not valid JSON ({str(exc)[:120]})", _REFIT) from None
    if not isinstance(meta, dict):
        raise ModelFormatError(path, f"holds a {type(meta).__name__}, not a JSON object", _REFIT)
    if meta.get("format") != FORMAT:
        raise ModelFormatError(path, f"is not a cbm model (format {quote(meta.get('format'))}, expected {FORMAT!r})",
                               "Give the folder that `cbm run` wrote as <run dir>/model")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFormatError(path, f"has the bad value {quote(version)}", _REFIT, field="version")
    if version > FORMAT_VERSION:
        raise ModelFormatError(path, f"has format version {version}, newer than this cbm understands ({FORMAT_VERSION})",
                               "Upgrade cbm", field="version")
    if not isinstance(meta.get("encoder"), str) or not meta["encoder"].strip():
        raise ModelFormatError(path, f"has the bad value {quote(meta.get('encoder'))}", "It names the encoder, e.g. demo-clip",
                               field="encoder")
    if meta.get("encoder_key") is not None and not isinstance(meta["encoder_key"], str):
        raise ModelFormatError(path, f"has the bad value {quote(meta['encoder_key'])}", _REFIT, field="encoder_key")
    for key, least in (("classes", 2), ("concepts", 1)):
        names = meta.get(key)
        if not isinstance(names, list) or len(names) < least or not all(isinstance(n, str) and n.strip() for n in names):
            raise ModelFormatError(path, f"has the bad value {quote(names)}: a list of at least {least} non-empty names",
                                   _REFIT, field=key)
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ModelFormatError(path, f"repeats {quote(dupes)}", _REFIT, field=key)
    bottleneck = meta.get("bottleneck") or {}
    prompts = bottleneck.get("nuisance_prompts", []) if isinstance(bottleneck, dict) else None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ModelFormatError(path, f"has the bad value {quote(bottleneck)}", _REFIT, field="bottleneck.nuisance_prompts")
    meta["bottleneck"] = {**(bottleneck if isinstance(bottleneck, dict) else {}), "nuisance_prompts": prompts}
    info = meta.get("info", {})
    if not isinstance(info, dict):
        raise ModelFormatError(path, f"has the bad value {quote(info)}", "It holds a JSON object", field="info")
    meta["info"] = info
    return meta


def _read_tensors(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``model.safetensors``, every tensor checked against ``model.json`` (shape, dtype, finite values)."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
        raise ModelFormatError(path, f"cannot be read as safetensors ({type(exc).__name__}: {str(exc)[:120]})",
                               _REFIT) from None
    k, c = len(meta["classes"]), len(meta["concepts"])
    emb = tensors.get("concept_embeddings")
    d = int(emb.shape[1]) if emb is not None and emb.dim() == 2 else -1
    shapes: dict[str, tuple[int, ...] | None] = {
        "coef": (k, c), "intercept": (k,), "concept_embeddings": (c, d), "score_mean": (c,), "score_std": (c,),
    }
    optional = {"concept_offset": (d,), "train_raw_scores_sorted": None, "concept_prior": (k, c), "concept_levels": (2, c)}
    for name, shape in {**shapes, **optional}.items():
        t = tensors.get(name)
        if t is None:
            if name in shapes:
                raise ModelFormatError(path, "is missing", _REFIT, field=f"tensor {name}")
            continue
        if not t.is_floating_point():
            raise ModelFormatError(path, f"has dtype {t.dtype}, not a float", _REFIT, field=f"tensor {name}")
        expected = shape if shape is not None else (None, c)
        if t.dim() != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
            raise ModelFormatError(path, f"has shape {tuple(t.shape)}; the model has {k} classes and {c} concepts, "
                                   f"so {tuple('n' if e is None else e for e in expected)} was expected",
                                   _REFIT, field=f"tensor {name}")
        if not bool(torch.isfinite(t).all()):
            raise ModelFormatError(path, "holds NaN or infinite values", _REFIT, field=f"tensor {name}")
    if bool((tensors["score_std"] <= 0).any()):
        raise ModelFormatError(path, "holds a zero or negative standard deviation", _REFIT, field="tensor score_std")
    if bool((tensors["concept_embeddings"].norm(dim=1) == 0).any()):
        raise ModelFormatError(path, "holds an all-zero concept embedding", _REFIT, field="tensor concept_embeddings")
    basis = tensors.get("nuisance_basis")
    if basis is not None and (basis.dim() != 2 or basis.shape[1] != d or not bool(torch.isfinite(basis).all())):
        raise ModelFormatError(path, f"has shape {tuple(basis.shape)} or non-finite values; finite (m, {d}) expected",
                               _REFIT, field="tensor nuisance_basis")
    prior = tensors.get("concept_prior")
    if prior is not None and bool(((prior < 0) | (prior > 1)).any()):
        raise ModelFormatError(path, "holds values outside [0, 1]", _REFIT, field="tensor concept_prior")
    return tensors
