"""``cbm make-splits`` on the real published metadata of the built-in cards' sources.

The files come with the torchxrayvision package (its wheel ships the label files of NIH
ChestX-ray14, CheXpert, VinDr-CXR, the NLM Open-i release, PadChest and RSNA pneumonia under
``torchxrayvision/data/``; no images). Each card's manifest is built without images
(``check_images=False``) and its counts are held against what the card's ``split_rule`` states.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cbm.cli import main
from cbm.data import load_card, make_splits
from cbm.errors import ManifestError

_SPEC = importlib.util.find_spec("torchxrayvision")  # found without importing it (it needs imageio)
DATA = Path(_SPEC.submodule_search_locations[0]) / "data" if _SPEC else None
NIH = "Data_Entry_2017_v2020.csv.gz"
PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def real(name: str) -> Path:
    """A metadata file of the torchxrayvision package (a missing package fails: it is a test dependency)."""
    assert DATA is not None, "torchxrayvision is a test dependency: make setup installs it (pip install --no-deps torchxrayvision)"
    return DATA / name


pytestmark = pytest.mark.usefixtures("no_card_env")  # no CBM_*_ROOT, no CBM_CARDS_PATH (tests/conftest.py)


def build(card: str, *files: str, **kwargs):
    return make_splits(card, [real(f) for f in files], write=False, salt="test", check_images=False, **kwargs)


def per_split(result) -> dict[str, int]:
    return {split: sum(c.values()) for split, c in result.counts().items()}


def numbers(counts: dict[str, int]) -> str:
    """1,400/175/175 as a card's split_rule writes them (train, val, test_id, test)."""
    return "/".join(f"{counts[s]:,}" for s in ("train", "val", "test_id", "test") if s in counts)


def patients_are_disjoint(rows: list[dict[str, str]]) -> None:
    splits = defaultdict(set)
    for r in rows:
        if r.get("patient_key"):
            splits[r["patient_key"]].add(r["split"])
    assert splits, "no patient_key written"
    assert not [p for p, s in splits.items() if len(s) > 1], "a patient is in several splits"


# ---------------------------------------------------------------------------- chest x-ray cards
def test_nih_cxr14_on_the_published_data_entry_file():
    result = build("nih-cxr14", NIH)
    assert result.n_source_rows == 112120
    assert per_split(result) == {"train": 8064, "val": 1159, "test": 2300}
    assert Counter(r["label"] for r in result.rows) == {
        "atelectasis": 4215, "cardiomegaly": 1093, "pleural effusion": 3955, "consolidation": 1310, "edema": 628, "pneumonia": 322,
    }
    assert numbers(per_split(result)) in load_card("nih-cxr14").split_rule
    patients_are_disjoint(result.rows)


# train (no finding, effusion), then val, test_id and test (balanced: per class)
CONFOUNDED = {"nih-sex": ((1934, 1342), 168, 168, 1439), "nih-age": ((930, 772), 97, 96, 425), "nih-pos": ((2874, 1041), 130, 130, 1579)}


@pytest.mark.parametrize("name, column", [("nih-sex", "sex"), ("nih-age", "age_group"), ("nih-pos", "view")])
def test_nih_confounded_cards_reverse_the_cue_in_test(name, column):
    card = load_card(name)
    result = build(name, NIH)
    counts = per_split(result)
    assert numbers(counts) in card.split_rule
    (train_nf, train_pe), val, test_id, test = CONFOUNDED[name]
    assert result.counts() == {"train": {"no finding": train_nf, "pleural effusion": train_pe},
                               **{s: {"no finding": n, "pleural effusion": n} for s, n in (("val", val), ("test", test), ("test_id", test_id))}}
    for r in result.rows:  # the cue goes with the class in domain and against it in test: fully reversed
        groups = card.confounder.ood_groups if r["split"] == "test" else card.confounder.id_groups
        assert r[column] == groups[r["label"]], r
    by_split = result.counts()
    for split in ("val", "test_id", "test"):
        assert by_split[split]["no finding"] == by_split[split]["pleural effusion"] > 0
    patients_are_disjoint(result.rows)


