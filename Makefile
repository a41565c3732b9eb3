# xares — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Optional extras on top of the locked default environment, e.g. EXTRAS="caption".
EXTRAS ?=
space := $(eval) $(eval)
STAMP := $(VENV)/.xares-installed$(if $(strip $(EXTRAS)),-$(subst $(space),-,$(strip $(EXTRAS))))

# uv installs exactly what uv.lock says. It lives in its own small venv so that an exact
# sync of .venv never removes the tool doing the sync.
UV_VERSION := 0.13.9
UV_DIR ?= .uv
UV := $(UV_DIR)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
# The interpreter is $(PYTHON); uv never downloads one.
export UV_PYTHON_DOWNLOADS := never
UV_EXTRAS := --extra dev --extra docs --extra offline --extra cluster $(foreach e,$(EXTRAS),--extra $(e))

ENCODER ?= mel
TASK ?= mini
ENCODERS ?= mel,dummy
LAUNCHER ?=
ARGS ?=
SHAPE_ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## Create .venv with exactly the versions in uv.lock (no-op when up to date)

$(UV):
	$(PYTHON) -m venv $(UV_DIR)
	$(UV_DIR)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(MAKE) --no-print-directory check-lock
	@# Bytecode compiled once here: uv does not by default (pip does), and where
	@# PYTHONDONTWRITEBYTECODE is set every process would compile torch and lightning anew.
	$(UV) sync --locked --compile-bytecode --python $(PYTHON) $(UV_EXTRAS)
	@rm -f $(VENV)/.xares-installed*
	@$(PY) -c "import xares" # stops with one clear message if torch and torchaudio do not load together
	@touch $(STAMP)

check-lock: | $(UV) ## Fail when uv.lock no longer matches pyproject.toml (then run `make lock`)
	@$(UV) lock --check --python $(PYTHON) --quiet || { \
	  echo "uv.lock does not match pyproject.toml: run \`make lock\` and commit uv.lock." >&2; exit 1; }

lock: | $(UV) ## After editing dependencies in pyproject.toml: update uv.lock, changing as little as possible
	$(UV) lock --python $(PYTHON)

upgrade: | $(UV) ## Move every locked version to the newest its range allows (then make test-full and make demo)
	$(UV) lock --upgrade --python $(PYTHON)

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

compare: install ## Is B better than A? Paired tests per test set: make compare A=outputs/x/run B=outputs/y/run
	@test -n "$(A)" -a -n "$(B)" || { echo "give the two run directories: make compare A=RUN_DIR B=RUN_DIR" >&2; exit 2; }
	$(PY) -m xares.compare $(A) $(B) $(if $(OUT),--out $(OUT)) $(ARGS)

bench: install ## Mel vs dummy encoder on the mini suite, same budget: proof that xares learns
	$(PY) experiments/compare_encoders.py --encoders mel,dummy --experiment demo $(if $(ARGS),-- $(ARGS))

bench-speed: install ## Reference vs fast path, then the compiled shapes (graphs, padding): make bench-speed ARGS="--seconds 2.25" SHAPE_ARGS="--steps 40"
	$(PY) experiments/bench_speed.py $(ARGS)
	$(PY) experiments/bench_shapes.py $(SHAPE_ARGS)

lint: install ## ruff check + format check (CI runs this too)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install ## mypy over xares/ (settings in pyproject.toml; CI runs this too)
	$(VENV)/bin/mypy

docs: install ## Build the documentation site into site/ (strict: a broken link or missing page fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install ## Serve the documentation at http://127.0.0.1:8000, rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove caches and run outputs (keeps .venv and xares_data)
	rm -rf outputs multirun site .pytest_cache .ruff_cache .mypy_cache wandb lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

.PHONY: help install check-lock lock upgrade test test-full demo data train sweep report compare bench bench-speed lint typecheck docs docs-serve format clean
