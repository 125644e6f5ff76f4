"""The training reference (cbm.reference): out-of-distribution score and threshold, nearest training
images, the operating point, saving and loading with the model, and models saved before it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from explain_support import CLASSES, make_image, save_png

from cbm.errors import ModelFormatError
from cbm.evaluate import operating_point
from cbm.model import ConceptBottleneckModel
from cbm.reference import REFERENCE_FILE, TrainingReference, build_reference, image_flags


def _gaussian(n: int, d: int = 16, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Features sharing a direction, as image embeddings do; ``shift`` moves them towards another."""
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[:, 0] += 6.0
    x[:, 1] += shift
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _splits(n_train=300, n_val=200):
    train, val = _gaussian(n_train, seed=1), _gaussian(n_val, seed=2)
    labels = np.arange(n_train) % 2
    return {"train": SimpleNamespace(features=train, labels=labels, paths=[f"{i}.png" for i in range(n_train)]),
            "val": SimpleNamespace(features=val, labels=np.arange(n_val) % 2, paths=[])}


def _model():
    return SimpleNamespace(classes=["a", "b"], predict_proba_from_features=lambda f: np.tile([0.7, 0.3], (len(f), 1)))


def test_threshold_lets_the_set_share_of_validation_images_through_and_flags_strangers():
    splits = _splits()
    ref = build_reference(_model(), splits, thumbnails=False, val_pass_rate=0.95)
    assert ref.facts["val_pass_rate"] == pytest.approx(0.95, abs=0.01) and ref.facts["n_val"] == 200
    fresh = _gaussian(2000, seed=3)  # new images from the training distribution
    assert np.mean(ref.ood_scores(fresh) <= ref.threshold) == pytest.approx(0.95, abs=0.03)
    stranger = _gaussian(20, seed=4, shift=12.0)  # images from elsewhere
    assert np.all(ref.ood_scores(stranger) > ref.threshold)
    flag = ref.flag(stranger[0])
    assert flag.code == "unlike-training" and "unlike the images the model was trained on" in flag.message
    assert ref.flag(fresh[np.argmin(ref.ood_scores(fresh))]) is None
    # the default lets through more, so that at least 95 % of new in-domain images are answered
    default = build_reference(_model(), splits, thumbnails=False)
    assert default.facts["val_pass_rate_target"] == 0.975 and default.threshold > ref.threshold


def test_without_val_the_reference_cannot_abstain():
    ref = build_reference(_model(), {"train": _splits()["train"]}, thumbnails=False)
    assert ref.threshold is None and not ref.can_abstain and ref.flag(_gaussian(1, shift=3)[0]) is None


def test_nearest_and_subsample():
    splits = _splits(n_train=500)
    ref = build_reference(_model(), splits, thumbnails=False, max_images=100)
    assert len(ref) == 100 and ref.facts["n_train"] == 500
    assert abs(int(np.sum(ref.labels == 0)) - 50) <= 1  # drawn per class in proportion
    query = splits["train"].features[ref.rows[7]]
    first = ref.nearest(query, k=3)[0]
    assert first.row == ref.rows[7] and first.similarity == pytest.approx(1.0, abs=1e-3) and first.thumbnail is None



def test_a_neighbour_is_named_by_its_manifest_row_when_an_earlier_training_image_was_skipped():
    # the manifest's train rows 0..300, row 5 unreadable: the images read are rows 0-4 and 6-300
    splits = _splits(n_train=300)
    splits["train"].indices = np.r_[0:5, 6:301]
    ref = build_reference(_model(), splits, thumbnails=False)
    query = splits["train"].features[9]  # the image of manifest row 10
    assert ref.nearest(query, k=1)[0].row == 10


def test_a_subsample_keeps_every_class_when_the_rounding_overshoots():
    from cbm.reference import _sample_rows

    labels = np.r_[np.zeros(20_000, int), np.arange(1, 31)]  # 30 rare classes listed last
    keep = _sample_rows(labels, 10_000, seed=0)
    assert len(keep) == 10_000 and len(np.unique(labels[keep])) == 31

