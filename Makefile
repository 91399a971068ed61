# One task runner. Every target installs what it needs into ./.venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL ?=
export MODEL CATALOG PORT

.PHONY: install system-deps lint format typecheck test bench export triton demo notebook clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml scripts/fetch-libssl11.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	scripts/fetch-libssl11.sh $(VENV)/opt/libssl1.1
	touch $(STAMP)

install: $(STAMP)

system-deps:
	scripts/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy pipeline

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench report

triton: $(STAMP)
	$(BIN)/python -m pipeline serve-triton --model-repository model_repository

export: $(STAMP)
	$(BIN)/python -m pipeline export --model $(MODEL) --out model_repository

demo: $(STAMP)
	scripts/demo.sh

# JupyterLab on the quantization notebook, with the project's own kernel (.venv). Runs on the tiny model as
# saved; set MODEL / CALIBRATION in its first cell for a real CLIP.
notebook: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/model_quantization.ipynb

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
