"""``ConceptBottleneckModel``: encoder + concepts + standardiser + sparse head, as one object.

The model never looks at an image except through its concept scores: an image is embedded by the
encoder, scored against every concept (cosine, standardised with the training statistics), each
score calibrated to the probability that the concept is present where the training card annotated
it (:mod:`cbm.calibration`), and the head's linear weights turn these concept values into class
probabilities. So every prediction can be written as a sum of ``weight[class, concept] *
value[concept]`` terms, a value being the concept's probability or, uncalibrated, its score.

Saved as a folder: ``model.json`` (classes, concepts, encoder name and cache key, head settings,
metrics, provenance, the SHA-256 of the weights file) and ``model.safetensors`` (head weights,
concept embeddings, score statistics, the concept store's class-concept prior, the concepts'
calibration), and
``reference.safetensors`` when the model
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

import logging
import math
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cbm.bottleneck import ConceptBottleneck
from cbm.calibration import calibrate, calibrated as calibrated_columns
from cbm.errors import ModelFormatError
from cbm.image_checks import feature_rows, image_items, image_notes
from cbm.model_format import REFIT, check_reference_digest, check_shapes, read_meta, read_tensors, write_model
from cbm.reference import Flag, TrainingReference, as_pixels, image_flags, prediction_flags
from cbm.utils import softmax

__all__ = ["ConceptBottleneckModel", "Prediction", "ConceptContribution"]

log = logging.getLogger(__name__)
_ENCODER_LOCK = threading.Lock()  # a model's encoder is made once, though two threads predict first

ImageLike = Any  # a path (str | PathLike), a cbm.data.LoadedImage, a PIL image, an (H, W[, C]) array or a (C, H, W) tensor

# "Present" / "absent" set a concept's score to where the training images at these percentiles sit.
PRESENT_PERCENTILE = 95.0
ABSENT_PERCENTILE = 5.0
_FALLBACK_LEVEL = 2.0  # +-2 standard deviations when the model folder has no training scores


@dataclass(frozen=True)
class ConceptContribution:
    """One concept's share of a class logit: ``weight * value`` (the value is P(present) for a concept
    the model calibrates, else the standardised score)."""

    concept: str
    weight: float
    score: float  # standardised concept score of this image (0 = training mean, 1 = one std above)
    percentile: float | None  # where the raw score sits in the training distribution, 0-100
    contribution: float  # weight * value
    value: float | None = None  # what the head weighs: P(present) if calibrated, else the score
    calibrated: bool = False  # whether value is a probability


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
    # every concept's value as the head weighs it: P(present) where calibrated, else its score
    values: dict[str, float] = field(default_factory=dict)
    # why the model does not answer for this image (cbm.reference: image checks, out-of-distribution)
    flags: list[Flag] = field(default_factory=list)
    ood_score: float | None = None  # the out-of-distribution score (None without a reference)
    can_abstain: bool = False  # whether the model has an out-of-distribution threshold
    notes: list[Flag] = field(default_factory=list)  # what a reader should know, withholding nothing (image_notes)

    @property
    def withheld(self) -> bool:
        """True when a flag says the prediction should not be read (it is kept, for "shown anyway")."""
        return bool(self.flags)

    def top_concepts(self, cls: str | None = None, k: int = 5) -> list[ConceptContribution]:
        """The ``k`` largest contributions (by absolute value) to ``cls`` (default: the predicted class)."""
        whole = isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0
        if (cls := cls or self.predicted) not in self.contributions or not whole:
            raise (KeyError(f"no class {cls!r}; the classes are {list(self.contributions)}") if whole
                   else ValueError(f"k={k!r}: give how many concepts to list (a whole number, 0 or more)"))
        return self.contributions[cls][:k]


class ConceptBottleneckModel:
    """A trained concept-bottleneck classifier.

    Args:
        encoder_name: registry name of the vision-language encoder (``cbm.encoders``).
        classes: class names, in the order of the head's rows.
        bottleneck: the fitted concept bottleneck (concept names, text embeddings, statistics).
        coef: ``(n_classes, n_concepts)`` head weights on the concept values (:meth:`concept_values`).
        intercept: ``(n_classes,)`` head biases.
        encoder_key: the encoder's cache key at training time (weights hash, preprocessing,
            precision); a mismatch at load time is reported, because scores would shift.
        train_raw_scores: ``(n_train, n_concepts)`` raw training scores (percentiles, intervention levels).
        concept_prior: ``(n_classes, n_concepts)`` 0/1: the classes the concept store lists each
            concept under, less the entries the training card's concept truth did not bear out
            (``cbm.pipeline.truth.check_store``): what a faithful weight must agree with;
            ``None`` for older models.
        concept_levels: ``(2, n_concepts)``: the standardised score that means "absent" (row 0)
            and "present" (row 1) for each concept, when the training card annotated concept truth
            (the mean score of the training images annotated absent / present); ``None``: the
            training scores' 5th and 95th percentiles stand in (:meth:`presence_levels`).
        calibration: ``(2, n_concepts)`` slope and intercept of each concept's calibration to
            P(present) (:func:`cbm.calibration.fit_calibration`), NaN for a concept the head
            weighs as its standardised score; ``None``: no concept is calibrated.
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
        calibration: np.ndarray | None = None,
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
        self.concept_levels = None if concept_levels is None else np.asarray(concept_levels, np.float32)
        self.calibration = None if calibration is None else np.asarray(calibration, np.float32)
        check_shapes(len(self.classes), bottleneck.n_concepts, self.coef, self.intercept, self.concept_prior,
                     self.concept_levels, self.calibration)
        self.reference_lost = False  # model.json names a reference its folder lacks (set by load)

    def calibrated(self) -> np.ndarray:
        """``(C,)`` bool: the concepts the head weighs as probabilities."""
        if self.calibration is None:
            return np.zeros(self.bottleneck.n_concepts, bool)
        return calibrated_columns(self.calibration)

    def concept_values(self, scores: np.ndarray) -> np.ndarray:
        """What the head weighs, from standardised scores ``(n, C)``: P(present) for the calibrated
        concepts, the score itself for the others (:func:`cbm.calibration.calibrate`)."""
        return calibrate(scores, self.calibration)

    def value_offsets(self) -> np.ndarray:
        """``(C,)``: each concept's mean value over the training images (0 for a standardised score;
        for a calibrated concept its mean probability, or its probability at the mean score when the
        folder holds no training scores). A contribution measured from here compares the image with
        a training image of average score, as the reports say."""
        on, out = self.calibrated(), np.zeros(self.bottleneck.n_concepts, np.float32)
        if not on.any():
            return out
        bn, raw = self.bottleneck, self.train_raw_scores
        if raw is None or len(raw) == 0 or bn.mean_ is None or bn.std_ is None:
            out[on] = self.concept_values(np.zeros((1, len(on)), np.float32))[0, on]
        else:
            out[on] = self.concept_values((raw - bn.mean_) / bn.std_)[:, on].mean(0)
        return out

    def presence_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Concept values that mean "absent" and "present" for each concept, ``(C,)`` each.

        Interventions (the report's controls, the faithfulness curve) set a concept to one of them:
        0 and 1 for a calibrated concept (a probability), :meth:`score_levels` for the others.
        """
        absent, present = self.score_levels()
        on = self.calibrated()
        absent[on], present[on] = 0.0, 1.0
        return absent, present

    def score_levels(self) -> tuple[np.ndarray, np.ndarray]:
        """Standardised scores that mean "absent" and "present" for each concept, ``(C,)`` each.

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
        the concept store does not list it under (or away from one it does); empty without a prior.
        With two classes, or an ordinal head, each concept is judged once (:func:`cbm.heads.contradicting_entries`)."""
        from cbm.heads import contradicting_entries

        if self.concept_prior is None:
            return []
        names, ordinal = self.bottleneck.concept_names, (self.info.get("head") or {}).get("ordinal") is True
        return [(self.classes[k], names[j], w) for k, j, w in contradicting_entries(self.coef, self.concept_prior, ordinal)]

    # ------------------------------------------------------------------ the encoder
    @property
    def encoder(self):
        """The encoder, made on first use (loading stays cheap), once however many threads ask for it first."""
        if self._encoder is not None:
            return self._encoder
        from cbm.encoders import create_encoder

        with _ENCODER_LOCK:
            if self._encoder is None:
                encoder = create_encoder(self.encoder_name)
                key = getattr(encoder, "cache_key", None)
                if self.encoder_key and key and key != self.encoder_key:
                    log.warning("encoder %s now has cache key %s but the model was trained with %s: weights, preprocessing "
                                "or precision changed, so concept scores may shift", self.encoder_name, key, self.encoder_key)
                self._encoder = encoder
        return self._encoder

    def set_encoder(self, encoder: Any) -> None:
        """Use an already created encoder (saves creating it twice in one process)."""
        self._encoder = encoder

    def image_features(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Embed images (paths, ``LoadedImage`` objects, arrays, tensors, PIL images) with the model's encoder, ``(n, D)``."""
        from cbm.data import pil_pixels, read_image
        from cbm.data.transforms import channels_last, unit_pixels

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: give a whole number of images per batch, at least 1")
        items, enc = image_items(images), self.encoder
        out = []
        for start in range(0, len(items), batch_size):
            batch = []
            for item in items[start : start + batch_size]:
                if isinstance(item, (str, os.PathLike)):
                    item = read_image(item)
                elif isinstance(item, (np.ndarray, torch.Tensor)):  # checked here: the transform's pipeline wraps errors
                    item = unit_pixels(channels_last(item))
                item = pil_pixels(item) if hasattr(item, "getbands") else item  # PIL: as a file of its mode is read
                batch.append(enc.transform(item))
            out.append(enc.encode_image(torch.stack(batch)))
        return torch.cat(out).numpy() if out else np.zeros((0, self.bottleneck.concept_embeddings.shape[1]), np.float32)

    # ------------------------------------------------------------------ prediction
    def concept_scores_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Standardised concept scores ``(n, n_concepts)`` of precomputed image features."""
        return self.bottleneck.transform(feature_rows(features))

    def concept_values_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """The head's inputs ``(n, n_concepts)`` of precomputed image features (:meth:`concept_values`)."""
        return self.concept_values(self.concept_scores_from_features(features))

    def decision_function_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.concept_values_from_features(features) @ self.coef.T + self.intercept

    def predict_proba_from_features(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` of precomputed image features."""
        return softmax(self.decision_function_from_features(features))

    def concept_scores(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Standardised concept scores ``(n, n_concepts)`` of images."""
        return self.concept_scores_from_features(self.image_features(images))

    def predict_proba(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in :attr:`classes` order."""
        return self.predict_proba_from_features(self.image_features(images))

    def predict(self, images: ImageLike | Sequence[ImageLike], *, withhold: bool = False) -> list[str | None]:
        """Predicted class names. They answer for any image, a CT slice for a dermoscopy model too;
        with ``withhold``, ``None`` where :meth:`explain` withholds the answer (its image checks and
        out-of-distribution score; one image at a time)."""
        if not withhold:
            return [self.classes[i] for i in self.predict_proba(images).argmax(1)]
        return [None if (e := self.explain(item)).withheld else e.predicted for item in image_items(images)]

    # ------------------------------------------------------------------ explanation
    def score_percentiles(self, raw_scores: np.ndarray) -> np.ndarray | None:
        """Percentile (0-100) of each raw concept score in the training distribution; ``(C,)``."""
        if self.train_raw_scores is None:
            return None
        ref = self.train_raw_scores
        return 100.0 * np.array([np.searchsorted(ref[:, j], raw_scores[j], side="right") for j in range(ref.shape[1])]) / len(ref)

    def explain_features(self, feature: np.ndarray | torch.Tensor, *, image_flags: Sequence[Flag] = (),
                         image_notes: Sequence[Flag] = ()) -> Prediction:
        """Explain one image from its feature vector ``(D,)``.

        ``image_flags`` are the image checks' flags (:func:`cbm.reference.image_flags`); the training
        reference adds its out-of-distribution flag. A flagged prediction is ``withheld``.
        ``image_notes`` (:meth:`image_notes`) are kept as the prediction's ``notes``.
        """
        feat = feature_rows(feature, one=True)
        raw = self.bottleneck.raw_scores(feat)[0]
        z = self.bottleneck.transform(feat)[0]
        v, on = self.concept_values(z[None])[0], self.calibrated()
        pct = self.score_percentiles(raw)
        logits = v @ self.coef.T + self.intercept
        proba = softmax(logits[None])[0]
        order = np.argsort(-proba)
        names = self.bottleneck.concept_names
        contributions: dict[str, list[ConceptContribution]] = {}
        for k, cls in enumerate(self.classes):
            rows = [
                ConceptContribution(
                    names[j], float(self.coef[k, j]), float(z[j]),
                    None if pct is None else float(pct[j]), float(self.coef[k, j] * v[j]), float(v[j]), bool(on[j]),
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
            values={n: float(s) for n, s in zip(names, v)},
            **prediction_flags(self.reference, feat[0], image_flags),
            notes=list(image_notes),
        )

    def explain(self, image: ImageLike) -> Prediction:
        """Explain one image: probabilities, the concepts that drove each class, and the flags
        under which the prediction is withheld (image checks against the card's modality, and the
        out-of-distribution score)."""
        pixels, meta, loaded = as_pixels(image)
        return self.explain_features(self.image_features(loaded)[0], image_flags=self.image_checks(pixels, meta),
                                     image_notes=self.image_notes(meta))

    def image_checks(self, pixels: np.ndarray, meta: dict[str, Any]) -> list[Flag]:
        """:func:`cbm.image_checks.image_flags` of an image (``as_pixels``) for this model: its card's
        modality, and the greyscale share of its training images where the reference recorded it."""
        grey = self.reference.facts.get("greyscale_share") if self.reference is not None else None
        return image_flags(((self.info or {}).get("card") or {}).get("modality"), pixels, meta, grey)

    def image_notes(self, meta: dict[str, Any]) -> list[Flag]:
        """:func:`cbm.image_checks.image_notes` of an image's meta for this model (its card's modality)."""
        return image_notes(((self.info or {}).get("card") or {}).get("modality"), meta)

    def intervene_features(self, feature: np.ndarray, overrides: Mapping[str, float | str], *, _stacklevel: int = 2) -> np.ndarray:
        """Class probabilities after setting some concept values by hand (a number, or "present" / "absent").

        The classic concept-bottleneck test-time intervention: a clinician marks a concept present or
        absent (:meth:`presence_levels`: 1 or 0 if calibrated, else a high or low score) and sees the change.
        """
        if not isinstance(overrides, Mapping):  # a list of pairs, a name alone
            raise TypeError(f"overrides must be a mapping of concept name -> 'present', 'absent' or a number; got "
                            f"{type(overrides).__name__}")
        z = self.concept_values_from_features(feature_rows(feature, one=True))[0].copy()
        index = {c: i for i, c in enumerate(self.bottleneck.concept_names)}
        calibrated = self.calibrated()
        levels = dict(zip(("absent", "present"), self.presence_levels()))
        for name, value in overrides.items():
            if name not in index:
                import difflib

                close = difflib.get_close_matches(str(name), list(index), n=3, cutoff=0.5)
                raise KeyError(f"unknown concept {name!r}; " + (f"did you mean {', '.join(map(repr, close))}? " if close
                               else "") + f"the model has {len(index)} concepts (model.bottleneck.concept_names)")
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
            if not (number or isinstance(value, str) and value in levels):
                raise ValueError(f"intervention for {name!r} is {value!r}; use 'present', 'absent' or a number")
            v = float(levels[value][index[name]] if isinstance(value, str) else value)
            if not math.isfinite(v):
                raise ValueError(f"intervention for {name!r} is {value!r}; give a finite number")
            if calibrated[index[name]] and not 0.0 <= v <= 1.0:
                raise ValueError(
                    f"intervention for {name!r} is {v:g}, but the model weighs this concept as the probability that "
                    "it is present: give a number from 0 to 1 (0.75 for 75 %), or 'present' / 'absent'")
            z[index[name]] = v
        unused = [c for c in overrides if not np.any(self.coef[:, index[c]])]
        if unused:
            used = [c for c, i in index.items() if np.any(self.coef[:, i])]
            warnings.warn(f"the head gives no weight to {unused}: setting them changes no prediction (the head uses "
                          f"{used})", UserWarning, stacklevel=_stacklevel)
        return softmax((z @ self.coef.T + self.intercept)[None])[0]

    def concepts_per_class(self) -> float:
        """Mean number of concepts with a non-zero weight per class."""
        return float((self.coef != 0).sum(1).mean())

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` holds: the head, the bottleneck's state, the training scores,
        prior, levels and calibration (NaN columns, not calibrated, saved as 0, 0 with row 2 = 0)."""
        optional = {"train_raw_scores_sorted": self.train_raw_scores, "concept_prior": self.concept_prior,
                    "concept_levels": self.concept_levels}
        tensors = {"coef": torch.from_numpy(self.coef.copy()), "intercept": torch.from_numpy(self.intercept.copy()),
                   **self.bottleneck.state_tensors(),
                   **{k: torch.from_numpy(v.copy()) for k, v in optional.items() if v is not None}}
        if self.calibration is not None:
            tensors["concept_calibration"] = torch.from_numpy(
                np.vstack([np.nan_to_num(self.calibration), self.calibrated()[None]]).astype(np.float32))
        return tensors

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``model.json`` + ``model.safetensors`` (+ ``reference.safetensors``) into ``folder``
        (created if missing); everything is checked before the first file is written.

        Raises:
            ValueError: names a model folder cannot hold (one class, repeated or empty names), or
                ``info`` that is not JSON data (numpy numbers are written as numbers, NaN as null).
        """
        if (folder := Path(folder)).exists() and not folder.is_dir():
            raise FileExistsError(f"{folder} is a file: a model is saved into a folder; give a new folder's path")
        return write_model(self, folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConceptBottleneckModel:
        """Load a model folder written by :meth:`save` (or its model.json), checking every field and tensor first.

        Raises:
            FileNotFoundError: the folder lacks ``model.json`` or ``model.safetensors``.
            ModelFormatError: a file is damaged, from another program or a newer cbm, or holds
                a field or tensor of the wrong type, shape or value (the message names which).
        """
        folder = Path(folder).parent if Path(folder).name in ("model.json", "model.safetensors") else Path(folder)
        meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
        for p in (meta_path, weights_path):
            if not p.is_file():
                inside = (folder / "model" / "model.json").is_file()  # a run folder given for its model
                raise FileNotFoundError(
                    f"{p} not found: a model folder holds model.json and model.safetensors, and reference.safetensors "
                    "where the model flags images unlike its training images (written by ConceptBottleneckModel.save "
                    "or `cbm run`, in <run dir>/model)"
                    + (f"; this looks like a run folder: give {folder / 'model'}" if inside else "")
                )
        meta = read_meta(meta_path)
        tensors = read_tensors(weights_path, meta)
        try:
            bottleneck = ConceptBottleneck.from_state(meta["concepts"], tensors, meta["bottleneck"]["nuisance_prompts"])
        except ValueError as exc:
            raise ModelFormatError(weights_path, f"holds concept embeddings cbm cannot use ({exc})", REFIT) from None
        raw = tensors.get("train_raw_scores_sorted")
        prior, levels = tensors.get("concept_prior"), tensors.get("concept_levels")
        calibration = tensors.get("concept_calibration")
        if calibration is not None:
            calibration = np.where(calibration[2:].numpy() == 1, calibration[:2].numpy(), np.nan)
        lost = check_reference_digest(folder, meta)
        reference = TrainingReference.load(folder, classes=meta["classes"], dim=int(tensors["concept_embeddings"].shape[1]))
        model = cls(
            meta["encoder"], meta["classes"], bottleneck, tensors["coef"].numpy(), tensors["intercept"].numpy(),
            encoder_key=meta.get("encoder_key"),
            train_raw_scores=None if raw is None else raw.numpy(),
            concept_prior=None if prior is None else prior.numpy(),
            concept_levels=None if levels is None else levels.numpy(),
            calibration=calibration,
            info=meta["info"],
            reference=reference,
        )
        model.reference_lost = lost
        return model

    def __repr__(self) -> str:
        return (
            f"ConceptBottleneckModel(encoder={self.encoder_name!r}, classes={self.classes}, "
            f"concepts={self.bottleneck.n_concepts}, concepts_per_class={self.concepts_per_class():.1f})"
        )
