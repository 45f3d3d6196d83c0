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

clean-demo:
	rm -rf egs2/synthetic_dialog/freeze_omni1/{data,dump,exp,RESULTS.md}
