"""cbm.data manifests: one file in two splits is a leak whatever its spelling, paths stay inside the
image folder unless the card says otherwise, and every malformed CSV is a ManifestError naming its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_data_card import make_card

from cbm.cli import main
from cbm.data import ManifestError, load_card, read_manifest
from cbm.errors import InputError

ROWS = [(f"{label}_{split}_{i}.png", label, split) for split, n in (("train", 2), ("val", 1), ("test", 1))
        for label in ("nevus", "melanoma") for i in range(n)]


def with_row(tmp_path: Path, path: str, split: str = "test", **card: object) -> Path:
    """A card folder whose manifest lists ``ROWS`` and then ``path`` (a nevus) in ``split``."""
    folder = make_card(tmp_path / "toy", rows=ROWS, **card)
    images = folder / "images"
    os.symlink("nevus_train_0.png", images / "link.png")
    os.link(images / "nevus_train_0.png", images / "hard.png")
    with open(folder / "manifest.csv", "a") as fh:
        fh.write(f"{path},nevus,{split}\n")
    return folder


@pytest.mark.parametrize("spelling", ["./nevus_train_0.png", "sub/../nevus_train_0.png", "<root>/nevus_train_0.png",
                                      "<root>//./nevus_train_0.png", "link.png", "hard.png"])
def test_a_training_image_spelled_otherwise_in_test_is_a_leak(tmp_path, spelling):
    folder = tmp_path / "toy"
    folder = with_row(tmp_path, spelling.replace("<root>", str(folder / "images")))
    card = load_card(folder)
    for strict in (True, False):  # a leak raises even when other bad rows are only dropped
        with pytest.raises(ManifestError, match=r"manifest .*manifest.csv: has \d problem\(s\): 1 rows listing a file "
                                                r"already listed in another split, a leak between splits") as err:
            card.manifest(strict=strict)
        assert "(train on line 2, test on line 10)" in str(err.value)
        assert [p.kind for p in err.value.report.problems] == ["duplicate_across_splits"]
    report = card.validate()  # reports it with the rest, without raising
    assert [p.kind for p in report.problems] == ["duplicate_across_splits"] and report.problems[0].lines == (10,)


def test_a_file_repeated_within_its_split_is_dropped_or_refused(tmp_path):
    card = load_card(with_row(tmp_path, "./nevus_train_0.png", split="train"))
    assert [r.path for r in card.manifest()].count("./nevus_train_0.png") == 0
    assert len(card.manifest().split("train")) == 4
    with pytest.raises(ManifestError, match=r"1 rows repeating a file already listed in the same split: "
                                            r"\./nevus_train_0.png \(lines 2 and 10\)"):
        card.manifest(strict=True)


@pytest.mark.parametrize("outside", ["../card.yaml", "../../../../../etc/passwd", "/etc/passwd", "//nevus_train_0.png"])
def test_paths_leaving_the_image_folder_are_refused_unless_the_card_allows_them(tmp_path, outside):
    card = load_card(with_row(tmp_path, outside))
    with pytest.raises(ManifestError, match=r"rows whose path leaves the image folder .*allow_outside_root: true") as err:
        card.manifest(check_files=False)
    assert repr(outside) in str(err.value)
    allowed = load_card(with_row(tmp_path / "allowed", outside, allow_outside_root=True))
    rows = allowed.manifest(check_files=False)
    assert rows[-1].path == outside


def test_outside_paths_allowed_are_still_checked_for_leaks(tmp_path):
    folder = make_card(tmp_path / "toy", rows=ROWS, allow_outside_root=True)
    with open(folder / "manifest.csv", "a") as fh:
        fh.write(f"{folder}/images/../images/nevus_train_0.png,nevus,test\n")
    with pytest.raises(ManifestError, match="a leak between splits"):
        load_card(folder).manifest()


@pytest.mark.parametrize("name", ["x" * 300 + ".png", "é" * 300 + ".png", "sub\\" + "x" * 300 + ".png"])
def test_a_path_the_file_system_refuses_is_a_row_problem(tmp_path, name):
    card = load_card(with_row(tmp_path, name, split="train"))
    report = card.validate()
    bad = next(p for p in report.problems if p.kind == "bad_path")
    assert "File name too long" in bad.message and bad.lines == (10,) and len(bad.message) < 400


@pytest.mark.parametrize("content, field, fragment", [
    ("", None, "is empty"),
    ("path,label\na.png,nevus\n", "line 1", "lacks the column(s) split"),
    ("path;label;split\na.png;nevus;train\n", "line 1", "its columns are separated by ';', not commas: save it"),
    ("path\tlabel\tsplit\na.png\tnevus\ttrain\n", "line 1", "its columns are separated by tabs, not commas: save it"),
    ("Path,Label,split\na.png,nevus,train\n", "line 1", "case-sensitive: rename 'Path' to 'path', 'Label' to 'label'"),
    ("path,label,split\na.png,nevus,train,extra\n", "line 2", "has 4 field(s) but the header has 3"),
    ("path,label,split\na.png,nevus,train\n\x00\n", "line 3", "contains NUL bytes"),
    ("path,label,split\r\na.png,nevus,train\r\nb.png,nev\rus,train\r\n", "line 3",
     "line 3 holds a carriage return (\\r) inside it, which ends its row there"),
    # a stray \r that splits no row (here it only adds an empty line) is not blamed for another row's fields
    ("path,label,split\na.png,nevus,train,extra\nb.png,nevus,train\r\r\n", "line 2", "has 4 field(s) but the header has 3"),
    (b"path,label,split\n\xff.png,nevus,train\n", "line 2", "is not UTF-8 text (byte 0xff at offset 17"),
    ("path,label,split\n" + "y" * 200_000 + ",nevus,train\n", "line 2", "is not a valid CSV (field larger than field limit"),
])
def test_malformed_csv_is_a_manifest_error_naming_the_line(tmp_path, content, field, fragment):
    path = tmp_path / "m.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError) as err:
        read_manifest(path, class_names=["nevus", "melanoma"], image_root=tmp_path, check_files=False)
    assert isinstance(err.value, InputError) and err.value.report is None
    assert str(path) in str(err.value) and fragment in str(err.value) and err.value.field == field


def test_a_windows_path_separator_is_named_with_its_fix(tmp_path):
    """``sub\\a.png`` from a Windows tool names no file here; the report says to write ``sub/a.png``."""
    folder = make_card(tmp_path / "toy", rows=ROWS)
    (folder / "images" / "sub").mkdir()
    (folder / "images" / "nevus_test_0.png").rename(folder / "images" / "sub" / "nevus_test_0.png")
    text = (folder / "manifest.csv").read_text().replace("nevus_test_0.png", "sub\\nevus_test_0.png")
    (folder / "manifest.csv").write_text(text)
    report = load_card(folder).validate()
    [problem] = report.problems
    assert problem.kind == "windows_separator" and problem.lines == (8,)
    assert "separates folders with '\\'" in problem.message and "sub/nevus_test_0.png" in problem.message
    assert "'sub\\nevus_test_0.png' (line 8" in problem.message  # as written: one backslash, where repr doubles it


@pytest.mark.parametrize("written, on_disk", [("NFD", "NFC"), ("NFC", "NFD")])
def test_a_path_in_another_unicode_form_finds_its_file(tmp_path, written, on_disk):
    """A manifest written on macOS spells "lésion" decomposed, the file here is composed (or the reverse):
    the same name to a reader, so the row finds its file, and that file listed again is still a leak."""
    import unicodedata

    folder = make_card(tmp_path / "toy", rows=ROWS)
    name = "scans ünï/lésion 1.png"
    (folder / "images" / unicodedata.normalize(on_disk, "scans ünï")).mkdir()
    (folder / "images" / "nevus_train_0.png").rename(folder / "images" / unicodedata.normalize(on_disk, name))
    text = (folder / "manifest.csv").read_text().replace("nevus_train_0.png", unicodedata.normalize(written, name))
    (folder / "manifest.csv").write_text(text)
    card = load_card(folder)
    assert card.validate().ok
    row = next(r for r in card.manifest() if r.line == 2)
    assert card.manifest().file(row).is_file() and row.split == "train"
    unchecked = card.manifest(check_files=False)  # as `cbm explain CARD` reads it: the row as written
    assert unchecked.file(next(r for r in unchecked if r.line == 2)).is_file()
    with open(folder / "manifest.csv", "a") as fh:
        fh.write(f"{unicodedata.normalize(on_disk, name)},nevus,test\n")
    assert [p.kind for p in card.validate().problems] == ["duplicate_across_splits"]


def test_cbm_validate_reports_a_leak_and_strict_ends_in_one_line(tmp_path, capsys):
    folder = with_row(tmp_path, "./nevus_train_0.png")
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "rows listing a file already listed in another split" in out and "train on line 2, test on line 10" in out
    assert main(["validate", str(folder), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cbm validate: error: manifest ") and "Traceback" not in err


def test_cbm_validate_names_the_card_line_in_one_line(tmp_path, capsys):
    folder = make_card(tmp_path / "toy", rows=ROWS)
    (folder / "card.yaml").write_text((folder / "card.yaml").read_text() + "name: again\n")
    assert main(["validate", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{folder / 'card.yaml'}: line " in err and "gives the key 'name' twice" in err


def test_a_class_short_of_the_cards_promise_is_a_problem(tmp_path):
    """validate (and --strict) holds a manifest to its split rule's min_per_class."""
    from cbm.data import read_manifest
    from cbm.errors import ManifestError

    rows = ["path,label,split"] + [f"{s}_{c}{i}.png,{c},{s}" for s in ("train", "val", "test")
                                   for c, n in (("a", 3), ("b", 1)) for i in range(n)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    kw = dict(class_names=["a", "b"], image_root=tmp_path, check_files=False)
    report = read_manifest(tmp_path / "m.csv", min_per_class={"train": 2, "val": 1}, **kw).report
    short = [p for p in report.problems if p.kind == "short_class"]
    assert len(short) == 1 and "'train'" in short[0].message and "b 1" in short[0].message
    assert not [p for p in read_manifest(tmp_path / "m.csv", min_per_class=1, **kw).report.problems if p.kind == "short_class"]
    with pytest.raises(ManifestError, match="promised 2 images"):
        read_manifest(tmp_path / "m.csv", min_per_class=2, strict=True, **kw)


def test_a_second_label_for_one_file_is_its_own_problem(tmp_path):
    card = load_card(with_row(tmp_path, "./melanoma_train_0.png", split="train"))  # listed as melanoma on line 4
    with pytest.raises(ManifestError, match=r"1 rows giving a file already listed in the same split another label "
                                            r".*'melanoma' on line 4, 'nevus' on line 10"):
        card.manifest(strict=True)
    assert [r.label for r in card.manifest() if r.path == "melanoma_train_0.png"] == ["melanoma"]


def test_labels_match_in_either_unicode_form_and_quoted_line_breaks_stay(tmp_path):
    import unicodedata

    composed = unicodedata.normalize("NFC", "nævus bénin")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    (tmp_path / "m.csv").write_text(f'path,label,split,note\na.png,{decomposed},train,"marked\nby hand"\n'
                                    f"b.png,melanoma,train,\n")
    manifest = read_manifest(tmp_path / "m.csv", class_names=[composed, "melanoma"], image_root=tmp_path,
                             check_files=False)
    assert [p.kind for p in manifest.report.problems] == ["empty_split", "empty_split"]  # (no val, no test here)
    first = next(iter(manifest))
    assert first.label == composed and first.label_index == 0 and first.extra["note"] == "marked\nby hand"
    assert [r.line for r in manifest] == [2, 4]
    # one file listed again under the other form of the same label is a repeat, not another label
    (tmp_path / "m2.csv").write_text(f"path,label,split\na.png,{decomposed},train\na.png,{composed},train\n")
    again = read_manifest(tmp_path / "m2.csv", class_names=[composed, "melanoma"], image_root=tmp_path, check_files=False)
    assert "duplicate_path" in [p.kind for p in again.report.problems]
    assert "conflicting_label" not in [p.kind for p in again.report.problems]


def _with_columns(tmp_path: Path, column: str, values: list[str], **card: object) -> Path:
    """A card folder whose manifest has one more ``column``, filled row by row from ``values``."""
    folder = make_card(tmp_path / "toy", rows=ROWS, **card)
    lines = (folder / "manifest.csv").read_text().splitlines()
    out = [lines[0] + f",{column}"] + [f"{row},{v}" for row, v in zip(lines[1:], values)]
    (folder / "manifest.csv").write_text("\n".join(out) + "\n")
    return folder


def test_concept_truth_cells_are_checked_with_the_manifest_before_any_run(tmp_path, capsys):
    truth = {"concept_truth": {"irregular border": "t_border"}}
    ok = ["1", "0", "1.00", "0.0", "NA", "", "yes", "absent"]  # numbers equal to 1 or 0; NA and empty: not annotated
    assert len(load_card(_with_columns(tmp_path / "a", "t_border", ok, **truth)).manifest()) == len(ROWS)
    card = load_card(_with_columns(tmp_path / "b", "t_border", ok[:5] + ["maybe"] + ok[6:], **truth))
    with pytest.raises(ManifestError, match=r"1 rows with a concept truth cell that is none of 1/0.*'maybe' in "
                                            r"'t_border' \(line 7\)"):
        card.manifest()  # always: a run would stop on it only after encoding every image
    assert main(["validate", str(card.path)]) == 1 and "'maybe' in 't_border'" in capsys.readouterr().out
    two = {"concept_truth": {"irregular border": "t_border", "dots": "t_dots"}}
    unannotated = load_card(_with_columns(tmp_path / "c", "age", ok, **two))
    with pytest.raises(ManifestError, match=r"has no column\(s\) t_border, which the card's concept_truth") as err:
        load_card(_with_columns(tmp_path / "d", "t_dots", ok, **two)).manifest()  # one of two: a misspelt name
    assert err.value.field == "line 1"
    # none of them: a manifest built without the annotations (a card may offer that) is read as not annotated
    assert len(unannotated.manifest()) == len(ROWS)


@pytest.mark.parametrize("written", ["t_borders", "T_Border"])
def test_every_truth_column_misspelt_is_named_not_read_as_unannotated(tmp_path, written):
    """A card whose truth column the manifest spells otherwise (a letter, the case) was read as not
    annotated, with one warning: its runs measured no faithfulness, and `cbm validate` found no problem."""
    card = load_card(_with_columns(tmp_path, written, ["1", "0"] * 4, concept_truth={"irregular border": "t_border"}))
    with pytest.raises(ManifestError, match=rf"has no column\(s\) t_border, .*'t_border' may be '{written}'") as err:
        card.manifest()
    assert err.value.field == "line 1" and "correct the names in the card's concept_truth" in str(err.value)


def test_a_patient_in_two_splits_is_a_leak(tmp_path):
    keys = ["p1", "p2", "p3", "p4", "p5", "p6", "p1", "p8"]  # p1: train (line 2) and test (line 8)
    card = load_card(_with_columns(tmp_path, "patient_key", keys))
    with pytest.raises(ManifestError, match=r"1 rows of a patient already listed in another split.*patient_key 'p1' "
                                            r"\(train on line 2, test on line 8\)"):
        card.manifest()
    assert [p.kind for p in card.validate().problems] == ["patient_across_splits"]


def test_paths_written_from_the_manifests_folder_are_told_so(tmp_path):
    """A manifest kept in a subfolder, its paths written from there: not "does not exist" alone, but
    that paths are relative to the image folder; a path that leaves that folder says so too."""
    folder = make_card(tmp_path / "toy", rows=ROWS, manifest="lists/m.csv")
    (folder / "lists").mkdir()
    (folder / "images" / "nevus_train_0.png").rename(folder / "lists" / "nevus_train_0.png")
    (folder / "manifest.csv").rename(folder / "lists" / "m.csv")
    [problem] = load_card(folder).validate().problems
    assert problem.kind == "relative_to_manifest" and problem.lines == (2,)
    assert "names a file from the manifest's folder" in problem.message and "set the card's image_root" in problem.message
    text = (folder / "lists" / "m.csv").read_text().replace("melanoma_train_0.png", "../../elsewhere.png")
    (folder / "lists" / "m.csv").write_text(text)
    leaving = next(p for p in load_card(folder).validate().problems if p.kind == "outside_root")
    assert "(paths are relative to it, not to the manifest;" in leaving.message



def test_an_absolute_path_through_the_image_folders_link_target_is_inside(tmp_path):
    """An image folder that is a link (``images -> /data/derm/images``): a manifest row written with the
    target's absolute path names a file inside the image folder, as the docs say a link does."""
    real = make_card(tmp_path / "real", rows=ROWS)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "card.yaml").write_text((real / "card.yaml").read_text())
    os.symlink(real / "images", linked / "images")
    rows = [(str(real / "images" / p) if i == 0 else p, label, split) for i, (p, label, split) in enumerate(ROWS)]
    (linked / "manifest.csv").write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in rows))
    manifest = load_card(linked).manifest(strict=True)
    assert len(manifest) == len(ROWS)
    (linked / "manifest.csv").write_text("path,label,split\n" + "".join(f"{p},{lab},{s}\n" for p, lab, s in ROWS)
                                         + f"{tmp_path / 'real' / 'card.yaml'},nevus,test\n")
    with pytest.raises(ManifestError, match="leaves the image folder"):  # beside the target is still outside
        load_card(linked).manifest(check_files=False)


