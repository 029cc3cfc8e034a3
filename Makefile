# splitpack development tasks. Every target creates and uses the local virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# torch is installed first and pinned to the CPU build; a plain `torch` requirement would pull
# a multi-GB CUDA build. pyproject states a range that this pin satisfies.
# constraints.txt pins the whole stack to the versions the suite last passed with (litert-torch,
# torchao and ray resolve to combinations that do not import together otherwise).
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[compiler,tflite,serve,ray,triton,bench,dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/splitpack demo

clean:
	rm -rf $(VENV) demo-out .pytest_cache
