"""Confounded demo datasets: cue rates, determinism, the files on disk, reuse, and the card."""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cbm.demo.dataset import SPLITS, make_dataset, plan_dataset
from cbm.demo.world import abcd_label, class_names


def _agreement(items, split: str) -> float:
    """Share of a split's images whose cue goes with the class (marked iff malignant)."""
    part = [it for it in items if it.split == split]
    return float(np.mean([(it.cue == "marked") == (it.label != "benign nevus") for it in part]))


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("p", [0.95, 0.7, 0.5])
def test_cue_rate_of_every_split_is_the_requested_one(classes, p):
    items = plan_dataset(n=3000, confounding=p, classes=classes, seed=3)
    assert abs(_agreement(items, "train") - p) <= 0.02
    assert abs(_agreement(items, "val") - p) <= 0.02
    assert abs(_agreement(items, "test_id") - p) <= 0.02  # in domain, held out
    assert abs(_agreement(items, "test") - (1 - p)) <= 0.02  # reversed out of domain


def test_splits_are_50_15_15_20_with_balanced_classes_and_labels_by_the_rule():
    items = plan_dataset(n=600, confounding=0.95, classes=3, seed=0)
    counts = Counter((it.split, it.label) for it in items)
    for split, size in zip(SPLITS, (300, 90, 90, 120)):
        assert sum(v for (s, _), v in counts.items() if s == split) == size
        assert {counts[(split, c)] for c in class_names(3)} == {size // 3}
    for it in items:
        assert abcd_label(it.scene.lesion.tds_tenths, 3) == it.label
        assert (it.scene.cue != "none") == (it.cue == "marked")


def test_plan_is_deterministic_per_seed():
    a, b = plan_dataset(120, 0.9, 2, seed=5), plan_dataset(120, 0.9, 2, seed=5)
    assert [(x.label, x.cue, x.scene) for x in a] == [(x.label, x.cue, x.scene) for x in b]
    c = plan_dataset(120, 0.9, 2, seed=6)
    assert [x.scene for x in a] != [x.scene for x in c]


@pytest.mark.parametrize("kwargs, match", [({"confounding": 1.5}, r"\[0, 1\]"), ({"classes": 4}, "2 or 3"),
                                           ({"n": 5}, "too small"), ({"n": "100"}, "n='100' must be a whole number"),
                                           ({"seed": 1.5}, "seed=1.5 must be a whole number"),
                                           ({"seed": -1}, "seed=-1 must be 0 or more"),
                                           ({"confounding": "0.9"}, r"confounding='0.9' must be a number in \[0, 1\]")])
def test_bad_parameters_are_explained(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        make_dataset(tmp_path / "d", **{"n": 60, **kwargs})
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_whole_numbers_given_as_floats_make_the_same_dataset(tmp_path):
    """A config may give n or size as 1e3 or 64.0; they crashed deep in numpy (a TypeError, not a message)."""
    assert [it.scene for it in plan_dataset(60.0, 0.9, 2.0, seed=1.0)] == [it.scene for it in plan_dataset(60, 0.9, 2, 1)]
    card = make_dataset(tmp_path / "d", n=36.0, confounding=0.9, seed=2.0, size=24.0, workers=1, progress=False)
    assert "--n 36 --confounding 0.9 --classes 2 --seed 2 --size 24" in yaml.safe_load(card.read_text())["obtain"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ds"
    card = make_dataset(out, n=60, confounding=0.9, classes=2, seed=1, size=32, workers=1, progress=False)
    return out, card


def test_make_dataset_writes_images_manifest_and_card(small):
    out, card = small
    assert card == out / "card.yaml"
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(rows) == 60
    for row in rows:
        assert (out / "images" / row["path"]).is_file()
        a, b, c, d = (int(row[k]) for k in ("asymmetry", "border", "n_colours", "n_structures"))
        tds = 1.3 * a + 0.1 * b + 0.5 * c + 0.5 * d
        assert float(row["tds"]) == pytest.approx(tds)
        assert row["label"] == ("melanoma" if tds > 5.45 else "benign nevus")
        assert int(row["n_colours"]) == len(row["colours"].split(";"))
    meta = yaml.safe_load(card.read_text())
    assert meta["group_column"] == "cue" and meta["confounder"]["column"] == "cue"
    assert meta["confounder"]["id_groups"] == {"benign nevus": "unmarked", "melanoma": "marked"}
    assert meta["confounder"]["ood_groups"] == {"benign nevus": "marked", "melanoma": "unmarked"}
    assert [c["name"] for c in meta["classes"]] == ["benign nevus", "melanoma"]


def test_the_data_layer_loads_the_card(small):
    from cbm.data import load_card

    out, card_path = small
    card = load_card(card_path)
    assert card.name == "demo-derm" and card.class_names == ["benign nevus", "melanoma"]
    manifest = card.manifest(strict=True)
    assert len(manifest) == 60 and set(manifest.split_names()) == set(SPLITS)
    assert {row.group for row in manifest} == {"marked", "unmarked"}
    assert card.confounder is not None and card.confounder.ood_groups["melanoma"] == "unmarked"
    image, label, index = card.dataset("train")[0]
    assert tuple(np.asarray(image).shape)[-2:] == (32, 32)


def test_same_parameters_reuse_the_folder(small):
    out, card = small
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert make_dataset(out, n=60, confounding=0.9, classes=2, seed=1, size=32, workers=1, progress=False) == card
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}


def test_the_3_class_card_says_its_classes_are_grades_and_a_reused_folder_gets_it(tmp_path):
    card = make_dataset(tmp_path, n=36, confounding=0.9, classes=3, seed=1, size=32, workers=1, progress=False)
    fields = yaml.safe_load(card.read_text())
    assert fields["ordered_classes"] is True
    assert [c["name"] for c in fields["classes"]] == ["benign nevus", "suspicious lesion", "melanoma"]
    # a folder drawn before the field existed: reuse rewrites its card, drawing nothing again
    del fields["ordered_classes"]
    card.write_text(yaml.safe_dump(fields, sort_keys=False))
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}
    make_dataset(tmp_path, n=36, confounding=0.9, classes=3, seed=1, size=32, workers=1, progress=False)
    assert yaml.safe_load(card.read_text())["ordered_classes"] is True
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "images").rglob("*.png")}


