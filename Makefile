# Set-up commands: `make run` (serve on SQLite) and `make test` (the whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test fuzz bench lint install install-dev test-deps image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the package metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	@echo "controlplane: serving on http://$(HOST):$(PORT)  (webhook: http://$(HOST):$(PORT)/api/v1/alerts/alertmanager, API docs: /docs)"
	CONTROLPLANE_LISTEN_HOST=$(HOST) CONTROLPLANE_LISTEN_PORT=$(PORT) $(BIN)/controlplane serve

# Installs missing Debian test binaries (as root) and starts PostgreSQL when none answers.
test-deps:
	bash scripts/test-deps.sh

# checkov scans the deploy manifests in the tests. Its pins (packaging<24, python-dateutil<3) clash
# with the newest pytest and kubernetes client, so it gets a venv of its own, where the tests look.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(VENV)/checkov/.installed-$(CHECKOV_VERSION)
$(CHECKOV): | $(BIN)/python
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

test: install-dev test-deps $(CHECKOV)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fuzz tests (schemathesis on the API, hypothesis on the webhook) with many more examples than
# `make test` runs, random ones each time; FUZZ_EXAMPLES is per API operation (x8 webhook payloads).
FUZZ_EXAMPLES ?= 500
fuzz: install-dev test-deps
	CONTROLPLANE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/fuzz $(PYTEST_ARGS)

# Figures go in BENCHMARKS.md with the command that produced them.
bench: install-dev
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/rules_match.py
	$(BIN)/python bench/trigger_latency.py
	$(BIN)/python bench/leader_failover.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/storm.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/prune.py

# The container image (Containerfile), tagged controlplane:<version>, with podman (else docker).
# BASE=IMAGE replaces the default base python:3.11-slim. WHEELS=DIR builds without network in the
# build: the wheels of the project and its dependencies are made here first (the image's Python
# version must be this venv's), then installed offline. On the test machine:
#   make image BASE=localhost/controlplane-base:bookworm WHEELS=build/wheels CONTAINERS_CONF=scripts/containers.conf
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ENGINE  ?= $(shell command -v podman || command -v docker)
IMAGE   ?= controlplane:$(VERSION)
BASE    ?=
WHEELS  ?=
image: $(if $(WHEELS),$(BIN)/python)
# build/lib goes first: setuptools would pack files an earlier build left there. SOURCE_DATE_EPOCH makes
# the wheel the same bytes for the same source, so an unchanged tree rebuilds from the layer cache.
ifneq ($(WHEELS),)
	rm -rf build/lib $(WHEELS)/controlplane-*.whl
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) $(BIN)/python -m pip wheel --quiet --wheel-dir $(WHEELS) .
endif
	$(ENGINE) build --file Containerfile --tag $(IMAGE) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null) \
	  --build-arg SOURCE=$(shell git remote get-url origin 2>/dev/null) \
	  $(if $(BASE),--build-arg BASE=$(BASE)) $(if $(WHEELS),--build-arg WHEELS=. $(WHEELS),.)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info controlplane.db controlplane.db-*
