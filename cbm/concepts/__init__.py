"""The concept stage: clinical concepts per class from an LLM (or a curated list), filtered and stored.

    from cbm.concepts import generate_concepts, load_concepts
    concepts = generate_concepts("ham10000", "vllm")   # asks only for what the store lacks
    concepts = load_concepts("ham10000")               # the store alone, no server
    concepts.classes, concepts.concepts, concepts.by_class, concepts.prior()

Modules: :mod:`~cbm.concepts.prompts` (versioned prompt templates, answer schema and parsing),
:mod:`~cbm.concepts.presets` (``conf/llm`` presets), :mod:`~cbm.concepts.llm` (the OpenAI-compatible
client), :mod:`~cbm.concepts.filtering` (copies of the prompt, length, leakage, near-duplicates, cap),
:mod:`~cbm.concepts.store` (``concepts.json``, :class:`ConceptSet`, curated lists),
:mod:`~cbm.concepts.generate` (the content-addressed run), :mod:`~cbm.concepts.cli` (``cbm concepts``),
:mod:`~cbm.concepts.testing` (a scripted server) and :mod:`~cbm.concepts.fuzz` (mutated stores).
"""

from __future__ import annotations

from cbm.concepts.filtering import FilterConfig, FilterResult, filter_concepts
from cbm.concepts.generate import ConceptGenerationError, generate_concepts
from cbm.concepts.llm import AnswerError, LLMError
from cbm.concepts.presets import LLMConfig, LLMPresetError, list_llm_presets, load_llm_config
from cbm.concepts.prompts import DEFAULT_PROMPT_VERSION, PROMPTS, render_messages
from cbm.concepts.store import ConceptSet, load_concepts, save_curated

__all__ = [
    "ConceptSet",
    "load_concepts",
    "generate_concepts",
    "save_curated",
    "LLMConfig",
    "LLMPresetError",
    "load_llm_config",
    "list_llm_presets",
    "LLMError",
    "AnswerError",
    "ConceptGenerationError",
    "FilterConfig",
    "FilterResult",
    "filter_concepts",
    "PROMPTS",
    "DEFAULT_PROMPT_VERSION",
    "render_messages",
]
