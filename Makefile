# Thin wrappers; the work is in orderflow_ingest/ and scripts/.
PYTHON_SYSTEM ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The pipe client pipe(8) runs per message, compiled from orderflow_ingest/pipe/deliver.c.
CLIENT := $(VENV)/bin/orderflow-deliver

.PHONY: demo test unit lint bench reliability fuzz system-deps venv clean ansible-test

demo: system-deps $(STAMP) $(CLIENT)
	$(PY) -m orderflow_ingest.devstack.demo

# Branch coverage of the package is printed (a report, not a gate); in-process code only.
test: system-deps $(STAMP) $(CLIENT)
	$(VENV)/bin/pytest -q --cov --cov-report=term $(PYTEST_ARGS)

# The fast tier alone (< 30 s): no stack, nothing marked slow (tests/conftest.py says how a
# test lands in a tier).
unit: $(STAMP) $(CLIENT)
	$(VENV)/bin/pytest -q -m "not stack and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check orderflow_ingest tests bench
	$(VENV)/bin/ruff format --check orderflow_ingest tests bench
	$(VENV)/bin/mypy

bench: system-deps $(STAMP) $(CLIENT)
	$(PY) bench/ingest_throughput.py
	$(PY) bench/drain_vs_peer.py
	$(PY) bench/extract_memory.py
	$(PY) bench/milter_throughput.py
	$(PY) bench/event_log_cost.py

reliability: system-deps $(STAMP) $(CLIENT)
	$(VENV)/bin/pytest -q -m reliability tests/reliability

# atheris over the parsers, then deliver.c under ASan/UBSan; FUZZ_SECONDS per target.
# CI runs the same targets for a fixed number of inputs: tests/test_fuzz_short.py.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) tests/fuzz/run_all.py --seconds $(FUZZ_SECONDS)

system-deps:
	scripts/install-system-deps

# The Ansible role's lint and a real apply of it to this machine (root, Debian 12; changes
# /etc/postfix, /opt, users): tests/test_ansible_*.py. Ansible gets its own venv, its pins
# stay out of the project's.
ANSIBLE_VENV ?= .venv-ansible
ansible-test: system-deps $(STAMP) $(CLIENT)
	test -x $(ANSIBLE_VENV)/bin/python || $(PYTHON_SYSTEM) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/python -m pip install -q -r ansible/requirements-dev.txt
	TEST_ANSIBLE_APPLY=1 ANSIBLE_TOOLS_BIN=$(CURDIR)/$(ANSIBLE_VENV)/bin \
		$(VENV)/bin/pytest -q tests/test_ansible_role.py tests/test_ansible_apply.py

venv: $(STAMP) $(CLIENT)

# The virtualenv comes from the system Python and lives in the checkout: pipe(8) runs
# `deliver` as an unprivileged user, so it must be world-readable and byte-compiled.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m compileall -q orderflow_ingest
	touch $(STAMP)

# protocol.py and settings.py: build-deliver passes their constants to the compiler.
$(CLIENT): orderflow_ingest/pipe/deliver.c orderflow_ingest/pipe/protocol.py orderflow_ingest/settings.py $(STAMP)
	$(VENV)/bin/orderflow-ingest build-deliver

clean:
	rm -rf $(VENV) $(ANSIBLE_VENV) .devstack .pytest_cache .mypy_cache .ruff_cache
