"""The concept bottleneck: image features + concept text embeddings -> standardised concept scores.

A concept score is the cosine between an image embedding and a concept's text embedding. Raw
cosines of a CLIP-style model live in a narrow band (about 0.1-0.4) that differs per concept, so
the scores are standardised with the training split's mean and standard deviation before the
head sees them (as Label-free CBM does). The statistics are part of the saved model: a new image
is scored exactly as the training images were.

Two optional changes to the concept directions keep what every concept prompt shares out of the
scores (:meth:`ConceptBottleneck.debiased`):

- *centring*: the mean embedding of a broad set of the modality's concepts (the card's whole
  concept store, or the concepts themselves) is subtracted from each. Every prompt of one modality
  shares a large common part ("a dermoscopy photo of ..."), and whatever an image has in common
  with that part (a ruler the encoder sees plainly, the hospital's colour cast) then moves all
  concept scores together. The head sees the scores standardised per concept, so this shared part
  cannot be cancelled there. The mean of a short list (the four ABCD concepts) would be a poor
  estimate: it holds what those concepts share beyond the prompt, and centring on it removes that.
- *nuisance prompts*: the text embeddings of known artefacts ("ruler", "ink marking"), centred the
  same way, span a subspace that is projected out of every concept direction, so no concept
  score moves with an image's likeness to them (the debiasing of Chuang et al. 2023, "Debiasing
  Vision-Language Models via Biased Prompts", applied to the concept directions).

Scores are cosines with the resulting directions, standardised as above; the offset and the
projection are saved with the model and used for concept maps too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["BottleneckConfig", "ConceptBottleneck", "cosine_scores"]

# A concept whose training scores barely vary carries no signal; dividing by its tiny std would
# only amplify noise, so its std is floored at this value.
_MIN_STD = 1e-6
# A concept direction shorter than this after centring and projection (unit-norm embeddings before)
# is all offset and nuisance: it has no direction of its own.
_MIN_DIRECTION = 1e-3


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _l2_normalise(x: np.ndarray, what: str = "feature vectors") -> np.ndarray:
    bad = np.flatnonzero(~np.isfinite(x).all(1)) if x.ndim == 2 else np.array([], int)
    if bad.size:  # a NaN row would make every concept's mean and std NaN, and every score with them
        raise ValueError(f"{what} hold NaN or infinite values (row {', '.join(map(str, bad[:5]))}"
                         f"{', ...' if bad.size > 5 else ''}): the encoder's output was damaged; encode them again")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError(f"one of the {what} is all zeros: it has no direction, so no cosine can be taken")
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
    return _l2_normalise(img, "image features") @ _l2_normalise(txt, "concept directions").T


@dataclass(frozen=True)
class BottleneckConfig:
    """How the concept directions are made (the ``bottleneck`` node of ``cbm run``'s config).

    Args:
        centre: subtract the mean embedding of the card's concept store from every concept direction.
        nuisance_prompts: artefacts ("ruler", "ink marking") whose directions are projected out of
            every concept direction; empty (the default) = none, ``None`` = the card's
            ``nuisance_prompts``. The default is what ``scripts/check_defaults.py``'s rule chose on
            validation data (docs/results.md, "Choosing the defaults").
        calibrate: where the card annotates a concept's truth, the head weighs the probability
            that the concept is present (its score calibrated on the training split,
            :mod:`cbm.calibration`) instead of the score (True), the score (False), or either, by
            a rule read on the run's validation split ("auto", the default; see
            ``cbm.pipeline.fitting``); a card without concept truth is unaffected.
    """

    centre: bool = True
    nuisance_prompts: Sequence[str] | None = ()
    calibrate: bool | str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.centre, (bool, np.bool_)):  # "off" from a config would read as on
            raise ValueError(f"centre must be true or false; got {self.centre!r}")
        if not (self.calibrate is True or self.calibrate is False or self.calibrate == "auto"):
            raise ValueError(f'calibrate must be true, false or "auto"; got {self.calibrate!r}')
        if isinstance(self.nuisance_prompts, str):  # one prompt (bottleneck.nuisance_prompts=ruler), not its letters
            object.__setattr__(self, "nuisance_prompts", (self.nuisance_prompts,))  # a frozen dataclass
        if self.nuisance_prompts is not None:
            prompts = self.nuisance_prompts
            if not isinstance(prompts, Sequence) or any(not isinstance(p, str) or not p.strip() for p in prompts):
                raise ValueError(f"nuisance_prompts must be a list of prompts, e.g. [ruler, ink marking], [] or null; "
                                 f"got {self.nuisance_prompts!r}")


@dataclass
class ConceptBottleneck:
    """Concept names and text embeddings, plus the training split's score statistics.

    Args:
        concept_names: one name per concept, in column order.
        concept_embeddings: ``(n_concepts, dim)`` text embeddings from the encoder's text tower.
        offset: a text-space vector subtracted from every concept embedding (centring), or None.
        nuisance_basis: ``(m, dim)`` orthonormal rows spanning directions removed from every
            concept direction, or None.
        nuisance_prompts: the prompts that ``nuisance_basis`` was made from (for the record).

    ``directions`` holds the unit concept directions the scores are cosines with (the embeddings
    themselves when there is neither offset nor basis). Build a centred and debiased bottleneck
    with :meth:`debiased`.
    """

    concept_names: list[str]
    concept_embeddings: np.ndarray
    mean_: np.ndarray | None = field(default=None, repr=False)
    std_: np.ndarray | None = field(default=None, repr=False)
    offset: np.ndarray | None = field(default=None, repr=False)
    nuisance_basis: np.ndarray | None = field(default=None, repr=False)
    nuisance_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.concept_names = list(self.concept_names)
        self.concept_embeddings = _l2_normalise(_as_numpy(self.concept_embeddings), "concept embeddings")
        if len(self.concept_names) != len(self.concept_embeddings):
            raise ValueError(
                f"{len(self.concept_names)} concept names but {len(self.concept_embeddings)} embeddings"
            )
        if len(set(self.concept_names)) != len(self.concept_names):
            dupes = sorted({c for c in self.concept_names if self.concept_names.count(c) > 1})
            raise ValueError(f"concept names must be unique; repeated: {dupes}")
        dim = self.concept_embeddings.shape[1]
        if self.offset is not None:
            self.offset = _as_numpy(self.offset).reshape(-1)
            if self.offset.shape != (dim,):
                raise ValueError(f"offset has {self.offset.size} values; the concept embeddings have width {dim}")
        if self.nuisance_basis is not None:
            basis = _as_numpy(self.nuisance_basis)
            if basis.ndim == 0 or basis.shape[-1] != dim:
                raise ValueError(f"nuisance_basis has shape {basis.shape}; its rows must have the concept embeddings' width {dim}")
            self.nuisance_basis = basis.reshape(-1, dim)
        self.nuisance_prompts = list(self.nuisance_prompts)
        self.directions = self._directions()

    def _directions(self) -> np.ndarray:
        """Unit concept directions after centring and nuisance projection, ``(n_concepts, dim)``."""
        d = self.concept_embeddings.astype(np.float64)
        if self.offset is not None:
            d = d - self.offset
        if self.nuisance_basis is not None and len(self.nuisance_basis):
            b = self.nuisance_basis.astype(np.float64)
            d = d - (d @ b.T) @ b
        norm = np.linalg.norm(d, axis=1)
        short = [n for n, v in zip(self.concept_names, norm) if v < _MIN_DIRECTION]
        if short:
            raise ValueError(
                f"concepts {short} have no direction of their own once the mean concept and the nuisance "
                f"prompts {self.nuisance_prompts} are removed (a concept equal to a nuisance prompt, or a "
                "single concept with centring); drop them from the concepts or from the nuisance prompts"
            )
        return (d / norm[:, None]).astype(np.float32)

    @classmethod
    def debiased(
        cls,
        concept_names: Sequence[str],
        concept_embeddings: np.ndarray | torch.Tensor,
        *,
        centre: bool = True,
        reference_embeddings: np.ndarray | torch.Tensor | None = None,
        nuisance_embeddings: np.ndarray | torch.Tensor | None = None,
        nuisance_prompts: Sequence[str] = (),
    ) -> ConceptBottleneck:
        """A bottleneck whose concept directions are centred and free of the nuisance prompts.

        Args:
            centre: subtract the mean of the (unit) reference embeddings from each concept's.
            reference_embeddings: ``(r, dim)`` text embeddings of a broad set of the modality's
                concepts to centre on (default: the concepts themselves).
            nuisance_embeddings: ``(m, dim)`` text embeddings of artefacts no score should follow;
                centred with the same mean, their span is projected out of every concept direction.
            nuisance_prompts: the ``m`` prompts, kept for the record.
        """
        emb = _l2_normalise(_as_numpy(concept_embeddings), "concept embeddings")
        ref = emb if reference_embeddings is None else _l2_normalise(_as_numpy(reference_embeddings), "reference embeddings")
        if centre and len(ref) < 2:
            raise ValueError("centring needs at least 2 concepts (or reference embeddings); pass centre=False")
        if ref.shape[1] != emb.shape[1]:
            raise ValueError(f"reference embeddings have width {ref.shape[1]}, the concepts {emb.shape[1]}")
        offset = ref.mean(0) if centre else None
        basis = None
        if nuisance_embeddings is not None and len(nuisance_embeddings):
            nui = _l2_normalise(_as_numpy(nuisance_embeddings), "nuisance embeddings")
            if len(nuisance_prompts) not in (0, len(nui)):
                raise ValueError(f"{len(nuisance_prompts)} nuisance prompts but {len(nui)} nuisance embeddings")
            if offset is not None:
                nui = nui - offset
            # an orthonormal basis of their span; directions with a negligible singular value are dropped
            u, sv, vt = np.linalg.svd(nui.astype(np.float64), full_matrices=False)
            basis = vt[sv > 1e-6 * max(sv.max(), 1e-12)].astype(np.float32)
        return cls(list(concept_names), emb, offset=offset, nuisance_basis=basis, nuisance_prompts=list(nuisance_prompts))

    @property
    def debiasing(self) -> dict:
        """How the concept directions were made, for the record (JSON)."""
        return {"centred": self.offset is not None, "nuisance_prompts": self.nuisance_prompts}

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    def raw_scores(self, image_features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Cosine scores (with :attr:`directions`) before standardisation, ``(n, n_concepts)``."""
        return cosine_scores(image_features, self.directions)

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
            offset=self.offset,
            nuisance_basis=self.nuisance_basis,
            nuisance_prompts=self.nuisance_prompts,
        )

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to save (safetensors); names (and :attr:`nuisance_prompts`) go to JSON."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("ConceptBottleneck is not fitted: nothing to save")
        out = {
            "concept_embeddings": torch.from_numpy(self.concept_embeddings.copy()),
            "score_mean": torch.from_numpy(self.mean_.copy()),
            "score_std": torch.from_numpy(self.std_.copy()),
        }
        if self.offset is not None:
            out["concept_offset"] = torch.from_numpy(self.offset.copy())
        if self.nuisance_basis is not None:
            out["nuisance_basis"] = torch.from_numpy(self.nuisance_basis.copy())
        return out

    @classmethod
    def from_state(
        cls, concept_names: list[str], tensors: dict[str, torch.Tensor], nuisance_prompts: Sequence[str] = ()
    ) -> ConceptBottleneck:
        """Rebuild from :meth:`state_tensors` output and the concept names (models saved before
        centring existed have neither offset nor nuisance basis, and load as plain cosines)."""
        try:
            emb, mean, std = tensors["concept_embeddings"], tensors["score_mean"], tensors["score_std"]
        except KeyError as exc:
            raise ValueError(f"saved bottleneck lacks tensor {exc.args[0]!r}; the model folder is incomplete") from exc
        offset, basis = tensors.get("concept_offset"), tensors.get("nuisance_basis")
        return cls(
            concept_names, _as_numpy(emb), _as_numpy(mean), _as_numpy(std),
            offset=None if offset is None else _as_numpy(offset),
            nuisance_basis=None if basis is None else _as_numpy(basis),
            nuisance_prompts=list(nuisance_prompts),
        )
