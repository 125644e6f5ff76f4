"""Reports (cbm.explain.render, cbm.explain.batch): content, self-containment, PHI, and the page in Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_explain import (  # noqa: F401 - fixtures
    CLASSES,
    CONCEPTS,
    PageLog,
    assert_no_phi,
    browser,
    make_image,
    vit_encoder,
    tiny_model,
    write_phi_dicom,
)

from cbm.bottleneck import ConceptBottleneck
from cbm.explain import collect_inputs, explain_batch, explain_image, render_case_html, render_class_card_html
from cbm.explain.case import MIN_IMAGE_SIDE
from cbm.model import ConceptBottleneckModel


class _Refs(HTMLParser):
    """Every URL a page could fetch or navigate to, and its <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v for k, v in a.items() if k in ("src", "href", "action", "srcset", "poster", "data") and v]
        if tag == "script":
            self.scripts.append(a)


def _refs(html: str) -> _Refs:
    p = _Refs()
    p.feed(html)
    return p


def _save_png(path, image: np.ndarray) -> None:
    Image.fromarray((image * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def case(tiny_model):
    return explain_image(tiny_model, make_image(11, (240, 320)), label="lesion 11", truth="melanoma", top_k=3)


def test_report_shows_prediction_contributions_and_maps(case, tiny_model):
    html = render_case_html(case, top_k=3)
    expl = case.explanation
    assert f'data-predicted="{expl.predicted}"' in html
    assert "Case report: lesion 11" in html and 'data-truth="melanoma"' in html
    for c in expl.top_concepts(expl.predicted, 3) + expl.top_concepts(expl.runner_up, 3):
        assert c.concept in html
    assert html.count('class="concept-map"') == len(case.maps.concepts)
    assert html.count("<svg") >= 2  # contribution charts for the predicted class and the runner-up
    assert "cosine with the concept&#x27;s text direction</dd>" in html  # plain cosines: nothing removed


def test_report_says_how_concept_scores_were_made():
    from types import SimpleNamespace

    from cbm.bottleneck import ConceptBottleneck
    from cbm.explain.render import _score_kind

    emb = np.random.default_rng(0).normal(size=(3, 8))
    bn = ConceptBottleneck.debiased(["a", "b", "c"], emb, nuisance_embeddings=emb[:1] + 1, nuisance_prompts=["ruler"])
    assert _score_kind(SimpleNamespace(bottleneck=bn)) == (
        "cosine with the concept's text direction, centred on the mean concept; directions of \u201cruler\u201d removed"
    )


def test_report_is_self_contained_and_small(tiny_model, case):
    html = render_case_html(case)
    refs = _refs(html)
    external = [u for u in refs.urls if not u.startswith("data:") and re.match(r"^([a-z][a-z0-9+.-]*:|//)", u, re.I)]
    assert not external, f"report references {external}"
    assert "@import" not in html and "url(" not in html
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp and "img-src data:" in csp and "script-src 'sha256-" in csp
    # the only executable script is the inline intervention script; the data block is inert JSON
    assert [s.get("type") for s in refs.scripts] == ["application/json", None] and not any("src" in s for s in refs.scripts)
    # a large image is shown at most 512 px wide and the report stays under 1 MB
    big = explain_image(tiny_model, make_image(12, (1500, 2000)))
    big_html = render_case_html(big)
    assert len(big_html.encode()) <= 1_000_000
    uri = re.search(r'id="case-image" src="data:image/jpeg;base64,([^"]+)"', big_html).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(uri))).size == (512, 384)


def test_embedded_head_reproduces_the_interventions(case, tiny_model):
    """The JSON the page computes interventions from gives the model's own numbers."""
    html = render_case_html(case)
    data = json.loads(re.search(r'<script type="application/json" id="cbm-data">(.*?)</script>', html, re.S).group(1))
    assert data["classes"] == CLASSES
    W, b, z = np.array(data["weights"]), np.array(data["intercept"]), np.array(data["scores"])
    assert set(data["concepts"]) == {CONCEPTS[j] for j in np.flatnonzero(np.any(tiny_model.coef != 0, axis=0))}
    for concept, state in (("blue-white veil", "present"), ("symmetric shape", "absent")):
        j = data["concepts"].index(concept)
        zz = z.copy()
        zz[j] = data[state][j]
        logits = W @ zz + b
        p = np.exp(logits - logits.max())
        assert p / p.sum() == pytest.approx(list(case.intervene({concept: state}).values()), abs=1e-5)


