"""``cbm validate CARD [--strict] [--no-files] [--no-read]``: every problem of a card that a run would stop on;
``cbm compare RUN_OR_SWEEP...``: runs side by side (:mod:`cbm.pipeline.compare`).

The manifest's problems (:func:`cbm.data.cli.validate_manifest`: missing files, unknown labels,
leaks between splits, bad concept truth cells ...), then the card's concept store as a run reads it
(``concepts.json``: malformed, a class without a list, a class the card lacks) and the card's
``concept_truth`` names against the store's concepts. Registered here, above both the data and the
concept layers, since it reads both. Exit 0 with no problem, 1 with some; with ``--strict``, or
for a card or a manifest that cannot be read at all, one error line (exit 2).
"""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``validate`` to the ``cbm`` parser."""
    p = subparsers.add_parser("validate", help="check a card, its manifest and its concept store; report every problem")
    p.add_argument("card", help="card name, card folder or card.yaml path")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) on any problem")
    p.add_argument("--no-files", action="store_true", help="do not check that image files exist")
    p.add_argument("--no-read", action="store_true",
                   help="check that image files exist without reading them (by default each one's header, and a "
                        "PNG's or JPEG's data, is read: no pixel decoded, but every byte of those read once)")
    p.set_defaults(func=_validate)
    p = subparsers.add_parser("compare", help="runs side by side: a sweep's folder or run folders, as one table")
    p.add_argument("runs", nargs="+", help="run folders (outputs/<card>/<time>) or a sweep's folder (multirun/<time>)")
    p.add_argument("--metric", default=None,
                   help="the validation figure that marks the chosen run, METHOD.FIGURE or auto (cbm.val_worst_group_"
                        "accuracy where measured, else cbm.val_accuracy); default: the optimized_metric each run was "
                        "made with (auto for a run without a Hydra config)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a markdown table")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    import json
    import os

    from cbm.pipeline.compare import compare_runs, comparison_table, sweep_notes

    rows = compare_runs(args.runs, args.metric)  # --metric: a validation figure (cbm.selection)
    text = json.dumps(rows, indent=1) + "\n" if args.json else comparison_table(
        rows, root=os.path.commonpath([os.path.abspath(r) for r in args.runs]), notes=sweep_notes(args.runs))
    print(text, end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cbm.data.cli import validate_manifest
    from cbm.errors import ManifestError

    card, report = validate_manifest(args)
    problem = _store_problem(card)
    if problem and args.strict:
        raise ValueError(problem)
    if problem:
        print(f"concept store: {problem}")
    modality = _modality_problem(card, report.dicom_modalities)  # what validate_manifest read of the files
    fix = "Set the card's modality to what the images are, or leave those rows out"
    if modality and args.strict:
        raise ManifestError(card.manifest_path, modality, fix)
    if modality:
        print(f"images: {modality}; {fix[0].lower()}{fix[1:]}")
    unseen = report.classes_without_val()  # a run refuses it before encoding: so does validate
    if unseen and args.strict:
        raise ManifestError(card.manifest_path, f"has no validation image of class(es) {', '.join(unseen)}: the head is "
                            "chosen on val, so a run refuses it", "Move some of each class's rows to val "
                            "(`cbm make-splits` splits each class), or drop the class from the card's classes")
    failed = [what for what, bad in (("the manifest's rows", not report.ok), ("validation classes", unseen),
                                     ("the concept store", problem), ("the images' modality", modality)) if bad]
    # the rows' report says "no problems found" of the rows alone: the verdict is the whole card's
    print(f"card {card.name}: {'problems in ' + ', '.join(failed) + ' (above)' if failed else 'no problems found'}")
    return 1 if failed else 0


def _modality_problem(card, found: dict[str, list[tuple[int, str]]]) -> str | None:
    """The manifest's DICOM files (``found``: Modality -> rows, as validate read them) whose Modality is
    not one a model of the card's ``modality`` answers for (:func:`cbm.image_checks.dicom_modalities`):
    such a model withholds every prediction on them, its own test images included. None where all
    agree, or the card names no modality cbm knows."""
    from cbm.errors import quote_path
    from cbm.image_checks import dicom_modalities

    expected = dicom_modalities(card.modality)
    other = {code: rows for code, rows in sorted(found.items()) if expected is not None and code not in expected[0]}
    if not other:
        return None
    n = sum(len(rows) for rows in found.values())
    listed = "; ".join(f"{code} ({len(rows)}: line {rows[0][0]}: {quote_path(rows[0][1], 80)[1:-1]}{', ...' if len(rows) > 1 else ''})"
                       for code, rows in other.items())
    return (f"{sum(len(r) for r in other.values())} of the {n} DICOM files are of modality {listed}, but card "
            f"{card.name!r} says {card.modality!r}, whose images are DICOM {' or '.join(expected[0])}: a model of it "
            "withholds every prediction on a file of another modality, its own test images included")


def _store_problem(card) -> str | None:
    """What a run would refuse in the card's concept store or its concept truth names (None: nothing);
    a card without a store yet is told how to make one, and is not a problem."""
    from cbm.concepts import load_concepts
    from cbm.concepts.store import card_info, card_reference
    from cbm.pipeline.truth import check_truth_names

    try:
        names = list(load_concepts(card).concepts)
    except FileNotFoundError:
        print(f"concept store: none yet; a run needs one: `cbm concepts {card_reference(card_info(card))} --llm PRESET`, "
              "or a concepts.json written by hand (docs/concepts.md)")
        return None
    except ValueError as exc:  # ConceptStoreError: the file, the field and the fix
        return " ".join(str(exc).split())
    try:
        check_truth_names(card, names)
    except ValueError as exc:
        return str(exc)
    print(f"concept store: {len(names)} concepts for {len(card.class_names)} classes")
    return None
