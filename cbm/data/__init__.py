"""The data layer: data cards, manifests, image reading (PNG/JPEG/DICOM), transforms, Datasets.

    >>> from cbm.data import load_card, read_image
    >>> card = load_card("ham10000")                      # or a path to a card.yaml / its folder
    >>> card.class_names                                  # label order used everywhere downstream
    >>> train = card.dataset("train", transform=encoder.transform)
    >>> image = read_image("chest.dcm")                   # LoadedImage: pixels (H, W, C) in [0, 1] + meta
    >>> check_image_header(upload_bytes)                  # (rows, cols, frames), checked, nothing decoded

Bad input files raise the :mod:`cbm.errors` family (``ImageError``, ``CardError``,
``ManifestError``: all ``InputError``), naming the file, the field or line, and the fix.

Command line: ``cbm cards``, ``cbm validate CARD``, ``cbm make-splits CARD --metadata CSV``,
``cbm index-dicom DIR --out manifest.csv``.
"""

from __future__ import annotations

from cbm.data._card import (
    BUILTIN_CARDS_DIR,
    CardError,
    ClassInfo,
    Confounder,
    DataCard,
    card_command_name,
    card_dirs,
    list_cards,
    load_card,
)
from cbm.data._dataset import ManifestDataset, SkippedItem, SkippedReport, skipping_collate
from cbm.data._index import IndexResult, index_dicom
from cbm.data._dicom import read_dicom
from cbm.data._image import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    LoadedImage,
    MissingCodecError,
    check_image_header,
    is_dicom_file,
    pixel_budget,
    read_image,
    read_pil,
    pil_pixels,
    sixteen_bit_range,
)
from cbm.data._manifest import (
    KNOWN_SPLITS,
    Manifest,
    ManifestError,
    ManifestProblem,
    ManifestReport,
    ManifestRow,
    read_manifest,
    write_manifest,
)
from cbm.data._splits import SplitResult, make_splits, parse_split_spec
from cbm.data._truth import ACCEPTED_TRUTH, parse_truth

# Bump whenever reading or preprocessing code changes the pixels a model sees (LUT order,
# normalisation, resizing): feature caches include it in their key, so stale features are never
# served after an upgrade. 2: the centre crop where torchvision's starts, open_clip's resize modes;
# 3: 16-bit data at its bit depth's full scale (briefly); 4: 16-bit greyscale stretched min-max;
# 5: a JPEG that PIL opens as MPO (a phone photo with a gain or depth map) read as its photo, upright,
# a TIFF's reduced-resolution pages not counted as frames;
# an image over 149 times taller than wide, in "longest" mode, resized to its one column row by row.
PIXEL_PIPELINE_VERSION = 5

__all__ = [
    "PIXEL_PIPELINE_VERSION",
    # cards
    "DataCard",
    "ClassInfo",
    "Confounder",
    "CardError",
    "load_card",
    "list_cards",
    "card_command_name",
    "card_dirs",
    "BUILTIN_CARDS_DIR",
    # manifests
    "Manifest",
    "ManifestRow",
    "ManifestReport",
    "ManifestProblem",
    "ManifestError",
    "read_manifest",
    "write_manifest",
    "KNOWN_SPLITS",
    "parse_truth",
    "ACCEPTED_TRUTH",
    # building manifests
    "make_splits",
    "parse_split_spec",
    "SplitResult",
    "index_dicom",
    "IndexResult",
    # images
    "LoadedImage",
    "read_image",
    "read_dicom",
    "read_pil",
    "pil_pixels",
    "is_dicom_file",
    "check_image_header",
    "pixel_budget",
    "DEFAULT_MAX_PIXELS",
    "sixteen_bit_range",
    "MAX_PIXELS_ENV",
    "ImageReadError",
    "MissingCodecError",
    # datasets
    "ManifestDataset",
    "SkippedItem",
    "SkippedReport",
    "skipping_collate",
]
