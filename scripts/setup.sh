#!/usr/bin/env bash
# Creates .venv and installs kernelbank with everything the demo, the tests and the
# benchmarks need. Idempotent: a second run with an unchanged pyproject.toml is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.kernelbank-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet -c constraints.txt "torch"
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[s3,dev]"
    echo "$want" > "$stamp"
fi
