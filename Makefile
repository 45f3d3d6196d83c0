# Two commands on a fresh machine: `make demo` (the embedded recipe) and `make test`.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: setup demo test clean-demo

setup:
	bash tools/setup_env.sh

demo: setup
	cd egs2/synthetic_dialog/freeze_omni1 && ./run.sh

test: setup
	$(PYTHON) -m pytest -q tests

# make runs /bin/sh (dash on Debian): no {a,b} brace expansion in recipes
clean-demo:
	cd egs2/synthetic_dialog/freeze_omni1 && rm -rf data dump exp RESULTS.md
