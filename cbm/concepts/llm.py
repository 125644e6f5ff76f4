"""The LLM client: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through the ``openai`` package.

Presets (``conf/llm/<name>.yaml``, :class:`LLMConfig`) live in :mod:`cbm.concepts.presets` and are
re-exported here.

:class:`ConceptLLM` sends one chat request per class. The answer is held to the JSON schema of
:class:`~cbm.concepts.prompts.ClassConcepts`: by OpenAI's structured outputs where the server has
them, else by JSON mode with the schema in llama.cpp's own form (``{"type": "json_object",
"schema": ...}``), else by plain JSON mode; every answer is validated here too. With
``structured_output: auto`` a server's refusal of a schema (an HTTP error whose text names
``response_format`` or ``json_schema``, whatever its status) moves the rest of the run one step
down that ladder; it is never retried as if it were transient.

Transient failures (429, 5xx, time-outs, dropped connections) are retried by the ``openai`` SDK
itself (``max_retries``, exponential back-off, ``Retry-After``); 401/403/404 stop the run at once
with the preset key to fix. An answer that cannot be used (not JSON, wrong class, nothing left
after filtering) is asked again once with a changed request: the answer and what was wrong with it
are added to the conversation, and the seed moves on, so no retry repeats the same request.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cbm.concepts.presets import (
    STRUCTURED_OUTPUT_MODES,
    LLMConfig,
    LLMPresetError,
    list_llm_presets,
    llm_presets_dir,
    load_llm_config,
)
from cbm.concepts.prompts import ClassConcepts, InvalidAnswer, parse_answer, shorten

__all__ = [
    "LLMConfig",
    "LLMPresetError",
    "LLMAnswer",
    "LLMError",
    "AnswerError",
    "ConceptLLM",
    "STRUCTURED_OUTPUT_MODES",
    "llm_presets_dir",
    "list_llm_presets",
    "load_llm_config",
]

log = logging.getLogger(__name__)

# seconds to open a connection (a server that is up accepts at once; the answer may take minutes)
_CONNECT_TIMEOUT_S = 10.0

_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")  # the user:password@ of an address


class _NoCredentials(logging.Filter):
    """Drops a ``user:password@`` from any address an HTTP library logs (``httpx`` logs every request's URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = _CREDENTIALS.sub("", text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


# a filter acts on its own logger's records only, so each logger that writes request URLs gets one
for _name in ("httpx", "httpx2", "openai", "openai._base_client"):
    logging.getLogger(_name).addFilter(_NoCredentials())

_INVALID_ANSWER_RETRIES = 1  # an unusable answer is asked again once, with what was wrong; rarely twice in a row
_SCHEMA_REFUSAL = re.compile(r"response_format|json_schema", re.IGNORECASE)
_ANSWER_SCHEMA = ClassConcepts.model_json_schema()
# the ladder `auto` walks down when a server refuses the step above: what goes into response_format
_LADDER = ("json_schema", "json_mode+schema", "json_mode")


class LLMError(RuntimeError):
    """The server could not be used (bad key, unknown model, down, retries exhausted): stops the run."""


class NotSent(LLMError):
    """A request not sent because an earlier one showed the server cannot be used."""


class AnswerError(RuntimeError):
    """The server answered, but the answer for one class cannot be used (refused, truncated, invalid)."""

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw  # the answer's text, for the log and the store


@dataclass
class LLMAnswer:
    """One class's usable answer and what the server said about it."""

    concepts: list[str]  # the phrases as the LLM wrote them (filtering comes later)
    raw: str  # the message content exactly as received
    finish_reason: str | None
    response_model: str | None  # the model the server says answered
    structured_output: str  # json_schema | json_mode+schema | json_mode: how the answer was constrained
    attempts: int  # requests sent for this class, every retry included
    usage: dict[str, Any] | None = None


def _refusal_is_final(response: Any) -> None:
    """httpx response hook: a refused answer schema is final, so the SDK does not retry it as a 5xx."""
    if response.status_code >= 400:
        response.read()
        if _SCHEMA_REFUSAL.search(response.text):
            response.headers["x-should-retry"] = "false"


class ConceptLLM:
    """Asks an OpenAI-compatible server for the concepts of one class at a time (thread-safe).

    Args:
        config: the server and sampling settings.
        client: an ``openai.OpenAI`` client to use instead of building one from ``config`` (its own
            ``max_retries`` then applies).
    """

    def __init__(self, config: LLMConfig, *, client: Any = None) -> None:
        if not config.has_server:
            raise ValueError(f"{config.label} names no server (base_url/model are null): pick a preset such as vllm")
        self.config = config
        self._lock = threading.Lock()
        self._mode = "json_mode+schema" if config.structured_output == "json_mode" else "json_schema"
        self._fatal: LLMError | None = None  # once the server is unusable, nothing more is sent
        self._served: tuple[str | None] | None = None
        self._listing_404 = False  # GET /models answered 404: base_url may lack its /v1
        self._probe = threading.Lock()  # held by the one request in flight until a request's form is taken
        self._settled = config.structured_output == "json_schema"  # no ladder to walk: nothing to probe
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=config.base_url, api_key=config.api_key(), timeout=_timeout(config.timeout_s),
                max_retries=config.max_retries,
                http_client=openai.DefaultHttpxClient(event_hooks={"response": [_refusal_is_final]}),
            )
        self._client = client

    @property
    def structured_output(self) -> str:
        """The form requests use now (``auto`` moves down the ladder after a server refuses a schema)."""
        return self._mode

    def served_model(self) -> str | None:
        """The id of the model the server serves (``GET {base_url}/models``), asked once.

        For llama.cpp that is the gguf's path (or its alias), whatever ``model`` the preset names;
        for vLLM, Ollama and OpenAI the name the preset's ``model`` matches. ``None`` if the server
        does not list its models.

        Raises:
            LLMError: the server cannot be reached, or refuses the key.
        """
        import openai

        if self._served is not None:
            return self._served[0]
        cfg = self.config
        try:
            ids = [m.id for m in self._client.models.list().data]
        except (AttributeError, TypeError, openai.APIResponseValidationError):  # a web page, or other JSON
            raise LLMError(self._not_openai_message("listing its models")) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (401, 403):
                raise LLMError(self._status_message(exc, "", refused=False)) from None
            log.warning("the server at %s does not list its models (HTTP %d: %s); cached answers are matched by "
                        "the preset's `model` alone", cfg.server_host, exc.status_code, _server_message(exc))
            self._listing_404 = exc.status_code == 404
            ids = []
        except openai.APIConnectionError as exc:
            raise LLMError(self._unreachable_message(exc, "listing its models")) from None
        served = cfg.model if cfg.model in ids else (ids[0] if len(ids) == 1 else None)
        if ids and served is None:
            log.warning("the server at %s serves %s, not %r; cached answers are matched by the preset's `model` "
                        "alone", cfg.server_host, shorten(ids), cfg.model)
        self._served = (served,)
        return served

    def stop(self, why: str) -> None:
        """Send nothing more from now on (a request in flight still ends), e.g. after Ctrl-C."""
        with self._lock:
            self._fatal = self._fatal or LLMError(why)

    def ask(
        self, messages: list[dict[str, str]], class_name: str, check: Callable[[list[str]], None] | None = None
    ) -> LLMAnswer:
        """The concepts of ``class_name``; an unusable answer is asked again once, with what was wrong.

        ``check(concepts)`` may refuse a parsed answer by raising
        :class:`~cbm.concepts.prompts.InvalidAnswer` (e.g. when every phrase would be filtered out).

        Raises:
            LLMError: a fatal server problem (401/403/404, retries exhausted): the run should stop.
            AnswerError: the answer for this class is refused, truncated or invalid.
        """
        sent = [0]  # requests sent for this class, every retry included
        request, seed = list(messages), self.config.seed
        for invalid_left in range(_INVALID_ANSWER_RETRIES, -1, -1):
            if self._fatal is not None:
                raise NotSent(f"class {class_name!r} not asked after the earlier error: {self._fatal}")
            try:
                answer = self._ask_once(request, class_name, seed, sent)
                if check is not None:
                    try:
                        check(answer.concepts)
                    except InvalidAnswer as exc:
                        exc.raw = answer.raw
                        raise
            except NotSent:
                raise
            except LLMError as exc:
                with self._lock:
                    self._fatal = self._fatal or exc
                raise
            except InvalidAnswer as exc:
                if invalid_left == 0:
                    raise AnswerError(f"unusable answer: {exc}", raw=exc.raw) from None
                log.warning("class %r: unusable answer (%s); asking again, saying what was wrong", class_name, exc)
                request, seed = _ask_again(messages, exc), (None if seed is None else seed + 1)
                continue
            answer.attempts = sent[0]
            return answer
        raise AssertionError("unreachable")

    def _ask_once(self, messages: list[dict[str, str]], class_name: str, seed: int | None, sent: list[int]) -> LLMAnswer:
        """One request (the SDK retries transient failures), down the schema ladder on a refusal."""
        import openai

        while True:
            with self._probing():
                if self._fatal is not None:  # it came while this request waited for the probe
                    raise NotSent(f"class {class_name!r} not asked after the earlier error: {self._fatal}")
                mode, refused = self._mode, False
                try:
                    return self._request(messages, class_name, mode, seed, sent)
                except openai.APIStatusError as exc:
                    sent[0] += 1
                    refused = bool(_SCHEMA_REFUSAL.search(_server_message(exc, None))) and exc.status_code not in (401, 403)
                    if refused and self._step_down(mode, exc):
                        continue
                    raise LLMError(self._status_message(exc, class_name, refused)) from None
                except openai.APITimeoutError as exc:
                    if _connect_timed_out(exc):
                        raise LLMError(f"class {class_name!r}: {self._unreachable_message(exc, 'asking')}") from None
                    cfg = self.config
                    raise LLMError(
                        f"class {class_name!r}: no answer within timeout_s={cfg.timeout_s:g} s, after "
                        f"{cfg.max_retries + 1} attempts; raise `timeout_s` in the {cfg.label} (a model on a CPU may "
                        "need minutes per class)"
                    ) from None
                except openai.APIConnectionError as exc:
                    raise LLMError(f"class {class_name!r}: {self._unreachable_message(exc, 'asking')}") from None
                finally:
                    self._settled = self._settled or not refused

    @contextlib.contextmanager
    def _probing(self) -> Iterator[None]:
        """One request at a time until the server has taken a request's form, so that a refusal of the
        schema is seen once per run, not once per class in flight; then no waiting at all."""
        if self._settled:
            yield
            return
        with self._probe:
            if not self._settled:
                yield
                return
        yield  # another request settled the form while this one waited

    def _status_message(self, exc: Any, class_name: str, refused: bool) -> str:
        """What an HTTP error means and which preset key fixes it."""
        cfg = self.config
        if exc.status_code in (401, 403):
            key = f"${cfg.api_key_env}" if cfg.api_key_env else "none (api_key_env: null)"
            return (
                f"the server at {cfg.server_host} refused the API key ({exc.status_code}: {_server_message(exc)}); "
                f"the key is read from `api_key_env` in the {cfg.label} (now {key}): export a valid key there"
            )
        if refused:
            return (f"the server at {cfg.server_host} refused the answer schema (HTTP {exc.status_code}: "
                    f"{_server_message(exc)}); set `structured_output: auto` in the {cfg.label} to fall back to "
                    "JSON mode")
        # base_url first where /models answered 404 too and it lacks /v1 (Gemini's and DeepSeek's do without)
        if exc.status_code == 404 and self._listing_404 and not cfg.shown_url.rstrip("/").endswith("/v1"):
            return (
                f"the server at {cfg.server_host} answered 404 for model {cfg.model!r} ({_server_message(exc)}): "
                f"`base_url` {cfg.shown_url} does not end in /v1, as an OpenAI-compatible server's address usually "
                f"does: fix `base_url` in the {cfg.label} (e.g. {cfg.shown_url.rstrip('/')}/v1), or else `model`"
            )
        if exc.status_code == 404:
            return (
                f"the server at {cfg.server_host} answered 404 for model {cfg.model!r} ({_server_message(exc)}): "
                f"fix `model` in the {cfg.label} (the server lists its models at {cfg.shown_url.rstrip('/')}/models), "
                "or `base_url` (OpenAI-compatible servers usually end in /v1)"
            )
        if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
            return (
                f"class {class_name!r}: the server at {cfg.server_host} answered HTTP {exc.status_code} "
                f"({_server_message(exc)}) to all {cfg.max_retries + 1} attempts; it is up but failing or overloaded: "
                f"see its log, lower `max_concurrency` or raise `max_retries` in the {cfg.label}"
            )
        return (f"the server at {cfg.server_host} rejected the request ({exc.status_code}): {_server_message(exc)}; "
                f"check `model`, `max_tokens` and `temperature` in the {cfg.label}")

    def _request(
        self, messages: list[dict[str, str]], class_name: str, mode: str, seed: int | None, sent: list[int]
    ) -> LLMAnswer:
        """One request in ``mode``; raises openai errors, :class:`AnswerError` or :class:`InvalidAnswer`."""
        import openai

        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages}
        if cfg.temperature is not None:
            kwargs["temperature"] = cfg.temperature
        if seed is not None:
            kwargs["seed"] = seed
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        completions = self._client.chat.completions.with_raw_response
        if mode == "json_schema":
            raw_response = completions.parse(response_format=ClassConcepts, **kwargs)
        else:
            response_format: dict[str, Any] = {"type": "json_object"}
            if mode == "json_mode+schema":
                response_format["schema"] = _ANSWER_SCHEMA  # llama.cpp's own form; others ignore or refuse it
            raw_response = completions.create(response_format=response_format, **kwargs)
        sent[0] += getattr(raw_response, "retries_taken", 0) + 1
        if not _is_chat_completion(raw_response.http_response):  # e.g. a proxy's login page, another service
            raise LLMError(self._not_openai_message("asking for concepts"))
        try:
            completion = raw_response.parse()
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            completion = exc.completion  # reported below, as for JSON-mode answers
        except ValueError:  # pydantic's ValidationError: the schema was not kept; local validation decides
            completion = _completion_from_body(raw_response)
        except (AttributeError, TypeError):  # JSON, but no chat completion
            raise LLMError(self._not_openai_message("asking for concepts")) from None
        if not hasattr(completion, "choices"):
            raise LLMError(self._not_openai_message("asking for concepts"))
        if not completion.choices:
            raise InvalidAnswer("the server sent no choices")
        choice = completion.choices[0]
        message = choice.message
        content = message.content or ""
        if getattr(message, "refusal", None):
            raise AnswerError(f"the model refused: {shorten(message.refusal)!r}", raw=content or None)
        if choice.finish_reason == "length":
            raise AnswerError(
                f"the answer was cut off at max_tokens={cfg.max_tokens} (finish_reason 'length'); "
                f"raise `max_tokens` in the {cfg.label}",
                raw=content,
            )
        if choice.finish_reason == "content_filter":
            raise AnswerError("the server's content filter stopped the answer; rephrase the card's class "
                              "descriptions, or use another model", raw=content)
        try:
            concepts = parse_answer(content, class_name)
        except InvalidAnswer as exc:
            exc.raw = content
            raise
        usage = completion.usage.model_dump() if getattr(completion, "usage", None) is not None else None
        return LLMAnswer(
            concepts=concepts,
            raw=content,
            finish_reason=choice.finish_reason,
            response_model=getattr(completion, "model", None),
            structured_output=mode,
            attempts=1,
            usage=usage,
        )

    def _step_down(self, mode: str, exc: Exception) -> bool:
        """Move every later request one step down the ladder after ``mode`` was refused (``auto`` only)."""
        if self.config.structured_output == "json_schema" or mode == _LADDER[-1]:
            return False
        with self._lock:
            if _LADDER.index(self._mode) > _LADDER.index(mode):
                return True  # another thread stepped down already (and said so)
            now = self._mode = _LADDER[_LADDER.index(mode) + 1]
        skip = f" (set `structured_output: json_mode` in the {self.config.label} to skip this probe)"
        log.warning("the server at %s refuses response_format %s (%s); using %s for the rest of the run, with local "
                    "validation%s", self.config.server_host, mode, _server_message(exc), now,
                    skip if mode == "json_schema" else "")
        return True

    def _not_openai_message(self, doing: str) -> str:
        cfg = self.config
        return (f"the server at {cfg.server_host} ({doing}) answered with something other than the OpenAI API's "
                f"JSON: set `base_url` in the {cfg.label} to its OpenAI-compatible address (usually ending in /v1)")

    def _unreachable_message(self, exc: Exception, doing: str) -> str:
        cfg = self.config
        import openai

        if _connect_timed_out(exc):  # an address where nothing answers, or a firewall that drops the packets
            what = f"cannot connect to {cfg.shown_url} within {min(_CONNECT_TIMEOUT_S, cfg.timeout_s):g} s"
        elif isinstance(exc, openai.APITimeoutError):
            what = f"no answer within timeout_s={cfg.timeout_s:g} s"
        else:
            what = f"cannot connect to {cfg.shown_url} ({shorten(exc.__cause__ or exc, 120)})"
        return (
            f"{what} while {doing}, after {cfg.max_retries + 1} attempts; is the server at {cfg.shown_url} up and "
            f"serving {cfg.model!r}? Start it, or fix `base_url` in the {cfg.label} or where it was given over the "
            "preset (`cbm concepts --base-url`, `cbm run llm.base_url=...`)"
        )


