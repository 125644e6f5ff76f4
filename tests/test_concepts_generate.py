"""The content-addressed concept run (cbm.concepts.generate) against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cbm.concepts import (
    ConceptGenerationError,
    LLMConfig,
    LLMError,
    generate_concepts,
    load_concepts,
    save_curated,
)
from cbm.concepts.store import CardInfo
from cbm.concepts.testing import Reply, ScriptedLLMServer, char_ngram_embed, class_asked

ANSWERS = {
    "melanoma": ["irregular border", "shiny white streaks", "atypical dots and globules", "melanoma-like pattern"],
    "nevus": ["regular pigment network", "symmetric shape", "Shiny-white streak"],
    "seborrheic keratosis": ["milia-like cysts", "comedo-like openings", "cerebriform pattern"],
}


@pytest.fixture
def card(tmp_path):
    classes = (("melanoma", "malignant"), ("nevus", "benign mole"), ("seborrheic keratosis", "benign, warty"))
    return CardInfo("toy-derm", "dermoscopy", classes, tmp_path)


def config_for(server, **changes):
    return LLMConfig(base_url=server.base_url, model="test-model", max_retries=2, **changes)


def stored(card):
    return json.loads(card.store_path.read_text())


def test_a_first_run_asks_once_per_class_and_a_second_run_sends_nothing(card, caplog):
    with ScriptedLLMServer(ANSWERS) as server, caplog.at_level("INFO", logger="cbm.concepts.generate"):
        first = generate_concepts(card, config_for(server), progress=False)
        # the log names the model asked for and the one that answers (a llama.cpp server serves its own)
        assert "asking test-model (served as scripted-model) at " in caplog.text
        assert len(server.requests) == 3
        assert sorted(class_asked(r) for r in server.requests) == sorted(ANSWERS)
        again = generate_concepts(card, config_for(server), progress=False)
        assert len(server.requests) == 3  # cache hit: zero requests
    assert again.by_class == first.by_class == load_concepts(card).by_class
    assert first.classes == ["melanoma", "nevus", "seborrheic keratosis"]
    assert first.by_class["melanoma"] == ["irregular border", "shiny white streaks", "atypical dots and globules"]
    # "Shiny-white streak" for nevus is the melanoma concept: one concept, both classes in the prior
    assert first.by_class["nevus"] == ["regular pigment network", "symmetric shape", "shiny white streaks"]
    assert first.concepts.count("shiny white streaks") == 1
    prior = first.prior()
    assert prior.shape == (3, len(first.concepts)) and prior.dtype == np.float32
    veil = first.concepts.index("shiny white streaks")
    assert prior[:, veil].tolist() == [1.0, 1.0, 0.0]
    assert prior.sum() == sum(len(v) for v in first.by_class.values())

    doc = stored(card)
    entry = doc["by_class"]["melanoma"]
    assert entry["source"] == "llm" and entry["proposed"] == ANSWERS["melanoma"]
    assert {"concept": "melanoma-like pattern", "rule": "leakage", "reason": "names the class 'melanoma'"} in entry["removed"]
    llm = entry["llm"]
    assert llm["model"] == "test-model" and llm["prompt_version"] == "v1"
    assert llm["server_host"].startswith("127.0.0.1:") and llm["temperature"] == 0.0 and llm["seed"] == 0
    assert llm["date"] and json.loads(llm["raw_response"])["concepts"] == ANSWERS["melanoma"]


def test_what_is_in_the_request_key_and_what_is_not(card):
    with ScriptedLLMServer(ANSWERS) as server:
        generate_concepts(card, config_for(server), progress=False)
        generate_concepts(card, config_for(server, timeout_s=5, max_concurrency=1), progress=False)
        assert len(server.requests) == 3  # transport settings do not change an answer
        generate_concepts(card, config_for(server, temperature=0.7), progress=False)
        assert len(server.requests) == 6  # sampling does
        changed = CardInfo(card.name, card.modality, (("melanoma", "malignant melanocytic tumour"),) + card.classes[1:],
                           card.folder)
        generate_concepts(changed, config_for(server, temperature=0.7), progress=False)
        assert len(server.requests) == 9  # a class description is in every class's prompt
        generate_concepts(card, config_for(server, temperature=0.7), refresh=True, progress=False)
        assert len(server.requests) == 12
    with ScriptedLLMServer(ANSWERS) as other_host:  # same model and prompt on another address
        generate_concepts(card, config_for(other_host, temperature=0.7), progress=False)
        assert other_host.requests == []


def test_curated_and_hand_edited_lists_are_never_replaced_silently(card, caplog):
    save_curated(card.folder, {"melanoma": ["asymmetry", "irregular border", "multiple colours"]}, note="ABCD rule")
    with ScriptedLLMServer(ANSWERS) as server:
        concepts = generate_concepts(card, config_for(server), progress=False)
        assert sorted(class_asked(r) for r in server.requests) == ["nevus", "seborrheic keratosis"]
        assert concepts.by_class["melanoma"] == ["asymmetry", "irregular border", "multiple colours"]
        assert concepts.sources == {"melanoma": "curated", "nevus": "llm", "seborrheic keratosis": "llm"}

        doc = stored(card)  # a person edits a generated list in the file
        doc["by_class"]["nevus"]["concepts"] = ["regular pigment network", "comma vessels"]
        card.store_path.write_text(json.dumps(doc))
        caplog.clear()
        concepts = generate_concepts(card, config_for(server), refresh=True, progress=False)
        assert "edited by hand" in caplog.text
        assert [class_asked(r) for r in server.requests[2:]] == ["seborrheic keratosis"]
        assert concepts.by_class["nevus"] == ["regular pigment network", "comma vessels"]
        assert concepts.by_class["melanoma"] == ["asymmetry", "irregular border", "multiple colours"]
        assert stored(card)["by_class"]["nevus"]["source"] == "curated"

        concepts = generate_concepts(card, config_for(server), refresh=True, replace_curated=True, progress=False)
        assert len(server.requests) == 6  # now asked for, because told to
        assert concepts.by_class["melanoma"][0] == "irregular border"


def test_a_class_missing_from_the_answers_keeps_the_rest_and_is_asked_alone_next_time(card):
    def responder(request, n):
        if class_asked(request) == "nevus":
            return Reply.concepts("melanoma", ["irregular border"])  # the answer is about another class
        return None

    with ScriptedLLMServer(ANSWERS, responder) as server:
        with pytest.raises(ConceptGenerationError, match=r"(?s)1 of 3 classes.*- nevus: unusable answer: .*about class 'melanoma'") as info:
            generate_concepts(card, config_for(server), progress=False)
    assert list(info.value.failures) == ["nevus"]
    assert sorted(stored(card)["by_class"]) == ["melanoma", "seborrheic keratosis"]
    with pytest.raises(ValueError, match=r"no concept list for classes \['nevus'\]"):
        load_concepts(card)
    with ScriptedLLMServer(ANSWERS) as fixed:
        concepts = generate_concepts(card, config_for(fixed), progress=False)
        assert [class_asked(r) for r in fixed.requests] == ["nevus"]
    assert concepts.by_class["nevus"][0] == "regular pigment network"


def test_a_fatal_server_error_stops_the_run_and_keeps_what_was_answered(card):
    def responder(request, n):
        return Reply(status=401, error="bad key") if class_asked(request) != "melanoma" else None

    with ScriptedLLMServer(ANSWERS, responder) as server:
        with pytest.raises(LLMError, match="refused the API key"):
            generate_concepts(card, config_for(server, max_concurrency=1), progress=False)
        assert len(server.requests) == 2  # melanoma, then the first 401: nothing more is sent
    assert list(stored(card)["by_class"]) == ["melanoma"]


def test_without_a_server_the_store_is_used_or_the_missing_classes_are_named(card):
    with pytest.raises(RuntimeError, match=r"no concept list for classes \['melanoma', 'nevus', 'seborrheic keratosis'\].*--llm vllm"):
        generate_concepts(card, None, progress=False)
    # the card is not a built-in one, so the command names it by its folder
    with pytest.raises(FileNotFoundError, match=r"has no concept list yet .* run `cbm concepts /\S+ --llm PRESET`"):
        load_concepts(card)
    with ScriptedLLMServer(ANSWERS) as server:
        made = generate_concepts(card, config_for(server), progress=False)
    before = card.store_path.read_bytes()
    offline = generate_concepts(card, {"base_url": None, "model": None}, progress=False)  # conf/llm/none.yaml
    assert offline.by_class == made.by_class
    assert card.store_path.read_bytes() == before  # nothing to do, nothing written


def test_filter_settings_and_embedding_filtering_stick_until_changed(card):
    answers = {**ANSWERS, "nevus": ["regular pigment network", "shiny whitish streaks", "symmetric shape"]}
    with ScriptedLLMServer(answers) as server:
        config = config_for(server)
        plain = generate_concepts(card, config, progress=False)
        assert "shiny whitish streaks" in plain.by_class["nevus"]

        embedded = generate_concepts(
            card, config, embed=char_ngram_embed, filter_config={"duplicate_threshold": 0.7}, progress=False
        )
        assert embedded.by_class["nevus"] == ["regular pigment network", "shiny white streaks", "symmetric shape"]
        assert stored(card)["filter"]["embedder"].endswith("char_ngram_embed")

        kept = generate_concepts(card, config, progress=False)  # no embedder given: the earlier filtering stands
        assert kept.by_class == embedded.by_class

        capped = generate_concepts(card, config, filter_config={"max_per_class": 2}, progress=False)
        assert all(len(v) <= 2 for v in capped.by_class.values())
        assert stored(card)["filter"]["config"]["duplicate_threshold"] == 0.7  # the other settings stay
        assert generate_concepts(card, config, progress=False).by_class == capped.by_class
        assert len(server.requests) == 3


def test_an_encoder_with_encode_text_can_filter(card):
    class TextTower:
        cache_key = "tower-v1"

        def encode_text(self, texts):
            return char_ngram_embed(texts)

    with ScriptedLLMServer({**ANSWERS, "nevus": ["shiny whitish streaks"]}) as server:
        concepts = generate_concepts(
            card, config_for(server), embed=TextTower(), filter_config={"duplicate_threshold": 0.7}, progress=False
        )
    assert concepts.by_class["nevus"] == ["shiny white streaks"]
    assert stored(card)["filter"]["embedder"] == "tower-v1"


def test_an_unnamed_embedder_is_applied_every_run_and_a_named_one_is_trusted(card):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return char_ngram_embed(texts)

    with ScriptedLLMServer(ANSWERS) as server:
        config = config_for(server)
        generate_concepts(card, config, embed=lambda t: counting(t), progress=False)
        generate_concepts(card, config, embed=lambda t: counting(t), progress=False)
        assert len(calls) == 2 and stored(card)["filter"]["embedder"] == "anonymous"
        generate_concepts(card, config, embed=lambda t: counting(t), embed_id="tower-v2", progress=False)
        generate_concepts(card, config, embed=lambda t: counting(t), embed_id="tower-v2", progress=False)
        assert len(calls) == 3 and stored(card)["filter"]["embedder"] == "tower-v2"
        assert len(server.requests) == 3


def test_two_concurrent_processes_leave_one_valid_store(card):
    def slow(request, n):
        return Reply.concepts(class_asked(request), ANSWERS[class_asked(request)], delay_s=0.3)

    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from cbm.concepts import LLMConfig, generate_concepts
        from cbm.concepts.store import CardInfo
        classes = (("melanoma", "malignant"), ("nevus", "benign mole"), ("seborrheic keratosis", "benign, warty"))
        card = CardInfo("toy-derm", "dermoscopy", classes, Path(sys.argv[1]))
        config = LLMConfig(base_url=sys.argv[2], model="test-model", max_concurrency=1)
        concepts = generate_concepts(card, config, progress=False)
        print(len(concepts.concepts))
        """
    )
    with ScriptedLLMServer(responder=slow) as server:
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(card.folder), server.base_url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert len(server.requests) == 3  # the second process waited for the lock, then found every answer
    concepts = load_concepts(card)
    assert [out.strip() for out, _ in outputs] == [str(len(concepts.concepts))] * 2
    assert sorted(concepts.by_class) == sorted(ANSWERS)
    assert not list(card.folder.glob(".concepts.json.*.tmp"))  # no temp file left behind


