"""Seeded mutation fuzzing of cbm's inputs: images (PNG, JPEG, DICOM), data cards, manifests, `cbm validate`.

    python scripts/fuzz_inputs.py                                   # the campaign: 2,100 images, 525 others
    python scripts/fuzz_inputs.py --images 150 --cards 40 --manifests 40 --validate 20   # what the tests run
    python scripts/fuzz_inputs.py --seed 3 --json fuzz.json --examples 5

Every input is a mutation of a valid one (pydicom's test files, generated PNGs and JPEGs, a
generated card with its manifest and images): header fields set to edge values, elements removed,
lookup tables added, truncation, byte flips, YAML aliases and nesting, number-like identifiers,
path spellings of one file, paths outside the image folder, broken CSV. Each input runs in a forked
child under an address-space limit and a time limit, and ends in one outcome:

- ``accepted``: a result that passes the contract (an image: float32 (H, W, C), C in {1, 3},
  finite, in [0, 1], the size its header declares, header and data consistent by an independent
  check; a card: its names as written, classes distinct, groups naming classes; a manifest: known
  labels and splits, no file twice, nothing outside the image root);
- ``accepted_but_wrong``: a result that breaks the contract;
- ``clear_error``: a documented error (an ``InputError``, or ``FileNotFoundError``) whose one-line
  message names the file and is at most 1,000 characters;
- ``unclear_error``: any other exception, or a message that does not name the file or runs long;
- ``hang``: over the time limit; ``crash_or_memory``: killed by a signal, out of memory, or a peak
  over twice the pixel budget's bytes.

Prints JSON: counts per kind and outcome, the peak memory of any one input against the budget,
and up to ``--examples`` inputs of each kind and bad outcome. ``--legacy-errors`` counts the error classes
cbm documented before its ``InputError`` family (for a before/after table). Exit status 1 when any
bad outcome occurred.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # large blocks mmapped and returned on free, so each
    # input's peak resident size is its own, not hidden by memory an earlier input freed
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# A codec's Rust panic on a corrupt file is caught as an error; with RUST_BACKTRACE=1 (a debugging
# setting some shells export) the panic hook also symbolises a backtrace, which costs ~50 MB.
os.environ["RUST_BACKTRACE"] = "0"

import numpy as np  # noqa: E402

BAD = ("accepted_but_wrong", "unclear_error", "hang", "crash_or_memory")
LEGACY_NAMES = {"ImageReadError", "MissingCodecError", "CardError", "ManifestError"}
DICOM_BASES = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm",
               "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "SC_ybr_full_uncompressed.dcm",
               "liver.dcm", "rtdose.dcm", "vlut_04.dcm", "mlut_18.dcm", "OBXXXX1A.dcm")
DICOM_VALUES: dict[str, list[Any]] = {
    "Rows": [0, 1, 2, 63, 65, 32, 127, 129, 256, 4000, 65535],
    "Columns": [0, 1, 2, 63, 65, 32, 127, 129, 256, 4000, 65535],
    "SamplesPerPixel": [0, 1, 2, 3, 4, 65535],
    "BitsAllocated": [0, 1, 7, 8, 12, 16, 32, 64, 65535],
    "BitsStored": [0, 1, 7, 8, 12, 16, 17, 33, 65535],
    "HighBit": [0, 7, 15, 31, 200],
    "PixelRepresentation": [0, 1, 2],
    "NumberOfFrames": ["", "0", "1", "2", "3", "9", "11", "-1", "abc", "1e9", "100000"],
    "PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL_422", "YBR_FULL", "XYZ", ""],
    "PlanarConfiguration": [0, 1, 2],
    "WindowCenter": ["0", "-1", "1e30", "nan", "inf", ""],
    "WindowWidth": ["0", "1", "-5", "1e30", "nan", "inf", ""],
    "RescaleSlope": ["0", "1e30", "nan", "-1", "abc"],
    "RescaleIntercept": ["1e30", "nan", "-1e6"],
    "VOILUTFunction": ["SIGMOID", "LINEAR_EXACT", "BOGUS"],
}
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.3.4", ""]
TRICKY = ["0x1f", "0123", "0o17", "1:20", "yes", "no", "on", "off", "true", "1e3", ".inf", ".nan", "2001-12-14", "12_000",
          "-0", "+12", "0b101", "Ünïcödé ✓", "a b", "x" * 3000]
CARD_TEXT = ("name", "title", "modality", "group_column", "split_column")


# ---------------------------------------------------------------------------- running the inputs
def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset this process's peak resident size to its current size (Linux 4.0+); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Runner:
    """Runs inputs one by one in a forked worker under an address-space limit and a time limit.

    Before each input the worker resets its peak resident size (``/proc/self/clear_refs``), so the
    peak it reports is that input's own. A worker that runs past the time limit is killed (a
    hang), one that dies or runs out of memory is counted as a crash; both are replaced.
    """

    def __init__(self, jobs: list[Callable[[], dict]], timeout: float, mem_cap: int) -> None:
        self.jobs, self.timeout, self.mem_cap = jobs, timeout, mem_cap
        self.pid = 0

    def _start(self) -> None:
        command_r, command_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(command_w)
            os.close(result_r)
            self._work(command_r, result_w)
        os.close(command_r)
        os.close(result_w)
        self.pid, self.send, self.receive = pid, command_w, result_r

    def _work(self, commands: int, results: int) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # codecs' own panic messages
        limit = _status("VmSize") + self.mem_cap
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        reader = os.fdopen(commands, "rb", buffering=0)
        while True:
            line = b""
            while not line.endswith(b"\n"):
                block = reader.read(1)
                if not block:
                    os._exit(0)
                line += block
            try:
                measured = reset_peak()
                before = _status("VmRSS")
                result = self.jobs[int(line)]()
                if measured:
                    result["peak_bytes"] = max(0, _status("VmHWM") - before)
            except MemoryError:
                os.write(results, json.dumps({"outcome": "crash_or_memory", "detail": "MemoryError"}).encode() + b"\n")
                os._exit(3)
            except BaseException as exc:  # noqa: BLE001 - the harness itself must report, never die
                result = {"outcome": "unclear_error", "detail": f"escaped: {type(exc).__name__}: {exc}"[:300]}
            os.write(results, json.dumps(result, default=str).encode() + b"\n")

    def _stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            os.close(self.send)
            os.close(self.receive)
            self.pid = 0

    def run(self, index: int) -> dict:
        if not self.pid:
            self._start()
        start = time.monotonic()
        os.write(self.send, f"{index}\n".encode())
        data = b""
        while not data.endswith(b"\n"):
            left = self.timeout - (time.monotonic() - start)
            ready, _, _ = select.select([self.receive], [], [], max(left, 0))
            if not ready:
                self._stop()
                return {"outcome": "hang", "detail": f"over {self.timeout:g} s", "seconds": self.timeout}
            block = os.read(self.receive, 1 << 16)
            if not block:
                self._stop()
                return {"outcome": "crash_or_memory", "detail": "the worker died", "seconds": time.monotonic() - start}
            data += block
        result = json.loads(data)
        result["seconds"] = time.monotonic() - start
        if result["outcome"] == "crash_or_memory":
            self._stop()
        return result

    def close(self) -> None:
        self._stop()


def classify_error(exc: BaseException, names: list[str], legacy: bool) -> dict:
    from cbm.errors import InputError

    text = str(exc)
    documented = isinstance(exc, (InputError, FileNotFoundError)) or (
        legacy and (type(exc).__name__ in LEGACY_NAMES or type(exc) is ValueError))
    named = any(n and n in text for n in names)
    clear = documented and named and len(text) <= 1000 and "\n" not in text.strip()
    return {"outcome": "clear_error" if clear else "unclear_error", "detail": f"{type(exc).__name__}: {text[:300]}",
            "error_length": len(text)}


# ---------------------------------------------------------------------------- images
def png_bytes(pixels: np.ndarray, **save: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", **save)
    return buf.getvalue()


def jpeg_bytes(pixels: np.ndarray, **save: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def image_bases(rng: np.random.Generator, budget: int) -> dict[str, bytes]:
    """Valid inputs to mutate: pydicom's test files and generated PNGs/JPEGs."""
    from pydicom.data import get_testdata_file

    y, x = np.mgrid[0:48, 0:40]
    grey = ((x * 5 + y * 3) % 200 + rng.integers(0, 40, (48, 40))).astype(np.uint8)
    rgb = np.stack([grey, grey[::-1], 255 - grey], -1)
    out = {
        "grey.png": png_bytes(grey), "grey16.png": png_bytes((grey.astype(np.uint16) * 257)),
        "rgb.png": png_bytes(rgb), "rgba.png": png_bytes(np.dstack([rgb, grey])),
        "grey.jpg": jpeg_bytes(grey), "rgb.jpg": jpeg_bytes(rgb),
        "progressive.jpg": jpeg_bytes(rgb, progressive=True),
    }
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).quantize(16).save(buf, "PNG")
    out["palette.png"] = buf.getvalue()
    for name in DICOM_BASES:
        path = get_testdata_file(name)
        if path:
            out[name] = Path(path).read_bytes()
    side = math.isqrt(budget)
    if side <= 2048:  # images at the pixel budget, where the peak memory is measured against it
        big = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        out["at_budget.png"], out["at_budget.jpg"] = png_bytes(big), jpeg_bytes(big)
        out["at_budget.dcm"] = dicom_bytes(big)
    return out