@pytest.mark.parametrize("name", ["nih-sex", "nih-cxr14"])
def test_an_image_gone_from_the_source_moves_no_other_image(tmp_path, name):
    """One image fewer (deleted, or not unpacked) removes its own row, may let a few others in (one
    under the cap; a patient no longer on both sides of a confounded card keeps all their images),
    and leaves every other image in its split but for the few at a split's boundary. With one random
    generator for every draw, deleting one of nih-sex's 6,949 images moved 460 of the 3,039 images
    both manifests kept."""
    full = build(name, NIH)
    gone = next(r["path"] for r in full.rows if r["split"] == "train")
    with gzip.open(real(NIH), "rt", encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith(gone + ",")]
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text("".join(lines), encoding="utf-8")
    fewer = make_splits(name, [tmp_path / "Data_Entry_2017_v2020.csv"], write=False, salt="test", check_images=False)
    before, after = ({r["path"]: r["split"] for r in m.rows} for m in (full, fewer))
    assert gone not in after and len(set(after) - set(before)) <= 10
    moved = [p for p in set(before) & set(after) if before[p] != after[p]]
    assert len(moved) <= 6, moved


def test_chexpert_on_the_published_train_file():
    result = build("chexpert", "chexpert_train.csv.gz")
    assert per_split(result) == {"train": 32190, "val": 4026, "test": 4020}
    assert Counter(r["label"] for r in result.rows) == {
        "no finding": 16974, "cardiomegaly": 2978, "edema": 6755, "consolidation": 2001, "atelectasis": 4120, "pleural effusion": 7408,
    }
    assert numbers(per_split(result)) in load_card("chexpert").split_rule
    assert all("/patient" in r["path"] and r["path"].endswith("_frontal.jpg") for r in result.rows)
    patients_are_disjoint(result.rows)


def test_vindr_cxr_reaches_knobo_sizes_by_the_readers_majority():
    card = load_card("vindr-cxr")
    result = build("vindr-cxr", "vinbigdata-train.csv.gz")
    assert result.counts() == {split: Counter({c: n for c in card.class_names}) for split, n in (("train", 200), ("val", 25), ("test", 25))}
    assert "1400/175/175" in card.split_rule
    # 15,000 images: 14,636 with a majority class (12,886 of them over the cap), 303 whose classes
    # only one reader named, 61 with none of the seven classes
    assert result.dropped == {"images over max_per_class 250": 12886, "rows whose classes fewer than 2 readers named": 303,
                              "rows with no class": 61}


def test_vindr_cxr_class_counts_before_the_cap_are_the_cards(tmp_path):
    """The per-class counts the card states are what its rule gives on the release, before the cap."""
    card = load_card("vindr-cxr")
    shutil.copytree(card.folder, tmp_path / "vindr-cxr", ignore=shutil.ignore_patterns("manifest.csv", "images"))
    text = (tmp_path / "vindr-cxr" / "card.yaml").read_text()
    (tmp_path / "vindr-cxr" / "card.yaml").write_text(re.sub(r"\n  (max|min)_per_class: [^\n]*", "", text))
    result = make_splits(tmp_path / "vindr-cxr", [real("vinbigdata-train.csv.gz")], write=False, salt="test", check_images=False)
    counts = Counter(r["label"] for r in result.rows)
    assert sum(counts.values()) == 14636 and counts["pleural thickening"] == 485 and counts["pulmonary fibrosis"] == 639
    stated = " ".join(card.split_rule.split())
    assert [f"{n:,} {cls}" for cls, n in counts.items() if f"{n:,} {cls}" not in stated] == []


def test_vindr_cxr_fails_when_a_class_is_under_the_card_minimum(tmp_path):
    """The old single-finding rule gave lung opacity 1 image; a short class is now an error, not a manifest."""
    lines = gzip.open(real("vinbigdata-train.csv.gz"), "rt").read().splitlines()
    opacity = sorted({line.split(",")[0] for line in lines if ",Lung Opacity," in line})
    gone = set(opacity[40:])  # only 40 images with a lung-opacity reading left
    (tmp_path / "train.csv").write_text("\n".join(line for line in lines if line.split(",")[0] not in gone) + "\n")
    with pytest.raises(ValueError, match=r"fewer images than the card's make_splits.min_per_class promises: lung opacity has \d+ in train "
                                         r"\(at least 200 promised\).*--allow-short"):
        make_splits("vindr-cxr", [tmp_path / "train.csv"], write=False, check_images=False)
    result = make_splits("vindr-cxr", [tmp_path / "train.csv"], write=False, check_images=False, allow_short=True)
    assert result.counts()["train"]["lung opacity"] < 200 and any("lung opacity" in s for s in result.short)


def test_openi_reads_the_nlm_release():
    result = build("openi", "NLMCXR_reports.tgz", "nlmcxr_dicom_metadata.csv.gz")
    assert result.layout == "default" and result.n_source_rows == 7467
    assert per_split(result) == {"train": 876, "val": 438, "test": 876}
    assert Counter(r["label"] for r in result.rows) == {"normal": 1530, "cardiomegaly": 282, "lung opacity": 378}
    card = load_card("openi")
    assert "876/438/876" in card.split_rule and "1,530 normal, 282" in card.split_rule
    assert {r["View Position"] for r in result.rows} == {"PA", "AP"}
    assert all(r["path"].startswith("CXR") and r["path"].endswith(".png") for r in result.rows)
    patients_are_disjoint(result.rows)  # one report (study) in one split


