# qwen-triton: `make install`, `make test`; serving targets below.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml tools/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	tools/install_torch.sh $(PY)
	$(PY) -m pip install -q -e '.[build,client,test]'
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not server and not slow" $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check qwen_triton build tools clients tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
