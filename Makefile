# The two commands: `make demo` and `make test`. Both create .venv first (idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-eval demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q -m "not slow and not gpu and not tpu"

# Tests marked slow (minutes each); none are yet, so pytest's "no tests" (exit 5) is fine here.
test-slow: venv
	$(PY) -m pytest -q -m "slow" || test $$? -eq 5

# The lm-eval adapter's test needs the [eval] extra (lm-eval, CPU torch), installed on demand.
$(VENV)/.installed-eval: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,eval]'
	@touch $@

test-eval: $(VENV)/.installed-eval
	$(PY) -m pytest -q tests/test_lm_eval_adapter.py

demo: venv
	$(PY) -m dlmjax.demo

bench: venv
	$(PY) -m dlmjax.bench --json runs/bench.json

clean:
	rm -rf $(VENV) runs
