"""A scripted OpenAI-compatible chat server on 127.0.0.1, for testing the concept stage offline.

The real ``openai`` client talks to it over HTTP, so tests (ours, and a pipeline's own) exercise
the same code path as a vLLM, Ollama or llama.cpp server, failures included::

    from cbm.concepts.testing import Reply, ScriptedLLMServer

    answers = {"melanoma": ["irregular border", "blue-white veil"], "nevus": ["regular network"]}
    with ScriptedLLMServer(answers=answers) as server:
        config = LLMConfig(base_url=server.base_url, model="test-model")
        generate_concepts(card, config)
        assert len(server.requests) == 2

A ``responder(request, n)`` (``n`` = 0-based count of requests so far) may return a :class:`Reply`
to script anything else: an HTTP error, malformed content, a refusal, a truncated answer, a delay.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

__all__ = ["Reply", "ScriptedLLMServer", "class_asked", "char_ngram_embed"]


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200  # HTTP status; not 200 sends an OpenAI-style error body with ``error``
    content: str | None = None  # the message content (JSON text for a normal answer)
    finish_reason: str = "stop"  # "length" for a truncated answer
    refusal: str | None = None  # set to answer with a refusal instead of content
    error: str = "scripted error"  # the error message for a non-200 status
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"Retry-After": "0"}
    delay_s: float = 0.0  # wait this long before answering (longer than the client's timeout = a time-out)

    @classmethod
    def concepts(cls, class_name: str, concepts: Sequence[str], **kwargs: Any) -> Reply:
        """A well-formed answer for ``class_name``."""
        return cls(content=json.dumps({"class_name": class_name, "concepts": list(concepts)}), **kwargs)


def class_asked(request: Mapping[str, Any]) -> str | None:
    """The class a concept request asks about (from the prompt's answer template), if any."""
    for message in reversed(request.get("messages", [])):
        match = re.search(r'\{"class_name": ("(?:[^"\\]|\\.)*")', str(message.get("content", "")))
        if match:
            return json.loads(match.group(1))
    return None


class ScriptedLLMServer:
    """An OpenAI-compatible ``/v1/chat/completions`` (and ``/v1/models``) server in a thread.

    Args:
        answers: class (as the prompt names it) -> concepts, answered when ``responder`` returns None.
        responder: ``(request_json, n) -> Reply | None``; ``None`` falls back to ``answers``.
        model: the model id the server lists at ``/v1/models`` and names in each answer.
        list_models: whether ``GET /v1/models`` answers (``False``: 404, as some proxies do).
    """

    def __init__(
        self,
        answers: Mapping[str, Sequence[str]] | None = None,
        responder: Callable[[dict, int], Reply | None] | None = None,
        *,
        model: str = "scripted-model",
        list_models: bool = True,
    ) -> None:
        self.answers = dict(answers or {})
        self.responder = responder
        self.model = model
        self.list_models = list_models
        self.requests: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each chat request, to measure retry waits
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running; use it as a context manager")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models") and server.list_models:
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                request = json.loads(body or b"{}")
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(request)
                    server.arrivals.append(time.monotonic())
                reply = server._reply(request, n)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.status != 200:
                    error = {"error": {"message": reply.error, "type": "scripted", "code": reply.status}}
                    self._send(reply.status, error, reply.headers)
                    return
                message = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{n}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": server.model,
                        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
                    },
                    reply.headers,
                )

            def _send(self, status: int, payload: dict, headers: Mapping[str, str] | None = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a time-out)
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:  # a dropped client: not news
                pass

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="scripted-llm", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _reply(self, request: dict, n: int) -> Reply:
        if self.responder is not None:
            reply = self.responder(request, n)
            if reply is not None:
                return reply
        name = class_asked(request)
        if name in self.answers:
            return Reply.concepts(name, self.answers[name])
        return Reply(status=500, error=f"no scripted answer for class {name!r}")


def char_ngram_embed(texts: Sequence[str], *, n: int = 3, dim: int = 4096) -> np.ndarray:
    """A deterministic text embedder without a model: hashed character n-gram counts, L2-normalised.

    Phrases that share spelling are close ("blue-white veil" / "bluish-white veil"), phrases that
    do not are near-orthogonal; enough to test the filter's embedding rules for real.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        padded = f" {' '.join(str(text).casefold().split())} "
        for j in range(len(padded) - n + 1):
            digest = hashlib.blake2b(padded[j : j + n].encode("utf-8"), digest_size=8).digest()
            out[i, int.from_bytes(digest, "little") % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)
