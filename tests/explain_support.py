"""What the ``tests/test_explain*`` and ``tests/test_reference.py`` files share: small real models,
test images, a DICOM file with PHI sentinels, the browser, and page checks.

The fixtures (``vit_encoder``, ``tiny_model``, ``demo_model``, ``browser``) are registered in
``tests/conftest.py``. The tiny model is real in every part but the encoder's weights: a tiny
open_clip ViT (64 px) created by ``cbm.encoders.create_encoder("CONFIG.json@random")``, concepts
embedded by its text tower, the bottleneck fitted on its features of a few generated images, a
sparse head with a few non-zero weights per class and a training reference, saved and loaded.
The demo model is the method end to end on a small demo world with the shipped ``demo-clip``.
"""

from __future__ import annotations

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

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


def save_png(path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)


def build_model(encoder, folder, *, reference: bool = True):
    """Fit the bottleneck on the encoder's features of 16 generated images; sparse head; a training
    reference from those images (and 8 more for validation) unless ``reference=False``; save; load."""
    import torch

    from cbm.bottleneck import ConceptBottleneck
    from cbm.model import ConceptBottleneckModel
    from cbm.reference import build_reference

    images = folder / "train-images"
    images.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(24):
        save_png(images / f"{i}.png", make_image(100 + i))
        paths.append(f"{i}.png")
    from cbm.data import read_image

    feats = encoder.encode_image(torch.stack([encoder.transform(read_image(images / p)) for p in paths])).numpy()
    train, val = feats[:16], feats[16:]
    text = encoder.encode_text(CONCEPTS).numpy()
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
              "metrics": {"cbm": {"accuracy": 0.75, "val_accuracy": 0.7}},
              "concept_source": {"store": str(folder / "concepts.json")},
              "head": {"alpha": 0.99}, "lambda": 0.01},
    )
    if reference:
        labels = np.arange(24) % len(CLASSES)
        splits = {"train": SimpleNamespace(features=train, labels=labels[:16], paths=paths[:16]),
                  "val": SimpleNamespace(features=val, labels=labels[16:], paths=paths[16:]),
                  "test": SimpleNamespace(features=val, labels=labels[16:], paths=paths[16:])}
        model.reference = build_reference(model, splits, image_root=images, n_bootstrap=50)
    model.save(folder)
    loaded = ConceptBottleneckModel.load(folder)
    loaded.set_encoder(encoder)
    return loaded


def vit_encoder(tmp_path_factory):
    return tiny_encoder("cbmtest-vit", tmp_path_factory.mktemp("configs"))


def tiny_model(vit_encoder, tmp_path_factory):
    return build_model(vit_encoder, tmp_path_factory.mktemp("model"))


def demo_model(tmp_path_factory):
    """``(model, card)``: the method (``cbm.fit``) on a 400-image demo world with the shipped ``demo-clip``."""
    import cbm
    from cbm.data import load_card
    from cbm.demo import make_dataset
    from cbm.heads import SparseConceptHead

    card = load_card(make_dataset(tmp_path_factory.mktemp("demo") / "world", n=400, size=64, progress=False, workers=1))
    # the default faithful head; 60 validation images cannot tell 4 concepts per class from 1 (the
    # full demo's 900 can), so the densest point up to 8 per class stands in for the full demo's choice
    head = SparseConceptHead(constraint="prior", max_concepts_per_class=8, selection="concepts")
    return cbm.fit(card, head=head, num_workers=0), card


# ---------------------------------------------------------------------------- PHI
PHI = {  # sentinel values for the PHI tags; none may appear in any output
    "PatientName": "Zyxwvut^Qwertyuiop",
    "PatientID": "PID-778899-SENTINEL",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACC-SNTNL-4242",
}


def write_phi_dicom(path, seed: int = 0, *, modality: str | None = "CT", frames: int = 1, burned_in: bool = False) -> None:
    """A 12-bit CT-like DICOM (Part 10) whose patient name, ID, birth date and accession number are sentinels
    (``modality`` None: no Modality; ``frames`` of the same picture; ``burned_in``: BurnedInAnnotation YES)."""
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
    if modality is not None:
        ds.Modality = modality
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = 72, 96
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 1024, 4096
    pixels = (make_image(seed, (72, 96)).mean(-1) * 4000).astype(np.uint16)
    ds.PixelData = pixels.tobytes() * frames
    ds.save_as(path, enforce_file_format=True)


def assert_no_phi(text: str) -> None:
    """None of the PHI sentinels (nor the birth date written as a date) appears in ``text``."""
    low = text.lower()
    for value in ("Zyxwvut", "Qwertyuiop", PHI["PatientID"], PHI["AccessionNumber"], "1923-04-05", "05.04.1923",
                  "04/05/1923", "05/04/1923"):
        assert value.lower() not in low, f"PHI sentinel {value!r} leaked"
    # base64 image data may contain any 8 digits by chance; the birth date must not appear outside it
    assert PHI["PatientBirthDate"] not in re.sub(r"data:[^\"'\s)]+", "", text), "PHI birth date leaked"


# ---------------------------------------------------------------------------- the browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser(tmp_path_factory):
    """Headless Debian Chromium driven by Playwright, with a fresh profile (user data dir)."""
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

    def accessibility_problems(self) -> list[str]:
        """Visible text under 13 px or under 4.5:1 contrast (WCAG AA, text over its nearest opaque
        background), and controls without an accessible name; empty when there are none."""
        return self.page.evaluate(_A11Y_JS)


_A11Y_JS = r"""() => {
  const problems = [];
  const lum = c => { const v = c.map(x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
                     return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const rgba = s => { const m = s.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const background = el => { for (let e = el; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor);
                               if (c[3] > 0.5) return c; } return [255, 255, 255, 1]; };
  const visible = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
                          return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"; };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el || !visible(el) || el.closest("script, style, noscript")) continue;
    const s = getComputedStyle(el);
    let size = parseFloat(s.fontSize);
    const svg = el.closest("svg");
    if (svg) size *= svg.getScreenCTM().a;
    if (size < 13 - 1e-6) problems.push(`${size.toFixed(1)} px: ${n.textContent.trim().slice(0, 40)}`);
    const fg = rgba(s.color), bg = background(el);
    const a = lum(fg), b = lum(bg), ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (!svg && ratio < 4.5) problems.push(`contrast ${ratio.toFixed(2)}: ${n.textContent.trim().slice(0, 40)}`);
  }
  for (const el of document.querySelectorAll("input, button, select, textarea, summary, a[href]")) {
    if (!visible(el) && el.type !== "radio") continue;
    const label = el.getAttribute("aria-label") || (el.labels && el.labels.length && el.labels[0].textContent.trim())
                  || el.textContent.trim();
    if (!label) problems.push(`no accessible name: <${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 60)}>`);
  }
  return problems;
}"""
