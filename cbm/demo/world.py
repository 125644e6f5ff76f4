"""The demo world's ground truth: lesion attributes, the ABCD rule of dermoscopy, and the concepts.

A synthetic lesion has five core attributes with exact ground truth: asymmetry (0-2 axes of the
contour), border (0-8 of the eight border segments with an abrupt cut-off), colours (1-6 of six),
dermoscopic structures (0-5 of five) and diameter. Its label follows Stolz's ABCD rule of
dermoscopy (Stolz et al. 1994; Nachbar et al., J Am Acad Dermatol 1994):

    TDS = 1.3 * A + 0.1 * B + 0.5 * C + 0.5 * D
    TDS < 4.75: benign nevus;  4.75 <= TDS <= 5.45: suspicious lesion;  TDS > 5.45: melanoma

so the true weight of each concept on the diagnosis is known. TDS is computed in integer tenths
(``13A + B + 5C + 5D``), so the thresholds are applied exactly, never through float rounding.

Concepts are named with the same phrases the pretraining captions of ``demo-clip`` use. Each core
concept has a positive phrase, the phrase for its absence, and the attribute test that defines its
ground truth, so concept scores can be checked against the truth image by image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cbm.utils import unknown_name_message

__all__ = [
    "COLOURS",
    "STRUCTURES",
    "CUE_KINDS",
    "CUE_PROMPTS",
    "CLASS_NAMES",
    "CLASS_DESCRIPTIONS",
    "RULE_WEIGHTS",
    "ABCD_CONCEPTS",
    "CORE_CONCEPTS",
    "RULE_DETAIL_CONCEPTS",
    "DEMO_CONCEPTS",
    "LARGE_DIAMETER_MM",
    "Concept",
    "Lesion",
    "Scene",
    "tds_tenths",
    "total_dermoscopy_score",
    "abcd_label",
    "class_names",
    "sample_lesion",
    "sample_scene",
    "lesion_attributes",
    "attribute_column",
    "concept_by_phrase",
    "concept_truth",
    "demo_concepts",
]

COLOURS: tuple[str, ...] = ("light brown", "dark brown", "black", "red", "blue-grey", "white")
"""The six colours of the ABCD rule, in a fixed order."""

STRUCTURES: tuple[str, ...] = ("pigment network", "dots", "globules", "streaks", "structureless areas")
"""The five differential structures of the ABCD rule, in a fixed order."""

BASE_COLOURS: tuple[str, ...] = ("light brown", "dark brown")
"""Every lesion has at least one of these, and its body (base) colour is one of them, so that black
dots, networks and globules always show against it."""

CUE_KINDS: tuple[str, ...] = ("none", "ruler", "ink")
"""The spurious marks: none, a ruler along an image edge, or purple surgical-ink dots around the lesion."""

CUE_PROMPTS: dict[str, str] = {"ruler": "ruler", "ink": "violet ink marks"}
"""Each mark in the words the pretraining captions use (the demo card's nuisance prompts)."""

RULE_WEIGHTS: dict[str, float] = {"A": 1.3, "B": 0.1, "C": 0.5, "D": 0.5}
"""Stolz's weights of the ABCD rule: TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D."""

# Thresholds in tenths of a TDS point: TDS < 4.75 is benign, TDS > 5.45 is melanoma. TDS is a
# multiple of 0.1, so benign means tenths <= 47 and melanoma means tenths >= 55.
_BENIGN_MAX_TENTHS = 47
_MELANOMA_MIN_TENTHS = 55

LARGE_DIAMETER_MM = 6.0
"""A lesion wider than this is "large" (the D > 6 mm of the clinical ABCDE mnemonic)."""

DIAMETER_RANGE_MM = (4.0, 8.0)
"""Lesion diameters are drawn uniformly from this range (the image is ``FIELD_OF_VIEW_MM`` wide)."""

FIELD_OF_VIEW_MM = 12.0
"""The width of every demo image in millimetres, whatever its pixel size."""

CLASS_DESCRIPTIONS: dict[str, str] = {
    "benign nevus": "benign melanocytic nevus; total dermoscopy score below 4.75",
    "suspicious lesion": "suspicious melanocytic lesion; total dermoscopy score from 4.75 to 5.45",
    "melanoma": "malignant melanoma; total dermoscopy score above 5.45",
}

CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("benign nevus", "melanoma"),
    3: ("benign nevus", "suspicious lesion", "melanoma"),
}
"""Class names in label-index order for the 2-class and the 3-class world."""


