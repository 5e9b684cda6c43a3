# The two commands: `make demo` and `make test`. Both create .venv first (idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# XLA's CPU thread pool gives nothing at tiny sizes and fights pytest-level parallelism.
export PYTHONHASHSEED := 0

.PHONY: venv test test-slow demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q -m "not slow and not gpu and not tpu"

test-slow: venv
	$(PY) -m pytest -q -m "slow"

demo: venv
	$(PY) -m dlmjax.demo

bench: venv
	$(PY) -m dlmjax.bench --json runs/bench.json

clean:
	rm -rf $(VENV) runs
