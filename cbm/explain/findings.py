"""Findings language: what a prediction rests on, said as findings and directions, not weights.

A contribution is ``weight x score``, so a large contribution can come from a concept that is
*absent* (a low score times a negative weight). A report therefore names each driver as a finding
with its direction: "Not symmetric shape (21st percentile) -> favours melanoma". The words come
from where the image's score sits among the training images' scores (its percentile):

* at or above :data:`PRESENT_FROM` (65th): the concept is **present** ("Irregular border");
* at or below :data:`ABSENT_UP_TO` (35th): **absent** ("No globules"; "Not symmetric shape" for a
  concept with an opposite phrase, an attribute, and "Not asymmetric in two axes" for an adjective
  alone or before a preposition); no map is drawn for it;
* in between: **borderline**; so too a concept whose percentile says absent (present) while the
  head weighs it above (below) a training image of average score: "No tan pigment -> favours
  melanoma" would contradict the weights.

For a concept the model reads as a probability (calibrated on annotated training images), the
probability itself says it, on the same scale: present at 0.65 or above, absent at 0.35 or below,
borderline between; the percentile is shown beside it. A percentile alone would misread such a
concept: "symmetric shape" at P 0.01 sits at the 49th percentile where most training lesions are
asymmetric, and "dark brown pigment" at P 0.99 at the 30th where most show it.

**Two-sided axes.** Opposite phrases of one attribute ("symmetric shape" / "asymmetric shape")
are two concepts to the model but one finding to a reader. :func:`concept_axes` pairs a model's
concepts by this rule, on lower-cased words with a plural ``s`` dropped, each concept in at most
one pair (the first rule that pairs it):

1. negation: one phrase is the other after ``no``, ``absent``, ``without``, ``not`` or ``non``
   ("pleural fluid" / "absent pleural fluid");
2. a negating prefix on one word, the rest equal: ``a``, ``ir``, ``in``, ``im``, ``il``, ``un``,
   ``non``, ``dis`` ("symmetric shape" / "asymmetric shape", "regular border" / "irregular border");
3. a known antonym in place of a span of words, the rest equal (:data:`ANTONYMS`: "small" /
   "large", "one or two" / "three or more", "below" / "above", "sharp" / "blunted", ...).

When the weights compared use both poles, the pair is one finding with the two contributions
summed: it leans to the pole whose score sits higher among the training images ("Irregular, not
regular border"; half the difference of the two percentiles, beyond 15 points), is "between" them
otherwise, and says so when both poles score high. When only one pole is weighed, that concept is
a finding of its own.

**Direction.** A report weighs the predicted class against the runner-up: a finding's effect is
the sum over its concepts of ``(weight[predicted] - weight[runner-up]) x score``, the log-odds it
adds for one class over the other compared with a training image of average score (for a concept
the model reads as a probability, the score is that probability less the training images' mean
one); shown as an
odds factor ("odds x 3.2"). With two classes this is the whole decision, so one panel says it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = [
    "ANTONYMS",
    "ABSENT_UP_TO",
    "PRESENT_FROM",
    "Axis",
    "Finding",
    "axis_text",
    "concept_axes",
    "findings",
    "class_reliance",
    "unused_concepts",
    "summary_sentence",
    "format_probability",
    "percentile_text",
]

PRESENT_FROM = 65.0
"""A score at or above this training percentile reads as the concept being present."""
ABSENT_UP_TO = 35.0
"""A score at or below this training percentile reads as the concept being absent."""
_AXIS_LEAN = 15.0  # half the percentile difference beyond which an axis leans to one pole

_NEGATIONS = ("no", "absent", "without", "not", "non")
_PREFIXES = ("a", "ir", "in", "im", "il", "un", "non", "non-", "dis")
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("small", "large"), ("below", "above"), ("toward", "away from"), ("towards", "away from"),
    ("sharp", "blunted"), ("regular", "atypical"), ("smooth regular", "irregular"), ("one or two", "three or more"),
    ("at most two", "three or more"), ("one or two", "multiple"), ("single", "multiple"),
    ("well-defined", "ill-defined"), ("well-defined", "obscured"), ("crisp", "obscured"),
    ("increased", "decreased"), ("high", "low"), ("thick", "thin"), ("homogeneous", "heterogeneous"),
    ("focal", "diffuse"), ("unilateral", "bilateral"), ("present", "absent"),
    ("symmetric shape", "asymmetry in two axes"),
)
"""Known antonyms (word spans) for :func:`concept_axes`'s third rule."""


