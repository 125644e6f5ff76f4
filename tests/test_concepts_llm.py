"""The LLM client against a real HTTP server on 127.0.0.1 (cbm.concepts.llm, cbm.concepts.testing).

The real ``openai`` client talks to :class:`ScriptedLLMServer`, so every failure below goes through
the same HTTP, parsing and retry code (the SDK's own) as with vLLM, Ollama, llama.cpp or OpenAI.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from cbm.concepts.llm import (
    AnswerError,
    ConceptLLM,
    LLMConfig,
    LLMError,
    LLMPresetError,
    list_llm_presets,
    llm_presets_dir,
    load_llm_config,
)
from cbm.concepts.prompts import InvalidAnswer, render_messages
from cbm.concepts.testing import Reply, ScriptedLLMServer, class_asked

CLASSES = [("pneumonia", "infection of the lung parenchyma"), ("normal", "no acute finding")]
MESSAGES = render_messages("chest x-ray", CLASSES, "pneumonia")
GOOD = ["lobar consolidation", "air bronchograms", "parapneumonic effusion"]


def make_llm(server, **overrides):
    config = LLMConfig(base_url=server.base_url, model="test-model", **{"max_retries": 3, **overrides})
    return ConceptLLM(config)


def gaps(server):
    """Seconds between the chat requests the server received (the client's waits, plus HTTP time)."""
    return [b - a for a, b in zip(server.arrivals, server.arrivals[1:])]


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
    cases = [
        ("base_url: http://x/v1\nmodel: m\napi_key: sk-123\n", "api_key",
         "api_key is not a preset key. Did you mean 'api_key_env'"),
        ("base_url: http://x/v1\n", None, "base_url and model go together; set `model` too"),
        ("base_url: http://x/v1\nmodel: m\nstructured_output: grammar\n", "structured_output",
         "structured_output is 'grammar', but it should be 'auto', 'json_schema' or 'json_mode'"),
        ("base_url: http://x/v1\nmodel: m\ntimeout_s: 0\n", "timeout_s",
         r"timeout_s is 0, but it should be greater than 0. Set `timeout_s` to the time limit per request"),
        ("base_url: http://x/v1\nmodel: m\nseed: 'one'\n", "seed", "seed is 'one', but it should be a valid integer"),
        ("base_url: http://x/v1\nmodel: m\nmax_retries: -1\n", "max_retries", "greater than or equal to 0"),
        ("- base_url\n", None, "must be a flat mapping of keys, not list"),
        ("base_url: [\n", None, "is not valid YAML"),
    ]
    for text, key, message in cases:
        bad.write_text(text)
        with pytest.raises(LLMPresetError, match=message) as info:
            load_llm_config(bad)
        assert info.value.path == bad and info.value.field == key
        assert str(info.value).startswith(f"LLM preset {bad}: ")
    with pytest.raises(LLMPresetError, match="max_concurrency is 0"):  # a mapping (a Hydra group) is checked too
        load_llm_config({"base_url": "http://x/v1", "model": "m", "max_concurrency": 0})
    with pytest.raises(LLMPresetError, match="timeout_s is -1"):  # and so are command-line overrides
        load_llm_config("vllm").replace(timeout_s=-1)
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
    assert answer.concepts == ["lobar consolidation"] and answer.structured_output == "json_mode+schema"
    response_format = server.requests[0]["response_format"]  # llama.cpp's own form of a schema in JSON mode
    assert response_format["type"] == "json_object"
    assert set(response_format["schema"]["required"]) == {"class_name", "concepts"}


def test_auto_falls_back_to_json_mode_when_the_server_rejects_schemas():
    def responder(request, n):
        if request["response_format"]["type"] == "json_schema":
            return Reply(status=400, error="response_format.type json_schema is not supported")
        return Reply.concepts("pneumonia", GOOD)

    with ScriptedLLMServer(responder=responder) as server:
        llm = make_llm(server)
        assert llm.ask(MESSAGES, "pneumonia").structured_output == "json_mode+schema"
        assert llm.ask(MESSAGES, "pneumonia").concepts == GOOD
    # one probe, then JSON mode for good
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
    assert all("schema" in r["response_format"] for r in server.requests[1:])
    with ScriptedLLMServer(responder=responder) as server:
        with pytest.raises(LLMError, match=r"refused the answer schema \(HTTP 400: response_format.type json_schema "
                           r"is not supported\); set `structured_output: auto` in the LLM config"):
            make_llm(server, structured_output="json_schema").ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 1


def test_a_schema_refused_with_a_500_is_not_retried_and_the_ladder_goes_on():
    """llama.cpp answers OpenAI's json_schema form with HTTP 500; a server may refuse llama.cpp's form too."""
    refusal = "1 validation error: ('body', 'response_format', 'type'): Input should be 'text' or 'json_object'"

    def responder(request, n):
        form = request["response_format"]
        if form["type"] == "json_schema" or "schema" in form:
            return Reply(status=500, error=refusal)
        return Reply.concepts("pneumonia", GOOD)

    with ScriptedLLMServer(responder=responder) as server:
        llm = make_llm(server, max_retries=4)
        answer = llm.ask(MESSAGES, "pneumonia")
        assert llm.ask(MESSAGES, "pneumonia").structured_output == "json_mode"  # remembered for the run
    assert answer.concepts == GOOD and answer.structured_output == "json_mode" and answer.attempts == 3
    assert len(server.requests) == 4  # two refusals, neither retried as transient, then one request per answer
    assert [r["response_format"] for r in server.requests[2:]] == [{"type": "json_object"}] * 2


def test_classes_asked_at_once_see_a_schema_refusal_once():
    def responder(request, n):
        if request["response_format"]["type"] == "json_schema":
            return Reply(status=500, error="response_format: Input should be 'text' or 'json_object'", delay_s=0.2)
        return Reply.concepts("pneumonia", GOOD)

    with ScriptedLLMServer(responder=responder) as server:
        llm = make_llm(server)
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: llm.ask(MESSAGES, "pneumonia"), range(4)))
    assert [a.structured_output for a in answers] == ["json_mode+schema"] * 4
    assert [r["response_format"]["type"] for r in server.requests].count("json_schema") == 1  # one probe per run
    assert len(server.requests) == 5


