"""Batch reports: explain many images into a folder with an index page and a class card.

Inputs are image files (PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF), folders (searched recursively; DICOM
files without an extension are recognised by their ``DICM`` marker), manifest CSVs
(``path,label,split``, paths relative to the CSV's folder) or data cards (``card.yaml``); a
manifest's label is shown as the known label beside the prediction. The output folder::

    index.html       one row per input: prediction (or why it is withheld), strongest present finding,
                     known label, link
    classes.html     the model card (operating point, abstention, what each class relies on)
    index.json       the same facts for programs (per case ``withheld``, ``flags`` and ``notes``; whether
                     the model flags images unlike its training images, ``flags_unlike_training``)
    cases/*.html     one self-contained report per image

An input that cannot be read, or whose report cannot be made, is listed in the index with the
reason; the others go on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from cbm.explain.card import render_class_card_html
from cbm.explain.case import CaseReport, explain_image
from cbm.explain.render import IndexRow, cannot_flag, looks_like_path, render_case_html, render_index_html, without_paths
from cbm.model import ConceptBottleneckModel
from cbm.utils import atomic_write_json, atomic_write_text

__all__ = ["CaseInput", "BatchResult", "collect_inputs", "explain_batch", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

# what a folder is searched for: the formats a manifest row may name too (cbm.data.read_image)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic", ".tif", ".tiff", ".bmp", ".webp", ".gif")


@dataclass(frozen=True)
class CaseInput:
    """One image to explain, with its known label if a manifest gave one."""

    path: Path
    truth: str | None = None
    label: str | None = None  # how the index names it (default: the file name; explain_batch tells coinciding ones apart)


@dataclass
class BatchResult:
    """What :func:`explain_batch` wrote."""

    out_dir: Path
    index: Path
    class_card: Path
    reports: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)


def _folder_images(folder: Path) -> list[Path]:
    from cbm.data import is_dicom_file

    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if name.startswith("."):
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES or (p.suffix == "" and is_dicom_file(p)):
                found.append(p)
    return found


def _manifest_inputs(manifest, split: str | None, source: Path) -> list[CaseInput]:
    if split is not None:
        names = manifest.split_names()
        manifest = manifest.split(split)
        if not len(manifest):
            raise ValueError(f"{source} has no rows in split {split!r}; its splits are {names} "
                             "(choose one of them)")
    missing = [r for r in manifest if not manifest.file(r).exists()]
    windows = [r.line for r in missing if "\\" in r.path]
    if windows:  # each would fail alone as "not found"; the cause is said once (by line: paths may name patients)
        log.warning("%s: %d path(s) separate folders with '\\' (a Windows path), which names no file here (line %s%s): "
                    "write '/' between folders", source, len(windows), windows[0], " and more" if len(windows) > 1 else "")
    missing = [r for r in missing if "\\" not in r.path]
    if missing:
        card = source.suffix.lower() in (".yaml", ".yml")
        whose = "the card's image folder" if card else "the manifest's own folder"
        if len(missing) == len(manifest):
            fix = ("set the card's image_root, or its image_root_env variable, to the folder that holds them" if card else
                   "for paths relative to another folder, give the data card (card.yaml) whose image_root is that folder")
            raise FileNotFoundError(f"{source}: none of its {len(manifest)} image paths names a file in {whose} "
                                    f"{manifest.image_root}, which they are read from (line {missing[0].line} and the "
                                    f"rest); {fix}")
        log.warning("%s: %d of %d image paths name no file in %s %s (line %s%s); they are listed as not found",
                    source, len(missing), len(manifest), whose, manifest.image_root, missing[0].line,
                    " and more" if len(missing) > 1 else "")
    # a row is named by its path as the manifest gives it, unless that is a local path from the root
    # (/data/DOE_JANE/img.png): then, as an image given alone, by as much of it as tells it apart
    return [CaseInput(manifest.file(r), r.label, None if looks_like_path(r.path) else r.path) for r in manifest]


def collect_inputs(
    items: Iterable[str | os.PathLike], *, class_names: Sequence[str], split: str | None = None,
    hide_names: bool = False,
) -> list[CaseInput]:
    """Expand files, folders, manifest CSVs and data cards into the images to explain, in order.

    Args:
        items: image files; folders (searched recursively); manifest CSVs (``path,label,split``,
            paths relative to the CSV's folder); data cards (``card.yaml``: its manifest and image root).
        class_names: the model's classes; manifest rows with another label are left out (with a warning).
        split: keep only this split of manifests and cards (e.g. ``"test"``).
        hide_names: a manifest's problems are logged by kind and count, without the paths its rows give.

    Raises:
        FileNotFoundError: an item does not exist.
        ValueError: a manifest is malformed, or nothing to explain was found.
    """
    from cbm.data import load_card, read_manifest
    from cbm.errors import ManifestError

    out: list[CaseInput] = []
    for item in items:
        p = Path(item).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: give image files (PNG, JPEG, DICOM, TIFF, BMP, WebP, GIF), folders, manifest CSVs or "
                "card.yaml files"
            )
        if p.is_dir():
            found = _folder_images(p)
            if not found:
                log.warning("no images (%s, or DICOM) found in %s", ", ".join(IMAGE_SUFFIXES), p)
            out += [CaseInput(f) for f in found]  # by file name; by folders too only where two coincide
        elif p.suffix.lower() in (".csv", ".yaml", ".yml"):
            try:
                with _report_quiet(hide_names):
                    manifest = (read_manifest(p, class_names=class_names, image_root=p.parent, check_files=False,
                                              needed_splits=()) if p.suffix.lower() == ".csv"
                                else load_card(p).manifest(check_files=False, needed_splits=()))
            except ManifestError as exc:
                if not hide_names or exc.report is None:
                    raise
                raise ManifestError(p, f"has rows a run refuses: {_kinds(exc.report)}", "`cbm validate` names them "
                                    "(not named here, as --hide-names asks)") from None
            if hide_names and manifest.report is not None and manifest.report.problems:
                log.warning("%s: rows left out for %s (`cbm validate` lists them; not named here, as --hide-names asks)",
                            p, _kinds(manifest.report))
            out += _manifest_inputs(manifest, split, p)
        else:
            out.append(CaseInput(p))
    if not out:
        raise ValueError(f"nothing to explain in {[os.fspath(i) for i in items]}: no images ({', '.join(IMAGE_SUFFIXES)}, "
                         "or DICOM) found")
    return out


def _kinds(report) -> str:
    """A manifest report's problems by kind, count and lines, without the paths its messages quote."""
    return "; ".join(f"{len(q.lines) or 1} {q.kind.replace('_', ' ')}"
                     + (f" (line {', '.join(map(str, q.lines[:5]))}{' ...' if len(q.lines) > 5 else ''})" if q.lines else "")
                     for q in report.problems)


@contextlib.contextmanager
def _report_quiet(quiet: bool):
    """The manifest reader's own report (it names rows by their paths) held back where names are
    hidden: by a filter on this thread's records alone, so another thread's reports still show."""
    logger, thread = logging.getLogger("cbm.data._manifest"), threading.get_ident()
    hold = _ThreadRecords(thread)
    if quiet:
        logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)


