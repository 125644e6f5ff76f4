"""Seeded, bounded fuzzing of saved model folders: a damaged model.json or model.safetensors either
loads into a model that predicts finite probabilities, or raises ModelFormatError naming the file."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cbm.bottleneck import ConceptBottleneck
from cbm.errors import ModelFormatError
from cbm.model import ConceptBottleneckModel

N_MUTANTS = 120  # per file kind; the whole test takes a few seconds


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    names = ["irregular border", "dots", "streaks", "blue-grey areas"]
    bn = ConceptBottleneck.debiased(names, rng.normal(size=(4, 16)), nuisance_embeddings=rng.normal(size=(1, 16)),
                                    nuisance_prompts=["ruler"])
    bn.fit(rng.normal(size=(50, 16)))
    model = ConceptBottleneckModel("demo-clip", ["nevus", "melanoma"], bn, rng.normal(size=(2, 4)), np.zeros(2),
                                   train_raw_scores=bn.raw_scores(rng.normal(size=(50, 16))),
                                   concept_prior=np.array([[1, 0, 0, 0], [0, 1, 1, 1]]),
                                   concept_levels=np.array([[-1.0] * 4, [1.0] * 4]), info={"card": {"name": "toy"}})
    folder = tmp_path_factory.mktemp("model")
    model.save(folder)
    return folder


def _check(folder) -> str:
    """'accepted' (and valid) or 'refused' (ModelFormatError naming a file of the folder)."""
    try:
        model = ConceptBottleneckModel.load(folder)
    except ModelFormatError as err:
        assert err.path is not None and err.path.parent == folder and err.path.name in str(err), str(err)
        assert "Traceback" not in str(err) and len(str(err)) < 600
        return "refused"
    proba = model.predict_proba_from_features(np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32))
    assert proba.shape == (3, 2) and np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert len(set(model.classes)) == len(model.classes) and len(set(model.bottleneck.concept_names)) == model.bottleneck.n_concepts
    return "accepted"


_VALUES = [None, 0, -1, 1e308, float("nan"), "", "x" * 300, [], {}, [None], ["a", "a"], True, {"a": 1}, "demo-clip"]


def _mutate_json(meta: dict, rng: random.Random) -> dict:
    meta = json.loads(json.dumps(meta))
    key = rng.choice(sorted(meta))
    action = rng.random()
    if action < 0.3:
        del meta[key]
    elif action < 0.8:
        meta[key] = rng.choice(_VALUES)
    elif isinstance(meta[key], list) and meta[key]:
        meta[key][rng.randrange(len(meta[key]))] = rng.choice(_VALUES)
    elif isinstance(meta[key], dict) and meta[key]:
        meta[key][rng.choice(sorted(meta[key]))] = rng.choice(_VALUES)
    return meta


def test_mutated_model_json(saved, tmp_path):
    rng = random.Random(0)
    meta = json.loads((saved / "model.json").read_text())
    outcomes = []
    for i in range(N_MUTANTS):
        folder = tmp_path / f"m{i}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
        if i % 10 == 9:  # bytes that are no JSON, or not UTF-8
            (folder / "model.json").write_bytes(rng.choice([b"\xff\xfe{", b"{" * 5000, b'{"format": ', b"[]"]))
        else:
            (folder / "model.json").write_text(json.dumps(_mutate_json(meta, rng)))
        outcomes.append(_check(folder))
    assert outcomes.count("refused") > N_MUTANTS // 3  # the mutations do break things, and are caught


def _mutate_tensors(tensors: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
    tensors = {k: v.clone() for k, v in tensors.items()}
    key = rng.choice(sorted(tensors))
    action = rng.random()
    if action < 0.2:
        del tensors[key]
    elif action < 0.4:
        tensors[key] = tensors[key].flatten()[:-1] if tensors[key].numel() > 1 else torch.zeros(3)
    elif action < 0.6:
        flat = tensors[key].flatten()
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        tensors[key] = flat.reshape(tensors[key].shape)
    elif action < 0.7:
        tensors[key] = torch.zeros_like(tensors[key])
    elif action < 0.8:
        tensors[key] = tensors[key].to(torch.int32)
    else:
        tensors[key] = -tensors[key]
    return tensors


def test_mutated_model_safetensors(saved, tmp_path):
    rng = random.Random(1)
    tensors = load_file(str(saved / "model.safetensors"))
    raw = (saved / "model.safetensors").read_bytes()
    outcomes = []
    for i in range(N_MUTANTS):
        folder = tmp_path / f"t{i}"
        folder.mkdir()
        (folder / "model.json").write_text((saved / "model.json").read_text())
        if i % 4 == 3:  # damaged bytes: a truncated file, a wrong header length, flipped bytes
            data = bytearray(raw)
            kind = i % 3
            if kind == 0:
                data = data[: rng.randrange(1, len(data))]
            elif kind == 1:
                data[:8] = struct.pack("<Q", rng.choice([0, 2**40, len(data) * 2]))
            else:
                for _ in range(8):
                    data[rng.randrange(8, len(data))] ^= 0xFF
            (folder / "model.safetensors").write_bytes(bytes(data))
        else:
            save_file(_mutate_tensors(tensors, rng), str(folder / "model.safetensors"))
        outcomes.append(_check(folder))
    assert outcomes.count("refused") > N_MUTANTS // 3


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
                                  ("encoder", 3, "encoder has the bad value 3")):
        (tmp_path / "model.json").write_text(json.dumps({**meta, field: value}))
        with pytest.raises(ModelFormatError, match=message):
            ConceptBottleneckModel.load(tmp_path)
