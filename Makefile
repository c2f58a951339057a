# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it
# is missing. torch is installed first and on its own: with an open version range pip
# would pull a multi-GB CUDA build on CPU machines (see docs/architecture.md). GPU users:
# `make TORCH_SPEC='torch==2.13.0 --index-url <your CUDA wheel index>' demo`, or install
# CUDA torch into .venv before the first make.
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
STAMP      := $(VENV)/.mmtune-installed

.PHONY: demo test test-cluster test-bench lint install clean-cache

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[test]"
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmtune demo --config configs/demo.yaml $(ARGS)

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# pycodestyle + pyflakes ([tool.ruff] in pyproject.toml); under a second, so `make test` runs it first
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The reliability tests on a 3-node ray.cluster_utils.Cluster and a real head (ray job
# submit): ~7 minutes on 2 cores, so not part of `make test` (CI's budget).
test-cluster: $(STAMP)
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

# The bench/ scripts' whole measurements at a tiny size (Serve batched vs unbatched, plain loop
# vs a Ray Train worker, plain loop vs a Ray Data actor): ~2 minutes on 2 cores. The Ray paths
# they time are tested in `make test` by their own modules; run this before a benchmark run.
test-bench: $(STAMP)
	$(PY) -m pytest -m bench_run $(PYTEST_ARGS)

clean-cache:
	rm -rf runs/_cache