def test_names_from_the_model_are_escaped(tiny_model, vit_encoder):
    """A concept or class name with markup shows as text and cannot break out of the JSON block."""
    evil = "</script><script>alert(1)</script>"
    bn = tiny_model.bottleneck
    names = [evil if c == "irregular border" else c for c in bn.concept_names]
    hostile = ConceptBottleneckModel(
        "cbmtest-vit", ["<b>mel</b>", *CLASSES[1:]], ConceptBottleneck(names, bn.concept_embeddings, bn.mean_, bn.std_),
        tiny_model.coef, tiny_model.intercept, train_raw_scores=tiny_model.train_raw_scores)
    hostile.set_encoder(vit_encoder)
    html = render_case_html(explain_image(hostile, make_image(13)))
    assert "<script>alert" not in html and "<b>mel</b>" not in html
    assert html.count("<script") == 2
    data = json.loads(re.search(r'id="cbm-data">(.*?)</script>', html, re.S).group(1))
    assert evil in data["concepts"] and "<b>mel</b>" in data["classes"]
    card = render_class_card_html(hostile)
    assert "<script>alert" not in card and "&lt;/script&gt;" in card


def test_class_card_lists_weights_sparsity_metrics_and_data(tiny_model):
    html = render_class_card_html(tiny_model)
    for cls in CLASSES:
        assert f'data-class="{cls}"' in html
    section = html.split('data-class="seborrhoeic keratosis"')[1].split("</div>")[0]
    assert "milia-like cysts" in section and "comedo-like openings" in section and "irregular border" not in section
    assert "9 of 24 (62.5% sparse; 3.0 per class on average)" in html
    assert "balanced_accuracy" in html and "Tiny dermoscopy test world" in html and "dermoscopy" in html


def test_dicom_report_carries_no_phi(tiny_model, tmp_path):
    dcm = tmp_path / "ct_slice.dcm"
    write_phi_dicom(dcm)
    result = explain_batch(tiny_model, [dcm], tmp_path / "out", progress=False)
    assert not result.failures and len(result.reports) == 1
    report = result.reports[0].read_text()
    assert "data-predicted=" in report and "image format" in report
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert_no_phi(path.read_text())