def test_malformed_json_is_asked_again_once_then_reported_with_the_answer():
    broken = Reply(content='{"class_name": "pneumonia", "concepts": ["lobar consol')
    with ScriptedLLMServer(responder=scripted(broken)) as server:
        assert make_llm(server).ask(MESSAGES, "pneumonia").attempts == 2  # the re-ask succeeded
    with ScriptedLLMServer(responder=lambda r, n: broken) as server:
        with pytest.raises(AnswerError, match="not valid JSON") as info:
            make_llm(server).ask(MESSAGES, "pneumonia")
    assert len(server.requests) == 2
    assert info.value.raw == broken.content
    first, again = server.requests  # at temperature 0 the same request would get the same answer: it changes
    assert first["messages"] == MESSAGES and first["seed"] == 0 and first["temperature"] == 0.0
    assert again["seed"] == 1 and again["messages"][: len(MESSAGES)] == MESSAGES
    assert again["messages"][-2] == {"role": "assistant", "content": broken.content}
    assert again["messages"][-1]["role"] == "user"
    assert "That answer cannot be used: the answer is not valid JSON" in again["messages"][-1]["content"]


def test_a_check_that_refuses_the_answer_asks_again_saying_why():
    def check(concepts):
        if "feature" in concepts:
            raise InvalidAnswer("'feature' is the answer template's placeholder")

    placeholder = Reply.concepts("pneumonia", ["feature"])
    with ScriptedLLMServer(responder=scripted(placeholder)) as server:
        answer = make_llm(server, seed=None).ask(MESSAGES, "pneumonia", check)
    assert answer.concepts == GOOD and answer.attempts == 2
    assert "seed" not in server.requests[1]  # no seed to move on: the message alone changes the request
    assert "'feature' is the answer template's placeholder" in server.requests[1]["messages"][-1]["content"]
    with ScriptedLLMServer(responder=lambda r, n: placeholder) as server:
        with pytest.raises(AnswerError, match="unusable answer: 'feature' is the answer template's placeholder"):
            make_llm(server).ask(MESSAGES, "pneumonia", check)
    assert len(server.requests) == 2


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