def test_a_partial_dataset_is_resumed_and_other_parameters_redraw(tmp_path):
    out = tmp_path / "ds"
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    first = sorted((out / "images").rglob("*.png"))
    before = {p: p.read_bytes() for p in first}
    # simulate an interruption: the record says incomplete and two images are missing
    record = json.loads((out / "demo.json").read_text())
    (out / "demo.json").write_text(json.dumps({**record, "complete": False}))
    first[0].unlink()
    first[5].unlink()
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    assert {p: p.read_bytes() for p in sorted((out / "images").rglob("*.png"))} == before  # same pixels again
    # other parameters: refused (a mistyped --n must not delete a dataset), then redrawn when asked
    with pytest.raises(FileExistsError, match="other parameters .*--overwrite"):
        make_dataset(out, n=36, confounding=0.9, seed=3, size=24, workers=1, progress=False)
    assert {p: p.read_bytes() for p in sorted((out / "images").rglob("*.png"))} == before
    make_dataset(out, n=36, confounding=0.9, seed=3, size=24, workers=1, progress=False, overwrite=True)
    after = {p: p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}
    assert after.keys() == before.keys() and after != before


def test_a_complete_dataset_that_lost_an_image_draws_it_again(tmp_path):
    out = tmp_path / "ds"
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    lost = sorted((out / "images").rglob("*.png"))[3]
    pixels = lost.read_bytes()
    lost.unlink()
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    assert lost.read_bytes() == pixels


def test_a_reused_dataset_that_lost_its_masks_record_or_store_gets_them_back(tmp_path):
    """read_masks' advice (run `cbm demo make` again) must work: the reused folder writes them again."""
    from cbm.demo.dataset import read_masks

    out = tmp_path / "ds"
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    store = (out / "concepts.json").read_text()
    (out / "masks" / "masks.json").unlink()
    (out / "concepts.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no masks"):
        read_masks(out, "train/000000.png")
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False, overwrite=True)
    assert read_masks(out, "train/000000.png")["lesion"].any()
    assert json.loads((out / "concepts.json").read_text())["by_class"] == json.loads(store)["by_class"]
    assert stamp == {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}  # nothing redrawn
    # a damaged record is written again too; a store the user edited is left as it is
    (out / "masks" / "masks.json").write_text("{")
    edited = json.loads(store)
    edited["by_class"]["melanoma"]["concepts"].append("my own concept")
    (out / "concepts.json").write_text(json.dumps(edited))
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    assert read_masks(out, "train/000000.png")["lesion"].any()
    assert json.loads((out / "concepts.json").read_text()) == edited