def test_an_answer_with_nothing_usable_keeps_the_stored_list_and_its_text(card):
    with ScriptedLLMServer(ANSWERS) as server:
        good = generate_concepts(card, config_for(server), progress=False)
    junk = {**ANSWERS, "melanoma": ["x" * 500, "melanoma"]}  # too long; the class name itself
    with ScriptedLLMServer(junk) as server:
        with pytest.raises(ConceptGenerationError, match="every one of the 2 proposed phrases was filtered out") as err:
            generate_concepts(card, config_for(server), refresh=True, progress=False)
    assert "The other classes' lists (2) are in" in str(err.value)
    assert load_concepts(card).by_class["melanoma"] == good.by_class["melanoma"]  # the good list stays
    rejected = stored(card)["rejected"]["melanoma"]
    assert "x" * 500 in rejected["raw_response"] and rejected["model"] == "test-model"
    with ScriptedLLMServer(ANSWERS) as server:  # the class is asked again, and the record goes
        generate_concepts(card, config_for(server), refresh=True, progress=False)
    assert "rejected" not in stored(card)


def test_server_credentials_stay_out_of_the_store(card):
    with ScriptedLLMServer(ANSWERS) as server:
        url = server.base_url.replace("http://", "http://alice:hunter2@")
        cfg = LLMConfig(base_url=url, model="test-model", max_retries=0)
        assert cfg.server_host == server.base_url.split("//")[1].split("/")[0]
        assert cfg.shown_url == server.base_url
        generate_concepts(card, cfg, progress=False)  # the user and password go to the server, not the file
    text = card.store_path.read_text()
    assert "hunter2" not in text and "alice" not in text and cfg.server_host in text
    dead = LLMConfig(base_url="http://alice:hunter2@127.0.0.1:9/v1", model="m", max_retries=0, timeout_s=2)
    with pytest.raises(LLMError) as err:  # nothing listens on port 9: the message names the server, not the password
        generate_concepts(card, dead, refresh=True, progress=False)
    assert "127.0.0.1:9" in str(err.value) and "hunter2" not in str(err.value)


