"""Versioned prompt templates that ask an LLM for the visual concepts of one class, and answer parsing.

A prompt casts the LLM as a specialist of the card's modality (a dermatologist for dermoscopy, a
radiologist for chest X-rays, ...) and asks, for one class at a time, for short noun phrases that
are visible in the image and never name a class. The whole class list (with descriptions) is in
the prompt so the LLM can prefer features that tell the classes apart.

Templates are never edited in place: a change of wording gets a new version, so the concept store
(which records the version, and keys its cache on the rendered text) stays reproducible.

The answer is a JSON object ``{"class_name": ..., "concepts": [...]}`` described by the pydantic
model :class:`ClassConcepts`; servers with structured outputs are held to its JSON schema, the
others are asked for JSON mode and the answer is validated here by :func:`parse_answer`.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from cbm.utils import unknown_name_message

__all__ = [
    "ClassConcepts",
    "PromptTemplate",
    "PROMPTS",
    "DEFAULT_PROMPT_VERSION",
    "InvalidAnswer",
    "get_prompt",
    "specialist_for",
    "class_display_name",
    "render_messages",
    "prompt_phrases",
    "parse_answer",
    "shorten",
]


class ClassConcepts(BaseModel):
    """Visual features of one class: short noun phrases seen in the image, most important first."""

    model_config = ConfigDict(extra="forbid")

    class_name: str  # the class the concepts describe, echoed so a mix-up can be caught
    concepts: list[str]  # short visual noun phrases, most important first


class InvalidAnswer(ValueError):
    """An answer that cannot be used: not JSON, wrong shape, wrong or missing class."""

    raw: str | None = None  # the answer's text, set by whoever has it


@dataclass(frozen=True)
class PromptTemplate:
    """One version of the concept prompt."""

    version: str  # stored with every generated list; a new wording gets a new version
    system: str  # formatted with {specialist}, {modality}
    user: str  # formatted with {specialist}, {modality}, {class_list}, {display}, {display_json}, {names}, {n},
    # {examples}; {display_json} is {display} escaped for a JSON string (the same text unless it has " or \)
    placeholders: tuple[str, ...] = ("feature",)  # the answer template's stand-in phrases: never a concept


_V1 = PromptTemplate(
    version="v1",
    system=(
        "You are an experienced {specialist}. You describe what can be seen in {modality} images in "
        "precise, standard clinical vocabulary, and you answer with a single JSON object only."
    ),
    user=(
        "A classifier sorts {modality} images into these classes:\n"
        "{class_list}\n\n"
        'List the visual features that a {specialist} looks for to recognise the class "{display}" '
        "in a {modality} image.\n\n"
        "Rules:\n"
        "1. Each feature is a short noun phrase of one to six words, such as {examples}.\n"
        "2. Each feature must be visible in the image itself: no patient history, symptoms, "
        "demographics, laboratory results, diagnoses or follow-up.\n"
        "3. Never use the name of a class ({names}) or an abbreviation of one inside a feature.\n"
        '4. Prefer features that tell "{display}" apart from the other classes.\n'
        "5. Give up to {n} distinct features, most important first.\n\n"
        'Answer with one JSON object: {{"class_name": "{display_json}", "concepts": ["feature", ...]}}'
    ),
)

PROMPTS: dict[str, PromptTemplate] = {_V1.version: _V1}
DEFAULT_PROMPT_VERSION = "v1"

# (words in the modality, the specialist who reads such images, two example phrases of the wanted style)
_SPECIALISTS: tuple[tuple[tuple[str, ...], str, tuple[str, str]], ...] = (
    (("dermoscop", "dermatoscop", "skin", "clinical photo"), "dermatologist",
     ("atypical pigment network", "blue-white veil")),
    (("x-ray", "xray", "radiograph", "ct", "computed tomography", "mri", "magnetic resonance", "ultrasound",
      "mammogra"), "radiologist", ("blunted costophrenic angle", "air bronchograms")),
    (("fundus", "retina", "oct", "optical coherence"), "ophthalmologist", ("cotton wool spots", "optic disc cupping")),
    (("histopath", "patholog", "microscop", "cytolog", "whole slide", "h&e"), "pathologist",
     ("nuclear pleomorphism", "glandular architecture")),
    (("endoscop", "colonoscop"), "gastroenterologist", ("mucosal erythema", "loss of vascular pattern")),
)


def shorten(text: object, limit: int = 200) -> str:
    """``text`` on one line, at most ``limit`` characters, cut between words (never inside one)."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = textwrap.shorten(flat, width=limit, placeholder=" …")
    return cut if cut != "…" else flat[: limit - 1] + "…"  # one giant word: no boundary to cut at


def get_prompt(version: str = DEFAULT_PROMPT_VERSION) -> PromptTemplate:
    """The prompt template of ``version``; an unknown version lists the known ones."""
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(unknown_name_message("prompt version", version, PROMPTS)) from None


def _specialist(modality: str) -> tuple[str, tuple[str, str]]:
    words = modality.lower()
    for keys, specialist, examples in _SPECIALISTS:
        if any(re.search(rf"(?<![a-z]){re.escape(k)}", words) for k in keys):
            return specialist, examples
    return f"clinician who reads {modality} images", ("well-defined margin", "central necrosis")


