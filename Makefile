# splitpack development tasks. Every target creates and uses the local virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# torch is installed first and pinned to the CPU build; a plain `torch` requirement would pull
# a multi-GB CUDA build. pyproject states a range that this pin satisfies.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[compiler,tflite,serve,dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/splitpack demo

clean:
	rm -rf $(VENV) demo-out .pytest_cache
