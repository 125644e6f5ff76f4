"""``cbm features``: one line per split, a cached second run, skipped files listed, clear errors."""

from __future__ import annotations

import pytest

from cbm.cli import main
from cbm.encoders.testing import write_image_card, write_tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    card = write_image_card(folder / "card", 12, splits=("train", "val"), unreadable=[3])
    return {"card": str(card), "encoder": f"{write_tiny_config(folder)}@random", "cache": str(folder / "cache")}


def features(setup, *extra):
    return main(["features", setup["card"], "--encoder", setup["encoder"], "--cache-dir", setup["cache"],
                 "--workers", "0", "--no-progress", *extra])  # fmt: skip


def test_features_then_from_the_cache(setup, capsys):
    assert features(setup) == 0
    out = capsys.readouterr().out
    assert "train: 11 images -> 64-d features, 1 skipped; computed 12" in out
    assert "val: 11 images -> 64-d features, 1 skipped; computed 12" in out
    assert "2 of 24 images skipped (ImageReadError 2)" in out and "train/melanoma_00003.png" in out
    assert features(setup, "--split", "val") == 0
    out = capsys.readouterr().out
    assert "val: 11 images -> 64-d features, 1 skipped; all from the cache" in out and "train:" not in out


def test_bad_arguments_are_reported(setup, capsys):
    assert features(setup, "--split", "test") == 2
    assert "no images in split 'test'" in capsys.readouterr().err
    assert main(["features", setup["card"], "--encoder", "biomedclp"]) == 2
    assert "Did you mean 'biomedclip'?" in capsys.readouterr().err
    assert main(["fetch-models", "hf-hub:org/repo"]) == 2
    assert "--to DIR" in capsys.readouterr().err
    assert features(setup, "--shard-size", "0") == 2
    assert "shard_size must be at least 1" in capsys.readouterr().err
    assert features(setup, "--device", "meta") == 2
    assert "cannot run an encoder" in capsys.readouterr().err


def test_ctrl_c_is_a_line_not_a_traceback(setup, capsys, monkeypatch):
    import cbm.encoders.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cbm.encoders.cli, "run_features", interrupted)
    assert features(setup) == 130
    err = capsys.readouterr().err
    assert err.strip() == "cbm features: interrupted; finished cache shards are kept, and a re-run computes only the rest"