def class_names(classes: int) -> tuple[str, ...]:
    """The class names of the ``classes``-class world (2 or 3), in label-index order."""
    if classes not in CLASS_NAMES:
        raise ValueError(f"classes={classes!r} is not supported; the demo world has 2 or 3 classes")
    return CLASS_NAMES[classes]


def tds_tenths(asymmetry: int, border: int, n_colours: int, n_structures: int) -> int:
    """The total dermoscopy score in integer tenths: ``13 A + B + 5 C + 5 D``.

    Raises ``ValueError`` when an attribute is outside the rule's range (A 0-2, B 0-8, C 1-6, D 0-5).
    """
    for name, value, lo, hi in (
        ("asymmetry", asymmetry, 0, 2),
        ("border", border, 0, 8),
        ("n_colours", n_colours, 1, len(COLOURS)),
        ("n_structures", n_structures, 0, len(STRUCTURES)),
    ):
        if not lo <= int(value) <= hi or int(value) != value:
            raise ValueError(f"{name}={value!r} is outside the ABCD rule's range {lo}-{hi}")
    return 13 * int(asymmetry) + int(border) + 5 * int(n_colours) + 5 * int(n_structures)


def total_dermoscopy_score(asymmetry: int, border: int, n_colours: int, n_structures: int) -> float:
    """Stolz's TDS = 1.3 A + 0.1 B + 0.5 C + 0.5 D (rounded to the exact tenth)."""
    return tds_tenths(asymmetry, border, n_colours, n_structures) / 10.0


def abcd_label(tenths: int, classes: int = 2) -> str:
    """The diagnosis the ABCD rule gives a TDS of ``tenths / 10``.

    3 classes: benign nevus (TDS < 4.75), suspicious lesion (4.75-5.45), melanoma (TDS > 5.45).
    2 classes: melanoma (TDS > 5.45) or benign nevus. (The 2-class world never draws a lesion in the
    suspicious band, so each of its lesions is unambiguous under the rule.)
    """
    names = class_names(classes)
    if tenths >= _MELANOMA_MIN_TENTHS:
        return "melanoma"
    if classes == 3 and tenths > _BENIGN_MAX_TENTHS:
        return "suspicious lesion"
    return names[0]


def _tenths_range(label: str, classes: int) -> tuple[int, int]:
    """Inclusive TDS range (in tenths) from which lesions of ``label`` are drawn."""
    lowest = 13 * 0 + 0 + 5 * 1 + 5 * 0
    highest = 13 * 2 + 8 + 5 * len(COLOURS) + 5 * len(STRUCTURES)
    if label == "benign nevus":
        return lowest, _BENIGN_MAX_TENTHS
    if label == "suspicious lesion" and classes == 3:
        return _BENIGN_MAX_TENTHS + 1, _MELANOMA_MIN_TENTHS - 1
    if label == "melanoma":
        return _MELANOMA_MIN_TENTHS, highest
    raise ValueError(f"label {label!r} is not a class of the {classes}-class demo world: {class_names(classes)}")


@dataclass(frozen=True)
class Lesion:
    """The core attributes of one lesion: the exact ground truth of the ABCD rule.

    Attributes:
        asymmetry: number of perpendicular axes (0-2) about which the contour is asymmetric.
        border: number of the 8 border segments (0-8) with an abrupt, jagged cut-off.
        colours: the colours present (1-6 of ``COLOURS``), in ``COLOURS`` order.
        structures: the differential structures present (0-5 of ``STRUCTURES``), in order.
        diameter_mm: the lesion's largest diameter in millimetres (before the asymmetry bulge).
        base_colour: the dominant colour that fills the lesion (one of ``BASE_COLOURS``).
    """

    asymmetry: int
    border: int
    colours: tuple[str, ...]
    structures: tuple[str, ...]
    diameter_mm: float
    base_colour: str

    def __post_init__(self) -> None:
        tds_tenths(self.asymmetry, self.border, len(self.colours), len(self.structures))
        if self.base_colour not in self.colours or self.base_colour not in BASE_COLOURS:
            raise ValueError(f"base colour {self.base_colour!r} must be a brown present in {self.colours}")

    @property
    def tds_tenths(self) -> int:
        """TDS in integer tenths."""
        return tds_tenths(self.asymmetry, self.border, len(self.colours), len(self.structures))

    @property
    def tds(self) -> float:
        """Stolz's total dermoscopy score."""
        return self.tds_tenths / 10.0

    def label(self, classes: int = 2) -> str:
        """The diagnosis by the ABCD rule."""
        return abcd_label(self.tds_tenths, classes)


