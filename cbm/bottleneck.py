"""The concept bottleneck: image features + concept text embeddings -> standardised concept scores.

A concept score is the cosine between an image embedding and a concept's text embedding. Raw
cosines of a CLIP-style model live in a narrow band (about 0.1-0.4) that differs per concept, so
the scores are standardised with the training split's mean and standard deviation before the
head sees them (as Label-free CBM does). The statistics are part of the saved model: a new image
is scored exactly as the training images were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ConceptBottleneck", "cosine_scores"]

# A concept whose training scores barely vary carries no signal; dividing by its tiny std would
# only amplify noise, so its std is floored at this value.
_MIN_STD = 1e-6


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("a feature vector is all zeros: it has no direction, so no cosine can be taken")
    return x / norm


def cosine_scores(image_features: np.ndarray | torch.Tensor, concept_embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity of every image with every concept, shape ``(n_images, n_concepts)``.

    Both inputs are re-normalised, so unnormalised features give the same result.
    """
    img, txt = _as_numpy(image_features), _as_numpy(concept_embeddings)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"image features {img.shape} and concept embeddings {txt.shape} must be 2-D with the same "
            "embedding width; were they made by the same encoder?"
        )
    return _l2_normalise(img) @ _l2_normalise(txt).T


@dataclass
class ConceptBottleneck:
    """Concept names and text embeddings, plus the training split's score statistics.

    Args:
        concept_names: one name per concept, in column order.
        concept_embeddings: ``(n_concepts, dim)`` text embeddings from the encoder's text tower.
    """

    concept_names: list[str]
    concept_embeddings: np.ndarray
    mean_: np.ndarray | None = field(default=None, repr=False)
    std_: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.concept_names = list(self.concept_names)
        self.concept_embeddings = _l2_normalise(_as_numpy(self.concept_embeddings))
        if len(self.concept_names) != len(self.concept_embeddings):
            raise ValueError(
                f"{len(self.concept_names)} concept names but {len(self.concept_embeddings)} embeddings"
            )
        if len(set(self.concept_names)) != len(self.concept_names):
            dupes = sorted({c for c in self.concept_names if self.concept_names.count(c) > 1})
            raise ValueError(f"concept names must be unique; repeated: {dupes}")

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    def raw_scores(self, image_features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Cosine scores before standardisation, ``(n, n_concepts)``."""
        return cosine_scores(image_features, self.concept_embeddings)

    def fit(self, train_features: np.ndarray | torch.Tensor) -> ConceptBottleneck:
        """Learn each concept's score mean and std on the training images; returns ``self``."""
        raw = self.raw_scores(train_features).astype(np.float64)
        if len(raw) < 2:
            raise ValueError("standardising concept scores needs at least 2 training images")
        self.mean_ = raw.mean(0).astype(np.float32)
        self.std_ = np.maximum(raw.std(0), _MIN_STD).astype(np.float32)
        return self

    def transform(self, image_features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Standardised concept scores, ``(n, n_concepts)`` float32."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("ConceptBottleneck is not fitted: call fit(train_features) first")
        return ((self.raw_scores(image_features) - self.mean_) / self.std_).astype(np.float32)

    def fit_transform(self, train_features: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.fit(train_features).transform(train_features)

    def subset(self, names: Sequence[str]) -> ConceptBottleneck:
        """A bottleneck over the named concepts only (statistics kept), in the given order."""
        index = {c: i for i, c in enumerate(self.concept_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"unknown concepts: {missing}")
        rows = [index[n] for n in names]
        return ConceptBottleneck(
            list(names),
            self.concept_embeddings[rows],
            None if self.mean_ is None else self.mean_[rows],
            None if self.std_ is None else self.std_[rows],
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to save (safetensors); names go to JSON."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("ConceptBottleneck is not fitted: nothing to save")
        return {
            "concept_embeddings": torch.from_numpy(self.concept_embeddings.copy()),
            "score_mean": torch.from_numpy(self.mean_.copy()),
            "score_std": torch.from_numpy(self.std_.copy()),
        }

    @classmethod
    def from_state(cls, concept_names: list[str], tensors: dict[str, torch.Tensor]) -> ConceptBottleneck:
        """Rebuild from :meth:`state_tensors` output and the concept names."""
        try:
            emb, mean, std = tensors["concept_embeddings"], tensors["score_mean"], tensors["score_std"]
        except KeyError as exc:
            raise ValueError(f"saved bottleneck lacks tensor {exc.args[0]!r}; the model folder is incomplete") from exc
        return cls(concept_names, _as_numpy(emb), _as_numpy(mean), _as_numpy(std))
