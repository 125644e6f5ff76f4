"""Data-layer benchmark: read speed (PNG, JPEG, DICOM), the encoder transform, DataLoader
throughput, header-only DICOM indexing, and how closely our MONAI transform follows open_clip's
own preprocessing. Prints one JSON object.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_data.py            # about a minute on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_data.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from cbm.data import index_dicom, load_card, read_image, skipping_collate
from cbm.data.transforms import encoder_transform

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.1", generate_uid(), "CR"
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path, enforce_file_format=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    repeats = 3 if args.quick else 9
    rng = np.random.default_rng(0)
    out: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2)}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        rgb = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
        grey16 = (rng.integers(0, 4095, (2048, 2048), dtype=np.uint16))
        Image.fromarray(rgb).save(tmp / "rgb.png")
        Image.fromarray(rgb).save(tmp / "rgb.jpg", quality=90)
        write_dicom(tmp / "cr.dcm", grey16)
        files = {
            "png_rgb_512": tmp / "rgb.png",
            "jpeg_rgb_512": tmp / "rgb.jpg",
            "dicom_uncompressed_2048_12bit": tmp / "cr.dcm",
            "dicom_cr_chest_1955x1841_monochrome1": Path(get_testdata_file("RG1_UNCI.dcm")),
            "dicom_j2k_lossless_1955x1841": Path(get_testdata_file("RG1_J2KR.dcm")),
        }
        out["read_image_ms"] = {k: round(1000 * timed(lambda p=p: read_image(p), repeats), 2) for k, p in files.items()}

        transform = encoder_transform(224, CLIP_MEAN, CLIP_STD)
        small, large = read_image(files["png_rgb_512"]), read_image(files["dicom_cr_chest_1955x1841_monochrome1"])
        # per-image ops are tiny: with intra-op threads on a busy machine they wait on each other,
        # so both settings are reported (DataLoader workers run with 1 thread each)
        out["encoder_transform_ms"] = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out["encoder_transform_ms"][f"torch_threads_{threads}"] = {
                "rgb_512_to_224": round(1000 * timed(lambda: transform(small), repeats), 2),
                "grey_1955x1841_to_224": round(1000 * timed(lambda: transform(large), repeats), 2),
            }
        torch.set_num_threads(1)

        # fidelity: our MONAI pipeline vs open_clip's PIL + torchvision preprocessing
        import open_clip

        reference = open_clip.image_transform(224, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
        fidelity = {}
        for name in ("US1_UNCI.dcm", "RG1_UNCI.dcm", "MR_small.dcm", "SC_rgb.dcm"):
            pixels = read_image(get_testdata_file(name)).pixels
            u8 = np.round(pixels * 255).astype(np.uint8)
            pil = Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8).convert("RGB")
            diff = (transform(u8) - reference(pil)).abs()
            fidelity[name] = {"mean_abs_diff": round(float(diff.mean()), 5), "max_abs_diff": round(float(diff.max()), 4)}
        out["transform_vs_open_clip_normalised_units"] = fidelity

        # a card of 96 PNGs through a DataLoader, 0 and 2 workers
        card_dir = tmp / "card"
        (card_dir / "images").mkdir(parents=True)
        lines = ["path,label,split"]
        for i in range(96):
            Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(card_dir / "images" / f"{i}.png")
            lines.append(f"{i}.png,{'ab'[i % 2]},train")
        lines += ["0.png,a,val", "1.png,b,test"]
        (card_dir / "manifest.csv").write_text("\n".join(lines) + "\n")
        (card_dir / "card.yaml").write_text("name: bench\nmodality: x\ntask: binary\nclasses: [{name: a}, {name: b}]\nimage_root: images\nmanifest: manifest.csv\n")
        dataset = load_card(card_dir).dataset("train", transform=transform)
        loader_rates = {}  # main process at 1 torch thread; workers always use 1
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=workers, collate_fn=skipping_collate)
            t = time.perf_counter()
            n = sum(len(batch[2]) for batch in loader)
            loader_rates[f"workers_{workers}"] = round(n / (time.perf_counter() - t), 1)
        out["dataloader_images_per_s_384x512_png_to_224"] = loader_rates

        # header-only indexing: 200 files, half of them 7 MB radiographs
        dicom_dir = tmp / "dicoms"
        dicom_dir.mkdir()
        for i in range(100):
            shutil.copy(files["dicom_cr_chest_1955x1841_monochrome1"], dicom_dir / f"cr{i}.dcm")
            shutil.copy(get_testdata_file("CT_small.dcm"), dicom_dir / f"ct{i}.dcm")
        t = time.perf_counter()
        result = index_dicom(dicom_dir, tmp / "index.csv", progress=False)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        for p in sorted(dicom_dir.iterdir())[:20]:
            read_image(p)
        full_read = (time.perf_counter() - t) / 20
        out["index_dicom"] = {
            "files": len(result.rows),
            "files_per_s": round(len(result.rows) / seconds, 1),
            "full_decode_files_per_s_for_comparison": round(1 / full_read, 1),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
