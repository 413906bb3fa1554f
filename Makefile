# Two commands: `make demo` (the whole paper on synthetic NSD) and `make test` (the test suite).
# Both build .venv from the pinned requirements first; nothing outside this file is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install demo test lint dryrun clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/default --cores $(CORES)
	@echo "Done: tables in results/tables/, figures in results/figures/ (fig3.pdf)."

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf results .snakemake
