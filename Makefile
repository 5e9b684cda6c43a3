# The two commands: `make demo` and `make test`. Both create .venv first (idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-slow test-faults test-eval test-extras demo bench bench-gpu gpu-wheels clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# On both cores (pytest-xdist): most tests keep one busy. One file per worker, so a
# module's fixtures (the trained micro runs, the mesh cases) are built once.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not gpu and not tpu and not faults"

# Tests marked slow (longer than a few seconds each: the extended mesh cases, the 8-device
# train command, ...), outside `make test`; pytest's "no tests" (exit 5) is fine here.
test-slow: venv
	$(PY) -m pytest -q -m "slow" || test $$? -eq 5

# The fault-injection suite (tests/faults, docs/reliability.md): SIGKILLs, damaged
# checkpoints, bad data, fuzzed configs, a full disk. One process: its kills are timed.
test-faults: venv
	$(PY) -m pytest -q -m faults tests/faults

# The lm-eval adapter's test needs the [eval] extra (lm-eval, CPU torch), installed on demand.
$(VENV)/.installed-eval: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,eval]'
	@touch $@

test-eval: $(VENV)/.installed-eval
	$(PY) -m pytest -q tests/test_lm_eval_adapter.py

# The extras' tests: the Hugging Face export against transformers ([hf]) and the lm-eval
# adapter ([eval]), both pulling in CPU torch, and the Beam tokenization pipeline ([beam]).
$(VENV)/.installed-extras: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,eval,hf,beam,tfds,seqio]'
	@touch $@

test-extras: $(VENV)/.installed-extras
	$(PY) -m pytest -q tests/test_export_hf.py tests/test_lm_eval_adapter.py tests/test_data_shards.py tests/test_data_sources.py

demo: venv
	$(PY) -m dlmjax.demo $(ARGS)

bench: venv
	$(PY) -m dlmjax.bench --json runs/bench.json

# On a GPU machine with no registry and no venv: its own python3 with the repo on PYTHONPATH,
# plus the wheels it lacks (gpu-wheels/, from `make gpu-wheels` here). Runs the GPU tests,
# then the bench (tiny preset and the 1B step with its variants), into runs/bench-gpu.{json,md}.
GPU_PY ?= python3
GPU_SITE ?= /tmp/dlmjax-gpu-site
BENCH_GPU_ARGS ?= --step-variant "" --step-variant "model.remat=none" \
	--step-variant "model.param_dtype=bfloat16"
bench-gpu:
	@ls gpu-wheels/*.whl >/dev/null 2>&1 || { echo "gpu-wheels/ is empty: run make gpu-wheels where a package registry is reachable, and bring the folder along"; exit 2; }
	$(GPU_PY) -m pip install -q --no-index --no-deps --upgrade --target $(GPU_SITE) gpu-wheels/*.whl
	mkdir -p runs
	PYTHONPATH=$(CURDIR):$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m dlmjax.bench \
	  --gpu-tests --json runs/bench-gpu.json --markdown runs/bench-gpu.md $(BENCH_GPU_ARGS)

# What the GPU machine lacks (it has jax/jaxlib 0.11.2 + CUDA, flax, optax, orbax-checkpoint,
# numpy, tokenizers, pytest, rich, tensorboard, triton): grain and the dependencies it does
# not share with those, and jax-triton. CPython 3.12 manylinux wheels, no dependencies pulled.
GPU_WHEELS := grain==0.2.18 array-record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 \
	jax-triton==0.4.1
gpu-wheels:
	mkdir -p gpu-wheels
	for w in $(GPU_WHEELS); do \
	  $(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d gpu-wheels $$w \
	    || exit 1; \
	done

clean:
	rm -rf $(VENV) runs
