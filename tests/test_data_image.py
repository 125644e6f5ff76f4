"""cbm.data._image: PNG/JPEG/TIFF through PIL, DICOM through pydicom, and every bad input's error."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from cbm.data import ImageReadError, LoadedImage, MissingCodecError, check_image_header, pil_pixels, read_image

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StudyInstanceUID")


def asymmetric(h: int = 24, w: int = 36) -> np.ndarray:
    """uint8 grey pattern whose rows and columns all differ: any flip or transpose changes it."""
    y, x = np.mgrid[0:h, 0:w]
    img = (x * 5 + y * 2) % 200 + 20
    img[:4, :6] = 255  # bright block in the top-left corner
    return img.astype(np.uint8)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    syntax: str | None = None,
    **attributes: object,
) -> Path:
    """Write ``pixels`` (rows, cols[, 3]) or (frames, rows, cols) as a DICOM file with pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC999"
    ds.InstitutionName = "General Hospital"
    ds.StudyInstanceUID = generate_uid()
    bits = bits_stored or (8 if pixels.dtype == np.uint8 else 16)
    ds.set_pixel_data(pixels, photometric, bits)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    for key, value in attributes.items():
        setattr(ds, key, value)
    if syntax:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------- PIL formats
def test_grey_png_reads_exactly(tmp_path):
    img = asymmetric()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert isinstance(out, LoadedImage)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == (24, 36, 1)
    np.testing.assert_array_equal(out.pixels[..., 0], img / np.float32(255))
    assert out.meta["format"] == "png" and out.meta["bits"] == 8


def test_16bit_png_uses_full_range(tmp_path):
    img = (asymmetric().astype(np.uint16) * 257)
    Image.fromarray(img).save(tmp_path / "a16.png")
    out = read_image(tmp_path / "a16.png")
    assert out.meta["bits"] == 16 and out.meta["voi"] == "min_max"
    lo, hi = float(img.min()), float(img.max())
    np.testing.assert_allclose(out.pixels[..., 0], (img - lo) / (hi - lo), atol=1e-6)


@pytest.mark.parametrize("lo, hi", [(0, 4095), (200, 3000), (0, 1023), (0, 1024), (1000, 60000)])
def test_16bit_png_is_stretched_from_its_smallest_to_its_largest_value(tmp_path, lo, hi):
    """A 16-bit PNG holding 12-bit data (one written from 12-bit DICOM) is not read as an almost black
    image: like a DICOM image of more than 8 bits without a window, it is stretched min-max, and an
    array of the same values (as a user who read the file with PIL passes it) the same way; an
    image at 1023 and one at 1024 read alike (no jump at a bit depth's edge)."""
    from cbm.data.transforms import unit_pixels

    a = asymmetric().astype(np.float64)
    img = np.round(lo + (a - a.min()) / np.ptp(a) * (hi - lo)).astype(np.uint16)
    assert (int(img.min()), int(img.max())) == (lo, hi)
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    expected = (img - float(lo)) / float(hi - lo)
    assert out.meta["bits"] == 16 and out.meta["voi"] == "min_max"
    np.testing.assert_allclose(out.pixels[..., 0], expected, atol=1e-6)
    np.testing.assert_allclose(unit_pixels(img), expected, atol=1e-6)
    assert out.pixels.min() == 0.0 and out.pixels.max() == pytest.approx(1.0)


def _png16(values: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of ``(H, W, C)`` values, written by hand (Pillow writes no 16-bit colour PNG)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_16bit_colour_png_is_read_at_8_bits_and_said_so_once(tmp_path, monkeypatch, caplog):
    """Pillow keeps the high byte of a 16-bit RGB PNG: 12-bit data reads dark, which a warning names
    (once a process) with the fix, rather than silently."""
    import cbm.data._image_base as image_base

    monkeypatch.setattr(image_base, "_SAID", set())
    rgb = (np.stack([asymmetric(), asymmetric()[::-1], np.full((24, 36), 90, np.uint8)], -1).astype(np.uint16) * 16)
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(_png16(rgb, 2))
    with caplog.at_level("WARNING", logger="cbm.data._image"):
        out = read_image(tmp_path / "a.png")
        read_image(tmp_path / "b.png")
    assert out.pixels.shape == (24, 36, 3) and out.pixels.max() < 0.07  # the high byte of 12-bit data
    assert caplog.text.count("a 16-bit RGB PNG is read at 8 bits") == 1 and "a.png" in caplog.text
    assert "Save it as 8-bit, or as 16-bit greyscale without alpha" in caplog.text


def test_an_alpha_channel_does_not_set_a_16bit_arrays_scale():
    from cbm.data.transforms import unit_pixels

    rgb = np.stack([asymmetric(), asymmetric()[::-1], np.full((24, 36), 90, np.uint8)], -1).astype(np.uint16) * 16
    opaque = np.concatenate([rgb, np.full((24, 36, 1), 65535, np.uint16)], -1)
    grey_alpha = np.concatenate([rgb[..., :1], np.full((24, 36, 1), 65535, np.uint16)], -1)
    np.testing.assert_allclose(unit_pixels(opaque)[..., :3], unit_pixels(rgb), atol=1e-6)
    np.testing.assert_allclose(unit_pixels(grey_alpha)[..., :1], unit_pixels(rgb[..., :1]), atol=1e-6)
    assert unit_pixels(rgb).max() == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1"])
def test_colour_modes(tmp_path, mode):
    rgb = np.stack([asymmetric(), asymmetric()[::-1], np.full((24, 36), 90, np.uint8)], -1)
    im = Image.fromarray(rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(128)
    elif mode == "P":
        im = im.quantize(64)
    elif mode == "1":
        im = Image.fromarray(asymmetric() > 128)
    im.save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    if mode == "1":
        assert out.pixels.shape == (24, 36, 1)
        np.testing.assert_array_equal(out.pixels[..., 0], (asymmetric() > 128).astype(np.float32))
        return
    assert out.pixels.shape == (24, 36, 3)
    expected = np.asarray(im.convert("RGB"), np.float32) / 255  # palette colours / alpha dropped
    np.testing.assert_allclose(out.pixels, expected, atol=1e-6)


def test_jpeg_keeps_orientation(tmp_path):
    img = np.zeros((60, 90, 3), np.uint8)
    img[:20, :30] = 250  # top-left bright
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    p = read_image(tmp_path / "a.jpg").pixels
    assert p[:20, :30].mean() > 0.9 and p[30:, 45:].mean() < 0.1


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :15] = 255
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 3  # "rotate 180" when displayed
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "rot.jpg")
    assert out.meta["exif_transposed"] is True
    assert out.pixels[-10:, -15:].mean() > 0.9  # the block is bottom-right as displayed
    assert out.pixels[:10, :15].mean() < 0.1
    # the same photo opened with PIL reads as its file does (a model trained on the file's pixels)
    with Image.open(tmp_path / "rot.jpg") as opened:
        np.testing.assert_array_equal(pil_pixels(opened), out.pixels)


