# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install, then train and test on the built-in synthetic world
#   make test   create .venv if missing, install with test extras, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all install benchmark clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lightning_wsg.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests
	$(BIN)/python -m pytest -q -m "slow" tests

clean-demo:
	rm -rf outputs/demo
