"""The data commands of ``cbm``: cards, validate, make-splits, index-dicom (run in-process)."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from pydicom.data import get_testdata_file

from cbm.cli import main

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("CBM_") and key.endswith("_ROOT"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("CBM_CARDS_PATH", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_data_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("cards", "validate", "make-splits", "index-dicom"):
        assert command in out


def test_cards_table_and_json(capsys):
    code, out, _ = run(capsys, "cards")
    assert code == 0 and "ham10000" in out and "vindr-cxr" in out and "nih-sex" in out
    code, out, _ = run(capsys, "cards", "--json")
    cards = {c["name"]: c for c in json.loads(out)}
    assert cards["isic-age"]["confounder"] == "age_group" and cards["ham10000"]["classes"] == 7
    assert cards["ham10000"]["manifest"] is False


def test_cards_lists_the_name_that_finds_a_card(capsys, tmp_path, monkeypatch):
    """A card whose name field differs from its folder is listed by its folder, which `cbm validate`
    and `cbm run dataset=...` find it by."""
    import shutil

    from cbm.data._card import BUILTIN_CARDS_DIR

    shutil.copytree(BUILTIN_CARDS_DIR / "ham10000", tmp_path / "my-folder")
    monkeypatch.setenv("CBM_CARDS_PATH", str(tmp_path))
    code, out, _ = run(capsys, "cards")
    line = next(row for row in out.splitlines() if row.startswith("my-folder "))
    assert code == 0 and line.endswith("(its name field: ham10000)")
    code, out, _ = run(capsys, "cards", "--json")
    mine = next(c for c in json.loads(out) if c["name"] == "my-folder")
    assert mine["card_name"] == "ham10000"
    _, out, err = run(capsys, "validate", "my-folder")  # found by the listed name (it has no manifest yet)
    assert "Unknown data card" not in err and "has no manifest yet" in out + err


def test_a_reader_that_closes_the_pipe_early_gets_no_error(capsys, monkeypatch):
    """`cbm cards | head -1`: the rest of the output has nowhere to go, which is no error to report."""
    import sys

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["cards"]) == 141
    assert capsys.readouterr().err == ""
    monkeypatch.undo()
    # a broken pipe of the command's own (a socket, a subprocess) while stdout is fine is an error like any other
    import cbm.data.cli

    def own_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cbm.data.cli, "_cards", own_pipe)
    assert main(["cards"]) == 2
    assert "cbm cards: error: [Errno 32] Broken pipe" in capsys.readouterr().err


def test_a_real_pipe_closed_by_its_reader_ends_the_command_quietly():
    """Through a real pipe: the command writes more than the pipe holds, the reader takes 20 bytes and
    goes; the command exits 141 with nothing on stderr (a failed write drops Python's buffer, so the
    check asks the descriptor, not a second flush)."""
    import subprocess
    import sys

    producer = ("import cbm.data.cli as c, sys\n"
                "c._cards = lambda args: [print('x' * 79) for _ in range(200_000)] and 0\n"
                "from cbm.cli import main\nsys.exit(main(['cards']))\n")
    proc = subprocess.Popen([sys.executable, "-c", producer], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(20) == b"x" * 20
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_make_splits_then_validate(tmp_path, capsys, monkeypatch):
    # a private copy of the ham10000 card, so the manifest is written next to it and not in the repo
    card = tmp_path / "ham10000"
    card.mkdir()
    shutil.copy(get_card_yaml("ham10000"), card / "card.yaml")
    meta = tmp_path / "HAM10000_metadata.csv"
    dx = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    meta.write_text(HAM_HEADER + "".join(f"HAM_{i},ISIC_{i:07d},{dx[i % 7]},histo,50,male,back,x\n" for i in range(70)))

    code, out, _ = run(capsys, "make-splits", str(card), "--metadata", str(meta), "--dry-run")
    assert code == 0 and "70 images from 70 metadata rows" in out and not (card / "manifest.csv").exists()

    code, out, _ = run(capsys, "make-splits", str(card), "--metadata", str(meta))
    assert code == 0 and f"written to {card / 'manifest.csv'}" in out
    rows = list(csv.DictReader(open(card / "manifest.csv")))
    assert len(rows) == 70 and {r["split"] for r in rows} == {"train", "val", "test"}

    # a second draw keeps the manifest that is there (a model may have been fitted on its splits)
    before = (card / "manifest.csv").read_bytes()
    code, out, err = run(capsys, "make-splits", str(card), "--metadata", str(meta), "--seed", "7")
    assert code == 2 and str(card / "manifest.csv") in err and "--force" in err and "--out" in err
    assert (card / "manifest.csv").read_bytes() == before
    code, out, _ = run(capsys, "make-splits", str(card), "--metadata", str(meta), "--dry-run")  # writes nothing
    assert code == 0 and (card / "manifest.csv").read_bytes() == before
    code, out, _ = run(capsys, "make-splits", str(card), "--metadata", str(meta), "--seed", "7", "--force")
    assert code == 0 and (card / "manifest.csv").read_bytes() != before
    code, _, err = run(capsys, "make-splits", str(card), "--metadata", str(meta), "--out", str(tmp_path), "--force")
    assert code == 2 and "is a folder" in err and "--out manifest.csv" in err

    # no images yet: validate says where to put them (exit 2, a clear error)
    code, _, err = run(capsys, "validate", str(card))
    assert code == 2 and "does not exist" in err and "CBM_HAM10000_ROOT" in err

    # with images for all but two rows: a report with the problem, exit 1; --strict fails with exit 2
    images = tmp_path / "imgs"
    images.mkdir()
    for r in rows[2:]:
        (images / r["path"]).write_bytes(b"x")
    monkeypatch.setenv("CBM_HAM10000_ROOT", str(images))
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 1 and "2 rows whose image file does not exist" in out and "train:" in out
    assert out.splitlines()[-1].endswith(": problems in the manifest's rows (above)")
    code, _, err = run(capsys, "validate", str(card), "--strict")
    assert code == 2 and "2 rows whose image file does not exist" in err
    code, out, _ = run(capsys, "validate", str(card), "--no-files")
    assert code == 0 and "no problems found" in out


def test_make_splits_errors_are_reported_plainly(tmp_path, capsys):
    code, _, err = run(capsys, "make-splits", "ham10000", "--metadata", str(tmp_path / "missing.csv"))
    assert code == 2 and "metadata not found" in err
    code, _, err = run(capsys, "make-splits", "ham1000", "--metadata", "x.csv")
    assert code == 2 and "Did you mean 'ham10000'" in err


def test_index_dicom_command(tmp_path, capsys):
    (tmp_path / "dcm" / "ct").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "dcm" / "ct" / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "dcm" / "ct" / "b.dcm")
    code, out, _ = run(capsys, "index-dicom", str(tmp_path / "dcm"), "--out", str(tmp_path / "m.csv"), "--label-from", "folder")
    assert code == 0 and "2 DICOM images indexed" in out
    assert [r["label"] for r in csv.DictReader(open(tmp_path / "m.csv"))] == ["ct", "ct"]
    code, _, err = run(capsys, "index-dicom", str(tmp_path / "dcm"), "--out", str(tmp_path / "m.csv"))
    assert code == 2 and "m.csv" in err and "--force" in err
    assert [r["label"] for r in csv.DictReader(open(tmp_path / "m.csv"))] == ["ct", "ct"]  # kept
    code, _, _ = run(capsys, "index-dicom", str(tmp_path / "dcm"), "--out", str(tmp_path / "m.csv"), "--force")
    assert code == 0 and [r["label"] for r in csv.DictReader(open(tmp_path / "m.csv"))] == ["", ""]
    (tmp_path / "empty").mkdir()
    code, _, _ = run(capsys, "index-dicom", str(tmp_path / "empty"), "--out", str(tmp_path / "e.csv"))
    assert code == 1


def get_card_yaml(name: str):
    from cbm.data import load_card

    return load_card(name).path


def test_validate_checks_the_concept_store_and_the_truth_names_as_a_run_would(tmp_path, capsys):
    """`cbm validate` also reads the card's concepts.json and its concept_truth names, which a run refuses
    before encoding: a misspelt truth name and a store without a class's list are problems (exit 1; --strict
    exit 2); a card without a store yet is told how to make one, and that alone is no problem."""
    from cbm.demo import make_dataset

    card = make_dataset(tmp_path / "demo", n=48, confounding=0.9, seed=3, size=64, progress=False)
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 0 and "no problems found" in out and "concept store: 22 concepts for 2 classes" in out
    assert "no problems found in the rows" in out and out.splitlines()[-1].endswith(": no problems found")

    text = card.read_text()
    card.write_text(text.replace("  regular border: truth_regular_border", "  regular boarder: truth_regular_border"))
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 1 and "no problems found in the rows" in out  # the manifest is fine; the names are not
    assert out.splitlines()[-1].endswith(": problems in the concept store (above)")
    assert "concept_truth names concepts" in out and "'regular boarder' (closest: 'regular border'" in out
    code, _, err = run(capsys, "validate", str(card), "--strict")
    assert code == 2 and "'regular boarder'" in err
    card.write_text(text)

    store = card.parent / "concepts.json"
    doc = json.loads(store.read_text())
    doc["by_class"].pop("melanoma")
    store.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 1 and "has no concept list for classes ['melanoma']" in out and str(store) in out

    store.unlink()
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 0 and f"concept store: none yet; a run needs one: `cbm concepts {card.parent} --llm PRESET`" in out


def test_validate_reads_every_images_header_as_a_run_would(tmp_path, capsys):
    """An empty file, a truncated PNG and a file that is no image are found by `cbm validate` (their
    headers and PNG/JPEG data read, no pixel decoded), not by a run that skips them after encoding."""
    from cbm.demo import make_dataset

    card = make_dataset(tmp_path / "demo", n=48, confounding=0.9, seed=3, size=64, progress=False)
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 0 and "images: 48 of 48 readable" in out
    rows = list(csv.DictReader(open(card.parent / "manifest.csv")))
    images = card.parent / "images"
    (images / rows[0]["path"]).write_bytes(b"")
    whole = (images / rows[1]["path"]).read_bytes()
    (images / rows[1]["path"]).write_bytes(whole[: len(whole) // 2])
    (images / rows[2]["path"]).write_text("not an image")
    code, out, _ = run(capsys, "validate", str(card))
    assert code == 1 and "images: 45 of 48 readable" in out
    assert "3 image(s) that cannot be read, which a run skips (line 2: " in out
    assert "is empty (0 bytes)" in out and "so it is truncated" in out and "line 4: " in out
    code, _, err = run(capsys, "validate", str(card), "--strict")
    assert code == 2 and "3 image(s) that cannot be read" in err
    code, out, _ = run(capsys, "validate", str(card), "--no-files")  # nothing read at all
    assert code == 0 and "readable" not in out
    code, out, _ = run(capsys, "validate", str(card), "--no-read")  # the files are there; none is read
    assert code == 0 and "readable" not in out and "48 images" not in out


def test_validate_fails_a_manifest_a_run_refuses_for_a_class_without_validation_images(tmp_path, capsys):
    """A run and `cbm.fit` refuse a card whose val holds no image of a class, before encoding: `cbm validate`
    said "no problems found" and exited 0 on it."""
    from cbm.demo import make_dataset

    card = make_dataset(tmp_path / "demo", n=48, confounding=0.9, seed=3, size=64, progress=False)
    manifest = card.parent / "manifest.csv"
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(r for r in rows if not (",melanoma,val," in r)) + "\n")
    code, out, _ = run(capsys, "validate", str(card), "--no-read")
    assert code == 1 and "note: no validation image of melanoma" in out
    assert "no problems found\n" not in out and "a run refuses this manifest" in out
    assert out.splitlines()[-1].endswith(": problems in validation classes (above)")
    code, _, err = run(capsys, "validate", str(card), "--no-read", "--strict")
    assert code == 2 and "no validation image of class(es) melanoma" in err and str(manifest) in err


def test_python_dash_m_cbm_is_the_cbm_command():
    # for an environment whose scripts folder is not on PATH (a venv not activated, a notebook)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cbm", "cards"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ham10000" in proc.stdout


def test_validate_names_dicom_files_of_another_modality_than_the_cards(tmp_path, capsys):
    """A card saying "chest x-ray" over CT and MR slices passed validate, and its model then withheld every
    prediction, its own test images included, for their DICOM modality; a card naming its modality by an
    alias the prompt templates know ("cxr", "dermatoscopy") is held to the same modality."""
    folder = tmp_path / "card"
    (folder / "images").mkdir(parents=True)
    rows = ["path,label,split"]
    for split in ("train", "val", "test"):
        for label, source in (("a", "CT_small.dcm"), ("b", "MR_small.dcm")):
            shutil.copy(get_testdata_file(source), folder / "images" / f"{split}_{label}.dcm")
            rows.append(f"{split}_{label}.dcm,{label},{split}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")

    def card(modality: str) -> str:
        (folder / "card.yaml").write_text(f"name: scans\nmodality: {modality}\ntask: binary\nclasses: [{{name: a}}, "
                                          "{name: b}]\nimage_root: images\nmanifest: manifest.csv\n")
        return str(folder / "card.yaml")

    code, out, _ = run(capsys, "validate", card("cxr"))
    assert code == 1 and "no problems found in the rows" in out  # the manifest itself is fine
    assert out.splitlines()[-1] == "card scans: problems in the images' modality (above)"
    assert ("images: 6 of the 6 DICOM files are of modality CT (3: line 2: train_a.dcm, ...); MR (3: line 3: "
            "train_b.dcm, ...), but card 'scans' says 'cxr', whose images are DICOM CR or DX or OT or RG or SC") in out
    code, _, err = run(capsys, "validate", card("chest x-ray"), "--strict")
    assert code == 2 and "6 of the 6 DICOM files are of modality CT" in err and "Set the card's modality" in err
    code, out, _ = run(capsys, "validate", card("CT"))
    assert code == 1 and "3 of the 6 DICOM files are of modality MR (3: line 3: train_b.dcm, ...)" in out
    for agreeing in ("CT and MRI", "cross-sectional imaging"):  # every file agrees / a modality cbm does not know
        code, out, _ = run(capsys, "validate", card(agreeing))
        assert code == 0 and "DICOM files are of modality" not in out
    code, out, _ = run(capsys, "validate", card("cxr"), "--no-read")  # nothing read: nothing said
    assert code == 0 and "DICOM files" not in out
    # a name typed into the Modality field is never repeated: only DICOM's defined terms are shown
    import pydicom

    ds = pydicom.dcmread(folder / "images" / "train_a.dcm")
    ds.Modality = "DOE^JANE"
    ds.save_as(folder / "images" / "train_a.dcm")
    code, out, _ = run(capsys, "validate", card("cxr"))
    assert code == 1 and "DOE" not in out and "5 of the 5 DICOM files are of modality CT (2: line 4: val_a.dcm" in out


def test_every_modality_name_the_prompt_templates_know_is_one_the_image_checks_know():
    from cbm.encoders.text import _MODALITY_ALIASES, MODALITY_TEMPLATES
    from cbm.image_checks import dicom_modalities

    for name in (*_MODALITY_ALIASES, *MODALITY_TEMPLATES):
        assert dicom_modalities(name) is not None, name
    assert dicom_modalities("dermatoscopy") == dicom_modalities("dermoscopy") and dicom_modalities("cxr")[1] is False
    assert dicom_modalities("skin lesion photographs")[1] and dicom_modalities("cross-sectional imaging") is None
