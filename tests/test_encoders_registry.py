"""cbm.encoders registry: names, presets, local folders, devices and precisions, the encoder's own preprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cbm.encoders import create_encoder, list_encoders, resolve_encoder
from cbm.encoders.registry import PRESETS
from cbm.encoders.testing import TINY_CONFIG, write_tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config path, random-init encoder name, a checkpoint of different weights)."""
    folder = tmp_path_factory.mktemp("tiny")
    config = write_tiny_config(folder)
    enc = create_encoder(f"{config}@random")
    state = {k: (v + 0.01 * torch.randn_like(v)).contiguous() for k, v in enc.model.state_dict().items()}
    save_file(state, str(folder / "weights.safetensors"))
    return config, f"{config}@random", folder / "weights.safetensors"


def _images(n=4, size=64, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_resolves_or_says_how_to_get_it(preset):
    try:
        spec = resolve_encoder(preset)
    except RuntimeError as exc:  # hub presets, offline and not fetched
        assert "fetch-models" in str(exc) and "local-dir:" in str(exc)
    except FileNotFoundError as exc:  # demo-clip before its weights are trained
        assert "pretrain_demo_clip.py" in str(exc)
    else:
        assert spec.name == preset
        assert spec.weights is not None and spec.weights.is_file()


def test_list_encoders_names_the_presets():
    assert {"biomedclip", "clip-vit-b-16", "demo-clip"} <= set(list_encoders())


def test_plugins_register_once_before_any_thread_reads_the_presets(monkeypatch):
    """The first two threads to ask (two predictions at once on a freshly loaded model) both see every
    plugin's preset: the second saw a registry without them ("Unknown encoder 'demo-clip'. Did you
    mean 'demo-clip'?"), since the first marked the plugins loaded before they had registered."""
    import importlib.metadata
    import threading
    import time
    from types import SimpleNamespace

    from cbm.encoders import registry

    calls = []

    def slow_plugin():
        calls.append(1)
        time.sleep(0.3)
        registry.register_encoder("slow-plugin-enc", "ViT-B-32@openai", "a plugin that takes its time", replace=True)
        assert "slow-plugin-enc" in registry.list_encoders()  # a plugin that asks while registering is answered

    ep = SimpleNamespace(name="slow", value="tests:slow_plugin", load=lambda: slow_plugin)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [ep])
    monkeypatch.setattr(registry, "_plugins_state", "unloaded")
    monkeypatch.delitem(PRESETS, "slow-plugin-enc", raising=False)
    seen: list[list[str]] = []
    threads = [threading.Thread(target=lambda: seen.append(list_encoders())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 3 and all("slow-plugin-enc" in names for names in seen) and calls == [1]
    PRESETS.pop("slow-plugin-enc", None)


def test_unknown_name_lists_presets_and_suggests_the_closest():
    with pytest.raises(ValueError) as err:
        create_encoder("biomedclp")
    msg = str(err.value)
    assert "Did you mean 'biomedclip'?" in msg
    assert "demo-clip" in msg and "hf-hub:" in msg and "ARCH@WEIGHTS" in msg


def test_architecture_without_weights_is_answered_with_the_forms_that_work():
    with pytest.raises(ValueError, match=r"ViT-B-16@openai.*ViT-B-16@random"):
        create_encoder("ViT-B-16")
    with pytest.raises(ValueError, match="not a checkpoint file, 'random', or an open_clip pretrained tag"):
        create_encoder("ViT-B-16@no-such-tag")
    with pytest.raises(ValueError, match="Did you mean 'ViT-B-16'"):
        create_encoder("ViT-B-61@random")
    # a preset with weights, and a folder without its prefix, get what to write instead
    with pytest.raises(ValueError, match="the preset 'demo-clip' brings its weights and takes no @WEIGHTS"):
        create_encoder("demo-clip@random")


def test_a_folder_given_without_its_prefix_is_told_the_prefix(tmp_path):
    with pytest.raises(ValueError, match=f"is a folder: give it as local-dir:{tmp_path}"):
        create_encoder(str(tmp_path))


def test_random_init_is_reproducible_so_processes_agree(tiny):
    _, name, _ = tiny
    a, b = create_encoder(name), create_encoder(name)
    assert a.cache_key == b.cache_key
    x = _images()
    assert torch.equal(a.encode_image(x), b.encode_image(x))


def test_features_are_unit_norm_float32_on_cpu(tiny):
    _, name, _ = tiny
    enc = create_encoder(name)
    img, txt = enc.encode_image(_images(3)), enc.encode_text(["dots", "streaks"])
    for t, n in ((img, 3), (txt, 2)):
        assert t.shape == (n, TINY_CONFIG["embed_dim"]) == (n, enc.embed_dim)
        assert t.dtype == torch.float32 and t.device.type == "cpu"
        assert torch.allclose(t.norm(dim=1), torch.ones(n), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        enc.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode_text("dots")


def test_weights_change_the_features_and_the_cache_key(tiny):
    config, name, weights = tiny
    rand, loaded = create_encoder(name), create_encoder(f"{config}@{weights}")
    assert loaded.cache_key != rand.cache_key
    assert not torch.allclose(loaded.encode_image(_images()), rand.encode_image(_images()))
    assert create_encoder(f"{config}@{weights}").cache_key == loaded.cache_key


def test_encoder_carries_its_preprocessing_from_the_config(tmp_path, tiny):
    _, name, _ = tiny
    default = create_encoder(name)
    assert default.transform.config["size"] == 64
    assert default.transform.config["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    custom = dict(TINY_CONFIG, preprocess_cfg={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"})
    enc = create_encoder(f"{write_tiny_config(tmp_path, 'custom', custom)}@random")
    assert enc.transform.config == {
        "size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "resize_mode": "shortest",
    }  # fmt: skip
    assert enc.cache_key != default.cache_key  # same weights, other preprocessing: other features
    grey = np.full((100, 80), 0.75, dtype=np.float32)
    out = enc.transform(grey)
    assert out.shape == (3, 64, 64)
    assert torch.allclose(out, torch.full_like(out, (0.75 - 0.5) / 0.25), atol=1e-4)


def test_precision_choices(tiny):
    _, name, _ = tiny
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        create_encoder(name, precision="fp16")
    with pytest.raises(ValueError, match="not one of fp32, bf16, fp16"):
        create_encoder(name, precision="int8")
    fp32, bf16 = create_encoder(name), create_encoder(name, precision="bfloat16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    assert bf16.cache_key != fp32.cache_key
    x = _images()
    assert torch.allclose(bf16.encode_image(x), fp32.encode_image(x), atol=0.05)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            create_encoder(name, device="cuda")


def test_demo_clip_preset_loads_through_the_checkpoint_path(tmp_path, monkeypatch, tiny):
    import cbm.demo.encoder as demo

    config, _, weights = tiny
    monkeypatch.setattr(demo, "CONFIG_PATH", config)
    monkeypatch.setattr(demo, "WEIGHTS_PATH", weights)
    enc = create_encoder("demo-clip")
    assert enc.name == "demo-clip" and enc.cache_key.startswith("demo-clip-")
    direct = create_encoder(f"{config}@{weights}")
    assert torch.equal(enc.encode_image(_images()), direct.encode_image(_images()))
    monkeypatch.setattr(demo, "WEIGHTS_PATH", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors.*scripts/pretrain_demo_clip\.py"):
        create_encoder("demo-clip")


def test_local_dir_loads_config_and_weights(tmp_path, tiny):
    config, name, weights = tiny
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}))
    with pytest.raises(FileNotFoundError, match="no weights in .*open_clip_model.safetensors.*fetch-models"):
        create_encoder(f"local-dir:{folder}")
    assert create_encoder(f"local-dir:{folder}@random").cache_key.split("-")[-1] == create_encoder(name).cache_key.split("-")[-1]
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    local, direct = create_encoder(f"local-dir:{folder}"), create_encoder(f"{config}@{weights}")
    assert torch.equal(local.encode_image(_images()), direct.encode_image(_images()))
    assert torch.equal(local.encode_text(["dots"]), direct.encode_text(["dots"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_encoder(f"local-dir:{tmp_path / 'nowhere'}")
    # an @ in a folder or file name is part of the path, not the start of a weights name
    at = shutil.copytree(folder, tmp_path / "model@v2")
    assert torch.equal(create_encoder(f"local-dir:{at}").encode_text(["dots"]), direct.encode_text(["dots"]))
    assert create_encoder(f"local-dir:{at}@random").info == create_encoder(f"local-dir:{folder}@random").info
    # a folder `cbm fetch-models` wrote records its weights' hash: other weights there are refused
    from cbm.encoders.hashing import file_sha256

    recorded = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {},
                "cbm": {"name": "clip-vit-b-16", "weights_sha256": file_sha256(folder / "open_clip_model.safetensors")}}
    (folder / "open_clip_config.json").write_text(json.dumps(recorded))
    create_encoder(f"local-dir:{folder}")
    (folder / "open_clip_model.safetensors").write_bytes((folder / "open_clip_model.safetensors").read_bytes() + b" ")
    with pytest.raises(ValueError, match=r"is not the file .*open_clip_config.json records .*fetch-models clip-vit-b-16 --to"):
        create_encoder(f"local-dir:{folder}")
    assert create_encoder(f"{config}@{at / 'open_clip_model.safetensors'}").info == direct.info
    from cbm.encoders.registry import _split_weights

    assert _split_weights("ViT-B-32@/x/ckpt@v1.pt") == ("ViT-B-32", "@", "/x/ckpt@v1.pt")
    assert _split_weights("hf-hub:org/repo@/x/ckpt@v1.pt") == ("hf-hub:org/repo", "@", "/x/ckpt@v1.pt")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(FileNotFoundError, match="has no open_clip_config.json .*cbm fetch-models NAME --to"):
        create_encoder(f"local-dir:{tmp_path / 'no-config'}")


def test_a_fetched_preset_in_the_cache_is_used_offline(monkeypatch, tmp_path, tiny):
    from cbm.encoders import registry

    _, _, weights = tiny
    folder = tmp_path / "models" / "biomedclip"
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    (folder / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    monkeypatch.setattr(registry, "fetched_dir", lambda preset: tmp_path / "models" / preset)
    spec = resolve_encoder("biomedclip")
    assert spec.name == "biomedclip" and spec.weights == folder / "open_clip_model.safetensors"



def test_a_folder_with_weights_under_another_name_is_told_the_name_to_use(tmp_path, tiny):
    # the message said only to fetch the model again, though the weights were there as model.safetensors
    config, name, weights = tiny
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}))
    shutil.copy(weights, folder / "epoch_32.pt")
    with pytest.raises(FileNotFoundError) as err:
        create_encoder(f"local-dir:{folder}")
    msg = str(err.value)
    assert "it holds epoch_32.pt: rename the weights to open_clip_pytorch_model.bin" in msg
    suggested = msg.rsplit("encoder name: ", 1)[1]
    assert suggested == f"local-dir:{folder}@{folder / 'epoch_32.pt'}"
    direct = create_encoder(f"{config}@{weights}")  # the name suggested loads them (a safetensors file named .pt)
    torch.testing.assert_close(create_encoder(suggested).encode_image(_images()), direct.encode_image(_images()))
