"""Filtering of proposed concepts: clean-up, length limits, class-name leakage, near-duplicates, a cap.

Every rule removes with a reason, and nothing disappears silently: :func:`filter_concepts` returns,
per class, the kept phrases and every removed one with the rule and reason, and the store keeps both.

Rules, in order, for each class's proposals (the LLM's order, most important first):

1. **clean**: an item holding a list (lines, ``;``, or three or more comma-separated parts of two
   words or more) is split into its concepts; surrounding quotes, list markers and end punctuation
   go, spaces collapse, words are lower-cased except acronyms ("ETT tip"); an empty phrase is removed.
2. **placeholder** and **example**: the answer template's placeholder ("feature", "feature 2") or
   one of the prompt's example phrases ("blue-white veil" for dermoscopy), repeated by the LLM:
   copied from the question, not an observation (``prompt_phrases``; see
   :func:`cbm.concepts.prompts.prompt_phrases`). An example can be a true feature of a class ("air
   bronchograms" for pneumonia): ``keep_prompt_examples=True`` keeps examples, for a model trusted
   not to copy; the placeholder always goes.
3. **length**: fewer than ``min_chars`` characters, more than ``max_chars`` or ``max_words``.
4. **leakage**: the phrase contains the name of a class (any class, not only its own: a concept
   that names a label leaks it), as whole words of any script, plurals (Latin ones too: nevi) and
   hyphens folded, or by its initials ("BCC" for basal cell carcinoma) or its name before a number
   ("covid" for covid-19); with a text embedder
   also a phrase whose cosine to a class name reaches ``leakage_threshold``.
5. **duplicates**: a phrase equal to an earlier one after folding case, plurals and hyphens, or
   (with a text embedder) at cosine ``duplicate_threshold`` or more. Within a class it is removed;
   across classes the class gets the earlier wording ("merged"), so a concept proposed for several
   classes is one concept that belongs to all of them. Phrases that differ by a negation or an
   opposite ("regular"/"irregular", "left"/"right") are never taken as duplicates.
6. **cap**: with ``max_per_class``, only the first that many kept concepts of a class remain.

Curated classes are not filtered (a person chose those phrases); their concepts come first, so a
generated phrase that duplicates a curated one is merged into the curated wording.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import ConfigDict
from pydantic.dataclasses import dataclass as pydantic_dataclass

from cbm.concepts.prompts import class_display_name

__all__ = ["FilterConfig", "FilterResult", "filter_concepts", "clean_phrase", "phrase_key"]

log = logging.getLogger(__name__)

TextEmbedder = Callable[[list[str]], np.ndarray]

_NEGATIONS = frozenset({"no", "not", "without", "absent", "absence", "non", "lack", "loss", "never"})
_PREFIX_OPPOSITES = ("ir", "un", "a", "in", "im", "il", "non", "dis", "ab")
# prefixes that name opposite (or other) degrees of one stem: hyperechoic / hypoechoic / isoechoic
_DEGREE_PREFIXES = (("hyper", "hypo", "iso", "normo"), ("macro", "micro"), ("over", "under"))
_WORD_OPPOSITES = {
    frozenset(pair)
    for pair in (
        ("left", "right"), ("upper", "lower"), ("well", "ill"), ("uni", "bi"), ("unilateral", "bilateral"),
        ("hyper", "hypo"), ("increased", "decreased"), ("high", "low"), ("large", "small"), ("thick", "thin"),
        ("central", "peripheral"), ("focal", "diffuse"), ("single", "multiple"), ("dark", "light"),
        ("present", "absent"), ("regular", "irregular"), ("symmetric", "asymmetric"), ("typical", "atypical"),
        ("sharp", "blurred"), ("smooth", "rough"), ("anterior", "posterior"), ("medial", "lateral"),
    )
}


@pydantic_dataclass(frozen=True, config=ConfigDict(strict=True))
class FilterConfig:
    """Settings of :func:`filter_concepts` (stored with the list, so a re-run keeps them).

    Types are checked (a pydantic dataclass): ``max_per_class="3"`` is an error, not a crash later.
    """

    min_chars: int = 3  # shorter phrases are removed
    max_chars: int = 60  # longer phrases are removed (a concept is a short noun phrase)
    max_words: int = 8  # phrases of more words are removed
    leakage_threshold: float = 0.85  # cosine to a class name at which a phrase counts as naming it (embedder only)
    duplicate_threshold: float = 0.92  # cosine at which two phrases count as the same concept (embedder only)
    max_per_class: int | None = None  # keep at most this many concepts per class; None = no cap
    keep_prompt_examples: bool = False  # keep a proposal that repeats one of the prompt's example phrases

    def __post_init__(self) -> None:
        if not 0 < self.min_chars <= self.max_chars:
            raise ValueError(f"filter: need 0 < min_chars <= max_chars, got {self.min_chars} and {self.max_chars}")
        if self.max_words < 1:
            raise ValueError(f"filter: max_words must be at least 1, got {self.max_words}")
        for key in ("leakage_threshold", "duplicate_threshold"):
            if not -1.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"filter: {key} is a cosine in [-1, 1], got {getattr(self, key)}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"filter: max_per_class must be at least 1 (or None), got {self.max_per_class}")

    def to_dict(self) -> dict:
        """Plain JSON-ready settings."""
        return asdict(self)

    def updated(self, changes: Mapping) -> FilterConfig:
        """A copy with ``changes`` applied; an unknown key is an error naming the known ones."""
        unknown = [k for k in changes if k not in self.__dataclass_fields__]
        if unknown:
            raise ValueError(f"filter: unknown settings {unknown}; known: {list(self.__dataclass_fields__)}")
        return FilterConfig(**{**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, values: Mapping) -> FilterConfig:
        """Settings back from :meth:`to_dict` (unknown keys are ignored: older stores stay readable)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class FilterResult:
    """One class after filtering."""

    kept: list[str] = field(default_factory=list)
    removed: list[dict[str, str]] = field(default_factory=list)  # {"concept", "rule", "reason"}

    def remove(self, concept: str, rule: str, reason: str) -> None:
        """Record ``concept`` as removed by ``rule`` for ``reason``."""
        self.removed.append({"concept": concept, "rule": rule, "reason": reason})


