"""Seeded mutation fuzzing of saved model folders (``ConceptBottleneckModel.load``), JSON outcome counts.

    python scripts/fuzz_models.py                       # the campaign: 300 mutated model folders
    python scripts/fuzz_models.py --n 60 --seed 1       # what the tests run

A small valid model is saved, then each input mutates one of its files: ``model.json`` (fields
removed, set to edge values or wrong types, list items and nested fields replaced, bytes that are
not JSON or not UTF-8) or ``model.safetensors`` (tensors removed, cut short, given NaN or
infinite values, zeroed, cast to integers, negated; files truncated, a header length that lies,
flipped bytes). Each load ends in one outcome:

- ``accepted``: a model that predicts finite probabilities summing to one, with distinct classes
  and concepts;
- ``accepted_but_wrong``: a model that loads but breaks that;
- ``clear_error``: ``ModelFormatError`` (or ``FileNotFoundError``) naming a file of the folder, one
  line of at most 600 characters;
- ``unclear_error``: any other exception, or a message that does not name the file.

Exit status 1 when any bad outcome occurred.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_VALUES = [None, 0, -1, 1e308, float("nan"), "", "x" * 300, [], {}, [None], ["a", "a"], True, {"a": 1}, "demo-clip"]


def make_model(folder: Path) -> Path:
    """A small valid model with every optional part (prior, levels, nuisance basis, training scores)."""
    from cbm.bottleneck import ConceptBottleneck
    from cbm.model import ConceptBottleneckModel

    rng = np.random.default_rng(0)
    names = ["irregular border", "dots", "streaks", "blue-grey areas"]
    bn = ConceptBottleneck.debiased(names, rng.normal(size=(4, 16)), nuisance_embeddings=rng.normal(size=(1, 16)),
                                    nuisance_prompts=["ruler"])
    bn.fit(rng.normal(size=(50, 16)))
    model = ConceptBottleneckModel("demo-clip", ["nevus", "melanoma"], bn, rng.normal(size=(2, 4)), np.zeros(2),
                                   train_raw_scores=bn.raw_scores(rng.normal(size=(50, 16))),
                                   concept_prior=np.array([[1, 0, 0, 0], [0, 1, 1, 1]]),
                                   concept_levels=np.array([[-1.0] * 4, [1.0] * 4]), info={"card": {"name": "toy"}})
    return model.save(folder)


def mutate_json(meta: dict, rng: random.Random) -> dict:
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


def mutate_tensors(tensors: dict[str, torch.Tensor], rng: random.Random) -> dict[str, torch.Tensor]:
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


def damage_bytes(raw: bytes, rng: random.Random, kind: int) -> bytes:
    data = bytearray(raw)
    if kind == 0:
        return bytes(data[: rng.randrange(1, len(data))])
    if kind == 1:
        data[:8] = struct.pack("<Q", rng.choice([0, 2**40, len(data) * 2]))
        return bytes(data)
    for _ in range(8):
        data[rng.randrange(8, len(data))] ^= 0xFF
    return bytes(data)


def outcome(folder: Path) -> tuple[str, str]:
    """``(outcome, detail)`` of loading ``folder`` (see the module docstring)."""
    from cbm.errors import ModelFormatError
    from cbm.model import ConceptBottleneckModel

    try:
        model = ConceptBottleneckModel.load(folder)
    except (ModelFormatError, FileNotFoundError) as err:
        text = str(err)
        named = folder.name in text and ("model.json" in text or "model.safetensors" in text)
        ok = named and "\n" not in text and len(text) <= 600
        return ("clear_error" if ok else "unclear_error"), text[:300]
    except Exception as err:  # noqa: BLE001 - the campaign counts what it did not expect
        return "unclear_error", f"{type(err).__name__}: {str(err)[:300]}"
    proba = model.predict_proba_from_features(np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32))
    good = (proba.shape == (3, len(model.classes)) and np.all(np.isfinite(proba)) and np.allclose(proba.sum(1), 1, atol=1e-5)
            and len(set(model.classes)) == len(model.classes)
            and len(set(model.bottleneck.concept_names)) == model.bottleneck.n_concepts)
    return ("accepted" if good else "accepted_but_wrong"), ""


def campaign(n: int, seed: int, examples: int = 3) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_model(Path(tmp) / "valid")
        meta = json.loads((base / "model.json").read_text())
        tensors = load_file(str(base / "model.safetensors"))
        raw = (base / "model.safetensors").read_bytes()
        counts: dict[str, Counter] = {"model.json": Counter(), "model.safetensors": Counter()}
        bad: list[dict] = []
        for i in range(n):
            folder = Path(tmp) / f"m{i:04d}"
            folder.mkdir()
            target = "model.json" if i % 2 == 0 else "model.safetensors"
            (folder / "model.json").write_text(json.dumps(meta))
            (folder / "model.safetensors").write_bytes(raw)
            if target == "model.json":
                if i % 10 == 8:
                    (folder / "model.json").write_bytes(rng.choice([b"\xff\xfe{", b"{" * 5000, b'{"format": ', b"[]"]))
                else:
                    (folder / "model.json").write_text(json.dumps(mutate_json(meta, rng)))
            elif i % 4 == 3:
                (folder / "model.safetensors").write_bytes(damage_bytes(raw, rng, i % 3))
            else:
                save_file(mutate_tensors(tensors, rng), str(folder / "model.safetensors"))
            result, detail = outcome(folder)
            counts[target][result] += 1
            if result in ("unclear_error", "accepted_but_wrong") and len(bad) < examples:
                bad.append({"input": i, "file": target, "outcome": result, "detail": detail})
    return {"n": n, "seed": seed, "counts": {k: dict(v) for k, v in counts.items()}, "bad_examples": bad}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", type=int, default=3)
    args = p.parse_args(argv)
    result = campaign(args.n, args.seed, args.examples)
    print(json.dumps(result, indent=2))
    return 1 if result["bad_examples"] else 0


if __name__ == "__main__":
    sys.exit(main())
