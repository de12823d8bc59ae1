# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test: pytest, hypothesis; docs: the mkdocs site (tests/test_docs.py builds it --strict);
# ray: the cluster scorer (tests/test_distributed.py starts a local Ray cluster)
EXTRAS ?= test,docs,ray

# 3: no TensorFlow C++ notes on screen (e.g. the `cuInit` E0000 line on a machine without a GPU);
# the command line uses 3 too. Run `make ... TF_CPP_MIN_LOG_LEVEL=0` to see them.
export TF_CPP_MIN_LOG_LEVEL ?= 3
export PYTHONHASHSEED ?= 0

.PHONY: demo test install bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# PYTHONWARNINGS=ignore for the install only: setuptools' build backend prints an "Editable installation"
# box on every editable install, which is no news to a new user's first screen
$(STAMP): pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mcdrop demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests --doctest-modules mcdrop

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/acquisition.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/cli_startup.py
	$(BIN)/python benchmarks/memory.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist *.egg-info