def test_a_run_where_nothing_was_answered_says_nothing_was_saved(card):
    with ScriptedLLMServer(ANSWERS, lambda request, n: Reply(refusal="I cannot help with that.")) as server:
        with pytest.raises(ConceptGenerationError, match="No list was saved") as err:
            generate_concepts(card, config_for(server), progress=False)
    assert "kept, unchanged" not in str(err.value)


def test_a_rerun_where_nothing_was_answered_says_the_earlier_lists_are_kept(card):
    save_curated(card, {name: phrases[:2] for name, phrases in ANSWERS.items()})
    with ScriptedLLMServer(ANSWERS, lambda request, n: Reply(refusal="I cannot help with that.")) as server:
        with pytest.raises(ConceptGenerationError) as err:
            generate_concepts(card, config_for(server), replace_curated=True, progress=False)
    assert "are kept, unchanged, in" in str(err.value) and str(card.store_path) in str(err.value)
    assert load_concepts(card).by_class["nevus"] == ANSWERS["nevus"][:2]


def test_copies_of_the_prompt_are_filtered_with_their_reasons(card):
    """A small model repeats the answer template's placeholder and the prompt's examples (dermoscopy's
    "atypical pigment network" and "blue-white veil"): those are removed, with the rule and the reason."""
    copied = {**ANSWERS, "nevus": ["feature", "Feature 2", "blue-white veil", "Atypical pigment networks",
                                   "regular pigment network"]}
    with ScriptedLLMServer(copied) as server:
        concepts = generate_concepts(card, config_for(server), progress=False)
    assert concepts.by_class["nevus"] == ["regular pigment network"]
    removed = {item["concept"]: (item["rule"], item["reason"]) for item in stored(card)["by_class"]["nevus"]["removed"]}
    assert removed["feature"] == ("placeholder", "the answer template's placeholder 'feature', not a concept")
    assert removed["feature 2"][0] == "placeholder"
    assert removed["blue-white veil"][0] == "example"
    assert removed["atypical pigment networks"][1].startswith("the prompt's own example 'atypical pigment network'")
    assert "feature" not in concepts.concepts
    with ScriptedLLMServer({**ANSWERS, "nevus": ["feature", "blue-white veil"]}) as server:  # nothing of its own
        with pytest.raises(ConceptGenerationError, match=r"nevus: unusable answer: every one of the 2 proposed "
                           r"phrases was filtered out \('feature': the answer template's placeholder"):
            generate_concepts(card, config_for(server), refresh=True, progress=False)
        nevus = [r for r in server.requests if class_asked(r) == "nevus"]
    assert len(nevus) == 2 and "filtered out" in nevus[1]["messages"][-1]["content"]  # asked again, saying why
    assert load_concepts(card).by_class["nevus"] == ["regular pigment network"]  # the earlier list stays
    with ScriptedLLMServer(copied) as server:  # for a model trusted not to copy, examples may stay
        kept = generate_concepts(card, config_for(server), refresh=True, filter_config={"keep_prompt_examples": True},
                                 progress=False)
    assert kept.by_class["nevus"] == ["blue-white veil", "atypical pigment networks", "regular pigment network"]


