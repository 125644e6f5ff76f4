"""Per-case explanations (cbm.explain.case), and the small models the other test_explain_* files share.

The model here is real in every part but the encoder's weights: a tiny open_clip ViT (64 px)
created by ``cbm.encoders.create_encoder("CONFIG.json@random")``, concepts embedded by its text
tower, the bottleneck fitted on its features of a few generated images, and a sparse head with a
few non-zero weights per class, saved and loaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cbm.bottleneck import ConceptBottleneck
from cbm.model import ConceptBottleneckModel

CLASSES = ["melanoma", "benign nevus", "seborrhoeic keratosis"]
CONCEPTS = [
    "irregular border", "blue-white veil", "atypical pigment network", "regular pigment network",
    "symmetric shape", "milia-like cysts", "comedo-like openings", "dark dots",
]
# class -> {concept: weight}: a few non-zero weights per class, the rest exactly zero (sparse head)
WEIGHTS = {
    "melanoma": {"irregular border": 1.4, "blue-white veil": 1.1, "atypical pigment network": 0.8, "symmetric shape": -0.9},
    "benign nevus": {"regular pigment network": 1.2, "symmetric shape": 1.0, "irregular border": -0.7},
    "seborrhoeic keratosis": {"milia-like cysts": 1.3, "comedo-like openings": 0.9},
}
_CONFIGS = {
    "cbmtest-vit": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16,
                                                    "head_width": 32}},
    "cbmtest-rn": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}},
}
# timm's own tiny test ViTs (160 px, 10 x 10 patches), pooled by class token, by average, and by attention
for _suffix, _timm in (("", "test_vit"), ("-avg", "test_vit2"), ("-map", "test_vit3")):
    _CONFIGS[f"cbmtest-timmvit{_suffix}"] = {"embed_dim": 32, "vision_cfg": {
        "timm_model_name": _timm, "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear", "image_size": 160}}
_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}


def tiny_encoder(arch: str, folder):
    """The real ``cbm.encoders`` Encoder of a tiny random-init open_clip config (``CONFIG.json@random``)."""
    from cbm.encoders import create_encoder

    path = folder / f"{arch}.json"
    path.write_text(json.dumps({**_CONFIGS[arch], "text_cfg": _TEXT}))
    return create_encoder(f"{path}@random")


def make_image(seed: int, size: tuple[int, int] = (80, 96)) -> np.ndarray:
    """A structured RGB test image (H, W, 3) in [0, 1]: smooth background plus a dark blob."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    cy, cx = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((yy - cy * h / max(h, w)) ** 2 + (xx - cx * w / max(h, w)) ** 2) / rng.uniform(0.01, 0.04))
    base = np.stack([0.8 - 0.2 * yy, 0.6 + 0.1 * xx, 0.5 + 0 * xx], -1)
    img = base * (1 - 0.7 * blob[..., None]) + rng.normal(0, 0.02, (h, w, 3))
    return np.clip(img, 0, 1).astype(np.float32)


def build_model(encoder, folder) -> ConceptBottleneckModel:
    """Fit the bottleneck on the encoder's features of 16 generated images; sparse head; save; load."""
    text = encoder.encode_text(CONCEPTS).numpy()
    train = encoder.encode_image(torch.stack([encoder.transform(make_image(100 + i)) for i in range(16)])).numpy()
    bottleneck = ConceptBottleneck(CONCEPTS, text).fit(train)
    coef = np.zeros((len(CLASSES), len(CONCEPTS)), np.float32)
    for k, cls in enumerate(CLASSES):
        for concept, w in WEIGHTS[cls].items():
            coef[k, CONCEPTS.index(concept)] = w
    model = ConceptBottleneckModel(
        encoder.name, CLASSES, bottleneck, coef, np.array([0.1, 0.3, -0.2], np.float32),
        encoder_key=encoder.cache_key, train_raw_scores=bottleneck.raw_scores(train),
        info={"card": {"name": "tiny-derm", "title": "Tiny dermoscopy test world", "modality": "dermoscopy"},
              "data": {"train": {"n": 16, "skipped": 0}, "val": {"n": 8, "skipped": 0}},
              "metrics": {"test": {"accuracy": 0.75, "balanced_accuracy": 0.7}},
              "head": {"alpha": 0.99}, "lambda": 0.01},
    )
    model.save(folder)
    loaded = ConceptBottleneckModel.load(folder)
    loaded.set_encoder(encoder)
    return loaded


