"""cbm.encoders.extract and .cache: cached extraction, resume, verification, faults."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cbm.data import PIXEL_PIPELINE_VERSION, load_card, read_image
from cbm.encoders import create_encoder, encode_images
from cbm.encoders.testing import TINY_CONFIG, write_image_card, write_tiny_config

N, SHARD, BAD = 50, 20, 7  # 50 images in shards of 20 (20, 20, 10); image 7 is not an image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("extract")
    config = write_tiny_config(folder)
    card_dir = write_image_card(folder / "card", N, unreadable=[BAD])
    # the same weights with another normalisation: other features, so another cache
    other = write_tiny_config(folder, "other", {**TINY_CONFIG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    return {"folder": folder, "config": config, "name": f"{config}@random", "other": f"{other}@random", "card_dir": card_dir}


@pytest.fixture
def enc(world):
    return create_encoder(world["name"])


def dataset(world, enc, card_dir=None):
    return load_card(card_dir or world["card_dir"]).dataset("train", transform=enc.transform)


def counting(monkeypatch, enc):
    """Record how many images each encode_image call gets."""
    seen: list[int] = []
    original = enc.encode_image

    def wrapped(images):
        seen.append(len(images))
        return original(images)

    monkeypatch.setattr(enc, "encode_image", wrapped)
    return seen


def run(enc, ds, cache, **kw):
    return encode_images(enc, ds, batch_size=8, num_workers=0, cache_dir=cache, shard_size=SHARD, progress=False, **kw)


def test_features_equal_direct_encoding_and_unreadable_files_are_skipped(world, enc, tmp_path):
    ds = dataset(world, enc)
    fs = run(enc, ds, tmp_path)
    good = [i for i in range(N) if i != BAD]
    assert fs.indices.tolist() == good
    assert fs.features.shape == (N - 1, enc.embed_dim) and fs.features.dtype == np.float32
    direct = enc.encode_image(torch.stack([enc.transform(read_image(ds.file(i))) for i in good])).numpy()
    assert np.allclose(fs.features, direct, atol=1e-5)
    assert [(s.index, s.path) for s in fs.skipped] == [(BAD, ds.rows[BAD].path)]
    assert "ImageReadError" in fs.skipped[0].reason
    assert fs.computed == N and fs.cache_path is not None


def test_second_run_is_served_from_the_cache_without_encoding(world, enc, tmp_path, monkeypatch):
    ds = dataset(world, enc)
    first = run(enc, ds, tmp_path)
    manifest = (first.cache_path / "manifest.json").read_bytes()
    calls = counting(monkeypatch, enc)
    again = run(enc, ds, tmp_path)
    assert calls == [] and again.computed == 0
    assert (first.cache_path / "manifest.json").read_bytes() == manifest  # only read, not rewritten
    assert np.array_equal(again.features, first.features) and np.array_equal(again.indices, first.indices)
    assert [(s.index, s.path, s.reason) for s in again.skipped] == [(s.index, s.path, s.reason) for s in first.skipped]


def test_data_loader_workers_give_the_same_features(world, enc, tmp_path):
    ds = dataset(world, enc)
    single = run(enc, ds, tmp_path / "a")
    workers = encode_images(enc, ds, batch_size=8, num_workers=2, cache_dir=tmp_path / "b", shard_size=SHARD, progress=False)
    assert np.array_equal(workers.indices, single.indices)
    assert np.allclose(workers.features, single.features, atol=1e-6)


def test_manifest_records_the_key_parts_and_content_hashes_but_no_paths(world, enc, tmp_path):
    ds = dataset(world, enc)
    fs = run(enc, ds, tmp_path)
    text = (fs.cache_path / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["complete"] and manifest["encoder"]["cache_key"] == enc.cache_key
    assert manifest["encoder"]["preprocess"] == enc.transform.config and manifest["encoder"]["precision"] == "fp32"
    assert manifest["dataset"]["item_sha256"] == [hashlib.sha256(ds.file(i).read_bytes()).hexdigest() for i in range(N)]
    assert [s["n_items"] for s in manifest["shards"]] == [20, 20, 10]
    assert "nevus_00000" not in text and str(world["card_dir"]) not in text
    assert fs.cache_path.parent.name == enc.cache_key


def test_corrupt_shard_is_reported_and_only_it_is_recomputed(world, enc, tmp_path, monkeypatch, caplog):
    ds = dataset(world, enc)
    first = run(enc, ds, tmp_path)
    shards = sorted(first.cache_path.glob("shard-*.safetensors"))
    data = bytearray(shards[1].read_bytes())
    data[-8:] = b"\x7f" * 8  # flip the last feature values: still parses, but fails the checks
    shards[1].write_bytes(bytes(data))
    shards[2].write_bytes(shards[2].read_bytes()[:100])  # a truncated file
    calls = counting(monkeypatch, enc)
    with caplog.at_level(logging.WARNING, logger="cbm.encoders.cache"):
        again = run(enc, ds, tmp_path)
    corrupt = [r.getMessage() for r in caplog.records if "corrupt" in r.getMessage()]
    assert len(corrupt) == 2 and shards[1].name in corrupt[0] and shards[2].name in corrupt[1]
    assert sum(calls) == 30 and again.computed == 30  # shards 1 and 2, not shard 0
    # shard 0 is read back (exact); shards 1 and 2 are computed again, perhaps batched otherwise
    shard0 = first.indices < SHARD
    assert np.array_equal(again.indices, first.indices) and np.array_equal(again.features[shard0], first.features[shard0])
    np.testing.assert_allclose(again.features, first.features, rtol=1e-4, atol=1e-6)


def test_a_cache_written_by_another_encoder_is_never_reused(world, tmp_path, monkeypatch, caplog):
    a, b = create_encoder(world["name"]), create_encoder(world["other"])
    fs_a = run(a, dataset(world, a), tmp_path)
    foreign = tmp_path / b.cache_key / fs_a.cache_path.name
    shutil.copytree(fs_a.cache_path, foreign)
    for shard in foreign.glob("shard-*.safetensors"):  # even under the names b's shards would have
        key = shard.name.split("-")[2]
        shard.rename(shard.with_name(shard.name.replace(key, "x")))
    calls = counting(monkeypatch, b)
    with caplog.at_level(logging.WARNING, logger="cbm.encoders.cache"):
        fs_b = run(b, dataset(world, b), tmp_path)
    assert fs_b.cache_path == foreign
    assert any("it is not used" in r.getMessage() for r in caplog.records)
    assert sum(calls) == N - 1
    fresh = encode_images(b, dataset(world, b), batch_size=8, num_workers=0, cache=False, progress=False)
    np.testing.assert_allclose(fs_b.features, fresh.features, rtol=1e-4, atol=1e-6)  # both computed, batched apart


def test_a_shard_renamed_into_place_is_rejected_by_its_metadata(world, enc, tmp_path, monkeypatch, caplog):
    other = create_encoder(world["other"])
    fs_other = run(other, dataset(world, other), tmp_path)
    mine = run(enc, dataset(world, enc), tmp_path)
    target = sorted(mine.cache_path.glob("shard-00000-*.safetensors"))[0]
    shutil.copyfile(sorted(fs_other.cache_path.glob("shard-00000-*.safetensors"))[0], target)
    (mine.cache_path / "manifest.json").unlink()  # no manifest hash to catch it: the metadata must
    calls = counting(monkeypatch, enc)
    with caplog.at_level(logging.WARNING, logger="cbm.encoders.cache"):
        again = run(enc, dataset(world, enc), tmp_path)
    assert any("encoder_key" in r.getMessage() for r in caplog.records)
    assert sum(calls) == SHARD - 1  # shard 0 holds the unreadable image 7
    np.testing.assert_allclose(again.features, mine.features, rtol=1e-4, atol=1e-6)  # computed again


def _swap_two_floats(shard) -> None:
    """A damage the structural checks cannot see: two feature values swapped (norms unchanged)."""
    from safetensors.numpy import load, save

    from cbm.utils import safetensors_metadata

    data = shard.read_bytes()
    tensors, meta = load(data), safetensors_metadata(data)
    f = tensors["features"].copy()
    f[0, 0], f[0, 1] = f[0, 1], f[0, 0]
    shard.write_bytes(save({**tensors, "features": f}, metadata=meta))


def test_a_shard_damaged_past_the_structural_checks_is_caught_without_the_manifest_and_never_copied(
        world, enc, tmp_path, monkeypatch, caplog):
    """Two swapped floats: the manifest's hash caught it, but a damaged manifest turned that check
    off, and a sibling folder copied the damaged shard (and its hash) and gave it back."""
    card_dir = tmp_path / "card"
    shutil.copytree(world["card_dir"], card_dir)
    first = run(enc, dataset(world, enc, card_dir), tmp_path / "cache")
    shard0 = sorted(first.cache_path.glob("shard-00000-*.safetensors"))[0]
    _swap_two_floats(shard0)
    (first.cache_path / "manifest.json").write_text("{broken")  # no manifest hash to catch it
    ds = dataset(world, enc, card_dir)
    ds.file(45).write_bytes(ds.file(44).read_bytes())  # another dataset folder, sharing shards 0 and 1
    calls = counting(monkeypatch, enc)
    with caplog.at_level(logging.WARNING, logger="cbm.encoders.cache"):
        sibling = run(enc, dataset(world, enc, card_dir), tmp_path / "cache")
    assert sibling.cache_path != first.cache_path
    assert sum(calls) == SHARD - 1 + 10  # shard 0 (less its unreadable image) not adopted; shard 2 changed
    fresh = encode_images(enc, dataset(world, enc, card_dir), batch_size=8, num_workers=0, cache=False, progress=False)
    np.testing.assert_allclose(sibling.features, fresh.features, rtol=1e-4, atol=1e-6)
    # a manifest with fields of the wrong type is set aside, not a crash
    from cbm.encoders.cache import FORMAT

    (sibling.cache_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "encoder": "x", "dataset": [1],
                                                                  "shards": 5}))
    again = run(enc, dataset(world, enc, card_dir), tmp_path / "cache")
    np.testing.assert_allclose(again.features, sibling.features, rtol=1e-4, atol=1e-6)


def test_an_unreadable_images_reason_is_cached_without_its_path(world, enc, tmp_path):
    from cbm.utils import safetensors_metadata

    fs = run(enc, dataset(world, enc), tmp_path)
    shard0 = sorted(fs.cache_path.glob("shard-00000-*.safetensors"))[0]
    skipped = json.loads(safetensors_metadata(shard0.read_bytes())["skipped"])
    assert len(skipped) == 1 and str(world["card_dir"]) not in skipped[0][1] and ".png" not in skipped[0][1]
    assert skipped[0][1].startswith("ImageReadError: is not an image file")  # not "image <image>: is not ..."
    assert fs.skipped[0].path.endswith(".png")  # the run still names the file


def test_a_path_with_runs_of_spaces_is_not_cached_either(enc, tmp_path):
    """The reason is made one line (a run of spaces or a tab one space), and so is the path inside it:
    a folder named with two spaces (a patient's name as exported) stays out of the cache."""
    from cbm.utils import safetensors_metadata

    card_dir = write_image_card(tmp_path / "Doe,  Jane\tMRN 123", 3, unreadable=[1])
    fs = encode_images(enc, load_card(card_dir).dataset("train", transform=enc.transform), batch_size=2,
                       num_workers=0, cache_dir=tmp_path / "cache", progress=False)
    assert [s.index for s in fs.skipped] == [1]
    for shard in fs.cache_path.glob("shard-*.safetensors"):
        cached = safetensors_metadata(shard.read_bytes()).get("skipped", "")
        assert "Doe" not in cached and "MRN" not in cached
    assert "ImageReadError: is not an image file" in json.dumps([safetensors_metadata(s.read_bytes()).get("skipped")
                                                                for s in fs.cache_path.glob("shard-*.safetensors")])


def test_a_cache_it_may_not_write_to_still_serves_its_verified_shards(world, enc, tmp_path, monkeypatch, caplog):
    """A cache shared read-only: a missing folder is not created, a manifest that cannot be written
    is said, and the verified shards are read all the same."""
    from pathlib import Path

    from cbm.encoders.cache import FeatureCache
    from cbm.utils import cache_dir

    first = run(enc, dataset(world, enc), tmp_path)
    (first.cache_path / "manifest.json").unlink()

    def refuse(self, shards):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(FeatureCache, "write_manifest", refuse)
    calls = counting(monkeypatch, enc)
    with caplog.at_level(logging.WARNING, logger="cbm.encoders.extract"):
        again = run(enc, dataset(world, enc), tmp_path)
    assert sum(calls) == 0 and np.array_equal(again.features, first.features)
    assert any("its manifest could not be written" in r.getMessage() for r in caplog.records)

    def no_mkdir(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "ro"))
    monkeypatch.setattr(Path, "mkdir", no_mkdir)
    assert cache_dir("models") == tmp_path / "ro" / "models"  # returned, not raised: reading needs no folder made


def test_a_changed_image_recomputes_only_its_shard(world, enc, tmp_path, monkeypatch):
    card_dir = tmp_path / "card"
    shutil.copytree(world["card_dir"], card_dir)
    ds = dataset(world, enc, card_dir)
    first = run(enc, ds, tmp_path / "cache")
    ds.file(30).write_bytes(ds.file(31).read_bytes())  # image 30 (shard 1) now shows image 31
    calls = counting(monkeypatch, enc)
    again = run(enc, dataset(world, enc, card_dir), tmp_path / "cache")
    assert again.cache_path != first.cache_path  # other content, other dataset key
    assert sum(calls) == SHARD  # shards 0 and 2 are copied from the first folder
    row = {i: k for k, i in enumerate(again.indices.tolist())}
    assert np.allclose(again.features[row[30]], first.features[row[31]], atol=1e-6)
    same = [k for k, i in enumerate(again.indices.tolist()) if i != 30]
    np.testing.assert_allclose(again.features[same], first.features[same], rtol=1e-4, atol=1e-6)  # shard 1 computed again


def test_a_dataset_with_another_transform_is_refused(world, enc, tmp_path, caplog):
    from cbm.data.transforms import encoder_transform

    other = load_card(world["card_dir"]).dataset("train", transform=encoder_transform(64, [0.5], [0.5]))
    with pytest.raises(ValueError, match=r"not encoder .* preprocessing.*transform=encoder.transform"):
        run(enc, other, tmp_path)
    with caplog.at_level(logging.WARNING):
        fs = encode_images(enc, other, num_workers=0, cache=False, progress=False)
    assert len(fs) == N - 1 and "not cached" in caplog.text
    assert not any(tmp_path.iterdir())


