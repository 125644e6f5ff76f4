"""``cbm demo ...``: write a demo dataset, or show the demo world's concepts and ground truth.

    cbm demo make --out DIR [--n 6000] [--confounding 0.95] [--classes 2] [--seed 0] [--size 128]
    cbm demo concepts [--classes 2]
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cbm demo`` and its subcommands to the ``cbm`` parser."""
    demo = subparsers.add_parser(
        "demo",
        help="the synthetic dermoscopy world: write a confounded demo dataset",
        description="The synthetic dermoscopy world with exact ABCD ground truth and a spurious cue.",
    )
    sub = demo.add_subparsers(dest="demo_command", metavar="SUBCOMMAND")
    demo.set_defaults(func=lambda args: _help(demo))

    make = sub.add_parser(
        "make",
        help="write PNGs, manifest.csv, card.yaml (+ concepts.json) for a demo dataset",
        description=(
            "Draw a demo dataset: lesions labelled by the ABCD rule, balanced classes in 50/15/15/20 "
            "train/val/test_id/test, and a ruler/ink cue that goes with the malignant class with probability "
            "CONFOUNDING in train, val and test_id and against it in test. A folder holding the same dataset is reused "
            "(images it lost are drawn again); one holding another demo dataset needs --overwrite."
        ),
    )
    make.add_argument("--out", required=True, help="dataset folder (empty, new, or an earlier demo dataset)")
    make.add_argument("--n", type=int, default=6000, help="number of images (default 6000)")
    make.add_argument("--confounding", type=float, default=0.95,
                      help="P(cue goes with the malignant class) in train, val and test_id; reversed in test (default 0.95)")
    make.add_argument("--classes", type=int, choices=(2, 3), default=2,
                      help="2: benign nevus / melanoma; 3: + suspicious lesion (default 2)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    make.add_argument("--workers", type=int, default=None, help="processes drawing images (default: all cores)")
    make.add_argument("--overwrite", action="store_true",
                      help="redraw a folder that holds a demo dataset of other parameters (its images are deleted)")
    make.set_defaults(func=_make)

    concepts = sub.add_parser("concepts", help="print the demo concepts with their ground-truth attributes (JSON)")
    concepts.add_argument("--classes", type=int, choices=(2, 3), default=2)
    concepts.set_defaults(func=_concepts)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _make(args: argparse.Namespace) -> int:
    from cbm.demo.dataset import make_dataset

    card = make_dataset(args.out, n=args.n, confounding=args.confounding, classes=args.classes, seed=args.seed,
                        size=args.size, workers=args.workers, overwrite=args.overwrite)
    print(card)
    return 0


def _concepts(args: argparse.Namespace) -> int:
    from cbm.demo.world import CORE_CONCEPTS, demo_concepts

    truth = {c.phrase: {"negative": c.negative, "attribute": c.attribute, "present_when_at_least": c.threshold,
                        "abcd_letter": c.letter or None} for c in CORE_CONCEPTS}
    print(json.dumps({"classes": demo_concepts(args.classes), "ground_truth": truth}, indent=2))
    return 0