# --- transport failures: retried by the openai SDK (max_retries, back-off, Retry-After) -----------------


def test_429_then_success_waits_as_the_server_says():
    limited = Reply(status=429, error="rate limited", headers={"Retry-After": "0.05"})
    with ScriptedLLMServer(responder=scripted(limited, limited)) as server:
        answer = make_llm(server).ask(MESSAGES, "pneumonia")
    assert answer.concepts == GOOD and answer.attempts == 3
    # the server's 0.05 s, not the SDK's own back-off (0.375 s or more before a first retry)
    assert all(0.05 <= gap < 0.3 for gap in gaps(server)), gaps(server)


def test_500_until_the_retries_run_out_backs_off_exponentially():
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=503, error="overloaded")) as server:
        with pytest.raises(LLMError) as info:
            make_llm(server, max_retries=2).ask(MESSAGES, "pneumonia")
    message = str(info.value)
    assert re.search(r"answered HTTP 503 \(overloaded\) to all 3 attempts; it is up but failing or overloaded: see "
                     r"its log, lower `max_concurrency` or raise `max_retries`", message), message
    assert "is the server" not in message  # it is up: it answered
    assert len(server.requests) == 3
    first, second = gaps(server)
    assert first >= 0.3 and second > 1.3 * first, gaps(server)  # exponential back-off


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
        # a base_url without /v1: an address without it can be right (Gemini's), so the model comes first ...
        config = LLMConfig(base_url=server.base_url.removesuffix("/v1"), model="test-model", max_retries=0)
        with pytest.raises(LLMError, match=r"fix `model`"):
            ConceptLLM(config).ask(MESSAGES, "pneumonia")
    # ... but where GET /models answered 404 too, the address is the likelier fault, and named first
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=404, error="not found"), list_models=False) as server:
        llm = ConceptLLM(LLMConfig(base_url=server.base_url.removesuffix("/v1"), model="test-model", max_retries=0))
        assert llm.served_model() is None
        with pytest.raises(LLMError, match=r"404 for model 'test-model'.*`base_url` http://127.0.0.1:\d+ does not end "
                                           r"in /v1.*e\.g\. http://127.0.0.1:\d+/v1\), or else `model`"):
            llm.ask(MESSAGES, "pneumonia")


def test_a_server_that_is_not_there_is_named():
    with ScriptedLLMServer() as server:
        base_url = server.base_url
    config = LLMConfig(base_url=base_url, model="m", max_retries=1)
    with pytest.raises(LLMError, match=r"cannot connect to http://127.0.0.1:\d+/v1 .* after 2 attempts; is the "
                       r"server at http://127.0.0.1:\d+/v1 up and serving 'm'\? Start it, or fix `base_url`"):
        ConceptLLM(config).ask(MESSAGES, "pneumonia")
    with pytest.raises(LLMError, match="while listing its models, after 2 attempts; is the server"):
        ConceptLLM(config).served_model()


def test_a_long_server_message_is_cut_between_words():
    words = [f"word{i}" for i in range(200)]
    with ScriptedLLMServer(responder=lambda r, n: Reply(status=400, error=" ".join(words))) as server:
        with pytest.raises(LLMError, match=r"rejected the request \(400\): word0 word1 .* …; check `model`") as info:
            make_llm(server).ask(MESSAGES, "pneumonia")
    quoted = str(info.value).split("(400): ")[1].split(" …")[0].split()
    assert quoted == words[: len(quoted)] and len(quoted) > 10  # whole words only, then the mark


# --- the served model ------------------------------------------------------------------------------