def test_a_class_with_few_images_is_noted_by_validate_and_warned_of_by_fitting(tmp_path, capsys, caplog):
    from cbm.pipeline.inputs import check_every_class_trains, check_manifest_classes

    folder = make_card(tmp_path / "toy", rows=ROWS)  # 2 training images and 1 validation image per class
    assert main(["validate", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "note: few images of nevus (train 2, val 1, test 1)" in out and "no problems found" in out
    card = load_card(folder)
    with caplog.at_level("WARNING"):
        check_manifest_classes(card)
    assert "few images of class 'melanoma' (train 2, val 1, test 1)" in caplog.text
    with pytest.raises(ManifestError, match=r"manifest .*manifest.csv: card 'toy': no usable training images of class"):
        check_every_class_trains(card, ["nevus"])  # an InputError, as the docs' error family says
    plenty = make_card(tmp_path / "plenty", rows=[(f"{lab}_{s}_{i}.png", lab, s) for s, n in (("train", 10), ("val", 5), ("test", 1))
                                                   for lab in ("nevus", "melanoma") for i in range(n)])
    assert main(["validate", str(plenty)]) == 0 and "few images" not in capsys.readouterr().out
    # only the split that is short is named: 32 training images are not "under 10"
    val_short = make_card(tmp_path / "val-short", rows=[(f"{lab}_{s}_{i}.png", lab, s) for s, n in (("train", 12), ("val", 3),
                                                        ("test", 1)) for lab in ("nevus", "melanoma") for i in range(n)])
    assert main(["validate", str(val_short)]) == 0
    out = capsys.readouterr().out
    assert "few images of nevus (train 12, val 3, test 1): validation can hardly judge it on under 5 images;" in out
    assert "training images" not in out


def test_a_missing_file_and_an_unknown_split_name_say_what_was_probably_meant(tmp_path, monkeypatch):
    folder = make_card(tmp_path / "toy", rows=ROWS)
    (folder / "images" / "nevus_train_0.png").rename(folder / "images" / "nevus_train_0.PNG")
    monkeypatch.chdir(tmp_path)  # "toy/images/nevus_train_1.png" names a file from here, not from the image folder
    text = (folder / "manifest.csv").read_text().replace("nevus_train_1.png", "toy/images/nevus_train_1.png")
    (folder / "manifest.csv").write_text(text.replace("melanoma_val_0.png,melanoma,val", "melanoma_val_0.png,melanoma,validation")
                                         .replace("nevus_test_0.png,nevus,test", "nevus_test_0.png,nevus,Test"))
    problems = {p.kind: p.message for p in load_card(folder).validate().problems}
    assert "nevus_train_0.PNG exists there; file names are case-sensitive" in problems["missing_file"]
    assert f"it names a file from the current folder {tmp_path}" in problems["missing_file"]
    assert "'validation' (line 7: did you mean 'val'?)" in problems["unknown_split"]
    assert "'Test' (line 8: did you mean 'test'?)" in problems["unknown_split"]


def test_a_class_without_test_images_is_noted(tmp_path):
    """A test split without a class: a run reported its class averages over the others (macro-F1 100 %
    with one class left) and no AUROC, and `cbm validate` said nothing of it."""
    folder = make_card(tmp_path / "toy", rows=ROWS)
    lines = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").write_text("\n".join(r for r in lines if ",nevus,test" not in r) + "\n")
    summary = load_card(folder).validate().summary()
    assert "note: no test image of nevus: a run measures nothing of it on test" in summary


def test_unnamed_columns_of_a_spreadsheet_export_are_named_as_such(tmp_path):
    """Two empty columns at the end of the header (a spreadsheet's export) were reported as "repeats the
    column(s)  in its header", naming nothing."""
    (tmp_path / "m.csv").write_text("path,label,split,,\na.png,nevus,train,,\n")
    with pytest.raises(ManifestError, match=r"has 2 columns without a name in its header \(columns 4, 5\).*Delete the "
                                            r"unnamed columns") as err:
        read_manifest(tmp_path / "m.csv", class_names=["nevus", "melanoma"], image_root=tmp_path, check_files=False)
    assert str(tmp_path / "m.csv") in str(err.value) and err.value.field == "line 1"


def test_excels_separator_hint_above_the_header_is_named(tmp_path):
    """Excel may write a first line "sep=," above the header: the error quoted it as the header and said
    only which columns a manifest needs."""
    (tmp_path / "m.csv").write_text("sep=,\r\npath,label,split\r\na.png,nevus,train\r\n")
    with pytest.raises(ManifestError, match=r"its first line is Excel's separator hint 'sep=,', not the header: delete "
                                            r"that line") as err:
        read_manifest(tmp_path / "m.csv", class_names=["nevus", "melanoma"], image_root=tmp_path, check_files=False)
    assert str(tmp_path / "m.csv") in str(err.value)


def test_a_manifest_not_in_utf8_names_its_encoding_or_line(tmp_path):
    """A Latin-1 or Windows export was "not UTF-8 text (byte 51)": the offset, read as a byte, and no line;
    a UTF-16 export ("Unicode text") was "byte 0"."""
    (tmp_path / "m.csv").write_bytes("path,label,split\na.png,nevus,train\né.png,nevus,train\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"is not UTF-8 text \(byte 0xe9 at offset 35.*CSV UTF-8") as err:
        read_manifest(tmp_path / "m.csv", class_names=["nevus", "melanoma"], image_root=tmp_path, check_files=False)
    assert err.value.field == "line 3"
    (tmp_path / "m.csv").write_bytes("path,label,split\na.png,nevus,train\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"is UTF-16 text .*not UTF-8"):
        read_manifest(tmp_path / "m.csv", class_names=["nevus", "melanoma"], image_root=tmp_path, check_files=False)
