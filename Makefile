# spikedet: every install step lives here. `make demo` and `make test` set up on first use.
# Pins live in pyproject.toml (extras "train" and "lava"); README.md explains them.
SHELL := /bin/bash
VENV := .venv
LAVA_VENV := .venv-lava
PY := $(VENV)/bin/python
LAVA_PY := $(LAVA_VENV)/bin/python
STAMP := $(VENV)/.spikedet-installed
LAVA_STAMP := $(LAVA_VENV)/.spikedet-installed
DEMO_OUT ?= runs/demo

# Python >= 3.11 for the core environment.
PYTHON311 ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	  if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then command -v $$p; break; fi; done)
# Python 3.10 for Lava (lava-nc 0.10.0 supports only 3.10). The bare pyenv shim may refuse to
# run when pyenv's global version differs, so the pyenv install folders are searched first.
PYTHON310 ?= $(shell bash scripts/find_python310.sh)

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.spikedet-installed

.PHONY: setup setup-core setup-lava setup-lava-dl setup-peers test lint demo demo-fast bench clean-venvs help
help:
	@echo "make demo   - set up (first time) and run the whole pipeline end to end"
	@echo "make test   - set up (first time), lint, and run the test suite in both environments"
	@echo "make setup  - create .venv (core, torch) and .venv-lava (Lava, Python 3.10); idempotent"
	@echo "make bench  - run benchmarks/ (neurons vs spikingjelly/snnTorch/norse, events, engines)"

setup: setup-core setup-lava setup-lava-dl setup-peers

setup-core: $(STAMP)
$(STAMP): pyproject.toml setup.py spikedet/data/_datdecode.c
	@test -n "$(PYTHON311)" || { echo "spikedet setup: no Python >= 3.11 found; install one (e.g. 'pyenv install 3.11')" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON311) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23.2" "setuptools>=68" wheel
	# torch first and pinned: with 2.13.0 present nothing else pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[train]"
	@touch $(STAMP)

setup-lava: $(LAVA_STAMP)
$(LAVA_STAMP): pyproject.toml setup.py spikedet/data/_datdecode.c
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "spikedet setup: Python 3.10 not found, so the Lava environment ($(LAVA_VENV)) was not created." >&2; \
	  echo "  Install it with 'pyenv install 3.10.13' (or apt/deadsnakes python3.10 python3.10-venv) and re-run 'make setup'," >&2; \
	  echo "  or set PYTHON310=/path/to/python3.10. Until then the 'lava' engine reports itself unavailable." >&2; \
	  if [ -n "$$CI" ]; then exit 2; fi; \
	else \
	  set -e; test -x $(LAVA_PY) || $(PYTHON310) -m venv $(LAVA_VENV); \
	  $(LAVA_PY) -m pip install -q --upgrade "pip>=23" "setuptools>=68" wheel; \
	  $(LAVA_PY) -m pip install -q -e ".[lava]"; \
	  touch $(LAVA_STAMP); \
	fi

# lava-dl (netx: Intel's reader of .net files, used by tests/test_netx_lavadl.py) beside lava-nc
# in .venv-lava, WITHOUT its dependencies: lava-dl 0.6.0 pins torch<2.4, and torch never goes
# into .venv-lava (spikedet.sim.netx_shim imports netx without it). Tolerant: if it does not
# install, setup goes on and the tests that need it skip, saying why.
LAVA_DL_PIN := lava-dl==0.6.0
LAVA_DL_STAMP := $(LAVA_VENV)/.lava-dl-installed
setup-lava-dl: $(LAVA_DL_STAMP)
$(LAVA_DL_STAMP): $(LAVA_STAMP)
	@if [ ! -x $(LAVA_PY) ]; then \
	  echo "spikedet setup: no Lava environment, so $(LAVA_DL_PIN) was not installed" >&2; \
	elif $(LAVA_PY) -m pip install -q --no-deps "$(LAVA_DL_PIN)" && \
	     $(LAVA_PY) -c "import spikedet.sim.netx_shim as s; s.load_netx()"; then \
	  touch $(LAVA_DL_STAMP); \
	else \
	  echo "spikedet setup: $(LAVA_DL_PIN) did not install into $(LAVA_VENV); the netx tests will skip" >&2; \
	  if [ -n "$$CI" ]; then exit 2; fi; \
	fi

# Peer NIR exporters (tests/test_exporters.py runs them as subprocesses, docs/semantics.md §4):
# snnTorch, norse and sinabs in their own venv. norse and sinabs go in with --no-deps:
# norse 1.1.0 lists torchvision (only its datasets use it) and sinabs 3.1.3 pins nir<=1.0.4 and
# samna (the Speck chip driver), neither used by their NIR export; their real imports are listed.
PEER_VENV := .venv-peers
PEER_STAMP := $(PEER_VENV)/.spikedet-installed
setup-peers: $(PEER_STAMP)
$(PEER_STAMP): Makefile
	@if ( set -e; test -x $(PEER_VENV)/bin/python || $(PYTHON311) -m venv $(PEER_VENV); \
	  $(PEER_VENV)/bin/python -m pip install -q --upgrade "pip>=23.2" "setuptools>=68" wheel; \
	  $(PEER_VENV)/bin/python -m pip install -q "torch==2.13.0"; \
	  $(PEER_VENV)/bin/python -m pip install -q "nir==1.0.8" "nirtorch==2.6" "snntorch==1.0.0" \
	    "numpy>=2" h5py matplotlib pbr; \
	  $(PEER_VENV)/bin/python -m pip install -q --no-deps "norse==1.1.0" "sinabs==3.1.3"; \
	  $(PEER_VENV)/bin/python -c "import snntorch, norse.torch, sinabs.nir" ); then \
	  touch $(PEER_STAMP); \
	else \
	  echo "spikedet setup: the NIR exporter env ($(PEER_VENV)) did not install; tests/test_exporters.py will skip." >&2; \
	  if [ -n "$$CI" ]; then exit 2; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check spikedet tests benchmarks
	$(VENV)/bin/ruff format --check spikedet tests benchmarks

test: setup lint
	$(PY) -m pytest -q tests

demo: setup
	$(VENV)/bin/spikedet demo --out $(DEMO_OUT)

demo-fast: setup
	$(VENV)/bin/spikedet demo --fast --out $(DEMO_OUT)-fast

# Benchmarks print tables (README "Measured results"); the neuron benchmark's peers
# (spikingjelly, snnTorch, norse) live in their own venv so they never touch .venv.
$(BENCH_STAMP): pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON311) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q "torch==2.13.0"
	$(BENCH_VENV)/bin/python -m pip install -q -e ".[bench]"
	@touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/neurons.py --threads 1
	$(PY) benchmarks/events.py
	$(PY) benchmarks/engines.py

clean-venvs:
	rm -rf $(VENV) $(LAVA_VENV) $(BENCH_VENV) $(PEER_VENV)
