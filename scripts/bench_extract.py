"""Feature-extraction benchmark: pipeline vs forward-only throughput, the cache's speed-up, peak memory.

    python scripts/bench_extract.py                                  # ViT-B-16, 224 px, random weights, 64 images
    python scripts/bench_extract.py --images 256 --batch-size 32     # steadier numbers, ~4x longer
    python scripts/bench_extract.py --images 4096 --batch-size 256 --workers 8   # on a GPU (bf16 autocast there)
    python scripts/bench_extract.py --memory-sizes 1000,10000,100000 --skip-throughput
    python scripts/bench_extract.py --skip-memory

Prints one JSON object:

- ``throughput``: images/s of the model alone on tensors already in memory (``forward_only``), and of
  the whole pipeline from PNG files on disk (hash, decode, preprocess in DataLoader workers, model,
  shard writes: ``encode_images`` into an empty cache); ``ratio`` = pipeline / forward-only
  (target >= 0.9: decoding hides behind the model).
- ``cache``: the same ``encode_images`` call again, served from the cache; ``speedup`` = first / second
  (target >= 100).
- ``memory``: peak memory of a fresh process extracting 1k and 10k images with a tiny 64 px model (so
  what grows with the dataset is not hidden behind the model's weights): the main process's peak RSS
  during extraction, and a DataLoader worker's peak RSS (from the kernel) and peak private memory
  (sampled twice a second).
  Features stream to disk shard by shard, so the peaks should stay flat.

The machine's load average is recorded before and after: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16", help="open_clip architecture, random weights (default ViT-B-16)")
    parser.add_argument("--images", type=int, default=64, help="images for the throughput runs (default 64)")
    parser.add_argument("--source-size", type=int, default=256, help="side of the generated PNGs in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="alternating forward-only / pipeline runs; best of each (default 2)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cbm's default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--memory-sizes", default="1000,10000", help="dataset sizes for the memory runs (default 1000,10000)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--workdir", default=None, help="where to write images and caches (default: a temp folder)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cbm-bench-"))
    os.environ["CBM_CACHE_DIR"] = str(work / "cbm-cache")  # keep the user's cache (and file-hash memo) out of it
    if args.memory_child:
        print(json.dumps(memory_child(Path(args.memory_child), args)))
        return

    import torch

    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        }
    }
    if not args.skip_throughput:
        result.update(throughput(work, args))
    if not args.skip_memory:
        result["memory"] = memory(work, args)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


def throughput(work: Path, args: argparse.Namespace) -> dict:
    """Forward-only vs pipeline images/s, then the cached re-run."""
    import torch

    from cbm.data import load_card
    from cbm.encoders import create_encoder, encode_images
    from cbm.encoders.testing import write_image_card

    card = load_card(write_image_card(work / "throughput", args.images, size=args.source_size))
    enc = create_encoder(f"{args.arch}@random", device=args.device, precision=args.precision)
    ds = card.dataset("train", transform=enc.transform)
    tensors = torch.stack([ds[i][0] for i in range(len(ds))])
    enc.encode_image(tensors[: args.batch_size])  # warm-up (allocator, kernels)

    # alternate the two measurements and keep the best of each: on a shared machine the load moves
    forward_runs, pipeline_runs = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for start in range(0, len(tensors), args.batch_size):
            enc.encode_image(tensors[start : start + args.batch_size])
        forward_runs.append(time.perf_counter() - t0)
        kw = dict(batch_size=args.batch_size, num_workers=args.workers, cache_dir=work / f"features-{r}", progress=False)
        t0 = time.perf_counter()
        first = encode_images(enc, ds, **kw)
        pipeline_runs.append(time.perf_counter() - t0)
        assert first.computed == len(ds)
    forward, pipeline = min(forward_runs), min(pipeline_runs)
    t0 = time.perf_counter()
    again = encode_images(enc, ds, **kw)
    cached = time.perf_counter() - t0
    assert again.computed == 0
    n = len(ds)
    return {
        "throughput": {
            "arch": args.arch,
            "weights": "random",
            "input_size": enc.transform.config["size"],
            "source_png_size": args.source_size,
            "images": n,
            "batch_size": args.batch_size,
            "workers": kw["num_workers"] if kw["num_workers"] is not None else "default",
            "device": str(enc.device),
            "precision": enc.precision,
            "repeats": args.repeats,
            "forward_only_s": [round(t, 2) for t in forward_runs],
            "pipeline_s": [round(t, 2) for t in pipeline_runs],
            "forward_only_images_per_s": round(n / forward, 3),
            "pipeline_images_per_s": round(n / pipeline, 3),
            "ratio": round(forward / pipeline, 3),
            "target_ratio": 0.9,
        },
        "cache": {
            "first_run_s": round(pipeline_runs[-1], 3),
            "cached_run_s": round(cached, 4),
            "speedup": round(pipeline_runs[-1] / cached, 1),
            "target_speedup": 100,
        },
    }


def memory(work: Path, args: argparse.Namespace) -> dict:
    """Peak RSS of a fresh process per dataset size (images generated beforehand, outside it)."""
    from cbm.encoders.testing import write_image_card

    out = {}
    for size in [int(s) for s in args.memory_sizes.split(",") if s.strip()]:
        folder = write_image_card(work / f"memory-{size}", size, size=64)
        cmd = [sys.executable, __file__, "--memory-child", str(folder), "--workdir", str(work), "--batch-size", "64"]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[str(size)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def memory_child(card_dir: Path, args: argparse.Namespace) -> dict:
    from cbm.data import load_card
    from cbm.encoders import create_encoder, encode_images
    from cbm.encoders.testing import write_tiny_config

    enc = create_encoder(f"{write_tiny_config(card_dir)}@random")
    ds = load_card(card_dir).dataset("train", transform=enc.transform)
    before = _rss_mb("VmRSS")
    reset = _reset_peak_rss()  # so the peak below is the extraction's, not the imports'
    sampler = _WorkerMemory()
    sampler.start()
    t0 = time.perf_counter()
    fs = encode_images(enc, ds, batch_size=args.batch_size, num_workers=args.workers, cache_dir=card_dir / "features", progress=False)
    elapsed = time.perf_counter() - t0
    sampler.stop()
    return {
        "images": len(ds),
        "features_mb": round(fs.features.nbytes / 2**20, 2),
        "main_rss_before_extraction_mb": before,
        "main_peak_rss_during_extraction_mb": _rss_mb("VmHWM") if reset else None,
        # a forked worker's RSS also counts the parent's pages it reads (shared, not copied);
        # its private memory is what it really adds
        "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "worker_peak_private_mb": sampler.peak.get("Private"),
        "images_per_s": round(len(ds) / elapsed, 1),
    }


class _WorkerMemory(threading.Thread):
    """Samples the DataLoader workers' memory (/proc/PID/smaps_rollup) twice a second; keeps the peaks."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak: dict[str, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self._done.wait(0.5):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] != me:
                        continue
                    fields = {}
                    for line in (stat.parent / "smaps_rollup").read_text().splitlines()[1:]:
                        key, value = line.split(":", 1)
                        fields[key] = int(value.split()[0]) / 1024
                except (OSError, IndexError, ValueError):
                    continue
                private = fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
                self.peak["Private"] = round(max(self.peak.get("Private", 0.0), private), 1)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``echo 5 > /proc/self/clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
