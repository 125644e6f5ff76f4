# `make demo` creates .venv from nothing and runs the whole method on the built-in demo world.
# `make test` runs the test suite offline on CPU.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test clean

$(BIN)/cbm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(BIN)/cbm

setup: $(BIN)/cbm

demo: setup
	$(BIN)/cbm run

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
