"""cbm make-splits on small metadata files written in each source's real format, and the
built-in cards themselves."""

from __future__ import annotations

import csv
import logging
import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cbm.data import (
    BUILTIN_CARDS_DIR,
    list_cards,
    load_card,
    make_splits,
    parse_split_spec,
    read_manifest,
)

BUILTIN = [
    "ham10000", "bcn20000", "pad-ufes-20", "isic-sex", "isic-age", "isic-site", "isic-hospital",
    "nih-cxr14", "nih-sex", "nih-age", "nih-pos", "chexpert", "pneumonia", "covid-qu-ex", "openi", "vindr-cxr",
    "derm7pt", "skincon", "ddi", "fitzpatrick17k", "padchest", "rsna-pneumonia",
]


pytestmark = pytest.mark.usefixtures("no_card_env")  # no CBM_*_ROOT, no CBM_CARDS_PATH (tests/conftest.py)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_valid_manifest(card_name: str, out: Path) -> list[dict[str, str]]:
    """The manifest passes strict validation for its card (files not checked: no images here)."""
    card = load_card(card_name)
    read_manifest(out, class_names=card.class_names, image_root=out.parent, split_column=card.split_column,
                  group_column=card.group_column, check_files=False, strict=True)
    return read_rows(out)


def patient_key(patient: str, salt: str = "test") -> str:
    """The manifest's patient_key of ``patient`` with the tests' salt."""
    return hashlib.sha256(f"{salt}:{patient}".encode()).hexdigest()[:16]


def patients_are_disjoint(rows: list[dict[str, str]], key: str = "patient_key") -> None:
    splits = defaultdict(set)
    for r in rows:
        splits[r[key]].add(r["split"])
    shared = {p: s for p, s in splits.items() if len(s) > 1}
    assert not shared, f"patients in several splits: {shared}"


# ---------------------------------------------------------------------------- built-in cards
def test_every_builtin_card_is_there_and_complete():
    assert set(BUILTIN) <= set(list_cards())
    for name in BUILTIN:
        card = load_card(name)
        assert card.path.parent == (BUILTIN_CARDS_DIR / name).resolve()
        assert card.name == name
        for field in ("title", "modality", "source", "licence", "obtain", "split_rule"):
            assert getattr(card, field).strip(), f"{name}: {field} is empty"
        assert all(c.description for c in card.classes), f"{name}: a class lacks its description"
        assert card.image_root_env and card.image_root_env.startswith("CBM_")
        spec = parse_split_spec(card.make_splits, card.class_names)
        if card.confounder:
            assert card.task == "binary"
            assert spec.split.method == "confounded"
            assert spec.split.group.name == card.group_column == card.confounder.column
            assert spec.split.id == card.confounder.id_groups and spec.split.ood == card.confounder.ood_groups
        else:
            assert spec.split.method != "confounded"


def test_conf_dataset_files_agree_with_their_cards():
    """Every built-in card has its `cbm run dataset=<name>` config, and every config names a card that exists."""
    import yaml

    from cbm.run import CONFIG_DIR

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((CONFIG_DIR / "dataset").glob("*.yaml"))}
    cards = set(list_cards())
    for stem, cfg in configs.items():
        assert set(cfg) >= {"name", "card", "demo"}, stem
        if stem == "custom":  # a card of one's own, given on the command line
            assert cfg["card"] == "???" and cfg["demo"] is None, stem
            continue
        if cfg["card"] is None:
            assert cfg["demo"], f"conf/dataset/{stem}.yaml: no card and no demo world"
            continue
        assert cfg["card"] in cards, f"conf/dataset/{stem}.yaml names the card {cfg['card']!r}, which does not exist"
        assert stem == cfg["name"] == cfg["card"] == load_card(cfg["card"]).name and cfg["demo"] is None, stem
    assert {c for c in cards} <= {cfg["card"] for cfg in configs.values()}, "a built-in card without conf/dataset/<name>.yaml"


def test_builtin_card_without_manifest_says_how_to_build_it():
    card = load_card("ham10000")
    assert not card.manifest_path.exists()
    with pytest.raises(FileNotFoundError) as err:
        card.manifest()
    message = str(err.value)
    assert "cbm make-splits ham10000 --metadata" in message and "HAM10000_metadata.csv" in message
    assert "CBM_HAM10000_ROOT" in message and "DBW86T" in message


