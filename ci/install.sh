#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install lazyio into it.
# Usage: bash ci/install.sh [EXTRAS]   e.g. bash ci/install.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install --quiet -e "$spec"
