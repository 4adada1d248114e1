# edged — the two commands of the README do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNSTAMP := $(VENV)/.installed

.PHONY: run test lint bench clean errors docs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(RUNSTAMP)

run: $(RUNSTAMP)
	$(BIN)/edged run

lint: $(STAMP)
	$(BIN)/ruff check edged drivers sync
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m edged.docgen.errors_doc --check docs/errors.md
	$(BIN)/python -m edged.docgen.states_doc --check docs/payment-states.md
	$(BIN)/pytest -q -p no:cacheprovider -n auto --dist loadgroup -m "not serial"
	$(BIN)/pytest -q -p no:cacheprovider -m serial

errors: $(STAMP)
	$(BIN)/python -m edged.docgen.errors_doc docs/errors.md

docs: errors
	$(BIN)/python -m edged.docgen.states_doc docs/payment-states.md

bench: $(STAMP)
	$(BIN)/python bench/api.py

clean:
	rm -rf $(VENV) var
