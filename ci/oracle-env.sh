#!/usr/bin/env bash
# Build .venv-zarr2: the test venv's packages with zarr 2 in front of them, so that
# RosettaSciIO's zspy plugin (which needs zarr < 3) can read and write .zspy as the oracle of
# tests/test_hyperspy_oracle.py. Only zarr 2 itself is installed; HyperSpy, RosettaSciIO and
# every other package come from .venv through a .pth file (a few seconds in CI).
# Usage: bash ci/oracle-env.sh   (after ci/install.sh test)
set -euo pipefail
cd "$(dirname "$0")/.."
base_site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -x .venv-zarr2/bin/python ]; then
    "$(.venv/bin/python -c 'import sys; print(sys.executable)')" -m venv --without-pip .venv-zarr2
fi
site=$(.venv-zarr2/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# a .pth line is appended to sys.path after the venv's own site-packages: zarr 2 here wins
echo "$base_site" > "$site/_lazyio_test_venv.pth"
# pip of the test venv installs into this venv's site-packages; numcodecs, numpy and the rest
# are already satisfied through the .pth
.venv/bin/python -m pip install --quiet --target "$site" --no-deps --upgrade -r ci/oracle-requirements.txt
.venv-zarr2/bin/python -c "import zarr, rsciio; assert zarr.__version__ < '3', zarr.__version__"