def clean_phrase(text: str) -> str:
    """A proposed phrase tidied: no list marker, quotes or end punctuation; lower case except acronyms."""
    text = " ".join(str(text).split())
    text = re.sub(r"^(?:[-*\u2022]|\d+[.)])\s*", "", text)  # "- x", "* x", "1. x", "2) x"
    previous = None
    while text != previous:  # quotes and punctuation at either end in any order: '"x";', 'x."', '.-x'
        previous = text
        text = text.strip(" \"'`\u201c\u201d\u2018\u2019").rstrip(".,;:!").lstrip(".,;:!-\u2013\u2014")
    words = [w if (len(w) > 1 and w.isupper()) else w.lower() for w in text.split(" ")]
    return " ".join(words)


def _singular(word: str) -> str:
    # keratoses, metastases, psoriases: Greek -sis plurals (not diseases, phases: -se words)
    if len(word) > 5 and word.endswith(("oses", "eses", "tases", "iases")):
        return word[:-2] + "is"
    if len(word) > 4 and word.endswith(("sses", "shes", "xes")):  # masses, rashes, boxes
        return word[:-2]
    if len(word) > 3 and word.endswith(("ches", "che")):  # patches and patch, aches and ache: one form each
        return word[:-2 if word.endswith("s") else -1]
    if len(word) > 3 and word.isascii() and word.isalpha() and word.endswith("i"):  # nevi, emboli: Latin -us plurals
        return word[:-1] + "us"
    if len(word) > 4 and word.isascii() and word.endswith("ae"):  # bullae, vertebrae: Latin -a plurals
        return word[:-1]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "ys")):
        return word[:-1]
    return word


def _tokens(text: str) -> list[str]:
    # words of any script (an answer in Chinese or Russian is words too, not nothing)
    return [_singular(t) for t in re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold().replace("_", " "))]


def _class_forms(name: str) -> list[list[str]]:
    """The token sequences that name a class in a phrase: its words; for two words or more, their
    initials ("basal cell carcinoma" -> bcc); a name ending in a number, its words before it (covid)."""
    words = _tokens(name)
    forms = [words]
    if len(words) >= 2 and all(w.isascii() for w in words):
        forms.append(["".join(w[0] for w in words)])
    while len(words) > 1 and words[-1].isdigit():
        words = words[:-1]
        forms.append(words)
    return forms