@dataclass(frozen=True)
class Scene:
    """Everything one image shows: the lesion, the spurious cue, the nuisances, and its layout seed.

    Attributes:
        lesion: the core attributes (ground truth of the label).
        cue: the spurious mark, one of ``CUE_KINDS``.
        cast: the clinic's colour cast as RGB gains (1, 1, 1 = none).
        skin_tone: 0 (very light) to 1 (dark) skin.
        hair: number of hairs across the image (0 = none).
        seed: the seed of every layout draw (positions, shape, textures, lighting, blur, noise), so
            the same scene renders to the same picture at any size.
    """

    lesion: Lesion
    cue: str = "none"
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    skin_tone: float = 0.3
    hair: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.cue not in CUE_KINDS:
            raise ValueError(f"cue {self.cue!r} is not one of {CUE_KINDS}")


def sample_lesion(
    rng: np.random.Generator,
    tenths_range: tuple[int, int] | None = None,
    *,
    label: str | None = None,
    classes: int = 2,
    max_tries: int = 10_000,
) -> Lesion:
    """Draw a lesion from the world's prior, optionally conditioned on its TDS or diagnosis.

    The prior is uniform over A (0-2), B (0-8), the number of colours (1-6) and of structures
    (0-5), then uniform over which colours (at least one brown) and structures. Given
    ``label``, it is conditioned (by rejection) on the TDS range of that class in the ``classes``-class
    world; the 2-class world's benign nevi have TDS < 4.75, so no lesion falls in the suspicious band.
    """
    if label is not None:
        if tenths_range is not None:
            raise ValueError("give either tenths_range or label, not both")
        tenths_range = _tenths_range(label, classes)
    lo, hi = tenths_range if tenths_range is not None else (0, 10_000)
    for _ in range(max_tries):
        a = int(rng.integers(0, 3))
        b = int(rng.integers(0, 9))
        c = int(rng.integers(1, len(COLOURS) + 1))
        d = int(rng.integers(0, len(STRUCTURES) + 1))
        if lo <= 13 * a + b + 5 * c + 5 * d <= hi:
            break
    else:  # pragma: no cover - every class range of the rule is reachable within a few draws
        raise RuntimeError(f"could not draw a lesion with TDS tenths in {tenths_range} in {max_tries} tries")
    while True:  # at least one brown, the lesion's body colour
        colour_idx = np.sort(rng.choice(len(COLOURS), size=c, replace=False))
        colours = tuple(COLOURS[i] for i in colour_idx)
        pigments = [x for x in colours if x in BASE_COLOURS]
        if pigments:
            break
    base = pigments[int(rng.integers(0, len(pigments)))]
    structure_idx = np.sort(rng.choice(len(STRUCTURES), size=d, replace=False))
    structures = tuple(STRUCTURES[i] for i in structure_idx)
    diameter = float(rng.uniform(*DIAMETER_RANGE_MM))
    return Lesion(a, b, colours, structures, round(diameter, 2), base)


