"""The training reference: is an image like the ones the model learned from, and which ones does it resemble?

:func:`build_reference` runs once at fit time (:mod:`cbm.pipeline.fitting`); the result is saved
beside the model (``reference.safetensors``, no pickle) and holds:

* the training images' features (L2-normalised, float16; at most :data:`MAX_REFERENCE_IMAGES`,
  drawn per class in proportion from a larger split) and their classes;
* an **out-of-distribution score**: the squared Mahalanobis distance of an image's feature from
  the training features (their mean and Ledoit-Wolf shrunk covariance, as Lee et al. 2018 use it
  on a network's features), with a threshold set on the validation split (:data:`VAL_PASS_RATE`).
  An image above it is flagged and its prediction withheld. On the demo this put noise, a
  constant-colour image, a CT slice and a chest radiograph at 6 to 9 times the threshold; the
  distance to the 5th nearest training image (Sun et al. 2022) left the constant-colour image
  below its threshold;
* small **thumbnails** of those training images (JPEG, :data:`THUMBNAIL_SIDE` pixels, the centred
  square the encoder sees; about 1 KB each on the demo), read at fit time so a report shows a
  case's nearest training images without the training data at hand. No file name is kept: a
  neighbour is named by its class and its row in the training split;
* the **operating point** on the evaluation splits (``test_id``, ``test``): each class's
  sensitivity and specificity with bootstrap intervals, the confusion matrix, and the share of
  the split the out-of-distribution check answers. They describe the model on its card; nothing
  is chosen on them.

The image checks (:func:`cbm.image_checks.image_flags`: another DICOM modality, a greyscale image
for a colour model, an image too small to show a finding; re-exported here) make, with the score,
the flags under which ``model.explain`` withholds a prediction. Reading the training images for
thumbnails also records the share of them that are greyscale (``facts["greyscale_share"]``): a
model that learned from greyscale images too is not refused them.

    ref = build_reference(model, splits, image_root=card.image_root)
    ref.nearest(feature, k=4)             # the most similar training images
    ref.flag(feature)                     # a Flag when the image is unlike the training images
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from cbm.errors import ModelFormatError
from cbm.image_checks import MIN_IMAGE_SIDE, Flag, as_pixels, display_pixels, greyscale, image_flags
from cbm.model_format import REFERENCE_FILE

__all__ = [
    "Flag",
    "Neighbour",
    "TrainingReference",
    "build_reference",
    "image_flags",
    "prediction_flags",
    "as_pixels",
    "display_pixels",
    "REFERENCE_FILE",
    "MIN_IMAGE_SIDE",
    "VAL_PASS_RATE",
    "MAX_REFERENCE_IMAGES",
    "THUMBNAIL_SIDE",
]

log = logging.getLogger(__name__)

FORMAT = "cbm.TrainingReference"
FORMAT_VERSION = 1
VAL_PASS_RATE = 0.975
"""Share of the validation images the out-of-distribution threshold lets through. Not 0.95: what
matters is the share of *new* in-domain images answered, and the validation 95th percentile lets
through about 95 % of them, less half the time (95.4 % of the demo's in-domain test images)."""
MAX_REFERENCE_IMAGES = 10_000
"""At most this many training images are kept (features, thumbnails); searching them takes milliseconds."""
THUMBNAIL_SIDE = 48

@dataclass(frozen=True)
class Neighbour:
    """A training image close to a case in the encoder's feature space."""

    row: int  # its row in the training split (the manifest's train rows, in order)
    label: str  # its class
    similarity: float  # cosine similarity of the two image features
    thumbnail: bytes | None  # a small JPEG, or None when the reference has none


def prediction_flags(reference: TrainingReference | None, feature: np.ndarray, checks: Sequence[Flag]) -> dict[str, Any]:
    """A prediction's ``flags`` (the image checks', then the out-of-distribution one), ``ood_score``
    and ``can_abstain``, given the model's reference (``None``: an older model, which cannot abstain)."""
    if reference is None:
        return {"flags": list(checks), "ood_score": None, "can_abstain": False}
    score = reference.ood_score(feature)
    ood = reference.flag(feature, score)
    return {"flags": [*checks, *([ood] if ood else [])], "ood_score": score, "can_abstain": reference.can_abstain}


def _shrunk_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision (inverse Ledoit-Wolf covariance) of ``(n, D)`` features."""
    from sklearn.covariance import LedoitWolf

    if len(features) < 2:
        return features.mean(0), np.eye(features.shape[1], dtype=np.float32)
    est = LedoitWolf(assume_centered=False).fit(features.astype(np.float64))
    return est.location_.astype(np.float32), est.precision_.astype(np.float32)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------- the reference
class TrainingReference:
    """Training features and classes, thumbnails, the out-of-distribution score and the operating point.

    Args:
        features: ``(n, D)`` L2-normalised training image features.
        labels: ``(n,)`` their class indices into ``classes``.
        classes: class names.
        rows: ``(n,)`` each image's row in the training split (default ``0..n-1``).
        thumbnails: ``n`` JPEG byte strings (``b""`` or ``None`` where missing), or ``None``.
        ood_mean: ``(D,)`` the centre of the out-of-distribution score (default: the features' mean).
        ood_precision: ``(D, D)`` inverse of the shrunk covariance (default: fitted on ``features``).
        val_scores: the validation images' out-of-distribution scores (the threshold's sample).
        threshold: the score above which an image is flagged (``None``: the model cannot abstain).
        facts: what else the model card shows (``n_train``, ``performance`` per split, ...).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, classes: Sequence[str], *,
                 rows: np.ndarray | None = None, thumbnails: Sequence[bytes | None] | None = None,
                 ood_mean: np.ndarray | None = None, ood_precision: np.ndarray | None = None,
                 val_scores: np.ndarray | None = None, threshold: float | None = None,
                 facts: Mapping[str, Any] | None = None) -> None:
        self.features = np.asarray(features, np.float32)
        self.labels = np.asarray(labels, np.int64)
        self.classes = list(classes)
        n = len(self.features)
        self.rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.thumbnails = None if thumbnails is None else [t or None for t in thumbnails]
        if self.features.ndim != 2 or n < 1 or self.labels.shape != (n,) or self.rows.shape != (n,):
            raise ValueError(f"a reference needs (n, D) features with n labels and rows; got {self.features.shape}, "
                             f"{self.labels.shape}, {self.rows.shape}")
        if self.thumbnails is not None and len(self.thumbnails) != n:
            raise ValueError(f"{len(self.thumbnails)} thumbnails for {n} reference images")
        if ood_mean is None or ood_precision is None:
            ood_mean, ood_precision = _shrunk_gaussian(self.features)
        self.ood_mean = np.asarray(ood_mean, np.float32)
        self.ood_precision = np.asarray(ood_precision, np.float32)
        self.val_scores = None if val_scores is None else np.sort(np.asarray(val_scores, np.float32))
        self.threshold = None if threshold is None else float(threshold)
        self.facts = dict(facts or {})

    def __len__(self) -> int:
        return len(self.features)

    @property
    def can_abstain(self) -> bool:
        """Whether the out-of-distribution check has a threshold."""
        return self.threshold is not None

    def _queries(self, features: np.ndarray) -> np.ndarray:
        q = np.asarray(features, np.float32).reshape(-1, self.features.shape[1])
        return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)

    def similarities(self, features: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query feature ``(m, D)`` (or ``(D,)``) with every reference image, ``(m, n)``."""
        return self._queries(features) @ self.features.T

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """The out-of-distribution score of each feature ``(m, D)``: its squared Mahalanobis distance
        from the training features (about D for a typical training image; larger is stranger)."""
        d = self._queries(features) - self.ood_mean
        return np.einsum("ij,jk,ik->i", d, self.ood_precision, d).astype(np.float32)

    def ood_score(self, feature: np.ndarray) -> float:
        """:meth:`ood_scores` of one feature ``(D,)``."""
        return float(self.ood_scores(feature)[0])

    def val_share_below(self, score: float) -> float | None:
        """The share of validation images with a lower score than ``score`` (0-1), if known."""
        if self.val_scores is None or len(self.val_scores) == 0:
            return None
        return float(np.searchsorted(self.val_scores, score, side="left") / len(self.val_scores))

    def flag(self, feature: np.ndarray, score: float | None = None) -> Flag | None:
        """A ``unlike-training`` :class:`Flag` when the image's score is above the threshold, else ``None``."""
        if self.threshold is None:
            return None
        score = self.ood_score(feature) if score is None else score
        if score <= self.threshold:
            return None
        share = self.val_share_below(score)
        where = ("further from them than the model's threshold" if share is None else
                 "at least as far from them as the furthest validation image" if share >= 1.0
                 else f"further from them than {100 * share:.0f} % of the validation images")
        target = 100 * self.facts.get("val_pass_rate_target", VAL_PASS_RATE)
        return Flag("unlike-training",
                    f"The image is unlike the images the model was trained on: it lies {where} "
                    f"(the model answers only for images as close as the nearest {target:g} % of them), so it does "
                    "not answer for it.")

    def nearest(self, feature: np.ndarray, k: int = 4) -> list[Neighbour]:
        """The ``k`` most similar reference images to one feature, most similar first."""
        sims = self.similarities(feature)[0]
        k = max(0, min(k, len(sims)))
        top = np.argpartition(-sims, k - 1)[:k] if k else np.empty(0, np.int64)
        top = top[np.argsort(-sims[top], kind="stable")]
        return [Neighbour(int(self.rows[i]), self.classes[int(self.labels[i])], float(sims[i]),
                          self.thumbnails[i] if self.thumbnails is not None else None) for i in top]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write :data:`REFERENCE_FILE` into ``folder``."""
        from cbm.utils import atomic_write_bytes

        return atomic_write_bytes(Path(folder) / REFERENCE_FILE, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The contents of :data:`REFERENCE_FILE` (safetensors; facts as JSON in its metadata)."""
        thumbs = self.thumbnails or []
        tensors = {
            "features": torch.from_numpy(self.features.astype(np.float16)),
            "labels": torch.from_numpy(self.labels.copy()),
            "rows": torch.from_numpy(self.rows.copy()),
            "ood_mean": torch.from_numpy(self.ood_mean.copy()),
            "ood_precision": torch.from_numpy(self.ood_precision.copy()),
        }
        if self.thumbnails is not None:
            lengths = [len(t or b"") for t in thumbs]
            tensors["thumbnail_offsets"] = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            blob = b"".join(t or b"" for t in thumbs)
            tensors["thumbnail_bytes"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
        if self.val_scores is not None:
            tensors["val_scores"] = torch.from_numpy(self.val_scores.copy())
        meta = {"format": FORMAT, "version": str(FORMAT_VERSION),
                "facts": json.dumps({**self.facts, "classes": self.classes, "threshold": self.threshold})}
        return safetensors_bytes(tensors, metadata=meta)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, classes: Sequence[str], dim: int) -> TrainingReference | None:
        """The reference saved in ``folder``, or ``None`` when the folder has none (an older model).

        Raises:
            ModelFormatError: the file is damaged or does not fit the model (classes, feature size).
        """
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        fix = "Save the model again from its run, or delete the file (the model then cannot abstain)"
        try:
            with safe_open(str(path), "pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
            facts = json.loads(meta.get("facts", "{}"))
        except Exception as exc:  # noqa: BLE001 - safetensors, JSON and OS errors alike mean a damaged file
            raise ModelFormatError(path, f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})", fix) from None
        if meta.get("format") != FORMAT or not isinstance(facts, dict):
            raise ModelFormatError(path, f"is not a cbm training reference (format {meta.get('format')!r})", fix)
        if not str(meta.get("version", "0") or 0).isdigit():
            raise ModelFormatError(path, f"has the bad version {meta.get('version')!r} in its metadata", fix)
        if int(meta.get("version", "0") or 0) > FORMAT_VERSION:
            raise ModelFormatError(path, f"has version {meta.get('version')}, newer than this cbm reads", "Upgrade cbm")
        _check_extras(path, tensors, facts, fix)
        feats, labels, rows = tensors.get("features"), tensors.get("labels"), tensors.get("rows")
        if feats is None or labels is None or rows is None or feats.dim() != 2 or feats.shape[1] != dim:
            raise ModelFormatError(path, f"holds no (n, {dim}) features, labels and rows for this model", fix,
                                   field="tensor features")
        n = feats.shape[0]
        if labels.shape != (n,) or rows.shape != (n,) or not bool(torch.isfinite(feats.float()).all()):
            raise ModelFormatError(path, "holds labels or rows of the wrong length, or non-finite features", fix)
        if list(facts.get("classes", [])) != list(classes) or n and not bool(((labels >= 0) & (labels < len(classes))).all()):
            raise ModelFormatError(path, f"names classes {facts.get('classes')} or labels outside them; the model has "
                                   f"{list(classes)}", fix, field="classes")
        mean, precision = tensors.get("ood_mean"), tensors.get("ood_precision")
        if (mean is None or precision is None or tuple(mean.shape) != (dim,) or tuple(precision.shape) != (dim, dim)
                or not bool(torch.isfinite(precision).all()) or not bool(torch.isfinite(mean).all())):
            raise ModelFormatError(path, f"holds no finite ({dim},) ood_mean and ({dim}, {dim}) ood_precision", fix,
                                   field="tensor ood_precision")
        threshold, _ = facts.pop("threshold", None), facts.pop("classes", None)
        if threshold is not None and not (isinstance(threshold, (int, float)) and np.isfinite(threshold)):
            raise ModelFormatError(path, f"has the bad threshold {threshold!r}", fix, field="threshold")
        return cls(feats.float().numpy(), labels.numpy(), classes, rows=rows.numpy(),
                   thumbnails=_split_thumbnails(tensors, n, path, fix),
                   ood_mean=mean.numpy(), ood_precision=precision.numpy(),
                   val_scores=None if "val_scores" not in tensors else tensors["val_scores"].float().numpy(),
                   threshold=threshold, facts=facts)


def _check_extras(path: Path, tensors: Mapping[str, torch.Tensor], facts: dict, fix: str) -> None:
    """The reference's labels are whole numbers, its validation scores a finite vector, and the
    facts a report reads are numbers where present."""
    labels, val = tensors.get("labels"), tensors.get("val_scores")
    if labels is not None and labels.is_floating_point():
        raise ModelFormatError(path, f"holds labels of dtype {labels.dtype}, not whole numbers", fix, field="tensor labels")
    if val is not None and (val.dim() != 1 or not bool(torch.isfinite(val.float()).all())):
        raise ModelFormatError(path, f"holds validation scores of shape {tuple(val.shape)} or with non-finite values; "
                               "a finite vector was expected", fix, field="tensor val_scores")
    for key in ("greyscale_share", "val_pass_rate"):
        value = facts.get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and math.isfinite(value)):
            raise ModelFormatError(path, f"has the bad value {value!r}: a number was expected", fix, field=key)


