# kubetune developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv demo test test-unit lint generate clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[runtime,operator,dev]'
	touch $@

# A local control plane, the operator, and a tiny CPU fine-tune through it (examples/finetune-cpu-smoke.yaml).
demo: venv
	bash e2e/demo.sh

# Every tier that needs no GPU: unit, integration (real control plane) and e2e (pods train).
test: venv
	$(PY) -m pytest

test-unit: venv
	$(PY) -m pytest tests/unit

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

generate: venv
	$(PY) scripts/generate.py
