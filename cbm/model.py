"""``ConceptBottleneckModel``: encoder + concepts + standardiser + sparse head, as one object.

The model never looks at an image except through its concept scores: an image is embedded by the
encoder, scored against every concept (cosine, standardised with the training statistics), and
the head's linear weights turn the scores into class probabilities. So every prediction can be
written as a sum of ``weight[class, concept] * score[concept]`` terms.

Saved as a folder: ``model.json`` (classes, concepts, encoder name and cache key, head settings,
metrics, provenance) and ``model.safetensors`` (head weights, concept embeddings, score
statistics). No pickle.

    model = ConceptBottleneckModel.fit("ham10000", encoder="biomedclip")
    model.predict(["case1.png", "case2.dcm"])
    model.explain("case1.png").top_concepts
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
from cbm.utils import atomic_write_bytes, atomic_write_json

__all__ = ["ConceptBottleneckModel", "CaseExplanation", "ConceptContribution"]

log = logging.getLogger(__name__)

FORMAT = "cbm.ConceptBottleneckModel"
FORMAT_VERSION = 2  # 2: the bottleneck's concept offset and nuisance basis (version 1 loads as plain cosines)
ImageLike = Any  # a path (str | PathLike), a cbm.data.LoadedImage, or an (H, W[, C]) array in [0, 1]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


@dataclass(frozen=True)
class ConceptContribution:
    """One concept's share of a class logit: ``weight * score``."""

    concept: str
    weight: float
    score: float  # standardised concept score of this image (0 = training mean, 1 = one std above)
    percentile: float | None  # where the raw score sits in the training distribution, 0-100
    contribution: float


@dataclass
class CaseExplanation:
    """Why the model predicted what it did for one image."""

    predicted: str
    probabilities: dict[str, float]
    runner_up: str | None
    # class -> contributions sorted by |contribution|, non-zero weights only
    contributions: dict[str, list[ConceptContribution]]
    intercepts: dict[str, float]
    scores: dict[str, float] = field(default_factory=dict)  # every concept's standardised score

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
        info: free JSON-serialisable facts (card, metrics, head settings, provenance).
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
        info: dict[str, Any] | None = None,
    ) -> None:
        self.encoder_name = encoder_name
        self.classes = list(classes)
        self.bottleneck = bottleneck
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)
        self.encoder_key = encoder_key
        # sorted raw training scores per concept (n_train, C): percentiles for explanations
        self.train_raw_scores = None if train_raw_scores is None else np.sort(np.asarray(train_raw_scores, np.float32), 0)
        self.info = dict(info or {})
        self._encoder = None
        k, c = len(self.classes), bottleneck.n_concepts
        if self.coef.shape != (k, c) or self.intercept.shape != (k,):
            raise ValueError(
                f"head shapes coef {self.coef.shape}, intercept {self.intercept.shape} do not fit "
                f"{k} classes x {c} concepts"
            )

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(
        cls,
        card_or_dataset: Any,
        *,
        encoder: str = "demo-clip",
        concepts: Any = None,
        head: Any = None,
        templates: Sequence[str] | None = None,
        device: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        cache_dir: str | os.PathLike | None = None,
        centre: bool = True,
        nuisance_prompts: Sequence[str] | None = None,
    ) -> ConceptBottleneckModel:
        """Train a model on a data card's train split, choosing the sparsity on its val split.

        Args:
            card_or_dataset: a card name (``"ham10000"``), a path to a ``card.yaml`` or its
                folder, or a loaded ``cbm.data.DataCard``.
            encoder: encoder registry name (``demo-clip``, ``biomedclip``, ``hf-hub:...``).
            concepts: ``None`` (the card's concept store), ``{class: [concepts]}``, a flat list of
                concept phrases, or a ``cbm.concepts.ConceptSet``.
            head: an unfitted ``cbm.heads.SparseConceptHead`` (default settings if ``None``).
            templates: prompt templates for concept text embeddings (default: the modality's).
            centre: subtract the mean embedding of the card's concept store (else of the
                concepts) from every concept direction.
            nuisance_prompts: artefacts ("ruler", "ink marking") projected out of every concept
                direction; ``None`` = the card's ``nuisance_prompts``, ``[]`` = none.
        """
        from cbm.experiment import fit_concept_model

        return fit_concept_model(
            card_or_dataset,
            encoder=encoder,
            concepts=concepts,
            head=head,
            templates=templates,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            cache_dir=cache_dir,
            centre=centre,
            nuisance_prompts=nuisance_prompts,
        ).model

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
        return _softmax(self.decision_function_from_features(features))

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

    def explain_features(self, feature: np.ndarray | torch.Tensor) -> CaseExplanation:
        """Explain one image from its feature vector ``(D,)``."""
        feat = np.asarray(feature, np.float32).reshape(1, -1)
        raw = self.bottleneck.raw_scores(feat)[0]
        z = self.bottleneck.transform(feat)[0]
        pct = self.score_percentiles(raw)
        logits = z @ self.coef.T + self.intercept
        proba = _softmax(logits[None])[0]
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
        return CaseExplanation(
            predicted=self.classes[order[0]],
            probabilities={c: float(p) for c, p in zip(self.classes, proba)},
            runner_up=self.classes[order[1]] if len(order) > 1 else None,
            contributions=contributions,
            intercepts={c: float(b) for c, b in zip(self.classes, self.intercept)},
            scores={n: float(s) for n, s in zip(names, z)},
        )

    def explain(self, image: ImageLike) -> CaseExplanation:
        """Explain one image: probabilities and the concepts that drove each class."""
        return self.explain_features(self.image_features(image)[0])

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
        return _softmax((z @ self.coef.T + self.intercept)[None])[0]

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
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ConceptBottleneckModel:
        """Load a model folder written by :meth:`save`."""
        folder = Path(folder)
        meta_path, weights_path = folder / "model.json", folder / "model.safetensors"
        for p in (meta_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: a model folder holds model.json and model.safetensors "
                    "(written by ConceptBottleneckModel.save or `cbm run`, in <run dir>/model)"
                )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path} is not valid JSON ({exc}); re-save the model") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a cbm model (format {meta.get('format')!r}, expected {FORMAT!r})")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{meta_path} has format version {meta['version']}, newer than this cbm understands "
                f"({FORMAT_VERSION}); upgrade cbm"
            )
        tensors = load_file(str(weights_path))
        bottleneck = ConceptBottleneck.from_state(
            meta["concepts"], tensors, (meta.get("bottleneck") or {}).get("nuisance_prompts", ())
        )
        raw = tensors.get("train_raw_scores_sorted")
        return cls(
            meta["encoder"],
            meta["classes"],
            bottleneck,
            tensors["coef"].numpy(),
            tensors["intercept"].numpy(),
            encoder_key=meta.get("encoder_key"),
            train_raw_scores=None if raw is None else raw.numpy(),
            info=meta.get("info", {}),
        )

    def __repr__(self) -> str:
        return (
            f"ConceptBottleneckModel(encoder={self.encoder_name!r}, classes={self.classes}, "
            f"concepts={self.bottleneck.n_concepts}, concepts_per_class={self.concepts_per_class():.1f})"
        )
