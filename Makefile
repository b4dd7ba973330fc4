# The documented commands. `make help` lists them.
# Dependencies live in a virtual environment outside the clone (torch is several GB), keyed on
# the lock file so a changed lock re-installs and an unchanged one costs nothing.
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/streamer/venv
PY := $(VENV)/bin/python
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed-$(shell sha256sum $(LOCK) 2>/dev/null | cut -c1-16)
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the documented commands
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): $(LOCK)
	@command -v python3 >/dev/null || { echo "python3 (3.11+) is required" >&2; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create/refresh the virtual environment from the lock file

.PHONY: test
test: venv ops-tools ## Run the whole test suite (starts its own Kafka broker)
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ops-tools ## Fast tests only: no broker, no processes
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: ops-tools
ops-tools: ## helm, promtool, prometheus, KEDA CRDs into ~/.cache/streamer/ops (once; the ops tests use them)
	@bash deploy/tools/install.sh

.PHONY: test-ops
test-ops: venv ops-tools ## Chart validation, promtool rule tests, real Prometheus, static membership, group lag
	$(PY) -m pytest $(OPS_TESTS) $(PYTEST_ARGS)

OPS_TESTS ?= tests/unit/test_deploy_helm.py tests/unit/test_deploy_prometheus.py \
	tests/integration/test_prometheus_live.py tests/integration/test_static_membership.py \
	tests/integration/test_group_lag.py

.PHONY: test-avx2
test-avx2: venv ## Model tests on an emulated AVX2-only CPU (QEMU user mode, no AVX-512/VNNI; needs qemu-user)
	@command -v qemu-x86_64 >/dev/null || { echo "needs qemu-user: apt-get install qemu-user" >&2; exit 1; }
	set -o pipefail; qemu-x86_64 -cpu Haswell $(PY) -W ignore -m pytest -p no:cacheprovider -q $(AVX2_TESTS) $(PYTEST_ARGS) 2>&1 \
		| grep -v "^qemu-x86_64: warning: TCG doesn't support"

AVX2_TESTS ?= tests/unit/test_compile_cpu.py tests/unit/test_runner.py tests/unit/test_compile_manifest.py

.PHONY: lint
lint: venv ## ruff lint + format check, mypy on the package
	$(VENV)/bin/ruff check streamer compile tests
	$(VENV)/bin/ruff format --check streamer compile tests
	$(VENV)/bin/mypy

.PHONY: fmt
fmt: venv ## Format the code with ruff
	$(VENV)/bin/ruff format streamer compile tests
	$(VENV)/bin/ruff check --fix streamer compile tests

.PHONY: soak
soak: venv ## Soak (not in CI): SOAK_EVENTS (1,000,000) through both routes, tiny model; RSS slope, fds, /dev/shm (~31 min here)
	STREAMER_SOAK_EVENTS=$(SOAK_EVENTS) $(PY) -m pytest tests/integration/test_soak.py -s -q $(PYTEST_ARGS)

SOAK_EVENTS ?= 1000000

.PHONY: fuzz
fuzz: venv ## Coverage-guided fuzzing of the decoders (atheris): FUZZ_RUNS inputs (1,000,000); FUZZ_ARGS for libFuzzer
	$(PY) -m tests.fuzz.fuzz_codec -runs=$(FUZZ_RUNS) $(FUZZ_ARGS)

FUZZ_RUNS ?= 1000000

.PHONY: kafka-up
kafka-up: venv ## Start the local Apache Kafka (installs on first use); last line = bootstrap address; SECURE=1: SASL_SSL, SCRAM users, ACLs
	@$(PY) -m streamer.kafka.local_broker up $(if $(SECURE),--secure)

.PHONY: kafka-down
kafka-down: venv ## Stop the local Apache Kafka
	@$(PY) -m streamer.kafka.local_broker down

.PHONY: topics
topics: venv ## Create the five topics on the configured broker (idempotent)
	$(PY) -m streamer topics create

.PHONY: model
model: venv ## Train the multi-task model on ../shared/data into artifacts/
	$(PY) -m streamer.training.train

.PHONY: ship-model
ship-model: ## Make a trained artifact the model a clone serves (ARTIFACT=artifacts/<name>-<version>)
	@test -n "$(ARTIFACT)" && test -f "$(ARTIFACT)/eval.json" || { echo "ARTIFACT=<trained artifact with eval.json>" >&2; exit 1; }
	$(PY) -m streamer.training.ship $(ARTIFACT)

.PHONY: compile-cpu
compile-cpu: venv ## Compile the newest trained artifact (artifacts/*/eval.json) for the cpu target
	@art=$$(for d in $$(ls -td artifacts/*/ 2>/dev/null); do \
		if [ -f $$d/eval.json ] && [ ! -f $$d/manifest.json ]; then echo $$d; break; fi; done); \
	test -n "$$art" || { echo "no trained artifact under artifacts/: run make model" >&2; exit 1; }; \
	echo "compiling $$art"; $(PY) -m compile --target cpu --artifact $$art

.PHONY: demo
demo: venv ## Kafka up, model, topics, the service on both paths under load, summary table
	$(PY) -m streamer demo

.PHONY: bench-quick
bench-quick: venv ## Short side-by-side benchmark (under 10 minutes)
	$(PY) -m streamer bench --quick

.PHONY: bench
bench: venv ## Full side-by-side benchmark
	$(PY) -m streamer bench

.PHONY: bench-profile
bench-profile: venv ## Where the service's CPU goes at a fixed load (py-spy; PROFILE_ARGS="--path intent --rate 200")
	$(PY) -m streamer.bench.profile $(PROFILE_ARGS)

.PHONY: bench-replay
bench-replay: venv ## Live intent P99 with and without a replay beside it, one run (REPLAY_AB_ARGS="--rate 50")
	$(PY) -m streamer.bench.replay_ab $(REPLAY_AB_ARGS)

.PHONY: bench-gpu
bench-gpu: ## GPU machine: offline wheels, cuda compile, Tansu broker, GPU profile (see BENCHMARKS.md)
	bash streamer/bench/gpu.sh

.PHONY: clean
clean: ## Remove build outputs in the clone (not the venv or the Kafka cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