def test_disk_full_keeps_the_old_cache_valid_and_a_rerun_resumes(world, enc, tmp_path, monkeypatch):
    ds = dataset(world, enc)
    first = run(enc, ds, tmp_path)
    folder = first.cache_path
    shards = sorted(folder.glob("shard-*.safetensors"))
    shards[1].unlink()  # one shard to write again
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_fdopen = os.fdopen

    class FullDisk:
        """A file whose writes stop half-way with ENOSPC, as on a full disk."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError) as err:
        run(enc, ds, tmp_path)
    assert err.value.errno == errno.ENOSPC and "free disk space" in str(err.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing half-written, nothing lost
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    calls = counting(monkeypatch, enc)
    again = run(enc, ds, tmp_path)
    assert sum(calls) == SHARD
    np.testing.assert_allclose(again.features, first.features, rtol=1e-4, atol=1e-6)  # one shard computed again


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from cbm.data import ManifestDataset, load_card
    from cbm.encoders import create_encoder, encode_images

    name, card_dir, cache, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    class KilledMidShard(ManifestDataset):
        def __getitem__(self, i):
            if i == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__getitem__(i)

    enc = create_encoder(name)
    ds = KilledMidShard(load_card(card_dir).manifest().split("train"), transform=enc.transform)
    encode_images(enc, ds, batch_size=8, num_workers=0, cache_dir=cache, shard_size=20, progress=False)
    """
)


