"""``cbm serve`` (cbm.explain.server): pages, uploads, bad uploads, limits (parts, nested forms,
connections, pixels, the request deadline), concurrency (a huge upload never holds up the next one;
a large one keeps its decoding slot until explained), PHI, and the upload flow in Chromium."""

from __future__ import annotations

import contextlib
import html
import http.client
import io
import json
import select
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from explain_support import CLASSES, PageLog, assert_no_phi, make_image, write_phi_dicom
from PIL import Image
from pydicom.data import get_testdata_file

import cbm.explain.server as server_module
from cbm.explain import ExplainApp, explain_image, make_server

LIMIT = 256 * 1024


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (a decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def _huge_truncated_png(side: int = 5792) -> bytes:
    """A flat grey ``side x side`` RGB PNG (33.5 million pixels, the default budget), about 100 KB
    compressed, whose image data ends early: the server decodes it all before refusing it."""
    raw = (b"\0" + b"\x80" * (3 * side)) * side
    data = zlib.compress(raw, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data[: len(data) * 9 // 10])
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tiny_model):
    srv = make_server(tiny_model, "127.0.0.1", 0, max_upload_bytes=LIMIT, top_k=3)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def _request(server, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None, sent: threading.Semaphore | None = None) -> tuple[int, dict, str]:
    """One request on a fresh connection; ``body=None`` sends no body (and no length unless given);
    ``sent`` is released once the whole request has been sent, before the answer is read."""
    conn = http.client.HTTPConnection(*server.server_address, timeout=30)
    try:
        headers = dict(headers or {})
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        if body is not None and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        if sent is not None:
            sent.release()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _healthy(server) -> bool:
    status, _, text = _request(server, "GET", "/health")
    return status == 200 and json.loads(text) == {"status": "ok"}


def _multipart(data: bytes, field: str = "file", filename: str = "scan.png") -> tuple[bytes, str]:
    boundary = "----cbmtestboundary7MA4YWxk"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_pages_and_no_files_from_disk(server):
    status, headers, page = _request(server, "GET", "/")
    assert status == 200 and 'action="/explain"' in page and 'enctype="multipart/form-data"' in page
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    status, _, card = _request(server, "GET", "/classes")
    assert status == 200 and all(f'data-class="{c}"' in card for c in CLASSES)
    assert _healthy(server)
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/classes/../model.json", "/model.json",
                 "//etc/passwd", "/explain"):
        status, _, text = _request(server, "GET", path)
        assert status == 404, path
        assert "root:" not in text
    status, _, _ = _request(server, "GET", "/", headers={"Host": "attacker.example:80"})
    assert status == 421  # DNS-rebinding guard: a loopback server answers only to loopback names


def test_upload_raw_and_multipart_give_the_report(server, tiny_model):
    image = make_image(41, (90, 120))
    data = _png_bytes(image)
    expected = explain_image(tiny_model, np.asarray(Image.open(io.BytesIO(data)), np.float32) / 255.0, maps=False)
    status, headers, page = _request(server, "POST", "/explain", data, {"Content-Type": "image/png"})
    assert status == 200, page
    assert f'data-predicted="{expected.predicted}"' in page
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert "Case report: uploaded image" in page and 'class="concept-map"' in page
    body, ctype = _multipart(data, filename="DOE_JOHN_mrn123.png")
    status, _, page2 = _request(server, "POST", "/explain", body, {"Content-Type": ctype})
    assert status == 200 and f'data-predicted="{expected.predicted}"' in page2
    assert "DOE_JOHN" not in page2  # the client's file name is never used
    # media types are case-insensitive: a script's "Multipart/Form-Data" is a form too
    status, _, page3 = _request(server, "POST", "/explain", body, {"Content-Type": ctype.replace("multipart/form-data",
                                                                                                 "Multipart/Form-Data")})
    assert status == 200 and f'data-predicted="{expected.predicted}"' in page3


_BAD_UPLOADS = [
    ("empty", b"", {}, 400),
    ("truncated png", None, {}, 422),
    ("not an image", b"%PDF-1.4 this is a document, not an image\n" * 20, {}, 415),
    ("garbage after a jpeg marker", b"\xff\xd8\xff" + bytes(range(256)) * 8, {}, 422),
    ("garbage after a dicom marker", b"\0" * 128 + b"DICM" + b"\x02\x00" * 300, {}, 422),
    ("declares a gigapixel", _png_declaring(40000, 40000), {}, 413),
    ("declares 40 megapixels", _png_declaring(8000, 5000), {}, 413),  # over the default budget of 33.5 million
    ("too many form parts", None, {"form-parts": "20000"}, 413),
    ("over the size limit", None, {"Content-Length": str(LIMIT + 1)}, 413),  # refused before the body is sent
    ("no length", None, {}, 411),
    ("bad length", None, {"Content-Length": "-5"}, 400),
    ("form without a file field", None, {"form-field": "comment"}, 400),
    ("two images in one form", None, {}, 400),
    ("dicom without rows", Path(get_testdata_file("meta_missing_tsyntax.dcm")).read_bytes(), {}, 422),
]


@pytest.mark.parametrize("name, body, headers, status", _BAD_UPLOADS, ids=[b[0] for b in _BAD_UPLOADS])
def test_bad_uploads_get_4xx_and_the_server_keeps_serving(server, name, body, headers, status):
    headers = dict(headers)
    if name == "truncated png":
        full = _png_bytes(make_image(42))
        body = full[: len(full) * 3 // 5]
    if "form-field" in headers:
        body, ctype = _multipart(_png_bytes(make_image(43)), field=headers.pop("form-field"))
        headers["Content-Type"] = ctype
    if name == "two images in one form":
        one, ctype = _multipart(_png_bytes(make_image(43)))
        closing = one[one.rindex(b"\r\n--"):]  # "\r\n--boundary--\r\n"
        part = one[: -len(closing)]  # "--boundary\r\n<headers>\r\n\r\n<png>"
        body = part + b"\r\n" + part + closing
        headers["Content-Type"] = ctype
    if "form-parts" in headers:  # many tiny parts (a body of 200,000 once cost 19 s to parse)
        n = int(headers.pop("form-parts"))
        boundary = "b"
        body = (f"--{boundary}\r\n\r\nx\r\n" * n + f"--{boundary}--\r\n").encode()
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    start = time.perf_counter()
    code, _, text = _request(server, "POST", "/explain", body, headers)
    assert code == status, (name, text)
    assert time.perf_counter() - start < 5, name  # refused before any costly work
    assert 'id="error"' in text and "Upload another image" in text
    if name == "truncated png":  # the reader's problem and fix, worded for an upload
        assert "could not be decoded: it ends inside its chunk" in text and "upload.png" not in text
    if name == "over the size limit":
        assert "MB), over the limit of" in text
    if name == "two images in one form":
        assert "holds 2 images; upload one image at a time" in text
    if name == "dicom without rows":  # the field and the fix, not "the DICOM file is missing"
        assert "DICOM file's Rows is missing. Every DICOM image declares it; export the file again" in html.unescape(text)
    if name.startswith("declares"):
        assert "start the server with a larger --max-pixels" in text
    assert _healthy(server)


def test_dicom_upload_shows_no_phi(server, tmp_path, caplog):
    path = tmp_path / "upload.dcm"
    write_phi_dicom(path, seed=5)
    with caplog.at_level("DEBUG", logger="cbm"):
        status, _, page = _request(server, "POST", "/explain", path.read_bytes(), {"Content-Type": "application/dicom"})
    assert status == 200 and "data-predicted=" in page
    assert 'data-withheld="true"' in page and "modality is CT" in page  # a CT slice for a dermoscopy model
    assert_no_phi(page)
    assert_no_phi(caplog.text)


def test_a_failing_case_is_a_500_and_the_server_survives(server, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(server_module, "explain_image", broken)
    status, _, text = _request(server, "POST", "/explain", _png_bytes(make_image(44)))
    assert status == 500 and "server error" in text
    monkeypatch.undo()
    assert _healthy(server)
    status, _, _ = _request(server, "POST", "/explain", _png_bytes(make_image(44)))
    assert status == 200


def test_concurrent_uploads_are_all_answered(server):
    uploads = [_png_bytes(make_image(50 + i)) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda d: _request(server, "POST", "/explain", d), uploads))
    assert [r[0] for r in results] == [200, 200, 200]


def test_a_huge_upload_never_holds_up_the_next_one(server):
    """Three uploads of 33.5 million pixels each (decoded, then refused: their data ends early) are
    in flight; a small valid upload sent meanwhile is answered within a second. The small one goes
    out as soon as the three have been sent whole (not after a fixed pause, which a fast machine
    can outlast), so the server is still reading or decoding them."""
    small = _png_bytes(make_image(46))
    assert _request(server, "POST", "/explain", small)[0] == 200  # warm
    huge = _huge_truncated_png()
    ends: list[float] = []
    sent = threading.Semaphore(0)

    def send_huge() -> int:
        status = _request(server, "POST", "/explain", huge, sent=sent)[0]
        ends.append(time.perf_counter())
        return status

    with ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(send_huge) for _ in range(3)]
        for _ in pending:
            assert sent.acquire(timeout=30), "a huge upload could not be sent"
        start = time.perf_counter()
        status, _, page = _request(server, "POST", "/explain", small)
        took = time.perf_counter() - start
        statuses = [p.result() for p in pending]
    assert status == 200 and "data-predicted=" in page
    assert took < 1.0, f"the small upload waited {took:.2f} s"
    assert statuses == [422, 422, 422] and max(ends) > start  # refused, and still in flight when it was sent


def test_connections_over_the_cap_are_refused_at_once(tiny_model):
    srv = make_server(tiny_model, "127.0.0.1", 0, max_connections=2, top_k=3)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    stalled = []
    try:
        for _ in range(2):  # two clients that send half a request and stall
            sock = socket.create_connection(srv.server_address, timeout=10)
            sock.sendall(b"POST /explain HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            stalled.append(sock)
        time.sleep(0.2)
        start = time.perf_counter()
        status, headers, text = _request(srv, "GET", "/health")
        assert status == 503 and "busy" in text and headers.get("Retry-After")
        assert time.perf_counter() - start < 1.0
        for sock in stalled:
            sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _request(srv, "GET", "/health")[0] != 200:
            time.sleep(0.05)
        assert _healthy(srv)  # the slots are free again once the stalled clients are gone
    finally:
        for sock in stalled:
            sock.close()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _nested_form(inner: str, newline: bytes, parts: int = 15000) -> bytes:
    """A form whose ``file`` part is itself a container (``inner``) of ``parts`` tiny parts."""
    nl = newline
    content = b"".join(b"--inner" + nl + nl + b"x" + nl for _ in range(parts)) + b"--inner--" + nl
    if inner == "message/rfc822":  # a message holding the multipart: the parser opens it too
        content = b"Content-Type: multipart/mixed; boundary=inner" + nl + nl + content
    else:
        inner += "; boundary=inner"
    return (b"--outer" + nl + b'Content-Disposition: form-data; name="file"; filename="a.png"' + nl
            + b"Content-Type: " + inner.encode() + nl + nl + content + nl + b"--outer--" + nl)


_NESTED = [("multipart/mixed", b"\r\n"), ("multipart/mixed", b"\n"), ("multipart/mixed", b"\r"), ("message/rfc822", b"\r\n")]


@pytest.mark.parametrize("inner, newline", _NESTED, ids=["multipart", "multipart-lf", "multipart-cr", "message"])
def test_a_nested_form_is_refused_before_it_is_parsed(server, inner, newline):
    """The part limit counts the outer boundary only: a part that is itself a multipart (or a
    message, which the form parser opens as well) could carry any number of parts past it. Such a
    part is refused (415, naming the problem) from its headers, before the form is parsed."""
    body = _nested_form(inner, newline)
    start = time.perf_counter()
    status, _, text = _request(server, "POST", "/explain", body,
                               {"Content-Type": "multipart/form-data; boundary=outer"})
    assert status == 415 and "nested" in text and "one image per part" in text, text
    assert time.perf_counter() - start < 5  # refused from the part's headers, before any parsing
    assert _healthy(server)


def test_a_form_part_with_endless_headers_is_refused(server):
    """A part's headers are read up to MAX_PART_HEADER_BYTES (where a nested type could hide)."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 100) for i in range(200))  # about 22 KB
    body, ctype = _multipart(_png_bytes(make_image(47)))
    body = body.replace(b"Content-Type: application/octet-stream\r\n", filler + b"Content-Type: multipart/mixed\r\n")
    status, _, text = _request(server, "POST", "/explain", body, {"Content-Type": ctype})
    assert status == 400 and f"over {server_module.MAX_PART_HEADER_BYTES} bytes of headers" in text, text
    assert _healthy(server)


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it hangs up (or stays silent for 5 s)."""
    sock.settimeout(5)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickled_request_is_cut_off_at_its_deadline(server, monkeypatch, phase):
    """A client sending a byte every 0.1 s never trips the per-read stall timeout; it is answered
    408 and disconnected once its request (headers and body) has taken REQUEST_DEADLINE_S, and the
    server keeps serving."""
    monkeypatch.setattr(server_module, "REQUEST_DEADLINE_S", 1.0)
    head = b"POST /explain HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if phase == "body":
        head += b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        trickle = b"\x89PNG" * 25000
    else:
        trickle = b"X-Slow: " + b"a" * 1000
    sock = socket.create_connection(server.server_address, timeout=10)
    start = time.perf_counter()
    try:
        sock.sendall(head)
        for byte in trickle:  # until the server answers or hangs up (8 s at most)
            if time.perf_counter() - start > 8 or select.select([sock], [], [], 0.1)[0]:
                break
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        answer = _read_answer(sock)
        took = time.perf_counter() - start
    finally:
        sock.close()
    assert answer.split(b"\r\n", 1)[0].split()[1:2] == [b"408"], answer[:300]
    assert b"did not arrive within 1 s" in answer
    assert took < 4, f"the trickling client was held {took:.1f} s"
    assert _healthy(server)


def test_a_large_upload_keeps_its_decoding_slot_until_explained(tiny_model, monkeypatch):
    """With one decoding slot, a second large upload is not decoded while the first waits for the
    model: a large image holds its slot until its explanation is done, so full-size decoded images
    cannot pile up behind the model's lock."""
    import cbm.data

    monkeypatch.setattr(server_module, "LARGE_DECODES", 1)
    monkeypatch.setattr(server_module, "LARGE_IMAGE_PIXELS", 100)  # the test images count as large
    app = ExplainApp(tiny_model, top_k=3, maps=False)
    decoded: list[int] = []
    read_image = cbm.data.read_image
    monkeypatch.setattr(cbm.data, "read_image", lambda *a, **k: decoded.append(1) or read_image(*a, **k))
    in_model, go_on = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        in_model.set()
        assert go_on.wait(30)
        return explain_image(*args, **kwargs)

    monkeypatch.setattr(server_module, "explain_image", held)
    first_upload, second_upload = (_png_bytes(make_image(60 + i)) for i in range(2))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(app.explain_upload, first_upload)
        assert in_model.wait(30)
        second = pool.submit(app.explain_upload, second_upload)
        time.sleep(0.5)  # time enough to decode a small PNG many times over
        decodes_while_held = len(decoded)
        go_on.set()
        pages = [first.result(60), second.result(60)]
    assert decodes_while_held == 1, "the second large upload was decoded while the first held the model"
    assert len(decoded) == 2 and all("data-predicted=" in page for page in pages)


def test_settings_and_a_busy_port_are_reported(tiny_model, server):
    with pytest.raises(ValueError, match="max_upload_bytes"):
        ExplainApp(tiny_model, max_upload_bytes=0)
    with pytest.raises(RuntimeError, match="choose another --port"):
        make_server(tiny_model, "127.0.0.1", server.server_address[1])
    with pytest.raises(RuntimeError, match="a port number is 0 to 65535"):
        make_server(tiny_model, "127.0.0.1", 70000)
    with pytest.raises(RuntimeError, match="--host must be an address of this computer"):
        make_server(tiny_model, "nosuchhost.invalid", 0)
    # the upload page never states more than the real limit
    assert "up to 1.5 MB" in ExplainApp(tiny_model, max_upload_bytes=int(1.5 * 2**20), maps=False).upload_page
    with pytest.raises(ValueError, match="max_connections"):
        make_server(tiny_model, "127.0.0.1", 0, max_connections=0)


def test_upload_in_chromium(browser, server, tmp_path):
    png = tmp_path / "lesion.png"
    png.write_bytes(_png_bytes(make_image(45, (100, 140))))
    base = "http://%s:%d" % server.server_address
    log = PageLog(browser)
    page = log.page
    page.goto(base + "/")
    assert log.accessibility_problems() == []
    page.set_input_files("#file", str(png))
    with page.expect_navigation():
        page.click("button[type=submit]")
    if page.locator("#withheld").count():  # an image the tiny model does not answer for: shown anyway
        page.click("#withheld summary")
    predicted = page.get_attribute("#prediction", "data-predicted")
    assert predicted in CLASSES
    assert min(log.images_loaded()) > 0
    page.locator("tr[data-concept-row] input[value=present]").first.check()
    assert page.get_attribute("#after-summary", "data-changes") == "1"  # the script ran under the server's CSP
    assert log.accessibility_problems() == []
    page.screenshot(path=str(tmp_path / "served-report.png"), full_page=True)
    assert not log.errors, log.errors
    assert all(u.startswith(base + "/") or u.startswith(("data:", "about:")) for u in log.requests), log.requests


def test_an_upload_from_another_sites_page_is_refused(server):
    """Cross-site request forgery: a page elsewhere can make the browser post an image here. Its
    ``Sec-Fetch-Site`` or ``Origin`` says where it came from; this server's own page, and clients that
    are not browsers (no such headers), are served."""
    body, ctype = _multipart(_png_bytes(make_image(3)))
    host = f"127.0.0.1:{server.server_address[1]}"
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "https://evil.example"},
                    {"Origin": "null"}, {"Origin": f"http://{host}", "Sec-Fetch-Site": "cross-site"}):
        status, _, text = _request(server, "POST", "/explain", body, {"Content-Type": ctype, "Host": host, **headers})
        assert status == 403 and "uploads are taken only from this server" in text, headers
    behind_tls = {"Origin": "https://cbm.example.org", "X-Forwarded-Host": "cbm.example.org"}  # a proxy in front
    for headers in ({}, {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    behind_tls, {**behind_tls, "Sec-Fetch-Site": "same-origin"}, {"Origin": f"https://{host}"}):
        status, _, _ = _request(server, "POST", "/explain", body, {"Content-Type": ctype, "Host": host, **headers})
        assert status == 200, headers
    _, headers, _ = _request(server, "GET", "/")
    assert headers["Referrer-Policy"] == "same-origin"  # so the page's own form posts carry its Origin


def test_uploads_held_in_memory_at_once_are_bounded(server):
    """A body's declared size is set aside against UPLOADS_IN_MEMORY x the upload limit once its first
    bytes arrive: connections that declare a large body and send nothing hold nothing; ones that have
    started sending make the next upload a 503, until they end and give their room back."""
    body, ctype = _multipart(_png_bytes(make_image(3)))
    upload = lambda: _request(server, "POST", "/explain", body, {"Content-Type": ctype})[0]  # noqa: E731
    address = server.server_address

    def holding(sent: int) -> socket.socket:
        sock = socket.create_connection(address, timeout=30)
        sock.sendall(f"POST /explain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {LIMIT}\r\n"
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + b"x" * sent)
        return sock

    idle = [holding(0) for _ in range(server_module.UPLOADS_IN_MEMORY)]
    try:
        assert upload() == 200
        full = [holding(1000) for _ in range(server_module.UPLOADS_IN_MEMORY)]
        deadline = time.monotonic() + 20
        while server._body_bytes < len(full) * LIMIT and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server has read what they sent (an upload meanwhile could take their room)
        assert upload() == 503
        for sock in full:
            sock.close()
        deadline = time.monotonic() + 20
        while (status := upload()) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200  # their bytes given back when they ended
    finally:
        for sock in idle:
            sock.close()


def test_the_standard_librarys_refusals_carry_the_servers_headers(server):
    """A method the server does not serve (501) and an over-long URL (414) are answered by
    http.server itself: with this server's error page and headers, not its bare page."""
    for method, path, code in (("PUT", "/explain", 501), ("GET", "/" + "a" * 70000, 414)):
        status, headers, text = _request(server, method, path)
        assert status == code and headers["X-Content-Type-Options"] == "nosniff", (method, status)
        assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
        assert "<!DOCTYPE html>" in text
    for line, code in ((b"GARBAGE\r\n\r\n", 400), (b"GET / HTTP/9.9\r\n\r\n", 505)):  # no version it could read
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(line)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        assert head.startswith(f"HTTP/1.0 {code}") and "X-Content-Type-Options: nosniff" in head, head
