# Every day-to-day command. `make run` and `make test` do all set-up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
VAR := var
export AMQP_URI ?= amqp://guest:guest@127.0.0.1:5672/
# PostgreSQL used by the test suite's second pass (a scratch database is created if missing).
export TEST_POSTGRES_URL ?= postgresql+psycopg://gatehouse:gatehouse@127.0.0.1:5432/gatehouse_test
BENCH ?=

.PHONY: help venv broker migrate run stop logs status test test-fast proto bench lint clean

help:
	@echo "make run    set up, start every service, a simulated site and the console, seed a demo"
	@echo "make test   set up, then the whole test suite on SQLite and PostgreSQL"
	@echo "make stop | logs | status | proto | bench [BENCH=edge] | lint | clean"

# The virtual environment, rebuilt when the pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3.11-venv; \
	  else echo "run: sudo apt-get install python3.11-venv"; exit 1; fi; }
	@# opencv-python (pulled in by rapidocr-onnxruntime for plate recognition) loads libGL and glib
	@ldconfig -p | grep -q 'libGL.so.1' && ldconfig -p | grep -q 'libglib-2.0.so.0' || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libgl1 libglib2.0-0; \
	  else echo "run: sudo apt-get install libgl1 libglib2.0-0"; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade 'pip' 'setuptools<81' wheel
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

broker:
	@scripts/ensure-broker.sh

migrate: venv
	@mkdir -p $(VAR)
	$(BIN)/gatehouse migrate

run: venv broker migrate
	@scripts/run.sh

stop:
	@scripts/stop.sh

logs:
	@tail -n 20 -f $(VAR)/log/*.log

status: venv
	@$(BIN)/gatehouse status

test: venv broker
	@scripts/ensure-postgres.sh
	$(BIN)/pytest tests

test-fast: venv
	$(BIN)/pytest tests -x -q -m "not broker_restart"

proto: venv
	$(BIN)/python -m gatehouse.protogen

bench: venv broker
	$(BIN)/python -m bench $(if $(BENCH),--only $(BENCH),)

lint: venv
	$(BIN)/ruff check gatehouse services edge tests bench
	$(BIN)/python -m gatehouse.protogen --check

clean:
	rm -rf $(VAR) .pytest_cache
