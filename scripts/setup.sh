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
pip_install() {
    # pip's notes about local package indexes of this machine are noise; errors still show
    .venv/bin/python -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "kernelbank: installing into .venv (first run takes a few minutes)"
    pip_install --upgrade pip
    # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
    pip_install -c constraints.txt "torch"
    pip_install -c constraints.txt -e ".[s3,dev]"
    echo "$want" > "$stamp"
fi