@dataclass(frozen=True)
class Axis:
    """Two concepts that are opposite phrases of one attribute (``low`` first in the model's order)."""

    low: str
    high: str

    @property
    def name(self) -> str:
        return f"{self.low} / {self.high}"


@dataclass(frozen=True)
class Finding:
    """One driver of a prediction, in words: what the image shows and which class it favours.

    Attributes:
        text: the finding ("Irregular border", "No globules", "Borderline: streaks",
            "Asymmetric shape, not symmetric").
        concepts: the concept, or the two poles of an axis.
        percentiles: each concept's training percentile in this image (``None`` unknown).
        state: ``"present"``, ``"absent"`` or ``"borderline"``.
        probabilities: each concept's probability of being present, for the concepts the model
            reads as probabilities (``None`` for the others; empty when none is).
        effect: log-odds it adds for ``favours`` over ``other`` (>= 0).
        favours: the class it argues for; ``other``: the class it is weighed against.
        seen: the concept whose map shows the finding; ``None`` when it is absent.
    """

    text: str
    concepts: tuple[str, ...]
    percentiles: tuple[float | None, ...]
    state: str
    effect: float
    favours: str
    other: str | None
    seen: str | None
    probabilities: tuple[float | None, ...] = ()

    def _where(self, i: int) -> str:
        p = self.probabilities[i] if i < len(self.probabilities) else None
        pct = percentile_text(self.percentiles[i])
        return pct if p is None else f"P(present) {format_probability(p)}, {pct}"

    @property
    def odds_factor(self) -> float:
        """How much the finding multiplies the odds of ``favours`` over ``other``."""
        return math.exp(min(self.effect, 50.0))

    @property
    def where_seen(self) -> str:
        """The percentile of the concept that shows the finding (of the first concept if absent)."""
        c = self.seen if self.seen in self.concepts else self.concepts[0]
        return self._where(self.concepts.index(c))

    @property
    def where(self) -> str:
        """The percentiles in words: "79th percentile", or both poles of an axis; with a
        concept's probability first where the model reads one ("P(present) 97 %, 79th percentile")."""
        if len(self.concepts) == 1:
            return self._where(0)
        return "; ".join(f"{c}: {self._where(i)}" for i, c in enumerate(self.concepts))


# ---------------------------------------------------------------------------- words and numbers
def format_probability(p: float) -> str:
    """A probability for people: whole percent, ``">99 %"`` and ``"<1 %"`` at the ends."""
    if p > 0.99:
        return ">99 %"
    if p < 0.01:
        return "<1 %"
    return f"{100.0 * p:.0f} %"


def percentile_text(p: float | None) -> str:
    """``21.3`` -> ``"21st percentile"``; the ends say "higher/lower than every training image"."""
    if p is None or not math.isfinite(p):
        return "percentile unknown"
    if p >= 100.0:
        return "higher than every training image"
    if p <= 0.0:
        return "lower than every training image"
    n = int(min(99, max(1, round(p))))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} percentile"


def _level(p: float | None, z: float) -> float:
    """The percentile, or without training scores the normal distribution's for score ``z``."""
    return 50.0 + 50.0 * math.erf(z / math.sqrt(2.0)) if p is None else p


def _state(p: float | None, z: float) -> str:
    # judged on the whole percentile the page shows, so "35th percentile" never reads as borderline
    level = round(_level(p, z))
    return "present" if level >= PRESENT_FROM else "absent" if level <= ABSENT_UP_TO else "borderline"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------- axes
