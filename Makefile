# ASTRO serving toolchain. Every target bootstraps its own virtualenv (.venv) on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXPORT_ARGS ?=
SERVE_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv train export serve test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# type stubs for the TensorRT code; --no-deps: their declared dependencies are unreachable stubs
	$(PY) -m pip install --quiet --no-deps tensorrt-stubs
	# ... which mypy can only read once repaired: writes $(VENV)/typings, the mypy_path in pyproject.toml
	$(PY) typings/repair_tensorrt_stubs.py --out $(VENV)/typings
	touch $(STAMP)

venv: $(STAMP)

train: $(STAMP)  ## re-train the embedded small checkpoint (checkpoints/small)
	$(PY) -m model.train

export: $(STAMP)  ## checkpoint -> ONNX -> (TensorRT) -> model_repository/, checked
	$(PY) -m export $(EXPORT_ARGS)

serve: $(STAMP)  ## serve model_repository/ with the tritonserver from nvidia-pytriton (exports first if empty)
	@test -f model_repository/astro/config.pbtxt || $(MAKE) export
	$(PY) -m serve --repository model_repository $(SERVE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint  ## ruff, mypy, then the whole pytest suite
	$(VENV)/bin/pytest

bench: $(STAMP)  ## benchmarks: ratios from one run, reports under docs/bench/
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) artifacts .mypy_cache .ruff_cache .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