def split_items(item: str) -> list[str]:
    """One proposed item that holds several concepts, split: a list in one string (lines, ``;``), or
    three or more comma-separated parts of two words or more ("irregular border, blue-white veil, ...")."""
    parts = [p for p in re.split(r"[\n;]+", str(item)) if p.strip()]
    out = []
    for part in parts:
        pieces = [p.strip() for p in part.split(",")]
        out.extend(pieces if len(pieces) >= 3 and all(len(p.split()) >= 2 for p in pieces) else [part])
    return out or [str(item)]


def phrase_key(text: str) -> str:
    """What two phrases must share to be the same concept as text: case, plurals, hyphens folded."""
    tokens = _tokens(text)
    while tokens and tokens[0] in ("a", "an", "the"):
        tokens = tokens[1:]
    return " ".join(tokens)


def _contains(tokens: list[str], sub: list[str]) -> bool:
    n = len(sub)
    return n > 0 and any(tokens[i : i + n] == sub for i in range(len(tokens) - n + 1))


def _opposite(a: str, b: str) -> bool:
    """Whether two phrases differ by a negation or an opposite word (never duplicates, however close)."""
    ta, tb = set(_tokens(a)), set(_tokens(b))
    only_a, only_b = ta - tb, tb - ta
    if (only_a | only_b) & _NEGATIONS:
        return True
    for x in only_a:
        for y in only_b:
            if frozenset((x, y)) in _WORD_OPPOSITES:
                return True
            long, short = (x, y) if len(x) > len(y) else (y, x)
            if any(long == p + short for p in _PREFIX_OPPOSITES) or _other_degree(x, y):
                return True
    return False


def _other_degree(x: str, y: str) -> bool:
    """Whether two words are one stem with different degree prefixes (hyperdense / hypodense)."""
    for group in _DEGREE_PREFIXES:
        px = next((p for p in group if x.startswith(p) and len(x) > len(p) + 2), None)
        py = next((p for p in group if y.startswith(p) and len(y) > len(p) + 2), None)
        if px and py and px != py and x[len(px):] == y[len(py):]:
            return True
    return False


