# TTI — two commands on a fresh machine: `make run` (the whole system) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test lint bench sumo fuzz clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (Debian/Ubuntu: apt install python3.11 python3.11-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install TTI with its test extras

run: $(STAMP)  ## run the whole system (embedded): http://127.0.0.1:8080/ , JT/T 808 on :6808
	$(BIN)/tti run $(ARGS)

test: $(STAMP)  ## run the full test suite (needs PostgreSQL/PostGIS, NATS, Mosquitto: see .ci/run)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy shared services

bench: $(STAMP)  ## run every benchmark in bench/ (installs the bench extras: SUMO, fastmm, mappymatch)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/pip install --quiet --no-deps 'mappymatch>=0.7,<0.8'  # declares pandas<3: see pyproject
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

sumo: $(STAMP)  ## SUMO ground truth: demo city, 30 min, 4 incidents (NETWORK=wuhan, MINUTES=, INCIDENTS=)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.sumo.run --network $(or $(NETWORK),demo) --minutes $(or $(MINUTES),30) \
		--incidents $(or $(INCIDENTS),4) $(ARGS)

fuzz: $(STAMP)  ## 10^6 mutated JT/T 808 frames and 10^5 HTTP bodies (SEED=n to vary)
	$(BIN)/python -m tests.fuzz.run --frames 1000000 --bodies 100000 --seed $(or $(SEED),1)

clean:  ## remove the virtual environment and embedded data
	rm -rf $(VENV) var
