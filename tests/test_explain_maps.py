"""Concept maps (cbm.explain.maps) and how they are shown (cbm.explain.overlay: one hue, a contour, the grid stated)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from explain_support import make_image, tiny_encoder

from cbm.explain import encode_spatial, heat_overlay
from cbm.explain.maps import normalise_maps


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("configs")
    archs = ("cbmtest-vit", "cbmtest-timmvit", "cbmtest-timmvit-avg", "cbmtest-timmvit-map", "cbmtest-rn")
    return {arch: tiny_encoder(arch, folder) for arch in archs}


@pytest.mark.parametrize("arch, method", [
    ("cbmtest-vit", "patch-tokens"),
    ("cbmtest-timmvit", "patch-tokens"),
    ("cbmtest-timmvit-avg", "patch-tokens"),
    ("cbmtest-timmvit-map", "grad-cam"),  # attention-pooled: tokens are not in the joint space
    ("cbmtest-rn", "grad-cam"),
])
def test_feature_from_the_maps_pass_equals_encode_image(encoders, arch, method):
    enc = encoders[arch]
    x = enc.transform(make_image(7, (enc.transform.config["size"], enc.transform.config["size"] + 10)))
    spatial = encode_spatial(enc, x)
    assert spatial.method == method
    assert np.allclose(spatial.feature, enc.encode_image(x[None])[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("arch, cell", [("cbmtest-vit", (1, 3)), ("cbmtest-timmvit", (3, 8)), ("cbmtest-timmvit-avg", (6, 2))])
def test_token_map_is_laid_out_row_by_row(encoders, arch, cell):
    """A concept equal to one patch's projected token peaks at exactly that patch (not its transpose)."""
    enc = encoders[arch]
    spatial = encode_spatial(enc, enc.transform(make_image(8, (enc.transform.config["size"],) * 2)))
    h, w = spatial.grid
    target = spatial.tokens[cell[0] * w + cell[1]].numpy()
    maps = spatial.concept_maps(["that patch"], target[None])
    assert maps.raw.shape == (1, h, w)
    assert np.unravel_index(maps.raw[0].argmax(), (h, w)) == cell
    assert maps.raw[0][cell] == pytest.approx(1.0, abs=1e-5)  # cosine with itself


def test_grad_cam_follows_the_sign_of_the_concept(encoders):
    """Grad-CAM of e and of -e have opposite gradients, so after the ReLU their supports do not overlap."""
    enc = encoders["cbmtest-rn"]
    spatial = encode_spatial(enc, enc.transform(make_image(9, (128, 128))))
    e = F.normalize(torch.randn(1, 32, generator=torch.Generator().manual_seed(3)), dim=-1).numpy()
    maps = spatial.concept_maps(["c", "not c"], np.concatenate([e, -e]))
    a, b = maps.raw
    assert maps.raw.shape == (2, *spatial.grid) and spatial.grid == (2, 2)  # 64 px / 32
    assert (a >= 0).all() and (b >= 0).all() and (a.max() > 0 or b.max() > 0)
    assert not np.any((a > 0) & (b > 0))
    # asking twice gives the same maps (the graph is kept for the case's lifetime)
    assert np.array_equal(spatial.concept_maps(["c"], e).raw[0], a)


def test_method_choice_and_errors(encoders):
    vit, rn = encoders["cbmtest-vit"], encoders["cbmtest-rn"]
    x = vit.transform(make_image(10, (64, 64)))
    forced = encode_spatial(vit, x, method="grad-cam")
    assert forced.method == "grad-cam" and forced.grid == (4, 4)  # the patch embedding is the last spatial layer
    with pytest.raises(ValueError, match="grad-cam"):
        encode_spatial(rn, x, method="patch-tokens")
    with pytest.raises(ValueError, match="unknown concept-map method"):
        encode_spatial(vit, x, method="attention")

    class NoTower:
        name = "api-only"

    with pytest.raises(RuntimeError, match="no-maps"):
        encode_spatial(NoTower(), x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        encode_spatial(rn, x)


def test_normalise_maps_scales_each_map_and_zeroes_flat_ones():
    raw = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), 0.3)])
    out = normalise_maps(raw)
    assert out[0].min() == 0 and out[0].max() == 1 and out[0][1, 1] == 1
    assert np.all(out[1] == 0)


