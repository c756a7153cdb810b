# Developer entry points. `make test` is what CI runs (through .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test processes of make test (pytest-xdist); each starts its own redis-server and SeaweedFS.
TEST_PROCESSES ?= 2
# Reinstall only when pyproject.toml or constraints.txt changed since the last install.
STAMP := $(VENV)/.installed
# apt-get needs root; a developer's machine may need sudo for it.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# `$(call apt_need,COMMAND,PACKAGE)`: apt-get install PACKAGE unless COMMAND is on the PATH.
apt_need = command -v $(1) >/dev/null 2>&1 || { \
	$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $(2); }

.PHONY: venv lock services test lint up demo clean bench-ingress bench-pipeline bench-memory bench-backlog bench-chaos

venv: $(STAMP)

# Debian/Ubuntu's python3 makes no venv without python3-venv: installed when it fails (a failed
# try leaves a venv without pip, made again).
# The versions are constraints.txt's, the image's too (Dockerfile): the tests run what ships.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV) || { \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y python3-venv && \
		$(PYTHON) -m venv --clear $(VENV); }
	$(BIN)/pip install -c constraints.txt -e '.[dev,local]'
	touch $(STAMP)

# constraints.txt afresh: pyproject.toml's ranges resolved to today's releases in a scratch venv,
# every package it installed pinned (then make test, and commit both files together).
LOCK_VENV := $(VENV)-lock
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install '.[dev,local]'
	{ echo "# Every package mjhook's venv (make venv) and image (Dockerfile) install, pinned: written by"; \
	  echo "# make lock from pyproject.toml's ranges. tests/test_constraints.py checks that they agree."; \
	  $(LOCK_VENV)/bin/pip freeze --exclude mjhook; } > constraints.txt
	rm -rf $(LOCK_VENV) build *.egg-info

# What make up, make demo and the tests run beside the venv's own (SeaweedFS comes as a wheel):
# redis-server, and curl for scripts/demo_load.sh.
services:
	@$(call apt_need,redis-server,redis-server)
	@$(call apt_need,curl,curl)

test: venv services
	@# docker-compose (v1, from Debian) validates docker-compose.yml offline; no engine needed.
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || { \
		$(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y docker-compose; }
	@# wrk (from Debian) loads the ingress in tests/integration/test_benchmarks.py, as bench/ingress_ack.py does.
	@$(call apt_need,wrk,wrk)
	@# Headless Chromium drives the dashboard in tests/integration/test_dashboard_browser.py.
	@$(call apt_need,chromium,chromium)
	@# RabbitMQ on 127.0.0.1:5672 carries the queue of tests/integration/test_scale_out.py's amqp://
	@# run (in a vhost of its own): installed and started where it is missing.
	@# Debian installs rabbitmqctl in /usr/sbin, which is not on a user's PATH.
	@PATH="$$PATH:/usr/sbin" && $(call apt_need,rabbitmqctl,rabbitmq-server)
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', 5672), 2)" 2>/dev/null || \
		$(SUDO) service rabbitmq-server start || $(SUDO) rabbitmq-server -detached
	$(BIN)/pytest -q -n $(TEST_PROCESSES)

# The benchmarks of bench/ (bench/README.md), one command each, with what they need installed; run
# them one at a time on an otherwise quiet machine. ARGS passes options (make bench-ingress ARGS=--quick).
bench-ingress: venv services
	@$(call apt_need,wrk,wrk)
	@$(call apt_need,node,nodejs)
	@$(call apt_need,npm,npm)
	$(BIN)/python bench/ingress_ack.py $(ARGS)

bench-pipeline bench-memory bench-backlog bench-chaos: venv services
	$(BIN)/python bench/$(patsubst bench-%,%,$@).py $(ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

# The whole stack in the foreground (Ctrl-C stops it); see scripts/up.sh for what it starts and
# the variables it reads (UP_INGRESS_PORT moves the ingress off :8000).
up: venv services
	VENV=$(VENV) scripts/up.sh

# make up, plus the provider simulator on :8090 and a one-shot load (scripts/demo_load.sh): a few
# tasks submitted to it call back the ingress, and their images land in the bucket within a minute.
# With `sim` running, scripts/up.sh points the stack at it (MJHOOK_PROVIDER_URL and its API key,
# unless MJHOOK_PROVIDER_URL is set) and lets the workers download from it on loopback
# (MJHOOK_FETCH_ALLOW).
demo: venv services
	VENV=$(VENV) UP_EXTRA="sim demo" scripts/up.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