def _split_thumbnails(tensors: Mapping[str, torch.Tensor], n: int, path: Path, fix: str) -> list[bytes | None] | None:
    offsets, blob = tensors.get("thumbnail_offsets"), tensors.get("thumbnail_bytes")
    if offsets is None or blob is None:
        return None
    off = offsets.numpy()
    if off.shape != (n + 1,) or off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != blob.numel():
        raise ModelFormatError(path, "has thumbnail offsets that do not fit its thumbnail bytes", fix)
    data = blob.numpy().tobytes()
    return [data[a:b] or None for a, b in zip(off[:-1], off[1:])]


# ---------------------------------------------------------------------------- building one
def _sample_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """All row indices, or ``limit`` of them drawn per class in proportion (sorted); every class
    keeps at least one row (while there are no more classes than ``limit``), the rounding's surplus
    taken from the largest classes' shares."""
    n = len(labels)
    if n <= limit:
        return np.arange(n)
    classes, sizes = np.unique(labels, return_counts=True)
    take = np.array([max(1, round(limit * size / n)) for size in sizes])
    while take.sum() > limit and take.max() > 1:  # cutting the sorted rows instead dropped the last classes
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(labels == k), t, replace=False) for k, t in zip(classes, take)]
    return np.sort(np.concatenate(keep))[:limit]


