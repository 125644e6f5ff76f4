"""``cbm serve``: a small local web app where a clinician uploads an image and reads its report.

Built on the standard library's ``ThreadingHTTPServer``; bound to 127.0.0.1 by default. Routes:

    GET  /          the upload page (PNG, JPEG or DICOM)
    POST /explain   the upload (multipart form field ``file``, or the raw bytes) -> the case report
    GET  /classes   the class card
    GET  /health    ``{"status": "ok"}``

Uploads are checked before the model sees them: a size limit (413 before the body is read), the
format by its magic bytes (415), the declared pixel count against decompression bombs (413), and an
actual decode through ``cbm.data.read_image`` (422). The server never serves files from disk and
never stores an upload (it lives in a private temporary folder for the length of the request), so
there is no path to traverse and nothing left behind. A failed request gets its 4xx page and the
server keeps serving; no patient data is logged.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import logging
import socket
import tempfile
import threading
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from html import escape
from pathlib import Path
from typing import Any

from cbm.explain.case import explain_image
from cbm.explain.render import page_csp, render_case_html, render_class_card_html, render_page
from cbm.model import ConceptBottleneckModel

__all__ = ["ExplainApp", "UploadError", "make_server", "serve", "sniff_format", "DEFAULT_MAX_UPLOAD_BYTES", "MAX_PIXELS"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
# Largest image (pixels x frames) accepted; larger headers are refused before decoding.
MAX_PIXELS = 100_000_000
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class UploadError(Exception):
    """A rejected upload: the HTTP status and a message for the person who sent it."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's magic bytes, else ``None``.

    DICOM means a Part 10 file: 128-byte preamble then ``DICM``.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _declared_pixels(data: bytes, fmt: str) -> int:
    """Pixel count (x frames) from the header alone, without decoding the pixel data."""
    if fmt == "dicom":
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        return int(getattr(ds, "Rows", 0) or 0) * int(getattr(ds, "Columns", 0) or 0) * max(frames, 1)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height
    except Image.DecompressionBombError as exc:  # PIL refuses far-too-large images at open
        raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the image is too large to decode safely ({exc})") from exc


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` field of a ``multipart/form-data`` body."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise UploadError(HTTPStatus.BAD_REQUEST, "the form could not be read (malformed multipart body)")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True) or b""
    raise UploadError(HTTPStatus.BAD_REQUEST, "the form has no 'file' field; choose an image to upload")


class ExplainApp:
    """The web app's logic, independent of HTTP plumbing: pages and the upload check.

    Args:
        model: the trained model (its encoder is created here, so the first upload is not slow).
        max_upload_bytes: largest request body accepted.
        top_k: contributions listed and mapped per class.
        maps: compute concept maps.
    """

    def __init__(self, model: ConceptBottleneckModel, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 top_k: int = 5, maps: bool = True) -> None:
        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        self.model = model
        self.max_upload_bytes = int(max_upload_bytes)
        self.top_k = top_k
        self.maps = maps
        self._lock = threading.Lock()  # one case at a time: the CPU is shared anyway
        _ = model.encoder
        self.class_card = render_class_card_html(model, nav={"Upload an image": "/"})
        self.upload_page = self._upload_page()

    def _upload_page(self) -> str:
        m = self.model
        limit = f"{self.max_upload_bytes / 2**20:.0f} MB" if self.max_upload_bytes >= 2**20 else f"{self.max_upload_bytes} bytes"
        body = (
            '<section><form class="upload" method="post" action="/explain" enctype="multipart/form-data">'
            '<label for="file"><b>Image to explain</b> (PNG, JPEG or DICOM, up to '
            f"{escape(limit)})</label>"
            '<input id="file" type="file" name="file" required '
            'accept=".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom">'
            '<button type="submit">Explain</button></form>'
            '<p class="muted">The image is processed on this computer and not kept: it is held in a private temporary '
            "folder while its report is made and deleted right after. The report shows no "
            "patient name, ID, birth date or accession number.</p></section>"
            f'<section><h2>This model</h2><p>Classes: {escape(", ".join(m.classes))}. '
            f"{m.bottleneck.n_concepts} concepts, {m.concepts_per_class():.1f} with a weight per class on average. "
            'See the <a href="/classes">model card</a>.</p></section>'
        )
        return render_page("cbm: explain an image", body, subtitle="concept-bottleneck explanations",
                           nav={"Model card": "/classes"}, form_action="'self'")

    def error_page(self, status: HTTPStatus, message: str) -> str:
        body = f'<p class="notice" id="error">{escape(message)}</p><p><a href="/">Upload another image</a></p>'
        return render_page(f"{status.value} {status.phrase}", body, nav={"Upload": "/"})

    def check_upload(self, data: bytes) -> str:
        """Validate an upload's bytes before decoding; return its format. Raises :class:`UploadError`."""
        if not data:
            raise UploadError(HTTPStatus.BAD_REQUEST, "the upload is empty; choose an image file")
        if len(data) > self.max_upload_bytes:
            raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"the upload has {len(data)} bytes, over the limit of {self.max_upload_bytes}")
        fmt = sniff_format(data)
        if fmt is None:
            raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                              "this is not a PNG, JPEG or DICOM (Part 10) file; export the image in one of these formats")
        try:
            pixels = _declared_pixels(data, fmt)
        except UploadError:
            raise
        except Exception as exc:  # any header that does not parse is a bad upload, whatever the library raises
            raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY, f"the {fmt.upper()} header could not be read ({type(exc).__name__})") from exc
        if pixels == 0:
            raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY, f"the {fmt.upper()} file declares no image (no rows or columns)")
        if pixels > MAX_PIXELS:
            raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              f"the image declares {pixels} pixels, over the limit of {MAX_PIXELS}")
        return fmt

    def explain_upload(self, data: bytes) -> str:
        """The report page for an uploaded image. Raises :class:`UploadError` for a bad upload.

        One upload at a time (the CPU is shared anyway), which also keeps the warning filters,
        silenced for untrusted headers and pixels, from being changed by two threads at once.
        """
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # malformed files are expected here and answered with a 4xx
            fmt = self.check_upload(data)
            with tempfile.TemporaryDirectory(prefix="cbm-upload-") as tmp:
                path = Path(tmp) / f"upload{_SUFFIX[fmt]}"  # our name, never the client's
                path.write_bytes(data)
                try:
                    from cbm.data import read_image

                    image = read_image(path)
                except Exception as exc:  # a decode failure of any kind is the upload's fault, reported as 422
                    reason = str(exc).replace(str(path), "the upload").replace(tmp, "")
                    raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY,
                                      f"the {fmt.upper()} file could not be decoded: {reason}") from exc
            case = explain_image(self.model, image, label="uploaded image", top_k=self.top_k, maps=self.maps)
        return render_case_html(case, self.model, top_k=self.top_k,
                                nav={"Upload another image": "/", "Model card": "/classes"})


class _Handler(BaseHTTPRequestHandler):
    server_version = "cbm-serve"
    sys_version = ""
    timeout = 60  # seconds a client may stall; a stuck upload frees its thread after this
    app: ExplainApp
    allowed_hosts: tuple[str, ...] | None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: str, content_type: str = "text/html; charset=utf-8",
              csp: str | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        if csp:
            self.send_header("Content-Security-Policy", csp)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self.close_connection = True
        self._send(status, self.app.error_page(status, message), csp=page_csp())

    def _host_ok(self) -> bool:
        if self.allowed_hosts is None:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name in self.allowed_hosts

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._host_ok():
            return self._error(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only on its loopback address")
        route = self.path.split("?", 1)[0]
        if route == "/":
            self._send(HTTPStatus.OK, self.app.upload_page, csp=page_csp(form_action="'self'"))
        elif route == "/classes":
            self._send(HTTPStatus.OK, self.app.class_card, csp=page_csp())
        elif route == "/health":
            self._send(HTTPStatus.OK, json.dumps({"status": "ok"}), "application/json")
        else:
            self._error(HTTPStatus.NOT_FOUND, "no such page; upload an image at /")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._error(HTTPStatus.MISDIRECTED_REQUEST, "this server answers only on its loopback address")
        if self.path.split("?", 1)[0] != "/explain":
            return self._error(HTTPStatus.NOT_FOUND, "uploads go to /explain")
        length = self.headers.get("Content-Length")
        if length is None:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "the upload needs a Content-Length header")
        try:
            size = int(length)
            if size < 0:
                raise ValueError
        except ValueError:
            return self._error(HTTPStatus.BAD_REQUEST, f"Content-Length {length!r} is not a byte count")
        if size > self.app.max_upload_bytes:  # refuse before reading a byte of the body
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"the upload has {size} bytes, over the limit of {self.app.max_upload_bytes}")
        try:
            body = self.rfile.read(size)
            if len(body) < size:
                return self._error(HTTPStatus.BAD_REQUEST, "the upload ended before its declared length")
            content_type = self.headers.get("Content-Type", "")
            data = _multipart_file(content_type, body) if content_type.startswith("multipart/form-data") else body
            page = self.app.explain_upload(data)
        except UploadError as exc:
            log.info("upload rejected (%d): %s", exc.status.value, exc.message)
            return self._error(exc.status, exc.message)
        except TimeoutError:
            return self._error(HTTPStatus.REQUEST_TIMEOUT, "the upload stalled; try again")
        except Exception:  # a bug must not take the server down; the client gets a 500
            log.exception("explaining an upload failed")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the image could not be explained (server error)")
        self._send(HTTPStatus.OK, page, csp=page_csp(script=True))


class _Server(ThreadingHTTPServer):
    """Daemon request threads; a connection that breaks (client gone, stalled) is logged, not printed.

    Closing does not wait for request threads (``block_on_close = False``): Ctrl-C stops the
    server at once even while a browser holds a keep-alive connection open (up to ``timeout``).
    """

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address[0] if client_address else "?", exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(model: ConceptBottleneckModel, host: str = "127.0.0.1", port: int = 8000, *,
                max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, top_k: int = 5, maps: bool = True) -> ThreadingHTTPServer:
    """A ready server (not yet serving): call ``serve_forever()``; ``port=0`` picks a free port.

    Raises:
        RuntimeError: the address cannot be bound (port in use, unknown host).
    """
    app = ExplainApp(model, max_upload_bytes=max_upload_bytes, top_k=top_k, maps=maps)
    allowed = _LOOPBACK if host in _LOOPBACK else None
    handler = type("ExplainHandler", (_Handler,), {"app": app, "allowed_hosts": allowed})
    try:
        return (_Server6 if ":" in host else _Server)((host, port), handler)
    except OSError as exc:
        raise RuntimeError(
            f"cannot listen on {host} port {port} ({exc}); choose another --port, or stop the program using it"
        ) from exc


def serve(model: ConceptBottleneckModel, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Serve until interrupted (Ctrl-C). Keyword arguments as :func:`make_server`."""
    server = make_server(model, host, port, **kwargs)
    actual = server.server_address[1]
    if host not in _LOOPBACK:
        log.warning("serving on %s: reachable from other machines, with no authentication and no TLS", host)
    log.info("cbm serve: open http://%s:%d/ (Ctrl-C to stop)", host if ":" not in host else f"[{host}]", actual)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
