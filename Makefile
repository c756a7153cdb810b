# Developer entry points. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall only when pyproject.toml changed since the last install.
STAMP := $(VENV)/.installed
# apt-get needs root; a developer's machine may need sudo for it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv test lint up demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

test: venv
	@command -v redis-server >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y redis-server; }
	@# docker-compose (v1, from Debian) validates docker-compose.yml offline; no engine needed.
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y docker-compose; }
	@# wrk (from Debian) loads the ingress in tests/integration/test_benchmarks.py, as bench/ingress_ack.py does.
	@command -v wrk >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y wrk; }
	@# Headless Chromium drives the dashboard in tests/integration/test_dashboard_browser.py.
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium; }
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# The whole stack in the foreground (Ctrl-C stops it); see scripts/up.sh for what it starts.
up: venv
	VENV=$(VENV) scripts/up.sh

# make up, plus the provider simulator on :8090 and a one-shot load (scripts/demo_load.sh): a few
# tasks submitted to it call back the ingress, and their images land in the bucket within a minute.
# The workers may download from the simulator on loopback (MJHOOK_FETCH_ALLOW).
demo: venv
	VENV=$(VENV) UP_EXTRA="sim demo" \
	MJHOOK_FETCH_ALLOW="127.0.0.1$${MJHOOK_FETCH_ALLOW:+,$$MJHOOK_FETCH_ALLOW}" scripts/up.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
