"""Benchmark: explaining one image for a report, concept maps included (prints JSON).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_explain.py                     # ViT-B-16, 224 px
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_explain.py --encoder ViT-B-32@random --repeats 10
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_explain.py --image-size 1024 768 --report-out /tmp/report.html

The encoder has random weights (``ARCH@random``): the timing of a forward pass does not depend on
the weights. The model is a 3-class head over 36 concepts with 5 non-zero weights per class, with
a training reference of ``--reference`` images (default 10,000: random unit features, a 1 KB JPEG
thumbnail each). Timed per case, after ``--warmup`` untimed cases ("warm"): ``read`` (decode the
PNG), ``encode`` (preprocessing and the one forward pass that yields the image feature and the
patch tokens), ``maps`` (explanation, out-of-distribution score, findings, and the maps of the
top findings from the patch tokens), ``neighbours`` (the nearest training images among the
reference's), ``render`` (overlays, JPEG data URIs, the Jinja2 templates); ``total`` is their sum. ``no_maps_total`` is the same case
without concept maps, for comparison. Medians over ``--repeats`` cases, in seconds. The machine's
load average is printed too: on a shared machine, other processes stretch every wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbm.bottleneck import ConceptBottleneck
from cbm.data import read_image
from cbm.encoders import create_encoder
from cbm.explain import explain_image, render_case_html
from cbm.model import ConceptBottleneckModel
from cbm.reference import TrainingReference, display_pixels

CLASSES = ["melanoma", "benign nevus", "seborrhoeic keratosis"]


def _image(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth synthetic dermoscopy-like RGB image, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    blob = np.exp(-((yy - 0.5 * height / max(height, width)) ** 2 + (xx - 0.5 * width / max(height, width)) ** 2) / 0.05)
    img = np.stack([0.8 - 0.2 * yy, 0.6 + 0.1 * xx, 0.5 + 0 * xx], -1) * (1 - 0.6 * blob[..., None])
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _reference(dim: int, n: int, seed: int) -> TrainingReference:
    """``n`` random unit training features with a thumbnail each, and a threshold from 500 more."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    buf = io.BytesIO()
    Image.fromarray(display_pixels(_image(64, 64, 5).astype(np.float32) / 255, 48)).save(buf, "JPEG", quality=70)
    ref = TrainingReference(feats, rng.integers(0, len(CLASSES), n), CLASSES, thumbnails=[buf.getvalue()] * n)
    val = rng.normal(size=(500, dim)).astype(np.float32)
    ref.val_scores = np.sort(ref.ood_scores(val))
    ref.threshold = float(np.quantile(ref.val_scores, 0.975))
    return ref


def _model(encoder, n_concepts: int, seed: int, n_reference: int) -> ConceptBottleneckModel:
    rng = np.random.default_rng(seed)
    names = [f"finding {i}" for i in range(n_concepts)]
    text = encoder.encode_text(names).numpy()
    train = encoder.encode_image(torch.stack([encoder.transform(_image(224, 224, 100 + i).astype(np.float32) / 255)
                                              for i in range(8)])).numpy()
    bottleneck = ConceptBottleneck(names, text).fit(train)
    coef = np.zeros((len(CLASSES), n_concepts), np.float32)
    for k in range(len(CLASSES)):
        coef[k, rng.choice(n_concepts, 5, replace=False)] = rng.normal(0, 1, 5)
    model = ConceptBottleneckModel(encoder.name, CLASSES, bottleneck, coef, np.zeros(len(CLASSES), np.float32),
                                   encoder_key=encoder.cache_key, train_raw_scores=bottleneck.raw_scores(train),
                                   reference=_reference(text.shape[1], n_reference, seed) if n_reference else None)
    model.set_encoder(encoder)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="ViT-B-16@random")
    ap.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("W", "H"))
    ap.add_argument("--concepts", type=int, default=36)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference", type=int, default=10_000, help="training images in the reference (0: none)")
    ap.add_argument("--report-out", type=Path, default=None, help="also write the last report here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    encoder = create_encoder(args.encoder)
    model = _model(encoder, args.concepts, seed=0, n_reference=args.reference)
    setup_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "case.png"
        Image.fromarray(_image(*args.image_size, seed=1)).save(png)
        rows, no_maps, cpu_seconds, html = [], [], [], ""
        for i in range(args.warmup + args.repeats):
            cpu0 = time.process_time()
            t = time.perf_counter()
            image = read_image(png)
            t_read = time.perf_counter() - t
            case = explain_image(model, image, top_k=args.top_k, label="case")
            t = time.perf_counter()
            html = render_case_html(case, top_k=args.top_k)
            t_render = time.perf_counter() - t
            cpu = time.process_time() - cpu0
            t = time.perf_counter()
            plain = explain_image(model, image, top_k=args.top_k, maps=False, label="case")
            render_case_html(plain, top_k=args.top_k)
            t_plain = time.perf_counter() - t + t_read
            if i >= args.warmup:
                row = {"read": t_read, "encode": case.timings["encode"], "maps": case.timings["maps"],
                       "neighbours": case.timings["neighbours"], "render": t_render}
                row["total"] = sum(row.values())
                rows.append(row)
                cpu_seconds.append(cpu)
                no_maps.append(t_plain)
        if args.report_out:
            args.report_out.write_text(html, encoding="utf-8")

    median = {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
    result = {
        "benchmark": "explain_one_image",
        "encoder": args.encoder,
        "map_method": case.maps.method,
        "maps": len(case.maps.concepts),
        "map_grid": list(case.grid),
        "reference_images": args.reference,
        "similar_cases_shown": len(case.neighbours),
        "image_size": list(args.image_size),
        "concepts": args.concepts,
        "warm_seconds_median": median,
        "warm_seconds_max_total": round(max(r["total"] for r in rows), 4),
        "no_maps_total_median": round(statistics.median(no_maps), 4),
        # CPU seconds of this process per case (all threads): with the machine to itself, the wall
        # time is about this divided by torch_threads; a larger wall time means other load
        "process_cpu_seconds_median": round(statistics.median(cpu_seconds), 4),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "report_bytes": len(html.encode("utf-8")),
        "limits": {"total_seconds": 1.5, "report_bytes": 300_000},
        "within_limits": median["total"] <= 1.5 and len(html.encode("utf-8")) <= 300_000,
        "setup_seconds": round(setup_s, 2),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