def test_operating_point_figures():
    y = np.array([0] * 40 + [1] * 60)
    pred = np.array([0] * 30 + [1] * 10 + [1] * 54 + [0] * 6)
    proba = np.eye(2)[pred]
    out = operating_point(y, proba, ["a", "b"], n_bootstrap=200, seed=0)
    assert out["confusion"] == [[30, 10], [6, 54]] and out["n"] == 100
    sens, lo, hi = out["sensitivity"]["a"]
    assert sens == pytest.approx(0.75) and lo < 0.75 < hi and 0.55 < lo and hi < 0.9
    assert out["specificity"]["a"][0] == pytest.approx(0.9) and out["sensitivity"]["b"][0] == pytest.approx(0.9)
    assert operating_point(y[:40], proba[:40], ["a", "b"])["sensitivity"]["b"] == [None, None, None]


def test_saved_with_the_model_and_loaded_back(tiny_model, tmp_path):
    folder = tiny_model.save(tmp_path / "m")
    assert (folder / REFERENCE_FILE).is_file()
    loaded = ConceptBottleneckModel.load(folder)
    a, b = tiny_model.reference, loaded.reference
    assert b.threshold == pytest.approx(a.threshold) and b.thumbnails == a.thumbnails
    assert np.allclose(b.features, a.features, atol=1e-3) and list(b.rows) == list(a.rows)
    assert b.facts["performance"]["test"]["confusion"] == a.facts["performance"]["test"]["confusion"]
    feature = a.features[3]
    assert b.ood_score(feature) == pytest.approx(a.ood_score(feature), rel=1e-3)
    # a model saved without a reference into the same folder leaves none behind
    ConceptBottleneckModel(loaded.encoder_name, loaded.classes, loaded.bottleneck, loaded.coef, loaded.intercept).save(folder)
    assert not (folder / REFERENCE_FILE).exists() and ConceptBottleneckModel.load(folder).reference is None


def test_a_damaged_reference_is_named_with_the_fix(tiny_model, tmp_path):
    folder = tiny_model.save(tmp_path / "m")
    good = (folder / REFERENCE_FILE).read_bytes()
    (folder / REFERENCE_FILE).write_bytes(b"not a safetensors file")
    # model.json records the reference's digest: an edited file, or another model's, is refused by it
    with pytest.raises(ModelFormatError, match=r"reference\.safetensors.*not the training reference model\.json was "
                                               r"saved with.*delete the file"):
        ConceptBottleneckModel.load(folder)
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference_sha256"]  # as a model saved before the digest: the file's own checks remain
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match=r"reference\.safetensors.*cannot be read.*delete the file"):
        ConceptBottleneckModel.load(folder)
    other = TrainingReference(np.eye(3, 32, dtype=np.float32), np.zeros(3), ["x", "y"], thumbnails=None)
    other.save(folder)
    with pytest.raises(ModelFormatError, match="classes"):
        ConceptBottleneckModel.load(folder)
    TrainingReference(np.eye(3, 8, dtype=np.float32), np.zeros(3), CLASSES).save(folder)
    with pytest.raises(ModelFormatError, match=r"\(n, 32\) features"):
        ConceptBottleneckModel.load(folder)
    (folder / REFERENCE_FILE).write_bytes(good)
    assert ConceptBottleneckModel.load(folder).reference is not None
    # a model saved without a reference, and a reference file beside it
    bare = tiny_model.save(tmp_path / "bare")
    meta = json.loads((bare / "model.json").read_text())
    meta["reference_sha256"] = None
    (bare / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="saved without a training reference"):
        ConceptBottleneckModel.load(bare)


def make_image_file(path):
    save_png(path, make_image(9))
    return path


