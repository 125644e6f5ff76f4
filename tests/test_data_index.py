"""cbm.data._index: a manifest from DICOM headers alone, without PHI and without decoding pixels."""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from cbm.data import index_dicom, read_manifest


def dicom(path: Path, patient: str, modality: str = "CR", rows: int = 16, **attrs: object) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = modality, patient, f"Name^{patient}"
    ds.StudyInstanceUID = generate_uid()
    ds.set_pixel_data(np.arange(rows * 20, dtype=np.uint16).reshape(rows, 20), "MONOCHROME2", 12)
    for k, v in attrs.items():
        setattr(ds, k, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_tree(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    for i in range(12):
        label = ("effusion", "normal")[i % 2]
        dicom(root / label / f"im{i:02d}.dcm", patient=f"P{i // 3}", BodyPartExamined="CHEST", ViewPosition=("PA", "AP")[i % 2])
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "normal" / "ct.dcm")
    shutil.copy(get_testdata_file("reportsi.dcm"), root / "normal" / "report.dcm")  # SR: no image
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), root / "effusion" / "mr_j2k")  # no extension
    (root / "normal" / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "normal" / "thumb.png")
    (root / "normal" / "fake.dcm").write_text("definitely not DICOM")
    (root / ".hidden").mkdir()
    dicom(root / ".hidden" / "skip.dcm", patient="X")
    return root


def test_index_writes_a_manifest_from_headers(dicom_tree, tmp_path):
    result = index_dicom(dicom_tree, tmp_path / "m.csv", label_from="folder", progress=False)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "m.csv"))}
    assert len(rows) == 14 and len(result.rows) == 14
    assert rows["normal/ct.dcm"]["modality"] == "CT" and rows["normal/ct.dcm"]["rows"] == "128"
    assert rows["effusion/mr_j2k"]["transfer_syntax"].startswith("JPEG 2000")
    assert rows["effusion/im00.dcm"] == {
        "path": "effusion/im00.dcm", "label": "effusion", "split": "", "modality": "CR", "body_part": "CHEST",
        "view_position": "PA", "photometric": "MONOCHROME2", "rows": "16", "columns": "20", "frames": "",
        "bits_stored": "12", "transfer_syntax": "Explicit VR Little Endian",
    }
    skipped = dict(result.skipped)
    assert skipped["normal/report.dcm"].startswith("no image")
    assert rows["normal/ct.dcm"]["body_part"] == ""  # CT_small.dcm has none
    assert skipped["normal/notes.txt"] == skipped["normal/thumb.png"] == "not DICOM"
    assert skipped["normal/fake.dcm"].startswith("header not readable") or skipped["normal/fake.dcm"].startswith("no image")
    assert not any(p.startswith(".hidden") for p in rows)
    assert "14 DICOM images indexed from 18 files" in result.summary()
    assert "    normal/report.dcm: no image" in result.summary()  # the files left out are named


def test_index_carries_no_phi(dicom_tree, tmp_path):
    index_dicom(dicom_tree, tmp_path / "m.csv", split="0.5,0.25,0.25", patient_key=True, progress=False)
    text = (tmp_path / "m.csv").read_text()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for secret in ("Name^P0", "P0,", str(ct.PatientName), str(ct.PatientID), str(ct.StudyInstanceUID)):
        assert secret not in text


def test_index_never_decodes_pixels(dicom_tree, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)
    monkeypatch.setattr(pydicom.pixels.decoders.base.Decoder, "as_array", boom)
    result = index_dicom(dicom_tree, None, progress=False)
    assert len(result.rows) == 14 and all(r["label"] == "" for r in result.rows)


