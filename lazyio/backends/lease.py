"""A writers' lease for remote targets: one writer at a time on an object store.

Local targets are serialised by an ``flock`` beside them (:func:`~lazyio.backends.atomic.
target_lock`), which the kernel releases when the owner dies. An object store has no such
lock, so a remote write takes a *lease*: a small object beside the target
(``.<name>.lazyio-lease``) naming its owner and the time it expires.

* Taking it is a conditional put (S3 ``If-None-Match: *``): of two writers that race, the
  store admits exactly one; the other gets :class:`~lazyio.backends.atomic.TargetBusy`
  naming the holder.
* A live writer renews it (a conditional put ``If-Match`` on its own ETag) from a
  background thread every third of its lifetime, so a long write keeps it.
* A writer that died stops renewing; once its lease has expired the next writer replaces
  it, again conditionally on the ETag it read, so two writers taking over one stale lease
  cannot both win.
* On release the owner removes it (after checking it is still its own).

File systems without conditional puts (``memory://``, most fsspec back-ends other than
S3) get a best-effort lease: the same object, written when absent and read back to check
the owner; two writers racing within one round trip may both proceed there. The lifetime
is ``LAZYIO_LEASE_SECONDS`` (default 60 s); expiry compares the holder's clock, written in
the lease, with the reader's, so clocks must agree to within that.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lazyio.backends.atomic import TargetBusy, checkpoint

if TYPE_CHECKING:
    from lazyio.location import Location

__all__ = ["LEASE_ENV", "LEASE_TAG", "lease_name", "remote_lease"]

LEASE_TAG = ".lazyio-lease"
LEASE_ENV = "LAZYIO_LEASE_SECONDS"
DEFAULT_SECONDS = 60.0


def lease_name(target: Location) -> str:
    """The path (in the target's file system) of the lease object of ``target``: a hidden
    sibling, outside the target, so that a store's own keys never include it."""
    base, sep, name = target.path.rstrip("/").rpartition("/")
    return f"{base}{sep}.{name}{LEASE_TAG}"


def _seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(LEASE_ENV, DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _body(owner: str, seconds: float) -> bytes:
    return json.dumps({"owner": owner, "pid": os.getpid(), "host": socket.gethostname(),
                       "expires": time.time() + seconds}).encode()


def _holder(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "a lease of unknown owner"
    return f"pid {holder.get('pid')} on {holder.get('host')}"


class _Store:
    """The conditional operations of one file system (S3: ETags; elsewhere best effort)."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.conditional = protocol in ("s3", "s3a")

    def etag(self) -> str | None:
        try:
            info = self.fs.info(self.path, refresh=True) if self.conditional else None
        except FileNotFoundError:
            return None
        return None if info is None else info.get("ETag")

    def create(self, body: bytes) -> bool:
        """Write the lease if none exists; False if one does."""
        if self.conditional:
            # a look first: an unreachable store fails it within the configured time-outs
            # (a PUT to an endpoint that never answers was seen waiting for minutes)
            if self.fs.exists(self.path):
                return False
            return self._put_if(body, FileExistsError, mode="create")
        if self.fs.exists(self.path):
            return False
        return self._put_and_read_back(body)

    def replace(self, body: bytes, etag: str | None) -> bool:
        """Overwrite the lease if it is still the version ``etag``; False if not."""
        if self.conditional:
            if etag is None:
                return False
            return self._put_if(body, FileNotFoundError, IfMatch=etag)
        return self._put_and_read_back(body)

    def _put_if(self, body: bytes, lost: type[OSError], **condition: Any) -> bool:
        """A conditional PUT; False where the condition failed (``lost``, or a 412)."""
        try:
            self.fs.pipe_file(self.path, body, **condition)
        except lost:
            return False
        except OSError as err:
            if _precondition_failed(err):
                return False
            raise
        return True

    def _put_and_read_back(self, body: bytes) -> bool:
        """Best effort where PUTs are not conditional: write, then read back whose it is."""
        self.fs.pipe_file(self.path, body)
        return _holder(self.fs.cat_file(self.path)) == _holder(body)

    def read(self) -> tuple[dict[str, Any], str | None] | None:
        try:
            etag = self.etag()
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return _holder(raw), etag


def _precondition_failed(err: OSError) -> bool:
    text = f"{err} {err.__cause__}"
    return "PreconditionFailed" in text or "Precondition" in text or "412" in text


@contextlib.contextmanager
def remote_lease(target: Location) -> Iterator[None]:
    """Hold the writers' lease of the remote ``target`` for the block.

    Raises
    ------
    TargetBusy
        Another writer holds a lease that has not expired (``args[0]`` says who).
    """
    if "/" not in target.path.strip("/"):
        yield  # a bucket root: no sibling to hold a lease (and no writer may replace it)
        return
    seconds = _seconds()
    fs = target.fs
    store = _Store(fs, lease_name(target))
    owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    body = _body(owner, seconds)
    try:
        created = store.create(body)
    except Exception as err:  # noqa: BLE001 - a read-only or unreachable store: the write says so
        logging.getLogger("lazyio").debug("%s: no lease taken (%r); writing without", target, err)
        yield
        return
    if not created:
        found = store.read()
        if found is not None:
            holder, etag = found
            expires = holder.get("expires")
            alive = isinstance(expires, int | float) and expires > time.time()
            if alive or not store.replace(body, etag):
                raise TargetBusy(_describe(holder))
        elif not store.create(body):  # released between our two looks: try once more
            raise TargetBusy(_describe(_holder(fs.cat_file(store.path))))
    checkpoint("leased")
    stop = threading.Event()
    current = [store.etag()]  # our version of the lease, for conditional renewals

    def renew() -> None:
        # a third of the lifetime between renewals: two may fail before it expires
        while not stop.wait(seconds / 3):
            with contextlib.suppress(Exception):  # a failed renewal is retried
                fresh = _body(owner, seconds)
                if store.conditional:
                    if not store.replace(fresh, current[0]):
                        return  # taken over: ours expired (the process stalled)
                    current[0] = store.etag()
                else:
                    found = store.read()
                    if found is None or found[0].get("owner") != owner:
                        return
                    store.replace(fresh, None)

    keeper = threading.Thread(target=renew, name="lazyio-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        with contextlib.suppress(Exception):  # the lease expires anyway
            found = store.read()
            if found is not None and found[0].get("owner") == owner:
                fs.rm_file(store.path)
        fs.invalidate_cache()
