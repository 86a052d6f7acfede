# StreamQuant developer targets. Everything runs in the project-local virtual environment .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SQ := $(BIN)/streamquant
STAMP := $(VENV)/.installed

# Tests use the local stack unless told otherwise (CI exports the same values after `make up`).
export STREAMQUANT_KAFKA_BOOTSTRAP ?= 127.0.0.1:9092
export STREAMQUANT_REDIS_URL ?= redis://127.0.0.1:6379/0

.DEFAULT_GOAL := help
.PHONY: help install lock lint schemas up up-secure down status demo test test-unit test-integration bench clean helm-check gpu-check

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the locked dependencies and the project

lock: ## Re-resolve dependencies from pyproject.toml into requirements.lock
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Exact versions of every runtime and dev dependency (pip freeze of a working .venv; Python 3.11)."; \
	  echo "# Regenerate with \`make lock\` after changing pyproject.toml."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v '^streamquant'; } > requirements.lock
	rm -rf .venv-lock

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

helm-check: $(STAMP) ## Helm chart: lint, render with default/GPU/CI values, validate against Kubernetes schemas offline
	PYTHON=$(BIN)/python .ci/helm-check

schemas: $(STAMP) ## Regenerate schemas/json and schemas/avro from the record dataclasses
	$(BIN)/python -m schemas.generate

up: $(STAMP) ## Start the local Kafka (KRaft) broker and Redis, create the topics
	$(SQ) dev up

up-secure: $(STAMP) ## Also start a SASL_SSL broker (SCRAM users, ACLs) on 127.0.0.1:9094
	$(SQ) dev up --secure

down: $(STAMP) ## Stop what `make up` (or `make up-secure`) started
	$(SQ) dev down

status: $(STAMP) ## Is the local stack answering?
	$(SQ) dev status

demo: up ## On the local stack: 15 s of synthetic ticks through the feature processor (features shown live), then a backtest job
	$(SQ) produce ticks --symbols 50 --rate 5000 --seconds 15 --seed 7 > .devstack/logs/demo-producer.log & producer=$$!; \
	$(SQ) run features --stop-when-idle 5 > .devstack/logs/demo-features.log 2>&1 & processor=$$!; \
	$(SQ) tail features -n 3 --follow --seconds 20; \
	wait $$producer && wait $$processor
	$(SQ) tail ticks -n 3
	$(SQ) tail bars -n 5
	@echo "== a backtest job through the job plane (backtest.commands → jobs.status, backtest.results)"
	$(SQ) run jobs > .devstack/logs/demo-jobs.log 2>&1 & plane=$$!; \
	$(SQ) submit backtest streamquant/resources/demo-backtest.json --wait --timeout 180; rc=$$?; \
	kill $$plane; wait $$plane; exit $$rc
	@echo "producer, processor and job plane logs: .devstack/logs/demo-*.log"

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
PYTEST = run_pytest() { $(BIN)/pytest "$$@"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc; }; run_pytest

test: $(STAMP) ## All tests: unit, then integration against the running local stack (make up)
	@$(PYTEST) -q tests

test-unit: $(STAMP) ## Unit tests only (no broker)
	@$(PYTEST) -q tests/unit

test-integration: $(STAMP) ## Integration tests only (real Kafka and Redis)
	@$(PYTEST) -q tests/integration

BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: bench/peers-requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/peers-requirements.txt
	touch $@

bench: $(STAMP) $(BENCH_VENV)/.installed ## All benchmarks (the stream ones need `make up`); figures: bench/RESULTS.md
	$(BIN)/python -m bench.decode_ticks --peers-python $(BENCH_VENV)/bin/python
	$(BIN)/python -m bench.kernels_vs_talib
	$(BIN)/python -m bench.backtest_vs_vectorbt
	$(BIN)/python -m bench.features_stream
	$(BIN)/python -m bench.features_latency

GPU_PYTHON ?= $(BIN)/python
gpu-check: ## With an NVIDIA GPU and CuPy (no network): the GPU parity tests, then the GPU benchmarks
	$(GPU_PYTHON) -c "import cupy, sys; sys.exit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 'error: no CUDA device is visible')"
	$(GPU_PYTHON) -m pytest -q -rs -p no:cacheprovider tests/unit/test_cuda_source.py tests/unit/test_feature_backend.py \
		tests/unit/test_backtest_engine.py tests/unit/test_forest.py
	$(GPU_PYTHON) -m bench.kernels_gpu
	$(GPU_PYTHON) -m bench.forest_gpu
	$(GPU_PYTHON) -m bench.backtest_gpu

clean: ## Remove caches (keeps .venv and the Kafka jar cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis
