"""Seeded, bounded fuzzing of saved model folders: a damaged model.json or model.safetensors either
loads into a model that predicts finite probabilities, or raises ModelFormatError naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cbm.errors import ModelFormatError
from cbm.model import ConceptBottleneckModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from fuzz_models import make_model
    finally:
        sys.path.pop(0)
    return make_model(tmp_path_factory.mktemp("model"))


def test_mutated_model_folders_load_or_fail_clearly():
    """scripts/fuzz_models.py on 80 mutants (the campaign runs 300): no unclear error, nothing accepted wrongly."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_models.py"), "--n", "80", "--seed", "1"],
                       capture_output=True, text=True, timeout=300)
    result = json.loads(r.stdout)
    assert r.returncode == 0 and result["bad_examples"] == [], result
    refused = sum(c.get("clear_error", 0) for c in result["counts"].values())
    assert refused > 25  # the mutations do break things, and are caught


def test_specific_damage_is_named(saved, tmp_path):
    tensors = load_file(str(saved / "model.safetensors"))
    (tmp_path / "model.json").write_text((saved / "model.json").read_text())
    save_file({**tensors, "score_std": torch.zeros_like(tensors["score_std"])}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"tensor score_std.*zero or negative standard deviation"):
        ConceptBottleneckModel.load(tmp_path)
    save_file({**tensors, "score_mean": tensors["score_mean"][:2]}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFormatError, match=r"tensor score_mean has shape \(2,\).*\(4,\) was expected"):
        ConceptBottleneckModel.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFormatError, match="cannot be read as safetensors"):
        ConceptBottleneckModel.load(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    meta = json.loads((saved / "model.json").read_text())
    for field, value, message in (("version", None, "version has the bad value None"),
                                  ("classes", ["a", "a"], "classes repeats"),
                                  ("encoder", 3, "encoder has the bad value 3"),
                                  # info's parts a report reads: an edit gets their name, not an AttributeError later
                                  ("info", {**meta["info"], "head": "x"}, r"info\.head has the bad value 'x': an object"),
                                  ("info", {**meta["info"], "card": "demo"}, r"info\.card has the bad value"),
                                  ("info", {**meta["info"], "levels_from_truth": [1]}, r"info\.levels_from_truth lists")):
        (tmp_path / "model.json").write_text(json.dumps({**meta, field: value}))
        with pytest.raises(ModelFormatError, match=message):
            ConceptBottleneckModel.load(tmp_path)


def _copy_with(saved: Path, folder: Path, tensors: dict, meta: dict | None = None) -> Path:
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(meta) if meta is not None else (saved / "model.json").read_text())
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "cbm.ConceptBottleneckModel", "version": "4"})
    return folder


def test_a_tensor_changed_after_saving_is_refused(saved, tmp_path):
    """Weights of the right shape but not the ones saved (edited, or the model.safetensors of another
    save beside this model.json) would predict with the wrong concept names: refused, naming the file."""
    tensors = load_file(str(saved / "model.safetensors"))
    folder = _copy_with(saved, tmp_path / "m", {**tensors, "coef": tensors["coef"] * 2})
    with pytest.raises(ModelFormatError, match=r"model\.safetensors.*not the weights model\.json was saved with"):
        ConceptBottleneckModel.load(folder)


def test_bfloat16_tensors_load_or_fail_clearly(saved, tmp_path):
    """A bfloat16 tensor (cast by another tool) in a model without a weights digest is no TypeError."""
    tensors = load_file(str(saved / "model.safetensors"))
    meta = {k: v for k, v in json.loads((saved / "model.json").read_text()).items() if k != "weights_sha256"}
    folder = _copy_with(saved, tmp_path / "m", {name: t.to(torch.bfloat16) for name, t in tensors.items()}, meta)
    model = ConceptBottleneckModel.load(folder)
    proba = model.predict_proba_from_features(torch.randn(3, tensors["concept_embeddings"].shape[1]))
    assert proba.shape == (3, 2) and np.isfinite(proba).all()


def test_names_edited_in_model_json_are_refused(saved, tmp_path):
    """A concept renamed in model.json (the weights unchanged) would explain its weight under another
    name: the weights' metadata holds the names they were saved with, and the load compares them."""
    meta = json.loads((saved / "model.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    renamed = [meta["concepts"][1], meta["concepts"][0], *meta["concepts"][2:]]  # two names swapped
    (folder / "model.json").write_text(json.dumps({**meta, "concepts": renamed}))
    with pytest.raises(ModelFormatError, match=r"model\.json: concepts are not the concepts model\.safetensors "
                                                r"was saved with \(.* where the weights were saved with"):
        ConceptBottleneckModel.load(folder)
    (folder / "model.json").write_text(json.dumps({**meta, "classes": meta["classes"][::-1]}))
    with pytest.raises(ModelFormatError, match=r"classes are not the classes model"):
        ConceptBottleneckModel.load(folder)
    (folder / "model.json").write_text(json.dumps(meta))
    assert ConceptBottleneckModel.load(folder).bottleneck.concept_names == meta["concepts"]


def test_a_model_from_another_pixel_pipeline_loads_with_a_warning(saved, tmp_path, caplog):
    """A model records how its training images were read; where this cbm reads them otherwise (a
    16-bit PNG stretched min-max where it was divided by 65535) its concept scores may shift: said on load."""
    from cbm.data import PIXEL_PIPELINE_VERSION

    meta = json.loads((saved / "model.json").read_text())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    for recorded, warned in ((PIXEL_PIPELINE_VERSION, False), (PIXEL_PIPELINE_VERSION - 1, True)):
        (folder / "model.json").write_text(json.dumps({**meta, "info": {**meta["info"], "pixel_pipeline": recorded}}))
        caplog.clear()
        with caplog.at_level("WARNING", logger="cbm.model_format"):
            ConceptBottleneckModel.load(folder)
        assert ("trained on images read by cbm's pixel pipeline" in caplog.text) is warned