def test_a_phone_jpeg_with_extra_images_is_read_as_its_photo_upright(tmp_path):
    """A JPEG that PIL opens as MPO (a phone's photo with a gain map or depth map after it) is one
    photograph: its EXIF orientation is applied as for any JPEG, and the "middle" frame policy does not
    pick one of the extra images."""
    img = np.full((40, 60, 3), 90, np.uint8)
    img[:10, :15] = 250  # top-left bright as stored
    exif = Image.Exif()
    exif[0x0112] = 3  # "rotate 180" when displayed
    extras = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (30, 60)]
    Image.fromarray(img).save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=extras,
                              exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "phone.jpg") as opened:
        assert opened.format == "MPO" and opened.n_frames == 3
    out = read_image(tmp_path / "phone.jpg")
    assert out.pixels.shape == (40, 60, 3) and out.meta["exif_transposed"] is True
    assert out.pixels[-10:, -15:].mean() > 0.9 and out.pixels[:10, :15].mean() < 0.5
    assert out.meta["frames"] == 1 and check_image_header(tmp_path / "phone.jpg") == (40, 60, 1)
    with Image.open(tmp_path / "phone.jpg") as opened:  # opened with PIL, it reads as its file does
        np.testing.assert_allclose(pil_pixels(opened), out.pixels, rtol=0, atol=1e-6)


