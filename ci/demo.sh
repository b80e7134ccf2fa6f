#!/usr/bin/env bash
# The main job: install lazyio (with the demo extra: matplotlib for the figures) into .venv
# and run the demo on a generated dataset.
# Extra arguments go to `lazyio demo` (e.g. --shape 128,128,256,256 --outdir /tmp/out).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install.sh demo
exec .venv/bin/python -m lazyio demo "$@"