def test_the_served_model_is_recorded_and_another_one_is_asked_again(card):
    with ScriptedLLMServer(ANSWERS, model="/models/a.Q4_1.gguf") as server:
        first = generate_concepts(card, config_for(server), progress=False)
        generate_concepts(card, config_for(server), progress=False)
        assert len(server.requests) == 3  # the same model behind the preset: cached
    assert first.llm["melanoma"]["served_model"] == "/models/a.Q4_1.gguf"
    assert first.provenance["classes"]["melanoma"]["served_model"] == "/models/a.Q4_1.gguf"
    assert stored(card)["by_class"]["nevus"]["llm"]["served_model"] == "/models/a.Q4_1.gguf"
    with ScriptedLLMServer(ANSWERS, model="/models/b.Q8_0.gguf") as other:  # same preset, another gguf
        again = generate_concepts(card, config_for(other), progress=False)
        assert len(other.requests) == 3
    assert again.llm["melanoma"]["served_model"] == "/models/b.Q8_0.gguf"
    with ScriptedLLMServer(ANSWERS, model="/models/b.Q8_0.gguf", list_models=False) as unlisted:
        generate_concepts(card, config_for(unlisted), progress=False)
        assert len(unlisted.requests) == 3  # a server that does not say what it serves is no cache hit either


