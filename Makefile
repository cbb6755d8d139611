# Two commands on a fresh machine (see README):
#   make demo   - set everything up, then run the main job on its offline default
#   make test   - set everything up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test bench
setup: $(VENV)/.ttjax-installed

$(VENV)/.ttjax-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,test]"
	touch $@

demo: setup
	$(VENV)/bin/ttjax demo

# two pytest workers (one per core on CI's 2-core machine), one test file per worker at a time (module fixtures
# are built once); TEST_WORKERS=0 runs the suite in this process
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: setup
	$(PY) benchmarks/bound_speed.py
