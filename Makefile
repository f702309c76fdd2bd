# The two README commands. Each sets everything up itself (idempotent) and then runs:
#   make demo   the embedded demo, end to end on CPU -> results/demo/report/
#   make test   the test suite (unit tests, DAG dry-runs, lint, the demo end to end, SLURM)
# The venv is built from the exact pins (requirements.txt + requirements.lock) and reused
# across clones through a cache keyed by their hash; `.venv` links to it.

SHELL := /bin/bash
PYTHON ?= python3
PINS_HASH := $(shell cat requirements.txt requirements.lock | sha256sum | cut -c1-12)
VENV_CACHE ?= $(HOME)/.cache/k400ft
VENV := $(VENV_CACHE)/venv-$(PINS_HASH)
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export OMP_NUM_THREADS ?= 1
export MPLBACKEND := Agg

.PHONY: setup demo test clean-demo

setup: .venv/.ready-$(PINS_HASH)

.venv/.ready-$(PINS_HASH): requirements.txt requirements.lock
	@test -x "$(VENV)/bin/python" || $(PYTHON) -m venv "$(VENV)"
	@test -f "$(VENV)/.ready" || { \
	  "$(VENV)/bin/pip" install --disable-pip-version-check -q -r requirements.txt -c requirements.lock \
	  && touch "$(VENV)/.ready"; }
	@ln -sfn "$(VENV)" .venv
	@touch "$@"

demo: setup
	snakemake --configfile demo/config.yaml --replace-workflow-config --cores 2 \
	  --show-failed-logs --rerun-triggers mtime params input
	snakemake --configfile demo/config.yaml --replace-workflow-config \
	  --report results/demo/report.html
	@cat results/demo/report/table.md

test: setup
	pytest -ra --durations=12 tests

clean-demo:
	rm -rf results/demo
