# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up what they need: the venv, the Python packages, consul, nc and dig
# (and, for the tests, dnsmasq, haproxy, chromium and prometheus).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test faults bench demo cluster-demo check clean

$(BIN)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

venv: $(BIN)/.installed

test: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	scripts/get-dig >/dev/null
	scripts/get-haproxy >/dev/null
	scripts/get-chromium >/dev/null
	scripts/get-ianitor >/dev/null
	scripts/get-prometheus >/dev/null
	$(BIN)/python -m pytest

# The fault suite alone, with the full 10-minute churn soak; ends with the report table.
faults: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/python -m pytest -m fault -q

# The benchmarks (issue 4): one table of figures beside baselines from the same run.
bench: venv
	scripts/get-consul >/dev/null
	scripts/get-nc >/dev/null
	$(BIN)/python -m bench

demo: venv
	scripts/demo

# Three Consul servers and two hosts (client agent + supervisord + listener) on 127.0.0.x.
cluster-demo: venv
	scripts/cluster-demo

check: venv
	$(BIN)/supervisor-consul check -c etc/supervisord.conf.sample

clean:
	rm -rf $(VENV) demo demo-cluster .pytest_cache *.egg-info
