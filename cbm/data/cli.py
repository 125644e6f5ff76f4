"""Data commands of ``cbm``: ``cards``, ``make-splits``, ``index-dicom``, and the manifest half of ``validate``.

    cbm cards                                          # built-in and $CBM_CARDS_PATH cards
    cbm validate ham10000 [--strict] [--no-files | --no-read]   # every manifest problem and unreadable image
    cbm make-splits ham10000 --metadata HAM10000_metadata.csv [--images DIR | --no-image-check] [--out CSV] [--seed N] [--force]
    cbm index-dicom DIR --out manifest.csv [--label-from folder|tag:Keyword] [--split 0.8,0.1,0.1] [--force]
"""

from __future__ import annotations

import argparse
import json
import logging

__all__ = ["register", "validate_manifest"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the data subcommands to the ``cbm`` parser."""
    p = subparsers.add_parser("cards", help="list the data cards (built-in and $CBM_CARDS_PATH)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cards)

    p = subparsers.add_parser("make-splits", help="build a card's manifest from the source's metadata")
    p.add_argument("card", help="card name, card folder or card.yaml path")
    p.add_argument("--metadata", action="append", required=True, metavar="PATH",
                   help="the source's metadata file (repeat for several), or its image folder for folder-based sources")
    p.add_argument("--out", help="manifest to write (default: the card's manifest path)")
    p.add_argument("--images", metavar="DIR", help="image folder to check paths against (default: the card's image root, if it exists)")
    p.add_argument("--seed", type=int, help="random seed (default: the card's)")
    p.add_argument("--dry-run", action="store_true", help="report the counts without writing")
    p.add_argument("--salt", help="salt of the patient_key column (default: random, not stored)")
    p.add_argument("--no-image-check", action="store_true",
                   help="write every row without looking for its image file (e.g. before the images are downloaded)")
    p.add_argument("--allow-short", action="store_true",
                   help="write the manifest (with a warning) when a class has fewer images than the card promises")
    p.add_argument("--force", action="store_true", help="replace a manifest already there (by default it is kept)")
    p.set_defaults(func=_make_splits)

    p = subparsers.add_parser("index-dicom", help="write a manifest from DICOM headers (no pixel decoding)")
    p.add_argument("folder", help="folder to scan recursively")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--label-from", metavar="folder|tag:KEYWORD", help="label from the parent folder name or a header attribute")
    p.add_argument("--split", metavar="TRAIN,VAL,TEST", help="assign splits at random, grouped by patient, e.g. 0.8,0.1,0.1")
    p.add_argument("--seed", type=int, default=0, help="random seed of --split (default 0)")
    p.add_argument("--patient-key", action="store_true", help="add a salted-hash patient_key column (never the ID itself)")
    p.add_argument("--salt", help="salt for --patient-key (default: random, not stored)")
    p.add_argument("--force", action="store_true", help="replace a manifest already at --out (by default it is kept)")
    p.set_defaults(func=_index_dicom)


def _cards(args: argparse.Namespace) -> int:
    from cbm.data import list_cards, load_card

    rows = []
    for name in list_cards():
        try:
            card = load_card(name)
        except (ValueError, FileNotFoundError) as exc:
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,  # what finds the card (its folder's name), whatever its own name field says
                **({"card_name": card.name} if card.name != name else {}),
                "task": card.task,
                "classes": len(card.classes),
                "modality": card.modality,
                "manifest": card.manifest_path.is_file(),
                "images": card.image_root.is_dir(),
                "confounder": card.confounder.column if card.confounder else None,
                "title": card.title,
                "path": str(card.path),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<15} {'task':<10} {'cls':>3}  {'modality':<36} {'manifest':<8} {'images':<6}  title")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<15} invalid: {r['error']}")
            continue
        print(
            f"{r['name']:<15} {r['task']:<10} {r['classes']:>3}  {r['modality'][:36]:<36} "
            f"{'yes' if r['manifest'] else 'no':<8} {'yes' if r['images'] else 'no':<6}  {r['title']}"
            + (f" (its name field: {r['card_name']})" if "card_name" in r else "")
        )
    return 0


def validate_manifest(args: argparse.Namespace):
    """The card of ``args.card`` and every problem of its manifest (``cbm validate``, which also checks the
    concept store, is registered by :mod:`cbm.pipeline.cli`); with ``args.strict``, the first problem
    raises, as does a card or a manifest file that cannot be read at all. Prints the card and the report."""
    from cbm.data import load_card

    card = load_card(args.card)
    quiet = logging.getLogger("cbm.data._manifest")  # it logs the report too; here it is printed once
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        manifest = None
        if args.strict:
            manifest = card.manifest(strict=True, check_files=not args.no_files)
            report = manifest.report
        else:  # a leak between splits or a path outside the image folder is reported with the rest
            report = card.validate(check_files=not args.no_files)
        read = _check_images(card, report, manifest) if not (args.no_files or getattr(args, "no_read", False)) else None
    finally:
        quiet.setLevel(level)
    print(f"card {card.name} ({card.path})")
    print(report.summary())
    if read:
        print(f"  {read}")
    if args.strict:
        report.raise_if_problems()
    return card, report


def _check_images(card, report, manifest=None) -> str:
    """Every usable row's image (of ``manifest``, the one already read, or the card's) read as far as
    its header and data structure (no pixel decoded); the ones that cannot be read become a problem
    of ``report``, since a run would skip them, and the DICOM files' modalities go into it (for the card's
    modality to be checked against them). Returns what was read, in words."""
    from cbm.data._image_scan import scan_images
    from cbm.data._manifest import ManifestProblem
    from cbm.errors import ManifestError, quote_path

    try:
        manifest = manifest if manifest is not None else card.manifest(strict=False, check_files=True)
    except ManifestError:  # a leak between splits or a path outside the folder: fixed first, then read
        return "images not read: fix the problems above first"
    bad, report.dicom_modalities = scan_images(manifest)
    if bad:
        shown = "; ".join(f"line {line}: {quote_path(path, 80)[1:-1]} {reason}" for line, path, reason in bad[:5])
        report.problems.append(ManifestProblem(
            "unreadable_image", f"{len(bad)} image(s) that cannot be read, which a run skips ({shown}"
            f"{'; ...' if len(bad) > 5 else ''}): export them again or remove their rows", tuple(line for line, _, _ in bad)))
    return (f"images: {len(manifest) - len(bad)} of {len(manifest)} readable (headers and PNG/JPEG data checked, "
            "pixels not decoded)")


def _make_splits(args: argparse.Namespace) -> int:
    from cbm.data._splits import make_splits

    result = make_splits(args.card, args.metadata, out=args.out, seed=args.seed, images=args.images,
                         write=not args.dry_run, salt=args.salt, check_images=not args.no_image_check,
                         allow_short=args.allow_short, overwrite=args.force)
    print(result.summary())
    return 0


def _index_dicom(args: argparse.Namespace) -> int:
    from cbm.data._index import index_dicom

    result = index_dicom(
        args.folder, args.out, label_from=args.label_from, split=args.split, seed=args.seed,
        patient_key=args.patient_key, salt=args.salt, overwrite=args.force,
    )
    print(result.summary())
    if not result.rows:
        log.warning("no DICOM image found under %s", args.folder)
        return 1
    return 0