def test_the_served_model_is_what_the_server_lists():
    with ScriptedLLMServer(model="/models/SmolLM2-135M-Instruct.Q4_1.gguf") as server:
        llm = make_llm(server)  # the preset says "test-model"; a llama.cpp server serves its one gguf whatever
        assert llm.served_model() == "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    with ScriptedLLMServer(model="test-model") as server:
        assert make_llm(server).served_model() == "test-model"
    with ScriptedLLMServer(list_models=False) as server:
        assert make_llm(server).served_model() is None  # a server without /models: matched by name alone


def test_a_web_page_at_base_url_is_named_as_not_the_openai_api():
    """A proxy's login page or a web UI answers 200 with HTML: the error names the address to fix."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Page(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _page(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>sign in</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        llm = ConceptLLM(LLMConfig(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m", max_retries=0))
        with pytest.raises(LLMError, match=r"\(asking for concepts\) answered with something other than the OpenAI "
                                           r"API's JSON: set `base_url`.*ending in /v1"):
            llm.ask(MESSAGES, "pneumonia")
        with pytest.raises(LLMError, match=r"\(listing its models\) answered with something other"):
            llm.served_model()
    finally:
        server.shutdown()


def test_a_password_in_base_url_reaches_no_log(caplog, monkeypatch):
    # `cbm concepts` quiets the HTTP library for its progress bar, and a logging config may have turned
    # loggers off: an earlier test in this process may have done either
    for name in ("httpx", "httpx2"):
        caplog.set_level(logging.DEBUG, logger=name)  # restored after the test
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    with ScriptedLLMServer(responder=scripted()) as server:
        config = LLMConfig(base_url=server.base_url.replace("http://", "http://alice:S3CRETPW@"), model="test-model")
        with caplog.at_level("DEBUG"):
            ConceptLLM(config).ask(MESSAGES, "pneumonia")
    assert any("chat/completions" in r.getMessage() for r in caplog.records)  # the request was logged...
    assert not any("S3CRETPW" in r.getMessage() for r in caplog.records)  # ...without the password


@pytest.mark.parametrize("body", [b'{"hello": 1}', b"\x00\xff not json"], ids=["other-json", "not-json"])
@pytest.mark.parametrize("mode", ["json_schema", "json_mode"])
def test_a_chat_answer_that_is_no_chat_completion_is_named_as_not_the_openai_api(body, mode):
    """A 200 "application/json" answer that is no chat completion comes from something that is not the OpenAI
    API (a proxy, another service at base_url): the same error in every structured-output mode, naming the
    address to fix, and the class is not asked again as if its answer were merely unusable."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts = []

    class Other(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self._send(b'{"object": "list", "data": [{"id": "m", "object": "model"}]}')

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(self.path)
            self._send(body)

        def _send(self, data):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        llm = ConceptLLM(LLMConfig(base_url=url, model="m", max_retries=0, structured_output=mode))
        with pytest.raises(LLMError, match=r"\(asking for concepts\) answered with something other than the OpenAI "
                                           r"API's JSON: set `base_url`"):
            llm.ask(MESSAGES, "pneumonia")
        assert len(posts) == 1
    finally:
        server.shutdown()


def test_an_address_that_drops_connections_fails_within_the_connect_limit_not_timeout_s(monkeypatch):
    """A firewall that drops packets: the connection is never opened. The client waits the connect
    limit per attempt, not the long ``timeout_s`` a CPU model's answer needs, and says which it was.
    A listening socket whose backlog is full drops new connections the same way."""
    import socket
    import time

    from cbm.concepts import llm

    monkeypatch.setattr(llm, "_CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        waiting = [socket.socket() for _ in range(4)]  # never accepted: they fill the backlog
        for s in waiting:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        time.sleep(0.2)
        config = LLMConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, timeout_s=60)
        start = time.monotonic()
        with pytest.raises(LLMError, match=r"cannot connect to http://127.0.0.1:\d+/v1 within 0.5 s while listing"):
            ConceptLLM(config).served_model()
        assert time.monotonic() - start < 20
        for s in waiting:
            s.close()