def test_an_out_folder_that_is_a_file_or_cannot_be_written_is_named_with_the_fix(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder; give --out"):
        make_dataset(tmp_path / "afile", n=36, size=24, workers=1, progress=False)
    with pytest.raises(OSError, match=r"cannot write the demo dataset into .*afile.sub .*choose a folder you can write"):
        make_dataset(tmp_path / "afile" / "sub", n=36, size=24, workers=1, progress=False)


def test_a_folder_an_earlier_cbm_drew_with_the_same_parameters_is_not_said_to_have_other_ones(tmp_path):
    out = tmp_path / "ds"
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    record = json.loads((out / "demo.json").read_text())
    params = {k: v for k, v in record["params"].items() if k != "mask_version"}  # as cbm wrote it before masks v2
    (out / "demo.json").write_text(json.dumps({**record, "key": "0" * 16, "params": {**params, "format": 4}}))
    with pytest.raises(FileExistsError, match=r"as an earlier cbm drew it .*'mask_version': None.*--overwrite") as err:
        make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False)
    assert "other parameters" not in str(err.value)
    make_dataset(out, n=36, confounding=0.9, seed=2, size=24, workers=1, progress=False, overwrite=True)
    assert json.loads((out / "demo.json").read_text())["params"] == record["params"]
    # a parameter the user gave differs as well: that is what the message names
    with pytest.raises(FileExistsError, match="other parameters"):
        make_dataset(out, n=36, confounding=0.9, seed=5, size=24, workers=1, progress=False)