def _thumbnails(paths: Sequence[str], image_root: Path | None, side: int) -> tuple[list[bytes | None], float | None]:
    """A JPEG thumbnail of each training image (the centred square), ``None`` where it cannot be read
    or its DICOM header says text is burned into its pixels (a name, perhaps: a report shows none of
    it), and the share of the images read that are greyscale (``None``: none could be read)."""
    from tqdm.auto import tqdm

    from cbm.data import read_image

    out: list[bytes | None] = []
    failed = grey = 0
    for p in tqdm(paths, desc="reference thumbnails", unit="image", leave=False):
        path = Path(p) if Path(p).is_absolute() or image_root is None else image_root / p
        try:
            image = read_image(path)
            burned = bool(image.meta.get("burned_in_annotation"))
            out.append(None if burned else _jpeg(display_pixels(image.pixels, side, square=True), quality=70))
            grey += greyscale(image.pixels)
        except Exception:  # noqa: BLE001 - an unreadable training image only loses its thumbnail
            failed += 1
            out.append(None)
    if failed:
        log.warning("reference: %d of %d training images could not be read for thumbnails", failed, len(paths))
    return out, (grey / (len(paths) - failed) if len(paths) > failed else None)


def build_reference(
    model: Any,
    splits: Mapping[str, Any],
    *,
    image_root: str | os.PathLike | None = None,
    thumbnails: bool = True,
    thumbnail_side: int = THUMBNAIL_SIDE,
    max_images: int = MAX_REFERENCE_IMAGES,
    val_pass_rate: float = VAL_PASS_RATE,
    n_bootstrap: int = 1000,
    seed: int = 0,
    proba: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TrainingReference:
    """The reference of a fitted model from its encoded splits (``cbm.pipeline.SplitData``).

    Args:
        model: the fitted ``ConceptBottleneckModel`` (its classes; its probabilities for the
            operating point unless ``proba`` is given).
        splits: split name -> encoded split; ``train`` is required, ``val`` sets the threshold,
            ``test_id`` and ``test`` give the operating point.
        image_root: where the splits' relative paths lie (thumbnails are read from there).
        thumbnails: read the training images for thumbnails and their greyscale share (``False``:
            neighbours are shown by class and similarity only, and the share is not known).
        thumbnail_side: thumbnail size in pixels.
        max_images: most training images kept (the out-of-distribution score is fitted on all).
        val_pass_rate: share of the validation images the threshold lets through.
        n_bootstrap: resamples for the operating point's intervals.
        seed: seed of the subsample and the bootstrap.
        proba: features -> class probabilities (default ``model.predict_proba_from_features``).
    """
    train = splits["train"]
    keep = _sample_rows(np.asarray(train.labels), max_images, seed)
    every = np.asarray(train.features, np.float32)
    every = every / np.maximum(np.linalg.norm(every, axis=1, keepdims=True), 1e-12)
    features = every[keep]
    classes = list(model.classes)
    thumbs, grey = None, None
    if thumbnails:
        root = None if image_root is None else Path(image_root)
        thumbs, grey = _thumbnails([train.paths[i] for i in keep], root, thumbnail_side)
    mean, precision = _shrunk_gaussian(every)
    # a neighbour is named by its row among the manifest's train rows, not among the images read
    # (an unreadable image skipped before it would shift every later row onto another image)
    indices = getattr(train, "indices", None)
    rows = keep if indices is None else np.asarray(indices, np.int64)[keep]
    ref = TrainingReference(features, np.asarray(train.labels)[keep], classes, rows=rows, thumbnails=thumbs,
                            ood_mean=mean, ood_precision=precision)
    facts: dict[str, Any] = {"n_train": len(train.labels), "n_reference": len(keep),
                             "ood_score": "Mahalanobis (Ledoit-Wolf)", "val_pass_rate_target": val_pass_rate,
                             "thumbnail_side": thumbnail_side if thumbnails else None, "greyscale_share": grey}
    val = splits.get("val")
    if val is not None and len(val.labels):
        ref.val_scores = np.sort(ref.ood_scores(np.asarray(val.features, np.float32)))
        ref.threshold = float(np.quantile(ref.val_scores, val_pass_rate, method="higher"))
        facts["val_pass_rate"] = float(np.mean(ref.val_scores <= ref.threshold))
        facts["n_val"] = len(val.labels)
        if (len(val.labels) - 1) * (1 - val_pass_rate) < 1:  # the quantile is the largest validation score
            log.warning("reference: the out-of-distribution threshold rests on %d validation images, too few to set a "
                        "%.1f %% pass rate (it is their largest score): new in-domain images may be withheld more "
                        "often; a val split of %d or more sets it", len(val.labels), 100 * val_pass_rate,
                        int(np.ceil(1 / (1 - val_pass_rate) - 1e-9)) + 1)
    from cbm.evaluate import operating_point

    predict = proba or model.predict_proba_from_features
    performance = {}
    for name in ("test_id", "test"):
        split = splits.get(name)
        if split is None or not len(split.labels):
            continue
        feats = np.asarray(split.features, np.float32)
        figures = operating_point(split.labels, predict(feats), classes, n_bootstrap=n_bootstrap, seed=seed)
        if ref.threshold is not None:
            figures["answered"] = float(np.mean(ref.ood_scores(feats) <= ref.threshold))
        performance[name] = figures
    facts["performance"] = performance
    ref.facts = facts
    log.info("training reference: %d images%s; out-of-distribution threshold %s", len(ref),
             " with thumbnails" if thumbs is not None else "",
             "not set (no val split)" if ref.threshold is None else f"{ref.threshold:.4f}")
    return ref