class _ThreadRecords(logging.Filter):
    """Drops the records of one thread."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


# control characters (a line break in a file name would forge a log line), Unicode's direction
# overrides (which make "gnp.exe" read backwards) and the bytes of a name that is not UTF-8 (a
# Latin-1 "café.png" from an old archive, which no page or index.json can be written with): shown as
# U+FFFD in labels
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def distinct_labels(cases: Sequence[CaseInput]) -> list[CaseInput]:
    """``cases`` with labels that tell them apart. Each keeps its own (a manifest row its manifest
    path, an image its file name); images whose labels coincide (``IM000001`` in every patient's
    folder) are named by as many of their path's last parts as tell them apart, and the same file
    given again is numbered ("IM000001 (2)"). Control and text-direction characters become U+FFFD."""
    printable = lambda text: _UNPRINTABLE.sub("\ufffd", text)  # noqa: E731  (before names are told apart)
    labels = [printable(c.label or c.path.name) for c in cases]
    parts = [tuple(map(printable, Path(os.path.abspath(os.path.expanduser(c.path))).parts)) for c in cases]
    changed = True
    while changed:  # a longer name can meet another image's name: until no two different files share one
        changed = False
        where: dict[str, list[int]] = {}
        for i, v in enumerate(labels):
            where.setdefault(v, []).append(i)
        for label, group in sorted(where.items()):
            if len(group) < 2:
                continue
            files = {parts[i] for i in group}
            depth = len(Path(label).parts)
            while depth < max(map(len, files)) and len({q[-depth:] for q in files}) < len(files):
                depth += 1
            for i in group:
                longer = "/".join(parts[i][-depth:]) if len(files) > 1 else label
                changed |= longer != labels[i]
                labels[i] = longer
    taken, seen = set(labels), set()
    for i, v in enumerate(labels):
        if v in seen:  # the same file again
            n = 2
            while f"{v} ({n})" in taken:
                n += 1
            labels[i] = f"{v} ({n})"
            taken.add(labels[i])
        seen.add(v)
    return [CaseInput(c.path, c.truth, v) for c, v in zip(cases, labels)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "case"


def _without_names(text: str, path: Path, label: str, bare_name: bool = True) -> str:
    """``text`` with ``path`` replaced by ``label``: its spellings as given, absolute and resolved,
    and (``bare_name``) its file name where it stands as a path's last part (after a separator or
    a quote, or at the start), so a file named ``1`` does not turn "1024 bytes" into "case 3024 bytes"."""
    spellings = {os.fspath(path), os.path.abspath(path), os.path.abspath(os.path.expanduser(path))}
    try:
        spellings.add(os.fspath(path.resolve()))
    except OSError:
        pass
    pattern = "|".join(re.escape(s) for s in sorted(spellings, key=len, reverse=True) if s)
    text = re.sub(pattern, lambda _: label, text)
    if not bare_name:
        return text
    name = re.escape(path.name)
    return re.sub(rf"(?:(?<=^)|(?<=[/\\'\"])){name}(?=$|['\":,;)\s])", lambda _: label, text)


class _ScrubNames(logging.Filter):
    """Rewrites log records of the image reader so they name the case, not its file."""

    def __init__(self, path: Path, label: str) -> None:
        super().__init__()
        self.path, self.label = path, label

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _without_names(record.getMessage(), self.path, self.label), ()
        return True


def _cbm_loggers() -> list[logging.Logger]:
    """Every logger of the package. A filter acts only on its own logger's records, not on those its
    children pass up, so each module's logger (``cbm.data._dicom_display``, ...) needs its own."""
    import cbm.data._dicom  # noqa: F401  (the readers' loggers exist once their modules are imported)
    import cbm.explain.maps  # noqa: F401

    names = [n for n in logging.root.manager.loggerDict if n == "cbm" or n.startswith("cbm.")]
    return [logging.getLogger(n) for n in names]


