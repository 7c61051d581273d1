#!/usr/bin/env bash
# On a machine with a CUDA GPU: run the fit tests on the GPU, then measure kb.fit there.
# Usage: bash bench/gpu.sh   (from the repository root; installs into .venv-gpu if needed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if ! "$PY" -c "import torch, numpy, scipy, pytest" 2>/dev/null; then
    "$PY" -m venv .venv-gpu && PY=.venv-gpu/bin/python
    "$PY" -m pip install --quiet numpy scipy pytest torch
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'"
KERNELBANK_TEST_DEVICE=cuda PYTHONPATH=. "$PY" -m pytest -q -p no:cacheprovider \
    tests/core/test_fit.py tests/core/test_device.py -o addopts="" 2>&1 | tail -5
PYTHONPATH=. "$PY" bench/gpu_fit.py