def test_the_answer_check_uses_the_runs_filter_settings(card):
    """With keep_prompt_examples the prompt's own examples are usable: the check that asks again
    must not refuse what the run's filtering keeps (it used the default settings)."""
    from cbm.concepts.prompts import prompt_phrases

    examples = [p for p, kind in prompt_phrases("dermoscopy").items() if kind == "example"][:2]
    answers = {"melanoma": examples, "nevus": ["symmetric shape"], "seborrheic keratosis": ["milia-like cysts"]}
    with ScriptedLLMServer(answers) as server:
        concepts = generate_concepts(card, config_for(server), filter_config={"keep_prompt_examples": True},
                                     progress=False)
    assert concepts.by_class["melanoma"] == examples and len(server.requests) == 3  # nobody asked again


def test_ctrl_c_stops_asking_at_once_and_keeps_the_classes_answered(card, monkeypatch):
    """Ctrl-C while classes are in flight or queued: no queued class is sent, the run ends without waiting
    for the request in flight, and the store keeps every class answered before it."""
    import threading

    import cbm.concepts.generate as generate

    release = threading.Event()  # the request in flight hangs until the test is done with it

    def responder(request, n):
        if class_asked(request) != "melanoma":
            release.wait(timeout=20)  # a safety net so that a broken run cannot hang the suite for ever
        return None

    def interrupted_after_writing(path, doc):  # Ctrl-C arrives just after melanoma's list is saved
        real_write(path, doc)
        raise KeyboardInterrupt

    real_write = generate.write_store
    monkeypatch.setattr(generate, "write_store", interrupted_after_writing)
    try:
        with ScriptedLLMServer(ANSWERS, responder) as server:
            with pytest.raises(KeyboardInterrupt):
                generate_concepts(card, config_for(server, max_concurrency=1), progress=False)
            asked = [class_asked(r) for r in server.requests]
            release.set()
    finally:
        release.set()
    # nevus may or may not have left the queue before Ctrl-C; seborrheic keratosis, behind it, never did
    assert asked in (["melanoma"], ["melanoma", "nevus"])
    entry = stored(card)["by_class"]["melanoma"]
    assert list(stored(card)["by_class"]) == ["melanoma"] and entry["concepts"] == ANSWERS["melanoma"][:3]


def test_a_filter_that_empties_a_class_says_so_and_keeps_the_answer(card, caplog):
    """An embedder that puts every phrase on its class name (a text tower that does not know the words)
    leaves the class no concept: a warning names it and the rules, and the answer stays under "proposed"."""
    def same(texts):
        return np.ones((len(texts), 4), np.float32) / 2.0

    with ScriptedLLMServer(ANSWERS) as server:
        generate_concepts(card, config_for(server), embed=same, embed_id="blind", progress=False)
    assert "class 'nevus': the filter removed all 3 proposed concepts (" in caplog.text
    assert caplog.text.count("'nevus'") == 1  # said once, with what to do (the filter's own line is not repeated)
    entry = stored(card)["by_class"]["nevus"]
    assert entry["concepts"] == [] and entry["proposed"] == ANSWERS["nevus"]
    # the docs' plain command afterwards (no encoder: the embedding filtering stands) reads the store, not a crash
    again = generate_concepts(card, {"base_url": None, "model": None}, progress=False)
    assert again.by_class == {c: e["concepts"] for c, e in stored(card)["by_class"].items()}