@contextlib.contextmanager
def _names_hidden(path: Path, label: str, hide: bool) -> Iterator[None]:
    """While reading one case with ``hide``, what the package logs names the case, not its file."""
    if not hide:
        yield
        return
    scrub = _ScrubNames(path, label)
    loggers = _cbm_loggers()
    for logger in loggers:
        logger.addFilter(scrub)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(scrub)


def _report_folder(out: Path) -> Path:
    """``out``, with its ``cases`` folder made; a ``cases`` that is a link is refused, since reports
    would be written, and an earlier run's removed, where it points."""
    try:
        (out / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the report folder {out}/cases ({e.strerror or e}); choose a writable "
                         "folder for the reports (--out)") from e
    if (out / "cases").is_symlink():
        raise ValueError(f"{out}/cases is a link to {os.readlink(out / 'cases')}, not a folder; reports are written "
                         "only into a real folder: remove the link, or choose another folder (--out)")
    return out


def _previous_reports(out: Path) -> set[str]:
    """The reports an earlier run listed in ``out/index.json`` (relative paths under ``cases/``)."""
    try:
        records = json.loads((out / "index.json").read_text(encoding="utf-8")).get("cases", [])
    except (OSError, ValueError, AttributeError):
        return set()
    found = set()
    for r in records if isinstance(records, list) else []:
        report = r.get("report") if isinstance(r, dict) else None
        name = report[len("cases/"):] if isinstance(report, str) and report.startswith("cases/") else ""
        if name.endswith(".html") and "/" not in name and "\\" not in name and not name.startswith("."):
            found.add(report)
    return found


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _case_record(case: CaseReport, top_k: int) -> dict:
    """``index.json``'s facts of one explained case."""
    expl = case.explanation
    support = case.strongest_present()
    return {
        "withheld": case.withheld,
        "flags": [f.as_dict() for f in case.flags],
        "notes": [n.as_dict() for n in case.explanation.notes],  # one frame of several read, burned-in text...
        "predicted": expl.predicted,
        "probabilities": expl.probabilities,
        "strongest_present_finding": None if support is None else support.text,
        "findings": [{"finding": f.text, "state": f.state, "favours": f.favours, "odds_factor": f.odds_factor,
                      "concepts": list(f.concepts), "percentiles": list(f.percentiles),
                      # a concept the model reads as a probability is judged present or absent by it
                      **({"probabilities": list(f.probabilities)} if f.probabilities else {})}
                     for f in case.findings[:top_k]],
        # the predicted class's logit, term by term (weight x value): not a ranking of drivers,
        # which "findings" gives against the runner-up and a training image of average value
        "logit_terms": [{"concept": c.concept, "weight": c.weight, "value": c.value, "contribution": c.contribution}
                        for c in expl.top_concepts(k=top_k)],
    }


