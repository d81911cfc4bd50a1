# Two commands on a fresh machine: `make run` (the gateway) and `make test` (the proof).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# The RQ tests run a second time against rq 2.x (the main venv has rq 3).
VENV_RQ2 ?= .venv-rq2
STAMP_RQ2 := $(VENV_RQ2)/.installed

.PHONY: run test test-rq2 lint bench soak clean

# `make run` installs what the gateway needs; the tests add their tools on top.
$(STAMP_RUN): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $(STAMP_RUN)

$(STAMP): $(STAMP_RUN)
	$(BIN)/pip install -q -e '.[test,grpc]'
	touch $(STAMP)

run: $(STAMP_RUN)
	$(BIN)/tracegate up

lint: $(STAMP)
	$(BIN)/ruff check otel gateway tests bench
	$(BIN)/mypy

$(STAMP_RQ2): pyproject.toml
	$(PYTHON) -m venv $(VENV_RQ2)
	$(VENV_RQ2)/bin/pip install -q --upgrade pip
	$(VENV_RQ2)/bin/pip install -q -e '.[test]' 'rq>=2.12,<3'
	touch $(STAMP_RQ2)

test: lint test-rq2
	$(BIN)/pytest

test-rq2: $(STAMP_RQ2)
	$(VENV_RQ2)/bin/pytest -q tests/integration/test_rq.py tests/integration/test_rq_faults.py

# The longer runs of the fault and load tests: 2,000 requests, each enqueueing a job.
soak: $(STAMP)
	TRACEGATE_LOAD_REQUESTS=2000 $(BIN)/pytest -q tests/e2e/test_load.py \
		tests/integration/test_faults.py tests/integration/test_rq_faults.py

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(VENV_RQ2) .pytest_cache .mypy_cache .ruff_cache .hypothesis
