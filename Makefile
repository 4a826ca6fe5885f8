# make serve   start the service on the bundled models/ (SQLite cache) on http://127.0.0.1:8000
# make test    install the training and dev tools, start PostgreSQL and install Chromium when possible
#              (root or CI), ruff + pytest
# make lint    ruff and hadolint only
# make container-check  build the cpu image with podman (root) and prove it serves; CI runs it
# make clean   caches and build leftovers (keeps the virtual environment); distclean removes it too
#
# Each target builds its own virtual environment (VENV, default .venv) with Python 3.11. Stamp
# files inside it remember what was installed, so a re-run installs again only when
# pyproject.toml changed. Override e.g. `make test VENV=/tmp/fresh` to prove a clean install.

PYTHON ?= python3.11
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
# Pinned and installed FIRST: a bare `torch` (or the train extra's range on an empty venv)
# resolves to the default PyPI build, which pulls several GB of CUDA libraries. 2.13.0 is the
# CPU build this project is tested with; once it is installed, `.[train]` is already satisfied.
TORCH_SPEC ?= torch==2.13.0
# Quiet, but pip still prints every error.
PIP_FLAGS ?= --quiet --disable-pip-version-check --progress-bar off
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP_VENV := $(VENV)/.stamp-venv
STAMP_SERVE := $(VENV)/.stamp-serve
STAMP_DEV := $(VENV)/.stamp-dev

.DEFAULT_GOAL := help
.PHONY: help serve test lint container-check clean distclean

help:
	@echo "make serve | make test | make lint | make container-check | make clean | make distclean  (VENV=$(VENV))"

$(STAMP_VENV):
	$(PYTHON) -m venv $(VENV)
	touch $@

# Serving needs no torch: the project's own dependencies only.
$(STAMP_SERVE): $(STAMP_VENV) pyproject.toml
	$(BIN)/python -m pip install $(PIP_FLAGS) -e .
	touch $@

$(STAMP_DEV): $(STAMP_VENV) pyproject.toml
	$(BIN)/python -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[train,dev]'
	touch $@ $(STAMP_SERVE)

serve: $(STAMP_SERVE)
	$(BIN)/ibrnet serve --host $(HOST) --port $(PORT)

# PostgreSQL: scripts/start-postgres.sh installs it from Debian's packages when missing, starts it
# and prints its URL. It needs root, so it runs as root or in CI (CI=true); in CI a failure is
# fatal, elsewhere the PostgreSQL tests skip. An IBRNET_TEST_POSTGRES_URL already set wins.
test: $(STAMP_DEV)
	@set -e; \
	if [ -z "$${IBRNET_TEST_POSTGRES_URL:-}" ]; then \
		if [ "$$(id -u)" = 0 ] || [ "$${CI:-}" = true ]; then \
			if url="$$(bash scripts/start-postgres.sh)" && [ -n "$$url" ]; then \
				export IBRNET_TEST_POSTGRES_URL="$$url"; \
				echo "make test: PostgreSQL tests use $$url"; \
			elif [ "$${CI:-}" = true ]; then \
				echo "make test: PostgreSQL did not start (CI=true: fatal)" >&2; exit 1; \
			else \
				echo "make test: PostgreSQL did not start; its tests will skip" >&2; \
			fi; \
		else \
			echo "make test: not root and not CI: PostgreSQL tests skip (set IBRNET_TEST_POSTGRES_URL to run them)" >&2; \
		fi; \
	fi; \
	if [ -z "$${IBRNET_TEST_CHROMIUM:-}" ] && { [ "$$(id -u)" = 0 ] || [ "$${CI:-}" = true ]; }; then \
		if chromium="$$(bash scripts/install-chromium.sh)" && [ -n "$$chromium" ]; then \
			export IBRNET_TEST_CHROMIUM="$$chromium"; \
		elif [ "$${CI:-}" = true ]; then \
			echo "make test: Chromium did not install (CI=true: fatal)" >&2; exit 1; \
		else \
			echo "make test: Chromium did not install; the page's browser tests will skip" >&2; \
		fi; \
	fi; \
	$(BIN)/ruff check .; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Root only (podman builds and runs the image as root here); installs podman from Debian if missing.
container-check:
	bash scripts/container-check.sh

lint: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf build dist .pytest_cache .ruff_cache *.egg-info dask-worker-space
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