def test_a_tiffs_reduced_resolution_pages_are_not_frames(tmp_path):
    """A TIFF whose later pages are reduced-resolution copies (NewSubfileType 1: a pyramid's levels, a
    thumbnail) is one image: "middle" reads its full-resolution page, not a smaller level."""
    import struct

    full = Image.fromarray(asymmetric(64, 96))
    full.save(tmp_path / "pyramid.tif", save_all=True, append_images=[full.resize((48, 32)), full.resize((24, 16))],
              tiffinfo={254: 1})  # Pillow writes the tag on every page: the first page's is set to 0 below
    data = bytearray((tmp_path / "pyramid.tif").read_bytes())
    endian = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(endian + "I", data[4:8])[0]
    for entry in range(struct.unpack(endian + "H", data[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack(endian + "H", data[at : at + 2])[0] == 254:
            data[at + 8 : at + 12] = struct.pack(endian + "I", 0)
    (tmp_path / "pyramid.tif").write_bytes(bytes(data))
    with Image.open(tmp_path / "pyramid.tif") as opened:
        assert opened.n_frames == 3 and opened.tag_v2.get(254) == 0
    out = read_image(tmp_path / "pyramid.tif")
    assert out.pixels.shape == (64, 96, 1) and out.meta["frames"] == 1
    np.testing.assert_allclose(out.pixels[..., 0], asymmetric(64, 96) / np.float32(255), rtol=0, atol=1e-6)
    assert check_image_header(tmp_path / "pyramid.tif") == (64, 96, 1)


def test_a_tiff_whose_chain_of_pages_is_broken_is_named_not_a_crash(tmp_path):
    """The next-page pointer of a stack's first page points past the end of the file: PIL raises a
    TypeError while counting pages; the header check (and so `cbm validate`) names the file instead."""
    import struct

    from cbm.data._image_scan import image_problem

    pages = [Image.fromarray(asymmetric() + i) for i in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    data = bytearray((tmp_path / "stack.tif").read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]
    after = ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0]
    data[after : after + 4] = struct.pack("<I", len(data) + 1000)
    (tmp_path / "stack.tif").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="stack.tif: has a damaged header"):
        check_image_header(tmp_path / "stack.tif")
    assert image_problem(tmp_path / "stack.tif").startswith("has a damaged header")
    with pytest.raises(ImageReadError, match="stack.tif: could not be decoded"):
        read_image(tmp_path / "stack.tif")


def test_transparent_pixels_are_said_once_and_marked(tmp_path, monkeypatch, caplog):
    """Alpha is dropped (as open_clip's convert("RGB") does), so the colours under transparent pixels,
    which a viewer does not show, are what the model sees: said once a process, marked in meta."""
    import cbm.data._image_base as image_base

    monkeypatch.setattr(image_base, "_SAID", set())
    rgba = np.dstack([np.stack([asymmetric()] * 3, -1), np.full((24, 36), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "corner.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "corner2.png")
    assert "transparent" not in read_image(tmp_path / "opaque.png").meta
    assert read_image(tmp_path / "corner.png").meta["transparent"] is True
    assert read_image(tmp_path / "corner2.png").meta["transparent"] is True
    assert caplog.text.count("has transparent pixels") == 1 and "corner.png" in caplog.text
    pil_pixels(Image.fromarray(rgba, "RGBA"))  # in memory: the same check, and not said again
    assert caplog.text.count("has transparent pixels") == 1


def test_multiframe_tiff_frame_policy(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8) + np.eye(8, dtype=np.uint8)) for v in (10, 100, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    level = lambda f: round(float(read_image(tmp_path / "stack.tif", frame=f).pixels.min()) * 255)  # noqa: E731
    assert [level("first"), level("middle"), level("last"), level(1), level(-1)] == [10, 100, 200, 100, 200]
    with pytest.raises(ImageReadError, match="3 frame"):
        read_image(tmp_path / "stack.tif", frame=5)
    with pytest.raises(ValueError, match="frame policy"):
        read_image(tmp_path / "stack.tif", frame="centre")


# ---------------------------------------------------------------------------- bad input
def test_truncated_png(tmp_path):
    Image.fromarray(asymmetric(200, 200)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "t.png")
    assert str(tmp_path / "t.png") in str(err.value)
    assert "truncated" in str(err.value) and "again" in str(err.value)
    # where the chunk starts is not where the file ends: said as such
    assert re.search(r"ends inside its chunk 'IDAT' \(which starts at byte \d+ and holds [\d,]+ bytes\)", str(err.value))


def test_zero_byte_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\).*again"):
        read_image(tmp_path / "z.png")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found.*nope.png"):
        read_image(tmp_path / "nope.png")


def test_text_file_named_png(tmp_path):
    (tmp_path / "page.png").write_text("<html>404 Not Found</html>")
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image(tmp_path / "page.png")


def test_a_file_no_reader_knows_does_not_make_pydicom_warn(tmp_path, caplog, pydicom_logging, monkeypatch):
    """Such a file is also tried as headerless DICOM; what pydicom logs of garbage parsed as a dataset
    ("VR lookup failed") is not said, since the file is not DICOM either; of a real headerless DICOM
    file it is."""
    import cbm.data._image as image_module

    (tmp_path / "page.png").write_text("<html><body>404 Not Found</body></html>")
    with caplog.at_level(logging.DEBUG), pytest.raises(ImageReadError, match="page.png: is not an image file"):
        read_image(tmp_path / "page.png")
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]

    def dicom_that_warns(path, frame, max_pixels):
        logging.getLogger("pydicom.misc").warning("a headerless file's own warning")
        return LoadedImage(np.zeros((2, 2, 1), np.float32))

    monkeypatch.setattr(image_module, "read_dicom", dicom_that_warns)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        read_image(tmp_path / "page.png")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == ["a headerless file's own warning"]
    (tmp_path / "scan").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")  # a dataset, no pixels
    monkeypatch.undo()
    with pytest.raises(ImageReadError, match="scan"):
        read_image(tmp_path / "scan")


def test_a_float_tiff_with_nan_is_refused_with_a_fix_for_its_format(tmp_path):
    values = np.random.default_rng(0).random((16, 24)).astype(np.float32)
    values[3, 4] = np.nan  # a float image's usual mark of a pixel without data
    Image.fromarray(values, "F").save(tmp_path / "map.tif")
    with pytest.raises(ImageReadError, match=r"map.tif: decodes to NaN or infinite values\. Re-export it with a finite "
                                             r"value in every pixel") as caught:
        read_image(tmp_path / "map.tif")
    assert "LUT" not in str(caught.value)  # DICOM's fix, not this file's


def test_constant_image_rejected(tmp_path):
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(ImageReadError, match="constant image"):
        read_image(tmp_path / "flat.png")


def test_image_over_the_pixel_budget(tmp_path, monkeypatch):
    """The budget comes from the argument, else $CBM_MAX_PIXELS, else the default; PIL's own
    decompression-bomb guard is set to the same number."""
    Image.fromarray(asymmetric(64, 64)).save(tmp_path / "big.png")
    over = r"big.png.*4,096 pixels per frame, over the pixel budget of 1,000.*CBM_MAX_PIXELS=4096"
    with pytest.raises(ImageReadError, match=over):
        read_image(tmp_path / "big.png", max_pixels=1000)
    with pytest.raises(ImageReadError, match=r"64 x 64 = 4,096 pixels per frame, over the pixel budget of 4,000"):
        read_image(tmp_path / "big.png", max_pixels=4000)  # PIL's guard (set to the budget) only warns here
    monkeypatch.setenv("CBM_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match=over):
        read_image(tmp_path / "big.png")
    monkeypatch.setenv("CBM_MAX_PIXELS", "4096")
    assert read_image(tmp_path / "big.png").pixels.shape == (64, 64, 1)
    assert Image.MAX_IMAGE_PIXELS == 4096
    monkeypatch.setenv("CBM_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="CBM_MAX_PIXELS='lots' is not a positive whole number"):
        read_image(tmp_path / "big.png")


def test_non_dicom_named_dcm(tmp_path):
    Image.fromarray(asymmetric()).save(tmp_path / "x.png")
    os.replace(tmp_path / "x.png", tmp_path / "x.dcm")
    with pytest.raises(ImageReadError, match="is not a DICOM file") as err:
        read_image(tmp_path / "x.dcm")
    assert str(tmp_path / "x.dcm") in str(err.value)
    (tmp_path / "y.dcm").write_bytes(os.urandom(4096))
    with pytest.raises(ImageReadError, match="is not a DICOM file"):
        read_image(tmp_path / "y.dcm")


def test_dicom_without_pixel_data():
    with pytest.raises(ImageReadError, match="without pixel data.*SR.*remove it from the manifest"):
        read_image(get_testdata_file("reportsi.dcm"))


def test_dicom_whose_data_set_pydicom_cannot_read_is_called_truncated():
    """pydicom ships a JPEG 2000 file cut inside its pixel data; pydicom keeps none of its elements."""
    with pytest.raises(ImageReadError, match="data set could not be read after its file meta information, so it is "
                                             "truncated or damaged"):
        read_image(get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm"))


@pytest.fixture
def pydicom_logging(monkeypatch):
    """pydicom's loggers enabled: another test's logging.config (import-linter's) may have disabled
    the loggers that existed then, and a disabled logger drops what these tests look for."""
    import pydicom.pixels.decoders.base  # noqa: F401  (a child logger imported after cbm's readers)

    for name in ["pydicom", *(n for n in logging.root.manager.loggerDict if n.startswith("pydicom."))]:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "disabled", False)


def test_dicom_header_text_is_never_repeated(tmp_path, monkeypatch, caplog, pydicom_logging):
    """A name typed into a code field, or a value that breaks a check, does not reach the image's meta
    or an error message: a modality is shown only as a defined term, a number or UID only as one."""
    from pydicom.uid import UID

    named = _edited(tmp_path, "CT_small.dcm", "named.dcm", Modality="DOE^JANE")
    assert "modality" not in read_image(named).meta
    assert read_image(_edited(tmp_path, "CT_small.dcm", "mr.dcm", Modality="mr")).meta["modality"] == "MR"
    with pytest.raises(ImageReadError, match=r"without pixel data \(.*, modality \?\)") as err:
        read_image(_edited(tmp_path, "reportsi.dcm", "report.dcm", Modality="JANEDOE"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "DOE^JANE MRN1"
    ds.save_as(tmp_path / "photo.dcm")
    # refused by name, not left to the decoder ("probably truncated"), and the value is not shown
    with pytest.raises(ImageReadError, match="PhotometricInterpretation is none of DICOM's defined terms") as photo:
        read_image(tmp_path / "photo.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.DOE.JANE")
    ds.save_as(tmp_path / "syntax.dcm")
    with pytest.raises(ImageReadError, match="a transfer syntax of 14 characters .not shown") as syntax:
        read_image(tmp_path / "syntax.dcm")
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    monkeypatch.setattr(pydicom.config.settings, "writing_validation_mode", pydicom.config.IGNORE)
    ds["NumberOfFrames"]._value = "DOE^JANE"  # as a device that let a name into the field wrote it
    ds.save_as(tmp_path / "frames.dcm")
    import warnings

    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError, match="NumberOfFrames has a bad value of 8 characters .not shown") as frames:
            read_image(tmp_path / "frames.dcm")
        with pytest.raises(ImageReadError, match="NumberOfFrames has a bad value"):
            check_image_header((tmp_path / "frames.dcm").read_bytes())  # as cbm serve reads an upload
    assert "Invalid value for VR IS: '<header text>'" in caplog.text  # pydicom's own log record, its value out
    for said in [str(e.value) for e in (err, photo, syntax, frames)] + [caplog.text] + [str(w.message) for w in warned]:
        assert "DOE" not in said and "JANE" not in said, said


def test_a_decoders_message_loses_the_headers_text_and_keeps_the_rest():
    """Longest values first and as whole words (a shorter name inside a longer one leaves nothing of
    it); numbers, codes and UIDs in their own form stay; the pixel data is not read to find them."""
    from cbm.data._dicom_text import redacted

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), defer_size=100)
    ds.ReferringPhysicianName, ds.PatientName = "DOE", "DOE^JANE"
    out = redacted("got 'DOE^JANE', DOE, KVP 120, MONOCHROME2, DOEX", ds)
    assert out == "got '<header text>', <header text>, KVP 120, MONOCHROME2, DOEX", out
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # still deferred
    # several values; a name's parts; a private tag and a public one stored as UN, as bytes
    ds.ImageType, ds.OtherPatientNames = ["SMITH^ANNA", "PRIMARY"], ["ROE^RICHARD", "X^Y"]
    ds.add_new(0x00091010, "UN", b"PRIVATE NOTE")
    ds.add_new(0x00102154, "UN", b"555-0100 HOME")  # PatientTelephoneNumbers
    out = redacted("SMITH^ANNA, RICHARD, PRIVATE NOTE, 555-0100 HOME, PRIMARY", ds)
    assert out == "<header text>, <header text>, <header text>, <header text>, PRIMARY", out


def test_pydicoms_own_log_records_lose_quoted_values(caplog, pydicom_logging):
    """pydicom quotes a bad value with !r (double quotes around a name with an apostrophe), and its
    pixel decoders log through loggers of their own, which the root pydicom logger's filter does not
    see; an apostrophe in ordinary words is no quote."""
    from cbm.data._dicom_text import quiet_pydicom_values

    quiet_pydicom_values()
    with caplog.at_level(logging.INFO):
        logging.getLogger("pydicom").warning('Invalid value for VR PN: "O\'BRIEN^JANE".')
        logging.getLogger("pydicom.pixels.decoders.base").warning("decoding 'DOE^JANE' failed")
        logging.getLogger("pydicom").warning("the dataset's element 'X'")
        logging.getLogger("pydicom").warning("bad value 1'ROE^JOHN'")  # a quote after a digit is a quote
    assert "BRIEN" not in caplog.text and "DOE" not in caplog.text and "the dataset's element" in caplog.text
    assert "ROE" not in caplog.text


def test_a_corrupt_length_neither_logs_the_header_nor_floods_the_log(tmp_path, caplog, pydicom_logging):
    """A file-meta value length made 40,000: pydicom reads the whole header as one UID, logs it
    with escaped quotes (the patient's name inside), and thousands of records more."""
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "ZEBULON^QUIMBY", "MRN99887766", "19470312"
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = "XC", 128, 128, 3, "RGB"
    ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 0, 8, 8, 7, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 256, 128 * 128 * 3, dtype=np.uint8).tobytes()
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    data = bytearray((tmp_path / "x.dcm").read_bytes())
    at = data.find(b"\x02\x00\x10\x00UI")
    data[at + 6 : at + 8] = (40000).to_bytes(2, "little")
    (tmp_path / "x.dcm").write_bytes(bytes(data))
    with caplog.at_level(logging.DEBUG):
        with contextlib.suppress(ImageReadError):
            check_image_header(tmp_path / "x.dcm")
    assert not any(s in caplog.text for s in ("ZEBULON", "QUIMBY", "MRN99887766", "19470312")), caplog.text[:2000]
    pydicom_records = [r for r in caplog.records if r.name.startswith("pydicom")]
    assert 0 < len(pydicom_records) <= 20 and "are not logged" in pydicom_records[-1].getMessage()


def test_validate_names_a_compressed_dicom_whose_codec_is_missing(monkeypatch):
    """A base install without the [dicom] codecs: the image is a problem of the report, with the
    install command, not an error that stops `cbm validate`."""
    import cbm.data._dicom as dicom
    from cbm.data._image_scan import image_problem

    def missing(path, syntax):
        raise MissingCodecError(path, f"{syntax.name} ({syntax})", ["pylibjpeg"], ["pylibjpeg"])

    monkeypatch.setattr(dicom, "_check_decoder", missing)
    assert "pip install" in image_problem(get_testdata_file("JPEG2000.dcm"))


def test_dicom_cut_before_its_pixel_data_is_called_truncated(tmp_path):
    whole = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[:6288])  # the header whole, the pixels gone
    with pytest.raises(ImageReadError, match=r"DICOM image .*128 x 128.* ends before its pixel data, so it is truncated"):
        read_image(tmp_path / "cut.dcm")
    # cut before Rows and Columns too: an image storage class still says it is an image whose pixels never came
    (tmp_path / "early.dcm").write_bytes(whole[:700])
    with pytest.raises(ImageReadError, match=r"DICOM image \(CT Image Storage\) whose file ends before its pixel data"):
        read_image(tmp_path / "early.dcm")
    # a radiograph's class is named "... Image Storage - For Presentation"; cut before SOPClassUID too,
    # its file meta still names the class
    from pydicom.uid import DigitalXRayImageStorageForPresentation as DX

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX
    ds.Modality = "DX"
    ds.save_as(tmp_path / "dx.dcm")
    data = (tmp_path / "dx.dcm").read_bytes()
    for cut in (data.index(b"\x08\x00\x16\x00") - 1, 700):  # before SOPClassUID (0008,0016), and later
        (tmp_path / "dx_cut.dcm").write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match=r"DICOM image \(Digital X-Ray Image Storage - For Presentation\) whose "
                                                 "file ends before its pixel data"):
            read_image(tmp_path / "dx_cut.dcm")


def test_compressed_dicom_without_codec_names_the_install_command(monkeypatch):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("requires pylibjpeg-openjpeg",)})
    with pytest.raises(MissingCodecError) as err:
        read_image(get_testdata_file("MR_small_jp2klossless.dcm"))
    message = str(err.value)
    assert "MR_small_jp2klossless.dcm" in message
    assert "JPEG 2000" in message
    assert 'pip install "cbm[dicom]"' in message and "pylibjpeg-openjpeg" in message
    assert isinstance(err.value, RuntimeError)


