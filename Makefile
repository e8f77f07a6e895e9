# Everyday commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Stages run `python -m imgclf...`: put the project's environment first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
HOST ?= 127.0.0.1
PORT ?= 5000
SERVE_PORT ?= 5001
DASHBOARD_PORT ?= 8080
DB ?=
ARTIFACTS ?= $(abspath mlartifacts)
N ?= 10
TEST_WORKERS ?= 2
STORE := sqlite:///$(abspath mlruns)/mlflow.db
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.DEFAULT_GOAL := help
.PHONY: help setup data run repro exp seeds report test test-fast lint bench bench-long bench-recipes ui dashboard server serve compare clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# pip writes bytecode at install time (even under PYTHONDONTWRITEBYTECODE), so every stage
# process imports torch and MLflow in ~5 s instead of ~12 s.
$(BIN)/dvc: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	@touch $@

setup: $(BIN)/dvc ## create .venv with the pinned dependencies
	@test -d .git || git init -q
	@test -d .dvc || $(BIN)/dvc init -q

data: ## make Fashion-MNIST available offline (Debian's dataset-fashion-mnist)
	@if ls $(FMNIST)/*-ubyte.gz >/dev/null 2>&1; then \
	  echo "Fashion-MNIST found in $(FMNIST)"; \
	elif command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null \
	  || { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
	  || echo "could not install dataset-fashion-mnist; the download stage will try download.mirrors and the URLs"; \
	else \
	  echo "no apt-get: the download stage will try download.mirrors and the upstream URLs"; \
	fi

run: setup data ## set up everything, then run the whole pipeline (dvc repro)
	$(BIN)/dvc repro

repro: ## rerun what changed (dvc repro)
	$(BIN)/dvc repro

exp: setup ## one DVC experiment with a preset's values: make exp PRESET=long (presets/)
	@test -n "$(PRESET)" || { echo "set PRESET=name, one of: $$(ls presets | sed 's/\.yaml$$//')"; exit 2; }
	@args=$$($(BIN)/python -m imgclf.presets "$(PRESET)") && eval '$(BIN)/dvc exp run' "$$args"

# `make seeds N=5`: N seeds of one recipe (3 unless N is given). They form one seed group.
SEEDS = $(if $(filter command line environment,$(origin N)),$(N),3)

seeds: setup data ## the recipe under seeds 0..N-1 (N=3): one DVC experiment each, workspace untouched
	@for seed in $$(seq 0 $$(($(SEEDS) - 1))); do \
	  echo "--- train.seed=$$seed"; $(BIN)/dvc exp run --temp -S train.seed=$$seed || exit $$?; \
	done
	$(BIN)/imgclf-compare -n $$(( $(SEEDS) > 10 ? $(SEEDS) : 10 ))

report: setup ## what changed and whether it is real: BASE= (HEAD) against HEAD= (workspace)
	$(BIN)/imgclf-report --base "$(or $(BASE),HEAD)" --head "$(or $(HEAD),workspace)"

# Test files run in parallel (TEST_WORKERS processes), each file's tests in one process.
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: setup ## run the test suite
	$(PYTEST); code=$$?; [ $$code -eq 5 ] && echo "no tests collected" && code=0; exit $$code

test-fast: setup ## the tests not marked slow
	$(PYTEST) -m "not slow"

bench: setup data ## measure speed, overhead and memory; writes BENCHMARKS.md (~45 min)
	$(BIN)/python bench/run.py

bench-long: setup ## the longer preset (presets/long.yaml) on make bench's project (~30 min)
	$(BIN)/python bench/run.py --only preset

bench-recipes: setup ## the default recipe under 3 seeds and changes to it, on make bench's project (~40 min)
	$(BIN)/python bench/run.py --only recipes

lint: setup ## ruff on the code, tests and benchmarks; mypy's type check of src/
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

ui: setup ## MLflow UI on the project store (127.0.0.1:5000; set HOST=, PORT= to change)
	$(BIN)/mlflow ui --backend-store-uri $(STORE) --host $(HOST) --port $(PORT)

dashboard: setup ## optuna-dashboard on the current study (127.0.0.1:8080; DASHBOARD_PORT= to change)
	$(BIN)/python -m imgclf.dashboard --host $(HOST) --port $(DASHBOARD_PORT)

server: setup ## team MLflow server: DB=postgresql://user@host/db ARTIFACTS=dir|s3://bucket/path
	@test -n "$(DB)" || { echo "set DB=postgresql://user@host/db (password: PGPASSWORD or ~/.pgpass)"; exit 2; }
	$(BIN)/mlflow server --backend-store-uri "$(DB)" --artifacts-destination "$(ARTIFACTS)" \
	  --serve-artifacts --host $(HOST) --port $(PORT)

serve: setup ## serve the registry's champion model on http://127.0.0.1:5001 (SERVE_PORT=)
	$(BIN)/python -m imgclf.serve --host $(HOST) --port $(SERVE_PORT)

compare: setup ## leaderboard of the last pipeline runs (N=10)
	$(BIN)/imgclf-compare -n $(N)

clean: ## delete pipeline outputs (not the MLflow store)
	rm -rf data/raw data/processed models/model.pt reports