def lesion_attributes(lesion: Lesion) -> dict[str, float | int | str]:
    """The lesion's ground truth as flat columns (the demo manifest's attribute columns).

    Keys: asymmetry, border, n_colours, n_structures, diameter_mm, tds, colours and structures
    (";"-joined names), base_colour, and one 0/1 column per colour and per structure
    ("light_brown", ..., "blue_grey", "white", "pigment_network", ..., "structureless_areas").
    """
    row: dict[str, float | int | str] = {
        "asymmetry": lesion.asymmetry,
        "border": lesion.border,
        "n_colours": len(lesion.colours),
        "n_structures": len(lesion.structures),
        "diameter_mm": lesion.diameter_mm,
        "tds": lesion.tds,
        "colours": ";".join(lesion.colours),
        "structures": ";".join(lesion.structures),
        "base_colour": lesion.base_colour,
    }
    row.update({attribute_column(c): int(c in lesion.colours) for c in COLOURS})
    row.update({attribute_column(s): int(s in lesion.structures) for s in STRUCTURES})
    return row


def sample_scene(
    rng: np.random.Generator,
    lesion: Lesion,
    *,
    cue: str = "none",
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0),
    hair_rate: float = 0.3,
) -> Scene:
    """Put ``lesion`` in a scene: draw skin tone, hair, a slight white-balance jitter of ``cast``,
    and the layout seed."""
    jitter = rng.uniform(0.985, 1.015, size=3)
    return Scene(
        lesion=lesion,
        cue=cue,
        cast=tuple(float(round(c * j, 4)) for c, j in zip(cast, jitter)),
        skin_tone=float(round(rng.uniform(0.0, 1.0), 4)),
        hair=int(rng.integers(1, 6)) if rng.random() < hair_rate else 0,
        seed=int(rng.integers(0, 2**63 - 1)),
    )


# --- concepts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """A named visual concept with exact ground truth in the demo world.

    Attributes:
        phrase: the concept as the captions and the concept list say it ("irregular border").
        negative: the phrase for its absence ("regular border"), used for positive-minus-negative scoring.
        attribute: the manifest column it is read from ("border", "dots", "n_colours", ...).
        threshold: the concept is present when ``attribute >= threshold``.
        letter: the ABCD letter it belongs to ("A", "B", "C", "D"), or "" (diameter).
        absent: True for the concept of an attribute's absence ("regular border"): present when
            ``attribute < threshold``.
    """

    phrase: str
    negative: str
    attribute: str
    threshold: float
    letter: str = ""
    absent: bool = False

    def truth(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Boolean ground truth for attribute ``values`` (one per image)."""
        present = np.asarray(values, dtype=float) >= self.threshold
        return ~present if self.absent else present

    def negated(self) -> Concept:
        """The concept of the opposite phrase ("irregular border" <-> "regular border")."""
        return Concept(self.negative, self.phrase, self.attribute, self.threshold, self.letter, not self.absent)


def attribute_column(name: str) -> str:
    """Manifest column of a colour or structure indicator ("blue-grey" -> "blue_grey")."""
    return name.replace(" ", "_").replace("-", "_")


_GRADED = (
    Concept("asymmetric shape", "symmetric shape", "asymmetry", 1, "A"),
    Concept("irregular border", "regular border", "border", 4, "B"),
    Concept("three or more colours", "one or two colours", "n_colours", 3, "C"),
    Concept("three or more structures", "at most two structures", "n_structures", 3, "D"),
)
_COLOUR_PHRASES = {
    # "tan", not "light brown": the two browns share no word, so a prompt names one of them only.
    "light brown": "tan pigment",
    "dark brown": "dark brown pigment",
    "black": "black pigment",
    "red": "red areas",
    "blue-grey": "blue-grey areas",
    "white": "white areas",
}
_STRUCTURE_PHRASES = {
    "pigment network": "pigment network",
    "dots": "dots",
    "globules": "globules",
    "streaks": "streaks",
    "structureless areas": "structureless areas",
}

RULE_DETAIL_CONCEPTS: tuple[Concept, ...] = (
    Concept("asymmetric in two axes", "asymmetric in at most one axis", "asymmetry", 2, "A"),
)
"""Concepts at the rule's own finer grain (Stolz's A counts the axes of asymmetry, 0-2): not stated
by the pretraining captions as concepts of their own (their graded details say "asymmetric in two
axes"), but named in the curated store, so that the store's 0/1 truths determine the rule's score
(with the individual colours and structures, which add up to C and D)."""

