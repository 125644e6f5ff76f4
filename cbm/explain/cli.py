"""``cbm explain`` (reports for images, folders or manifests) and ``cbm serve`` (the local viewer)."""

from __future__ import annotations

import argparse
import logging
import math

__all__ = ["register"]

log = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535 (0 picks a free one), got {text}")
    return value


def _upload_mb(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value * 2**20 >= 1):
        raise argparse.ArgumentTypeError(f"must be a size in MB, above 0 and finite (e.g. 64), got {text}")
    return value


def _load_model(folder: str):
    from cbm.model import ConceptBottleneckModel

    return ConceptBottleneckModel.load(folder)


def _explain(args: argparse.Namespace) -> int:
    from cbm.explain.batch import collect_inputs, explain_batch

    model = _load_model(args.model_dir)  # cheap: the encoder is created on first use
    inputs = collect_inputs(args.inputs, class_names=model.classes, split=args.split, hide_names=args.hide_names)
    result = explain_batch(model, inputs, args.out, top_k=args.top_k, maps=not args.no_maps,
                           hide_names=args.hide_names, max_side=args.max_side)
    print(f"{len(result.reports)} report(s) in {result.out_dir}; open {result.index}")
    for label, reason in result.failures:
        print(f"not explained: {label}: {reason}")
    return 1 if result.failures else 0


def _serve(args: argparse.Namespace) -> int:
    from cbm.explain.server import serve

    model = _load_model(args.model_dir)
    serve(model, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2**20), top_k=args.top_k,
          maps=not args.no_maps, max_pixels=args.max_pixels, max_connections=args.max_connections)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explain`` and ``serve`` to the ``cbm`` command."""
    p = subparsers.add_parser(
        "explain",
        help="write HTML reports (findings, abstention, concept maps, similar cases, interventions) for images",
        description="Explain images with a trained model: one self-contained HTML report per image, an index "
                    "page, index.json and the model card in --out.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a saved model folder (model.json + model.safetensors)")
    p.add_argument("inputs", metavar="IMAGE_OR_DICOM", nargs="+",
                   help="image files (PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF), folders (searched recursively), manifest CSVs "
                        "(path,label,split) or card.yaml files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--split", default=None, help="with a manifest or card: explain only rows of this split (e.g. test)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="findings mapped (those not absent) (default 5)")
    p.add_argument("--no-maps", action="store_true", help="skip concept maps (faster)")
    p.add_argument("--hide-names", action="store_true",
                   help="name cases 'case 1', 'case 2'... instead of by file name, or folder and file name where two "
                        "names coincide (either may identify patients)")
    p.add_argument("--max-side", type=_positive_int, default=512, help="longest side of the shown image in pixels")
    p.set_defaults(func=_explain)

    s = subparsers.add_parser(
        "serve",
        help="local web app: upload a PNG/JPEG/DICOM and read its report",
        description="Serve a small web app where an image is uploaded and its report shown, with intervention "
                    "controls. Bound to 127.0.0.1 unless --host says otherwise; no authentication.",
    )
    s.add_argument("model_dir", metavar="MODEL_DIR", help="a saved model folder")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this computer only)")
    s.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    s.add_argument("--max-upload-mb", type=_upload_mb, default=64.0, help="largest upload in MB (default 64)")
    s.add_argument("--max-pixels", type=_positive_int, default=None,
                   help="largest image (pixels per frame) decoded, checked from the header first "
                        "(default: $CBM_MAX_PIXELS or 33,554,432)")
    s.add_argument("--max-connections", type=_positive_int, default=16,
                   help="connections served at once; one more is answered 503 (default 16)")
    s.add_argument("--top-k", type=_positive_int, default=5, help="findings mapped (those not absent) (default 5)")
    s.add_argument("--no-maps", action="store_true", help="skip concept maps")
    s.set_defaults(func=_serve)