def specialist_for(modality: str) -> str:
    """The specialist the prompt casts the LLM as, e.g. ``"dermatologist"`` for ``"dermoscopy"``."""
    return _specialist(modality)[0]


def class_display_name(name: str) -> str:
    """A class name as the prompt writes it: identifiers' underscores become spaces."""
    return " ".join(name.replace("_", " ").split())


def render_messages(
    modality: str,
    classes: Sequence[tuple[str, str | None]],
    target: str,
    *,
    n_concepts: int = 20,
    version: str = DEFAULT_PROMPT_VERSION,
) -> list[dict[str, str]]:
    """Chat messages asking for the concepts of class ``target``.

    Args:
        modality: the card's modality, in words ("dermoscopy", "chest x-ray").
        classes: every class of the card as ``(name, description)``, in card order.
        target: the class to ask about (one of the names in ``classes``).
        n_concepts: how many concepts to ask for at most.
        version: the prompt template version.
    """
    names = [name for name, _ in classes]
    if target not in names:
        raise ValueError(f"class {target!r} is not one of the card's classes {names}")
    template = get_prompt(version)
    specialist, examples = _specialist(modality)
    class_list = "\n".join(
        f"- {class_display_name(name)}" + (f": {' '.join(desc.split())}" if desc else "") for name, desc in classes
    )
    fields = {
        "specialist": specialist,
        "modality": modality,
        "class_list": class_list,
        "display": class_display_name(target),
        "display_json": json.dumps(class_display_name(target), ensure_ascii=False)[1:-1],  # the answer template
        "names": ", ".join(f'"{class_display_name(n)}"' for n in names),
        "n": n_concepts,
        "examples": " or ".join(f'"{e}"' for e in examples),
    }
    return [
        {"role": "system", "content": template.system.format(**fields)},
        {"role": "user", "content": template.user.format(**fields)},
    ]


def prompt_phrases(modality: str, version: str = DEFAULT_PROMPT_VERSION) -> dict[str, str]:
    """Phrases the prompt itself hands the LLM, each with its kind: ``"placeholder"`` for the answer
    template's stand-ins (``"feature"``), ``"example"`` for the modality's example phrases.

    An answer that repeats one copies the question instead of describing the class; the filter
    removes such phrases (a curated list may still hold them).
    """
    template = get_prompt(version)
    _, examples = _specialist(modality)
    return {**{phrase: "placeholder" for phrase in template.placeholders}, **{e: "example" for e in examples}}


def _same_class(a: str, b: str) -> bool:
    return class_display_name(a).casefold() == class_display_name(b).casefold()


def _json_object(text: str) -> object:
    """The JSON value in ``text``, tolerating a Markdown code fence or prose around one object."""
    stripped = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.S | re.I)
    if fence:
        stripped = fence.group(1)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as first:
        start, end = stripped.find("{"), stripped.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(stripped[start : end + 1])
            except json.JSONDecodeError:
                pass
            try:  # one object, then prose with a brace of its own, or a second object
                return json.JSONDecoder().raw_decode(stripped, start)[0]
            except json.JSONDecodeError:
                pass
        raise InvalidAnswer(f"the answer is not valid JSON ({first.msg.removesuffix(' at')} at char {first.pos}): "
                            f"{shorten(stripped, 120)!r}") from None


def parse_answer(text: str | None, class_name: str) -> list[str]:
    """The concept phrases of ``class_name`` in an LLM answer, or :class:`InvalidAnswer`.

    Accepts the schema's ``{"class_name": ..., "concepts": [...]}`` (``class_name`` may be left out,
    but if given it must be the class asked about) and, from servers without structured outputs,
    ``{"<class name>": [...]}``.
    """
    if text is None or not text.strip():
        raise InvalidAnswer("the answer is empty")
    obj = _json_object(text)
    if not isinstance(obj, dict):
        raise InvalidAnswer(f"the answer is JSON but not an object (got {type(obj).__name__})")
    concepts = obj.get("concepts")
    if concepts is None:
        keyed = [v for k, v in obj.items() if isinstance(k, str) and _same_class(k, class_name)]
        if keyed:
            concepts = keyed[0]
    answered = obj.get("class_name")
    if isinstance(answered, str) and answered.strip() and not _same_class(answered, class_name):
        raise InvalidAnswer(f"the answer is about class {answered!r}, not the class asked about ({class_name!r})")
    if concepts is None:
        raise InvalidAnswer(f"the answer has no concepts for class {class_name!r} (keys: {sorted(map(str, obj))})")
    try:
        parsed = ClassConcepts(class_name=class_name, concepts=concepts)
    except Exception as exc:  # pydantic.ValidationError: say what is wrong without a wall of text
        raise InvalidAnswer(f"'concepts' must be a list of strings, got {shorten(json.dumps(concepts), 120)}") from exc
    phrases = [c for c in parsed.concepts if c.strip()]
    if not phrases:
        raise InvalidAnswer(f"the answer lists no concepts for class {class_name!r}")
    return phrases