def _explain_case(model: ConceptBottleneckModel, item: CaseInput, label: str, target: Path, result: BatchResult, *,
                  hide_names: bool, top_k: int, maps: bool, max_side: int, nav: dict[str, str]) -> tuple[IndexRow, dict]:
    """One case of a batch: its report written to ``target``, and its index row and record. A case
    that cannot be read, explained or rendered is listed with its reason, and the batch goes on; a
    report that cannot be written (a full disk) stops it, as it would every report after it."""
    record: dict = {"case": label, "truth": item.truth}

    def failed(exc: Exception, what: str) -> tuple[IndexRow, dict]:
        # read errors name the path: named by the case instead (and by no file name where hidden)
        text = str(exc) or type(exc).__name__
        if what and str(exc):  # a report error is named by its type too (a read error says what it is)
            text = f"{type(exc).__name__}: {text}"
        reason = what + _without_names(text, item.path, label, bare_name=hide_names)
        log.warning("%s: not explained: %s", label, reason)
        log.debug("details", exc_info=not hide_names)
        result.failures.append((label, reason))
        return IndexRow(label, error=reason, truth=item.truth), {**record, "error": reason}

    with _names_hidden(item.path, label, hide_names):
        try:
            case = explain_image(model, item.path, label=label, truth=item.truth, top_k=top_k, maps=maps,
                                 max_side=max_side)
        except Exception as exc:  # one unreadable file must not stop a batch; it is listed with its reason
            return failed(exc, "")
        try:
            page = render_case_html(case, model, top_k=top_k, nav=nav, hide_names=hide_names)
            facts = _case_record(case, top_k)
        except Exception as exc:  # nor one case whose report cannot be made
            return failed(exc, "its report could not be made: ")
    for flag in case.flags:
        log.warning("%s: prediction withheld: %s", label, flag.message)
    result.reports.append(atomic_write_text(target, page))
    href = f"cases/{target.name}"
    return IndexRow(label, href=href, case=case, truth=item.truth), {**record, "report": href, **facts}