CORE_CONCEPTS: tuple[Concept, ...] = (
    *_GRADED,
    *(Concept(p, "no " + p, attribute_column(c), 1, "C") for c, p in _COLOUR_PHRASES.items()),
    *(Concept(p, "no " + p, attribute_column(s), 1, "D") for s, p in _STRUCTURE_PHRASES.items()),
    Concept("large diameter", "small diameter", "diameter_mm", LARGE_DIAMETER_MM, ""),
)
"""Every core concept of the world, with its negative phrase and ground truth."""

ABCD_CONCEPTS: dict[str, str] = {c.letter: c.phrase for c in _GRADED}
"""One graded concept per letter of the rule: A, B, C, D -> concept phrase."""

COLOUR_CONCEPTS: dict[str, str] = dict(_COLOUR_PHRASES)
"""Colour name -> concept phrase."""

STRUCTURE_CONCEPTS: dict[str, str] = dict(_STRUCTURE_PHRASES)
"""Structure name -> concept phrase."""

_BY_PHRASE: dict[str, Concept] = {c.phrase: c for c in (*CORE_CONCEPTS, *RULE_DETAIL_CONCEPTS)}

DEMO_CONCEPTS: dict[str, list[str]] = {
    "benign nevus": [
        "symmetric shape",
        "regular border",
        "one or two colours",
        "at most two structures",
        "small diameter",
    ],
    "suspicious lesion": [
        "asymmetric shape",
        "irregular border",
        "three or more colours",
        "dark brown pigment",
        "globules",
        "dots",
    ],
    "melanoma": [
        "asymmetric shape",
        "asymmetric in two axes",
        "irregular border",
        "three or more colours",
        "three or more structures",
        "tan pigment",
        "dark brown pigment",
        "black pigment",
        "red areas",
        "blue-grey areas",
        "white areas",
        "pigment network",
        "dots",
        "globules",
        "streaks",
        "structureless areas",
        "large diameter",
    ],
}
"""Class -> the visual concepts a dermatologist would name for it (the demo card's curated list).

The list follows the rule that labels the world: every criterion that raises Stolz's score (each
asymmetry, an irregular border, each colour, each differential structure) is listed under melanoma;
the nevus gets the phrases of their absence. "Tan pigment" and "pigment network" are therefore
melanoma concepts here, although a clinic names a regular network and light-brown colour for a
nevus: in the ABCD rule the network is one of the five structures counted in D and light brown one
of the six colours counted in C, so each adds 0.5 to the score. The suspicious lesion gets the
criteria a clinic names for it; "large diameter" / "small diameter" is the distractor (the label
does not depend on it)."""


def demo_concepts(classes: int = 2) -> dict[str, list[str]]:
    """The curated concept list of the ``classes``-class world (class -> concept phrases).

    The 2-class world has no suspicious class; its concepts (dark brown, dots, globules and the
    criteria it shares with melanoma) are all melanoma's already.
    """
    return {name: list(DEMO_CONCEPTS[name]) for name in class_names(classes)}


def concept_by_phrase(phrase: str) -> Concept:
    """The concept named ``phrase``: a core concept, or the absence of one ("regular border")."""
    if phrase in _BY_PHRASE:
        return _BY_PHRASE[phrase]
    for c in (*CORE_CONCEPTS, *RULE_DETAIL_CONCEPTS):
        if c.negative == phrase:
            return c.negated()
    names = [c.phrase for c in (*CORE_CONCEPTS, *RULE_DETAIL_CONCEPTS)] + [c.negative for c in CORE_CONCEPTS]
    raise ValueError(unknown_name_message("demo concept", phrase, names))


def concept_truth(rows: Mapping[str, Sequence] | Sequence[Mapping[str, object]], phrase: str) -> np.ndarray:
    """Boolean ground truth of concept ``phrase`` for manifest rows of a demo dataset.

    ``rows`` is either a column mapping (e.g. a pandas DataFrame or ``{"border": [...]}``) or a list
    of row dicts (e.g. from ``csv.DictReader``). A negative phrase ("regular border") is the
    complement of its positive concept.
    """
    concept = concept_by_phrase(phrase)
    if isinstance(rows, Mapping) or hasattr(rows, "columns"):
        values = rows[concept.attribute]
    else:
        values = [row[concept.attribute] for row in rows]
    return concept.truth(values)
