"""Concept maps: where in the image the encoder sees each concept.

Three methods, chosen from the encoder's vision tower:

* ``patch-tokens`` (ViT towers: open_clip's ``VisionTransformer`` and timm ViTs such as
  BiomedCLIP's): the final patch tokens go through the same projection as the pooled token, into
  the joint image-text space, and each token's cosine with the concept's text embedding is one
  cell of the map. The pooled image feature comes out of the same forward pass, so a case costs
  one forward whatever the number of maps.
* ``cam`` (timm convolutional towers with average pooling and a linear projection, such as
  ``demo-clip``'s ``local_global_cnn`` or timm's ``test_resnet``): the class activation map of
  Zhou et al. 2016. The image embedding is the projection of the mean of the last activation's
  cells, which equals the mean of the projected cells, so each cell's projected feature is its
  exact share of the embedding; a cell of the map is that share's dot product with the concept,
  divided by the embedding's norm: the cell's share of the image's cosine with the concept (the
  map's mean is the cosine). A cell's own cosine would not do: a cell with little of its own
  (plain skin) is mostly what every cell shares, and its cosine is the whole image's.
* ``grad-cam`` (every other tower: ResNets, ConvNeXts, attention-pooled ViTs): Grad-CAM
  (Selvaraju et al. 2017) on the last spatial activation of the tower, with the image-concept
  cosine as the target; one backward pass per concept.

Maps are ``(h, w)`` grids over the encoder's input crop, row 0 at the top; :func:`normalise_maps`
scales each to [0, 1] for display (so a map shows *where* a concept is most similar in this image,
not *how present* it is: that is the concept score).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["SpatialEncoding", "ConceptMaps", "encode_spatial", "normalise_maps"]

log = logging.getLogger(__name__)

# open_clip's VisionTransformer returns its patch tokens only while ``output_tokens`` is set; the
# flag lives on the shared module, so concurrent requests (cbm serve) take turns flipping it.
_TOKENS_LOCK = threading.Lock()


@dataclass
class ConceptMaps:
    """Concept maps of one image.

    Attributes:
        concepts: concept names, one per map.
        raw: ``(k, h, w)`` float32: patch-token cosines (``patch-tokens``) or Grad-CAM values
            (``grad-cam``), row 0 = top of the encoder's input crop.
        method: ``"patch-tokens"`` or ``"grad-cam"``.
    """

    concepts: list[str]
    raw: np.ndarray
    method: str

    @property
    def maps(self) -> np.ndarray:
        """The maps scaled to [0, 1] each, for display."""
        return normalise_maps(self.raw)

    def __getitem__(self, concept: str) -> np.ndarray:
        return self.maps[self.concepts.index(concept)]


def normalise_maps(raw: np.ndarray) -> np.ndarray:
    """Scale each ``(h, w)`` map of a ``(k, h, w)`` stack to [0, 1]; a flat map becomes all zeros."""
    raw = np.asarray(raw, np.float32)
    lo = raw.min(axis=(1, 2), keepdims=True)
    span = raw.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (raw - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


class SpatialEncoding:
    """An image's feature vector plus what is needed to map concepts onto it.

    Made by :func:`encode_spatial`. ``feature`` is the L2-normalised image embedding, equal to the
    encoder's ``encode_image`` output for the same input.
    """

    method: str = ""

    def __init__(self, feature: np.ndarray, grid: tuple[int, int]) -> None:
        self.feature = feature
        self.grid = grid

    def concept_maps(self, names: list[str], embeddings: np.ndarray) -> ConceptMaps:
        """Maps for the given concepts from their ``(k, D)`` text embeddings."""
        emb = torch.as_tensor(np.asarray(embeddings, np.float32)).reshape(len(names), -1)
        if len(names) == 0:
            return ConceptMaps([], np.zeros((0, *self.grid), np.float32), self.method)
        return ConceptMaps(list(names), self._raw_maps(F.normalize(emb, dim=-1)), self.method)

    def _raw_maps(self, emb: torch.Tensor) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class _TokenEncoding(SpatialEncoding):
    """Projected, normalised patch tokens ``(h*w, D)``; a map is one matrix product."""

    method = "patch-tokens"

    def __init__(self, feature: np.ndarray, tokens: torch.Tensor, grid: tuple[int, int]) -> None:
        super().__init__(feature, grid)
        self.tokens = F.normalize(tokens.float(), dim=-1)

    def _raw_maps(self, emb: torch.Tensor) -> np.ndarray:
        sims = emb.to(self.tokens.dtype) @ self.tokens.T  # (k, h*w)
        return sims.reshape(len(emb), *self.grid).numpy()


class _CamEncoding(_TokenEncoding):
    """Projected cells of an average-pooled CNN's last activation (see ``cam``), divided by the
    embedding's norm instead of each its own: a cell of a map is that cell's share of the image's
    cosine with the concept, so the map's mean is the cosine. Maps as for patch tokens."""

    method = "cam"

    def __init__(self, feature: np.ndarray, cells: torch.Tensor, pooled: torch.Tensor, grid: tuple[int, int]) -> None:
        SpatialEncoding.__init__(self, feature, grid)  # not _TokenEncoding's: the cells keep their own norms
        self.tokens = cells.float() / pooled.float().norm().clamp_min(1e-12)