def test_a_model_saved_before_the_reference_still_explains_and_says_it_cannot_abstain(tiny_model, tmp_path, caplog):
    from cbm.explain import explain_image, render_case_html

    folder = tiny_model.save(tmp_path / "old")
    (folder / REFERENCE_FILE).unlink()
    # a copy that left the reference behind (its model.json records one): loaded, and said so once
    with caplog.at_level("WARNING", logger="cbm"):
        assert ConceptBottleneckModel.load(folder).reference is None
    assert caplog.text.count("model.json was saved with a training reference, but reference.safetensors is missing: "
                             "this copy of the model cannot flag an image unlike its training images") == 1
    # and every page says so with the fix the log gives, not "saved without a training reference"
    copy = ConceptBottleneckModel.load(folder)
    copy.set_encoder(tiny_model.encoder)
    assert copy.reference_lost and not tiny_model.reference_lost
    from cbm.explain import render_class_card_html
    from cbm.explain.render import IndexRow, render_index_html

    case = explain_image(copy, make_image(9))
    pages = [render_case_html(case), render_class_card_html(copy), render_index_html([IndexRow("case 1", case=case)], copy)]
    for page in pages:
        assert "lacks reference.safetensors" in page and "Copy reference.safetensors from the model" in page, page[:300]
        assert "saved without a training reference" not in page
    from cbm.explain import explain_batch

    explain_batch(copy, [make_image_file(tmp_path / "x.png")], tmp_path / "reports", progress=False)
    assert json.loads((tmp_path / "reports" / "index.json").read_text())["flags_unlike_training"] is False
    caplog.clear()
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference_sha256"]  # as a model folder written before the reference existed: nothing to say
    (folder / "model.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="cbm"):
        old = ConceptBottleneckModel.load(folder)
    assert "reference" not in caplog.text
    old.set_encoder(tiny_model.encoder)
    assert old.reference is None
    expl = old.explain(make_image(9))
    assert not expl.can_abstain and expl.ood_score is None and expl.flags == [] and not expl.withheld
    case = explain_image(old, make_image(9))
    assert case.neighbours == []
    html = render_case_html(case)
    assert 'id="cannot-abstain"' in html and "cannot tell when an image is unlike" in html and "still withholds" in html and "cannot show similar training images" in html
    assert f'data-predicted="{case.predicted}"' in html


def test_image_checks():
    colour, grey = make_image(1), make_image(1).mean(-1, keepdims=True)
    assert image_flags("dermoscopy", colour, {}) == []
    assert [f.code for f in image_flags("dermoscopy", grey, {})] == ["greyscale"]
    ct = {"format": "dicom", "modality": "CT"}
    assert [f.code for f in image_flags("dermoscopy", grey, ct)] == ["modality", "greyscale"]
    assert [f.code for f in image_flags("chest X-ray", grey, ct)] == ["modality"]
    assert image_flags("Chest X ray", grey, {"format": "dicom", "modality": "DX"}) == []
    # other modalities a card may name: an MR slice for a CT model, a CT slice for fundus photographs
    mr = {"format": "dicom", "modality": "MR"}
    assert [f.code for f in image_flags("chest CT", grey, mr)] == ["modality"]
    assert image_flags("chest CT", grey, ct) == [] and image_flags("brain MRI", grey, mr) == []
    assert [f.code for f in image_flags("retinal fundus photograph", grey, ct)] == ["modality", "greyscale"]
    assert image_flags("retinal fundus photograph", colour, {"format": "dicom", "modality": "OP"}) == []
    assert image_flags("electron microscopy", grey, mr) == []  # no modality it knows: no such check
    mg, oct_scan = {"format": "dicom", "modality": "MG"}, {"format": "dicom", "modality": "OPT"}
    assert image_flags("X-ray mammography", grey, mg) == [] and image_flags("X-ray computed tomography", grey, ct) == []
    assert image_flags("retinal OCT", grey, oct_scan) == []
    assert [f.code for f in image_flags("head CT, non-contrast", grey, mr)] == ["modality"]
    # every modality a card names counts, and a word counts from its start
    pet = {"format": "dicom", "modality": "PT"}
    assert image_flags("FDG PET-CT", grey, pet) == [] and image_flags("chest radiograph with CT correlation", grey,
                                                                      {"format": "dicom", "modality": "DX"}) == []
    assert image_flags("retinal OCT", grey, {"format": "dicom", "modality": "IVOCT"}) == []  # OCT is grey, fundus colour
    assert image_flags("secret in a", grey, ct) == []  # no "retina" across words
    assert [f.code for f in image_flags(None, make_image(2, (12, 20)), {})] == ["too-small"]
    annotated = np.repeat(make_image(3).mean(-1, keepdims=True), 3, axis=2)
    annotated[:4, :4] = [1.0, 0.0, 0.0]  # a red annotation does not make a grey image a colour one
    assert [f.code for f in image_flags("dermoscopy", annotated, {})] == ["greyscale"]


def test_a_training_image_with_text_burned_in_keeps_no_thumbnail(tmp_path):
    """A report shows no image whose DICOM header says text is burned into its pixels: nor, then, a
    training image's thumbnail among a case's similar training images."""
    from explain_support import write_phi_dicom

    from cbm.reference import _thumbnails

    write_phi_dicom(tmp_path / "burned.dcm", burned_in=True)
    write_phi_dicom(tmp_path / "plain.dcm")
    thumbs, grey = _thumbnails(["burned.dcm", "plain.dcm"], tmp_path, 48)
    assert thumbs[0] is None and thumbs[1] and grey == 1.0  # both read, for the greyscale share


def test_a_model_trained_on_greyscale_images_too_is_not_refused_them(tmp_path):
    """Reading the training images for thumbnails records their greyscale share; a colour-modality model
    whose training set was grey in at least 5 % answers for a grey image, one trained on colour alone
    does not, and a model without the record (saved before it) keeps the modality's rule."""
    from PIL import Image

    grey_image = make_image(1).mean(-1, keepdims=True)
    assert [f.code for f in image_flags("dermoscopy", grey_image, {}, greyscale_share=0.0)] == ["greyscale"]
    assert [f.code for f in image_flags("dermoscopy", grey_image, {}, greyscale_share=None)] == ["greyscale"]
    assert image_flags("dermoscopy", grey_image, {}, greyscale_share=0.05) == []
    splits = _splits(n_train=40, n_val=20)
    for i in range(40):  # one training image in four is grey
        rgb = (make_image(i, (40, 48)) * 255).astype(np.uint8)
        Image.fromarray(rgb if i % 4 else rgb.mean(-1).astype(np.uint8)).save(tmp_path / f"{i}.png")
    ref = build_reference(_model(), splits, image_root=tmp_path)
    assert ref.facts["greyscale_share"] == pytest.approx(0.25)
    assert build_reference(_model(), splits, thumbnails=False).facts["greyscale_share"] is None
    ref.save(tmp_path / "saved")
    again = TrainingReference.load(tmp_path / "saved", classes=["a", "b"], dim=16)
    assert again.facts["greyscale_share"] == pytest.approx(0.25)


def test_a_threshold_set_on_too_few_validation_images_is_warned_of(caplog):
    splits = _splits(n_train=60, n_val=20)
    build_reference(_model(), splits, thumbnails=False)
    assert "rests on 20 validation images, too few to set a 97.5 % pass rate" in caplog.text
    assert "a val split of 41 or more sets it" in caplog.text
    caplog.clear()
    ref = build_reference(_model(), _splits(n_train=60, n_val=41), thumbnails=False)
    assert ref.threshold < ref.val_scores.max()  # 41 images: the threshold is no longer the largest score
    assert "rests on" not in caplog.text


def test_damaged_reference_fields_are_named(tiny_model, tmp_path):
    """A version that is no number, validation scores of another shape or with NaN, labels that are
    not whole numbers, a fact that is no number: each named, not a crash at explain time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = tiny_model.save(tmp_path / "m")
    meta = json.loads((folder / "model.json").read_text())
    del meta["reference_sha256"]  # the file's own checks, as for a model saved before the digest
    (folder / "model.json").write_text(json.dumps(meta))
    with safe_open(str(folder / REFERENCE_FILE), "pt") as f:
        saved_meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    facts = json.loads(saved_meta["facts"])
    cases = [({"version": "x"}, {}, "bad version 'x'"),
             ({}, {"val_scores": torch.zeros(1, 4)}, r"tensor val_scores.*a finite vector was expected"),
             ({}, {"val_scores": torch.full((4,), float("nan"))}, r"tensor val_scores.*non-finite"),
             ({}, {"labels": tensors["labels"].double() + 0.5}, r"tensor labels.*not whole numbers"),
             ({"facts": json.dumps({**facts, "greyscale_share": "x"})}, {}, r"greyscale_share has the bad value 'x'")]
    for meta_change, tensor_change, message in cases:
        save_file({**tensors, **tensor_change}, str(folder / REFERENCE_FILE), metadata={**saved_meta, **meta_change})
        with pytest.raises(ModelFormatError, match=message):
            ConceptBottleneckModel.load(folder)