# ---------------------------------------------------------------------------- HAM10000
def ham_metadata(path: Path, n_lesions: int = 70) -> Path:
    dx = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows, k = [], 0
    for i in range(n_lesions):
        for _ in range(1 + i % 3):  # 1-3 images per lesion
            rows.append([f"HAM_{i:07d}", f"ISIC_{k:07d}", dx[i % 7], "histo", 40 + i % 30, "male" if i % 2 else "female", "back", "vidir_modern"])
            k += 1
    return write_csv(path, ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"], rows)


def test_ham10000_split_by_lesion_stratified_and_deterministic(tmp_path):
    meta = ham_metadata(tmp_path / "HAM10000_metadata.csv")
    result = make_splits("ham10000", [meta], salt="test", out=tmp_path / "m.csv")
    rows = assert_valid_manifest("ham10000", tmp_path / "m.csv")
    assert len(rows) == result.n_source_rows == sum(1 + i % 3 for i in range(70))
    assert rows[0].keys() >= {"path", "label", "split", "patient_key", "age", "sex", "localization"}
    assert "patient" not in rows[0] and "HAM_" not in (tmp_path / "m.csv").read_text()  # never the ID itself
    by_id = {r["path"]: r for r in rows}
    assert by_id["ISIC_0000000.jpg"]["label"] == "actinic keratosis"  # HAM_0000000 is akiec
    patients_are_disjoint(rows)
    counts = Counter(r["split"] for r in rows)
    assert 0.7 < counts["train"] / len(rows) < 0.9 and counts["val"] and counts["test"]
    assert {r["label"] for r in rows if r["split"] == "train"} == set(load_card("ham10000").class_names)

    again = make_splits("ham10000", [meta], salt="test", out=tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "m.csv").read_bytes()
    other = make_splits("ham10000", [meta], salt="test", out=tmp_path / "other.csv", seed=1)
    assert [r["split"] for r in other.rows] != [r["split"] for r in again.rows]


def test_a_class_of_few_patients_gets_one_in_every_split():
    """A class of 9 patients with many images each could go 6 / 0 / 3 (CheXpert's first 1,500 rows:
    consolidation), a manifest a run refuses for its val; now each split with a share gets a patient,
    and a class whose every split got one is split as before."""
    import random

    from cbm.data._assign import grouped_split

    moved = 0
    for seed in range(40):
        sizes = random.Random(seed).choices(range(1, 30), k=9)
        items = [{"label": "rare", "_patient": f"p{seed}-{i}"} for i, n in enumerate(sizes) for _ in range(n)]
        items += [{"label": "common", "_patient": f"q{seed}-{i}"} for i in range(200)]
        grouped_split(items, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=seed, class_order=["common", "rare"])
        rare = {it["_patient"]: it["split"] for it in items if it["label"] == "rare"}
        assert set(rare.values()) == {"train", "val", "test"}, (seed, sizes)
        common = Counter(it["split"] for it in items if it["label"] == "common")
        assert common == {"train": 160, "val": 20, "test": 20}  # one image a patient: as before, exactly
        moved += Counter(rare.values())["val"] == 1 and Counter(rare.values())["train"] >= 5
    assert moved  # some of these classes had an empty split to fill
    # one patient of many images: a small one fills val, and the large one stays in train
    for seed in range(20):
        items = [{"label": "rare", "_patient": f"p{i}"} for i, n in enumerate([200, 1, 3, 1]) for _ in range(n)]
        grouped_split(items, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=seed, class_order=["rare"])
        assert {it["split"] for it in items if it["_patient"] == "p0"} == {"train"}, seed
        assert set(it["split"] for it in items) == {"train", "val", "test"}


def test_metadata_row_order_does_not_change_the_split(tmp_path):
    meta = ham_metadata(tmp_path / "a.csv")
    lines = meta.read_text().splitlines()
    (tmp_path / "b.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    a = make_splits("ham10000", [meta], salt="test", write=False)
    b = make_splits("ham10000", [tmp_path / "b.csv"], salt="test", write=False)
    assert a.rows == b.rows


@pytest.mark.parametrize("given, clean", [("a\\b.png", "a/b.png"), ("./a//b.png", "a/b.png"), ("a/./b.png", "a/b.png"),
                                          ("/abs/x.png", "/abs/x.png"), ("x.png", "x.png")])
def test_metadata_paths_are_written_in_the_manifests_form(given, clean):
    """Metadata written on Windows ('\\'), or with './' and '//', names the same file as the clean path:
    the manifest gets the clean one, so the image check and the layout check compare like with like."""
    from cbm.data._splits import _clean_path

    assert _clean_path(given) == clean


def test_two_metadata_paths_moved_onto_one_file_keep_it_for_the_first_only(tmp_path):
    """site_a/x.png and site_b/x.png under a root that is site_a itself: both would land on x.png, a
    file used twice with two labels; the second row is dropped and counted."""
    from cbm.data._split_images import _with_images

    root = tmp_path / "site_a"
    root.mkdir()
    items = []
    for i in range(30):
        (root / f"{i:04d}.png").write_bytes(b"x")
        items += [{"path": f"site_a/{i:04d}.png", "label": "a"}, {"path": f"site_b/{i:04d}.png", "label": "b"}]
    dropped = Counter()
    found, _ = _with_images(items, root, dropped)
    assert [it["path"] for it in found] == [f"{i:04d}.png" for i in range(30)] and {it["label"] for it in found} == {"a"}
    assert dropped == {"rows whose image another row already names": 30}


def test_images_are_found_by_name_and_missing_ones_dropped(tmp_path):
    """Found by name in the unpacked parts; Kaggle's copy of HAM10000 repeats each part in lower case
    (here as hard links and as byte-identical copies): one image, not an ambiguous name; two different
    files of one name are."""
    import os

    meta = ham_metadata(tmp_path / "meta.csv", n_lesions=14)
    images = tmp_path / "imgs"
    for part, k in (("HAM10000_images_part_1", range(0, 10)), ("HAM10000_images_part_2", range(10, 27))):
        (images / part).mkdir(parents=True, exist_ok=True)
        (images / part.lower()).mkdir(parents=True, exist_ok=True)
        for i in k:
            (images / part / f"ISIC_{i:07d}.jpg").write_bytes(b"x%d" % i)
            if i % 2:
                os.link(images / part / f"ISIC_{i:07d}.jpg", images / part.lower() / f"ISIC_{i:07d}.jpg")
            else:
                (images / part.lower() / f"ISIC_{i:07d}.jpg").write_bytes(b"x%d" % i)
    (images / "other").mkdir()
    (images / "other" / "ISIC_0000026.jpg").write_bytes(b"another image")  # a third file of that name, not a copy
    result = make_splits("ham10000", [meta], salt="test", out=tmp_path / "m.csv", images=images)
    paths = {r["path"] for r in result.rows}
    assert "HAM10000_images_part_1/ISIC_0000003.jpg" in paths and "HAM10000_images_part_2/ISIC_0000020.jpg" in paths
    assert len(result.rows) == 26 and not any(p.startswith("ham10000") for p in paths)
    assert sum(n for why, n in result.dropped.items() if "not under" in why) == result.n_source_rows - 26
    assert "26 images" in result.summary()


def test_an_image_left_out_is_named_with_why(tmp_path, caplog):
    """make-splits said only how many images it left out, and told the user to pass another folder though
    all but one were found: now it names a few, and why (another letter case, a name several files share)."""
    from cbm.data._split_images import _why_missing

    index = {"ISIC_0000005.JPG": ["part_1/ISIC_0000005.JPG"], "ISIC_0000026.jpg": ["a/ISIC_0000026.jpg", "b/ISIC_0000026.jpg"]}
    assert _why_missing("part_1/ISIC_0000005.jpg", index, tmp_path) == (
        "part_1/ISIC_0000005.jpg (part_1/ISIC_0000005.JPG exists; file names are case-sensitive)")
    assert _why_missing("x/ISIC_0000026.jpg", index, tmp_path).startswith(
        "x/ISIC_0000026.jpg (2 files of that name, which one is meant cannot be told: a/ISIC_0000026.jpg, b/ISIC_0000026.jpg")
    assert _why_missing("ISIC_0000009.jpg", index, tmp_path) == "ISIC_0000009.jpg (no file of that name)"
    meta = ham_metadata(tmp_path / "meta.csv", n_lesions=14)
    rows = list(csv.DictReader(open(meta)))
    images = tmp_path / "imgs"
    images.mkdir()
    for r in rows[1:]:
        (images / f"{r['image_id']}.jpg").write_bytes(r["image_id"].encode())
    (images / f"{rows[0]['image_id']}.JPG").write_bytes(b"upper")
    with caplog.at_level(logging.WARNING):
        make_splits("ham10000", [meta], salt="test", out=tmp_path / "m.csv", images=images)
    assert f"1 of {len(rows)} images the metadata names are not under" in caplog.text
    assert f"{rows[0]['image_id']}.JPG exists; file names are case-sensitive" in caplog.text
    assert "--images DIR" not in caplog.text  # all but one were found: the folder is right


# ---------------------------------------------------------------------------- NIH
NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


def nih_row(i: int, findings: str, patient: int, age: int, sex: str, view: str) -> list[object]:
    return [f"{patient:08d}_{i:03d}.png", findings, i, patient, age, sex, view, 2500, 2048, 0.143, 0.143]


def test_nih_cxr14_keeps_single_findings_of_the_six(tmp_path):
    rows = []
    findings = ["Atelectasis", "Cardiomegaly", "Effusion", "Consolidation", "Edema", "Pneumonia"]
    for p in range(60):
        rows.append(nih_row(0, findings[p % 6], p, 50, "M", "PA"))
        rows.append(nih_row(1, findings[p % 6], p, 51, "M", "PA"))
    rows += [nih_row(2, "Effusion|Mass", 1, 50, "M", "PA"), nih_row(3, "No Finding", 2, 50, "F", "PA"),
             nih_row(4, "Hernia", 3, 50, "F", "AP"), nih_row(5, "Atelectasis|Effusion", 4, 50, "F", "AP")]
    meta = write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)
    result = make_splits("nih-cxr14", [meta], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("nih-cxr14", tmp_path / "m.csv")
    assert len(out) == 120
    assert result.dropped == {"rows with another finding": 1, "rows with no class": 2, "rows with several classes": 1}
    assert {r["label"] for r in out} == {"atelectasis", "cardiomegaly", "pleural effusion", "consolidation", "edema", "pneumonia"}
    patients_are_disjoint(out)
    assert out[0]["Patient Age"] and out[0]["View Position"] == "PA"


def confounded_nih(tmp_path: Path) -> Path:
    """No Finding / Effusion across both sexes, ages and views; some patients have both findings."""
    rows, i = [], 0
    for p in range(400):
        sex, view = ("M", "F")[p % 2], ("PA", "AP")[(p // 2) % 2]
        age = (22, 45, 66, 414)[(p // 4) % 4]
        for finding in (("No Finding",), ("Effusion",), ("No Finding", "Effusion"))[p % 3]:
            rows.append(nih_row(i, finding, p, age, sex, view))
            i += 1
    return write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)


@pytest.mark.parametrize("name, column, id_groups", [
    ("nih-sex", "sex", {"no finding": "female", "pleural effusion": "male"}),
    ("nih-age", "age_group", {"no finding": "young", "pleural effusion": "old"}),
    ("nih-pos", "view", {"no finding": "PA", "pleural effusion": "AP"}),
])
def test_nih_confounded_variants(tmp_path, name, column, id_groups):
    meta = confounded_nih(tmp_path)
    make_splits(name, [meta], salt="test", out=tmp_path / "m.csv")
    rows = assert_valid_manifest(name, tmp_path / "m.csv")
    ood_groups = {"no finding": id_groups["pleural effusion"], "pleural effusion": id_groups["no finding"]}
    for r in rows:
        expected = ood_groups if r["split"] == "test" else id_groups
        assert r[column] == expected[r["label"]], r
    assert {r["split"] for r in rows} == {"train", "val", "test_id", "test"}
    for split in ("val", "test_id", "test"):
        c = Counter(r["label"] for r in rows if r["split"] == split)
        assert c["no finding"] == c["pleural effusion"] > 0, (split, c)
    patients_are_disjoint(rows)  # also across the in-domain and out-of-domain sides
    if name == "nih-age":
        ages = {int(r["Patient Age"]) for r in rows}
        assert ages <= {22, 66}  # 45 is in neither group, 414 is a data error outside [60, 120]


def test_a_rebuild_once_the_images_are_found_in_subfolders_makes_the_same_choices(tmp_path):
    """The class cap and the test balancing hashed the path as found (images_001/images/x.png), not the
    metadata's own (x.png): unpacking the images into subfolders moved most images to other splits."""
    meta = confounded_nih(tmp_path)
    names = [r["Image Index"] for r in csv.DictReader(open(meta, newline=""))]
    for folder in (tmp_path / "flat", tmp_path / "kaggle" / "images_001" / "images"):
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x")
    flat = make_splits("nih-sex", [meta], salt="t", images=tmp_path / "flat", write=False)
    nested = make_splits("nih-sex", [meta], salt="t", images=tmp_path / "kaggle", write=False)
    assert {r["path"].split("/")[-1] for r in nested.rows} == {r["path"] for r in flat.rows}
    assert all(r["path"].startswith("images_001/images/") for r in nested.rows)
    assert sorted((r["path"].split("/")[-1], r["split"], r["label"]) for r in nested.rows) == sorted(
        (r["path"], r["split"], r["label"]) for r in flat.rows)


def test_an_image_the_metadata_labels_twice_otherwise_is_left_out_and_counted(tmp_path):
    rows = [nih_row(0, "No Finding", 7, 50, "F", "PA"), nih_row(0, "Effusion", 7, 50, "F", "PA")]  # one image, two labels
    rows += [nih_row(i, ("No Finding", "Effusion")[i % 2], 100 + i, 25 if i % 2 == 0 else 70, ("F", "M")[i % 2], "PA")
             for i in range(1, 120)]
    meta = write_csv(tmp_path / "Data_Entry_2017.csv", NIH_HEADER, rows)
    result = make_splits("nih-sex", [meta], salt="t", write=False, allow_short=True)
    assert "00000007_000.png" not in {r["path"] for r in result.rows}
    assert result.dropped["images the metadata gives two different labels"] == 1


def test_a_derived_column_missing_with_its_source_is_named(tmp_path):
    header = [("Sex" if c == "Patient Gender" else c) for c in NIH_HEADER]
    meta = write_csv(tmp_path / "Data_Entry_2017.csv", header, [nih_row(i, "Effusion", i, 50, "M", "PA") for i in range(9)])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) .*Patient Gender \(or Patient Sex, which it is read from\)"):
        make_splits("nih-cxr14", [meta], salt="t", write=False)


def test_nih_age_reads_dicom_age_strings_and_names_ages_it_cannot_read(tmp_path, caplog):
    """Ages spelt as DICOM age strings ("058Y", as some copies of NIH's metadata have them) bin as numbers do;
    an age that is no number is named in a warning instead of vanishing with the ages between the bins."""
    plain = confounded_nih(tmp_path)
    make_splits("nih-age", [plain], salt="test", out=tmp_path / "plain.csv")
    rows = [dict(r) for r in read_rows(plain)]
    spelt = {22: "022Y", 45: "045Y", 66: "066Y", 414: "414Y"}
    for i, r in enumerate(rows):
        r["Patient Age"] = "about 60" if i == 0 else "NaN" if i == 1 else spelt[int(r["Patient Age"])]
    (tmp_path / "spelt").mkdir()
    meta = write_csv(tmp_path / "spelt" / "Data_Entry_2017.csv", list(rows[0]), [list(r.values()) for r in rows])
    with caplog.at_level("WARNING", logger="cbm.data._assign"):
        make_splits("nih-age", [meta], salt="test", out=tmp_path / "spelt.csv")
    plain_rows, spelt_rows = read_rows(tmp_path / "plain.csv"), read_rows(tmp_path / "spelt.csv")
    assert {rows[0]["Image Index"], rows[1]["Image Index"]}.isdisjoint(r["path"] for r in spelt_rows)
    assert len(plain_rows) - 6 <= len(spelt_rows) <= len(plain_rows)  # two rows fewer, balanced by pairs
    for r in spelt_rows:
        assert r["age_group"] == ("young" if r["Patient Age"] == "022Y" else "old"), r
    # a missing value ("NaN", as pandas writes one) is left out as an empty one is, without a word
    assert "1 rows have a Patient Age value that is not a number" in caplog.text and "'about 60' (1)" in caplog.text


# ---------------------------------------------------------------------------- ISIC archive
ISIC_HEADER = ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
               "diagnosis_1", "image_type", "lesion_id", "patient_id", "sex"]


def test_isic_hospital_and_site_from_new_style_metadata(tmp_path):
    rows = []
    hospitals = ["Hospital Clínic de Barcelona", "ViDIR Group, Department of Dermatology, Medical University of Vienna", "MSK"]
    sites = ["head/neck", "upper extremity", "lower extremity", "anterior torso"]
    for i in range(600):
        rows.append([f"ISIC_{i:07d}", hospitals[i % 3], "CC-BY", 50, sites[(i // 3) % 4], ("Benign", "Malignant", "Indeterminate")[(i // 12) % 3],
                     "dermoscopic" if i % 10 else "clinical: close-up", f"IL_{i // 2}", f"IP_{i // 4}" if i % 7 else "", ("male", "female")[i % 2]])
    meta = write_csv(tmp_path / "isic_metadata.csv", ISIC_HEADER, rows)
    for name, column, groups in (("isic-hospital", "hospital", {"barcelona", "vienna"}), ("isic-site", "site", {"head_neck", "extremity"})):
        make_splits(name, [meta], salt="test", out=tmp_path / f"{name}.csv")
        out = assert_valid_manifest(name, tmp_path / f"{name}.csv")
        card = load_card(name)
        assert {r[column] for r in out} == groups
        for r in out:
            table = card.confounder.ood_groups if r["split"] == "test" else card.confounder.id_groups
            assert r[column] == table[r["label"]]
        assert all(int(r["path"][5:12]) % 10 for r in out)  # clinical close-ups filtered out
        patients_are_disjoint(out)


# ---------------------------------------------------------------------------- other sources
def test_bcn20000_joins_the_isic2019_files_and_keeps_bcn_only(tmp_path):
    meta_rows, truth_rows = [], []
    classes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    for i in range(160):
        image = f"ISIC_{i:07d}"
        meta_rows.append([image, 55, "anterior torso", f"BCN_{i // 2:07d}" if i % 5 else f"HAM_{i:07d}", "male"])
        truth_rows.append([image] + [1.0 if classes[i % 8] == c else 0.0 for c in classes] + [0.0])
    meta = write_csv(tmp_path / "ISIC_2019_Training_Metadata.csv", ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"], meta_rows)
    truth = write_csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", ["image", *classes, "UNK"], truth_rows)
    result = make_splits("bcn20000", [meta, truth], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("bcn20000", tmp_path / "m.csv")
    assert {r["patient_key"] for r in out} <= {patient_key(f"BCN_{i // 2:07d}") for i in range(160)}
    assert Counter(r["label"] for r in out) == {"melanoma": 16, "melanocytic nevus": 16, "basal cell carcinoma": 16, "benign keratosis": 16}
    assert result.dropped == {"rows filtered out": 32, "rows with no class": 64}  # HAM images; AK, DF, VASC, SCC
    patients_are_disjoint(out)


def test_chexpert_one_hot_frontal_and_patient_from_path(tmp_path, caplog):
    obs = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
           "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *obs]
    keep = ["No Finding", "Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion"]

    def row(split: str, patient: int, study: int, view: str, positives: dict[str, str]) -> list[object]:
        path = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view1_{view.lower()}.jpg"
        return [path, "Female", 60, view, "AP" if view == "Frontal" else "", *[positives.get(o, "") for o in obs]]

    train_rows, valid_rows = [], []
    for p in range(120):
        label = keep[p % 6]
        train_rows.append(row("train", p, 1, "Frontal", {label: "1.0", "Support Devices": "1.0"}))
        train_rows.append(row("train", p, 1, "Lateral", {label: "1.0"}))
        train_rows.append(row("train", p, 2, "Frontal", {label: "1.0", "Lung Opacity": "1.0"}))  # another finding
        train_rows.append(row("train", p, 3, "Frontal", {label: "-1.0"}))  # uncertain only
    for p in range(900, 912):
        valid_rows.append(row("valid", p, 1, "Frontal", {keep[p % 6]: "1.0", keep[(p + 1) % 6]: "1.0"}))  # two classes
        valid_rows.append(row("valid", p, 2, "Frontal", {keep[p % 6]: "1.0"}))
    train = write_csv(tmp_path / "train.csv", header, train_rows)
    valid = write_csv(tmp_path / "valid.csv", header, valid_rows)
    with caplog.at_level("WARNING", logger="cbm.data._splits"):
        alone = make_splits("chexpert", [train], salt="test", out=tmp_path / "train_only.csv")
    assert "card chexpert reads train.csv, valid.csv; valid.csv was not given, so its rows are left out" in caplog.text
    assert not any("valid" in r["path"] for r in alone.rows)
    caplog.clear()
    result = make_splits("chexpert", [train, valid], salt="test", out=tmp_path / "m.csv")
    assert "of them given" not in caplog.text
    out = assert_valid_manifest("chexpert", tmp_path / "m.csv")
    assert len(out) == 132
    assert all("study1" in r["path"] or "valid" in r["path"] for r in out)
    assert {r["patient_key"] for r in out} >= {patient_key("patient00000"), patient_key("patient00911")}
    assert result.dropped == {"rows filtered out": 120, "rows with another finding": 120, "rows with no class": 120, "rows without exactly one class": 12}
    patients_are_disjoint(out)
    # every image is named view1_frontal.jpg: with the root one folder too deep (CheXpert-v1.0-small itself)
    # or too high (an unpack folder above it) none is found by name, but the whole folder's layout is
    wanted = sorted(r["path"] for r in out)
    deep, high = (lambda q: q.split("/", 1)[1]), (lambda q: "unpacked/" + q)
    # three images not downloaded at the end, or a block of 40 at the start (the first part not unpacked)
    for images, moved, there in ((tmp_path / "deep", deep, wanted[:-3]), (tmp_path / "high", high, wanted[:-3]),
                                 (tmp_path / "deep_block", deep, wanted[40:])):
        for q in there:
            (images / moved(q)).parent.mkdir(parents=True, exist_ok=True)
            (images / moved(q)).write_bytes(b"x")
        found = make_splits("chexpert", [train, valid], salt="test", out=images.with_suffix(".csv"), images=images)
        assert sorted(r["path"] for r in found.rows) == sorted(moved(q) for q in there)
        assert sum(n for why, n in found.dropped.items() if "not under" in why) == len(wanted) - len(there)


def test_pneumonia_from_its_folder_layout(tmp_path):
    root = tmp_path / "chest_xray"
    counts = {"train": 40, "val": 4, "test": 10}
    for split, n in counts.items():
        for finding in ("NORMAL", "PNEUMONIA"):
            for base in (root, root / "chest_xray", root / "__MACOSX"):  # Kaggle's nested copy and macOS debris
                folder = base / split / finding
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    (folder / f"{finding.lower()}_{i}.jpeg").write_bytes(b"x")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"x")
    result = make_splits("pneumonia", [root], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("pneumonia", tmp_path / "m.csv")
    assert Counter(r["split"] for r in out) == {"train": 80, "val": 8, "test": 20}
    assert all(not r["path"].startswith("__MACOSX") for r in out)
    assert all((root / r["path"]).is_file() for r in out)
    assert result.n_source_rows == 108


def test_covid_qu_ex_folder_layout(tmp_path):
    root = tmp_path / "covidqu"
    for split in ("Train", "Val", "Test"):
        for finding in ("COVID-19", "Non-COVID", "Normal"):
            folder = root / "Lung Segmentation Data" / "Lung Segmentation Data" / split / finding / "images"
            folder.mkdir(parents=True)
            masks = folder.parent / "lung masks"
            masks.mkdir()
            for i in range(3):
                (folder / f"{finding}_{i}.png").write_bytes(b"x")
                (masks / f"{finding}_{i}.png").write_bytes(b"x")
    make_splits("covid-qu-ex", [root], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("covid-qu-ex", tmp_path / "m.csv")
    assert len(out) == 27 and {r["label"] for r in out} == {"covid-19", "non-covid infection", "normal"}
    assert all("/images/" in r["path"] for r in out)


def test_openi_joins_reports_and_frontal_projections(tmp_path):
    problems = ["normal", "Cardiomegaly;Pulmonary Artery", "Opacity;Lung", "Cardiomegaly;Opacity", "Calcified Granuloma"]
    reports = [[uid, "", problems[uid % 5], f"img{uid}", "", "", "", ""] for uid in range(1, 101)]
    projections = [[uid, f"{uid}_IM-{uid:04d}-100{k}.dcm.png", view] for uid in range(1, 101) for k, view in ((1, "Frontal"), (2, "Lateral"))]
    rep = write_csv(tmp_path / "indiana_reports.csv", ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"], reports)
    proj = write_csv(tmp_path / "indiana_projections.csv", ["uid", "filename", "projection"], projections)
    result = make_splits("openi", [rep, proj], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("openi", tmp_path / "m.csv")
    assert len(out) == 60 and all(r["projection"] == "Frontal" for r in out)
    assert Counter(r["label"] for r in out) == {"normal": 20, "cardiomegaly": 20, "lung opacity": 20}
    assert result.dropped == {"rows filtered out": 100, "rows with several classes": 20, "rows with no class": 20}


def test_vindr_labels_by_the_readers_majority_and_caps_classes(tmp_path):
    names = ["No finding", "Aortic enlargement", "Cardiomegaly", "Pleural thickening", "Pulmonary fibrosis", "Lung Opacity", "Nodule/Mass"]
    rows = []

    def read(image: str, rad: str, name: str) -> None:
        rows.append([image, name, 0, rad, "", "", "", ""])

    for i in range(7 * 300):
        image, name = f"{i:032x}", names[i % 7]
        read(image, "R8", name)
        read(image, "R9", name)  # two of three readers: the majority
        read(image, "R10", "Other lesion" if i % 3 else name)  # a finding outside the classes is allowed
        if i % 50 == 0:
            read(image, "R10", "Cardiomegaly")  # one reader only: does not count
    for i in range(30):  # a tie between two classes named by two readers each goes to the rarer class
        image = f"tie{i:029x}"
        for rad in ("R1", "R2"):
            read(image, rad, "Cardiomegaly")
            read(image, rad, "Nodule/Mass")
        read(f"one{i:029x}", "R1", "Lung Opacity")  # one reader of three: no class
        read(f"one{i:029x}", "R2", "Other lesion")
    meta = write_csv(tmp_path / "train.csv", ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"], rows)
    result = make_splits("vindr-cxr", [meta], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("vindr-cxr", tmp_path / "m.csv")
    assert Counter(r["split"] for r in out) == {"train": 1400, "val": 175, "test": 175}
    assert set(Counter(r["label"] for r in out).values()) == {250}
    by_path = {r["path"]: r["label"] for r in out}
    assert {by_path[p] for p in by_path if p.startswith("tie")} == {"nodule or mass"}
    assert by_path.get(f"{7 * 50:032x}.dicom", "no finding") == "no finding"  # R10's single cardiomegaly reading is outvoted
    assert result.dropped["rows whose classes fewer than 2 readers named"] == 30
    assert all(r["path"].endswith(".dicom") for r in out)


def test_pad_ufes_groups_by_patient(tmp_path):
    header = ["patient_id", "lesion_id", "age", "gender", "region", "fitspatrick", "diagnostic", "img_id", "biopsed"]
    dx = ["ACK", "BCC", "MEL", "NEV", "SCC", "SEK"]
    rows = [[f"PAT_{i // 3}", i, 40, "MALE", "FACE", 2, dx[(i // 3) % 6], f"PAT_{i // 3}_{i}_1.png", "True"] for i in range(180)]
    meta = write_csv(tmp_path / "metadata.csv", header, rows)
    make_splits("pad-ufes-20", [meta], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("pad-ufes-20", tmp_path / "m.csv")
    patients_are_disjoint(out)
    assert {r["label"] for r in out if r["diagnostic"] in ("BCC", "MEL", "SCC")} == {"skin cancer"}


# ---------------------------------------------------------------------------- bad input
def test_metadata_missing_columns_names_them(tmp_path):
    meta = write_csv(tmp_path / "HAM10000_metadata.csv", ["image_id", "diagnosis"], [["ISIC_1", "mel"]])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) .*dx.*lesion_id.*columns found: diagnosis, image_id.*HAM10000_metadata.csv"):
        make_splits("ham10000", [meta], salt="test", write=False)
    # the source's own file saved again by a spreadsheet of a decimal-comma locale: the separator is named
    (tmp_path / "semi.csv").write_text("lesion_id;image_id;dx\nHAM_1;ISIC_1;mel\n")
    with pytest.raises(ValueError, match="its columns are separated by ';', not commas: save it as comma-separated CSV"):
        make_splits("ham10000", [tmp_path / "semi.csv"], salt="test", write=False)


def test_metadata_not_found_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata not found.*expected HAM10000_metadata.csv"):
        make_splits("ham10000", [tmp_path / "nope.csv"], salt="test", write=False)
    (tmp_path / "bad.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,mel,extra,fields\n")
    with pytest.raises(ValueError, match="bad.csv: line 2 has 5 fields but the header has 3"):
        make_splits("ham10000", [tmp_path / "bad.csv"], salt="test", write=False)
    (tmp_path / "short.csv").write_text("lesion_id,image_id,dx\nHAM_1\n")
    with pytest.raises(ValueError, match="short.csv: line 2 has 1 fields but the header has 3"):
        make_splits("ham10000", [tmp_path / "short.csv"], salt="test", write=False)
    with pytest.raises(ValueError, match="is a folder, but this card.s split rule reads a file"):
        make_splits("ham10000", [tmp_path], salt="test", write=False)


def test_card_without_split_rule(tmp_path):
    (tmp_path / "card.yaml").write_text(
        "name: mine\nmodality: x\ntask: binary\nclasses: [{name: a}, {name: b}]\nmanifest: m.csv\n"
    )
    with pytest.raises(ValueError, match="has no make_splits rule"):
        make_splits(tmp_path, [tmp_path / "card.yaml"], write=False)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"label": {"column": "dx", "map": {"mel": "melanoma"}}}, "never produces"),
        ({"label": {"column": "dx", "map": {"mel": "cat", "nv": "dog"}}}, "not classes of the card"),
        ({"split": {"method": "random", "fractions": {"train": 0.9, "val": 0.2}}}, "sum to 1"),
        ({"split": {"method": "random", "fractions": {"train": 0.6, "val": 0.4}}}, "split writes no test split"),
        ({"split": {"method": "column", "column": "s", "map": {"a": "train", "b": "test"}}}, "writes no val split"),
        ({"split": {"method": "shuffle"}}, "split.method must be random, column, lists or confounded"),
        ({"paths": "{x}"}, "make_splits.paths"),
        ({"patient": "patient_id", "keep": ["age", "patient_id"]}, "keep names 'patient_id', the rule's patient column"),
        ({"keep": ["age", "PatientName"]}, "keep names 'PatientName', named as a patient identifier"),
    ],
)
def test_bad_split_rules(change, fragment):
    raw = {"metadata": "m.csv", "path": "{id}.png", "label": {"column": "dx", "map": {"mel": "melanoma", "nv": "nevus"}},
           "split": {"method": "random"}, **change}
    with pytest.raises(ValueError, match=fragment):
        parse_split_spec(raw, ["melanoma", "nevus"])


def test_group_values_spelt_otherwise_are_named(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("cbm.data._assign"), "disabled", False)  # whatever logging config ran before

    card = load_card("isic-sex")
    group = card.make_splits["split"]["group"]
    column = group["column"] if isinstance(group["column"], str) else group["column"][0]
    from cbm.data._assign import assign_splits

    spec = parse_split_spec(card.make_splits, card.class_names)
    items = [{"path": f"{i}.jpg", "label": card.class_names[i % 2], "_patient": f"p{i}", "_group": None,
              "_group_value": "Male" if i % 2 else "Female"} for i in range(20)]
    with caplog.at_level(logging.WARNING, logger="cbm.data"):  # whatever level an earlier test left on "cbm"
        kept = assign_splits(items, spec, card.class_names, Counter())
    assert not kept
    assert f"20 rows have a {column} value that none of the rule's values" in caplog.text
    assert "'Male' (10)" in caplog.text and "'Female' (10)" in caplog.text


# ---------------------------------------------------------------------------- cards with concept truth
# Fixtures in each source's published format: Derm7pt's meta/meta.csv and index lists (Kawahara et
# al., github.com/jeremykawahara/derm7pt), fitzpatrick17k.csv (github.com/mattgroh/fitzpatrick17k),
# SkinCon's annotations_fitzpatrick17k.csv / annotations_ddi.csv (skincon-dataset.github.io: ImageID,
# the 48 concepts as 0/1, "Do not consider this image") and DDI's ddi_metadata.csv (Stanford AIMI).
SKINCON = ["Vesicle", "Papule", "Macule", "Plaque", "Abscess", "Pustule", "Bulla", "Patch", "Nodule", "Ulcer", "Crust", "Erosion",
           "Excoriation", "Atrophy", "Exudate", "Purpura/Petechiae", "Fissure", "Induration", "Xerosis", "Telangiectasia", "Scale",
           "Scar", "Friable", "Sclerosis", "Pedunculated", "Exophytic/Fungating", "Warty/Papillomatous", "Dome-shaped",
           "Flat topped", "Brown(Hyperpigmentation)", "Translucent", "White(Hypopigmentation)", "Purple", "Yellow", "Black",
           "Erythema", "Comedo", "Lichenification", "Blue", "Umbilicated", "Poikiloderma", "Salmon", "Wheal", "Acuminate",
           "Burrow", "Gray", "Pigmented", "Cyst"]
FITZ_HEADER = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label", "three_partition_label",
               "qc", "url", "url_alphanum"]
THREE = [("basal cell carcinoma", "malignant epidermal", "malignant"), ("dermatofibroma", "benign dermal", "benign"),
         ("psoriasis", "inflammatory", "non-neoplastic")]


def truth_of(card_name: str, rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """concept phrase -> {path: truth value} through the card's concept_truth columns."""
    card = load_card(card_name)
    assert card.concept_truth and all(col in rows[0] for col in card.concept_truth.values())
    return {phrase: {r["path"]: r[col] for r in rows} for phrase, col in card.concept_truth.items()}


def test_derm7pt_official_split_lists_and_checklist_truth(tmp_path):
    header = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation", "regression_structures",
              "dots_and_globules", "blue_whitish_veil", "vascular_structures", "level_of_diagnostic_difficulty", "elevation",
              "location", "sex", "management", "clinic", "derm", "case_id", "notes"]
    dx = ["clark nevus", "melanoma (in situ)", "basal cell carcinoma", "reed or spitz nevus", "melanoma (more than 1.5 mm)"]
    network = ["typical", "atypical", "absent"]
    vessels = ["absent", "dotted", "arborizing", "linear irregular", "comma"]
    rows = [[i + 1, dx[i % 5], i % 8, network[i % 3], ("absent", "irregular", "regular")[i % 3],
             ("diffuse irregular", "localized regular", "absent")[i % 3], ("blue areas", "absent")[i % 2],
             ("irregular", "regular", "absent")[i % 3], ("present", "absent")[i % 2], vessels[i % 5], "low",
             "palpable", "back", ("female", "male")[i % 2], "excision", f"A{i:03d}/C{i:03d}.JPG", f"A{i:03d}/D{i:03d}.JPG", "", ""]
            for i in range(100)]
    meta = write_csv(tmp_path / "meta.csv", header, rows)
    lists = [write_csv(tmp_path / f"{name}_indexes.csv", ["indexes"], [[i] for i in range(100) if i % 10 in ks])
             for name, ks in (("train", range(0, 6)), ("valid", (6, 7)), ("test", (8, 9)))]
    result = make_splits("derm7pt", [meta, *lists], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("derm7pt", tmp_path / "m.csv")
    assert len(out) == 80 and result.dropped == {"rows with no class": 20}  # basal cell carcinoma is left out
    by_path = {r["path"]: r for r in out}
    assert by_path["A003/D003.JPG"]["label"] == "nevus" and by_path["A004/D004.JPG"]["label"] == "melanoma"
    for i in range(100):  # row i of meta.csv is index i of the lists
        if i % 5 != 2:
            assert by_path[f"A{i:03d}/D{i:03d}.JPG"]["split"] == ("train" if i % 10 < 6 else "val" if i % 10 < 8 else "test")
    truth = truth_of("derm7pt", out)
    assert truth["atypical pigment network"]["A001/D001.JPG"] == "1" and truth["atypical pigment network"]["A000/D000.JPG"] == "0"
    assert truth["atypical vascular pattern"]["A001/D001.JPG"] == "1" and truth["atypical vascular pattern"]["A004/D004.JPG"] == "0"
    assert truth["irregular pigmentation"]["A000/D000.JPG"] == "1" and truth["regression structures"]["A001/D001.JPG"] == "0"
    with pytest.raises(ValueError, match="split lists valid_indexes.csv, test_indexes.csv were not given"):
        make_splits("derm7pt", [meta, lists[0]], write=False)


def test_truth_values_a_card_cannot_use_are_named_when_the_manifest_is_made(tmp_path, caplog):
    """A source value the truth map lacks (a release that writes "Atypical") is written as not
    annotated, and said; so is a copied cell that is no truth value, which validate would refuse."""
    header = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
              "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures", "elevation",
              "location", "sex", "derm"]
    rows = [[i + 1, ("clark nevus", "melanoma")[i % 2], 0, ("Atypical" if i < 3 else "typical"), "absent", "absent", "absent",
             "absent", "absent", ("absent", "NA")[i % 2], "palpable", "back", "female", f"A{i:03d}/D{i:03d}.JPG"]
            for i in range(100)]
    meta = write_csv(tmp_path / "meta.csv", header, rows)
    lists = [write_csv(tmp_path / f"{name}_indexes.csv", ["indexes"], [[i] for i in range(100) if i % 10 in ks])
             for name, ks in (("train", range(0, 6)), ("valid", (6, 7)), ("test", (8, 9)))]
    with caplog.at_level(logging.WARNING, logger="cbm.data"):
        result = make_splits("derm7pt", [meta, *lists], salt="test", write=False)
    assert "3 source cells of pigment_network have a value its map lacks ('Atypical' (3))" in caplog.text
    assert "vascular" not in caplog.text  # "NA" is a gap, not an odd value
    assert sum(r[load_card("derm7pt").concept_truth["atypical pigment network"]] == "" for r in result.rows) == 3
    caplog.clear()
    fitz = write_csv(tmp_path / "fitzpatrick17k.csv", FITZ_HEADER, fitz_rows(280))
    annotations = [[k, f"{i:032x}.jpg", *[int((i + j) % 9 == 0) for j in range(48)], 0] for k, i in enumerate(range(0, 280, 2))]
    annotations[3][2 + 5], annotations[4][2 + 6] = "0.5", "?"
    skincon = write_csv(tmp_path / "annotations_fitzpatrick17k.csv", ["", "ImageID", *SKINCON, "Do not consider this image"], annotations)
    with caplog.at_level(logging.WARNING, logger="cbm.data"):
        make_splits("skincon", [skincon, fitz], salt="test", write=False)
    assert "1 source cells of Pustule are no truth value ('0.5' (1))" in caplog.text
    assert "1 source cells of Bulla are no truth value ('?' (1))" in caplog.text and "cbm validate and any run" in caplog.text


def fitz_rows(n: int) -> list[list[object]]:
    rows = []
    for i in range(n):
        label, nine, three = THREE[i % 3]
        scale = (1, 2, 3, 4, 5, 6, -1)[i % 7]
        qc = "3 Wrongly labelled" if i % 40 == 39 else ("1 Diagnostic" if i % 11 == 0 else "")
        rows.append([f"{i:032x}", scale, scale, label, nine, three, qc, f"https://atlas.example/{i}.jpg", f"atlas{i}jpg.jpg"])
    return rows


def test_fitzpatrick17k_skin_tone_groups(tmp_path):
    meta = write_csv(tmp_path / "fitzpatrick17k.csv", FITZ_HEADER, fitz_rows(280))
    result = make_splits("fitzpatrick17k", [meta], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("fitzpatrick17k", tmp_path / "m.csv")
    assert len(out) == 273 and result.dropped == {"rows filtered out": 7}  # qc "3 Wrongly labelled"
    tones = {"1": "I-II", "2": "I-II", "3": "III-IV", "4": "III-IV", "5": "V-VI", "6": "V-VI", "-1": ""}
    assert all(r["skin_tone"] == tones[r["fitzpatrick_scale"]] for r in out)
    assert Counter(r["label"] for r in out) == {"malignant": 91, "benign": 91, "non-neoplastic": 91}
    assert set(Counter(r["split"] for r in out)) == {"train", "val", "test"}


def test_skincon_joins_its_annotations_to_fitzpatrick17k(tmp_path):
    fitz = write_csv(tmp_path / "fitzpatrick17k.csv", FITZ_HEADER, fitz_rows(280))
    annotations = [[k, f"{i:032x}.jpg", *[int((i + j) % 9 == 0) for j in range(48)], int(i % 25 == 0)] for k, i in enumerate(range(0, 280, 2))]
    skincon = write_csv(tmp_path / "annotations_fitzpatrick17k.csv", ["", "ImageID", *SKINCON, "Do not consider this image"], annotations)
    result = make_splits("skincon", [skincon, fitz], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("skincon", tmp_path / "m.csv")
    assert len(out) == 140 - 6 and result.dropped == {"rows filtered out": 6}  # "Do not consider this image"
    truth = truth_of("skincon", out)
    assert len(truth) == 48
    assert truth["papule"][f"{18:032x}.jpg"] == "0" and truth["vesicle"][f"{18:032x}.jpg"] == "1"  # (18 + 0) % 9 == 0
    assert truth["brown hyperpigmentation"][f"{6:032x}.jpg"] == str(int((6 + SKINCON.index("Brown(Hyperpigmentation)")) % 9 == 0))
    assert {r["skin_tone"] for r in out} == {"I-II", "III-IV", "V-VI", ""}


def test_ddi_with_and_without_skincon_annotations(tmp_path):
    tones = (12, 34, 56)
    meta = write_csv(tmp_path / "ddi_metadata.csv", ["", "DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"],
                     [[i, i + 1, f"{i + 1:06d}.png", tones[i % 3], ("True", "False")[i % 2], ("melanoma", "verruca vulgaris")[i % 2]]
                      for i in range(120)])
    annotations = write_csv(tmp_path / "annotations_ddi.csv", ["ImageID", *SKINCON, "Do not consider this image"],
                            [[f"{i + 1:06d}.png", *[int(j == i % 48) for j in range(48)], int(i == 7)] for i in range(120)])
    result = make_splits("ddi", [meta, annotations], salt="test", out=tmp_path / "m.csv")
    out = assert_valid_manifest("ddi", tmp_path / "m.csv")
    assert result.layout == "default" and len(out) == 119
    assert Counter(r["label"] for r in out) == {"malignant": 60, "benign": 59}
    assert {r["skin_tone"] for r in out} == {"I-II", "III-IV", "V-VI"}
    truth = truth_of("ddi", out)
    assert truth["papule"]["000002.png"] == "1" and truth["papule"]["000001.png"] == "0"  # Papule is concept 1
    only = make_splits("ddi", [meta], salt="test", write=False)
    assert only.layout == "metadata_only" and len(only.rows) == 120 and "skincon_papule" not in only.columns


def test_concept_truth_names_phrases_of_the_card_store():
    """A faithfulness run looks up each annotated concept among the card's concepts."""
    from cbm.concepts import load_concepts
    from cbm.data._split_spec import rule_layouts

    with_truth = [name for name in list_cards() if load_card(name).concept_truth]
    assert {"derm7pt", "skincon", "ddi"} <= set(with_truth)
    for name in with_truth:
        card = load_card(name)
        phrases = set(load_concepts(card).concepts)
        assert set(card.concept_truth) <= phrases, (name, sorted(set(card.concept_truth) - phrases))
        written = set(rule_layouts(card.make_splits, card.class_names)[0].truth) | set(card.make_splits.get("keep", []))
        assert set(card.concept_truth.values()) <= written, name  # the default layout writes every truth column


def test_a_class_missing_from_a_split_is_named(tmp_path, caplog, monkeypatch):
    """Without a promised minimum, a class with no image in a split is still said (the manifest is written)."""
    import logging

    monkeypatch.setattr(logging.getLogger("cbm.data._splits"), "disabled", False)  # whatever logging config ran before

    rows = [[f"HAM_{i}", f"ISIC_{i:07d}", "nv" if i else "mel", "histo", 50, "male", "back", "x"] for i in range(40)]
    meta = write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"], rows)
    with caplog.at_level(logging.WARNING, logger="cbm.data"):  # whatever level an earlier test left on "cbm"
        result = make_splits("ham10000", [meta], salt="test", out=tmp_path / "m.csv")
    assert (tmp_path / "m.csv").is_file()
    assert "card ham10000: melanoma has 0 in val" in caplog.text and "melanoma has 0 in val" in result.summary()


def test_a_layout_of_fewer_files_is_not_taken_for_more(tmp_path):
    """Two DDI files without SkinCon's columns are an error, not the one-file layout that drops the concept truth."""
    meta = write_csv(tmp_path / "ddi_metadata.csv", ["", "DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"],
                     [[i, i + 1, f"{i + 1:06d}.png", 12, "True", "melanoma"] for i in range(10)])
    other = write_csv(tmp_path / "annotations_ddi.csv", ["ImageID", "Papule"], [[f"{i + 1:06d}.png", 1] for i in range(10)])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) .*Do not consider this image.* and 18 more.*given: .*annotations_ddi.csv"):
        make_splits("ddi", [meta, other], write=False)


def test_a_source_split_that_puts_a_patient_in_two_splits_keeps_the_patient_in_the_later_one(tmp_path):
    """With ``patient:`` set, the source's own split column still may not leak a patient between splits:
    the patient's rows stay in the later split (test before val before train) and the others are dropped."""
    rows = [[f"img{i}.png", ("nv", "mel")[i % 2], f"P{i // 2}", ("train", "train", "val", "test")[i // 2 % 4]]
            for i in range(40)]
    rows.append(["extra.png", "mel", "P2", "test"])  # P2's other images are in val (img4, img5)
    meta = write_csv(tmp_path / "meta.csv", ["file", "dx", "patient_id", "fold"], rows)
    (tmp_path / "card.yaml").write_text(
        "name: byfold\nmodality: dermoscopy\ntask: binary\nclasses:\n  - {name: nevus, description: benign}\n"
        "  - {name: melanoma, description: malignant}\nmanifest: manifest.csv\nmake_splits:\n  metadata: meta.csv\n"
        "  path: \"{file}\"\n  label: {column: dx, map: {nv: nevus, mel: melanoma}}\n  patient: patient_id\n"
        "  split: {method: column, column: fold, map: {train: train, val: val, test: test}}\n")
    result = make_splits(load_card(tmp_path / "card.yaml"), [meta], salt="t", out=tmp_path / "manifest.csv",
                         check_images=False)
    out = read_rows(tmp_path / "manifest.csv")
    by_patient = {}
    for r in out:
        by_patient.setdefault(r["patient_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r["path"]: r["split"] for r in out}["extra.png"] == "test" and "img4.png" not in {r["path"] for r in out}
    assert sum(n for k, n in result.dropped.items() if "later split" in k) == 2


PERSON_COLUMNS = ["patient_id", "PatientName", "Patient ID", "name", "dob", "MRN", "first_name", "BirthDate",
                  "AccessionNumber", "LastName", "surname", "subject_id", "StudyInstanceUID", "zip_code", "email",
                  "phone_number", "Patient's Name", "Referring Physician's Name", "OtherPatientIDs", "patientid",
                  "PATIENTID", "PatientsName", "pt_name", "name_last", "phone", "medical_record_number", "nhs_number"]
THING_COLUMNS = ["Patient Age", "Patient Gender", "PatientSex", "PatientWeight", "Image Index", "lesion_id", "age_approx",
                 "View Position", "file_name", "image_name", "site_name", "scanner_name", "institution_name", "study name",
                 "phone_model", "anatom_site_general", "dx_type", "Finding Labels", "AP/PA", "seven_point_score"]


@pytest.mark.parametrize("column, person", [(c, True) for c in PERSON_COLUMNS] + [(c, False) for c in THING_COLUMNS])
def test_keep_tells_a_persons_identity_from_other_columns(column, person):
    from cbm.data._identity import names_a_date_or_free_text, names_a_person

    assert names_a_person(column) is person
    assert not (person is False and names_a_date_or_free_text(column))  # none of the plain columns is a date or text


def test_a_year_count_or_flag_about_a_date_or_a_report_is_no_date_or_text():
    from cbm.data._identity import names_a_date_or_free_text

    for column in ("StudyDate_year", "AcquisitionDate_year", "has_report", "report_available", "NotesCount", "note_id"):
        assert not names_a_date_or_free_text(column), column


@pytest.mark.parametrize("column", ["StudyDate_DICOM", "study_date", "AcquisitionDateTime", "Report", "ImageComments",
                                    "clinical notes", "Impression", "ISODate", "Findings"])
def test_keep_refuses_a_date_or_free_text(column):
    """PadChest's StudyDate and Report were copied into a manifest in clear, where PatientBirth was refused."""
    raw = {"metadata": "m.csv", "path": "{id}.png", "label": {"column": "dx", "map": {"mel": "melanoma", "nv": "nevus"}},
           "split": {"method": "random"}, "keep": ["age", column]}
    with pytest.raises(ValueError, match=f"keep names '{column}', named as a date or free text"):
        parse_split_spec(raw, ["melanoma", "nevus"])