def test_a_run_killed_mid_shard_resumes_from_its_finished_shards(world, enc, tmp_path, monkeypatch):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, str(script), world["name"], str(world["card_dir"]), str(cache), "45"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    (folder,) = list((cache / enc.cache_key).iterdir())
    assert len(list(folder.glob("shard-*.safetensors"))) == 2 and not (folder / "manifest.json").exists()
    (folder / ".shard-00002-half.safetensors.abc.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    calls = counting(monkeypatch, enc)
    resumed = run(enc, dataset(world, enc), cache)
    assert sum(calls) == 10 and resumed.computed == 10  # only the shard that was cut short
    fresh = encode_images(enc, dataset(world, enc), num_workers=0, cache=False, progress=False)
    np.testing.assert_allclose(resumed.features, fresh.features, rtol=1e-4, atol=1e-6)  # computed apart


def test_the_frame_read_from_multi_frame_files_is_part_of_the_key(world, enc, tmp_path):
    card = load_card(world["card_dir"])
    middle = run(enc, card.dataset("train", transform=enc.transform), tmp_path)
    first = run(enc, card.dataset("train", transform=enc.transform, frame="first"), tmp_path)
    assert first.cache_path != middle.cache_path and first.computed == N
    assert json.loads((first.cache_path / "manifest.json").read_text())["dataset"]["reading"] == {
        "pixel_pipeline": PIXEL_PIPELINE_VERSION,
        "frame": "first",
    }


def test_a_file_replaced_with_the_same_size_and_time_is_hashed_again(tmp_path, monkeypatch):
    from cbm.encoders.hashing import content_hashes

    monkeypatch.setenv("CBM_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "img" / "a.png", tmp_path / "b.png"
    a.parent.mkdir()
    a.write_bytes(b"first image bytes")
    b.write_bytes(b"other image bytes")  # the same size
    st = a.stat()
    first = content_hashes([a], progress=False)
    shutil.copyfile(b, a)  # over the file, as cp does
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # and its modification time put back, as cp -p does
    assert a.stat().st_size == st.st_size and a.stat().st_mtime_ns == st.st_mtime_ns
    assert content_hashes([a], progress=False) == [hashlib.sha256(b"other image bytes").hexdigest()] != first


def test_a_second_process_waits_for_the_one_writing_the_cache(world, enc, tmp_path):
    import threading

    from cbm.utils import folder_lock

    ds = dataset(world, enc)
    first = run(enc, ds, tmp_path)
    done = threading.Event()
    second = threading.Thread(target=lambda: (run(enc, ds, tmp_path), done.set()))
    with folder_lock(first.cache_path, "test"):  # another writer holds the folder (flock is per open file)
        second.start()
        assert not done.wait(1.0)  # the second run waits for it...
    second.join(60)
    assert done.is_set()  # ...and goes on once it is free


def test_a_file_system_without_locks_does_not_stop_the_cache(tmp_path, monkeypatch, caplog):
    import fcntl

    from cbm.utils import folder_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    ran = []
    with caplog.at_level(logging.WARNING), folder_lock(tmp_path / "cache", "test"):
        ran.append(True)
    assert ran and "going on without the lock" in caplog.text
    assert not any((tmp_path / "cache").iterdir())  # the lock leaves no file behind


def test_images_skipped_for_the_machines_reasons_are_read_again(world, enc, tmp_path, monkeypatch):
    """A pixel budget too small (or a codec not installed) says nothing about the file: the next run
    with a larger budget reads the images, while a file that is not an image stays skipped."""
    ds = dataset(world, enc)
    monkeypatch.setenv("CBM_MAX_PIXELS", "100")  # below every image
    assert len(run(enc, ds, tmp_path).skipped) == N
    monkeypatch.delenv("CBM_MAX_PIXELS")
    fs = run(enc, ds, tmp_path)
    assert [s.index for s in fs.skipped] == [BAD] and fs.computed == N
    assert run(enc, ds, tmp_path).computed == 0  # the file that is not an image does not make its shard recompute
