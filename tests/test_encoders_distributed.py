"""Sharded extraction under torchrun: 2 CPU processes (gloo) give exactly the single-process features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from cbm.data import load_card
from cbm.encoders import create_encoder, distributed, encode_images
from cbm.encoders.testing import write_image_card, write_tiny_config


def test_two_ranks_split_the_shards_and_rank_zero_merges(tmp_path):
    card_dir = write_image_card(tmp_path / "card", 50, unreadable=[12])
    name = f"{write_tiny_config(tmp_path)}@random"
    cache = tmp_path / "cache"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "cbm.cli", "features", str(card_dir), "--encoder", name, "--cache-dir", str(cache),
        "--shard-size", "10", "--workers", "0", "--batch-size", "8", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "rank 0 of 2 (gloo)" in log and "rank 1 of 2 (gloo)" in log
    assert "encoded 30 images" in log and "encoded 20 images" in log  # shards 0, 2, 4 and 1, 3
    assert log.count("train: 49 images -> 64-d features, 1 skipped") == 1  # rank 0 reports

    enc = create_encoder(name)
    ds = load_card(card_dir).dataset("train", transform=enc.transform)
    merged = encode_images(enc, ds, cache_dir=cache, shard_size=10, num_workers=0, progress=False)
    assert merged.computed == 0  # everything came from the shards the two ranks wrote
    manifest = json.loads((merged.cache_path / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 5
    single = encode_images(enc, ds, cache=False, num_workers=0, progress=False)
    assert np.array_equal(merged.indices, single.indices)
    assert np.allclose(merged.features, single.features, atol=1e-6)
    assert [s.index for s in merged.skipped] == [12]


def _torchrun(tmp_path, script: str, args: list[str], timeout: int = 150) -> tuple[int, str]:
    """Run ``script`` (which ends by calling cbm's CLI) as 2 CPU ranks; (exit status, stderr). Every
    process is killed if they are still running after ``timeout`` seconds."""
    path = tmp_path / "rank_script.py"
    path.write_text(script, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(path), *args]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, so no rank is left waiting
        proc.communicate()
        raise AssertionError(f"the ranks were still waiting for each other after {timeout} s") from None
    return proc.returncode, err


_FAIL_ON_RANK_ONE = """
import os, sys
import cbm.encoders.registry
if os.environ.get("RANK") == "1":  # this node cannot read the weights, say
    def create_encoder(*args, **kwargs):
        raise FileNotFoundError("weights missing on rank 1's node")
    cbm.encoders.registry.create_encoder = create_encoder
from cbm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_rank_failing_before_the_extraction_stops_the_job_instead_of_hanging(tmp_path):
    # rank 1 fails while rank 0 waits in the first collective; a barrier on rank 1's way out did not
    # match rank 0's broadcast, and both waited for the process group's two-hour timeout
    card_dir = write_image_card(tmp_path / "card", 6)
    args = ["features", str(card_dir), "--encoder", f"{write_tiny_config(tmp_path)}@random",
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-progress"]  # fmt: skip
    status, err = _torchrun(tmp_path, _FAIL_ON_RANK_ONE, args)
    assert status != 0
    assert "cbm features: error: weights missing on rank 1's node" in err


_A_CACHE_PER_RANK = """
import os, sys
os.environ["CBM_CACHE_DIR"] = os.path.join(os.environ["CACHES"], "node" + os.environ["RANK"])  # each node's own disk
from cbm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_cache_the_ranks_do_not_share_is_named_before_any_work(tmp_path, monkeypatch):
    # each rank wrote its shards to its own disk, and rank 0's merge failed at the end with a bare
    # "No such file or directory" for the first shard of another rank
    card_dir = write_image_card(tmp_path / "card", 8)
    monkeypatch.setenv("CACHES", str(tmp_path))
    args = ["features", str(card_dir), "--encoder", f"{write_tiny_config(tmp_path)}@random", "--shard-size", "2",
            "--workers", "0", "--no-progress"]  # fmt: skip
    status, err = _torchrun(tmp_path, _A_CACHE_PER_RANK, args)
    assert status != 0
    assert "the feature cache is not shared by the ranks: rank 1 (" in err and "CBM_CACHE_DIR or --cache-dir" in err
    assert str(tmp_path / "node0" / "features") in err
    assert not list((tmp_path / "node1").rglob("shard-*")) and not list((tmp_path / "node0").rglob("shard-*"))


def test_more_ranks_on_a_node_than_it_has_gpus_is_said_so(monkeypatch):
    # torch.cuda.set_device(LOCAL_RANK) answered only "CUDA error: invalid device ordinal"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: (_ for _ in ()).throw(RuntimeError("CUDA error: invalid device ordinal")))
    with pytest.raises(RuntimeError, match=r"local rank 1, but this machine has 1 GPU.*--nproc-per-node 1.*CUDA_VISIBLE_DEVICES="):
        distributed.init_from_env()
