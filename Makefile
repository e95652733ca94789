# taskpatch — developer entry points. `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that lies on this project's build machines; override for CUDA, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR

.PHONY: venv demo test lint typecheck unit proto bench-training bench-serving bench-quality docs-check study study-report clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

## Start a server on the embedded backbone, train MRPC for a few minutes, predict, show metrics, stop.
demo: venv
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

## Lint, type-check and run every test (unit, integration, the marked real-backbone ones).
test: venv lint typecheck
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -m "not integration and not backbone and not slow"

## Regenerate the committed gRPC code from protos/taskpatch.proto (tests/rpc checks it is current).
proto: venv
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/taskpatch.proto

## Run every command in README.md and docs/*.md against a tiny server (also part of `make test`).
docs-check: venv
	$(BIN)/python scripts/check_docs.py

bench-training: venv
	$(BIN)/python -m bench.training

bench-serving: venv
	$(BIN)/python -m bench.serving

bench-quality: venv
	$(BIN)/python -m bench.quality

## The BitFit/adapters vs full fine-tuning study (experiments/README.md): PROFILE=quick (2 CPU cores) or full (GPU).
PROFILE ?= quick
study: venv
	$(BIN)/python -m experiments.study --profile $(PROFILE)

study-report: venv
	$(BIN)/python -m experiments.report results/study-$(PROFILE).jsonl --out docs/study

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