def test_two_writers_of_one_image_do_not_share_a_temporary_file(tmp_path, monkeypatch):
    """Two processes drawing the same folder at once (a sweep's jobs on the cached demo dataset):
    one finishing an image while the other is between writing and renaming it must not take the
    other's temporary file away (the second rename failed: FileNotFoundError)."""
    import os

    import cbm.demo.dataset as dataset

    target = tmp_path / "000000.png"
    pixels = np.full((8, 8, 3), 7, np.uint8)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if len(calls) == 1:  # the other writer does the whole image now, in between
            dataset._write_png(target, pixels)
        real_replace(src, dst)

    monkeypatch.setattr(dataset.os, "replace", replace)
    dataset._write_png(target, pixels)
    assert len(set(map(str, calls))) == 2
    monkeypatch.undo()
    assert np.array_equal(np.asarray(Image.open(target)), pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.png"]  # no temporary file left


def test_small_splits_keep_the_cue_rate_where_a_closer_count_exists():
    items = plan_dataset(n=200, confounding=0.97, classes=2, seed=0)  # val and test_id: 30 images each
    for split in ("val", "test_id"):
        assert _agreement(items, split) == pytest.approx(29 / 30)  # not 30/30: the cue must not be perfect


def test_cli_errors_for_a_folder_in_the_way_are_one_line(tmp_path, capsys):
    from cbm.cli import main

    (tmp_path / "afile").write_text("x")
    assert main(["demo", "make", "--out", str(tmp_path / "afile"), "--n", "36", "--size", "24", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbm demo: error:") and "Traceback" not in err
    assert main(["demo", "make", "--out", str(tmp_path / "x"), "--n", "36", "--workers", "0"]) == 2
    assert "workers=0 must be at least 1" in capsys.readouterr().err


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by `cbm demo make`"):
        make_dataset(tmp_path, n=36, size=24, workers=1, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_make_writes_a_dataset(tmp_path, capsys):
    from cbm.cli import main

    out = tmp_path / "cli"
    assert main(["demo", "make", "--out", str(out), "--n", "36", "--size", "24", "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("card.yaml")
    assert len(list((out / "images").rglob("*.png"))) == 36
    assert main(["demo", "make", "--out", str(out), "--confounding", "2"]) == 2
    assert "confounding" in capsys.readouterr().err


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """A few images at the default 128 px, where every drawn structure covers whole pixels."""
    out = tmp_path_factory.mktemp("demo128") / "ds"
    return make_dataset(out, n=40, confounding=0.9, classes=2, seed=3, size=128, workers=1, progress=False)


def test_truth_columns_hold_every_store_concept_and_the_card_names_them(small):
    from cbm.data import load_card
    from cbm.demo.dataset import truth_column
    from cbm.demo.world import concept_truth, demo_concepts

    card = load_card(small[1])
    phrases = {p for ps in demo_concepts(2).values() for p in ps}
    assert card.concept_truth == {p: truth_column(p) for p in card.concept_truth} and set(card.concept_truth) == phrases
    rows = [dict(r.extra) for r in card.manifest()]
    for phrase, column in card.concept_truth.items():
        expected = concept_truth(rows, phrase).astype(int)
        assert [int(r[column]) for r in rows] == expected.tolist(), phrase
    # opposite phrases are complements
    assert all(int(r["truth_symmetric_shape"]) + int(r["truth_asymmetric_shape"]) == 1 for r in rows)


def test_masks_say_where_each_drawn_thing_is(full_size):
    from PIL import Image

    from cbm.demo.dataset import read_masks
    from cbm.demo.render import MASK_NAMES

    folder = full_size.parent
    rows = list(csv.DictReader(open(folder / "manifest.csv", newline="")))
    for row in rows:
        masks = read_masks(folder, row["path"])
        assert set(masks) == set(MASK_NAMES)
        image = np.asarray(Image.open(folder / "images" / row["path"]))
        assert all(m.shape == image.shape[:2] for m in masks.values())
        for colour in ("light brown", "dark brown", "black", "red", "blue-grey", "white"):
            present = colour in row["colours"].split(";")
            # a colour drawn in a corner of a small lesion may be covered; an absent one never has a mask
            assert masks[colour].any() or present is False or masks["lesion"].sum() < 400, (row["path"], colour)
            assert not masks[colour].any() or present, (row["path"], colour)
        for structure in ("pigment network", "dots", "globules", "streaks", "structureless areas"):
            assert masks[structure].any() == (structure in row["structures"].split(";")), (row["path"], structure)
        assert masks["ruler"].any() == (row["cue_kind"] == "ruler") and masks["ink"].any() == (row["cue_kind"] == "ink")
        # everything of the lesion lies inside it; the marks lie mostly outside
        for name in ("irregular border", "dots", "globules", "streaks"):
            assert not (masks[name] & ~masks["lesion"]).any(), name
        # the pixels of a blue-grey mask are bluer than the lesion around them
        if masks["blue-grey"].sum() > 20:
            inside = image[masks["blue-grey"]].astype(float).mean(0)
            rest = image[masks["lesion"] & ~masks["blue-grey"]].astype(float).mean(0)
            assert inside[2] - inside[0] > rest[2] - rest[0]


def test_masks_of_another_world_version_are_refused(small, tmp_path):
    import shutil

    from cbm.demo.dataset import read_masks

    folder = tmp_path / "copy"
    shutil.copytree(small[0] / "masks", folder / "masks")
    record = json.loads((folder / "masks" / "masks.json").read_text())
    (folder / "masks" / "masks.json").write_text(json.dumps({**record, "render_version": 1}))
    with pytest.raises(ValueError, match="render version 1.*draw the dataset again"):
        read_masks(folder, "train/000000.png")
    # masks drawn before a mask fix (same pictures, other masks) are refused too
    (folder / "masks" / "masks.json").write_text(json.dumps({k: v for k, v in record.items() if k != "mask_version"}))
    with pytest.raises(ValueError, match="mask version None.*draw the dataset again"):
        read_masks(folder, "train/000000.png")
    shutil.rmtree(folder / "masks")
    with pytest.raises(FileNotFoundError, match="has no masks"):
        read_masks(folder, "train/000000.png")


def test_a_full_disk_names_the_file_and_the_fix_and_a_run_after_resumes(tmp_path, capsys, monkeypatch):
    """A disk that fills while images are drawn: `cbm demo make` said only "[Errno 28] No space left
    on device", naming neither the file nor the folder, nor what to do."""
    import errno
    import os

    from cbm.cli import main

    real_fdopen, opened = os.fdopen, []

    class FullFile:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):
        opened.append(fd)
        fh = real_fdopen(fd, *args, **kwargs)
        return fh if len(opened) <= 20 else FullFile(fh)  # the disk fills after 20 files

    out = tmp_path / "demo"
    args = ["demo", "make", "--out", str(out), "--n", "36", "--size", "24", "--workers", "1"]
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", fdopen)
        assert main(args) == 2
    err = capsys.readouterr().err
    assert "cbm demo: error:" in err and "No space left on device" in err and "Traceback" not in err
    assert str(out / "masks" / "train") in err or str(out / "images" / "train") in err, err
    assert "free space on the disk holding" in err and "run again" in err
    assert not list(out.rglob("*.tmp"))  # no half-written file left
    assert main(args) == 0  # space again: it resumes and completes
    again = tmp_path / "again"
    make_dataset(again, n=36, size=24, workers=1, progress=False)
    for png in sorted((again / "images").rglob("*.png")):
        assert (out / png.relative_to(again)).read_bytes() == png.read_bytes()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_DRAW = "import sys; from cbm.demo.dataset import make_dataset; make_dataset(sys.argv[1], n=40000, size=16, workers=2, progress=False)"
# the workers start their watch only after their parent is gone (killed as the pool started)
_LATE_WATCH = ("import time, cbm.demo.dataset as d; watch = d.exit_with_parent\n"
               "def late(*args):\n    time.sleep(3)\n    watch(*args)\n"
               "d.exit_with_parent = late\n") + _DRAW


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
@pytest.mark.parametrize("script", [_DRAW, _LATE_WATCH], ids=["drawing", "starting"])
def test_drawing_workers_end_when_the_process_that_started_them_is_killed(tmp_path, script):
    """`cbm demo make` (or `cbm run` drawing the demo) killed outright (SIGKILL, the OOM killer): its
    drawing processes waited for their next job forever, one per core, until killed by hand. Killed
    before a worker had begun to watch it, the worker, adopted by init, took init for the process
    that started it and waited forever too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "demo")])
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _children(proc.pid)
        assert len(workers) == 2, "the drawing processes did not start"
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} drawing process(es) outlived the process that started them"


def test_ctrl_c_while_drawing_says_the_drawn_images_are_kept(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `cbm demo make` said only "interrupted", though a re-run resumes from the images drawn."""
    import cbm.demo.dataset as dataset
    from cbm.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dataset, "_draw_all", interrupted)
    assert main(["demo", "make", "--out", str(tmp_path / "d"), "--n", "36", "--size", "24", "--workers", "1"]) == 130
    assert capsys.readouterr().err.strip() == ("cbm demo: interrupted; the images already drawn are kept, and a re-run "
                                               "draws only the rest")


def test_two_processes_drawing_one_folder_take_turns(tmp_path, monkeypatch, caplog):
    """Two runs on the cached demo at once (a sweep's jobs) each drew every image not yet on disk,
    twice the work; the second now waits for the first, says so, and then finds the images drawn."""
    import logging
    import threading

    import cbm.demo.dataset as dataset

    real_draw, drawn, started, waiting = dataset._draw_all, [], threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record):
            if "another cbm process is writing" in record.getMessage():
                waiting.set()

    def draw(items, *args, **kwargs):
        drawn.append(len(items))
        started.set()
        if len(drawn) == 1:
            waiting.wait(30)  # the first draws until the second writer has arrived and waits (no timing guess)
        real_draw(items, *args, **kwargs)

    monkeypatch.setattr(dataset, "_draw_all", draw)
    out = tmp_path / "demo"
    first = threading.Thread(target=make_dataset, args=(out,), kwargs=dict(n=36, size=24, workers=1, progress=False))
    watcher = Waiting()
    logging.getLogger("cbm").addHandler(watcher)
    try:
        with caplog.at_level(logging.INFO, logger="cbm"):
            first.start()
            assert started.wait(30)
            make_dataset(out, n=36, size=24, workers=1, progress=False)
            first.join()
    finally:
        logging.getLogger("cbm").removeHandler(watcher)
    assert drawn == [36, 0]
    assert "another cbm process is writing the demo dataset" in caplog.text
    assert json.loads((out / "demo.json").read_text())["complete"] is True


def test_a_worker_started_by_init_is_not_ended_at_once(monkeypatch):
    """cbm as a container's first process (pid 1) starts workers whose parent is 1 from the start: the
    watch must not take that for a parent already gone (every worker ended at once)."""
    import os
    import threading

    from cbm.utils import exit_with_parent

    monkeypatch.setattr(os, "getppid", lambda: 1)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(AssertionError("the worker was ended")))
    exit_with_parent(interval=0.01)
    exit_with_parent(1, interval=0.01)  # the pool's own process is init
    assert not [t for t in threading.enumerate() if t.name == "exit-with-parent"]
