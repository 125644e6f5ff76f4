"""cbm fetch-models, offline: a fake hub serves a BiomedCLIP-shaped model; the fetched folder loads with
no hub at all; BiomedCLIP's real architecture builds from its shipped config and a local BERT config."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from cbm.encoders import create_encoder, fetch_model
from cbm.encoders import fetch as fetch_module
from cbm.encoders import registry

pytest.importorskip("transformers")

BIOMEDCLIP_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
TEXT_REPO = "fake-org/tiny-pubmedbert"
WORDS = "a an the of with showing irregular border dots lesion skin photo image blue white veil".split()


def write_bert_dir(folder: Path, **config) -> Path:
    """A BERT config.json plus tokenizer files (vocab.txt, tokenizer.json, tokenizer_config.json)."""
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    BertConfig(**config).save_pretrained(str(folder))
    return folder


def small_biomedclip_cfg(text_tower: str) -> dict:
    """BiomedCLIP's architecture family (timm ViT + BERT with MLP projection, CLS pooling), shrunk."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"hf_model_name": text_tower, "hf_tokenizer_name": text_tower, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }  # fmt: skip


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A folder laid out like the hub: <root>/<org>/<repo>/<file>, with trained-looking weights."""
    root = tmp_path_factory.mktemp("hub")
    text = write_bert_dir(root / TEXT_REPO, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    # build the model once against the local text tower, to get weights for the hub repo
    scratch = tmp_path_factory.mktemp("scratch")
    (scratch / "open_clip_config.json").write_text(json.dumps({"model_cfg": small_biomedclip_cfg(str(text))}))
    model = create_encoder(f"local-dir:{scratch}@random").model
    repo = root / BIOMEDCLIP_REPO
    repo.mkdir(parents=True)
    state = {k: (v + 0.01 * torch.randn_like(v)).contiguous() for k, v in model.state_dict().items()}
    torch.save(state, repo / "open_clip_pytorch_model.bin")
    config = {"model_cfg": small_biomedclip_cfg(TEXT_REPO), "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
              "std": [0.26862954, 0.26130258, 0.27577711]}}  # fmt: skip
    (repo / "open_clip_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture
def online(hub, monkeypatch):
    """Route the hub client to the fake hub."""

    def download(repo_id, filename):
        path = hub / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(f"404: {repo_id}/{filename}")
        return str(path)

    def snapshot(repo_id, local_dir, allow_patterns):
        local_dir.mkdir(parents=True, exist_ok=True)
        for name in allow_patterns:
            if (hub / repo_id / name).is_file():
                shutil.copyfile(hub / repo_id / name, local_dir / name)
        return local_dir

    monkeypatch.setattr(registry, "hub_download", download)
    monkeypatch.setattr(fetch_module, "hub_snapshot", snapshot)


def go_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(registry, "hub_download", refuse)
    monkeypatch.setattr(fetch_module, "hub_snapshot", refuse)


def test_fetched_biomedclip_loads_with_no_network(hub, online, tmp_path, monkeypatch):
    dest = fetch_model("biomedclip", tmp_path / "biomedclip")
    assert sorted(p.name for p in dest.iterdir()) == ["open_clip_config.json", "open_clip_pytorch_model.bin", "text-tower"]
    assert {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (dest / "text-tower").iterdir()}
    config = json.loads((dest / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == "text-tower"
    assert config["cbm"]["text_tower_ids"] == {"hf_model_name": TEXT_REPO, "hf_tokenizer_name": TEXT_REPO}

    go_offline(monkeypatch)
    with pytest.raises(RuntimeError, match="preset 'biomedclip'.*cbm fetch-models biomedclip --to DIR.*local-dir:DIR"):
        create_encoder("biomedclip")
    moved = shutil.copytree(dest, tmp_path / "copied-to-the-hospital")  # relative text tower paths travel
    enc = create_encoder(f"local-dir:{moved}")
    assert type(enc.model).__name__ == "CustomTextCLIP" and enc.embed_dim == 32
    assert enc.encode_text(["irregular border", "blue white veil"]).shape == (2, 32)
    assert enc.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 32)
    hub_weights = hub / BIOMEDCLIP_REPO / "open_clip_pytorch_model.bin"
    loaded = enc.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in torch.load(hub_weights, weights_only=True).items())
    # the same cache key as the hub original: same weights, and the text tower counts as its hub id
    assert enc.info["weights"] == "sha256:" + hashlib.sha256(hub_weights.read_bytes()).hexdigest()
    assert enc.info["architecture"] == json.loads((hub / BIOMEDCLIP_REPO / "open_clip_config.json").read_text())["model_cfg"]


def test_fetch_refuses_a_full_folder_and_needs_a_place_for_non_presets(hub, online, tmp_path):
    dest = fetch_model("biomedclip", tmp_path / "m")
    with pytest.raises(ValueError, match="not empty.*overwrite"):
        fetch_model("biomedclip", dest)
    assert fetch_model("biomedclip", dest, overwrite=True) == dest
    with pytest.raises(ValueError, match="say where to put"):
        fetch_model(f"hf-hub:{BIOMEDCLIP_REPO}")


def test_fetch_without_network_says_what_failed(tmp_path, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(RuntimeError, match="download failed.*ConnectionError"):
        fetch_model("biomedclip", tmp_path / "m")
    assert not (tmp_path / "m" / "open_clip_config.json").exists()


def test_fetch_models_cli_prints_the_name_to_use(hub, online, tmp_path, capsys):
    from cbm.cli import main

    assert main(["fetch-models", "biomedclip", "--to", str(tmp_path / "bm")]) == 0
    assert f"local-dir:{tmp_path / 'bm'}" in capsys.readouterr().out
    assert main(["fetch-models", "biomedclip", "--to", str(tmp_path / "bm")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_biomedclip_architecture_builds_offline_from_its_shipped_config(tmp_path):
    shipped = json.loads((Path(registry.__file__).parent / "configs" / "biomedclip.json").read_text())
    text = shipped["model_cfg"]["text_cfg"]
    assert text["hf_model_name"].startswith("microsoft/BiomedNLP") and text["context_length"] == 256
    text["hf_model_name"] = text["hf_tokenizer_name"] = "text-tower"
    write_bert_dir(tmp_path / "text-tower")  # BertConfig() defaults = BERT-base: vocab 30522, hidden 768, 12 layers
    (tmp_path / "open_clip_config.json").write_text(json.dumps(shipped))
    enc = create_encoder(f"local-dir:{tmp_path}@random")
    assert type(enc.model).__name__ == "CustomTextCLIP"
    assert 190e6 < sum(p.numel() for p in enc.model.parameters()) < 200e6  # 195.9M, as BiomedCLIP
    assert enc.embed_dim == 512 and enc.transform.config["size"] == 224
    assert enc.tokenizer(["irregular border"]).shape == (1, 256)
    assert enc.encode_text(["irregular border"]).shape == (1, 512)
    assert enc.encode_image(torch.randn(1, 3, 224, 224)).shape == (1, 512)


def test_a_fetched_preset_files_its_features_with_the_preset(tmp_path):
    # demo-clip ships with the package, so this fetch needs no network; the folder name is the user's
    dest = fetch_model("demo-clip", tmp_path / "derm-model")
    local, preset = create_encoder(f"local-dir:{dest}"), create_encoder("demo-clip")
    assert local.name != preset.name and local.cache_key == preset.cache_key


def test_a_fetch_that_fails_half_way_leaves_nothing_a_rerun_must_overwrite(hub, online, tmp_path, monkeypatch):
    # the text tower's download failed after the folder was made: the next fetch was refused, "not empty"
    def dropped(repo_id, local_dir, allow_patterns):
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "config.json").write_text("{")  # a part of the files, then the connection drops
        raise ConnectionError("connection reset")

    monkeypatch.setattr(fetch_module, "hub_snapshot", dropped)
    for dest in (tmp_path / "new", tmp_path / "made-by-the-user"):
        (tmp_path / "made-by-the-user").mkdir(exist_ok=True)
        with pytest.raises(RuntimeError, match="could not download the text tower files.*connection reset"):
            fetch_model("biomedclip", dest)
        assert not dest.exists() or not any(dest.iterdir())
    assert (tmp_path / "made-by-the-user").is_dir()  # the user's own folder stays, empty as it was


def test_a_preset_whose_fetched_weights_fail_their_check_can_be_fetched_again(tmp_path, monkeypatch):
    # the refusal says to fetch again with --overwrite; that fetch read the preset from the same refused folder
    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    dest = fetch_model("demo-clip")
    assert dest == registry.fetched_dir("demo-clip")
    weights = dest / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")
    with pytest.raises(ValueError, match=r"is not the file .* records .*`cbm fetch-models demo-clip --to .* --overwrite`"):
        create_encoder("demo-clip")
    assert fetch_model("demo-clip", dest, overwrite=True) == dest
    assert create_encoder("demo-clip").cache_key == create_encoder(f"local-dir:{dest}").cache_key


def test_a_fetch_of_a_fetched_folder_still_files_its_features_with_the_preset(tmp_path):
    # the copy's features were filed under the first folder's name, no longer shared with the preset
    first = fetch_model("demo-clip", tmp_path / "first")
    second = fetch_model(f"local-dir:{first}", tmp_path / "second")
    assert create_encoder(f"local-dir:{second}").cache_key == create_encoder("demo-clip").cache_key


def test_an_overwrite_that_fails_half_way_leaves_the_model_there_loadable(hub, online, tmp_path, monkeypatch):
    # --overwrite removed the old config before the download: a dropped connection left no model at all
    dest = fetch_model("biomedclip", tmp_path / "biomedclip")
    (dest / "notes.txt").write_text("ours")
    before = create_encoder(f"local-dir:{dest}").cache_key

    def dropped(repo_id, local_dir, allow_patterns):
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "config.json").write_text("{")
        raise ConnectionError("connection reset")

    working = fetch_module.hub_snapshot
    monkeypatch.setattr(fetch_module, "hub_snapshot", dropped)
    with pytest.raises(RuntimeError, match="connection reset"):
        fetch_model("biomedclip", dest, overwrite=True)
    assert create_encoder(f"local-dir:{dest}").cache_key == before
    assert (dest / "notes.txt").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biomedclip"]  # no staging folder left beside it
    monkeypatch.setattr(fetch_module, "hub_snapshot", working)  # the connection is back
    assert fetch_model("biomedclip", dest, overwrite=True) == dest
    assert create_encoder(f"local-dir:{dest}").cache_key == before and (dest / "notes.txt").is_file()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second file system (/dev/shm)")
def test_a_fetch_into_a_link_to_another_disk_is_moved_in(tmp_path):
    """A model folder that is a link to a bigger disk (models -> /mnt/big/models): the fetch was staged
    beside the link and its move into the folder failed with "Invalid cross-device link" after every
    download, leaving nothing."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        if Path(other).stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same file system here")
        (tmp_path / "model").symlink_to(other, target_is_directory=True)
        dest = fetch_model("demo-clip", tmp_path / "model")
        assert (Path(other) / "open_clip_config.json").is_file()
        assert create_encoder(f"local-dir:{dest}").cache_key == create_encoder("demo-clip").cache_key
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and not [
            p for p in Path(other).iterdir() if ".fetching-" in p.name]


def test_a_fetch_killed_outright_leaves_a_folder_the_next_fetch_names(tmp_path, caplog):
    # a SIGKILL skips the clean-up: its hidden staging folder (the weights, gigabytes for a real model) stayed unsaid
    left = tmp_path / ".derm-model.fetching-abc123"
    left.mkdir()
    (left / "open_clip_model.safetensors").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="cbm.encoders.fetch"):
        fetch_model("demo-clip", tmp_path / "derm-model")
    assert ".derm-model.fetching-abc123" in caplog.text and "delete them" in caplog.text
    assert left.is_dir()  # another fetch may be running: named, not removed
