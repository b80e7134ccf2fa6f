#!/usr/bin/env bash
# Start one process of the no-shared-disk test cluster (tests/nodisk_cluster.py): a `dask
# scheduler` or a `dask worker` in a mount namespace of its own, where the client's files
# cannot be seen.
#
# Usage: ci/nodisk-node.sh CODE VENV HIDE... -- PYTHON_ARGS...
#   CODE   a folder with the code the node runs (lazyio/ and nodisk_cluster.py), copied
#          into the node before anything is hidden: a cluster has the software, not the data
#   VENV   the Python environment (a venv's root); bound into the node, since it may live
#          inside a hidden folder (CI's clone keeps .venv in the working directory)
#   HIDE   folders of the client (its working directory, its data): each is covered by an
#          empty read-only tmpfs in the node
# The node gets a private /tmp (a tmpfs), runs from /tmp/node with PYTHONPATH=/tmp/node/code,
# and execs `VENV/bin/python PYTHON_ARGS...` (e.g. `-m dask worker tcp://127.0.0.1:PORT`).
# The namespace, its mounts and the process end together: nothing to tear down but the
# process, which the fixture stops by its id.
#
# Needs root (or CAP_SYS_ADMIN) and util-linux's `unshare`; `ci/nodisk-node.sh --check`
# says whether this machine can create such a node (CI runs it first).
set -euo pipefail

if [ "${1:-}" = "--check" ]; then
    command -v unshare >/dev/null || { echo "nodisk-node: util-linux 'unshare' is missing" >&2; exit 1; }
    # shellcheck disable=SC2016
    out="$(unshare --mount --propagation private -- sh -c \
        'mount -t tmpfs nodisk-check /mnt 2>&1 && echo mounted' 2>&1)" || true
    if [ "$out" != "mounted" ]; then
        echo "nodisk-node: cannot create a mount namespace with a tmpfs (root needed): $out" >&2
        exit 1
    fi
    echo "nodisk-node: mount namespaces with tmpfs work"
    exit 0
fi

if [ -z "${LAZYIO_NODISK_INSIDE:-}" ]; then
    export LAZYIO_NODISK_INSIDE=1
    # private propagation: the mounts below stay in this namespace, the host never sees them
    exec unshare --mount --propagation private -- "$0" "$@"
fi

code="$1"; venv="$2"; shift 2
hide=()
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do hide+=("$1"); shift; done
[ "${1:-}" = "--" ] || { echo "nodisk-node: missing -- before the Python arguments" >&2; exit 2; }
shift

# held open, so they stay reachable (through /proc/self/fd) once /tmp and the hidden
# folders are covered: the code may be staged in the client's /tmp, the venv in its clone
exec 3<"$code" 4<"$venv"
mount -t tmpfs -o size=1g,mode=1777 nodisk-tmp /tmp
mkdir -p /tmp/node/code /tmp/node/venv /tmp/node/work
cp -r /proc/self/fd/3/. /tmp/node/code/
mount --bind /proc/self/fd/4 /tmp/node/venv
exec 3<&- 4<&-
for dir in "${hide[@]}"; do
    # a folder under /tmp is already gone (the private /tmp is empty)
    if [ -d "$dir" ]; then
        mount -t tmpfs -o size=64k,mode=0555,ro nodisk-hidden "$dir"
    fi
done
cd /tmp/node/work
export PYTHONPATH=/tmp/node/code
exec /tmp/node/venv/bin/python "$@"