def _copied(phrase: str, offered: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """``(rule, reason)`` if ``phrase`` repeats what the prompt offered (a numbered placeholder too)."""
    key = phrase_key(phrase)
    base = re.sub(r"\s*\d+$", "", key)  # "feature 2", "feature2"
    hit = offered.get(key) or (offered.get(base) if offered.get(base, ("", ""))[1] == "placeholder" else None)
    if hit is None:
        return None
    original, kind = hit
    if kind == "placeholder":
        return "placeholder", f"the answer template's placeholder {original!r}, not a concept"
    return "example", (f"the prompt's own example {original!r}, copied from the question; add it by hand "
                       "(a curated list) if it belongs to this class")


def _normalised(embeddings: np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"the text embedder returned shape {array.shape} for {n} texts; expected ({n}, D)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def filter_concepts(
    proposals: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    *,
    curated: Mapping[str, Sequence[str]] | None = None,
    embed: TextEmbedder | None = None,
    config: FilterConfig | None = None,
    prompt_phrases: Mapping[str, str] | None = None,
    warn_emptied: bool = True,
) -> dict[str, FilterResult]:
    """Filter each class's proposed concepts; see the module docstring for the rules.

    Long on purpose: the rules run in order over shared state (the kept wording, the
    embeddings) and read best top to bottom.

    Args:
        proposals: class -> phrases as proposed (LLM order), for the classes to filter.
        class_names: every class of the card in card order (leakage is checked against all of them).
        curated: class -> hand-chosen phrases: kept as they are, and matched against as earlier wording.
        embed: texts -> L2-normalised embeddings (N, D), e.g. the encoder's text tower; ``None`` =
            string rules only (no embedding leakage or near-duplicate checks).
        config: thresholds and limits (default :class:`FilterConfig`).
        prompt_phrases: phrase -> ``"placeholder"`` or ``"example"``: what the prompt itself
            offered (:func:`cbm.concepts.prompts.prompt_phrases`); a proposal that repeats one is removed.
        warn_emptied: log a warning for each class left with no concept (off for a caller that says
            so in its own words, or asks again).

    Returns:
        class -> :class:`FilterResult`, for every class in ``proposals`` and ``curated``.
    """
    config = config or FilterConfig()
    curated = dict(curated or {})
    unknown = [c for c in [*proposals, *curated] if c not in class_names]
    if unknown:
        raise ValueError(f"classes {unknown} are not among the card's classes {list(class_names)}")
    results = {name: FilterResult() for name in class_names if name in proposals or name in curated}

    # Kept concepts so far across all classes: canonical wording -> key; curated wording first.
    canonical: list[str] = []
    key_to_canonical: dict[str, str] = {}
    for name in class_names:
        for phrase in curated.get(name, ()):
            if phrase not in results[name].kept:
                results[name].kept.append(phrase)
            if phrase not in key_to_canonical.values():
                canonical.append(phrase)
                key_to_canonical.setdefault(phrase_key(phrase), phrase)

    class_tokens = {name: _class_forms(class_display_name(name)) for name in class_names}
    offered = {phrase_key(p): (p, kind) for p, kind in (prompt_phrases or {}).items()
               if kind != "example" or not config.keep_prompt_examples}
    proposals = {name: [p for item in items for p in split_items(item)] for name, items in proposals.items()}
    cleaned = {name: [clean_phrase(p) for p in proposals[name]] for name in class_names if name in proposals}

    vectors: dict[str, np.ndarray] = {}
    if embed is not None:
        texts = sorted(
            {p for ps in cleaned.values() for p in ps if p} | set(canonical)
            | {class_display_name(n) for n in class_names}
        )
        if texts:
            matrix = _normalised(embed(texts), len(texts))
            vectors = dict(zip(texts, matrix))

    def owner_of(concept: str, skip: str) -> str:
        return next((n for n in results if n != skip and concept in results[n].kept), "another class")

    for name, phrases in cleaned.items():
        result = results[name]
        for original, phrase in zip(proposals[name], phrases):
            shown = phrase or str(original)
            if not phrase:
                result.remove(shown, "empty", "nothing left after clean-up")
                continue
            copied = _copied(phrase, offered)
            if copied is not None:
                result.remove(shown, *copied)
                continue
            n_words = len(phrase.split())
            if len(phrase) < config.min_chars:
                result.remove(shown, "length", f"too short ({len(phrase)} characters < {config.min_chars})")
                continue
            if len(phrase) > config.max_chars or n_words > config.max_words:
                result.remove(
                    shown, "length",
                    f"too long ({len(phrase)} characters, {n_words} words; limits {config.max_chars} and "
                    f"{config.max_words})",
                )
                continue
            tokens = _tokens(phrase)
            named = next((c for c in class_names if any(_contains(tokens, f) for f in class_tokens[c])), None)
            if named is not None:
                result.remove(shown, "leakage", f"names the class {named!r}")
                continue
            if vectors:
                sims = {c: float(vectors[phrase] @ vectors[class_display_name(c)]) for c in class_names}
                close = max(sims, key=sims.get)
                if sims[close] >= config.leakage_threshold:
                    result.remove(
                        shown, "leakage",
                        f"too close to the class name {close!r} (cosine {sims[close]:.3f} >= "
                        f"{config.leakage_threshold})",
                    )
                    continue
            same = key_to_canonical.get(phrase_key(phrase) or phrase)  # (a phrase without words is its own key)
            how = "same words"
            if same is None and vectors and canonical:
                candidates = [c for c in canonical if not _opposite(phrase, c)]
                if candidates:
                    sims_c = np.stack([vectors[c] for c in candidates]) @ vectors[phrase]
                    best = int(np.argmax(sims_c))
                    if sims_c[best] >= config.duplicate_threshold:
                        same = candidates[best]
                        how = f"cosine {sims_c[best]:.3f} >= {config.duplicate_threshold}"
            if same is not None:
                if same in result.kept:
                    why = "repeated" if phrase == same else f"duplicate of {same!r} ({how})"
                    result.remove(shown, "duplicate", why)
                    continue
                if phrase != same:
                    result.remove(shown, "merged", f"kept as {same!r}, proposed for {owner_of(same, name)!r} ({how})")
                result.kept.append(same)
                continue
            result.kept.append(phrase)
            canonical.append(phrase)
            key_to_canonical[phrase_key(phrase) or phrase] = phrase

    if config.max_per_class is not None:
        for name in cleaned:
            result = results[name]
            for phrase in result.kept[config.max_per_class :]:
                result.remove(phrase, "cap", f"beyond the first {config.max_per_class} concepts of the class")
            del result.kept[config.max_per_class :]
    for name in cleaned if warn_emptied else ():
        if not results[name].kept:
            log.warning("class %r has no concept left after filtering (%d removed)", name, len(results[name].removed))
    return results
