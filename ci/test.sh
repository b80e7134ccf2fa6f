#!/usr/bin/env bash
# Install lazyio with its test and docs extras into .venv, check style and types, build the
# documentation (strict: any warning fails), and run the test suite.
# Extra arguments go to pytest (e.g. -k hspy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh test,docs
bash ci/oracle-env.sh  # .venv-zarr2 for the .zspy oracle of tests/test_hyperspy_oracle.py
.venv/bin/ruff check .
.venv/bin/python -m mypy
# tests/test_nodisk_cluster.py starts nodes in mount namespaces (root): say early if it can't
bash ci/nodisk-node.sh --check || echo "tests/test_nodisk_cluster.py will fail: see above"
site="$(mktemp -d)"
# not --quiet: it hides warnings from the strict check as well, so a broken link would pass
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --site-dir "$site"
rm -rf "$site"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