def _words(phrase: str) -> tuple[str, ...]:
    words = re.findall(r"[a-z0-9][a-z0-9.'-]*", phrase.lower())
    return tuple(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def _negated(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    return (len(a) == len(b) + 1 and a[0] in _NEGATIONS and a[1:] == b) or (
        len(b) == len(a) + 1 and b[0] in _NEGATIONS and b[1:] == a)


def _prefixed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) != 1:
        return False
    x, y = sorted((a[diff[0]], b[diff[0]]), key=len)
    return len(x) >= 4 and any(y == p + x for p in _PREFIXES)


@cache
def _antonym_words() -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    return tuple(pair for x, y in ANTONYMS for pair in ((_words(x), _words(y)), (_words(y), _words(x))))


def _antonym(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    for s, t in _antonym_words():
        for i in range(len(a) - len(s) + 1):
            if a[i : i + len(s)] == s and a[:i] + t + a[i + len(s):] == b:
                return True
    return False


def concept_axes(concepts: Sequence[str]) -> list[Axis]:
    """Pairs of concepts that are opposite phrases of one attribute, by the module's rule."""
    return list(_axes(tuple(concepts)))


@cache
def _axes(concepts: tuple[str, ...]) -> tuple[Axis, ...]:
    words = [_words(c) for c in concepts]
    paired: set[int] = set()
    axes: list[Axis] = []
    for rule in (_negated, _prefixed, _antonym):
        for i in range(len(concepts)):
            for j in range(i + 1, len(concepts)):
                if i in paired or j in paired or words[i] == words[j] or not rule(words[i], words[j]):
                    continue
                paired |= {i, j}
                axes.append(Axis(concepts[i], concepts[j]))
    return tuple(sorted(axes, key=lambda a: concepts.index(a.low)))


# ---------------------------------------------------------------------------- findings
def _pair_words(first: str, second: str) -> tuple[str, str, str]:
    """``("regular", "irregular", "border")``: the two phrases without their shared last words."""
    a, b = first.split(), second.split()
    n = 0
    while n < min(len(a), len(b)) - 1 and a[-1 - n].lower() == b[-1 - n].lower():
        n += 1
    return " ".join(a[: len(a) - n]), " ".join(b[: len(b) - n]), " ".join(a[len(a) - n:])


def axis_text(first: str, second: str, how: str = "not") -> str:
    """``"Regular, not irregular border"``, ``"Between regular and irregular border"``,
    ``"Regular and irregular border both"`` (``how``: ``"not"``, ``"between"``, ``"both"``)."""
    x, y, tail = _pair_words(first, second)
    tail = f" {tail}" if tail else ""
    if how == "between":
        return f"Between {x} and {y}{tail}"
    if how == "both":
        return f"{_cap(x)} and {y}{tail} both score high"
    return f"{_cap(x)}, not {y}{tail}"


# A phrase that is an adjective on its own or before a preposition ("asymmetric in two axes",
# "enlarged") describes rather than names a thing: its absence reads "Not ...", not "No ...". Only
# endings that are rarely a noun's count ("-ent", "-al", "-ar" are: stent, metal, scar).
_ADJECTIVE_ENDINGS = ("ic", "ous", "ive", "ible", "able", "less", "ful", "ular")
_PREPOSITIONS = frozenset("in at on with along across to of from within around near over under by".split())
_NOUNS_LIKE_ADJECTIVES = frozenset("cable table adhesive sedative".split())


def _descriptive(name: str) -> bool:
    """Whether ``name`` reads as a description ("asymmetric in two axes") rather than a thing ("globules")."""
    words = name.lower().split()
    if not words:
        return False
    first = words[0]
    adjective = (first.endswith(_ADJECTIVE_ENDINGS) or (len(first) >= 6 and first.endswith("ed"))) and (
        first not in _NOUNS_LIKE_ADJECTIVES)  # enlarged, pigmented; not "cable in the chest"
    return adjective and (len(words) == 1 or words[1] in _PREPOSITIONS)


def _absent(name: str, attribute: bool) -> str:
    """How an absent concept reads: "Not ..." for an attribute (a concept with an opposite phrase) or a
    description, "No ..." for a thing."""
    return f"Not {name}" if attribute or _descriptive(name) else f"No {name}"


def _single(name: str, p: float | None, z: float, attribute: bool, value: float) -> tuple[str, str, str | None]:
    """(state, text, concept whose map shows it) of one concept; ``attribute``: it has an
    opposite phrase, so its absence reads "Not ..." rather than "No ..."; ``value``: what the head
    weighs, less the training images' average. A percentile that says absent (present) while the
    head weighs the concept above (below) the average reads as borderline: a concept read as a
    probability that most training images show can be at the 30th percentile and still 0.99 likely.
    A finding that rests on the concept being below the average has no map: where the concept is
    strongest in the image is not what it says."""
    state = _state(p, z)
    if (state == "absent" and value > 0) or (state == "present" and value < 0):
        state = "borderline"
    text = {"present": _cap(name), "absent": _absent(name, attribute), "borderline": f"Borderline: {name}"}[state]
    return state, text, None if state == "absent" or value < 0 else name


def _on_axis(axis: Axis, p: Mapping[str, float | None], z: Mapping[str, float], toward: str) -> tuple[str, str, str | None]:
    """(state, text, concept whose map shows it) of an axis, from where each pole's score sits;
    ``toward``: the pole the finding's effect comes from (shown when the poles do not settle it)."""
    low, high = _level(p.get(axis.low), z[axis.low]), _level(p.get(axis.high), z[axis.high])
    lean = (high - low) / 2.0
    if min(low, high) >= PRESENT_FROM:
        return "borderline", axis_text(axis.low, axis.high, "both"), toward
    if lean > _AXIS_LEAN:
        return "present", axis_text(axis.high, axis.low), axis.high
    if lean < -_AXIS_LEAN:
        return "present", axis_text(axis.low, axis.high), axis.low
    return "borderline", axis_text(axis.low, axis.high, "between"), toward


def findings(
    scores: Mapping[str, float],
    percentiles: Mapping[str, float | None],
    coef: np.ndarray,
    classes: Sequence[str],
    concepts: Sequence[str],
    predicted: str,
    other: str | None,
    axes: Sequence[Axis] = (),
    values: Mapping[str, float] | None = None,
    probabilities: Mapping[str, float] | None = None,
) -> list[Finding]:
    """The findings that separate ``predicted`` from ``other``, strongest first.

    An axis is one finding when the weights compared use both its poles; when they use one, that
    concept is a finding of its own ("Not symmetric shape").

    Args:
        scores: every concept's standardised score in this image.
        percentiles: every concept's training percentile in this image (``None``: unknown).
        coef: the head's ``(classes, concepts)`` weights.
        classes, concepts: the head's row and column names.
        predicted, other: the classes weighed (``other=None``: the predicted class's own weights).
        axes: concept pairs that may be shown as one finding (:func:`concept_axes`).
        values: what the weights multiply, as the distance from a training image of average
            score (default: ``scores``): for a concept the model calibrates, its probability of
            being present less the training images' mean probability
            (``ConceptBottleneckModel.value_offsets``).
        probabilities: the probability of being present of each concept the model reads as a
            probability; these are judged present or absent by it, not by their percentile.
    """
    values = scores if values is None else values
    probabilities = probabilities or {}
    # where each concept reads as present (>= PRESENT_FROM) or absent (<= ABSENT_UP_TO)
    levels = {c: 100.0 * probabilities[c] if c in probabilities else percentiles.get(c) for c in concepts}
    col = {c: j for j, c in enumerate(concepts)}
    k, r = classes.index(predicted), (classes.index(other) if other is not None else None)
    diff = coef[k] - (coef[r] if r is not None else 0.0)
    both = [a for a in axes if diff[col[a.low]] != 0 and diff[col[a.high]] != 0]
    attributes = {c for a in axes for c in (a.low, a.high)}
    groups: list[tuple[str, ...]] = [(a.low, a.high) for a in both]
    grouped = {c for g in groups for c in g}
    groups += [(c,) for c in concepts if c not in grouped and diff[col[c]] != 0]
    out = []
    for group in groups:
        parts = {c: float(diff[col[c]] * values[c]) for c in group}
        effect = sum(parts.values())
        if len(group) == 1:
            state, text, seen = _single(group[0], levels[group[0]], scores[group[0]], group[0] in attributes,
                                          float(values[group[0]]))
        else:
            toward = max(group, key=lambda c: parts[c] * (1 if effect >= 0 else -1))
            state, text, seen = _on_axis(Axis(*group), levels, scores, toward)
        favours, against = (predicted, other) if effect >= 0 or other is None else (other, predicted)
        probs = tuple(probabilities.get(c) for c in group) if any(c in probabilities for c in group) else ()
        out.append(Finding(text, group, tuple(percentiles.get(c) for c in group), state, abs(effect),
                           favours, against, seen, probs))
    return sorted(out, key=lambda f: -f.effect)


def class_reliance(coef: np.ndarray, classes: Sequence[str], concepts: Sequence[str],
                   axes: Sequence[Axis] = ()) -> dict[str, list[tuple[str, float]]]:
    """Per class, what raises its odds in findings language, with the weight behind each.

    A positive weight reads as the concept present ("irregular border"), a negative one as it
    absent ("no globules"); an axis whose poles both carry a weight as the pole its weights lean
    to ("asymmetric, not symmetric shape"). Largest weights first. With two classes the weights are
    each class's less the other's (the log-odds it adds for one over the other, the unit of the
    report's odds and of the flagged weights; a head may split one effect as +w/2 and -w/2), and a
    concept is listed once, under the class its presence favours (a two-sided finding under each
    class, by the pole that favours it).
    """
    col = {c: j for j, c in enumerate(concepts)}
    attributes = {c for a in axes for c in (a.low, a.high)}
    two = len(classes) == 2
    if two:
        coef = np.asarray(coef, np.float64) - np.asarray(coef, np.float64)[::-1]
    out: dict[str, list[tuple[str, float]]] = {}
    for k, cls in enumerate(classes):
        rows, grouped = [], set()
        for a in axes:
            lo, hi = float(coef[k, col[a.low]]), float(coef[k, col[a.high]])
            if lo and hi:
                grouped |= {a.low, a.high}
                lean = hi - lo
                rows.append((axis_text(a.high, a.low) if lean > 0 else axis_text(a.low, a.high), abs(lean)))
        for c in concepts:
            w = float(coef[k, col[c]])
            if c not in grouped and (w > 0 or (w < 0 and not two)):
                rows.append((_cap(c) if w > 0 else _absent(c, c in attributes), abs(w)))
        out[cls] = sorted(rows, key=lambda t: -t[1])
    return out


def unused_concepts(coef: np.ndarray, concepts: Sequence[str]) -> list[str]:
    """The concepts with a zero weight for every class: the model ignores them."""
    return [c for j, c in enumerate(concepts) if not np.any(coef[:, j] != 0)]


def _prose(f: Finding) -> str:
    """A finding inside a sentence: "irregular border (82nd percentile)", "regular border scoring
    low (10th percentile)", "symmetric shape borderline (49th percentile)"."""
    if len(f.concepts) == 1 and f.state != "present":
        low = "absent" if f.probabilities and f.probabilities[0] is not None else "scoring low"
        return f"{f.concepts[0]} {low if f.state == 'absent' else 'borderline'} ({f.where_seen})"
    text = f.text[:1].lower() + f.text[1:] if not f.text[:2].isupper() else f.text
    return f"{text} ({f.where_seen})"


def summary_sentence(predicted: str, other: str | None, probabilities: Mapping[str, float],
                     drivers: Sequence[Finding]) -> str:
    """The one plain sentence that opens a report whose prediction is shown."""
    p = format_probability(probabilities[predicted])
    versus = f" over {other} ({format_probability(probabilities[other])})" if other is not None else ""
    support = [f for f in drivers if f.favours == predicted and f.effect > 0][:2]
    against = [f for f in drivers if f.favours != predicted and f.effect > 0][:1]
    if not support:
        return f"The model favours {predicted} ({p}){versus}, though no single finding stands out."
    because = " and ".join(_prose(f) for f in support)
    though = f"; {_prose(against[0])} points the other way" if against else ""
    return f"The model favours {predicted} ({p}){versus}, chiefly on {because}{though}."
