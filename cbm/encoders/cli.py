"""``cbm features`` and ``cbm fetch-models``.

    cbm features ham10000 --encoder biomedclip               # every split of the card, cached
    cbm features ham10000 --encoder demo-clip --split train --batch-size 128
    torchrun --nproc-per-node 4 -m cbm.cli features ham10000 --encoder biomedclip   # 4 GPUs (or CPU ranks)
    cbm fetch-models biomedclip --to /media/usb/biomedclip  # on a connected machine; then local-dir:DIR
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

__all__ = ["register", "run_features", "run_fetch_models"]

log = logging.getLogger(__name__)

_PRESETS = "biomedclip, clip-vit-b-16, demo-clip"  # kept literal so `cbm --help` does not build the registry


def register(subparsers: Any) -> None:
    """Add ``features`` and ``fetch-models`` to the ``cbm`` command."""
    p = subparsers.add_parser(
        "features",
        help="embed a card's images with an encoder, through the feature cache",
        description=(
            "Embed every image of a data card (all splits, or those given) with a vision-language encoder. "
            "Features are cached by content (encoder, weights, preprocessing, precision, image bytes): a re-run "
            "reads them back, and an interrupted run resumes from its finished shards. Under torchrun each "
            "rank takes a share of the shards (the cache folder must be on storage every rank sees)."
        ),
    )
    p.add_argument("card", help="card name (see `cbm cards`) or card folder / card.yaml path")
    p.add_argument("--encoder", required=True, metavar="NAME", help=f"{_PRESETS}, hf-hub:ORG/REPO, local-dir:DIR, or ARCH@WEIGHTS")
    p.add_argument("--split", action="append", metavar="SPLIT", help="a split to embed (repeatable; default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="data loader processes per rank (default: half the cores, shared among the ranks of a node, at most 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: this rank's GPU if any, else cpu)")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="feature cache root (default $CBM_CACHE_DIR/features)")
    p.add_argument("--shard-size", type=int, default=None, metavar="N", help="images per cache shard (default 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_features)

    f = subparsers.add_parser(
        "fetch-models",
        help="download an encoder into a folder that loads offline (local-dir:DIR)",
        description=(
            "Download an encoder's config and weights (and, for BiomedCLIP, its PubMedBERT text tower's config "
            "and tokenizer) into one folder. Copy the folder to a machine without internet and use the encoder "
            "name local-dir:DIR there. Without --to, a preset goes to the cbm cache, where the preset name finds it."
        ),
    )
    f.add_argument("name", help=f"{_PRESETS}, hf-hub:ORG/REPO, or ARCH@TAG")
    f.add_argument("--to", metavar="DIR", help="destination folder (default for presets: $CBM_CACHE_DIR/models/NAME)")
    f.add_argument("--overwrite", action="store_true", help="replace a model already in the folder")
    f.set_defaults(func=run_fetch_models)


def run_features(args: argparse.Namespace) -> int:
    """Run ``cbm features``; rank 0 prints one line per split."""
    from cbm.data import SkippedReport, load_card
    from cbm.encoders import distributed
    from cbm.encoders.extract import DEFAULT_SHARD_SIZE, encode_images
    from cbm.encoders.registry import create_encoder

    card = load_card(args.card)
    created = distributed.init_from_env()
    failed = True
    try:
        rank, world = distributed.rank_and_world()
        encoder = create_encoder(args.encoder, device=args.device, precision=args.precision)
        splits = args.split or card.manifest().split_names()
        report = SkippedReport()
        for split in splits:
            dataset = card.dataset(split, transform=encoder.transform)
            t0 = time.perf_counter()
            fs = encode_images(
                encoder,
                dataset,
                batch_size=args.batch_size,
                num_workers=args.workers,
                cache_dir=args.cache_dir,
                shard_size=DEFAULT_SHARD_SIZE if args.shard_size is None else args.shard_size,
                progress=not args.no_progress,
                desc=f"{split}",
            )
            elapsed = time.perf_counter() - t0
            report.extend(fs.skipped)
            report.total += len(dataset)
            if rank == 0:
                how = (
                    f"computed {fs.computed} in {elapsed:.1f} s ({fs.computed / max(elapsed, 1e-9):.1f} images/s"
                    + (f" on {world} ranks" if world > 1 else "")
                    + ")"
                    if fs.computed
                    else f"all from the cache ({elapsed:.2f} s)"
                )
                print(f"{split}: {len(fs)} images -> {fs.features.shape[1]}-d features, {len(fs.skipped)} skipped; {how}")
                print(f"  cache: {fs.cache_path}")
        if rank == 0:
            print(f"encoder {encoder.name} ({encoder.precision} on {encoder.device}), cache key {encoder.cache_key}")
            if report:
                print(report.summary())
        failed = False
    finally:
        if created:  # a rank that failed leaves without a barrier the others, elsewhere, would never match
            distributed.shutdown(failed=failed)
    return 0


def run_fetch_models(args: argparse.Namespace) -> int:
    """Run ``cbm fetch-models``; prints the folder and the encoder name to use with it."""
    from cbm.encoders.fetch import fetch_model

    dest = fetch_model(args.name, args.to, overwrite=args.overwrite)
    print(f"fetched {args.name} into {dest}")
    print(f"offline, copy the folder and use the encoder name local-dir:{dest}" + (f" (or {args.name} on this machine)" if args.to is None else ""))
    return 0