def explain_batch(
    model: ConceptBottleneckModel,
    inputs: Sequence[CaseInput | str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    top_k: int = 5,
    maps: bool = True,
    hide_names: bool = False,
    max_side: int = 512,
    progress: bool = True,
) -> BatchResult:
    """Write a report per image, an index page, ``index.json`` and the class card into ``out_dir``.

    Args:
        model: the trained model.
        inputs: :class:`CaseInput` items (from :func:`collect_inputs`) or image paths.
        out_dir: created if missing. Reports an earlier run listed in its ``index.json`` there are
            replaced or, when this run does not write them again, removed (so a ``hide_names`` run
            leaves no earlier report named after its file).
        top_k: findings mapped (those not absent) and heading the intervention controls.
        maps: compute concept maps.
        hide_names: name cases ``case 1``, ``case 2``... instead of by file name (and, where two
            names coincide, folder names: either can carry patient names); similar training
            images are then named by their class only. ``index.json`` never holds a local path.
        max_side: longest side of the displayed image.
        progress: show a progress bar.
    """
    out = _report_folder(Path(out_dir))
    # a model whose encoder cannot be made (weights missing) fails here, once: not once per image,
    # each listed as not explained, with an earlier run's reports in ``out_dir`` removed as stale
    _ = model.encoder
    earlier = _previous_reports(out)
    cases = distinct_labels([i if isinstance(i, CaseInput) else CaseInput(Path(i).expanduser()) for i in inputs])
    nav = {"All cases": "../index.html", "Model card": "../classes.html"}
    result = BatchResult(out, out / "index.html", out / "classes.html")
    rows: list[IndexRow] = []
    records = []
    used_names: set[str] = set()
    for n, item in enumerate(tqdm(cases, desc="explaining", unit="image", disable=not progress), start=1):
        label = f"case {n}" if hide_names else item.label
        stem = f"case-{n:04d}" if hide_names else _slug(item.path.stem)
        name, k = f"{stem}.html", 2
        while name.casefold() in used_names:  # Lesion.png, lesion.png: one file where case is not told apart
            name, k = f"{stem}-{k}.html", k + 1
        used_names.add(name.casefold())
        row, record = _explain_case(model, item, label, out / "cases" / name, result, hide_names=hide_names,
                                    top_k=top_k, maps=maps, max_side=max_side, nav=nav)
        rows.append(row)
        records.append(record)
    atomic_write_text(result.class_card, render_class_card_html(model, nav={"All cases": "index.html"}))
    atomic_write_text(result.index, render_index_html(rows, model, nav={"Model card": "classes.html"}))
    atomic_write_json(out / "index.json", {"encoder": without_paths(model.encoder_name), "classes": model.classes,
                                           "flags_unlike_training": cannot_flag(model) is None, "cases": records})
    written = {f"cases/{p.name}" for p in result.reports}
    stale = sorted(earlier - written)
    for name in stale:  # where case is not told apart (macOS, Windows) Case.html may be this run's case.html
        if not any(_same_file(out / name, p) for p in result.reports if p.name.casefold() == name[6:].casefold()):
            (out / name).unlink(missing_ok=True)
    if stale:  # by number only: an earlier report's file name is its image's (hide_names hides those)
        log.info("removed %d report(s) an earlier run wrote into %s and this run did not write again", len(stale), out)
    log.info("wrote %d reports, index and class card to %s (%d inputs failed)", len(result.reports), out, len(result.failures))
    return result