def test_overlay_is_one_hue_with_a_contour_where_the_map_says():
    from cbm.explain.overlay import OVERLAY_RGB

    image = np.full((60, 100, 3), 128, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[1, 3] = 1.0
    crop = (20, 0, 60)  # centred 60 px square of a 100 px wide image
    out = heat_overlay(image, heat, crop)
    assert out.shape == image.shape and out.dtype == np.uint8
    change = np.abs(out.astype(int) - image).sum(-1)
    y, x = np.unravel_index(change[:, 20:80].argmax(), (60, 60))
    assert (y // 15, x // 15) == (1, 3)
    # every changed pixel inside the crop moved towards the one hue: green up, red and blue down
    moved = change[:, 20:80] > 0
    region = out[:, 20:80].astype(int)
    assert np.all(region[moved][:, 1] >= 128) and np.all(region[moved][:, 0] <= 128) and np.all(region[moved][:, 2] <= 128)
    # the contour at half the map's range is drawn in the hue itself
    assert np.any(np.all(region == OVERLAY_RGB, axis=-1))
    assert np.all(out[:, :20] == 64) and np.all(out[:, 80:] == 64)  # outside the crop: dimmed to half
    assert np.all(out[50:, 20:35] == 128)  # cold cells leave the image as it was
    # a box past the image's edges (an input padded to a square): the part inside is drawn, where it lies
    padded = heat_overlay(image, heat, (0, -20, 100, 100))
    change = np.abs(padded.astype(int) - image).sum(-1)
    y, x = np.unravel_index(change.argmax(), change.shape)
    assert (int((y + 20) // 25), int(x // 25)) == (1, 3) and np.all(padded[55:, :20] == 128)


def test_grid_statement():
    from cbm.explain.overlay import grid_statement

    text = "The model sees this image on a grid of 2 x 2 cells, too coarse to localise a finding, so no maps are drawn."
    assert grid_statement((2, 2)) == (False, text)
    drawn, text = grid_statement((8, 8))
    assert drawn and "8 x 8 grid" in text and "1/8 of its width" in text
    assert grid_statement(None)[0] is False
    # Grad-CAM's layer is the tower's last spatial one, not always the finest grid the model sees
    assert grid_statement((2, 2), "grad-cam")[1].startswith("Grad-CAM reads the model's last spatial layer, a grid of 2 x 2")


def _tiny_clip(tower: str):
    """An encoder-like object around a randomly initialised CLIP with one of cbm's towers."""
    from types import SimpleNamespace

    from open_clip.model import CLIP

    from cbm.encoders.towers import register_towers

    register_towers()
    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg={"image_size": 64, "timm_model_name": tower, "timm_pool": "avg",
                                           "timm_proj": "linear", "timm_model_pretrained": False},
                 text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}).eval()
    return SimpleNamespace(model=model, name=tower)


def test_cam_cells_of_an_average_pooled_cnn_are_exact_shares_of_the_embedding():
    """resnet_tiny_os8 (an average-pooled CNN): an 8 x 8 grid at 64 px, and the mean of the projected
    cells is the image embedding itself (before normalisation), so a cell's map is its own share of
    the image's cosine with the concept."""
    from cbm.explain.maps import _cam_cells, _timm_cam_tower

    Enc = _tiny_clip("resnet_tiny_os8")
    model = Enc.model
    x = torch.randn(3, 64, 64)
    enc = encode_spatial(Enc, x)
    assert enc.method == "cam" and enc.grid == (8, 8)
    with torch.no_grad():
        pooled, cells, grid = _cam_cells(model.visual, _timm_cam_tower(model.visual), x[None])
        np.testing.assert_allclose(cells.mean(0).numpy(), pooled[0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(enc.feature, F.normalize(model.encode_image(x[None]), dim=-1)[0].numpy(), atol=1e-5)
    # a map is each cell's share of the image's cosine with the concept: its mean is the cosine
    direction = F.normalize(torch.randn(1, 32), dim=-1)
    maps = enc.concept_maps(["random"], direction.numpy())
    np.testing.assert_allclose(maps.raw[0].mean(), float(direction[0] @ torch.as_tensor(enc.feature)), rtol=1e-4, atol=1e-6)
    # along the most unusual cell's own deviation from the mean, that cell peaks (Cauchy-Schwarz)
    deviation = cells - cells.mean(0)
    far = int(deviation.norm(dim=1).argmax())
    assert int(enc.concept_maps(["far"], deviation[far].numpy()[None]).raw[0].argmax()) == far
    with pytest.raises(ValueError, match="grad-cam"):
        encode_spatial(Enc, x, method="patch-tokens")


def test_the_hybrid_demo_tower_maps_its_8_by_8_tokens():
    """resnet_tiny_os8_vit (a hybrid ViT): the CNN's 8 x 8 cells are transformer tokens, and a
    concept map is each projected token's cosine with the concept (patch-tokens), from one forward pass."""
    Enc = _tiny_clip("resnet_tiny_os8_vit")
    model = Enc.model
    x = torch.randn(3, 64, 64)
    enc = encode_spatial(Enc, x)
    assert enc.method == "patch-tokens" and enc.grid == (8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(enc.feature, F.normalize(model.encode_image(x[None]), dim=-1)[0].numpy(), atol=1e-5)
    target = enc.tokens[42].numpy()
    assert np.unravel_index(enc.concept_maps(["t"], target[None]).raw[0].argmax(), (8, 8)) == (5, 2)


def test_the_local_global_tower_maps_cells_that_see_only_their_neighbourhood():
    """local_global_cnn (demo-clip's tower): CAM on 8 x 8 cells whose mean is the embedding; a
    change in one corner moves only the cells within the local branch's 27 px receptive field
    (plus the global vector, the same for every cell); in training the global vector is dropped
    for some images and never at inference."""
    from cbm.explain.maps import _cam_cells, _timm_cam_tower

    Enc = _tiny_clip("local_global_cnn")
    model = Enc.model
    x = torch.randn(3, 64, 64)
    enc = encode_spatial(Enc, x)
    assert enc.method == "cam" and enc.grid == (8, 8)
    trunk = _timm_cam_tower(model.visual)
    with torch.no_grad():
        pooled, cells, _ = _cam_cells(model.visual, trunk, x[None])
        np.testing.assert_allclose(cells.mean(0).numpy(), pooled[0].numpy(), rtol=1e-4, atol=1e-5)
        local = trunk.local(x[None])
        y = x.clone()
        y[:, :8, :8] += 3.0  # the top-left 8 x 8 px
        moved = (trunk.local(y[None]) - local).abs().amax(1)[0] > 1e-6
    # a cell at (r, c) sees pixels [8r - 9, 8r + 17]: only cells 0-1 in each direction reach the corner
    assert moved[:2, :2].all() and not moved[3:, :].any() and not moved[:, 3:].any()
    trunk.train()
    torch.manual_seed(0)
    with torch.no_grad():
        features = trunk.forward_features(x[None].repeat(64, 1, 1, 1))
    dropped = torch.isclose(features, trunk.local(x[None]), atol=1e-4).flatten(1).all(1)
    assert 10 < int(dropped.sum()) < 54  # about half the images lose the global vector
    trunk.eval()
    with pytest.raises(ValueError, match="no classifier"):
        trunk.reset_classifier(3)