def dicom_bytes(pixels: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", generate_uid(), "OT"
    ds.set_pixel_data(pixels, "RGB", 8)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of a PNG's chunks (stops at the first malformed one)."""
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)


def mutate_png(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    chunks = _chunks(data)
    ihdr = bytearray(chunks[0][1])
    choice = rnd.randrange(6)
    if choice == 0:  # a header field, CRC kept valid
        field = rnd.choice([(0, ">I"), (4, ">I"), (8, ">B"), (9, ">B"), (12, ">B")])
        value = rnd.choice([0, 1, 2, 3, 4, 6, 7, 16, 24, 47, 49, 96, 13000, 2**31 - 1, 2**32 - 1])
        try:
            struct.pack_into(field[1], ihdr, field[0], value)
        except struct.error:
            struct.pack_into(field[1], ihdr, field[0], value & 0xFF)
        return f"ihdr@{field[0]}={value}", _png([(b"IHDR", bytes(ihdr)), *chunks[1:]])
    if choice == 1:  # image data shortened or lengthened, a valid zlib stream and CRC
        raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
        cut = rnd.choice([len(raw) // 2, len(raw) - 1, len(raw) + 41, len(raw) * 2])
        raw = (raw * 3)[:cut]
        others = [c for c in chunks if c[0] not in (b"IDAT", b"IEND")]
        return f"idat_len={cut}", _png([*others, (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])
    if choice == 2:
        cut = rnd.randrange(8, len(data))
        return f"truncate@{cut}", data[:cut]
    if choice == 3:  # flips inside the image data, CRC recomputed (only zlib can tell)
        idat = bytearray(b"".join(d for k, d in chunks if k == b"IDAT"))
        for _ in range(rnd.randint(1, 4)):
            idat[rnd.randrange(len(idat))] ^= 1 << rnd.randrange(8)
        others = [c for c in chunks if c[0] not in (b"IDAT", b"IEND")]
        return "idat_flips", _png([*others, (b"IDAT", bytes(idat)), (b"IEND", b"")])
    if choice == 4:
        return "bomb", _png([(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0)),
                             (b"IDAT", zlib.compress(bytes(13001) * 64, 9)), (b"IEND", b"")])
    return "byte_flips", flip_bytes(data, rnd)


def flip_bytes(data: bytes, rnd: random.Random, lo: int = 0) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        out[rnd.randrange(lo, len(out))] = rnd.randrange(256)
    return bytes(out)


def mutate_jpeg(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    choice = rnd.randrange(5)
    if choice == 0:
        offset = rnd.choice([5, 7, 9])  # height, width, components
        value = rnd.choice([0, 1, 24, 47, 49, 96, 65000])
        size = 1 if offset == 9 else 2
        value = min(value, 255) if size == 1 else value
        return f"sof@{offset}={value}", data[:sof + offset] + value.to_bytes(size, "big") + data[sof + offset + size:]
    if choice == 1:
        cut = rnd.randrange(4, len(data))
        return f"truncate@{cut}", data[:cut]
    if choice == 2:
        cut = rnd.randrange(sof, len(data))
        return f"truncate+eoi@{cut}", data[:cut] + b"\xff\xd9"
    if choice == 3:
        return "scan_flips", flip_bytes(data, rnd, lo=sof)
    return "byte_flips", flip_bytes(data, rnd)


def mutate_dicom(data: bytes, rnd: random.Random) -> tuple[str, bytes]:
    import pydicom

    choice = rnd.randrange(10)
    if choice >= 6:
        if choice == 6:
            cut = rnd.randrange(132, len(data))
            return f"truncate@{cut}", data[:cut]
        if choice == 7:
            return "byte_flips", flip_bytes(data, rnd, lo=128)
        if choice == 8:
            out = data.replace(rnd.choice([b"US", b"IS", b"DS", b"CS", b"OB", b"OW"]), b"ZZ", rnd.randint(1, 3))
            return "unknown_vr", out
        return "header_flips", flip_bytes(data[: min(len(data), 1200)], rnd, lo=132) + data[1200:]
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if choice <= 3:
        keyword = rnd.choice(list(DICOM_VALUES))
        value = rnd.choice(DICOM_VALUES[keyword])
        name = f"{keyword}={value!r}"
        try:
            setattr(ds, keyword, value)
        except Exception:  # noqa: BLE001 - a value pydicom refuses to set: remove the element instead
            name = f"del {keyword}"
            ds.pop(keyword, None)
    elif choice == 4:
        keyword = rnd.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation",
                              "PhotometricInterpretation", "PixelData", "NumberOfFrames", "WindowWidth"])
        name = f"del {keyword}"
        ds.pop(keyword, None)
    else:
        name = _add_lut(ds, rnd)
    if rnd.random() < 0.2:
        uid = rnd.choice(SYNTAXES)
        ds.file_meta.TransferSyntaxUID = uid
        name += f" syntax={uid}"
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - unwritable mutation: a raw flip instead
        return f"unwritable {name} ({type(exc).__name__})", flip_bytes(data, rnd, lo=128)
    return name, buf.getvalue()


def _add_lut(ds: Any, rnd: random.Random) -> str:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    entries, first, bits = rnd.choice([0, 1, 256, 4096]), rnd.choice([0, -100, 60000]), rnd.choice([0, 8, 12, 16, 17])
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTData = [rnd.randrange(65536) for _ in range(rnd.choice([0, 1, max(entries, 1), 300]))]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    keyword = rnd.choice(["VOILUTSequence", "ModalityLUTSequence"])
    if keyword == "ModalityLUTSequence":
        item.ModalityLUTType = "HU"
    setattr(ds, keyword, Sequence([item]))
    return f"{keyword}[{entries}, {first}, {bits}]"


def check_image(path: Path, out: Any) -> str | None:
    """Why an accepted image breaks the contract (None when it does not): an independent check."""
    p = out.pixels
    if not (isinstance(p, np.ndarray) and p.dtype == np.float32 and p.ndim == 3 and p.shape[2] in (1, 3)):
        return f"pixels {getattr(p, 'dtype', type(p))} {getattr(p, 'shape', '')}"
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        return "values not finite or outside [0, 1]"
    data = path.read_bytes()
    if data[128:132] == b"DICM":
        return _check_dicom(path, p.shape)
    if data.startswith(b"\x89PNG"):
        return _check_png(data, p.shape)
    if data.startswith(b"\xff\xd8"):
        return _check_jpeg(data, p.shape)
    return None


def _check_dicom(path: Path, shape: tuple[int, ...]) -> str | None:
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(path, force=True, defer_size=1024)  # deferred: a garbled length allocates nothing
    rows, cols = int(ds.Rows), int(ds.Columns)
    if shape[:2] != (rows, cols):
        return f"shape {shape} for Rows {rows} x Columns {cols}"
    raw_frames = ds.get("NumberOfFrames", 1)
    try:
        frames = int(str(raw_frames if raw_frames is not None else "x"))
    except ValueError:
        return f"NumberOfFrames {raw_frames!r} accepted"
    if frames < 1:
        return f"NumberOfFrames {frames} accepted"
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")  # none: read as native, as cbm does
    if not (syntax is not None and UID(str(syntax)).is_encapsulated) and "PixelData" in ds:
        samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        if samples == 3 and str(ds.PhotometricInterpretation) == "YBR_FULL_422":
            samples = 2
        expected = (rows * cols * samples * bits * frames + 7) // 8
        raw = ds.get_item("PixelData", keep_deferred=True)
        length = len(raw.value) if raw.value is not None else raw.length
        frame = (rows * cols * samples * bits + 7) // 8
        if length not in (expected, expected + expected % 2) and not (
                expected < length < expected + frame and _zero_padding(path, raw, expected, length)):
            return f"pixel data {length} bytes, header declares {expected}"
    return None


def _zero_padding(path, raw, start: int, length: int) -> bool:
    """Whether the pixel data's bytes past the declared frames are all zero (padding cbm ignores)."""
    if raw.value is not None:
        return not any(raw.value[start:length])
    with open(path, "rb") as fh:
        fh.seek(raw.value_tell + start)
        return not any(fh.read(length - start))


def _check_png(data: bytes, shape: tuple[int, ...]) -> str | None:
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body, crc = data[pos + 8:pos + 8 + length], data[pos + 8 + length:pos + 12 + length]
        if kind in (b"IHDR", b"PLTE", b"IDAT", b"IEND") and struct.pack(">I", zlib.crc32(kind + body)) != crc:
            return f"chunk {kind!r} with a bad CRC accepted"
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    else:
        return "no IEND, accepted"
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if shape[:2] != (height, width):
        return f"shape {shape} for IHDR {width} x {height}"
    d = zlib.decompressobj()
    raw = d.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    if interlace:
        expected = sum(len(range(r0, height, rs)) * (1 + (len(range(c0, width, cs)) * bits + 7) // 8)
                       for r0, c0, rs, cs in passes if len(range(c0, width, cs)) and len(range(r0, height, rs)))
    else:
        expected = height * (1 + (width * bits + 7) // 8)
    if not d.eof or len(raw) != expected:
        return f"image data {len(raw)} bytes (stream ended: {d.eof}) for {expected} declared"
    return None


def _check_jpeg(data: bytes, shape: tuple[int, ...]) -> str | None:
    import simplejpeg

    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
    except ValueError:  # a header libjpeg-turbo refuses, that PIL read: its size is PIL's to say
        return None
    if shape[:2] != (height, width):
        return f"shape {shape} for a frame header of {width} x {height}"
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY" if shape[2] == 1 else "RGB", strict=True)
    except ValueError as exc:
        if "premature end" in str(exc).lower():
            return f"accepted although the data ends early ({exc})"
    return None


def image_cases(n: int, rnd: random.Random, bases: dict[str, bytes], work: Path) -> list[dict]:
    cases = []
    work.mkdir(parents=True, exist_ok=True)
    names = sorted(bases)
    for i in range(n):
        base = names[i % len(names)]
        data = bases[base]
        if base.endswith(".png"):
            how, mutated = mutate_png(data, rnd)
        elif base.endswith(".jpg"):
            how, mutated = mutate_jpeg(data, rnd)
        else:
            how, mutated = mutate_dicom(data, rnd)
        path = work / f"img{i:05d}{Path(base).suffix}"
        path.write_bytes(mutated)
        cases.append({"kind": "image", "base": base, "mutation": how, "path": str(path)})
    return cases


def warm_up(bases: dict[str, bytes], folder: Path, template: Path) -> None:
    """Read every valid base once, and a valid card, so the decoders' and validators' modules are
    loaded before the worker starts (their import would otherwise count towards one input's memory)."""
    from cbm.data import read_image

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in bases.items():
        (folder / name).write_bytes(data)
        try:
            read_image(folder / name)
        except Exception:  # noqa: BLE001 - only the imports matter here
            pass
    card = make_card_folder(folder / "toy", template, card_text(), BASE_ROWS)
    run_validate({"path": str(card), "strict": True, "expected": {}}, False)()


def run_image(case: dict, legacy: bool) -> Callable[[], dict]:
    def go() -> dict:
        from cbm.data import read_image

        path = Path(case["path"])
        try:
            out = read_image(path)
        except MemoryError:
            raise  # the worker counts it as a crash
        except Exception as exc:  # noqa: BLE001 - classified
            return classify_error(exc, [str(path), path.name], legacy)
        why = check_image(path, out)
        return {"outcome": "accepted_but_wrong" if why else "accepted", "detail": why}
    return go


# ---------------------------------------------------------------------------- cards and manifests
BASE_ROWS = [(f"{label}_{split}_{i}.png", label, split) for split, k in (("train", 3), ("val", 1), ("test", 2))
             for label in ("nevus", "melanoma") for i in range(k)]


def card_text(**fields: str) -> str:
    values = {"name": "toy", "title": "Toy lesions", "modality": "dermoscopy", "task": "binary",
              "image_root": "images", "manifest": "manifest.csv", "split_column": "split", "group_column": "null"}
    values.update(fields)
    lines = [f"{k}: {v}" for k, v in values.items()]
    lines += ["classes:", f"  - name: {fields.get('class0', 'nevus')}", "    description: benign mole",
              f"  - name: {fields.get('class1', 'melanoma')}", "    description: malignant tumour",
              "nuisance_prompts: [ruler, ink marking]", "concept_truth:", "  irregular border: truth_border",
              "source: generated", "licence: CC0"]
    return "\n".join(lines) + "\n"


def manifest_text(rows: list[tuple[str, str, str]]) -> str:
    """The CSV of ``rows``, with the truth column the base card's concept_truth names."""
    return "path,label,split,truth_border\n" + "".join(f"{p},{la},{s},{i % 2}\n" for i, (p, la, s) in enumerate(rows))


def make_card_folder(folder: Path, template: Path, text: str | bytes, rows: list[tuple[str, str, str]] | str) -> Path:
    shutil.copytree(template, folder)
    (folder / "card.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    manifest = rows if isinstance(rows, str) else manifest_text(rows)
    (folder / "manifest.csv").write_bytes(manifest.encode("utf-8", "surrogateescape"))
    return folder


def mutate_card(rnd: random.Random) -> tuple[str, str | bytes, dict[str, str]]:
    """(what, card text, {field: the text expected when it loads})."""
    choice = rnd.randrange(9)
    if choice <= 2:  # a number-, date- or bool-like identifier must keep its text
        field = rnd.choice([*CARD_TEXT, "class0", "class1"])
        value = rnd.choice(TRICKY)
        return f"{field}: {value[:20]}", card_text(**{field: value}), {field: value}
    if choice == 3:  # billion laughs
        levels = rnd.randint(2, 10)
        parts = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        parts += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, levels)]
        field = rnd.choice(["title", "modality", "nuisance_prompts"])
        return f"aliases x{levels} in {field}", card_text(**{field: "{" + ", ".join(parts) + "}"}), {}
    if choice == 4:
        depth = rnd.choice([10, 40, 200, 1000, 5000])
        return f"nesting {depth}", card_text(title="[" * depth + "x" + "]" * depth), {}
    if choice == 5:
        text = card_text()
        if rnd.random() < 0.5:
            return "recursive alias", text + "obtain: &r [*r]\n", {}
        return "repeated key", text + f"{rnd.choice(['name', 'task', 'manifest'])}: other\n", {}
    if choice == 6:
        text = card_text()
        cut = rnd.randrange(len(text))
        return f"truncate@{cut}", text[:cut], {}
    if choice == 7:
        raw = bytearray(card_text().encode())
        for _ in range(rnd.randint(1, 6)):
            raw[rnd.randrange(len(raw))] = rnd.choice(b"\x00\t\n :-[]{}&*!|>'\"#%@`\xff\xfe")
        return "byte_flips", bytes(raw), {}
    field, value = rnd.choice([("unknown_field", "x"), ("allow_outside_root", "maybe"), ("classes", "[a]"),
                               ("task", "regression"), ("image_root_env", "'1 bad'"), ("confounder", "{column: sex, id_groups: {cat: m}}"),
                               ("concept_truth", "[a, b]"), ("nuisance_prompts", "''"), ("name", "Bad Name"),
                               ("make_splits", "{method: nope}")])
    return f"{field}={value}", card_text(**{field: value}), {}


def check_card(card: Any, expected: dict[str, str]) -> str | None:
    import re

    names = card.class_names
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", card.name):
        return f"name {card.name!r} accepted"
    if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        return f"classes {names!r}"
    if card.task == "binary" and len(names) != 2:
        return "binary card with other than 2 classes"
    got = {"name": card.name, "title": card.title, "modality": card.modality, "group_column": card.group_column,
           "split_column": card.split_column, "class0": names[0], "class1": names[1]}
    for field, text in expected.items():
        if got[field] != text.strip():
            return f"{field} written {text[:30]!r} loaded as {str(got[field])[:30]!r}"
    return None


def manifest_rows(rnd: random.Random, folder_root: Path) -> tuple[str, list[tuple[str, str, str]] | str, bool]:
    """(what, rows or raw CSV text, whether the card allows paths outside its image root)."""
    rows = list(BASE_ROWS)
    target = rnd.choice([r for r in rows if r[2] == "train"])[0]
    choice = rnd.randrange(8)
    if choice <= 2:  # the same training file again in test, spelled differently
        spelling = rnd.choice([f"./{target}", f"sub/../{target}", f"//{target}", f"{folder_root}/images/{target}",
                               f"{folder_root}/images/./{target}", f"link_{target}", f"hard_{target}", f" {target}"])
        rows.append((spelling, "nevus", "test"))
        return f"leak {spelling.replace(str(folder_root), '<root>')}", rows, rnd.random() < 0.2
    if choice == 3:
        outside = rnd.choice(["../card.yaml", "../../../../etc/passwd", "/etc/passwd", "/dev/zero", "a/" * 200 + "x.png",
                              "x" * 300 + ".png", "/", "..", "images/../../manifest.csv"])
        rows.append((outside, "melanoma", rnd.choice(["train", "test"])))
        return f"outside {outside[:40]}", rows, rnd.random() < 0.3
    if choice == 4:
        i = rnd.randrange(len(rows))
        p, label, split = rows[i]
        rows[i] = (p, rnd.choice(["cat", "", " nevus ", "NEVUS", label]), rnd.choice(["validation", "", "TRAIN", "test_id", split]))
        return "label/split", rows, False
    if choice == 5:
        rows.append((target, "nevus", "train"))
        return "repeat within split", rows, False
    text = manifest_text(rows)
    broken = rnd.choice([
        ("empty", ""), ("header only", "path,label,split\n"), ("no split column", text.replace(",split", "", 1)),
        ("ragged", text + "x.png,nevus\n"), ("bad quote", text + '"x.png,nevus,train\n'), ("nul", text + "\x00\n"),
        ("not utf-8", text + "\udcff\n"), ("huge field", text + "y" * 200_000 + ",nevus,train\n"),
        ("duplicate header", "path,path,split\n"), ("bom crlf", "\ufeff" + text.replace("\n", "\r\n")),
        ("truncated", text[: rnd.randrange(len(text))])])
    return f"csv {broken[0]}", broken[1], False


def check_manifest(card: Any, manifest: Any) -> str | None:
    from cbm.data import KNOWN_SPLITS

    root = os.path.realpath(card.image_root)
    seen: dict[tuple[int, int], str] = {}
    for row in manifest:
        if row.label not in card.class_names or row.split not in KNOWN_SPLITS:
            return f"row {row.line} with label {row.label!r} / split {row.split!r} accepted"
        f = manifest.file(row)
        real = os.path.realpath(f)
        if not getattr(card, "allow_outside_root", False) and not (real == root or real.startswith(root + os.sep)):
            return f"row {row.line}: {row.path!r} outside the image root accepted"
        info = os.stat(f)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return f"row {row.line}: one file twice ({seen[key]}, {row.split})"
        seen[key] = row.split
    return None


def card_cases(n_cards: int, n_manifests: int, n_validate: int, rnd: random.Random, work: Path) -> list[dict]:
    template = work / "template"
    (template / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for p, _, _ in BASE_ROWS:
        (template / "images" / p).write_bytes(png_bytes(rng.integers(0, 255, (8, 8), dtype=np.uint8)))
    cases = []
    for i in range(n_cards + n_manifests + n_validate):
        folder = work / f"case{i:05d}" / "toy"
        kind = "card" if i < n_cards else "manifest" if i < n_cards + n_manifests else "validate"
        use_card = kind == "card" or (kind == "validate" and rnd.random() < 0.5)
        if use_card:
            how, text, expected = mutate_card(rnd)
            rows: Any = BASE_ROWS
        else:
            how, rows, allow = manifest_rows(rnd, folder)
            text, expected = card_text(**({"allow_outside_root": "true"} if allow else {})), {}
        make_card_folder(folder, template, text, rows)
        images = folder / "images"
        target = BASE_ROWS[0][0]
        os.symlink(target, images / f"link_{target}")
        os.link(images / target, images / f"hard_{target}")
        (images / "sub").mkdir()
        cases.append({"kind": kind, "mutation": how, "path": str(folder), "expected": expected,
                      "strict": rnd.random() < 0.5})
    return cases


def run_card(case: dict, legacy: bool) -> Callable[[], dict]:
    def go() -> dict:
        from cbm.data import load_card

        folder = Path(case["path"])
        names = [str(folder / "card.yaml"), str(folder / "manifest.csv"), str(folder)]
        try:
            card = load_card(folder)
            manifest = card.manifest(strict=case["strict"]) if case["kind"] == "manifest" else None
        except MemoryError:
            raise  # the worker counts it as a crash
        except Exception as exc:  # noqa: BLE001 - classified
            return classify_error(exc, names, legacy)
        why = check_card(card, case["expected"]) or (check_manifest(card, manifest) if manifest is not None else None)
        return {"outcome": "accepted_but_wrong" if why else "accepted", "detail": why}
    return go


def run_validate(case: dict, legacy: bool) -> Callable[[], dict]:
    def go() -> dict:
        from cbm.cli import main

        folder = Path(case["path"])
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            status = main(["validate", str(folder), *(["--strict"] if case["strict"] else [])])
        except MemoryError:
            raise  # the worker counts it as a crash
        except BaseException as exc:  # noqa: BLE001 - an exception escaping the command is unclear by definition
            return {"outcome": "unclear_error", "detail": f"escaped: {type(exc).__name__}: {str(exc)[:200]}"}
        finally:
            sys.stdout, sys.stderr = saved
        text = err.getvalue()
        lines = [line for line in text.splitlines() if line.strip()]
        if status == 0:  # "no problems found": the card and its manifest must keep the contract
            from cbm.data import load_card

            card = load_card(folder)
            why = check_card(card, case["expected"]) or check_manifest(card, card.manifest())
            return {"outcome": "accepted_but_wrong" if why else "accepted", "detail": why}
        if status == 1:  # the problems were reported
            return {"outcome": "accepted", "detail": None}
        named = any(n in text for n in (str(folder), "toy"))
        if status == 2 and len(lines) == 1 and named and len(text) <= 1100 and "Traceback" not in text:
            return {"outcome": "clear_error", "detail": lines[0][:300]}
        return {"outcome": "unclear_error", "detail": f"status {status}, {len(lines)} stderr lines: {text[:300]}"}
    return go


# ---------------------------------------------------------------------------- the campaign
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=2100)
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--manifests", type=int, default=200)
    parser.add_argument("--validate", type=int, default=125)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take (default 20)")
    parser.add_argument("--max-pixels", type=int, help="pixel budget (default: cbm's)")
    parser.add_argument("--legacy-errors", action="store_true", help="count cbm's pre-InputError error classes as documented")
    parser.add_argument("--examples", type=int, default=3, help="inputs listed per kind and bad outcome")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    if args.max_pixels:
        os.environ["CBM_MAX_PIXELS"] = str(args.max_pixels)

    import logging

    logging.disable(logging.CRITICAL)
    import warnings

    warnings.simplefilter("ignore")
    import cbm.cli  # noqa: F401 - imported once here, shared by every forked child
    import cbm.data

    budget = getattr(cbm.data, "pixel_budget", lambda: 1 << 25)()
    budget_bytes = budget * 12
    rnd = random.Random(args.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cbm-fuzz-") as tmp:
        work = Path(tmp)
        bases = image_bases(np.random.default_rng(args.seed), budget)
        cases = image_cases(args.images, rnd, bases, work / "images") if args.images else []
        cases += card_cases(args.cards, args.manifests, args.validate, rnd, work / "cards")
        counts: dict[str, Counter] = defaultdict(Counter)
        examples: dict[str, list[dict]] = defaultdict(list)
        peak, peak_case = 0, {}
        runners = {"image": run_image, "card": run_card, "manifest": run_card, "validate": run_validate}
        jobs = [runners[case["kind"]](case, args.legacy_errors) for case in cases]
        warm_up(bases, work / "warm", work / "cards" / "template")
        runner = Runner(jobs, args.timeout, 4 * budget_bytes + (1 << 30))
        try:
            for i, case in enumerate(cases):
                result = runner.run(i)
                if result.get("peak_bytes", 0) > 2 * budget_bytes:
                    result["detail"] = f"peak {result['peak_bytes'] / 2**20:.0f} MB over 2x the budget; {result.get('detail')}"
                    result["outcome"] = "crash_or_memory"
                if result.get("peak_bytes", 0) > peak:
                    peak, peak_case = result["peak_bytes"], {k: case.get(k) for k in ("kind", "base", "mutation")}
                counts[case["kind"]][result["outcome"]] += 1
                shown = [e for e in examples[result["outcome"]] if e["kind"] == case["kind"]]
                if result["outcome"] in BAD and len(shown) < args.examples:
                    examples[result["outcome"]].append({k: case[k] for k in ("kind", "mutation") if k in case}
                                                       | {"base": case.get("base"), "detail": result.get("detail")})
        finally:
            runner.close()
    total = Counter()
    for c in counts.values():
        total.update(c)
    report = {
        "seed": args.seed, "inputs": len(cases), "seconds": round(time.monotonic() - started, 1),
        "counts": {kind: dict(c) for kind, c in counts.items()}, "total": dict(total),
        "pixel_budget": budget, "budget_bytes": budget_bytes, "peak_measured": reset_peak(), "peak_mb_any_input": round(peak / 2**20, 1), "peak_input": peak_case,
        "bad": sum(total[o] for o in BAD), "examples": dict(examples),
    }
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 1 if report["bad"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