def test_batch_over_folder_and_manifest(tiny_model, tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _save_png(images / "a.png", make_image(21))
    Image.fromarray((make_image(22) * 255).astype(np.uint8)).save(images / "sub" / "b.jpg", quality=90)
    write_phi_dicom(images / "sub" / "IM0001")  # a DICOM without extension, found by its DICM marker
    (images / "notes.txt").write_text("not an image")
    (images / "broken.png").write_bytes((images / "a.png").read_bytes()[:80])
    found = collect_inputs([images], class_names=CLASSES)
    assert [p.path.name for p in found] == ["a.png", "broken.png", "IM0001", "b.jpg"]

    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\nimages/a.png,melanoma,test\nimages/sub/b.jpg,benign nevus,test\n"
                        "images/sub/IM0001,melanoma,train\n")
    rows = collect_inputs([manifest], class_names=CLASSES, split="test")
    assert [(r.path.name, r.truth) for r in rows] == [("a.png", "melanoma"), ("b.jpg", "benign nevus")]
    # a data card: its manifest, read from the card's image root
    (tmp_path / "card.yaml").write_text(
        "name: tiny\nmodality: dermoscopy\ntask: multiclass\nclasses:\n"
        + "".join(f"  - name: {c}\n    description: a class\n" for c in CLASSES)
        + "image_root: .\nmanifest: manifest.csv\n")
    from_card = collect_inputs([tmp_path / "card.yaml"], class_names=CLASSES, split="train")
    assert [(r.path, r.truth) for r in from_card] == [(tmp_path / "images/sub/IM0001", "melanoma")]

    result = explain_batch(tiny_model, found + rows, tmp_path / "out", progress=False)
    assert len(result.reports) == 5 and [label for label, _ in result.failures] == ["broken.png"]
    index = (tmp_path / "out" / "index.html").read_text()
    assert "5 of 6 inputs explained; 1 could not be read" in index and "agreement with the known labels" in index
    assert 'href="cases/a.html"' in index and 'href="cases/a-2.html"' in index  # same file name twice, two reports
    summary = json.loads((tmp_path / "out" / "index.json").read_text())
    assert "error" in summary["cases"][1] and summary["cases"][4]["truth"] == "melanoma"
    for case in summary["cases"]:
        if "predicted" in case:
            assert case["predicted"] in CLASSES and sum(case["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    report = (tmp_path / "out" / "cases" / "a.html").read_text()
    assert 'href="../index.html"' in report and 'href="../classes.html"' in report


def test_batch_hide_names_and_input_errors(tiny_model, tmp_path):
    secret = tmp_path / "DOE_JANE_1961"
    secret.mkdir()
    _save_png(secret / "DOE_JANE.png", make_image(31))
    explain_batch(tiny_model, collect_inputs([secret], class_names=CLASSES), tmp_path / "out", hide_names=True,
                  progress=False)
    assert (tmp_path / "out" / "cases" / "case-0001.html").is_file()
    for path in (tmp_path / "out").rglob("*.*"):
        assert "DOE_JANE" not in path.read_text() and "DOE_JANE" not in path.name
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_inputs([tmp_path / "nope.png"], class_names=CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to explain"):
        collect_inputs([tmp_path / "empty"], class_names=CLASSES)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label,split\nx.png,melanoma,test\n")
    with pytest.raises(ValueError, match="path"):
        collect_inputs([bad], class_names=CLASSES)
    bad.write_text("path,label,split\nx.png,melanoma,test\n")
    with pytest.raises(ValueError, match="no rows in split 'val'"):
        collect_inputs([bad], class_names=CLASSES, split="val")


def test_report_warns_when_the_image_is_not_what_the_model_was_trained_on(tiny_model, tmp_path, monkeypatch):
    assert explain_image(tiny_model, make_image(41), maps=False).warnings == []  # a colour image, big enough
    dcm = tmp_path / "slice.dcm"
    write_phi_dicom(dcm)  # a greyscale CT slice, explained by a dermoscopy model
    ct = explain_image(tiny_model, dcm, maps=False)
    assert len(ct.warnings) == 2
    assert "modality is CT" in ct.warnings[0] and "dermoscopy" in ct.warnings[0] and "greyscale" in ct.warnings[1]
    html = render_case_html(ct, tiny_model)
    assert 'id="input-warnings"' in html and "modality is CT" in html
    assert 'id="input-warnings"' not in render_case_html(explain_image(tiny_model, make_image(41), maps=False), tiny_model)
    tiny = explain_image(tiny_model, make_image(42, (12, 20)), maps=False)
    assert tiny.warnings == [f"The image is 20 x 12 pixels, too small to show a finding (at least {MIN_IMAGE_SIDE} "
                             "pixels on each side expected); the prediction does not mean much."]
    # the batch index flags the case, index.json lists why
    result = explain_batch(tiny_model, [dcm], tmp_path / "out", maps=False, progress=False)
    assert len(result.reports) == 1 and "(check the image)" in result.index.read_text()
    assert json.loads((tmp_path / "out" / "index.json").read_text())["cases"][0]["warnings"] == ct.warnings
    # a chest x-ray model takes greyscale images and CR/DX files; a CT file is still flagged
    grey = np.repeat(make_image(44).mean(-1, keepdims=True), 3, axis=2)
    grey[:4, :4] = [1.0, 0.0, 0.0]  # a red annotation does not make a grey image a colour one
    assert [w[:22] for w in explain_image(tiny_model, grey, maps=False).warnings] == ["The image is greyscale"]
    monkeypatch.setattr(tiny_model, "info", {"card": {"name": "cxr", "modality": "Chest X ray"}})
    assert explain_image(tiny_model, make_image(43).mean(-1), maps=False).warnings == []
    assert [w[:36] for w in explain_image(tiny_model, dcm, maps=False).warnings] == ["This DICOM file's modality is CT; th"]
    monkeypatch.setattr(tiny_model, "info", {})  # an unknown modality: only the size is checked
    assert explain_image(tiny_model, dcm, maps=False).warnings == []


def test_hide_names_keeps_file_names_out_of_errors_and_replaces_named_reports(tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _save_png(folder / "DOE_JANE.png", make_image(51))
    (folder / "DOE_JANE_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    inputs = collect_inputs([folder], class_names=CLASSES)
    out = tmp_path / "out"
    named = explain_batch(tiny_model, inputs, out, maps=False, progress=False)
    assert (out / "cases" / "DOE_JANE.html").is_file() and "DOE_JANE_broken.png" in named.failures[0][1]
    (out / "cases" / "notes.html").write_text("a file of the user's, not listed by any index")
    hidden = explain_batch(tiny_model, inputs, out, maps=False, hide_names=True, progress=False)
    assert hidden.failures and hidden.failures[0][0] == "case 2" and "DOE_JANE" not in hidden.failures[0][1]
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["case-0001.html", "notes.html"]
    for path in out.rglob("*.*"):
        if path.name != "notes.html":
            assert "DOE_JANE" not in path.read_text(), path


def test_hidden_names_are_replaced_only_where_they_are_a_path(caplog):
    import logging
    from pathlib import Path

    from cbm.explain.batch import _names_hidden, _without_names

    one = Path("scans/1")  # DICOM files are often named by number
    assert _without_names("scans/1: expected 1024 bytes, got 1", one, "case 3") == "case 3: expected 1024 bytes, got 1"
    assert _without_names(f"{one.resolve()} is truncated", one, "case 3") == "case 3 is truncated"
    assert _without_names("'../DOE_JANE/a.dcm' unreadable", Path("../DOE_JANE/a.dcm"), "case 1") == "'case 1' unreadable"
    # what the image reader logs while a case is read names the case too, and only then
    reader = logging.getLogger("cbm.data._image")
    with caplog.at_level(logging.WARNING, logger="cbm.data._image"):
        with _names_hidden(Path("in/DOE_JANE.dcm"), "case 4", True):
            reader.warning("%s: window maps every pixel to one level", "in/DOE_JANE.dcm")
        reader.warning("%s: after the case", "in/DOE_JANE.dcm")
    assert [r.getMessage() for r in caplog.records] == ["case 4: window maps every pixel to one level",
                                                        "in/DOE_JANE.dcm: after the case"]


# ---------------------------------------------------------------------------- in the browser
def test_report_in_chromium(browser, case, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_case_html(case, top_k=3))
    log = PageLog(browser)
    page = log.page
    page.goto(path.as_uri())
    expl = case.explanation
    assert page.get_attribute("#prediction", "data-predicted") == expl.predicted
    assert expl.predicted in page.inner_text("#prediction .headline")
    top = page.inner_text("#contrib-predicted")
    assert all(c.concept in top for c in expl.top_concepts(k=3))
    widths = log.images_loaded()
    assert len(widths) == 1 + len(case.maps.concepts) and min(widths) > 0  # the image and every concept map decoded
    assert page.evaluate("document.documentElement.classList.contains('js')")  # the script ran under the CSP
    assert not log.errors, log.errors
    assert all(u.startswith(("data:", "about:")) or u == path.as_uri() for u in log.requests), log.requests
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interventions_in_chromium_match_python(browser, case, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_case_html(case, top_k=3))
    log = PageLog(browser)
    page = log.page
    page.goto(path.as_uri())
    k = len(CLASSES)
    seen = log.after_probabilities(k)
    assert seen == pytest.approx([case.explanation.probabilities[c] for c in CLASSES], abs=1e-5)
    first, second = case.maps.concepts[:2]
    page.check(f'tr[data-concept-row="{first}"] input[value=present]')
    assert log.after_probabilities(k) == pytest.approx(list(case.intervene({first: "present"}).values()), abs=1e-5)
    page.check(f'tr[data-concept-row="{second}"] input[value=absent]')
    both = case.intervene({first: "present", second: "absent"})
    assert log.after_probabilities(k) == pytest.approx(list(both.values()), abs=1e-5)
    summary = page.locator("#after-summary")
    assert summary.get_attribute("data-changes") == "2"
    assert summary.get_attribute("data-predicted") == max(both, key=both.get)
    page.click("#reset-interventions")
    assert log.after_probabilities(k) == pytest.approx(seen, abs=1e-6)
    assert summary.get_attribute("data-changes") == "0"
    assert not log.errors


def test_report_reads_on_a_phone_and_prints(browser, case, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render_case_html(case, nav={"All cases": "index.html"}))
    log = PageLog(browser, width=390, height=844)
    page = log.page
    page.goto(path.as_uri())
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    page.emulate_media(media="print")
    assert page.eval_on_selector("nav", "e => getComputedStyle(e).display") == "none"
    assert page.eval_on_selector("#reset-interventions", "e => getComputedStyle(e).display") == "none"
    assert page.pdf(format="A4")[:5] == b"%PDF-"


def test_batch_pages_in_chromium(browser, tiny_model, tmp_path):
    """The index shows every case with its thumbnail, and its links lead to the reports and back."""
    for i in range(3):
        _save_png(tmp_path / f"case{i}.png", make_image(70 + i))
    result = explain_batch(tiny_model, collect_inputs([tmp_path], class_names=CLASSES), tmp_path / "out", progress=False)
    log = PageLog(browser)
    page = log.page
    page.goto(result.index.as_uri())
    assert page.locator("#cases tbody tr").count() == 3
    assert log.images_loaded() and min(log.images_loaded()) > 0
    with page.expect_navigation():
        page.click("text=case1.png")
    assert page.url == (result.out_dir / "cases" / "case1.html").as_uri()
    assert page.get_attribute("#prediction", "data-predicted") in CLASSES
    with page.expect_navigation():
        page.click("nav >> text=Model card")
    assert page.locator(".class[data-class]").count() == len(CLASSES)
    assert not log.errors, log.errors
    assert all(u.startswith(("data:", "about:", result.out_dir.as_uri())) for u in log.requests), log.requests
