# Every target creates .venv on first use, so a fresh clone needs only Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck check bench tools clean

# The modules setup.py compiles with mypyc: editing one reinstalls (recompiles) before the next
# target runs, so tests never meet a stale build. LBD_PURE_PYTHON=1 make ... compiles nothing.
HOT := $(shell sed -n 's/^    "\(lbd\/.*\.py\)",$$/\1/p' setup.py)

$(STAMP): pyproject.toml setup.py $(HOT)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: mock EHR backends + lbd with conf/demo.yaml + the stats page
demo: $(STAMP)
	$(BIN)/lbd demo

## tools: Debian packages that end-to-end tests and bench/ drive (skipped when present)
tools:
	@bash bench/install-tools.sh

## test: lint, type check and the whole test suite
test: $(STAMP) tools
	$(BIN)/ruff check lbd tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lbd tests bench
	$(BIN)/ruff format --check lbd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: lbd vs HAProxy vs nginx with wrk (see bench/README.md)
bench: $(STAMP) tools
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	find lbd -name '*.so' -delete
