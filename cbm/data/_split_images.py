"""The image check of ``cbm make-splits``: which folder the manifest's paths are relative to, and
which of the images the metadata names are in it.

The folder is, in order: ``--images DIR``; for a card that reads its metadata from an image folder,
that folder; else the card's image root (``$<image_root_env>`` when set, else its ``image_root``).
Without any of them (the card's own folder not made yet) the paths are not checked. An image not
at the metadata's path is looked for where the folder's layout puts it (a root one level too deep
or too high, told from a sample of the missing images), then by a name no other file has. A manifest's
paths are relative to the folder they were checked in, so a folder other than the card's image
root is named in a warning with the setting that points the card at it; a root variable that names
no folder is an error (a typo would otherwise write a manifest no image was checked for).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbm.data._split_rule import SplitRule

__all__ = ["checked_images"]

log = logging.getLogger("cbm.data._splits")  # the messages of one command come from one logger


def _image_index(root: Path) -> dict[str, list[str]]:
    """basename -> relative paths of every file under ``root``."""
    index: dict[str, list[str]] = defaultdict(list)
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            index[name].append(Path(dirpath, name).relative_to(root).as_posix())
    return index


def _warn_if_elsewhere(card: Any, root: Path) -> None:
    """Manifest paths are relative to ``root``: say how to point the card there when it looks elsewhere."""
    if card.image_root.resolve() != root.resolve():
        hint = f"set {card.image_root_env}={root}" if card.image_root_env else f"point image_root at {root}"
        log.warning("manifest paths are relative to %s, but card %s looks for its images in %s; %s so the card finds "
                    "the images", root, card.name, card.image_root, hint)


def _image_root(card: Any, rule: SplitRule, metadata: Sequence[str | os.PathLike], images: Any) -> tuple[Path | None, str]:
    """The folder image paths are checked in, and how it was chosen (for messages)."""
    folders = [Path(m) for m in metadata if Path(m).is_dir()]
    if images:
        _warn_if_elsewhere(card, Path(images))
        return Path(images), "--images"
    if rule.folder and folders:
        _warn_if_elsewhere(card, folders[0])  # folder sources: manifest paths are relative to that folder
        return folders[0], "--metadata"
    env = card.image_root_env
    if card.image_root.is_dir():
        how = f"${env}" if env and os.environ.get(env) else "the card's image_root"
        return card.image_root, how
    if env and os.environ.get(env):
        raise FileNotFoundError(
            f"card {card.name!r}: ${env} is {os.environ[env]}, but {card.image_root} is not a folder. Set {env} to "
            f"the folder that holds the images or pass it with --images DIR; to write the manifest before the "
            f"images are there, add --no-image-check"
        )
    log.info("image folder %s does not exist yet; manifest paths are not checked", card.image_root)
    return None, ""


_MAX_COPIES = 4  # files of one name compared as possible copies of one image (CheXpert has 200,000 view1_frontal.jpg)
_OFFSET_SAMPLE = 20  # missing images looked at to tell how the folder's layout differs from the metadata's
_OFFSET_SPREAD = 60  # rows looked at, spread over the metadata, to find them (a block of truly missing ones is skipped)


def _moved(path: str, offset: tuple[int, str]) -> str:
    """``path`` with its first ``offset[0]`` folders dropped and ``offset[1]`` put before it."""
    strip, prefix = offset
    return prefix + "/".join(Path(path).parts[strip:])


def _layout_offset(items: list[dict[str, Any]], root: Path, index: dict[str, list[str]]) -> tuple[int, str] | None:
    """How the folder's layout differs from the metadata's paths, told from missing images spread over
    the metadata: the root one level too deep (the metadata's ``CheXpert-v1.0-small/train/...``
    under a root that is ``CheXpert-v1.0-small`` itself: drop leading folders) or too high (an
    unpack folder above them: put it before). None when the sampled images found elsewhere disagree,
    when fewer than three of them (or all, if fewer are sampled) are found, or when none is missing."""
    spread = items[:: max(1, len(items) // _OFFSET_SPREAD)]
    missing = [it["path"] for it in spread if not (root / it["path"]).is_file()]
    sample = missing[:: max(1, len(missing) // _OFFSET_SAMPLE)][:_OFFSET_SAMPLE]
    votes: Counter[tuple[int, str]] = Counter()
    for path in sample:
        parts = Path(path).parts
        found = {(k, "") for k in range(1, len(parts)) if (root / Path(*parts[k:])).is_file()}
        found |= {(0, hit[: -len(path)]) for hit in index.get(parts[-1], []) if hit.endswith("/" + path)}
        if len(found) == 1:
            votes[found.pop()] += 1
    if not votes:
        return None
    offset, n = votes.most_common(1)[0]  # one layout for every sampled image found elsewhere
    return offset if n == sum(votes.values()) and n >= min(3, len(sample)) else None


def _with_images(items: list[dict[str, Any]], root: Path, dropped: Counter) -> tuple[list[dict[str, Any]], list[str]]:
    """Items whose image is under ``root``: at the metadata's path, at that path moved as the whole
    folder's layout is (:func:`_layout_offset`), or found elsewhere under it by a name no other file
    has (copies of one image, hard-linked or byte for byte, count as one); the manifest takes the
    real path. A file that two rows would name (two metadata paths moved onto one) is kept for the
    first only."""
    index = _image_index(root)
    offset = _layout_offset(items, root, index)
    if offset is not None:
        log.info("the images are under %s at the metadata's paths %s", root,
                 f"less their first {offset[0]} folder(s)" if offset[0] else f"inside {offset[1].rstrip('/')}")
    present = [(root / it["path"]).is_file() for it in items]
    found, taken, copies, missing = [], {it["path"] for it, there in zip(items, present) if there}, 0, []
    for it, there in zip(items, present):
        if there:
            found.append(it)
            continue
        moved = _moved(it["path"], offset) if offset is not None else None
        if moved is None or not (root / moved).is_file():
            same_name = index.get(Path(it["path"]).name, [])
            if 1 < len(same_name) <= _MAX_COPIES and _one_file(same_name, root):  # Kaggle's HAM10000 has two of each
                copies += 1
                same_name = sorted(same_name)[:1]
            moved = same_name[0] if len(same_name) == 1 else None
        if moved is None:
            dropped["rows whose image is not under " + str(root)] += 1
            if len(missing) < 3:
                missing.append(_why_missing(it["path"], index, root))
        elif moved in taken:
            dropped["rows whose image another row already names"] += 1
        else:
            it["path"] = moved
            taken.add(moved)
            found.append(it)
    if copies:
        log.info("%d image(s) are under %s in several identical copies (hard links or the same bytes, e.g. an unpack "
                 "folder repeated in another case); the first path of each is used", copies, root)
    return found, missing


def _why_missing(path: str, index: dict[str, list[str]], root: Path) -> str:
    """A metadata path no image under ``root`` was taken for, and why: no file of its name, one in another
    letter case, or several different files of its name (which one is meant cannot be told)."""
    name = Path(path).name
    same = index.get(name, [])
    if len(same) > 1:
        return f"{path} ({len(same)} files of that name, which one is meant cannot be told: {', '.join(sorted(same)[:2])}, ...)"
    other = next((k for k in index if k.casefold() == name.casefold()), None)
    return f"{path} ({index[other][0]} exists; file names are case-sensitive)" if other else f"{path} (no file of that name)"


def _one_file(paths: list[str], root: Path) -> bool:
    """Whether every path names the same image: one file (hard links) or byte-identical copies."""
    try:
        stats = [(root / p).stat() for p in paths]
        if len({(st.st_dev, st.st_ino) for st in stats}) == 1:
            return True
        if len({st.st_size for st in stats}) > 1:
            return False
        first = (root / paths[0]).read_bytes()
        return all((root / p).read_bytes() == first for p in paths[1:])
    except OSError:
        return False


def checked_images(
    items: list[dict[str, Any]], rows: list[dict[str, Any]], card: Any, rule: SplitRule,
    metadata: Sequence[str | os.PathLike], images: Any, dropped: Counter,
) -> list[dict[str, Any]]:
    """The items whose image file is in the image folder (all of them when there is no folder yet).

    Raises:
        FileNotFoundError: none of the images is in the folder, or the card's root variable names no folder.
    """
    root, how = _image_root(card, rule, metadata, images)
    if root is None:
        return items
    labelled = len(items)
    items, missing = _with_images(items, root, dropped)
    if labelled and not items:
        raise FileNotFoundError(
            f"card {card.name!r}: the images are not under {root} ({how}). {_images_hint(card)}. (None of the "
            f"{labelled} images the metadata names is there, e.g. {_example_path(rows, rule)}; the metadata itself was read.)"
        )
    if len(items) < labelled:  # the folder hint where most are missing; where a few are, why those are
        log.warning("%d of %d images the metadata names are not under %s (%s); they are left out (e.g. %s).%s",
                    labelled - len(items), labelled, root, how, "; ".join(missing) or "a path another row took",
                    f" {_images_hint(card)}" if len(items) < labelled / 2 else "")
    return items


def _images_hint(card: Any) -> str:
    env = f" or set {card.image_root_env}=DIR" if card.image_root_env else ""
    return (f"Pass the folder that holds the images with --images DIR{env}; to write the manifest before the images "
            "are there, add --no-image-check")


def _example_path(rows: list[dict[str, Any]], rule: SplitRule) -> str:
    """One manifest path the metadata names, for a message."""
    for row in rows:
        try:
            return rule.path.format_map(row)
        except KeyError:
            continue
    return rule.path
