# The README's two commands. Both create the environment from nothing when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: repro test env clean-env

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

env: $(BIN)/.installed

# Main job: the mini pipeline, offline, end to end.
repro: env
	. $(BIN)/activate && HF_HUB_OFFLINE=1 dvc repro

# Test suite (tiny configs; an end-to-end `dvc repro` in a temporary git repo included).
test: env
	. $(BIN)/activate && HF_HUB_OFFLINE=1 python -m pytest -q tests

clean-env:
	rm -rf $(VENV)