def test_padchest_on_the_published_label_file():
    result = build("padchest", PADCHEST)
    assert per_split(result) == {"train": 2849, "val": 357, "test": 355}
    assert Counter(r["label"] for r in result.rows) == {
        "normal": 1000, "cardiomegaly": 1000, "pleural effusion": 561, "pneumonia": 462, "nodule": 538,
    }
    assert "2,849/357/355" in load_card("padchest").split_rule
    assert {r["Projection"] for r in result.rows} <= {"PA", "AP", "AP_horizontal"}
    assert all(r["path"].split("/")[0].isdigit() and r["path"].endswith(".png") for r in result.rows)
    patients_are_disjoint(result.rows)


def test_rsna_pneumonia_from_the_zip_of_the_label_file():
    result = build("rsna-pneumonia", "kaggle_stage_2_train_labels.csv.zip")
    assert result.n_source_rows == 30227
    assert per_split(result) == {"train": 21348, "val": 2668, "test": 2668}
    assert Counter(r["label"] for r in result.rows) == {"pneumonia": 6012, "no pneumonia": 20672}
    assert "21,348/2,668/2,668" in load_card("rsna-pneumonia").split_rule
    patients_are_disjoint(result.rows)


# ---------------------------------------------------------------------------- messages
def test_missing_images_name_the_images_option_and_the_variable_first(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        make_splits("vindr-cxr", [real("vinbigdata-train.csv.gz")], images=tmp_path / "imgs", write=False)
    message = str(err.value)
    assert message.index("--images") < message.index("metadata") and "CBM_VINDR_CXR_ROOT=DIR" in message
    assert "--no-image-check" in message and ".dicom" in message


def test_a_csv_given_to_a_folder_card_shows_the_folder_layout(tmp_path, capsys):
    code = main(["make-splits", "pneumonia", "--metadata", str(real("vinbigdata-train.csv.gz")), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "reads its metadata from the image folder" in err and "train/NORMAL/IM-0115-0001.jpeg" in err
    assert "finding" not in err and "(?P<" not in err  # no internal pattern names


def test_openi_names_its_layouts_when_neither_fits(tmp_path):
    (tmp_path / "reports.csv").write_text("uid,Findings\n1,none\n")
    with pytest.raises(ValueError, match=r"lacks the column.*other layouts did not fit either: layout kaggle"):
        make_splits("openi", [tmp_path / "reports.csv"], write=False, check_images=False)


def test_compressed_metadata_is_read_directly(tmp_path):
    """A .csv.gz and a zip holding one CSV give the same manifest as the plain CSV."""
    plain = tmp_path / "Data_Entry_2017.csv"
    with gzip.open(real(NIH), "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    lines = plain.read_text().splitlines()[:4001]
    plain.write_text("\n".join(lines) + "\n")
    (tmp_path / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(plain.read_bytes()))
    import zipfile

    with zipfile.ZipFile(tmp_path / "entry.zip", "w") as zf:
        zf.write(plain, "Data_Entry_2017.csv")
    results = [make_splits("nih-cxr14", [tmp_path / f], write=False, salt="s", check_images=False).rows
               for f in ("Data_Entry_2017.csv", "Data_Entry_2017.csv.gz", "entry.zip")]
    assert results[0] == results[1] == results[2] and len(results[0]) > 300
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as zf:
        zf.write(plain, "a.csv")
        zf.write(plain, "b.csv")
    with pytest.raises(ValueError, match=r"two.zip: is a zip holding 2 CSV files \(a.csv, b.csv"):
        make_splits("nih-cxr14", [tmp_path / "two.zip"], write=False)
    (tmp_path / "binary.csv").write_bytes(b"Image Index,Finding Labels\n\x00\x01\x02\n")
    with pytest.raises(ValueError, match=r"binary.csv: is not a text CSV \(it holds NUL bytes\).*\.csv\.gz"):
        make_splits("nih-cxr14", [tmp_path / "binary.csv"], write=False)


def test_a_wide_file_lists_a_bounded_number_of_columns(tmp_path):
    with pytest.raises(ValueError) as err:
        make_splits("ham10000", [real("nlmcxr_dicom_metadata.csv.gz")], write=False)
    message = str(err.value)
    assert "lacks the column(s)" in message and "and 145 more" in message and len(message) < 1500


# ---------------------------------------------------------------------------- NIH's own file, image folders
def nih_subset(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    """The first ``n`` rows of the published Data_Entry file, and their image names."""
    lines = gzip.open(real(NIH), "rt").read().splitlines()[: n + 1]
    meta = tmp_path / "Data_Entry_2017.csv"
    meta.write_text("\n".join(lines) + "\n")
    return meta, [line.split(",")[0] for line in lines[1:]]


def nih_images(folder: Path, names: list[str]) -> Path:
    """The images laid out as the Kaggle mirror unpacks them (images_001/images/...)."""
    (folder / "images_001" / "images").mkdir(parents=True)
    for name in names:
        (folder / "images_001" / "images" / name).write_bytes(b"x")
    return folder


def test_nih_cards_read_the_file_as_the_nih_publishes_it(tmp_path):
    """NIH's Data_Entry_2017_v2020.csv names the sex column Patient Sex and ends every line with a
    comma; torchxrayvision's copy says Patient Gender. Both give one manifest."""
    copy, _ = nih_subset(tmp_path, 20000)
    lines = copy.read_text().splitlines()
    nih = tmp_path / "Data_Entry_2017_v2020.csv"
    nih.write_text("\n".join([lines[0].replace("Patient Gender", "Patient Sex") + ","] + [f"{line}," for line in lines[1:]]) + "\n")
    for name in ("nih-cxr14", "nih-sex"):
        ours = make_splits(name, [copy], write=False, salt="test", check_images=False)
        theirs = make_splits(name, [nih], write=False, salt="test", check_images=False)
        assert theirs.rows == ours.rows and len(ours.rows) > 100
    assert {r["sex"] for r in theirs.rows} == {"female", "male"}
    assert {r["Patient Gender"] for r in make_splits("nih-cxr14", [nih], write=False, check_images=False).rows} == {"F", "M"}


def test_images_outside_the_card_folder_name_the_variable_to_set(tmp_path, caplog, monkeypatch):
    meta, names = nih_subset(tmp_path, 300)
    images = nih_images(tmp_path / "download", names)
    with caplog.at_level(logging.WARNING, logger="cbm.data._splits"):
        result = make_splits("nih-cxr14", [meta], images=images, write=False, salt="test")
    assert result.rows and all(r["path"].startswith("images_001/images/") for r in result.rows)
    assert f"manifest paths are relative to {images}" in caplog.text and f"CBM_NIH_CXR14_ROOT={images}" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CBM_NIH_CXR14_ROOT", str(images))  # the card looks there: nothing to say
    with caplog.at_level(logging.WARNING, logger="cbm.data._splits"):
        assert make_splits("nih-cxr14", [meta], images=images, write=False, salt="test").rows == result.rows
    assert "relative to" not in caplog.text


def test_a_root_variable_naming_no_folder_is_an_error(tmp_path, monkeypatch):
    meta, _ = nih_subset(tmp_path, 300)
    monkeypatch.setenv("CBM_NIH_CXR14_ROOT", str(tmp_path / "imgaes"))  # a typo: no image could be checked
    with pytest.raises(FileNotFoundError, match=r"\$CBM_NIH_CXR14_ROOT is .*imgaes.*--images DIR.*--no-image-check"):
        make_splits("nih-cxr14", [meta], write=False)
    assert make_splits("nih-cxr14", [meta], write=False, check_images=False).rows


def test_a_manifest_written_before_the_images_says_to_build_it_again(tmp_path, monkeypatch):
    meta, names = nih_subset(tmp_path, 300)
    shutil.copytree(load_card("nih-cxr14").folder, tmp_path / "card", ignore=shutil.ignore_patterns("manifest.csv", "images"))
    make_splits(tmp_path / "card", [meta], salt="test", check_images=False)  # the images are not there yet
    monkeypatch.setenv("CBM_NIH_CXR14_ROOT", str(nih_images(tmp_path / "download", names)))
    problems = load_card(tmp_path / "card").validate().problems
    missing = next(p.message for p in problems if p.kind == "missing_file")
    assert f"run `cbm make-splits {tmp_path / 'card'} --metadata ... --force` again" in missing and "--no-image-check" in missing
    with pytest.raises(ManifestError, match="already exists.*--force"):  # the first manifest is not replaced unasked
        make_splits(tmp_path / "card", [meta], salt="test")
    make_splits(tmp_path / "card", [meta], salt="test", overwrite=True)  # now each image is found by name
    assert "missing_file" not in {p.kind for p in load_card(tmp_path / "card").validate().problems}