@pytest.fixture(scope="module")
def vit_encoder(tmp_path_factory):
    return tiny_encoder("cbmtest-vit", tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def tiny_model(vit_encoder, tmp_path_factory) -> ConceptBottleneckModel:
    return build_model(vit_encoder, tmp_path_factory.mktemp("model"))


# ---------------------------------------------------------------------------- tests of cbm.explain.case
def test_explanation_matches_the_model_and_lists_top_contributions(tiny_model):
    from cbm.explain import explain_image

    image = make_image(1)
    case = explain_image(tiny_model, image, top_k=3)
    expected = tiny_model.predict_proba_from_features(case.feature[None])[0]
    assert case.predicted == CLASSES[int(expected.argmax())]
    assert np.allclose([case.explanation.probabilities[c] for c in CLASSES], expected, atol=1e-5)
    # the feature the maps path computed is the encoder's own embedding of the image
    direct = tiny_model.encoder.encode_image(tiny_model.encoder.transform(image)[None])[0].numpy()
    assert np.allclose(case.feature, direct, atol=1e-5)
    top = case.explanation.top_concepts(k=3)
    assert len(top) == 3 and all(c.concept in WEIGHTS[case.predicted] for c in top)
    assert [abs(c.contribution) for c in top] == sorted((abs(c.contribution) for c in top), reverse=True)
    assert all(0 <= c.percentile <= 100 for c in top)


def test_maps_cover_the_top_concepts_of_predicted_and_runner_up(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(2), top_k=2)
    expl = case.explanation
    wanted = [c.concept for c in expl.top_concepts(expl.predicted, 2)]
    wanted += [c.concept for c in expl.top_concepts(expl.runner_up, 2) if c.concept not in wanted]
    assert case.maps.concepts == wanted
    assert case.maps.method == "patch-tokens"
    assert case.maps.maps.shape == (len(wanted), 4, 4)  # 64 px / 16 px patches
    assert case.maps.maps.min() >= 0 and case.maps.maps.max() <= 1


def test_intervention_present_and_absent_move_the_prediction(tiny_model):
    from cbm.explain import explain_image, presence_levels

    case = explain_image(tiny_model, make_image(3), maps=False)
    assert case.maps is None
    absent, present = presence_levels(tiny_model)
    assert np.all(present > absent)
    # present/absent are the training scores at the 95th/5th percentile
    j = CONCEPTS.index("irregular border")
    raw = tiny_model.train_raw_scores[:, j]
    z = (np.percentile(raw, 95) - tiny_model.bottleneck.mean_[j]) / tiny_model.bottleneck.std_[j]
    assert present[j] == pytest.approx(z, abs=1e-5)

    seen = case.explanation.probabilities
    yes = case.intervene({"irregular border": "present", "blue-white veil": "present"})
    no = case.intervene({"irregular border": "absent", "blue-white veil": "absent"})
    assert yes["melanoma"] > no["melanoma"]  # both concepts carry positive melanoma weights
    assert sum(yes.values()) == pytest.approx(1.0, abs=1e-6)
    # the same as the model's own intervention with explicit scores
    ref = tiny_model.intervene_features(case.feature, {"irregular border": float(present[j])})
    assert list(case.intervene({"irregular border": "present"}).values()) == pytest.approx(list(ref), abs=1e-6)
    # a no-op intervention (the case's own score) changes nothing
    same = case.intervene({"irregular border": case.explanation.scores["irregular border"]})
    assert list(same.values()) == pytest.approx(list(seen.values()), abs=1e-6)


def test_intervention_bad_input_is_named(tiny_model):
    from cbm.explain import explain_image

    case = explain_image(tiny_model, make_image(4), maps=False)
    with pytest.raises(KeyError, match="irregular border"):
        case.intervene({"irregular bordr": "present"})
    with pytest.raises(ValueError, match="present"):
        case.intervene({"irregular border": "yes"})


def test_grey_and_non_square_images_are_displayed_with_the_crop(tiny_model):
    from cbm.explain import explain_image

    grey = make_image(5, (120, 60)).mean(-1, keepdims=True)
    case = explain_image(tiny_model, grey, max_side=90)
    assert case.image.shape == (90, 45, 3) and case.image.dtype == np.uint8
    assert case.crop == (0, 22, 45)  # the centred square the encoder saw, in display pixels
    with pytest.raises(ValueError, match="shape"):
        explain_image(tiny_model, np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="top_k"):
        explain_image(tiny_model, grey, top_k=0)


# ---------------------------------------------------------------------------- shared by the report and server tests
PHI = {  # sentinel values for the PHI tags; none may appear in any output
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientID": "PID-778899-SENTINEL",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACC-SNTNL-4242",
}


def write_phi_dicom(path, seed: int = 0) -> None:
    """A 12-bit CT-like DICOM (Part 10) whose patient name, ID, birth date and accession number are sentinels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    for tag, value in PHI.items():
        setattr(ds, tag, value)
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 72, 96
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1024, 4096
    pixels = (make_image(seed, (72, 96)).mean(-1) * 4000).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def assert_no_phi(text: str) -> None:
    """None of the PHI sentinels (nor the birth date written as a date) appears in ``text``."""
    import re

    low = text.lower()
    for value in ("Zyxwvut", "Qwertyuiop", PHI["PatientID"], PHI["AccessionNumber"], "1923-04-05", "05.04.1923",
                  "04/05/1923", "05/04/1923"):
        assert value.lower() not in low, f"PHI sentinel {value!r} leaked"
    # base64 image data may contain any 8 digits by chance; the birth date must not appear outside it
    assert PHI["PatientBirthDate"] not in re.sub(r"data:[^\"'\s)]+", "", text), "PHI birth date leaked"


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by Playwright, with a fresh profile (user data dir)."""
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's browser with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield context
        context.close()


class PageLog:
    """A browser page with every request and console error it produced recorded."""

    def __init__(self, context, width: int = 1100, height: int = 900) -> None:
        self.page = context.new_page()
        self.page.set_viewport_size({"width": width, "height": height})
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def images_loaded(self) -> list[int]:
        """naturalWidth of every <img> once it finished loading."""
        return self.page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : -1)")

    def after_probabilities(self, n: int) -> list[float]:
        return [float(self.page.get_attribute(f'[data-after-class="{k}"]', "data-p")) for k in range(n)]
