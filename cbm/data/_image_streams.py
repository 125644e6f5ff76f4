"""Checks that a PNG's or a JPEG's data holds the image its header declares, before PIL decodes it.

PIL is lenient where a classifier must not be: a PNG whose compressed data ends early comes back
with its missing rows set to 0, and a JPEG whose entropy-coded data ends early (or whose frame
header declares more rows than the data holds) comes back with grey rows. Both are caught here:

- PNG: every critical chunk (IHDR, PLTE, IDAT, IEND) must pass its CRC, and the IDAT stream must be
  one complete zlib stream that inflates to exactly the bytes IHDR's width, height, bit depth,
  colour type and interlacing declare. It is inflated in blocks and counted, never held whole.
- JPEG: libjpeg-turbo (through ``simplejpeg``) decodes the file at 1/8 scale in strict mode; a
  "premature end" of the data raises. Extra bytes before the end marker are tolerated (some
  encoders write them; the image is whole).
"""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

from cbm.data._image_base import ImageReadError
from cbm.errors import quote

__all__ = ["check_stream", "check_png", "check_jpeg"]

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_BLOCK = 1 << 20
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7 passes: (first row, first column, row step, column step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_warned_no_simplejpeg = False


def check_stream(path: Path, fmt: str) -> None:
    """Run the check of ``fmt`` (``"png"`` or ``"jpeg"``) on ``path``; other formats pass."""
    if fmt == "png":
        check_png(path)
    elif fmt in ("jpeg", "mpo"):
        check_jpeg(path)


def _error(path: Path, problem: str, fix: str = "Download or export the file again",
           field: str | None = None) -> ImageReadError:
    return ImageReadError(path, problem, fix, field=field)


def png_data_length(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered image data (a filter byte per row) that a PNG header declares."""
    bits = depth * _CHANNELS[colour]
    if not interlace:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for row0, col0, row_step, col_step in _ADAM7:
        cols = (width - col0 + col_step - 1) // col_step if width > col0 else 0
        rows = (height - row0 + row_step - 1) // row_step if height > row0 else 0
        if cols and rows:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def _ihdr(path: Path, data: bytes) -> int:
    """Expected filtered data length from an IHDR chunk's 13 bytes (raises on a bad header)."""
    if len(data) != 13:
        raise _error(path, f"has an IHDR chunk of {len(data)} bytes, not 13", field="IHDR")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise _error(path, f"declares the size {width} x {height}", field="IHDR")
    if colour not in _DEPTHS or depth not in _DEPTHS[colour] or compression or filtering or interlace > 1:
        raise _error(path, f"declares an invalid bit depth {depth} / colour type {colour} / interlace {interlace}",
                     field="IHDR")
    return png_data_length(width, height, depth, colour, interlace)


def check_png(path: Path) -> None:
    """Raise ``ImageReadError`` unless the critical chunks pass their CRC and IDAT holds exactly the
    image data IHDR declares."""
    inflater = zlib.decompressobj()
    produced, expected, offset = 0, None, 8
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_MAGIC:
            raise _error(path, "does not start with the PNG signature")
        while True:
            head = fh.read(8)
            if len(head) < 8:
                raise _error(path, f"ends at byte {offset} before its IEND chunk, so it is truncated")
            length, kind = struct.unpack(">I4s", head)
            name = kind.decode("latin-1")
            if length > 2**31 - 1:
                raise _error(path, f"has a chunk {name!r} at byte {offset} of impossible length {length}")
            critical = kind in (b"IHDR", b"PLTE", b"IDAT", b"IEND")
            if expected is None and kind != b"IHDR":
                raise _error(path, f"has the chunk {quote(name)} at byte {offset} before IHDR", field="IHDR")
            crc, remaining, ihdr = zlib.crc32(kind), length, b""
            cut = f"ends inside its chunk {name!r} (which starts at byte {offset} and holds {length:,} bytes), so it is truncated"
            while remaining:
                block = fh.read(min(remaining, _BLOCK))
                if not block:
                    raise _error(path, cut)
                remaining -= len(block)
                if critical:
                    crc = zlib.crc32(block, crc)
                if kind == b"IHDR":
                    ihdr += block
                elif kind == b"IDAT":
                    produced += _inflate(path, inflater, block, expected)
            stored = fh.read(4)
            if len(stored) < 4:
                raise _error(path, cut)
            if critical and struct.unpack(">I", stored)[0] != crc:
                raise _error(path, f"has a bad CRC in its chunk {name!r} at byte {offset}, so it is corrupt")
            if kind == b"IHDR":
                expected = _ihdr(path, ihdr)
            if kind == b"IEND":
                break
            offset += 12 + length
    if not inflater.eof or produced != expected:  # more than expected raised while inflating
        raise _error(path, f"holds {produced:,} of the {expected:,} bytes of image data its header declares "
                           "(the data ends early), so it is truncated or corrupt", field="IDAT")


def _inflate(path: Path, inflater, block: bytes, expected: int | None) -> int:
    """Bytes ``block`` inflates to, counted in bounded pieces; raises past ``expected``."""
    if inflater.eof:
        return 0  # bytes after the end of the zlib stream are ignored, as by libpng
    produced, data = 0, block
    try:
        while data:
            produced += len(inflater.decompress(data, _BLOCK))
            data = inflater.unconsumed_tail
            if expected is not None and produced > expected:
                raise _error(path, f"holds more image data than the {expected:,} bytes its header declares",
                             field="IDAT")
    except zlib.error as exc:
        raise _error(path, f"has corrupt compressed image data ({exc})", field="IDAT") from None
    return produced


def check_jpeg(path: Path) -> None:
    """Raise ``ImageReadError`` when the JPEG's data ends before the image its header declares."""
    global _warned_no_simplejpeg
    try:
        import simplejpeg
    except ImportError:
        if not _warned_no_simplejpeg:
            log.warning("simplejpeg is not installed, so JPEGs whose data ends early are not detected; "
                        "`pip install simplejpeg` to check them")
            _warned_no_simplejpeg = True
        return
    data = path.read_bytes()
    try:
        colourspace = simplejpeg.decode_jpeg_header(data)[2]
    except ValueError:
        return  # a header libjpeg-turbo does not parse: PIL decides
    out = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}.get(colourspace, "RGB")
    try:
        simplejpeg.decode_jpeg(data, colorspace=out, strict=True, min_height=1, min_width=1)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            raise _error(path, f"holds less image data than its header declares ({exc}), so it is truncated or corrupt",
                         field="scan data") from None
