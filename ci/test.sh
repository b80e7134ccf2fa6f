#!/usr/bin/env bash
# Install lazyio with its test extra into .venv, check style and types, and run the test suite.
# Extra arguments go to pytest (e.g. -k hspy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh test
bash ci/oracle-env.sh  # .venv-zarr2 for the .zspy oracle of tests/test_hyperspy_oracle.py
.venv/bin/ruff check .
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
