"""The shipped ``demo-clip``: a plain open_clip config, small weights, a training record, and
zero-shot scores that follow the ground truth of freshly drawn demo images."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from cbm.demo.corpus import EVAL_STREAM, corpus_scene
from cbm.demo.encoder import CONFIG_PATH, RECORD_PATH, WEIGHTS_PATH, load_demo_clip
from cbm.demo.evaluation import concept_auroc, embed_images, embed_texts, held_out_batch


# Floors for the shipped weights on 160 held-out images (the README has their figures on 1,000:
# mean 0.95, lowest 0.79).
MEAN_AUROC = 0.88
MIN_AUROC = 0.7
RULER_AUROC = 0.9


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score))


@pytest.fixture(scope="module")
def demo_clip():
    return load_demo_clip()


def test_assets_are_a_plain_open_clip_config_small_weights_and_a_record():
    config = json.loads(CONFIG_PATH.read_text())
    assert set(config) == {"embed_dim", "vision_cfg", "text_cfg"}
    assert WEIGHTS_PATH.stat().st_size <= 25 * 2**20
    record = json.loads(RECORD_PATH.read_text())
    for key in ("seed", "steps", "final_loss", "corpus_hash", "wall_time_s", "machine", "weights_sha256"):
        assert key in record, key
    assert record["final_loss"] < record["first_loss"]
    from cbm.utils import sha256_file

    assert sha256_file(WEIGHTS_PATH) == record["weights_sha256"]


def test_loads_offline_with_open_clip_preprocessing(demo_clip):
    model, tokenizer, preprocess = demo_clip
    size = json.loads(CONFIG_PATH.read_text())["vision_cfg"]["image_size"]
    assert preprocess["size"] in (size, (size, size)) and preprocess["interpolation"] == "bicubic"
    with torch.inference_mode():
        text = model.encode_text(tokenizer(["irregular border", "regular border"]), normalize=True)
        image = model.encode_image(torch.zeros(2, 3, size, size), normalize=True)
    assert text.shape == image.shape == (2, model.text_projection.shape[1])
    assert torch.isfinite(text).all() and torch.isfinite(image).all()


@pytest.fixture(scope="module")
def held_out(demo_clip):
    """Scenes and features of 160 held-out demo images, resized as the data layer does."""
    model = demo_clip[0]
    scenes = [corpus_scene(i, seed=0, stream=EVAL_STREAM) for i in range(2000, 2160)]
    size = json.loads(CONFIG_PATH.read_text())["vision_cfg"]["image_size"]
    return scenes, embed_images(model, held_out_batch(scenes, size))


def test_zero_shot_concept_scores_follow_the_ground_truth(demo_clip, held_out):
    model, tokenizer, _ = demo_clip
    scenes, feats = held_out
    result = concept_auroc(model, tokenizer, feats, scenes)
    aurocs = {k: v["auroc"] for k, v in result.items()}
    assert np.mean(list(aurocs.values())) > MEAN_AUROC, aurocs
    assert min(aurocs.values()) > MIN_AUROC, aurocs
    # colours are named, not counted: on average a colour's prompt beats the number of colours alone
    # by far, and none falls clearly below it (white areas about ties with it: 0.892 vs 0.895)
    colours = ("tan pigment", "dark brown pigment", "black pigment", "red areas", "blue-grey areas", "white areas")
    margins = [result[k]["auroc"] - result[k]["count_auroc"] for k in colours]
    assert np.mean(margins) > 0.05 and min(margins) > -0.01, dict(zip(colours, margins))


def test_the_cue_is_plainly_visible_to_the_encoder(demo_clip, held_out):
    model, tokenizer, _ = demo_clip
    scenes, feats = held_out
    t = embed_texts(model, tokenizer, ["ruler", "violet ink marks"])
    assert _auroc(np.array([s.cue == "ruler" for s in scenes]), feats @ t[0]) > RULER_AUROC
    assert _auroc(np.array([s.cue == "ink" for s in scenes]), feats @ t[1]) > 0.9


def test_pretraining_keeps_the_best_checkpoint_on_the_selection_images(tmp_path, monkeypatch):
    """A tiny run of the pretraining script: it scores checkpoints on the selection stream, saves
    the best one, and records every score; the saved weights score what the record says."""
    import importlib.util
    from pathlib import Path

    from cbm.demo.corpus import SELECT_STREAM
    from cbm.demo.evaluation import embed_images, held_out_batch, selection_score, zero_shot

    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_demo_clip.py"
    spec = importlib.util.spec_from_file_location("pretrain_demo_clip", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pretrain_demo_clip", module)  # the corpus workers import it by name
    spec.loader.exec_module(module)
    out = tmp_path / "clip"
    argv = ["--corpus", "300", "--steps", "5", "--batch", "16", "--select-every", "2", "--select-n", "60",
            "--warmup", "2", "--workers", "1", "--threads", "1", "--out", str(out),
            "--short-fraction", "0.4", "--short-lr", "1e-3", "--short-warmup", "1"]
    assert module.main(argv) == 0
    record = json.loads((out / "demo-clip.training.json").read_text())
    assert record["short_captions"] == {"last_fraction": 0.4, "max_statements": 2, "lr": 1e-3, "warmup_steps": 1}
    selection = record["selection"]
    assert [h["step"] for h in selection["history"]] == [2, 4, 5]
    best = max(selection["history"], key=lambda h: h["score"])
    assert selection["kept_step"] == best["step"] and selection["stream"] == SELECT_STREAM

    import open_clip
    from safetensors.torch import load_file

    model = open_clip.model.CLIP(**json.loads((out / "demo-clip.json").read_text()))
    model.load_state_dict({k: v.float() for k, v in load_file(str(out / "demo-clip.safetensors")).items()})
    model.eval()
    scenes = [corpus_scene(i, 0, stream=SELECT_STREAM) for i in range(60)]
    feats = embed_images(model, held_out_batch(scenes, 64))
    result = zero_shot(model, open_clip.get_tokenizer("RN50", context_length=64), feats, scenes)
    # the score pays the maps' shortfall below the pointing floor; the weights are an fp16 copy
    pointing_shortfall = max(0.0, module.POINTING_FLOOR - (best["pointing_mean"] or 0.0))
    assert best["pointing_mean"] is not None and 0.0 <= best["pointing_mean"] <= 1.0
    assert abs(selection_score(result) - pointing_shortfall - best["score"]) < 0.05


def test_true_caption_positives_point_each_way(monkeypatch):
    """clip_loss with ``same[i, j]`` (caption i is true of image j): a text's right answers are the
    images it is true of, an image's the captions true of it (not the other way round); with only
    the pairs themselves it is CLIP's loss."""
    import importlib.util
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_demo_clip.py"
    spec = importlib.util.spec_from_file_location("pretrain_demo_clip", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pretrain_demo_clip", module)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    img, txt, scale = F.normalize(torch.randn(2, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1), torch.tensor(7.0)
    plain = module.clip_loss(img, txt, scale)
    assert torch.isclose(module.clip_loss(img, txt, scale, torch.eye(2, dtype=torch.bool)), plain)
    same = torch.tensor([[True, True], [False, True]])  # caption 0 fits both images, caption 1 only image 1
    to_text = F.log_softmax(scale * img @ txt.t(), dim=1)  # 2 images x 3 captions (the third a hard negative)
    to_image = F.log_softmax(scale * txt[:2] @ img.t(), dim=1)
    expected_i = -(to_text[0, 0] + (to_text[1, 0] + to_text[1, 1]) / 2) / 2
    expected_t = -((to_image[0, 0] + to_image[0, 1]) / 2 + to_image[1, 1]) / 2
    assert torch.isclose(module.clip_loss(img, txt, scale, same), (expected_i + expected_t) / 2)