class _GradCamEncoding(SpatialEncoding):
    """The tower's last spatial activation, kept with its autograd graph for one backward per concept."""

    method = "grad-cam"

    def __init__(self, feature: np.ndarray, pooled: torch.Tensor, activation: torch.Tensor) -> None:
        super().__init__(feature, tuple(activation.shape[-2:]))
        self.pooled = F.normalize(pooled.float(), dim=-1)[0]  # (D,), still in the graph
        self.activation = activation  # (1, C, h, w)

    def _raw_maps(self, emb: torch.Tensor) -> np.ndarray:
        out = []
        with torch.enable_grad():
            for e in emb:
                target = self.pooled @ e.to(self.pooled)
                (grad,) = torch.autograd.grad(target, self.activation, retain_graph=True)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                cam = torch.relu((weights * self.activation).sum(1))[0]
                out.append(cam.detach().float().cpu().numpy())
        return np.stack(out)


def _vision_tower(encoder: Any) -> torch.nn.Module | None:
    model = getattr(encoder, "model", None)
    return getattr(model, "visual", None)


def _openclip_vit_ok(visual: torch.nn.Module) -> bool:
    from open_clip.transformer import VisionTransformer

    return (
        isinstance(visual, VisionTransformer)
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) in ("tok", "avg")
    )


def _timm_vit(visual: torch.nn.Module) -> torch.nn.Module | None:
    trunk = getattr(visual, "trunk", None)
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:  # pragma: no cover - timm comes with open_clip
        return None
    if isinstance(trunk, TimmViT) and trunk.attn_pool is None and trunk.global_pool in ("token", "avg"):
        return trunk
    return None


def _timm_cam_tower(visual: torch.nn.Module) -> torch.nn.Module | None:
    """The timm trunk of an open_clip ``TimmModel`` whose embedding is a linear map of the mean of the
    trunk's last activation (average pooling, a bias-free linear head), else None."""
    trunk, head = getattr(visual, "trunk", None), getattr(visual, "head", None)
    pool = getattr(trunk, "global_pool", None)
    if trunk is None or head is None or getattr(pool, "pool_type", None) != "avg" or _timm_vit(visual) is not None:
        return None
    layers = [m for m in head.children() if not isinstance(m, torch.nn.Dropout)]
    if len(layers) != 1 or not isinstance(layers[0], torch.nn.Linear) or layers[0].bias is not None:
        return None
    return trunk


