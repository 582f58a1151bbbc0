# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv if missing, install, then train and test on the built-in synthetic world
#   make test   create .venv if missing, install with test extras and MMDetection, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
MMDET_STAMP := $(VENV)/.mmdet-stamp
MUTATION_STAMP := $(VENV)/.mutation-stamp

.PHONY: demo test test-fast install clean-demo browser mutation

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

# One intra-op thread: the demo's steps are small (a frozen, cached backbone), and on a busy
# 2-core machine two threads spinning against other work made them ~10x slower.
DEMO_THREADS ?= 1
demo: $(STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/lightning fit --config cli_configs/demo.yaml
	OMP_NUM_THREADS=$(DEMO_THREADS) $(BIN)/lightning test --config cli_configs/demo.yaml --ckpt_path outputs/demo/checkpoints/best.ckpt \
		--config cli_configs/report.yaml --trainer.callbacks.output_dir=outputs/demo
	@echo
	@echo "checkpoint:  outputs/demo/checkpoints/best.ckpt"
	@if [ -f outputs/demo/report.html ]; then \
		echo "report:      outputs/demo/report.html (metrics, accuracy charts, pictures of the best and worst groundings)"; fi
	@echo "logs:        outputs/demo/lightning_logs (tensorboard --logdir outputs/demo/lightning_logs)"
	@echo "to share it: $(BIN)/lightning_wsg export --ckpt_path outputs/demo/checkpoints/best.ckpt --out outputs/demo/model"

test: $(MMDET_STAMP) browser
	$(BIN)/python -m pytest -q tests

test-fast: $(MMDET_STAMP) browser
	$(BIN)/python -m pytest -q -m "not slow" tests

# tests/test_report.py renders the test report in a headless Chromium. As root on Debian (CI
# here) a missing one is installed with apt; elsewhere nothing is installed and the test skips
# (under CI=true it fails).
BROWSERS := chromium-headless-shell chromium chromium-browser google-chrome chrome-headless-shell
browser:
	@found=; for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && found=$$b; done; \
	if [ -z "$$found" ] && [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then \
		echo "installing chromium-headless-shell with apt (the report's browser test)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			chromium-headless-shell; } >/dev/null || echo "apt could not install chromium-headless-shell"; \
	fi

clean-demo:
	rm -rf outputs/demo

# Mutation testing (scripts/mutation.py, docs/mutation.md): mutmut over the core modules, each
# against its own fast tests, one worker. Not part of `make test` or CI: it takes long.
# MODULES=boxes losses picks modules; MUTATION_ARGS=--fresh forgets earlier verdicts.
$(MUTATION_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,mutation]"
	touch $(MUTATION_STAMP)

MODULES ?=
MUTATION_ARGS ?=
mutation: $(MUTATION_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python scripts/mutation.py $(MUTATION_ARGS) $(MODULES)
