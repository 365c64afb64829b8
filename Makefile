# Quick start: `make demo` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-headless demo-offline test quality deploy-config clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/refscope demo

demo-headless: $(STAMP)
	$(VENV)/bin/refscope demo --headless --duration 60 --json demo.json

demo-offline: $(STAMP)
	$(VENV)/bin/refscope demo --offline

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

quality: $(STAMP)
	$(PY) benchmarks/quality.py

# regenerate the documented example configuration after a configuration key or its documentation changed
deploy-config: $(STAMP)
	$(PY) deploy/make_example_config.py > deploy/refscope.example.toml

clean:
	rm -rf $(VENV) build *.egg-info
