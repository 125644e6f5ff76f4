"""The LLM client against a real HTTP server on 127.0.0.1 (cbm.concepts.llm, cbm.concepts.testing).

The real ``openai`` client talks to :class:`ScriptedLLMServer`, so every failure below goes through
the same HTTP, parsing and retry code as with vLLM, Ollama, llama.cpp or OpenAI.
"""

from __future__ import annotations

import pytest
import yaml

from cbm.concepts.llm import (
    AnswerError,
    ConceptLLM,
    LLMConfig,
    LLMError,
    list_llm_presets,
    llm_presets_dir,
    load_llm_config,
)
from cbm.concepts.prompts import render_messages
from cbm.concepts.testing import Reply, ScriptedLLMServer, class_asked

CLASSES = [("pneumonia", "infection of the lung parenchyma"), ("normal", "no acute finding")]
MESSAGES = render_messages("chest x-ray", CLASSES, "pneumonia")
GOOD = ["lobar consolidation", "air bronchograms", "parapneumonic effusion"]


def make_llm(server, sleeps=None, **overrides):
    settings = {"backoff_s": 0.01, "max_retries": 3, **overrides}
    config = LLMConfig(base_url=server.base_url, model="test-model", **settings)
    return ConceptLLM(config, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def scripted(*replies):
    """A responder that plays ``replies`` in order, then answers normally."""

    def responder(request, n):
        return replies[n] if n < len(replies) else Reply.concepts(class_asked(request), GOOD)

    return responder


# --- presets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_llm_presets())
def test_every_preset_loads_and_keeps_keys_out_of_the_file(name):
    config = load_llm_config(name)
    assert config.name == name
    raw = yaml.safe_load((llm_presets_dir() / f"{name}.yaml").read_text())
    assert not any("key" in k and k != "api_key_env" for k in raw), "keys come from the environment only"
    if config.has_server:
        assert config.base_url.startswith("http") and config.model


def test_the_server_presets_exist():
    assert {"openai", "vllm", "ollama", "llamacpp"} <= set(list_llm_presets())
    assert load_llm_config("openai").api_key_env == "OPENAI_API_KEY"
    assert load_llm_config("vllm").server_host == "localhost:8000"


def test_bad_presets_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown LLM preset 'vlm'. Did you mean 'vllm'"):
        load_llm_config("vlm")
    bad = tmp_path / "mine.yaml"
    bad.write_text("base_url: http://x/v1\nmodel: m\napi_key: sk-123\n")
    with pytest.raises(ValueError, match="LLM preset 'mine': Unknown key 'api_key'. Did you mean 'api_key_env'"):
        load_llm_config(bad)
    bad.write_text("base_url: http://x/v1\n")
    with pytest.raises(ValueError, match="set `model` too"):
        load_llm_config(bad)
    bad.write_text("base_url: http://x/v1\nmodel: m\nstructured_output: grammar\n")
    with pytest.raises(ValueError, match="structured_output='grammar' is not one of auto, json_schema, json_mode"):
        load_llm_config(bad)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$OPENAI_API_KEY, which is not set"):
        load_llm_config("openai").api_key()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_llm_config("openai").api_key() == "sk-test"


# --- answers ----------------------------------------------------------------------------------------


def test_a_normal_answer_uses_the_json_schema_and_records_provenance():
    with ScriptedLLMServer({"pneumonia": GOOD}) as server:
        answer = make_llm(server, temperature=0.3, seed=7).ask(MESSAGES, "pneumonia")
    assert answer.concepts == GOOD
    assert answer.structured_output == "json_schema" and answer.attempts == 1
    assert answer.response_model == "scripted-model" and answer.finish_reason == "stop"
    assert '"lobar consolidation"' in answer.raw
    (request,) = server.requests
    assert request["model"] == "test-model" and request["temperature"] == 0.3 and request["seed"] == 7
    schema = request["response_format"]["json_schema"]
    assert request["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert set(schema["schema"]["required"]) == {"class_name", "concepts"}


def test_json_mode_is_used_when_asked_and_validated_locally():
    answer_text = '```json\n{"class_name": "pneumonia", "concepts": ["lobar consolidation"]}\n```'
    with ScriptedLLMServer(responder=lambda r, n: Reply(content=answer_text)) as server:
        answer = make_llm(server, structured_output="json_mode").ask(MESSAGES, "pneumonia")
    assert answer.concepts == ["lobar consolidation"] and answer.structured_output == "json_mode"
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_auto_falls_back_to_json_mode_when_the_server_rejects_schemas():
    def responder(request, n):
        if request["response_format"]["type"] == "json_schema":
            return Reply(status=400, error="response_format.type json_schema is not supported")
        return Reply.concepts("pneumonia", GOOD)

    with ScriptedLLMServer(responder=responder) as server:
        llm = make_llm(server)
        assert llm.ask(MESSAGES, "pneumonia").structured_output == "json_mode"
        assert llm.ask(MESSAGES, "pneumonia").concepts == GOOD
    # one probe, then JSON mode for good
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
    with ScriptedLLMServer(responder=responder) as server:
        with pytest.raises(LLMError, match=r"rejected the request \(400\)"):
            make_llm(server, structured_output="json_schema").ask(MESSAGES, "pneumonia")


def test_malformed_json_is_asked_again_once_then_reported_with_the_answer():
    broken = Reply(content='{"class_name": "pneumonia", "concepts": ["lobar consol')
    with ScriptedLLMServer(responder=scripted(broken)) as server:
        assert make_llm(server).ask(MESSAGES, "pneumonia").attempts == 2  # the re-ask succeeded
    with ScriptedLLMServer(responder=lambda r, n: broken) as server:
        with pytest.raises(AnswerError, match="not valid JSON") as info:
            make_llm(server).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 2
    assert info.value.raw == broken.content


def test_an_answer_about_another_class_or_without_concepts_is_rejected():
    with ScriptedLLMServer(responder=lambda r, n: Reply.concepts("normal", ["clear lungs"])) as server:
        with pytest.raises(AnswerError, match="about class 'normal', not the class asked about"):
            make_llm(server).ask(MESSAGES, "pneumonia")
    with ScriptedLLMServer(responder=lambda r, n: Reply(content='{"class_name": "pneumonia"}')) as server:
        with pytest.raises(AnswerError, match="no concepts for class 'pneumonia'"):
            make_llm(server, structured_output="json_mode").ask(MESSAGES, "pneumonia")


def test_a_refusal_is_reported_and_not_retried():
    refusal = Reply(content=None, refusal="I can't help with medical diagnosis.")
    with ScriptedLLMServer(responder=lambda r, n: refusal) as server:
        with pytest.raises(AnswerError, match="the model refused: \"I can't help with medical diagnosis.\""):
            make_llm(server).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", ["json_schema", "json_mode"])
def test_a_truncated_answer_names_max_tokens(mode):
    cut = Reply(content='{"class_name": "pneumonia", "concepts": ["lobar', finish_reason="length")
    with ScriptedLLMServer(responder=lambda r, n: cut) as server:
        with pytest.raises(AnswerError, match="cut off at max_tokens=64.*raise `max_tokens`") as info:
            make_llm(server, max_tokens=64, structured_output=mode).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 1 and server.requests[0]["max_tokens"] == 64
    assert info.value.raw == cut.content


# --- transport failures -------------------------------------------------------------------------------


def test_429_then_success_waits_as_the_server_says():
    limited = Reply(status=429, error="rate limited", headers={"Retry-After": "0.05"})
    sleeps = []
    with ScriptedLLMServer(responder=scripted(limited, limited)) as server:
        answer = make_llm(server, sleeps).ask(MESSAGES, "pneumonia")
    assert answer.concepts == GOOD and answer.attempts == 3
    assert sleeps == [0.05, 0.05]


def test_500_until_the_retries_run_out_backs_off_exponentially():
    sleeps = []
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=503, error="overloaded")) as server:
        with pytest.raises(LLMError, match=r"HTTP 503 \(overloaded\), after 4 attempts; is the server at .* up"):
            make_llm(server, sleeps, backoff_s=0.1, backoff_max_s=0.3).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 4
    assert len(sleeps) == 3
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2 and 0.2 <= sleeps[2] <= 0.3  # doubling, capped


