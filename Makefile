# r2gen: `make help` lists the targets. Everything runs in a local virtual environment (.venv).
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= outputs/demo
export HF_HUB_OFFLINE ?= 1

.PHONY: help install demo test test-fast lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed  ## create .venv and install r2gen with its test tools

demo: install  ## train on the built-in synthetic demo (CPU, ~3 min), then evaluate its best checkpoint
	@if [ -e $(RUN)/checkpoints/best.ckpt ]; then \
		echo "$(RUN) is already trained: evaluating it again (make clean, or RUN=<new folder>, trains anew)"; \
	else $(PY) train.py hydra.run.dir=$(RUN) test_after_fit=false; fi
	$(PY) evaluate.py ckpt=$(RUN)/checkpoints/best.ckpt hydra.run.dir=$(RUN)/evaluate

test: install  ## run the whole test suite (what CI runs)
	$(PY) -m pytest -q

test-fast: install  ## the tests not marked slow (no fresh processes, no multi-epoch runs): 2-4 minutes
	$(PY) -m pytest -q -m "not slow"

lint: install  ## ruff
	$(VENV)/bin/ruff check r2gen tests benchmarks train.py evaluate.py

clean:  ## remove run folders and generated demo data (keeps .venv)
	rm -rf outputs multirun data/cache
