"""Resumable writes: a journal of the blocks written, so that a killed write continues.

With ``lazyio.save(..., resume=True)`` the temporary a local write goes to gets a journal
beside it (``<temporary>.journal``): a header describing the write (format, source token,
shape, dtype, chunks, writer options, metadata) and one line per block once the block is
in the temporary, with what is needed to check it later (CRC-32 and length of what was
stored). If the writer dies, its temporary and journal stay (a normal write removes them,
as it removes every dead writer's temporary); the next ``resume=True`` write of the same
target finds them under the target's lock, refuses them if the description differs
(:class:`~lazyio.errors.ResumeMismatchError`), and otherwise restores every journaled
block whose stored bytes still match their digests into its own new temporary *without
computing it*; only the other blocks are computed and written. Then the usual commit.

How a block is restored depends on the target, never on the old temporary's own
metadata (a killed HDF5 writer leaves a file that HDF5 usually cannot open: its chunk
index is still in the library's cache):

- ``.npy``: the block's bytes are read from the old payload, checked and written.
- HDF5 (hspy, USID), chunks written with ``write_direct_chunk``: the journal holds each
  encoded chunk's file offset, size and digest; the bytes are read at that offset,
  checked and written into the new file as they are (no decoding, no encoding). Regions
  written through h5py (filters lazyio cannot encode, unchunked datasets) are not
  journaled and are computed again.
- Zarr directories (and the directory a zip store is built in): each chunk file of the
  block is checked and hard-linked into the new store (copied where links fail); a
  chunk zarr did not write (all fill value) must still be absent.

:func:`checkpoint` ``chunk-<n>`` follows the n-th journaled block of a process, so the
test suite can kill a write after exactly n blocks (``LAZYIO_TEST_KILL_AT=chunk-3``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from lazyio.backends.atomic import (
    _OWNED,
    TMP_TAG,
    _host_tag,
    _siblings,
    checkpoint,
    owner_alive,
)

__all__ = ["JOURNAL_SUFFIX", "Journal", "Resume", "active", "describe_write", "resumable"]

JOURNAL_SUFFIX = ".journal"
_VERSION = 1
_logger = logging.getLogger("lazyio")

# the fields of a write's description, in the order a refusal names them: the source
# last, since a changed shape or dtype changes the source's token too
_FIELDS = (("format", "format"), ("shape", "shape"), ("dtype", "dtype"),
           ("chunks", "chunks"), ("options", "writer options (compression, ...)"),
           ("metadata", "metadata or axes"), ("source", "source data"))

_ACTIVE: contextvars.ContextVar[Resume | None] = contextvars.ContextVar("lazyio_resume",
                                                                        default=None)


def active() -> Resume | None:
    """The resumable write in progress in this context, if any."""
    return _ACTIVE.get()


def _digest(data: Any) -> str:
    # CRC-32 and the length: the journal guards against blocks damaged or never written
    # (a torn write, pages lost with the machine), not against an attacker; zlib's CRC-32
    # ran at 640 MB/s here against 120 MB/s for BLAKE2b (2 shared cores), and a write
    # digests every byte it writes
    view = memoryview(data)
    return f"{zlib.crc32(view):08x}-{view.nbytes}"


def _digest_array(block: Any, dtype: np.dtype[Any]) -> str:
    return _digest(np.ascontiguousarray(block, dtype=dtype).view(np.uint8).reshape(-1).data)


def _token(value: Any) -> str:
    import dask
    from dask.base import tokenize

    # a value dask cannot tokenize deterministically would get a random token, and every
    # resumption would then be refused: its text stands in for it
    try:
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            return str(tokenize(value))
    except (RuntimeError, TypeError, ValueError):
        return str(tokenize(repr(value)))


def describe_write(
    format_name: str, signal: dict[str, Any], chunks: Any, options: dict[str, Any]
) -> dict[str, str]:
    """What must not change between an interrupted write and its resumption.

    The source is identified by its dask name (lazyio's lazy arrays carry the file's
    identity and modification token in it) or, for a numpy array, by a hash of its bytes.
    """
    data = signal["data"]
    name = getattr(data, "name", None)
    source = str(name) if isinstance(name, str) and hasattr(data, "dask") else _token(
        np.asarray(data))
    rest = {k: v for k, v in signal.items() if k != "data"}
    return {
        "format": format_name,
        "source": source,
        "shape": str(tuple(int(s) for s in data.shape)),
        "dtype": str(np.dtype(data.dtype)),
        "chunks": repr(chunks),
        "options": repr(sorted((str(k), repr(v)) for k, v in options.items())),
        "metadata": _token(rest),
    }


def _mismatch(target: str, old: dict[str, Any], new: dict[str, str]) -> str:
    for key, words in _FIELDS:
        if old.get(key) != new.get(key):
            return (f"{target}: cannot resume: the interrupted write had another {words} "
                    f"({old.get(key)} there, {new.get(key)} now); nothing was written. "
                    "To start over, write it again without resume=True (the "
                    "interrupted write is then discarded)")
    return f"{target}: cannot resume: the interrupted write was of another kind"


_COUNT_LOCK = threading.Lock()
_COUNTS: dict[str, int] = {}


@dataclass(frozen=True)
class Journal:
    """The journal file of one write; picklable, so that tasks on workers append to it."""

    path: str

    def record(self, index: int, region: tuple[slice, ...], record: Any) -> None:
        """Append that block ``region`` of target ``index`` is written (after it is)."""
        line = json.dumps([index, [s.start for s in region], [s.stop for s in region],
                           record]) + "\n"
        # one append per line: lines of concurrent tasks never interleave
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        with _COUNT_LOCK:
            n = _COUNTS[self.path] = _COUNTS.get(self.path, 0) + 1
        checkpoint(f"chunk-{n}")


Key = tuple[int, tuple[int, ...], tuple[int, ...]]


def _read_journal(path: str) -> tuple[dict[str, Any] | None, dict[Key, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, {}
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        return None, {}
    if not isinstance(header, dict) or header.get("version") != _VERSION:
        return None, {}
    entries: dict[Key, Any] = {}
    for line in lines[1:]:
        try:  # the last line of a killed writer may be cut short
            index, starts, stops, record = json.loads(line)
            entries[(int(index), tuple(starts), tuple(stops))] = record
        except (ValueError, TypeError):
            continue
    return header, entries


@dataclass
class Resume:
    """One resumable write: the interrupted write it continues (if any) and its journal."""

    final_path: str
    description: dict[str, str] | None
    previous: str | None = None  # the interrupted write's temporary
    entries: dict[Key, Any] = field(default_factory=dict)
    journal: Journal | None = None
    temporary: str | None = None
    restored: int = 0
    written: int = 0
    _fds: dict[str, int] = field(default_factory=dict)

    @property
    def keep(self) -> tuple[str, ...]:
        """Names (prefixes) of the interrupted write that cleanup must leave in place."""
        return (self.previous,) if self.previous is not None else ()

    def old_path(self, path: str) -> str | None:
        """Where the interrupted write kept what ``path`` (inside the new temporary) is."""
        if self.previous is None or self.temporary is None or not path.startswith(
                self.temporary):
            return None
        return self.previous + path[len(self.temporary):]

    @contextlib.contextmanager
    def writing(self, temporary: str) -> Iterator[None]:
        """Journal the write into ``temporary`` (stores in this context are resumable)."""
        if self.description is None:
            yield
            return
        self.temporary = os.path.abspath(temporary)
        self.journal = Journal(self.temporary + JOURNAL_SUFFIX)
        header = {"version": _VERSION, "target": self.final_path,
                  "describe": self.description}
        with open(self.journal.path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def read_old(self, path: str, offset: int, size: int) -> bytes | None:
        """``size`` bytes at ``offset`` of the old file matching the new ``path``."""
        old = self.old_path(path)
        if old is None:
            return None
        fd = self._fds.get(old)
        if fd is None:
            try:
                fd = self._fds[old] = os.open(old, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            data = os.pread(fd, size, offset)
        except OSError:
            return None
        return data if len(data) == size else None

    def store(self, arrays: Sequence[Any], targets: Sequence[Any], show_progressbar: bool) -> None:
        """Write ``arrays`` into ``targets``: journaled blocks of the interrupted write are
        restored (never computed), the others computed, written and journaled."""
        import dask
        import dask.array as da
        from dask.array.core import slices_from_chunks
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        from lazyio.backends.progress import label_for
        from lazyio.backends.store import progress, uses_distributed

        assert self.journal is not None
        cluster = uses_distributed()
        todo: list[Any] = []
        here: list[tuple[Any, Any, tuple[slice, ...], int]] = []  # written by this process
        plain: list[tuple[Any, Any]] = []
        nbytes = 0
        for index, (array, target) in enumerate(zip(arrays, targets, strict=True)):
            adapter = _adapter(target)
            if adapter is None:  # a target lazyio cannot journal: written whole again
                plain.append((array, target))
                nbytes += int(array.nbytes)
                continue
            # HDF5 files are written by the process holding them: on a cluster the
            # workers encode, this process writes (as store() does)
            single = cluster and getattr(target, "single_writer", False)
            (array,) = dask.optimize(array)  # its own optimisations (fused reads), as in store
            name = f"lazyio-resume-{uuid.uuid4().hex}"
            layer: dict[Any, Any] = {}
            keys = product(*(range(len(c)) for c in array.chunks))
            for n, (region, block) in enumerate(zip(slices_from_chunks(array.chunks), keys,
                                                    strict=True)):
                if self._restore(index, adapter, region):
                    self.restored += 1
                    continue
                nbytes += int(np.prod([s.stop - s.start for s in region])) * array.dtype.itemsize
                if single:
                    here.append((adapter, Delayed((array.name, *block), array.dask,
                                                  layer=array.name), region,
                                 index))
                    continue
                # one task per block left, reading only its own source blocks: the graph
                # is culled to these, so restored blocks are never computed
                layer[(name, n)] = (functools.partial(
                    _write_block, adapter=adapter, region=region, journal=self.journal,
                    index=index), (array.name, *block))
            if layer:
                done = (name, "done")
                layer[done] = (_done, list(layer))
                graph = HighLevelGraph.from_collections(name, layer, dependencies=[array])
                todo.append(Delayed(done, graph, layer=name))
                self.written += len(layer) - 1
        self.written += len(here)
        if plain:
            todo.append(da.store([a for a, _ in plain], [t for _, t in plain], compute=False))
        _logger.info("%s: resuming, %d blocks restored, %d to write", self.final_path,
                     self.restored, self.written)
        if todo:
            with progress(show_progressbar, label_for("writing"), nbytes):
                dask.compute(*todo)
        if here:
            self._write_here(here)

    def _write_here(self, blocks: list[tuple[Any, Any, tuple[slice, ...], int]]) -> None:
        """Encode blocks on the cluster, write and journal them here, a window at a time."""
        import dask
        from distributed import as_completed, default_client

        assert self.journal is not None
        client = default_client()
        window = 2 * max(1, sum(client.nthreads().values()))
        todo = iter(blocks)
        places: dict[Any, tuple[Any, tuple[slice, ...], int]] = {}

        def submit() -> Any:
            item = next(todo, None)
            if item is None:
                return None
            adapter, block, region, index = item
            future = client.compute(dask.delayed(adapter.target.encode_block, pure=True)(
                region, block))
            places[future.key] = (adapter, region, index)
            return future

        pending = as_completed([f for f in (submit() for _ in range(window)) if f is not None])
        for future in pending:
            adapter, region, index = places.pop(future.key)
            self.journal.record(index, region, adapter._write(future.result()))
            nxt = submit()
            if nxt is not None:
                pending.add(nxt)

    def _restore(self, index: int, adapter: Any, region: tuple[slice, ...]) -> bool:
        if self.previous is None:
            return False
        key = (index, tuple(s.start for s in region), tuple(s.stop for s in region))
        record = self.entries.get(key)
        if record is None:
            return False
        try:
            new = adapter.restore(region, record, self)
        except (OSError, ValueError):
            new = None
        if new is None:
            return False
        assert self.journal is not None
        self.journal.record(index, region, new)
        return True


def _write_block(block: Any, *, adapter: Any, region: tuple[slice, ...], journal: Journal,
                 index: int) -> None:
    # a dask task: write, then say so
    journal.record(index, region, adapter.write_recorded(region, block))


def _done(_results: list[None]) -> None:
    return None


def _find_previous(final_path: str, description: dict[str, str]) -> tuple[
        str | None, dict[Key, Any]]:
    """The newest interrupted write of ``final_path`` described as ``description``.

    Called under the target's lock: no other writer of the target is alive, so a
    temporary of this very process is as finished as a dead one's.
    """
    found: list[tuple[int, int, str, dict[Key, Any]]] = []
    other: tuple[int, dict[str, Any]] | None = None
    for journal in _siblings(final_path, TMP_TAG):
        if not journal.endswith(JOURNAL_SUFFIX):
            continue
        name = os.path.basename(journal)
        owner = _OWNED.match(name.rpartition(TMP_TAG)[2])
        mine = owner is not None and owner["host"] == _host_tag() and int(
            owner["pid"]) == os.getpid()
        if owner_alive(name) and not mine:
            continue
        temporary = journal[: -len(JOURNAL_SUFFIX)]
        if not (os.path.lexists(temporary) or os.path.lexists(temporary + ".dir")):
            continue  # committed (or removed) after its journal was written
        header, entries = _read_journal(journal)
        if header is None:
            continue
        try:
            mtime = os.stat(journal).st_mtime_ns
        except FileNotFoundError:
            continue
        if header.get("describe") == description:
            found.append((len(entries), mtime, temporary, entries))
        elif other is None or mtime > other[0]:
            other = (mtime, dict(header.get("describe") or {}))
    if found:
        # the one holding most blocks: a resumed write killed before it restored anything
        # has a newer, emptier journal than the write it was resuming
        _count, _mtime, temporary, entries = max(found, key=lambda f: (f[0], f[1]))
        return temporary, entries
    if other is not None:
        from lazyio.errors import ResumeMismatchError

        raise ResumeMismatchError(_mismatch(final_path, other[1], description))
    return None, {}


@contextlib.contextmanager
def resumable(final_path: str, description: dict[str, str] | None) -> Iterator[Resume]:
    """Find the interrupted write to continue (under the target's lock), and once the
    write is committed remove it and the journals.

    With ``description`` None the write is not resumable: the yielded object keeps
    nothing and journals nothing.

    Raises
    ------
    ResumeMismatchError
        An interrupted write of ``final_path`` exists, of another source or with other
        options.
    """
    final_path = os.path.abspath(final_path)
    resume = Resume(final_path, description)
    if description is None:
        yield resume
        return
    resume.previous, resume.entries = _find_previous(final_path, description)
    try:
        yield resume
    except BaseException as err:
        # the new temporary is gone (atomic_path removed it; not after a Ctrl-C, which
        # leaves it to be resumed): its journal goes too; the interrupted write stays
        if resume.journal is not None and not isinstance(err, KeyboardInterrupt):
            _remove(resume.journal.path)
        raise
    if resume.journal is not None:
        _remove(resume.journal.path)
    if resume.previous is not None:
        from lazyio.backends.atomic import remove_path

        for leftover in (resume.previous, resume.previous + ".dir",
                         resume.previous + JOURNAL_SUFFIX):
            remove_path(leftover)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


# ---------------------------------------------------------------------------------------
# What a block is, for each kind of target: how to record it and how to restore it.


def _adapter(target: Any) -> Any:
    from lazyio.backends.hdf5.target import H5ChunkTarget
    from lazyio.backends.raw.npy_target import NpyTarget
    from lazyio.backends.zarr.targets import ZarrRegionTarget

    if isinstance(target, NpyTarget):
        return _NpyBlocks(target)
    if isinstance(target, H5ChunkTarget):
        return _H5Blocks(target)
    if isinstance(target, ZarrRegionTarget):
        return _ZarrBlocks(target) if _zarr_root(target) is not None else None
    return None


@dataclass(frozen=True)
class _NpyBlocks:
    target: Any

    def write_recorded(self, region: tuple[slice, ...], block: Any) -> str:
        self.target[region] = block
        return _digest_array(block, self.target.dtype)

    def restore(self, region: tuple[slice, ...], record: Any, resume: Resume) -> str | None:
        t = self.target
        old = resume.old_path(t.path)
        if old is None or not os.path.isfile(old):
            return None
        whole = np.memmap(old, dtype=t.dtype, mode="r", offset=t.offset, shape=t.shape)
        values = np.array(whole[region])
        del whole
        if _digest_array(values, t.dtype) != record:
            return None
        t[region] = values
        return str(record)


@dataclass(frozen=True)
class _H5Blocks:
    target: Any

    def _filename(self) -> str:
        from lazyio.backends.hdf5.target import WRITERS

        h5file = WRITERS.get(self.target.key)
        return os.path.abspath(h5file.filename) if h5file is not None else ""

    def _write(self, encoded: list[tuple[tuple[int, ...], Any]]) -> list[Any] | None:
        from lazyio.backends.hdf5.target import _WRITE_LOCK

        self.target.write_encoded(encoded)
        if any(isinstance(data, np.ndarray) for _, data in encoded):
            return None  # written through h5py's cache: not on disk yet, not journaled
        entries = []
        with _WRITE_LOCK:
            dset = self.target._dataset()
            for offset, data in encoded:
                info = dset.id.get_chunk_info_by_coord(tuple(offset))
                entries.append([list(offset), int(info.byte_offset), int(info.size),
                                _digest(data)])
        return entries

    def write_recorded(self, region: tuple[slice, ...], block: Any) -> list[Any] | None:
        return self._write(self.target.encode_block(region, block))

    def restore(self, region: tuple[slice, ...], record: Any,
                resume: Resume) -> list[Any] | None:
        if not record:
            return None
        path = self._filename()
        encoded = []
        for offset, address, size, digest in record:
            data = resume.read_old(path, int(address), int(size))
            if data is None or _digest(data) != digest:
                return None
            encoded.append((tuple(offset), data))
        return self._write(encoded)


def _zarr_root(target: Any) -> str | None:
    from zarr.storage import LocalStore

    array = target.array
    if not isinstance(array.store, LocalStore) or not array.ndim:
        return None
    return os.path.join(os.path.abspath(os.fspath(array.store.root)),
                        *[p for p in array.path.strip("/").split("/") if p])


@dataclass(frozen=True)
class _ZarrBlocks:
    target: Any

    def _files(self, region: tuple[slice, ...]) -> list[str]:
        array = self.target.array
        root = _zarr_root(self.target)
        assert root is not None
        grid = array.shards or array.chunks  # a shard is the unit of storage
        ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(region, grid, strict=True)]
        return [os.path.join(root, *array.metadata.encode_chunk_key(coords).split("/"))
                for coords in product(*ranges)]

    def write_recorded(self, region: tuple[slice, ...], block: Any) -> dict[str, str | None]:
        self.target[region] = block
        record: dict[str, str | None] = {}
        for path in self._files(region):
            try:
                with open(path, "rb") as f:
                    record[_relative(self.target, path)] = _digest(f.read())
            except FileNotFoundError:
                record[_relative(self.target, path)] = None  # all fill value: no file
        return record

    def restore(self, region: tuple[slice, ...], record: Any,
                resume: Resume) -> dict[str, str | None] | None:
        files = self._files(region)
        wanted = {_relative(self.target, p): p for p in files}
        if set(wanted) != set(record):
            return None
        moves: list[tuple[str, str]] = []
        for rel, path in wanted.items():
            old = resume.old_path(path)
            if old is None:
                return None
            try:
                with open(old, "rb") as f:
                    digest: str | None = _digest(f.read())
            except FileNotFoundError:
                digest = None
            if digest != record[rel]:
                return None
            if digest is not None:
                moves.append((old, path))
        for old, path in moves:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            try:
                os.link(old, path)  # the interrupted write keeps its copy until the commit
            except OSError:
                import shutil

                shutil.copyfile(old, path)
        return dict(record)


def _relative(target: Any, path: str) -> str:
    root = _zarr_root(target)
    assert root is not None
    return os.path.relpath(path, root).replace(os.sep, "/")

