# One task runner. Every target installs what it needs into ./.venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?=

.PHONY: install lint format typecheck test bench export demo clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/fetch-libssl11.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	scripts/fetch-libssl11.sh $(VENV)/opt/libssl1.1
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy pipeline

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench encoders

export: $(STAMP)
	$(BIN)/python -m pipeline export --model $(MODEL) --out model_repository

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
