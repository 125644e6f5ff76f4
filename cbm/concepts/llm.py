"""The LLM client: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through the ``openai`` package.

A preset in ``conf/llm/<name>.yaml`` is a flat mapping (the keys of :class:`LLMConfig`); API keys
are only ever read from the environment variable the preset names in ``api_key_env``.

:class:`ConceptLLM` sends one chat request per class: with structured outputs
(``client.chat.completions.parse`` and the pydantic model of the answer) where the server has
them, else JSON mode plus local validation (``structured_output: auto`` switches on the first
refusal of a JSON schema). Rate limits (429), server errors (5xx), time-outs and dropped
connections are retried with exponential back-off (honouring ``Retry-After``); 401/403/404 stop
the run at once with the preset key to fix. A refusal, a truncated answer or an answer that does
not validate is reported for its class only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from cbm.concepts.prompts import ClassConcepts, InvalidAnswer, parse_answer
from cbm.utils import unknown_name_message

__all__ = [
    "LLMConfig",
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

STRUCTURED_OUTPUT_MODES = ("auto", "json_schema", "json_mode")
_INVALID_ANSWER_RETRIES = 1  # an unparsable answer is asked again once; the same prompt rarely fails twice
_RETRYABLE_STATUS = frozenset({408, 409, 429})  # plus every 5xx


@dataclass
class LLMConfig:
    """Where and how to ask for concepts; the keys of a ``conf/llm/*.yaml`` preset."""

    base_url: str | None = None  # OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; null = no server
    model: str | None = None  # the model's name as the server knows it (see GET {base_url}/models)
    api_key_env: str | None = None  # environment variable that holds the API key; null = none needed
    temperature: float | None = 0.0  # null = the server's default
    seed: int | None = 0  # sampling seed where the server honours it; null = none sent
    max_concurrency: int = 4  # classes asked at the same time
    timeout_s: float = 120.0  # per request
    max_retries: int = 4  # extra attempts after a 429, 5xx, time-out or dropped connection
    structured_output: str = "auto"  # auto | json_schema | json_mode
    max_tokens: int | None = 1024  # answer length limit; a truncated answer is an error, not a short list
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry (with jitter)
    backoff_max_s: float = 30.0  # longest wait between retries, also the cap on a server's Retry-After
    name: str | None = field(default=None, compare=False)  # the preset's name, for messages (not a YAML key)

    def __post_init__(self) -> None:
        where = f"LLM preset {self.name!r}" if self.name else "LLM config"
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"{where}: structured_output={self.structured_output!r} is not one of "
                f"{', '.join(STRUCTURED_OUTPUT_MODES)}; use 'auto' unless the server needs one of the others"
            )
        if bool(self.base_url) != bool(self.model):
            missing = "model" if self.base_url else "base_url"
            raise ValueError(f"{where}: base_url and model go together; set `{missing}` too (or both to null)")
        for key in ("max_concurrency", "timeout_s", "backoff_s", "backoff_max_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{where}: `{key}` must be positive, got {getattr(self, key)!r}")
        if self.max_retries < 0:
            raise ValueError(f"{where}: `max_retries` must be 0 or more, got {self.max_retries!r}")

    @property
    def has_server(self) -> bool:
        """Whether this config points at a server (the ``none`` preset does not)."""
        return bool(self.base_url and self.model)

    @property
    def server_host(self) -> str | None:
        """``host[:port]`` of ``base_url``: what the store records (never a key, a user or a path)."""
        if not self.base_url:
            return None
        return urlparse(self.base_url).netloc.rpartition("@")[2] or None

    @property
    def shown_url(self) -> str | None:
        """``base_url`` for messages and logs: any ``user:password@`` in it is left out."""
        if not self.base_url:
            return None
        parts = urlparse(self.base_url)
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()

    @property
    def label(self) -> str:
        """How messages name this config: ``LLM preset 'vllm'`` or ``LLM config``."""
        return f"LLM preset {self.name!r}" if self.name else "LLM config"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, name: str | None = None) -> LLMConfig:
        """Build from a preset mapping; an unknown key is an error that names the known ones."""
        allowed = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in allowed:
                where = f"LLM preset {name!r}" if name else "LLM config"
                raise ValueError(f"{where}: {unknown_name_message('key', str(key), allowed)}")
            kwargs[key] = value
        return cls(**kwargs, name=name)

    def replace(self, **changes: Any) -> LLMConfig:
        """A copy with ``changes`` applied (``None`` values are ignored: "keep the preset's")."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def api_key(self) -> str:
        """The API key from the environment; local servers without one get a placeholder."""
        if not self.api_key_env:
            return "EMPTY"  # the openai client insists on a key; vLLM, Ollama and llama.cpp ignore it
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(
                f"{self.label} reads the API key from the environment variable ${self.api_key_env}, which is "
                f"not set: export {self.api_key_env}=... (keys are never read from config files), or set "
                "`api_key_env: null` for a server that needs none"
            )
        return key


def llm_presets_dir() -> Path:
    """``conf/llm`` of the source checkout (or editable install) this package runs from."""
    return Path(__file__).resolve().parents[2] / "conf" / "llm"


def list_llm_presets() -> list[str]:
    """Names of the LLM presets in ``conf/llm``."""
    folder = llm_presets_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_llm_config(preset: str | os.PathLike | LLMConfig | Mapping[str, Any] | None) -> LLMConfig:
    """An :class:`LLMConfig` from a preset name (``"vllm"``), a YAML path, a mapping or a config.

    ``None`` gives the no-server config: only the concept store is used.
    """
    if preset is None:
        return LLMConfig(name="none")
    if isinstance(preset, LLMConfig):
        return preset
    if isinstance(preset, Mapping):
        return LLMConfig.from_mapping(preset)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        name = path.stem
    else:
        name, path = str(preset), llm_presets_dir() / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(
                unknown_name_message("LLM preset", name, list_llm_presets())
                + " Or give the path of a YAML file with the same keys."
            )
    if not path.is_file():
        raise FileNotFoundError(f"LLM config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"LLM config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(values, Mapping):
        raise ValueError(f"LLM config file {str(path)!r} must be a flat mapping of keys, got {type(values).__name__}")
    return LLMConfig.from_mapping(values, name=name)


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
    structured_output: str  # json_schema | json_mode: how the answer was constrained
    attempts: int  # requests sent for this class, retries included
    usage: dict[str, Any] | None = None


class ConceptLLM:
    """Asks an OpenAI-compatible server for the concepts of one class at a time (thread-safe).

    Args:
        config: the server and sampling settings.
        client: an ``openai.OpenAI`` client to use instead of building one from ``config``.
        sleep: the function that waits between retries (tests may pass a recorder).
    """

    def __init__(self, config: LLMConfig, *, client: Any = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.has_server:
            raise ValueError(f"{config.label} names no server (base_url/model are null): pick a preset such as vllm")
        self.config = config
        self._sleep = sleep
        self._lock = threading.Lock()
        self._mode = "json_mode" if config.structured_output == "json_mode" else "json_schema"
        self._fatal: LLMError | None = None  # once the server is unusable, nothing more is sent
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=config.base_url, api_key=config.api_key(), timeout=config.timeout_s, max_retries=0
            )
        self._client = client

    @property
    def structured_output(self) -> str:
        """The mode requests use now (``auto`` settles on ``json_mode`` after a server refuses schemas)."""
        return self._mode

    def ask(self, messages: list[dict[str, str]], class_name: str) -> LLMAnswer:
        """The concepts of ``class_name``, retrying transient failures and one unusable answer.

        Raises:
            LLMError: a fatal server problem (401/403/404, retries exhausted): the run should stop.
            AnswerError: the answer for this class is refused, truncated or invalid.
        """
        sent = [0]  # requests sent for this class, every retry included
        for invalid_left in range(_INVALID_ANSWER_RETRIES, -1, -1):
            if self._fatal is not None:
                raise NotSent(f"class {class_name!r} not asked after the earlier error: {self._fatal}")
            try:
                answer = self._ask_with_retries(messages, class_name, sent)
            except NotSent:
                raise
            except LLMError as exc:
                with self._lock:
                    self._fatal = self._fatal or exc
                raise
            except InvalidAnswer as exc:
                if invalid_left == 0:
                    raise AnswerError(f"unusable answer: {exc}", raw=exc.raw) from None
                log.warning("class %r: unusable answer (%s); asking again", class_name, exc)
                continue
            answer.attempts = sent[0]
            return answer
        raise AssertionError("unreachable")

    def _ask_with_retries(self, messages: list[dict[str, str]], class_name: str, sent: list[int]) -> LLMAnswer:
        import openai

        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            sent[0] += 1
            mode = self._mode
            try:
                return self._request(messages, class_name, mode)
            except openai.APIStatusError as exc:
                if exc.status_code in (401, 403):
                    raise LLMError(self._auth_message(exc)) from None
                if exc.status_code == 404:
                    raise LLMError(self._not_found_message(exc)) from None
                if exc.status_code in (400, 422) and mode == "json_schema" and cfg.structured_output == "auto":
                    self._use_json_mode(exc)
                    return self._ask_with_retries(messages, class_name, sent)
                if not (exc.status_code in _RETRYABLE_STATUS or exc.status_code >= 500):
                    raise LLMError(
                        f"the server at {cfg.server_host} rejected the request ({exc.status_code}): "
                        f"{_server_message(exc)}; check `model`, `max_tokens` and `temperature` in the {cfg.label}"
                    ) from None
                failure, wait = f"HTTP {exc.status_code} ({_server_message(exc)})", _retry_after(exc)
            except openai.APITimeoutError:
                failure, wait = f"no answer within timeout_s={cfg.timeout_s:g} s", None
            except openai.APIConnectionError as exc:
                failure, wait = f"cannot connect to {cfg.shown_url} ({exc.__cause__ or exc})", None
            if attempt == cfg.max_retries:
                hint = (
                    f"; raise `timeout_s` in the {cfg.label}"
                    if failure.startswith("no answer")
                    else f"; is the server at {cfg.shown_url} up and serving {cfg.model!r}?"
                )
                raise LLMError(f"class {class_name!r}: {failure}, after {attempt + 1} attempts{hint}")
            backoff = cfg.backoff_s * 2**attempt * random.uniform(0.5, 1.0)
            delay = min(cfg.backoff_max_s, wait if wait is not None else backoff)
            log.warning("class %r: %s; retry %d/%d in %.1f s", class_name, failure, attempt + 1, cfg.max_retries, delay)
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _request(self, messages: list[dict[str, str]], class_name: str, mode: str) -> LLMAnswer:
        """One request in ``mode``; raises openai errors, :class:`AnswerError` or :class:`InvalidAnswer`."""
        import openai

        cfg = self.config
        kwargs: dict[str, Any] = {"model": cfg.model, "messages": messages}
        if cfg.temperature is not None:
            kwargs["temperature"] = cfg.temperature
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        completions = self._client.chat.completions.with_raw_response
        if mode == "json_schema":
            raw_response = completions.parse(response_format=ClassConcepts, **kwargs)
        else:
            raw_response = completions.create(response_format={"type": "json_object"}, **kwargs)
        try:
            completion = raw_response.parse()
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            completion = exc.completion  # reported below, as for JSON-mode answers
        except ValueError:  # pydantic's ValidationError: the schema was not kept; local validation decides
            completion = _completion_from_body(raw_response)
        if not completion.choices:
            raise InvalidAnswer("the server sent no choices")
        choice = completion.choices[0]
        message = choice.message
        content = message.content or ""
        if getattr(message, "refusal", None):
            raise AnswerError(f"the model refused: {' '.join(message.refusal.split())[:200]!r}", raw=content or None)
        if choice.finish_reason == "length":
            raise AnswerError(
                f"the answer was cut off at max_tokens={cfg.max_tokens} (finish_reason 'length'); "
                f"raise `max_tokens` in the {cfg.label}",
                raw=content,
            )
        if choice.finish_reason == "content_filter":
            raise AnswerError("the server's content filter stopped the answer", raw=content)
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

    def _use_json_mode(self, exc: Exception) -> None:
        """Switch every later request to JSON mode (``auto``, after the server rejected a schema)."""
        with self._lock:
            if self._mode == "json_mode":
                return  # another thread switched already
            self._mode = "json_mode"
        log.warning(
            "the server at %s does not take a JSON schema (%s); using JSON mode with local validation "
            "(set `structured_output: json_mode` in the %s to skip this probe)",
            self.config.server_host,
            _server_message(exc),
            self.config.label,
        )

    def _auth_message(self, exc: Any) -> str:
        cfg = self.config
        key = f"${cfg.api_key_env}" if cfg.api_key_env else "none (api_key_env: null)"
        return (
            f"the server at {cfg.server_host} refused the API key ({exc.status_code}: {_server_message(exc)}); "
            f"the key is read from `api_key_env` in the {cfg.label} (now {key}): export a valid key there"
        )

    def _not_found_message(self, exc: Any) -> str:
        cfg = self.config
        return (
            f"the server at {cfg.server_host} answered 404 for model {cfg.model!r} ({_server_message(exc)}): "
            f"fix `model` in the {cfg.label} (the server lists its models at {cfg.shown_url.rstrip('/')}/models), "
            "or `base_url` (OpenAI-compatible servers usually end in /v1)"
        )


def _server_message(exc: Any) -> str:
    """The server's own error text, short."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("message") or body.get("error") or body
    text = body if isinstance(body, str) else getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split())[:200]


def _retry_after(exc: Any) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``/``retry-after-ms``), if it said."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is not None:
            try:
                return max(0.0, float(value) / divisor)
            except ValueError:
                continue
    return None


def _completion_from_body(raw_response: Any) -> Any:
    """The plain chat completion in an HTTP body whose content did not fit the schema."""
    from openai.types.chat import ChatCompletion

    try:
        return ChatCompletion.model_validate(raw_response.http_response.json())
    except ValueError as exc:
        raise InvalidAnswer(f"the server's response is not a chat completion: {' '.join(str(exc).split())[:160]}")
