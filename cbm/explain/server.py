"""``cbm serve``: a small local web app where a clinician uploads an image and reads its report.

Built on the standard library's ``ThreadingHTTPServer``; bound to 127.0.0.1 by default. Routes:

    GET  /          the upload page (PNG, JPEG or DICOM)
    POST /explain   the upload (multipart form field ``file``, or the raw bytes) -> the case report
    GET  /classes   the model card
    GET  /health    ``{"status": "ok"}``

Uploads are checked before the model sees them, cheapest first: a size limit (413 before the body
is read), at most :data:`MAX_FORM_PARTS` parts in a form, none of them itself a multipart or a
message nor with over :data:`MAX_PART_HEADER_BYTES` of headers (413, 415, 400: all checked before
the form is parsed, for a body of 200,000 parts cost 19 s of parsing, and the parser opens nested
parts too; :mod:`cbm.explain.forms`), the format by its magic bytes (415), the header against the
pixel budget and its own data (``cbm.data.check_image_header``: 413 over the budget, 422
otherwise), and an actual decode through ``cbm.data.read_image`` (422). At most
:data:`MAX_CONNECTIONS` connections are served at once; one more is answered 503 at once, as is an
upload whose body, set aside whole once its first bytes arrive, would pass
:data:`UPLOADS_IN_MEMORY` times the size limit with those being read and explained, so a burst of
large uploads cannot take the machine's memory. An upload that a browser sends from another site's
page (cross-site request forgery: its ``Sec-Fetch-Site`` or ``Origin`` header says so) is answered
403. A request (headers and body) must arrive within
:data:`REQUEST_DEADLINE_S`, and no read may stall for longer than the handler's ``timeout``;
otherwise it is answered 408 and its connection closed, so a client trickling a byte at a time
cannot hold a connection for long.

Uploads are decoded outside the model's lock (the model explains one case at a time): an image
over :data:`LARGE_IMAGE_PIXELS` takes one of :data:`LARGE_DECODES` slots from its decode until
its explanation is done (so however many wait for the model, at most that many full-size images
are in memory), a smaller one never waits for a slot, and one rejected from its header never
decodes at all; so a huge upload being decoded or refused never holds up the next small one.
The server never serves files from disk and never stores an upload (it lives in a private
temporary folder for the length of the request). A failed request gets its 4xx page and
the server keeps serving; no patient data is logged, and the process ignores the image
libraries' warnings (a malformed header is answered with a 4xx, and a warning could quote one of
its values).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import socket
import tempfile
import threading
import warnings
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cbm.explain.card import render_class_card_html
from cbm.explain.case import explain_image
from cbm.explain.deadline import DeadlineReader, RequestTimedOut
from cbm.explain.forms import MAX_FORM_PARTS, MAX_PART_HEADER_BYTES, UploadError, multipart_file, too_large, upload_reason
from cbm.explain.render import cannot_flag, page_csp, render_case_html, render_template
from cbm.model import ConceptBottleneckModel

__all__ = ["ExplainApp", "UploadError", "make_server", "serve", "sniff_format", "DEFAULT_MAX_UPLOAD_BYTES",
           "MAX_FORM_PARTS", "MAX_PART_HEADER_BYTES", "MAX_CONNECTIONS", "LARGE_IMAGE_PIXELS", "LARGE_DECODES",
           "REQUEST_DEADLINE_S", "UPLOADS_IN_MEMORY"]

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_CONNECTIONS = 16
"""Most connections served at once; each holds a thread while it is read and answered."""
LARGE_IMAGE_PIXELS = 4_000_000
"""An upload with more pixels than this is decoded and explained in one of :data:`LARGE_DECODES` slots."""
LARGE_DECODES = 2
"""Large uploads decoded, or decoded and waiting for the model, at once (their full-size images are in memory)."""
UPLOADS_IN_MEMORY = 4
"""Request bodies of the largest size held at once (read, parsed and explained); a further upload
that would pass ``UPLOADS_IN_MEMORY * max_upload_bytes`` in all is answered 503 once its first
bytes arrive, before the rest is read."""
REQUEST_DEADLINE_S = 120.0
"""Seconds a request (its headers and body) may take to arrive, however steadily it trickles in."""
_BODY_BLOCK = 1 << 20  # most bytes of a body's first read, before its whole size is set aside
_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


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


class ExplainApp:
    """The web app's logic, independent of HTTP plumbing: pages, the upload checks, the report.

    Args:
        model: the trained model (its encoder is created here, so the first upload is not slow).
        max_upload_bytes: largest request body accepted.
        max_pixels: the pixel budget of one frame (default: ``cbm.data.pixel_budget()``).
        top_k: findings mapped and heading the intervention controls.
        maps: compute concept maps.
    """

    def __init__(self, model: ConceptBottleneckModel, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int | None = None, top_k: int = 5, maps: bool = True) -> None:
        from cbm.data import pixel_budget

        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
        self.model = model
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = pixel_budget(max_pixels)
        self.top_k = top_k
        self.maps = maps
        self._model_lock = threading.Lock()  # one explanation at a time: the CPU is shared anyway
        self._large_decodes = threading.BoundedSemaphore(LARGE_DECODES)
        # process-wide and before any upload, so no thread's warning filters can let one through
        warnings.filterwarnings("ignore", module=r"(pydicom|PIL)(\.|$)")
        _ = model.encoder
        self.class_card = render_class_card_html(model, nav={"Upload an image": "/"})
        self.upload_page = self._upload_page()

    def _upload_page(self) -> str:
        m = self.model
        # never more than the real limit: 1.5 MB is "1.5 MB", not "2 MB"
        mb = math.floor(self.max_upload_bytes / 2**20 * 10) / 10
        limit = f"{mb:g} MB" if self.max_upload_bytes >= 2**20 else f"{self.max_upload_bytes:,} bytes"
        return render_template("upload.html", title="cbm: explain an image", subtitle="concept-bottleneck explanations",
                               nav={"Model card": "/classes"}, form_action="'self'", limit=limit, classes=m.classes,
                               n_concepts=m.bottleneck.n_concepts, per_class=m.concepts_per_class(),
                               cannot_flag=cannot_flag(m))

    def error_page(self, status: HTTPStatus, message: str) -> str:
        return render_template("error.html", title=f"{status.value} {status.phrase}", nav={"Upload": "/"}, message=message)

    def check_upload(self, data: bytes) -> tuple[str, int]:
        """Validate an upload's bytes before decoding (size, format, header against the pixel
        budget); return its format and pixels per frame. Raises :class:`UploadError`."""
        from cbm.data import check_image_header
        from cbm.errors import ImageError

        if not data:
            raise UploadError(HTTPStatus.BAD_REQUEST, "the upload is empty; choose an image file")
        if len(data) > self.max_upload_bytes:
            raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, too_large(len(data), self.max_upload_bytes))
        fmt = sniff_format(data)
        if fmt is None:
            raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                              "this is not a PNG, JPEG or DICOM (Part 10) file; export the image in one of these formats")
        try:
            rows, cols, _ = check_image_header(data, max_pixels=self.max_pixels)
        except ImageError as exc:
            if "pixel budget" in exc.problem:
                raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                  f"the {fmt.upper()} file {exc.problem.rstrip('. ')}; send a smaller export of the "
                                  "image, or start the server with a larger --max-pixels") from exc
            raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY,
                              upload_reason(exc, f"the {fmt.upper()} file's", f"the {fmt.upper()} file")) from exc
        except Exception as exc:  # any header that does not parse is a bad upload, whatever the library raises
            raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY,
                              f"the {fmt.upper()} header could not be read ({type(exc).__name__}); the file is "
                              "damaged or not what its first bytes say: export the image again") from exc
        return fmt, rows * cols

    def _decode(self, data: bytes, fmt: str) -> Any:
        """The upload read by ``cbm.data.read_image``; a failure of any kind is a 422."""
        from cbm.data import read_image
        from cbm.errors import ImageError

        with tempfile.TemporaryDirectory(prefix="cbm-upload-") as tmp:
            path = Path(tmp) / f"upload{_SUFFIX[fmt]}"  # our name, never the client's
            path.write_bytes(data)
            try:
                return read_image(path, max_pixels=self.max_pixels)
            except Exception as exc:  # a decode failure of any kind is the upload's fault, reported as 422
                if isinstance(exc, ImageError):  # "image <path>: <field> <problem>. <fix>" without our file
                    reason = f"the {fmt.upper()} file could not be decoded: {upload_reason(exc, 'its', 'it')}"
                else:
                    reason = (f"the {fmt.upper()} file could not be decoded: "
                              + str(exc).replace(str(path), "the upload").replace(tmp, ""))
                raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY, reason) from exc

    def explain_upload(self, data: bytes) -> str:
        """The report page for an uploaded image. Raises :class:`UploadError` for a bad upload.

        The checks and the decode happen before the model's lock is taken, so an upload that is
        large, slow to decode or refused never holds up another one's explanation. A large image
        keeps its decoding slot until it is explained (the report keeps only a small copy), so
        full-size images never pile up waiting for the model; the slot is taken before the lock.
        """
        fmt, pixels = self.check_upload(data)
        with self._large_decodes if pixels > LARGE_IMAGE_PIXELS else contextlib.nullcontext():
            image = self._decode(data, fmt)
            with self._model_lock:
                case = explain_image(self.model, image, label="uploaded image", top_k=self.top_k, maps=self.maps)
            del image  # gone before its slot is given back
        return render_case_html(case, self.model, top_k=self.top_k, hide_names=True,
                                nav={"Upload another image": "/", "Model card": "/classes"})


class _Handler(BaseHTTPRequestHandler):
    server_version = "cbm-serve"
    sys_version = ""
    timeout = 60  # seconds a read may stall; a whole request has REQUEST_DEADLINE_S
    app: ExplainApp
    allowed_hosts: tuple[str, ...] | None

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket stays open: it is read again through the deadline reader
        self._reader = DeadlineReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """One request, read against its deadline (from the wait for its first byte to its last)."""
        self.command, self.requestline, self.request_version = "", "", "HTTP/1.0"  # until its line is read
        self._reader.start(REQUEST_DEADLINE_S)
        try:
            super().handle_one_request()
        except RequestTimedOut as exc:
            self.close_connection = True
            log.info("request timed out: %s", exc)
            if self._reader.received:  # a connection that sent nothing is closed without a word
                with contextlib.suppress(OSError):
                    self.connection.settimeout(1.0)  # a client that does not read cannot hold the thread
                    self._error(HTTPStatus.REQUEST_TIMEOUT, str(exc))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a bad request line, 414, 431, 501, 505) as this
        server's error page, with its headers (nosniff, CSP, no-store); a request line it could not
        read leaves the version at HTTP/0.9, which has no headers, so the answer is HTTP/1.0."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        status = HTTPStatus(code)
        self._error(status, message or status.phrase)

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
        self.send_header("Referrer-Policy", "same-origin")  # so a form post carries its Origin
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

    def _cross_site(self) -> bool:
        """A browser's upload sent from another site's page (cross-site request forgery). Browsers
        that send ``Sec-Fetch-Site`` (Chromium 76+, Firefox 90+, Safari 16.4+) are judged by it
        alone; older ones by their ``Origin``, whose host and port must be this server's (its
        ``Host``, or the ``X-Forwarded-Host`` a TLS proxy in front of it passes on; the scheme is
        not compared, since a proxy serves https). Clients that send neither (curl, scripts) are
        not browsers acting for someone else."""
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        if site:
            return site not in ("same-origin", "none")
        origin = (self.headers.get("Origin") or "").strip().lower()  # "null": a sandboxed frame or a data: page
        if not origin:
            return False
        hosts = {(self.headers.get(h) or "").split(",")[0].strip().lower() for h in ("Host", "X-Forwarded-Host")}
        return origin.split("://", 1)[-1] not in hosts - {""}

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
        if self._cross_site():
            log.info("upload refused (403): sent from another site's page")
            return self._error(HTTPStatus.FORBIDDEN, "uploads are taken only from this server's own page; open it at /")
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
            message = too_large(size, self.app.max_upload_bytes)
            log.info("upload rejected (%d): %s", HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value, message)
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
        held = [0]  # bytes of this body set aside so far, given back however the request ends
        try:
            self._explain_body(size, held)
        finally:
            self.server.release(held[0])

    def _read_body(self, size: int, held: list[int]) -> bytearray | None:
        """The body: once its first bytes have arrived (a connection that declares a large body and
        sends nothing holds nothing), its whole declared size is set aside against the server's
        budget, or a 503 answered, and the rest read into that one buffer; None after a 400 or 503."""
        first = self.rfile.read1(min(_BODY_BLOCK, size)) if size else b""
        if size and not first:
            self._error(HTTPStatus.BAD_REQUEST, "the upload ended before its declared length")
            return None
        if not self.server.reserve(size, UPLOADS_IN_MEMORY * self.app.max_upload_bytes):
            log.info("upload refused (503): other uploads hold the memory set aside for them")
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, "busy reading other uploads; try again in a moment")
            return None
        held[0] = size
        body = bytearray(size)
        body[: len(first)] = first
        view, done = memoryview(body), len(first)
        while done < size:
            n = self.rfile.readinto(view[done:])
            if not n:
                self._error(HTTPStatus.BAD_REQUEST, "the upload ended before its declared length")
                return None
            done += n
        return body

    def _explain_body(self, size: int, held: list[int]) -> None:
        """Read the body of ``size`` bytes, explain its image and answer."""
        try:
            body = self._read_body(size, held)
            if body is None:
                return None
            content_type = self.headers.get("Content-Type", "")
            data = multipart_file(content_type, body) if content_type.lower().startswith("multipart/form-data") else body
            page = self.app.explain_upload(data)
        except UploadError as exc:
            log.info("upload rejected (%d): %s", exc.status.value, exc.message)
            return self._error(exc.status, exc.message)
        except RequestTimedOut:
            raise  # answered by handle_one_request
        except (BrokenPipeError, ConnectionResetError):  # the client left before its answer was written
            self.close_connection = True
            log.debug("client gone before its answer")
            return None
        except Exception:  # a bug must not take the server down; the client gets a 500
            log.exception("explaining an upload failed")
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "the image could not be explained (server error)")
        self._send(HTTPStatus.OK, page, csp=page_csp(script=True))


class _Server(ThreadingHTTPServer):
    """Daemon request threads, at most :data:`MAX_CONNECTIONS` at once (one more gets a 503 at
    once); a connection that breaks (client gone, stalled) is logged, not printed.

    Closing does not wait for request threads (``block_on_close = False``): Ctrl-C stops the
    server at once even while a browser holds a keep-alive connection open (up to ``timeout``).
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Any, handler: Any, max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._body_bytes, self._body_lock = 0, threading.Lock()
        super().__init__(address, handler)

    def reserve(self, size: int, budget: int) -> bool:
        """Set ``size`` bytes of request bodies aside, unless that would pass ``budget`` in all (one
        body alone always fits)."""
        with self._body_lock:
            if self._body_bytes and self._body_bytes + size > budget:
                return False
            self._body_bytes += size
            return True

    def release(self, size: int) -> None:
        with self._body_lock:
            self._body_bytes -= size

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: Any) -> None:
        """Answer 503 without reading the request, and close."""
        body = f"busy: {self.max_connections} connections are being served; try again in a moment\n".encode()
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: 2\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
        except OSError:
            pass
        log.info("connection refused: %d connections already being served", self.max_connections)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s failed", client_address[0] if client_address else "?", exc_info=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(model: ConceptBottleneckModel, host: str = "127.0.0.1", port: int = 8000, *,
                max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int | None = None,
                max_connections: int = MAX_CONNECTIONS, top_k: int = 5, maps: bool = True) -> ThreadingHTTPServer:
    """A ready server (not yet serving): call ``serve_forever()``; ``port=0`` picks a free port.

    ``max_pixels``: the pixel budget of an upload (default ``cbm.data.pixel_budget()``);
    ``max_connections``: connections served at once (one more is answered 503).

    Raises:
        RuntimeError: the address cannot be bound (port in use, unknown host).
    """
    app = ExplainApp(model, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, top_k=top_k, maps=maps)
    allowed = _LOOPBACK if host in _LOOPBACK else None
    handler = type("ExplainHandler", (_Handler,), {"app": app, "allowed_hosts": allowed})
    try:
        return (_Server6 if ":" in host else _Server)((host, port), handler, max_connections)
    except OSError as exc:
        if isinstance(exc, socket.gaierror):  # a name that does not resolve: no port would help
            raise RuntimeError(f"cannot listen on {host} ({exc.strerror or exc}): --host must be an address of this "
                               "computer, e.g. 127.0.0.1 (the default) or 0.0.0.0 for every network") from exc
        raise RuntimeError(
            f"cannot listen on {host} port {port} ({exc}); choose another --port, or stop the program using it"
        ) from exc
    except OverflowError as exc:  # a port outside 0-65535, from the Python API
        raise RuntimeError(f"cannot listen on port {port}: a port number is 0 to 65535 (0 picks a free one)") from exc


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