def test_split_is_grouped_by_patient_and_deterministic(dicom_tree, tmp_path):
    first = index_dicom(dicom_tree, tmp_path / "a.csv", label_from="folder", split="0.5,0.25,0.25", seed=3, patient_key=True, salt="s", progress=False)
    index_dicom(dicom_tree, tmp_path / "b.csv", label_from="folder", split="0.5,0.25,0.25", seed=3, patient_key=True, salt="s", progress=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    by_key = defaultdict(set)
    for r in first.rows:
        by_key[r["patient_key"]].add(r["split"])
    assert all(len(s) == 1 for s in by_key.values())
    assert {r["split"] for r in first.rows} <= {"train", "val", "test"} and len({r["split"] for r in first.rows}) >= 2
    p0 = [r for r in first.rows if r["path"] in ("effusion/im00.dcm", "normal/im01.dcm")]
    assert p0[0]["patient_key"] == p0[1]["patient_key"] == hashlib.sha256(b"s:P0").hexdigest()[:16]
    # the manifest is a valid one for a two-class card (files checked too)
    m = read_manifest(tmp_path / "a.csv", class_names=["effusion", "normal"], image_root=dicom_tree)
    assert len(m) == 14 and not [p for p in m.report.problems if p.kind in ("missing_file", "unknown_label")]


def test_label_from_a_header_attribute(dicom_tree):
    result = index_dicom(dicom_tree, None, label_from="tag:ViewPosition", progress=False)
    labels = {r["path"]: r["label"] for r in result.rows}
    assert labels["effusion/im00.dcm"] == "PA" and labels["normal/im01.dcm"] == "AP"
    for keyword in ("PatientSex", "PatientAge", "ExposureTime", "ProtocolName", "BodyPartExamined"):
        index_dicom(dicom_tree, None, label_from=f"tag:{keyword}", progress=False)  # allowed, if empty here


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"label_from": "tag:NotAKeyword"}, ValueError, "not a DICOM keyword"),
        ({"label_from": "parent"}, ValueError, "'folder' or 'tag:<DICOM keyword>'"),
        # labels are written and printed in clear, so nothing that identifies a patient may be one
        ({"label_from": "tag:PatientName"}, ValueError, "PatientName can identify a patient"),
        ({"label_from": "tag:PatientID"}, ValueError, "PatientID can identify a patient"),
        ({"label_from": "tag:OtherPatientIDs"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:PatientBirthDate"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:AccessionNumber"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:InstitutionName"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:StudyInstanceUID"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:AdditionalPatientHistory"}, ValueError, "can identify a patient"),
        ({"label_from": "tag:StudyDescription"}, ValueError, "can identify a patient"),
        ({"split": "0.8,0.3,0.1"}, ValueError, "sum to 1"),
    ],
)
def test_bad_arguments(dicom_tree, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        index_dicom(dicom_tree, None, progress=False, **kwargs)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="DICOM folder not found"):
        index_dicom(tmp_path / "nope", None)


def test_free_text_in_code_fields_is_not_copied(tmp_path):
    """Body part, view and laterality are code strings a device or a person may fill with free text
    ("SKIN Jane Doe"): the manifest keeps them only as one word of DICOM's code alphabet."""
    dicom(tmp_path / "a" / "x.dcm", patient="P1", BodyPartExamined="SKIN Jane Doe", ViewPosition="p a")
    dicom(tmp_path / "a" / "y.dcm", patient="P2", BodyPartExamined="Chest ", ViewPosition="AP")
    index_dicom(tmp_path / "a", tmp_path / "m.csv", label_from="folder", progress=False)
    rows = {r["path"]: r for r in csv.DictReader(open(tmp_path / "m.csv"))}
    assert (rows["x.dcm"]["body_part"], rows["x.dcm"]["view_position"]) == ("", "")
    assert (rows["y.dcm"]["body_part"], rows["y.dcm"]["view_position"]) == ("CHEST", "AP")
    # nor as a label read from that tag
    index_dicom(tmp_path / "a", tmp_path / "t.csv", label_from="tag:BodyPartExamined", progress=False)
    assert [r["label"] for r in csv.DictReader(open(tmp_path / "t.csv"))] == ["", "CHEST"]
    from cbm.data import read_image

    from cbm.data._dicom import code_word

    assert [code_word(v) for v in ("Doe", "smith", "Chest", "pa", "LEFT_HAND")] == ["", "", "CHEST", "PA", "LEFT_HAND"]
    # body part, view and laterality: a defined term of the attribute only ("DOE", "ZEBULONQ" are code words too)
    assert [code_word(v, "ViewPosition") for v in ("PA", "mlo", "DOE", "ZEBULONQ")] == ["PA", "MLO", "", ""]
    assert [code_word(v, "BodyPartExamined") for v in ("Chest", "SKIN", "SMITH")] == ["CHEST", "SKIN", ""]
    assert [code_word(v, "ImageLaterality") for v in ("L", "r", "X")] == ["L", "R", ""]
    assert "body_part" not in read_image(tmp_path / "a" / "x.dcm").meta
    assert read_image(tmp_path / "a" / "y.dcm").meta["body_part"] == "CHEST"