def test_truncated_dicom_pixel_data():
    with pytest.raises(ImageReadError, match="MR_truncated.dcm.*could not be decoded"):
        read_image(get_testdata_file("MR_truncated.dcm"))


# ---------------------------------------------------------------------------- DICOM pipeline
def test_dicom_and_png_of_the_same_pixels_read_identically(tmp_path):
    img = asymmetric()
    Image.fromarray(img).save(tmp_path / "a.png")
    write_dicom(tmp_path / "a.dcm", img)
    png, dcm = read_image(tmp_path / "a.png"), read_image(tmp_path / "a.dcm")
    np.testing.assert_array_equal(png.pixels, dcm.pixels)
    rgb = np.stack([img, img[::-1], 255 - img], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    write_dicom(tmp_path / "c.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(read_image(tmp_path / "c.png").pixels, read_image(tmp_path / "c.dcm").pixels)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_dicom_decodes_to_the_same_pixels(tmp_path, syntax):
    img = asymmetric(64, 96)  # JPEG 2000's default 6 resolution levels need sides >= 32
    write_dicom(tmp_path / "raw.dcm", img)
    write_dicom(tmp_path / "packed.dcm", img, syntax=syntax)
    packed = read_image(tmp_path / "packed.dcm")
    assert packed.meta["transfer_syntax"] == syntax.name
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm").pixels, packed.pixels)


def test_monochrome1_is_inverted(tmp_path):
    img = asymmetric()
    write_dicom(tmp_path / "m2.dcm", img)
    write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1")
    m1 = read_image(tmp_path / "m1.dcm")
    assert m1.meta["inverted"] is True
    np.testing.assert_allclose(m1.pixels, 1.0 - read_image(tmp_path / "m2.dcm").pixels, atol=1e-6)


def test_rescale_then_window(tmp_path):
    # stored 0..1000 -> HU -1000..0 through the rescale; window 40/400 (PS3.3 LINEAR).
    stored = np.linspace(0, 1000, 24 * 36).reshape(24, 36).astype(np.uint16)
    write_dicom(tmp_path / "ct.dcm", stored, bits_stored=12, rescale=(1.0, -1000.0), window=(-500.0, 400.0), Modality="CT")
    out = read_image(tmp_path / "ct.dcm")
    hu = stored.astype(np.float64) - 1000.0
    expected = np.clip((hu - (-500 - 0.5)) / (400 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(out.pixels[..., 0], expected, atol=1e-6)
    assert out.meta["voi"] == "window" and out.meta["rescale"] == [1.0, -1000.0]


def test_deep_data_without_window_is_stretched(tmp_path):
    stored = (asymmetric().astype(np.uint16) * 3 + 500)
    write_dicom(tmp_path / "mr.dcm", stored, bits_stored=12)
    out = read_image(tmp_path / "mr.dcm")
    assert out.meta["voi"] == "min_max"
    assert out.pixels.min() == 0.0 and out.pixels.max() == 1.0


def test_multiframe_dicom_frame_policy(tmp_path):
    frames = np.stack([asymmetric() // 4 + 10 * k for k in range(5)])
    write_dicom(tmp_path / "mf.dcm", frames)
    for policy, k in [("first", 0), ("middle", 2), ("last", 4), (3, 3)]:
        out = read_image(tmp_path / "mf.dcm", frame=policy)
        np.testing.assert_array_equal(out.pixels[..., 0], frames[k] / np.float32(255))
        assert out.meta["frames"] == 5 and out.meta["frame"] == k


def test_constant_dicom_rejected(tmp_path):
    write_dicom(tmp_path / "flat.dcm", np.full((8, 8), 3, np.uint8))
    with pytest.raises(ImageReadError, match="flat.dcm.*constant image"):
        read_image(tmp_path / "flat.dcm")


def test_dicom_meta_carries_no_phi(tmp_path):
    write_dicom(tmp_path / "p.dcm", asymmetric())
    meta = read_image(tmp_path / "p.dcm").meta
    text = repr(meta)
    for secret in ("Doe", "SECRET-123", "19700101", "ACC999", "General Hospital"):
        assert secret not in text
    assert meta["format"] == "dicom" and meta["photometric"] == "MONOCHROME2"


def test_ybr_jpeg_matches_its_rgb_original():
    """pydicom ships the same picture as uncompressed RGB and as YBR JPEG: both must read alike."""
    ref = read_image(get_testdata_file("SC_rgb.dcm")).pixels
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_ebcr_dcmd.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_uncompressed.dcm"):
        path = get_testdata_file(name)
        if path is None:
            continue
        out = read_image(path)
        assert out.pixels.shape == ref.shape
        assert np.abs(out.pixels - ref).mean() < 0.02, name


def test_monochrome1_chest_radiograph_reads_as_displayed():
    """pydicom-data's RG1_UNCI.dcm: PA chest, MONOCHROME1. Displayed right, bone is white, lungs dark,
    the apices at the top and the heart on the image's right (the patient's left)."""
    out = read_image(get_testdata_file("RG1_UNCI.dcm"))
    assert out.meta["photometric"] == "MONOCHROME1" and out.meta["inverted"] is True
    p = out.pixels[..., 0]
    h, w = p.shape

    def region(r0: float, r1: float, c0: float, c1: float) -> float:
        return float(p[int(r0 * h) : int(r1 * h), int(c0 * w) : int(c1 * w)].mean())

    mediastinum, lungs = region(0.3, 0.6, 0.45, 0.55), (region(0.3, 0.6, 0.2, 0.3) + region(0.3, 0.6, 0.7, 0.8)) / 2
    assert mediastinum > lungs + 0.15  # not inverted the wrong way
    assert region(0.85, 0.95, 0.2, 0.8) > region(0.25, 0.4, 0.2, 0.8) + 0.15  # abdomen below, lungs above
    assert region(0.6, 0.75, 0.6, 0.7) > region(0.6, 0.75, 0.3, 0.4) + 0.03  # heart on the image's right


@functools.lru_cache(maxsize=None)
def _pydicom_decodes(path: str) -> bool:
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(path)
        return "PixelData" in ds and pixel_array(ds, index=0).size > 0  # one frame is enough to know
    except Exception:
        return False


_DICOM_FILES = sorted(
    f for f in set(get_testdata_files()) if os.path.isfile(f) and open(f, "rb").read(132)[128:132] == b"DICM"
)


# pydicom test files whose pixel data is longer than their header declares, by more than zero padding
_HEADER_DISAGREES: dict[str, str] = {}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", _DICOM_FILES, ids=os.path.basename)
def test_every_decodable_pydicom_test_file_reads(path):
    """Every DICOM test file that pydicom itself decodes reads with its own rows/columns, in [0, 1];
    the others fail with ImageReadError (never another exception). pydicom drops data past the
    declared frames with a warning; cbm drops zero padding shorter than a frame (MR_small_padded.dcm)
    and refuses anything else (header and data disagree)."""
    try:
        out = read_image(path)
    except ImageReadError as exc:
        disagree = _HEADER_DISAGREES.get(os.path.basename(path))
        assert not _pydicom_decodes(path) or "constant" in str(exc) or (disagree and disagree in str(exc)), str(exc)
        return
    assert os.path.basename(path) not in _HEADER_DISAGREES
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    p = out.pixels
    assert p.dtype == np.float32 and p.ndim == 3 and p.shape[2] in (1, 3)
    assert p.shape[:2] == (int(ds.Rows), int(ds.Columns))
    assert np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0 and p.max() > p.min()
    for keyword in PHI_KEYWORDS:
        value = ds.get(keyword)
        if value not in (None, ""):
            assert str(value) not in map(str, out.meta.values())


def _plain_windowed(path: str) -> bool:
    """Single-frame grey with a window of width >= 2 and neither VOI nor modality LUT sequences.

    Compressed files are left out: the windowing is the same after any codec, and decoding large
    JPEG 2000 radiographs twice costs seconds."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.file_meta.get("TransferSyntaxUID") is None or ds.file_meta.TransferSyntaxUID.is_compressed:
        return False
    if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2") or "WindowWidth" not in ds:
        return False
    if "VOILUTSequence" in ds or "ModalityLUTSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return False
    width = ds.WindowWidth if ds["WindowWidth"].VM == 1 else ds.WindowWidth[0]
    return float(width) >= 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", [p for p in _DICOM_FILES if _plain_windowed(p) and _pydicom_decodes(p)
                                  and os.path.basename(p) not in _HEADER_DISAGREES], ids=os.path.basename)
def test_windowed_grey_matches_pydicom_reference(path):
    """Where a file has a plain window, our [0, 1] output equals pydicom's own modality LUT +
    windowing, rescaled from pydicom's output range to [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    out = read_image(path)
    if out.meta.get("voi") != "window":
        assert out.meta.get("voi") == "min_max"  # the window saturates every pixel: stretched instead
        return
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    y_min, y_max = sorted((lo * slope + intercept, hi * slope + intercept))
    ref = (apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds) - y_min) / (y_max - y_min)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        ref = 1.0 - ref
    np.testing.assert_allclose(out.pixels[..., 0], ref, atol=1e-5)


# ---------------------------------------------------------------------------- header and data must agree
def _edited(tmp_path: Path, name: str, out: str, **values: object) -> Path:
    ds = pydicom.dcmread(get_testdata_file(name))
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(tmp_path / out)
    return tmp_path / out


@pytest.mark.parametrize("name, values, fragment", [
    ("CT_small.dcm", {"Rows": 64}, r"holds 32,768 bytes, but .*\(64 x 128 x 1 x 16 bits x 1\) declare 16,384; it holds 2 whole"),
    ("emri_small.dcm", {"NumberOfFrames": 1}, r"holds 81,920 bytes, .* declare 8,192; it holds 10 whole frame"),
    ("emri_small.dcm", {"NumberOfFrames": 3}, r"x 3\) declare 24,576"),
    ("emri_small.dcm", {"Columns": 32}, r"\(64 x 32 x 1 x 16 bits x 10\) declare 40,960"),
    ("emri_small.dcm", {"NumberOfFrames": 0}, r"NumberOfFrames has the bad value '0', not a positive whole number"),
    ("emri_small.dcm", {"NumberOfFrames": ""}, r"NumberOfFrames is empty, not a positive whole number"),
    ("SC_rgb_rle_2frame.dcm", {"NumberOfFrames": 3}, r"declares 3 frame\(s\) but its compressed pixel data holds 2"),
    ("CT_small.dcm", {"Columns": 127}, r"holds 32,768 bytes, .*\(128 x 127 x 1 x 16 bits x 1\) declare 32,512, so"),
    ("CT_small.dcm", {"SamplesPerPixel": 2}, r"SamplesPerPixel is 2, not one of 1, 3"),
    ("CT_small.dcm", {"BitsStored": 17}, r"BitsStored is 17, outside 1..BitsAllocated \(16\)"),
])
def test_dicom_header_that_its_data_contradicts_is_refused(tmp_path, name, values, fragment):
    """The minimal reproductions: a 4-D or sheared image, or another frame, used to come back."""
    path = _edited(tmp_path, name, "edited.dcm", **values)
    with pytest.raises(ImageReadError, match=fragment) as err:
        read_image(path)
    assert str(path) in str(err.value) and "export the file again" in str(err.value) or "Give the number" in str(err.value)
    with pytest.raises(ImageReadError, match=fragment):
        check_image_header(path.read_bytes())


@pytest.mark.parametrize("rows", [64, 1024])  # 1024 x 1024 x 2 bytes: the pixel data is deferred, its tail read from the file
def test_dicom_pixel_data_padded_with_zeros_reads_as_declared(tmp_path, rows, monkeypatch, caplog):
    """Some writers pad the pixel data to a block size with zeros (pydicom ships MR_small_padded.dcm):
    the declared frame is read, the padding ignored; non-zero bytes past it are refused."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stored = (np.arange(rows * rows, dtype=np.uint16).reshape(rows, rows) % 3000).astype(np.uint16)
    ds.Rows = ds.Columns = rows
    ds.PixelData = stored.tobytes() + bytes(512)
    ds.save_as(tmp_path / "padded.dcm")
    import cbm.data._image_base as image_base

    monkeypatch.setattr(image_base, "_SAID", set())
    with caplog.at_level("WARNING", logger="cbm.data._dicom"):
        out = read_image(tmp_path / "padded.dcm")
        read_image(tmp_path / "padded.dcm")
    assert caplog.text.count("zero bytes past the frames its header declares") == 1  # once, then debug
    assert "If images look sheared, their Rows or Columns are wrong" in caplog.text
    assert out.pixels.shape == (rows, rows, 1) and float(out.pixels.std()) > 0
    assert check_image_header((tmp_path / "padded.dcm").read_bytes()) == (rows, rows, 1)
    ds.PixelData = stored.tobytes() + bytes(511) + b"\x01"
    ds.save_as(tmp_path / "tail.dcm")
    with pytest.raises(ImageReadError, match=f"holds {2 * rows * rows + 512:,} bytes"):
        read_image(tmp_path / "tail.dcm")


def test_multiframe_dicom_keeps_its_frames(tmp_path):
    path = get_testdata_file("emri_small.dcm")
    assert check_image_header(path) == (64, 64, 10) == check_image_header(Path(path).read_bytes())
    out = read_image(path, frame="last")
    assert out.pixels.shape == (64, 64, 1) and out.meta["frames"] == 10 and out.meta["frame"] == 9


def test_dicom_over_the_budget_is_refused_from_its_header(tmp_path):
    """2 KB of RLE declaring 65535 x 65535 took 12.7 GB before its error; now the header refuses it."""
    import time
    import tracemalloc

    path = _edited(tmp_path, "SC_rgb_rle.dcm", "huge.dcm", Rows=65535, Columns=65535)
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match=r"Rows x Columns declares 65535 x 65535 = 4,294,836,225 pixels per frame, "
                                             r"over the pixel budget of 33,554,432.*CBM_MAX_PIXELS=4294836225"):
        read_image(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 5 and peak < 20 * 2**20
    with pytest.raises(ImageReadError, match="over the pixel budget"):
        check_image_header(path.read_bytes())


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    import struct
    import zlib

    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)


def test_png_whose_data_holds_fewer_rows_than_its_header(tmp_path):
    """IHDR declares 96 rows, the data holds 48: PIL fills the rest with 0; cbm refuses it."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + asymmetric(48, 64)[r].tobytes() for r in range(48))
    ihdr = (b"IHDR", struct.pack(">IIBBBBB", 64, 96, 8, 0, 0, 0, 0))
    (tmp_path / "short.png").write_bytes(_png([ihdr, (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]))
    with pytest.raises(ImageReadError, match=r"short.png: IDAT holds 3,120 of the 6,240 bytes of image data its header declares"):
        read_image(tmp_path / "short.png")
    (tmp_path / "long.png").write_bytes(_png([ihdr, (b"IDAT", zlib.compress(rows * 3)), (b"IEND", b"")]))
    with pytest.raises(ImageReadError, match=r"long.png: IDAT holds more image data than the 6,240 bytes"):
        read_image(tmp_path / "long.png")


def test_png_with_a_bad_crc_or_no_end(tmp_path):
    data = bytearray(_png_bytes(asymmetric()))
    data[-20] ^= 0x55  # inside the last IDAT chunk, CRC not updated
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"crc.png: has a bad CRC in its chunk 'IDAT'|crc.png: IDAT"):
        read_image(tmp_path / "crc.png")
    (tmp_path / "cut.png").write_bytes(_png_bytes(asymmetric())[:-12])
    with pytest.raises(ImageReadError, match="cut.png: ends at byte .* before its IEND chunk, so it is truncated"):
        read_image(tmp_path / "cut.png")


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_legal_png_over_the_budget_is_refused_before_decoding(tmp_path):
    """A 164 KB PNG of 13,000 x 13,000 took 6.4 GB; the header (through PIL's guard, set to the
    budget) refuses it."""
    import struct
    import zlib

    ihdr = (b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0))
    (tmp_path / "bomb.png").write_bytes(_png([ihdr, (b"IDAT", zlib.compress(bytes(13001) * 13000, 9)), (b"IEND", b"")]))
    with pytest.raises(ImageReadError, match=r"bomb.png: declares 169,000,000 pixels per frame, over the pixel budget"):
        read_image(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="over the pixel budget"):
        check_image_header((tmp_path / "bomb.png").read_bytes())


@pytest.mark.parametrize("cut", ["end", "height"])
def test_jpeg_whose_data_ends_early(tmp_path, cut):
    """A JPEG cut short with its end marker kept, or whose frame header declares twice the rows:
    PIL fills the missing rows with grey; cbm refuses it."""
    rgb = np.stack([asymmetric(96, 64)] * 3, -1)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    if cut == "end":
        data = data[: len(data) * 2 // 3] + b"\xff\xd9"
    else:
        sof = data.index(b"\xff\xc0")
        data = data[: sof + 5] + (192).to_bytes(2, "big") + data[sof + 7 :]
    (tmp_path / "b.jpg").write_bytes(data)
    with pytest.raises(ImageReadError, match=r"b.jpg: scan data holds less image data than its header declares"):
        read_image(tmp_path / "b.jpg")


def test_check_image_header_reads_no_pixels(tmp_path):
    Image.fromarray(asymmetric(30, 50)).save(tmp_path / "a.png")
    Image.fromarray(asymmetric(30, 50)).save(tmp_path / "a.jpg")
    assert check_image_header(tmp_path / "a.png") == (30, 50, 1)
    assert check_image_header((tmp_path / "a.jpg").read_bytes()) == (30, 50, 1)
    assert check_image_header(get_testdata_file("CT_small.dcm"), max_pixels=128 * 128) == (128, 128, 1)
    with pytest.raises(ImageReadError, match="over the pixel budget of 100"):
        check_image_header(tmp_path / "a.png", max_pixels=100)
    with pytest.raises(ImageReadError, match="not an image file"):
        check_image_header(b"<html>404</html>")
    with pytest.raises(FileNotFoundError):
        check_image_header(tmp_path / "nope.png")


def test_odd_dicom_values_give_image_errors(tmp_path):
    """An unknown VR, or a VOI LUT of 0 bits, ended in NotImplementedError without the file."""
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (tmp_path / "vr.dcm").write_bytes(data.replace(b"US", b"ZZ", 2))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [4096, 0, 0], [0] * 4096
    item["LUTDescriptor"].VR = item["LUTData"].VR = "US"
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    for name in ("vr.dcm", "lut.dcm"):
        with pytest.raises(ImageReadError) as err:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and len(str(err.value)) < 1000


def test_a_path_too_long_is_an_image_error(tmp_path):
    with pytest.raises(ImageReadError, match="cannot be opened.*File name too long"):
        read_image(tmp_path / ("x" * 300 + ".png"))


def test_image_errors_are_one_family():
    import pickle

    from cbm.errors import ImageError, InputError

    assert issubclass(ImageReadError, ImageError) and issubclass(ImageReadError, InputError)
    assert issubclass(MissingCodecError, ImageError) and issubclass(MissingCodecError, RuntimeError)
    err = pickle.loads(pickle.dumps(ImageReadError("a.png", "is broken", "Fix it", field="IHDR")))
    assert str(err) == "image a.png: IHDR is broken. Fix it" and err.field == "IHDR"
    codec = pickle.loads(pickle.dumps(MissingCodecError("b.dcm", "RLE", ["x"], ["pylibjpeg-rle"])))
    assert codec.packages == ["pylibjpeg-rle"] and "b.dcm" in str(codec)


def test_two_threads_trying_files_as_dicom_leave_pydicom_logging_as_it_was(tmp_path, monkeypatch):
    """cbm serve decodes uploads in threads at once: two files tried as headerless DICOM together each
    turned pydicom's propagation off and back to what it found, so the second, finding it off, left it
    off: every later pydicom warning reached no handler of the application."""
    import threading

    import cbm.data._image as image_module

    for name in ("a.png", "b.png"):
        (tmp_path / name).write_text("<html>404 Not Found</html>")
    a_in, b_in, release_a, a_done = (threading.Event() for _ in range(4))

    def slow_dicom(path, frame, max_pixels):
        if path.name == "a.png":
            a_in.set()
            release_a.wait(10)
        else:
            b_in.set()
            a_done.wait(10)
        raise ImageReadError(path, "is not DICOM either")

    def read(name):
        with contextlib.suppress(ImageReadError):
            read_image(tmp_path / name)

    monkeypatch.setattr(image_module, "read_dicom", slow_dicom)
    logger = logging.getLogger("pydicom")
    before = logger.propagate
    first, second = threading.Thread(target=read, args=("a.png",)), threading.Thread(target=read, args=("b.png",))
    first.start()
    assert a_in.wait(10)
    second.start()
    b_in.wait(1)  # the second is trying its file too (or, holding back, waits for the first)
    release_a.set()
    first.join(10)
    a_done.set()
    second.join(10)
    assert logger.propagate is before
