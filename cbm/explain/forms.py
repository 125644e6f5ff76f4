"""The upload form of ``cbm serve``: the one image of a ``multipart/form-data`` body, after checks that
keep a hostile form from costing more than its size (parts counted, nested forms refused), and the
error an upload is refused with (its words for an image error and an upload over the limit)."""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cbm.errors import ImageError

__all__ = ["MAX_FORM_PARTS", "MAX_PART_HEADER_BYTES", "UploadError", "multipart_file", "too_large", "upload_reason"]

MAX_FORM_PARTS = 8
"""Most parts a multipart upload may have (the form has one file field)."""
MAX_PART_HEADER_BYTES = 16 * 1024
"""Most bytes of headers one part of a multipart upload may have."""


class UploadError(Exception):
    """A rejected upload: the HTTP status and a message for the person who sent it."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message



# the email parser's rules (email.feedparser): the rest of a delimiter line ("--" closes the form), then
# the lines it takes for a part's headers (its headerRE; a line unlike a header, an empty one too, ends them)
_DELIMITER_END = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
_HEADER_LINES = re.compile(rb"(?:(?:From |[\041-\071\073-\176]*:|[\t ])[^\r\n]*(?:\r\n|\r|\n|\Z))*")


def _refuse_nested_parts(body: bytes, delimiter: bytes) -> None:
    """Refuse a form with a part that is itself a multipart or a message, from each part's headers
    and before the form is parsed: the parser would open such a part and parse every part in it,
    which the part count (of the outer boundary only) does not see. Each occurrence of the
    delimiter is taken for a part's start (a part's data may hold it too), so none is missed."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    at = body.find(delimiter)
    while at >= 0:
        at += len(delimiter)
        line = _DELIMITER_END.match(body, at)
        if line and not line.group(1):
            limit = line.end() + MAX_PART_HEADER_BYTES
            head = _HEADER_LINES.match(body, line.end(), limit)
            if head.end() == limit < len(body):
                raise UploadError(HTTPStatus.BAD_REQUEST, f"a part of the form has over {MAX_PART_HEADER_BYTES} "
                                  "bytes of headers; send the image alone")
            kind = parser.parsebytes(head.group(), headersonly=True).get_content_maintype()
            if kind in ("multipart", "message"):
                raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                  f"a part of the form is itself a {kind}/* (a nested form); "
                                  "send one image per part, with no nested multipart")
        at = body.find(delimiter, at)


def multipart_file(content_type: str, body: bytes) -> bytes:
    """The ``file`` field of a ``multipart/form-data`` body, after counting its parts."""
    header = email.message.Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise UploadError(HTTPStatus.BAD_REQUEST, "the form could not be read (no multipart boundary)")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    parts = body.count(delimiter) - 1  # the closing delimiter counts once too
    if parts > MAX_FORM_PARTS:
        raise UploadError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                          f"the form has {parts} parts, over the limit of {MAX_FORM_PARTS}; send the image alone")
    _refuse_nested_parts(body, delimiter)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not msg.is_multipart():
        raise UploadError(HTTPStatus.BAD_REQUEST, "the form could not be read (malformed multipart body)")
    files = [p for p in msg.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
    if len(files) > 1:  # one report per request: a second image would be dropped unseen
        raise UploadError(HTTPStatus.BAD_REQUEST, f"the form holds {len(files)} images; upload one image at a time")
    if files:
        return files[0].get_payload(decode=True) or b""
    raise UploadError(HTTPStatus.BAD_REQUEST, "the form has no 'file' field; choose an image to upload")


def upload_reason(exc: ImageError, owner: str, subject: str) -> str:
    """An image error's field, problem and fix without our file's path, the upload named as ``owner``
    of the field or ``subject`` of the problem: "the DICOM file's Rows is missing. Every DICOM image
    declares it; export the file again"."""
    where = f"{owner} {exc.field_label(exc.field)}" if exc.field else subject
    return f"{where} {exc.problem}".rstrip(". ") + (f". {exc.fix}" if exc.fix else "")


def too_large(size: int, limit: int) -> str:
    """Why an upload of ``size`` bytes is refused over ``limit``, and what to do."""
    return (f"the upload has {size:,} bytes ({size / 2**20:.1f} MB), over the limit of {limit:,} bytes "
            f"({limit / 2**20:.1f} MB); send a smaller export of the image")
