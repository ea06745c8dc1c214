# The README's commands. Each creates the environment from nothing when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: repro repro-llm paper-params paper-smoke test test-fast lint env clean-env

# Pinned dependencies, then this project editable (gmail, stages, tools importable from anywhere).
$(BIN)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

env: $(BIN)/.installed

# Main job: the mini pipeline, offline, end to end.
repro: env
	. $(BIN)/activate && HF_HUB_OFFLINE=1 dvc repro

# The LLM pipeline (llm/dvc.yaml): the LLaVA-style model on the main pipeline's outputs (runs
# whatever of the main pipeline is not up to date first).
repro-llm: env
	. $(BIN)/activate && HF_HUB_OFFLINE=1 dvc repro llm/dvc.yaml

# Switch params.yaml to paper scale (params.paper.yaml merged in; README "Paper scale").
# Back with `python -m tools.scale mini`.
paper-params: env
	. $(BIN)/activate && python -m tools.scale paper

# Paper scale end to end on tiny random-weight models and fixture data (tools/paper_smoke.py): both
# pipelines and two experiments in a scratch copy of the repository; ~7 min on 2 cores.
paper-smoke: env
	. $(BIN)/activate && python -m tools.paper_smoke

# Full test suite: lint, then every test (an end-to-end `dvc repro` in a temporary git repo included).
test: env lint
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest -q

# The quick loop while editing: lint and every test not marked slow or e2e.
test-fast: env lint
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest -q -m "not slow and not e2e"

lint: env
	$(BIN)/ruff check .

clean-env:
	rm -rf $(VENV)