def test_a_time_out_is_retried_and_then_named():
    slow = Reply(content='{"class_name": "pneumonia", "concepts": ["x y"]}', delay_s=1.5)
    with ScriptedLLMServer(responder=scripted(slow)) as server:
        answer = make_llm(server, timeout_s=0.3).ask(MESSAGES, "pneumonia")
    assert answer.concepts == GOOD and answer.attempts == 2
    with ScriptedLLMServer(responder=lambda r, n: slow) as server:
        with pytest.raises(LLMError, match=r"no answer within timeout_s=0.3 s, after 2 attempts; raise `timeout_s`"):
            make_llm(server, timeout_s=0.3, max_retries=1).ask(MESSAGES, "pneumonia")


def test_401_and_404_stop_at_once_and_name_the_key_to_fix(monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "wrong")
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=401, error="Invalid API key")) as server:
        with pytest.raises(LLMError, match=r"refused the API key \(401: Invalid API key\).*`api_key_env`.*\$MY_LLM_KEY"):
            make_llm(server, api_key_env="MY_LLM_KEY").ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 1
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=404, error="model 'test-model' does not exist")) as server:
        with pytest.raises(LLMError, match=r"404 for model 'test-model'.*fix `model`.*/v1/models.*`base_url`"):
            make_llm(server).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 1


def test_a_server_that_is_not_there_is_named():
    with ScriptedLLMServer() as server:
        base_url = server.base_url
    llm = ConceptLLM(LLMConfig(base_url=base_url, model="m", max_retries=1, backoff_s=0.01), sleep=lambda s: None)
    with pytest.raises(LLMError, match=r"cannot connect to http://127.0.0.1:\d+/v1.*after 2 attempts"):
        llm.ask(MESSAGES, "pneumonia")
