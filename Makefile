# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up what they need: the venv, the Python packages, consul, nc and dig
# (and, for the tests, dnsmasq, haproxy, chromium and prometheus).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test unit lint compat faults bench demo cluster-demo check clean

$(BIN)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

venv: $(BIN)/.installed

# Everything: lint and types, the compatibility runs, then the whole suite.
test: lint compat
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	scripts/get-dig >/dev/null
	scripts/get-haproxy >/dev/null
	scripts/get-chromium >/dev/null
	scripts/get-ianitor >/dev/null
	scripts/get-prometheus >/dev/null
	$(BIN)/python -m pytest

# The tests that start no process (tests/markers.py), without the hypothesis ones: seconds.
unit: venv
	$(BIN)/python -m pytest -q --unit -m "not fuzz"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The pure tests on Python 3.11, 3.12 and 3.13 and with the oldest dependencies (noxfile.py),
# and the integration tests against Debian's own supervisord 4.2.5 under the system Python.
compat: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	$(BIN)/nox
	SUPERVISORD_BIN="$$(scripts/get-supervisor)/supervisord" $(BIN)/python -m pytest -q tests/test_integration.py tests/test_migrate.py

# The fault suite alone, with the full 10-minute churn soak; ends with the report table,
# which it also writes into docs/reliability.md (FAULT_DOC= to leave the file alone).
faults: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	SOAK_SECONDS=$${SOAK_SECONDS:-600} FAULT_DOC=$${FAULT_DOC-docs/reliability.md} $(BIN)/python -m pytest -m fault -q

# The benchmarks (issue 4): one table of figures beside baselines from the same run.
bench: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	$(BIN)/python -m bench --doc docs/performance.md

demo: venv
	scripts/demo

# Three Consul servers and two hosts (client agent + supervisord + listener) on 127.0.0.x.
cluster-demo: venv
	scripts/cluster-demo

check: venv
	$(BIN)/supervisor-consul check -c etc/supervisord.conf.sample

clean:
	rm -rf $(VENV) demo demo-cluster .pytest_cache *.egg-info
