"""Image-caption pairs from the demo world, for pretraining ``demo-clip``.

A caption describes what is visible, as a findings-only report would: the lesion, all of its
attributes (40 % of captions) or a random subset, and the marks on the image. It never states the
diagnosis the ABCD rule gives. A graded attribute is stated either way, in one phrase for each
side ("irregular border" / "regular border", "three or more colours" / "one or two colours"); a
colour, a structure, the spurious marks (ruler, ink: real encoders see rulers too) and hair are
named only when present, as real captions do. Negated statements ("no dots") are never written: a
small text tower embeds "no X" as "X" plus a generic negation, so "tan pigment, no dark brown
pigment" and "no tan pigment, dark brown pigment" look alike to it and it cannot learn which
colour is which (in a trial, the positive-minus-negative directions of all six colours had cosine
0.93-0.99 with each other, and their AUROCs were what the number of colours alone gives). Some
statements are replaced by a graded detail ("asymmetric in two axes", "4 colours") or a synonym.

Diagnosis words appear as a web corpus has them: rarely (``IMPRESSION_RATE`` of captions) and as a
lay impression, not the rule (:func:`lay_impression`): a dark lesion (black or blue-grey pigment)
with three or more colours is called a melanoma, one with either of the two suspicious, the rest
a mole or nevus; one impression in ``IMPRESSION_NOISE`` is a random diagnosis. The impression is a
function of what the captions already say (colours), so the words carry no label the captions do
not, and class-name prompts score about what the impression itself does against the rule (AUROC
0.70 on the 2-class world), as real biomedical CLIPs do on dermoscopy (BiomedCLIP about 0.73 for
melanoma on ISIC 2020). Before, 40 % of captions named the rule's own diagnosis, and the encoder
had in effect seen 16,000 labelled, unconfounded lesions: zero-shot class prompts beat every
trained head out of domain.

The corpus draws its scenes from its own random stream (``CORPUS_STREAM``), disjoint from the
demo datasets (``DATASET_STREAM``), from the held-out images on which pretraining chooses its
checkpoint (``SELECT_STREAM``) and from those of the encoder evaluation (``EVAL_STREAM``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbm.demo.render import MARKED_CAST, UNMARKED_CAST, render_scene
from cbm.demo.world import (
    CORE_CONCEPTS,
    CUE_KINDS,
    CUE_PROMPTS,
    Concept,
    Lesion,
    Scene,
    lesion_attributes,
    sample_lesion,
    sample_scene,
)

__all__ = [
    "DATASET_STREAM",
    "CORPUS_STREAM",
    "EVAL_STREAM",
    "SELECT_STREAM",
    "corpus_scene",
    "caption_pieces",
    "lay_impression",
    "IMPRESSION_RATE",
    "IMPRESSION_NOISE",
    "said_when_absent",
    "caption",
    "contradiction",
    "true_statements",
    "CaptionTokenizer",
    "render_for_encoder",
]

DATASET_STREAM = 0
"""Random stream of the demo datasets (``cbm demo make``)."""
CORPUS_STREAM = 1
"""Random stream of the pretraining corpus."""
EVAL_STREAM = 2
"""Random stream of the held-out images on which the encoder is evaluated."""
SELECT_STREAM = 3
"""Random stream of the held-out images on which pretraining scores its checkpoints."""

_CASTS = ((1.0, 1.0, 1.0), MARKED_CAST, UNMARKED_CAST, (1.03, 1.0, 0.95), (0.96, 1.0, 1.04))

_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
_DIAGNOSES = {
    "benign nevus": ("benign nevus", "benign nevus", "benign mole"),
    "suspicious lesion": ("suspicious lesion", "suspicious lesion", "atypical lesion"),
    "melanoma": ("melanoma", "melanoma", "malignant melanoma"),
}
_IMPRESSIONS = ("benign nevus", "suspicious lesion", "melanoma")

IMPRESSION_RATE = 0.1
"""The share of captions whose head names a diagnosis (a lay impression, never the rule's)."""
IMPRESSION_NOISE = 0.2
"""The share of those impressions that are a random diagnosis instead."""
_GENERIC = ("skin lesion", "pigmented lesion", "lesion", "pigmented skin lesion")
_PREFIXES = (
    "dermoscopy of a {}",
    "dermoscopic image of a {}",
    "a dermoscopy photo of a {}",
    "close-up dermoscopy of a {}",
    "{} under dermoscopy",
)
_JOINERS = (" with ", ": ", ", ")
_SYNONYMS = {
    "asymmetric shape": "asymmetric contour",
    "irregular border": "jagged border",
    "pigment network": "reticular network",
    "dots": "small dots",
    "globules": "round globules",
    "streaks": "radial streaks",
    "structureless areas": "structureless zone",
}


def corpus_scene(index: int, seed: int = 0, stream: int = CORPUS_STREAM) -> Scene:
    """Scene ``index`` of the pretraining corpus (or, with ``stream=EVAL_STREAM``, of the held-out set).

    Lesions come from the world's unconditioned prior (all three diagnoses); the cue (none, ruler,
    ink) and the colour cast are drawn independently of the lesion, so the encoder learns them
    as separate things.
    """
    rng = np.random.default_rng([seed, stream, index])
    lesion = sample_lesion(rng)
    cue = CUE_KINDS[int(rng.integers(0, len(CUE_KINDS)))]
    cast = _CASTS[int(rng.integers(0, len(_CASTS)))]
    return sample_scene(rng, lesion, cue=cue, cast=cast)


def lay_impression(lesion: Lesion, rng: np.random.Generator | None = None) -> str:
    """The diagnosis a lay caption writer gives ``lesion``: darkness and variegation, not the rule.

    One point for dark pigment (black or blue-grey), one for three or more colours: 0 is a benign
    nevus, 1 a suspicious lesion, 2 a melanoma. With ``rng``, ``IMPRESSION_NOISE`` of the calls
    return a random diagnosis instead. Against the rule's labels this impression has AUROC 0.70
    on the 2-class world (0.67 one-vs-rest on three classes).
    """
    if rng is not None and rng.random() < IMPRESSION_NOISE:
        return _IMPRESSIONS[int(rng.integers(0, len(_IMPRESSIONS)))]
    dark = "black" in lesion.colours or "blue-grey" in lesion.colours
    return _IMPRESSIONS[int(dark) + int(len(lesion.colours) >= 3)]


def said_when_absent(concept: Concept) -> bool:
    """Whether a caption states the absence of ``concept`` (a graded attribute: "regular border")
    or only ever names it when present (a colour or structure, whose negative is "no ...")."""
    return not concept.negative.startswith("no ")


def _statements(lesion: Lesion, rng: np.random.Generator) -> list[str]:
    """A statement per graded concept (either phrase) and per present colour or structure, some
    as a graded detail or a synonym."""
    values = lesion_attributes(lesion)
    out = []
    for concept in CORE_CONCEPTS:
        present = bool(concept.truth([values[concept.attribute]])[0])
        if not present and not said_when_absent(concept):
            continue
        text = concept.phrase if present else concept.negative
        u = rng.random()
        if u < 0.25:  # a graded detail instead of the plain phrase
            text = _detail(concept.attribute, values, text)
        elif u < 0.35 and present:
            text = _SYNONYMS.get(text, text)
        out.append(text)
    return out


def _detail(attribute: str, values: dict, default: str) -> str:
    """A graded statement about ``attribute`` (the count or size), or ``default`` if there is none."""
    v = values[attribute]
    if attribute == "asymmetry":
        return ("symmetric in both axes", "asymmetric in one axis", "asymmetric in two axes")[int(v)]
    if attribute == "border":
        return f"abrupt cut-off in {_NUMBERS[int(v)]} of eight border segments" if v else "gradual fade all around"
    if attribute == "n_colours":
        return f"{_NUMBERS[int(v)]} colour" + ("s" if v > 1 else "")
    if attribute == "n_structures":
        return f"{_NUMBERS[int(v)]} structure" + ("s" if v != 1 else "")
    if attribute == "diameter_mm":
        return f"{int(round(v))} mm across"
    return default


def caption_pieces(
    scene: Scene, rng: np.random.Generator, max_statements: int | None = None
) -> list[str]:
    """The pieces of one random caption of ``scene``: a head, then statements (joined by ", ").

    The first piece is the head ("dermoscopy of a melanoma with", or empty for a bare list). With
    ``max_statements``, a caption states 1 to that many attributes: in a batch of such captions no
    attribute can stand in for another, so each must be seen on its own (pretraining ends on them).
    """
    lesion = scene.lesion
    statements = _statements(lesion, rng)
    u = rng.random()
    if max_statements is not None:
        k = int(rng.integers(1, max_statements + 1))
    elif u < 0.4:  # a full description: every attribute, in random order
        k = len(statements)
    elif u < 0.6:
        k = int(rng.integers(1, len(statements) + 1))
    else:
        k = int(rng.integers(2, 8))
    chosen = [statements[i] for i in rng.choice(len(statements), size=min(k, len(statements)), replace=False)]
    if scene.cue in CUE_PROMPTS and rng.random() < 0.7:
        chosen.append(CUE_PROMPTS[scene.cue])
    if scene.hair and rng.random() < 0.3:
        chosen.append("hair")
    order = rng.permutation(len(chosen))
    chosen = [chosen[i] for i in order]
    if rng.random() < 0.2:
        return ["", *chosen]
    if rng.random() < IMPRESSION_RATE / 0.8:  # of the 80 % of captions with a head
        options = _DIAGNOSES[lay_impression(lesion, rng)]
    else:
        options = _GENERIC
    noun = options[int(rng.integers(0, len(options)))]
    head = _PREFIXES[int(rng.integers(0, len(_PREFIXES)))].format(noun)
    joiner = _JOINERS[int(rng.integers(0, len(_JOINERS)))]
    return [head + joiner.rstrip(), *chosen]


def _statement_concepts() -> dict[str, Concept]:
    """Every statement text a caption can hold -> the core concept it is about (both phrases, the
    synonyms and the graded details of every value)."""
    about: dict[str, Concept] = {}
    for concept in CORE_CONCEPTS:
        about[concept.phrase] = about[concept.negative] = concept
        if concept.phrase in _SYNONYMS:
            about[_SYNONYMS[concept.phrase]] = concept
    graded = {c.attribute: c for c in CORE_CONCEPTS if said_when_absent(c)}
    values = {"asymmetry": range(3), "border": range(9), "n_colours": range(1, 7), "n_structures": range(6),
              "diameter_mm": range(1, 40)}
    for attribute, vs in values.items():
        for v in vs:
            text = _detail(attribute, {attribute: v}, "")
            if text:
                about[text] = graded[attribute]
    return about


_ABOUT = _statement_concepts()


def contradiction(pieces: Sequence[str], lesion: Lesion, rng: np.random.Generator) -> list[str] | None:
    """``pieces`` with one statement replaced by one that is false of ``lesion``, or None if none can be.

    The hard negative of NegCLIP (Yuksekgonul et al. 2023, "When and why vision-language models
    behave like bags-of-words"): a caption that differs from the true one in a single attribute,
    so the image must match its own caption better than that one. A graded attribute is stated the
    other way ("symmetric shape" for an asymmetric lesion, whatever detail or synonym the caption
    used); a present colour or structure becomes an absent one of the same kind ("red areas" ->
    "white areas"). The head, the marks and hair are never changed.
    """
    values = lesion_attributes(lesion)
    choices = [i for i in range(1, len(pieces)) if pieces[i] in _ABOUT]
    for i in rng.permutation(choices):
        concept = _ABOUT[pieces[i]]
        present = bool(concept.truth([values[concept.attribute]])[0])
        if said_when_absent(concept):
            replacement = concept.negative if present else concept.phrase
        else:
            absent = [c.phrase for c in CORE_CONCEPTS if c.letter == concept.letter and not said_when_absent(c)
                      and not c.truth([values[c.attribute]])[0]]
            if not absent:
                continue
            replacement = absent[int(rng.integers(0, len(absent)))]
        return [*pieces[:i], replacement, *pieces[i + 1 :]]
    return None


def true_statements(scene: Scene) -> frozenset[str]:
    """Every statement a caption could hold that is true of ``scene``: the phrase of each graded
    attribute's side, its synonym, the graded detail of its exact value, each present colour and
    structure, the mark and hair. A caption is true of an image when all its statements are in this
    set (its head aside), so pretraining can tell a caption that also fits another image of the
    batch from one that does not."""
    values = lesion_attributes(scene.lesion)
    out: set[str] = set()
    for concept in CORE_CONCEPTS:
        present = bool(concept.truth([values[concept.attribute]])[0])
        if present:
            out.add(concept.phrase)
            out.add(_SYNONYMS.get(concept.phrase, concept.phrase))
        elif said_when_absent(concept):
            out.add(concept.negative)
        if said_when_absent(concept):
            out.add(_detail(concept.attribute, values, ""))
    if scene.cue in CUE_PROMPTS:
        out.add(CUE_PROMPTS[scene.cue])
    if scene.hair:
        out.add("hair")
    out.discard("")
    return frozenset(out)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random caption of ``scene`` as a string."""
    return _join(caption_pieces(scene, rng))


def _join(pieces: Sequence[str]) -> str:
    """The caption string: the head, a space, then the statements joined by ", "."""
    return " ".join(p for p in (pieces[0], ", ".join(pieces[1:])) if p)


class CaptionTokenizer:
    """Tokenise captions piece by piece with a per-piece cache (about 20x faster than tokenising
    each caption string), giving the same ids as open_clip's tokenizer on the joined string.

    Args:
        tokenizer: an open_clip ``SimpleTokenizer`` (``open_clip.get_tokenizer(model_name)``).
        context_length: the model's text context; statements are dropped from the end of a caption
            until it fits.
    """

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self._cache: dict[str, list[int]] = {}
        self._comma = self._encode(",")

    def _encode(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text) if text else []
            self._cache[text] = ids
        return ids

    def ids(self, pieces: Sequence[str]) -> list[int]:
        """Token ids (with start and end tokens) of the caption made of ``pieces``."""
        sot, eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        head = self._encode(pieces[0])
        body: list[int] = []
        for i, piece in enumerate(pieces[1:]):
            extra = (self._comma if i else []) + self._encode(piece)
            if len(head) + len(body) + len(extra) + 2 > self.context_length:
                break
            body += extra
        return [sot, *head, *body, eot]

    def batch(self, captions: Sequence[Sequence[str]]) -> np.ndarray:
        """A zero-padded ``(n, L)`` int64 array, L = the longest caption of the batch (a causal text
        tower gives the same end-token features with or without trailing padding)."""
        rows = [self.ids(p) for p in captions]
        out = np.zeros((len(rows), max(len(r) for r in rows)), np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out


def render_for_encoder(scene: Scene, size: int, method: str = "native") -> np.ndarray:
    """Render ``scene`` at an encoder's input ``size`` as a real image would reach it.

    ``native`` draws at ``size`` directly; ``box`` and ``bicubic`` draw at twice the size and
    shrink with an area filter or an anti-aliased bicubic (PIL); ``bicubic-noaa`` shrinks with
    plain bicubic sampling (as torch/MONAI resize without anti-aliasing does). Training on all four
    makes the encoder indifferent to how a 128 px demo image is resized to its input.
    """
    if method == "native":
        return render_scene(scene, size)
    from PIL import Image

    big = render_scene(scene, 2 * size)
    if method == "box":
        return big.reshape(size, 2, size, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    if method == "bicubic":
        return np.asarray(Image.fromarray(big).resize((size, size), Image.BICUBIC))
    if method == "bicubic-noaa":
        return _halve_bicubic_no_aa(big)
    raise ValueError(f"unknown resize method {method!r}; use native, box, bicubic or bicubic-noaa")


# Bicubic (a = -0.75, as torch and OpenCV use) sampled half-way between two pixels: the weights of
# pixels 2i-1, 2i, 2i+1, 2i+2 when an image is halved without an anti-aliasing filter.
_HALF_TAPS = np.array([-0.09375, 0.59375, 0.59375, -0.09375], np.float32)


def _halve_bicubic_no_aa(img: np.ndarray) -> np.ndarray:
    """Halve an (H, W, C) uint8 image by plain bicubic sampling (torch's ``interpolate(...,
    mode="bicubic", antialias=False)``), separably, with edge pixels repeated."""
    x = img.astype(np.float32)
    for axis in (0, 1):
        n = x.shape[axis]
        idx = np.arange(0, n, 2)[:, None] + np.arange(-1, 3)[None, :]
        taps = np.take(x, np.clip(idx, 0, n - 1), axis=axis)  # (..., n/2, 4, ...)
        x = np.tensordot(taps, _HALF_TAPS, axes=([axis + 1], [0]))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)
