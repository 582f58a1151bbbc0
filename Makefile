# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install, then train and test on the built-in synthetic world
#   make test   create .venv if missing, install with test extras and MMDetection, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MMDET_STAMP := $(VENV)/.mmdet-stamp

.PHONY: demo test test-fast install clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The MMDetection extra: mmcv is compiled from its sdist (about 20 minutes once on 2 cores;
# pip caches the wheel). Only the tests need it; the demo does not wait for it.
$(MMDET_STAMP): $(STAMP) scripts/install_mmdet.sh
	bash scripts/install_mmdet.sh $(BIN)/python
	touch $(MMDET_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lightning fit --config cli_configs/demo.yaml
	$(BIN)/lightning test --config cli_configs/demo.yaml --ckpt_path outputs/demo/checkpoints/best.ckpt

test: $(MMDET_STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(MMDET_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

clean-demo:
	rm -rf outputs/demo
