# `make run` starts skinsite on this machine; `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
WEB_PORT ?= 8000
# The Procfile's `python` and `celery` are the virtualenv's.
export PATH := $(BIN):$(PATH)

.PHONY: run test test-fast lint fmt migrate bench load faults multihost

# The service alone (no TensorFlow) for `make run`; everything (training, tests) for the other targets.
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-all: $(VENV)/.installed requirements-ml.txt requirements-test.txt
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

migrate: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py bootstrap_demo --url http://127.0.0.1:$(WEB_PORT)
	WEB_PORT=$(WEB_PORT) $(BIN)/honcho start

# Everything, with the 15 slowest tests printed at the end so that a new slow one is seen the day it arrives.
test: $(VENV)/.installed-all
	$(BIN)/pytest --durations=15 $(PYTEST_ARGS)

# The edit-test loop: all but the tests that start real processes (stack), run the ml/ procedures (training) or
# fill the database to a large clinic's size (volume).
test-fast: $(VENV)/.installed-all
	$(BIN)/pytest -m "not stack and not training and not volume" --durations=10 $(PYTEST_ARGS)

lint: $(VENV)/.installed-all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(VENV)/.installed-all
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(VENV)/.installed-all
	$(BIN)/python -m ml.study.bench
	$(BIN)/python -m ml.study.explain --bench
	$(BIN)/python -m workers.bench

# 200 API submissions from 20 clients against gunicorn + 2 workers (LOAD_ARGS="--images 50 --clients 5";
# DATABASE_URL=postgres://... for PostgreSQL).
load: $(VENV)/.installed-all
	$(BIN)/python -m tests.load $(LOAD_ARGS)

# A worker killed mid-run, Redis away for 30 s, PostgreSQL restarted: each prints its counts.
faults: $(VENV)/.installed-all
	$(BIN)/python -m tests.faults.worker_kill
	$(BIN)/python -m tests.faults.redis_outage
	$(BIN)/python -m tests.faults.postgres_restart

# Web, data and two worker hosts in network namespaces (root and `ip netns`), files in an S3 bucket; one worker host
# cut off during 100 submissions; prints the counts and the throughput with 1 and 2 worker hosts.
multihost: $(VENV)/.installed-all
	$(BIN)/python -m tests.multihost $(MULTIHOST_ARGS)