def _timeout(timeout_s: float) -> Any:
    """``timeout_s`` for an answer, but at most :data:`_CONNECT_TIMEOUT_S` to connect: a wrong address
    that drops packets must not wait a CPU model's answer time, once per attempt."""
    import openai

    return openai.Timeout(timeout_s, connect=min(_CONNECT_TIMEOUT_S, timeout_s))


def _connect_timed_out(exc: BaseException) -> bool:
    # the HTTP library's ConnectTimeout (openai 1.x uses httpx, later releases their own copy of it)
    return type(exc.__cause__).__name__ == "ConnectTimeout"


def _ask_again(messages: list[dict[str, str]], exc: InvalidAnswer) -> list[dict[str, str]]:
    """The conversation asked again after an unusable answer: the answer, then what was wrong with it."""
    again = list(messages)
    if exc.raw:
        again.append({"role": "assistant", "content": exc.raw})
    again.append({"role": "user", "content": (
        f"That answer cannot be used: {exc}. Answer again with one JSON object in the form asked for, listing "
        "features of your own (not the examples or the placeholder from the question)."
    )})
    return again


def _server_message(exc: Any, limit: int | None = 200) -> str:
    """The server's own error text (whole words, at most ``limit`` characters; ``None`` = all of it)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body.get("detail") or body
    text = body if isinstance(body, str) else getattr(exc, "message", None) or str(exc)
    if not isinstance(text, str):
        text = str(text)
    return " ".join(text.split()) if limit is None else shorten(text, limit)


def _is_chat_completion(http_response: Any) -> bool:
    """Whether a 200 answer is the OpenAI API's: JSON (by its content type and its body) with ``choices``."""
    if "json" not in http_response.headers.get("content-type", "json"):
        return False
    try:
        body = http_response.json()
    except ValueError:  # not JSON, or not text at all
        return False
    return isinstance(body, dict) and isinstance(body.get("choices"), list)


def _completion_from_body(raw_response: Any) -> Any:
    """The plain chat completion in an HTTP body whose content did not fit the schema."""
    from openai.types.chat import ChatCompletion

    try:
        return ChatCompletion.model_validate(raw_response.http_response.json())
    except ValueError as exc:
        raise InvalidAnswer(f"the server's response is not a chat completion: {shorten(exc, 160)}") from None
