"""Prompt templates and answer parsing (cbm.concepts.prompts)."""

from __future__ import annotations

import json

import pytest

from cbm.concepts.prompts import (
    DEFAULT_PROMPT_VERSION,
    PROMPTS,
    ClassConcepts,
    InvalidAnswer,
    parse_answer,
    prompt_phrases,
    render_messages,
    shorten,
    specialist_for,
)
from cbm.concepts.testing import class_asked

CLASSES = [("melanoma", "malignant melanocytic tumour"), ("melanocytic_nevus", "benign mole"), ("other", None)]


@pytest.mark.parametrize(
    ("modality", "specialist"),
    [
        ("dermoscopy", "dermatologist"),
        ("chest x-ray", "radiologist"),
        ("Chest X-ray (PA/AP)", "radiologist"),
        ("retinal fundus photograph", "ophthalmologist"),
        ("histopathology (H&E)", "pathologist"),
        ("doctor's notes", "clinician who reads doctor's notes images"),  # "oct" inside a word is not OCT
    ],
)
def test_the_prompt_casts_a_specialist_of_the_modality(modality, specialist):
    assert specialist_for(modality) == specialist
    system, user = render_messages(modality, CLASSES, "melanoma")
    assert specialist in system["content"] and specialist in user["content"]


def test_the_prompt_names_every_class_asks_about_one_and_forbids_class_names():
    system, user = render_messages("dermoscopy", CLASSES, "melanocytic_nevus", n_concepts=12)
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    # every class with its description, identifiers shown as words
    assert "- melanoma: malignant melanocytic tumour" in text
    assert "- melanocytic nevus: benign mole" in text
    assert "- other\n" in text
    assert 'recognise the class "melanocytic nevus"' in text
    assert "Never use the name of a class" in text and '"melanoma", "melanocytic nevus", "other"' in text
    assert "up to 12 distinct features" in text
    assert '{"class_name": "melanocytic nevus", "concepts": ["feature", ...]}' in text


def test_rendering_is_deterministic_and_versioned():
    a = render_messages("dermoscopy", CLASSES, "melanoma")
    assert a == render_messages("dermoscopy", CLASSES, "melanoma")
    assert a != render_messages("dermoscopy", CLASSES, "other")
    assert DEFAULT_PROMPT_VERSION in PROMPTS
    with pytest.raises(ValueError, match="Unknown prompt version 'v0'.*Available: v1"):
        render_messages("dermoscopy", CLASSES, "melanoma", version="v0")
    with pytest.raises(ValueError, match="'nevus' is not one of the card's classes"):
        render_messages("dermoscopy", CLASSES, "nevus")


def test_the_schema_is_strict_and_requires_both_fields():
    schema = ClassConcepts.model_json_schema()
    assert set(schema["required"]) == {"class_name", "concepts"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "text",
    [
        '{"class_name": "melanocytic nevus", "concepts": ["regular network", "  ", "globules"]}',
        '```json\n{"class_name": "Melanocytic_Nevus", "concepts": ["regular network", "globules"]}\n```',
        'Here you go: {"concepts": ["regular network", "globules"]} Hope it helps.',
        '{"melanocytic nevus": ["regular network", "globules"]}',
        '{"concepts": ["regular network", "globules"]}\nNote: {braces} in the prose after it.',
        '{"concepts": ["regular network", "globules"]} {"concepts": ["a second object"]}',
    ],
)
def test_answers_in_the_usual_shapes_parse(text):
    assert parse_answer(text, "melanocytic_nevus") == ["regular network", "globules"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('{"class_name": "melanoma", "concepts": ["a b c"', "not valid JSON"),
        ('["regular network"]', "not an object"),
        ('{"class_name": "melanoma", "concepts": ["irregular border"]}', "about class 'melanoma'"),
        ('{"class_name": "melanocytic nevus"}', "no concepts for class"),
        ('{"other": ["x"]}', "no concepts for class"),
        ('{"class_name": "melanocytic nevus", "concepts": "regular network"}', "must be a list of strings"),
        ('{"class_name": "melanocytic nevus", "concepts": [1, 2]}', "must be a list of strings"),
        ('{"class_name": "melanocytic nevus", "concepts": []}', "lists no concepts"),
    ],
)
def test_unusable_answers_say_why(text, message):
    with pytest.raises(InvalidAnswer, match=message):
        parse_answer(text, "melanocytic_nevus")


def test_the_json_error_quotes_the_start_of_the_answer():
    with pytest.raises(InvalidAnswer) as info:
        parse_answer("Sure! The features are: irregular border, blue-white veil", "melanoma")
    assert "Sure! The features are" in str(info.value)
    json.dumps(str(info.value))  # one line, printable
    with pytest.raises(InvalidAnswer, match=r"\(Invalid control character at char \d+\)"):  # "at" once
        parse_answer('{"concepts": ["regular\x01 network"', "melanoma")


def test_the_phrases_the_prompt_offers_are_its_placeholder_and_the_modality_examples():
    offered = prompt_phrases("dermoscopy")
    assert offered == {"feature": "placeholder", "atypical pigment network": "example", "blue-white veil": "example"}
    user = render_messages("dermoscopy", CLASSES, "melanoma")[1]["content"]
    assert all(f'"{phrase}"' in user for phrase in offered)  # each is in the question, word for word
    assert prompt_phrases("chest x-ray")["air bronchograms"] == "example"


def test_shorten_cuts_between_words():
    text = " ".join(f"word{i}" for i in range(100))
    cut = shorten(text, 50)
    assert len(cut) <= 50 and cut.endswith(" …") and text.startswith(cut[:-2])
    assert cut[:-2].split() == text.split()[: len(cut[:-2].split())]
    assert shorten("short\n  text") == "short text"
    assert shorten("x" * 300, 20) == "x" * 19 + "…"  # one word longer than the limit: no boundary to cut at


def test_the_answer_template_is_valid_json_for_class_names_with_quotes_and_backslashes():
    """The model copies the template: a class name with a quote or a backslash must be escaped in it, or
    the copy is broken JSON (or names another class) and the class can never be answered."""
    classes = [('melanoma "in situ"', None), ("Ménétrier's \\ disease", None), ("nævus 痣", None)]
    for name, _ in classes:
        user = render_messages("dermoscopy", classes, name)[1]["content"]
        template = user[user.index('{"class_name": '):]
        echoed = json.loads(template.split(', "concepts"')[0] + "}")["class_name"]
        assert echoed == name
        assert f'recognise the class "{name}"' in user  # the prose keeps the name as the card writes it
        assert parse_answer(json.dumps({"class_name": echoed, "concepts": ["dark dots"]}), name) == ["dark dots"]
        assert class_asked({"messages": render_messages("dermoscopy", classes, name)}) == name  # the test server's
