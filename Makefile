# Everything runs inside .venv, created on first use. `make help` lists the targets.
SHELL := bash
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRACKING_URI ?= sqlite:///mlflow.db
MODEL_URI ?= models:/image-classifier@champion
PORT ?= 3000
PYTEST_ARGS ?=

.PHONY: help install demo-data train train-multilabel import serve quickstart test test-unit \
        test-integration lint format clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned dependencies

data/demo/.complete: | $(VENV)/.installed
	$(PY) -m training make-demo-data --out data/demo
	touch $@

demo-data: data/demo/.complete ## write the synthetic demo dataset to data/demo (once)

train: install demo-data ## train on the demo data, log to MLflow, register @champion
	$(PY) -m training train --mlflow.tracking_uri $(TRACKING_URI)

train-multilabel: install demo-data ## train the multi-label demo (CSV manifest)
	$(PY) -m training train --config training/configs/demo_multilabel.yaml \
		--mlflow.tracking_uri $(TRACKING_URI)

import: install ## import MODEL_URI from the MLflow registry into the BentoML store
	$(PY) -m models import $(MODEL_URI) --tracking-uri $(TRACKING_URI)

serve: install ## serve the latest imported model on PORT (bentoml serve)
	$(VENV)/bin/bentoml serve --port $(PORT)

quickstart: install demo-data ## set up, train if nothing is registered, import, serve
	@if ! $(PY) -m models resolve $(MODEL_URI) --tracking-uri $(TRACKING_URI); then \
		echo "No model at $(MODEL_URI): training one on the demo data"; \
		$(MAKE) --no-print-directory train; \
	fi
	$(MAKE) --no-print-directory import serve

test: install ## run the whole test suite (unit, training, integration)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## run only the fast unit tests
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-integration: install ## run only the real-server integration tests
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## remove generated data, runs and outputs (keeps .venv)
	rm -rf data/demo outputs mlruns mlflow.db .pytest_cache
