# ASTRO serving toolchain. Every target bootstraps its own virtualenv (.venv) on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make train PRESET=tiny [CHECKPOINT=dir] -> checkpoints/tiny; make export CHECKPOINT=checkpoints/tiny exports it
# make train DATA=movielens -> checkpoints/small-movielens; make ablations DATA=movielens SEEDS=0,1,2
PRESET ?= small
DATA ?= synthetic
ABLATION ?= full
SEEDS ?= 0,1,2
CHECKPOINT ?=
REPOSITORY ?= model_repository
TRAIN_ARGS ?=
ABLATIONS_ARGS ?=
EXPORT_ARGS ?=
SERVE_ARGS ?=
PARITY_ARGS ?=
BENCH_ARGS ?=
SCALING_ARGS ?=

.PHONY: help venv train ablations scaling export serve parity test lint bench bench-tools clean
.DEFAULT_GOAL := help

help:  ## list the targets (this text); variables go after them: make train PRESET=tiny
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@echo "==> bootstrapping $(VENV) (first run only: a few minutes; torch CPU, ONNX Runtime, the Triton server wheel)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> installing the project and its dev dependencies into $(VENV) (pip's progress follows)"
	$(PY) -m pip install -e ".[dev]"
	# MovieLens-100k ships inside the recbole wheel; only its data file is read, so none of its dependencies
	$(PY) -m pip install --quiet --no-deps recbole==1.2.1
	touch $(STAMP)

venv: $(STAMP)  ## only bootstrap .venv (Python 3.11, the project with its dev extra; console scripts astro-*)

train: $(STAMP)  ## train PRESET (small) on DATA (synthetic|movielens) into CHECKPOINT (checkpoints/<preset>[-<data>]); more: TRAIN_ARGS
	$(PY) -m model.train --preset $(PRESET) --data $(DATA) --ablation $(ABLATION) $(if $(CHECKPOINT),--out $(CHECKPOINT)) $(TRAIN_ARGS)

ablations: $(STAMP)  ## ASTRO, its ablations (-BGF, -ATL), its peers and popularity on DATA over SEEDS: a Markdown table; more: ABLATIONS_ARGS
	$(PY) -m model.ablations --preset $(PRESET) --data $(DATA) --seeds $(SEEDS) --out docs/ablations/$(DATA).json --readme README.md $(ABLATIONS_ARGS)

scaling: $(STAMP)  ## quality vs training FLOPs and parameters, ASTRO vs one stack -> docs/scaling/ (SCALING_ARGS=--quick: a minute)
	$(PY) -m model.scaling $(SCALING_ARGS)

export: $(STAMP)  ## checkpoint -> ONNX -> (TensorRT) -> model_repository/, checked
	$(PY) -m export --out $(REPOSITORY) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(EXPORT_ARGS)

# exec: python replaces the recipe's shell, so the SIGTERM make passes on reaches it; make passes no SIGINT
# on, so python -m serve watches make for one (a Ctrl-C in the terminal reaches both anyway)
serve: $(STAMP)  ## serve REPOSITORY (model_repository/) with the tritonserver from nvidia-pytriton (exports first if empty)
	@test -f $(REPOSITORY)/astro/config.pbtxt || $(MAKE) export
	exec $(PY) -m serve --repository $(REPOSITORY) $(SERVE_ARGS)

parity: $(STAMP)  ## QA: a running server's scores vs PyTorch per-pair, same checkpoint (PARITY_ARGS: --url, --requests)
	$(PY) -m export.served_parity $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(PARITY_ARGS)

lint: $(STAMP)  ## ruff check, ruff format --check, mypy (strict)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint bench-tools  ## ruff, mypy, then the whole pytest suite (the quick bench among it needs perf_analyzer)
	$(VENV)/bin/pytest

# perf_analyzer for make bench: the binary of the tritonclient wheel of the server's version, beside the project's
# own tritonclient; libcudart.so.12 comes with the bench extra (nvidia-cuda-runtime-cu12), libb64.so.0d from apt-get
PA_VERSION := 2.51.0
PERF_ANALYZER := $(VENV)/opt/tritonclient-$(PA_VERSION)/bin/perf_analyzer
$(PERF_ANALYZER): $(STAMP)
	$(PY) -m pip install --quiet --upgrade --no-deps --target $(VENV)/opt/tritonclient-$(PA_VERSION) tritonclient==$(PA_VERSION)
	touch $@

bench-tools: $(PERF_ANALYZER)  ## perf_analyzer and its libraries for make bench (libb64-0d via apt-get: as root)
	@if ! ldconfig -p | grep -q libb64.so.0d; then \
	  if [ "$$(id -u)" != 0 ]; then echo "perf_analyzer needs libb64.so.0d: as root, apt-get install -y libb64-0d" >&2; exit 1; fi; \
	  apt-get install -y -qq libb64-0d || { apt-get update -qq && apt-get install -y -qq libb64-0d; }; \
	fi

bench: bench-tools  ## benchmarks: ratios from one run, reports under docs/bench/ (BENCH_ARGS=--quick: a smoke run)
	$(PY) -m bench $(BENCH_ARGS)

clean:  ## remove .venv, artifacts/, caches and the generated model repository
	rm -rf $(VENV) artifacts .mypy_cache .ruff_cache .pytest_cache
	find model_repository -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