def _cam_cells(visual: torch.nn.Module, trunk: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    activation = trunk.forward_features(x)  # (1, C, h, w)
    pooled = visual.head(trunk.forward_head(activation, pre_logits=True))
    h, w = activation.shape[-2:]
    cells = visual.head(activation[0].flatten(1).t())  # (h*w, D): each cell's share of the embedding
    return pooled, cells, (int(h), int(w))


def _input(visual: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    p = next(visual.parameters())
    x = image if image.dim() == 4 else image.unsqueeze(0)
    if x.shape[0] != 1:
        raise ValueError(f"encode_spatial takes one image, got a batch of {x.shape[0]}")
    return x.to(p.device, p.dtype)


def _openclip_tokens(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    with _TOKENS_LOCK:
        saved = visual.output_tokens
        visual.output_tokens = True
        try:
            pooled, tokens = visual(x)
        finally:
            visual.output_tokens = saved
    if getattr(visual, "final_ln_after_pool", False):
        tokens = visual.ln_post(tokens)  # the pooled token was normalised after pooling; do the same per patch
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return pooled, tokens[0], tuple(visual.grid_size)


def _timm_tokens(visual: torch.nn.Module, trunk: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    feats = trunk.forward_features(x)
    pooled = visual.head(trunk.forward_head(feats, pre_logits=True))
    tokens = visual.head(trunk.fc_norm(feats[:, trunk.num_prefix_tokens :]))
    grid = tuple(trunk.patch_embed.grid_size) if trunk.patch_embed.grid_size else tuple(
        s // p for s, p in zip(x.shape[-2:], trunk.patch_embed.patch_size)
    )
    return pooled, tokens[0], grid


def _last_spatial_activation(visual: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the tower once with gradients; return (pooled output, last 4-D activation with h, w > 1)."""
    found: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            found[:] = [out]

    handles = [m.register_forward_hook(hook) for m in visual.modules() if m is not visual]
    try:
        with torch.enable_grad():
            # the input requires grad so the graph exists even when the tower's weights are frozen
            pooled = visual(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    if not found:
        raise RuntimeError(
            f"no spatial activation found in vision tower {type(visual).__name__}: Grad-CAM needs a "
            "layer with an (N, C, h, w) output; run without concept maps (--no-maps)"
        )
    if isinstance(pooled, tuple):
        pooled = pooled[0]
    return pooled, found[0]


def encode_spatial(encoder: Any, image: torch.Tensor, *, method: str = "auto") -> SpatialEncoding:
    """Embed one preprocessed image ``(3, S, S)`` and keep what concept maps need.

    Args:
        encoder: a ``cbm.encoders`` Encoder (its ``.model`` is the open_clip model).
        image: the encoder's preprocessed input, ``encoder.transform(loaded_image)``.
        method: ``"auto"`` (patch tokens for ViT towers, CAM for average-pooled timm CNNs, Grad-CAM
            otherwise), ``"patch-tokens"``, ``"cam"`` or ``"grad-cam"``.

    Raises:
        ValueError: unknown ``method``, or ``"patch-tokens"`` for a tower without usable patch tokens.
        RuntimeError: the encoder exposes no open_clip vision tower (``encoder.model.visual``).
    """
    if method not in ("auto", "patch-tokens", "cam", "grad-cam"):
        raise ValueError(f"unknown concept-map method {method!r}; use 'auto', 'patch-tokens', 'cam' or 'grad-cam'")
    visual = _vision_tower(encoder)
    if visual is None:
        raise RuntimeError(
            f"encoder {getattr(encoder, 'name', type(encoder).__name__)!r} exposes no open_clip vision tower "
            "(encoder.model.visual), so concept maps cannot be computed; run without maps (--no-maps)"
        )
    x = _input(visual, image)
    # the encoder's own autocast (bf16/fp16 on CUDA), so the feature matches its encode_image
    autocast = getattr(encoder, "autocast", None)
    precision = autocast() if callable(autocast) else contextlib.nullcontext()
    trunk = _timm_vit(visual)
    tokens_ok = _openclip_vit_ok(visual) or trunk is not None
    if method == "patch-tokens" and not tokens_ok:
        raise ValueError(
            f"vision tower {type(visual).__name__} has no patch tokens in the joint space "
            "(not a ViT, or attention-pooled); use method='grad-cam' or 'auto'"
        )
    log.debug("concept maps for vision tower %s: %s", type(visual).__name__,
              "patch-tokens" if tokens_ok and method != "grad-cam" else "grad-cam")
    cam_trunk = _timm_cam_tower(visual)
    if method == "cam" and cam_trunk is None:
        raise ValueError(
            f"vision tower {type(visual).__name__} is not an average-pooled CNN with a linear projection; "
            "use method='grad-cam' or 'auto'"
        )
    if cam_trunk is not None and method in ("auto", "cam"):
        with torch.inference_mode(), precision:
            pooled, cells, grid = _cam_cells(visual, cam_trunk, x)
            feature = F.normalize(pooled.float(), dim=-1)[0].cpu().numpy()
            return _CamEncoding(feature, cells.cpu(), pooled[0].cpu(), grid)
    if tokens_ok and method != "grad-cam":
        with torch.inference_mode(), precision:
            pooled, tokens, grid = _timm_tokens(visual, trunk, x) if trunk is not None else _openclip_tokens(visual, x)
            feature = F.normalize(pooled.float(), dim=-1)[0].cpu().numpy()
            return _TokenEncoding(feature, tokens.cpu(), grid)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Grad-CAM concept maps need gradients: call encode_spatial outside torch.inference_mode()")
    with precision:
        pooled, activation = _last_spatial_activation(visual, x)
    feature = F.normalize(pooled.detach().float(), dim=-1)[0].cpu().numpy()
    return _GradCamEncoding(feature, pooled, activation)
