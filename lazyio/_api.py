"""``lazyio.load`` and ``lazyio.save``: the read and write pipelines around the plugins.

``load`` resolves the location, applies the safety options, detects the format and checks
the keywords; the plugin reads. ``save`` checks the keywords and option values, decides
about an existing target, closes this process's handles on it, and gives the plugin a
place to write: a temporary sibling renamed into place, a local temporary uploaded whole,
a temporary object moved into place, or the target itself (an in-place update, or a
directory store written remotely); then it verifies. Plugins never decide any of that.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lazyio.errors import (
    DiskFullError,
    LazyioError,
    MissingDirectoryError,
    TargetBusyError,
    TargetExistsError,
    UnsupportedError,
    WriteError,
    access_denied,
    names_target,
    not_found,
    reading,
)
from lazyio.formats import (
    HEAD_BYTES,
    available_plugins,
    detect_format,
    format_from_extension,
    get_plugin,
    store_plugin,
)
from lazyio.location import Location, as_location

if TYPE_CHECKING:
    from lazyio.backends.chunking import Chunks
    from lazyio.deferred import DeferredWrite
    from lazyio.formats import FormatPlugin, UntrustedGuard

__all__ = ["check_keywords", "is_store_object", "load", "save"]

# The keywords of load and save themselves; with a plugin's own options, nothing else.
LOAD_KEYWORDS = frozenset({"format", "lazy", "chunks", "storage_options", "untrusted",
                           "allow_external"})
SAVE_KEYWORDS = frozenset({"format", "overwrite", "chunks", "show_progressbar",
                           "storage_options", "verify", "compute", "resume"})


def is_store_object(source: Any) -> bool:
    """Whether ``source`` is a zarr store or a mapping rather than a path or URL."""
    if isinstance(source, str | os.PathLike | Location):
        return False
    if isinstance(source, MutableMapping):
        return True
    try:
        from zarr.abc.store import Store
    except ImportError:  # pragma: no cover - zarr is a dependency
        return False
    return isinstance(source, Store)


def check_keywords(
    caller: str, plugin: FormatPlugin, given: Collection[str], own: Collection[str],
    *, write: bool,
) -> None:
    """Raise ``TypeError`` for the first keyword in ``given`` that neither ``caller`` (its
    ``own`` keywords) nor the plugin's reader or writer accepts, naming what is accepted."""
    accepted = set(plugin.write_options if write else plugin.read_options)
    unknown = sorted(set(given) - accepted)
    if unknown:
        names = ", ".join(sorted(accepted | set(own)))
        raise TypeError(
            f"{caller}() got an unexpected keyword argument {unknown[0]!r} "
            f"({plugin.name} accepts: {names})"
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def _check_read_chunks(chunks: Any) -> None:
    """Refuse a ``chunks=`` of the wrong type or an unknown name before the file opens."""
    if isinstance(chunks, str):
        if chunks not in ("auto", "storage"):
            raise ValueError(f"chunks must be 'auto', 'storage', an int, a tuple or a dict, "
                             f"not {chunks!r}")
        return
    if chunks is None or isinstance(chunks, Mapping | tuple | list):
        return
    if isinstance(chunks, bool) or not isinstance(chunks, int | np.integer):
        raise TypeError(f"chunks must be 'auto', 'storage', an int, a tuple or a dict, "
                        f"not {chunks!r}")


def load(
    source: Any,
    *,
    format: str | None = None,
    lazy: bool = True,
    chunks: Chunks = "auto",
    storage_options: dict[str, Any] | None = None,
    untrusted: bool | float = False,
    allow_external: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Open a file and return its signals as RosettaSciIO-style dictionaries.

    Parameters
    ----------
    source : str, os.PathLike, Location, zarr store or MutableMapping
        A local path, an fsspec URL (``s3://``, ``https://``, ``memory://``, ...), or for
        formats that accept them (.zspy) a zarr store or an fsspec mapping.
    format : str, optional
        A registered format name (``"hspy"``, ``"zspy"``, ``"npy"``, ``"usid"``, ...) to
        skip detection. By default the format is detected from the content (HDF5
        superblock and ``file_format`` attribute, a USID main dataset, Zarr metadata or a
        zip of it, the ``.npy`` magic), then from the extension.
    lazy : bool, default True
        Return dask arrays whose tasks each read one chunk-aligned block. Opening reads
        metadata only. With ``False`` the data are read into numpy arrays.
    chunks : "auto", "storage", int, tuple or dict
        Dask chunks for lazy reads, rounded to whole storage chunks. ``"storage"`` makes
        the dask chunks exactly the storage chunks (``"auto"`` for data stored without
        chunks, and for h5USID the smallest N-D blocks of whole 2-D storage chunks).
        ``"auto"`` groups
        storage chunks up to dask's ``array.chunk-size``.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    untrusted : bool or float, default False
        With True, a local HDF5 file is first parsed in a child process, so a crash of
        the HDF5 library on a malformed file raises
        :class:`~lazyio.errors.UnsafeFileError` instead of killing the caller, and so
        does a child still parsing after 60 s (or after ``untrusted=<seconds>``): a loop
        in the library. Costs one Python start-up, about 0.2 s.
    allow_external : bool, default False
        HDF5 external links, virtual datasets and external storage (which make HDF5 open
        other files named inside the file) raise ``UnsafeFileError`` unless this is True.
    **options
        Format-specific options (see each plugin's documentation); any other keyword
        raises ``TypeError``.

    Returns
    -------
    list of dict
        One dictionary per signal: ``data``, ``axes``, ``metadata``,
        ``original_metadata``, ``attributes``, ``package``, ``package_version`` (and
        ``models`` for hspy/zspy).
    """
    return read_with(
        "load", source, format=format, lazy=lazy, chunks=chunks,
        storage_options=storage_options, untrusted=untrusted, allow_external=allow_external,
        options=options,
    )


@names_target("source")
def read_with(
    caller: str,
    source: Any,
    *,
    format: str | None,
    lazy: bool,
    chunks: Chunks,
    storage_options: dict[str, Any] | None,
    untrusted: bool | float,
    allow_external: bool,
    options: dict[str, Any],
    own_keywords: Collection[str] = LOAD_KEYWORDS,
) -> list[dict[str, Any]]:
    """The read pipeline behind :func:`load` and the RosettaSciIO-style ``file_reader``s
    (``caller`` names the public function in keyword errors)."""
    _check_bool("lazy", lazy)
    _check_bool("allow_external", allow_external)
    _check_read_chunks(chunks)
    if isinstance(untrusted, bool):
        timeout = None
    elif isinstance(untrusted, int | float) and untrusted > 0:
        timeout = float(untrusted)  # a number is the child's time limit in seconds
    else:
        raise ValueError(f"untrusted must be True, False or a time limit in seconds, "
                         f"not {untrusted!r}")
    if is_store_object(source):
        plugin = store_plugin(format)
        check_keywords(caller, plugin, options, own_keywords, write=False)
        plugin.check_read(options)
        return plugin.read(source, lazy=lazy, chunks=chunks, allow_external=allow_external,
                           **options)
    location = as_location(source, storage_options)
    local = location.local_path
    if local is not None:
        _recover_local(local)
    named = get_plugin(format) if format is not None else None  # unknown names fail first
    if named is not None:
        check_keywords(caller, named, options, own_keywords, write=False)
        named.check_read(options)
    if untrusted is not False:
        _guard(location, [named] if named is not None else None, timeout)
    if named is None:
        with reading(location):
            plugin = get_plugin(detect_format(location))
        check_keywords(caller, plugin, options, own_keywords, write=False)
        plugin.check_read(options)
    else:
        plugin = named
    return plugin.read(location, lazy=lazy, chunks=chunks, allow_external=allow_external,
                       **options)


def _guard(location: Location, plugins: list[FormatPlugin] | None, timeout: float | None) -> None:
    """Run the untrusted-file guards (once each) before anything opens the file."""
    if location.isdir() or not location.exists():
        return  # a directory store (or nothing, reported by the reader): no file to parse
    head = location.read_head(HEAD_BYTES)
    guards: dict[UntrustedGuard, None] = {}
    for plugin in plugins if plugins is not None else available_plugins().values():
        guard = plugin.untrusted_guard()
        if guard is not None:
            guards[guard] = None
    for check in guards:
        check(location, head, timeout)


def save(
    target: Any,
    signal: Any,
    *,
    format: str | None = None,
    overwrite: bool = False,
    chunks: Chunks = None,
    show_progressbar: bool = True,
    storage_options: dict[str, Any] | None = None,
    verify: bool = False,
    compute: bool = True,
    resume: bool = False,
    **options: Any,
) -> DeferredWrite | None:
    """Write a signal dictionary (or a bare numpy/dask array) to a file.

    Dask arrays are streamed chunk by chunk with :func:`dask.array.store`; memory stays
    bounded by the chunk size times the number of workers.

    Parameters
    ----------
    target : str, os.PathLike, Location, zarr store or MutableMapping
        Where to write; a path or fsspec URL, or for .zspy a zarr store.
    signal : dict or array
        A RosettaSciIO-style signal dictionary, or an array (given default axes).
    format : str, optional
        A registered format name; by default taken from the extension (``.hspy``/
        ``.hdf5``, ``.zspy``, ``.npy``, ``.h5``).
    overwrite : bool, default False
        Replace an existing target. Without it an existing target raises
        :class:`~lazyio.errors.TargetExistsError` and nothing is written. A replaced local
        file is swapped in only once the new one is complete.
    chunks : tuple of int, True or None
        Storage chunks. ``None`` picks chunks holding at least one whole signal; ``True``
        lets h5py guess (hspy).
    show_progressbar : bool, default True
        Show a progress bar while data are written.
    storage_options : dict, optional
        Passed to fsspec for URLs.
    verify : bool, default False
        Once written, re-read the target and compare it with the source chunk by chunk
        (BLAKE2b digests computed in dask tasks; the source is computed a second time).
        A mismatch deletes the written file and raises
        :class:`~lazyio.errors.VerificationError` naming the first differing chunk.
    compute : bool, default True
        ``False`` returns a :class:`~lazyio.deferred.DeferredWrite` instead of writing:
        everything up to the array data is done at once (checks, lock, temporary,
        metadata; errors are raised here), and computing it (``dask.compute(*writes)``
        for several, one pass over the data they share; see
        :func:`~lazyio.deferred.save_many`) streams the data, verifies and commits.
        Dropping it uncomputed, or ``.abort()``, writes nothing.
    resume : bool, default False
        Continue an interrupted write of the same signal to the same local target: the
        blocks a killed writer left in its temporary (checked against the digests of its
        journal) are kept and not computed, the others written, then the usual commit.
        An interrupted write of another source or with other options raises
        :class:`~lazyio.errors.ResumeMismatchError`; with nothing to resume it is a
        normal write that can itself be resumed. Remote targets, store objects and
        in-place updates raise :class:`~lazyio.errors.UnsupportedError`.
    **options
        Format-specific options (``compression`` for hspy, ``compressor``,
        ``store_type`` and ``zarr_format`` for zspy, ...); any other keyword raises
        ``TypeError``.

    Returns
    -------
    None, or a DeferredWrite with ``compute=False``
    """
    def write(compute: bool) -> None:
        write_with("save", target, signal, format=format, overwrite=overwrite,
                   chunks=chunks, show_progressbar=show_progressbar,
                   storage_options=storage_options, verify=verify, compute=compute,
                   resume=resume, options=options)

    if compute is False:
        from lazyio.deferred import save_deferred

        if resume is True:
            # a deferred write streams through one shared store() call, outside the journal
            raise UnsupportedError(
                f"{target}: resume=True cannot be combined with compute=False; nothing was "
                "written"
            )
        # the pipeline runs in the delayed write's thread, where store() hands its arrays over
        return save_deferred(target, lambda: write(True))
    write(compute)
    return None


@names_target("target")
def write_with(
    caller: str,
    target: Any,
    signal: Any,
    *,
    format: str | None,
    overwrite: bool,
    chunks: Chunks,
    show_progressbar: bool,
    storage_options: dict[str, Any] | None,
    verify: bool,
    compute: bool,
    options: dict[str, Any],
    own_keywords: Collection[str] = SAVE_KEYWORDS,
    resume: bool = False,
) -> None:
    """The write pipeline behind :func:`save`, ``convert`` and the RosettaSciIO-style
    ``file_writer``s (``caller`` names the public function in keyword errors)."""
    from lazyio.signals import as_signal_dict

    store = is_store_object(target)
    where: Any = target if store else as_location(target, storage_options)
    if store:
        plugin = store_plugin(format)
    else:
        plugin = get_plugin(format if format is not None else format_from_extension(where))
    check_keywords(caller, plugin, options, own_keywords, write=True)
    if compute is False:
        raise UnsupportedError(
            f"{where}: compute=False (a delayed write) is not supported yet; nothing was "
            "written"
        )
    for name, value in (("compute", compute), ("overwrite", overwrite),
                        ("verify", verify), ("show_progressbar", show_progressbar),
                        ("resume", resume)):
        _check_bool(name, value)
    signal = as_signal_dict(signal)
    plugin.check_write(where, signal, options)
    resuming = _resume_description(where, plugin, signal, chunks, options) if resume else None
    common = {"chunks": chunks, "show_progressbar": show_progressbar, **options}
    from lazyio.backends.progress import target_name

    # progress bars name the file asked for, not the temporary it is written to
    with target_name(where.name if isinstance(where, Location) else type(where).__name__):
        check: _Check | None = None
        if verify:
            def check(written: Any, remove: bool) -> None:
                _verify(plugin, written, signal, remove, show_progressbar)

        if store:
            plugin.write(target, signal, **common)
            if check is not None:
                check(target, False)
        else:
            _write_location(plugin, where, signal, overwrite, common, check, resuming)


_Check = Callable[[Any, bool], None]


def _resume_description(
    where: Any, plugin: FormatPlugin, signal: dict[str, Any], chunks: Chunks,
    options: dict[str, Any],
) -> dict[str, str]:
    """What identifies a resumable write (:func:`lazyio.backends.journal.describe_write`);
    refuse ``resume=True`` where there is no local temporary to resume."""
    from lazyio.backends.journal import describe_write

    if not isinstance(where, Location) or where.local_path is None:
        raise UnsupportedError(f"{where}: resume=True needs a local target (remote targets "
                               "and store objects cannot be resumed); nothing was written")
    if plugin.write_mode(options) != "create":
        raise UnsupportedError(f"{where}: resume=True resumes the writing of a new file, "
                               "not an update or an append; nothing was written")
    return describe_write(plugin.name, signal, chunks, options)


def _verify(
    plugin: FormatPlugin, written: Any, signal: dict[str, Any], remove: bool, show: bool
) -> None:
    """Re-read ``written`` and compare it with ``signal``. Called on the temporary before
    it is committed wherever there is one, so a copy that fails never replaces the
    previous version; ``remove`` deletes what failed where it is already in place."""
    from lazyio import handles
    from lazyio.verify import verify_written

    try:
        verify_written(written, signal, format=plugin.name, remove_on_mismatch=remove,
                       show_progressbar=show)
    finally:
        if isinstance(written, Location):
            handles.close_location(written)  # no handle outlives the temporary's rename


def _recover_local(local: str) -> None:
    """Finish what a dead writer of ``local`` left half-done: a directory swap, or an
    update whose journal it committed. One ``lstat`` or two when there is nothing to do."""
    from lazyio.backends.atomic import TargetBusy, journal_name, recover, target_lock

    if os.path.lexists(local) and not os.path.lexists(journal_name(local)):
        return
    try:
        with target_lock(local):
            recover(local)
    except TargetBusy:
        pass  # a live writer holds it: what it does is its own to finish
    except OSError:  # no lock file can go beside it (a read-only folder)
        with contextlib.suppress(OSError):
            recover(local)


def _write_location(
    plugin: FormatPlugin, location: Location, signal: dict[str, Any], overwrite: bool,
    common: dict[str, Any], check: _Check | None = None,
    resuming: dict[str, str] | None = None,
) -> None:
    if location.local_path is not None:
        _write_local(plugin, location, signal, overwrite, common, check, resuming)
        return
    from lazyio.backends.lease import remote_lease

    # one writer at a time, as the local lock: a lease object beside the target
    with _named_as("", location), remote_lease(location):
        _write_remote(plugin, location, signal, overwrite, common, check)


def _write_remote(
    plugin: FormatPlugin, location: Location, signal: dict[str, Any], overwrite: bool,
    common: dict[str, Any], check: _Check | None = None,
) -> None:
    from lazyio import handles
    from lazyio.backends.atomic import remote_temporary, upload_temporary

    mode = plugin.write_mode(common)
    exists = location.exists()
    if mode == "update" and not exists:
        raise not_found(location, "write_dataset=False updates an existing file")
    if mode in ("update", "append") and exists:
        _replaceable(plugin, location)
        handles.close_location(location)  # our read handles must not see it change
        plugin.write(location, signal, **common)
        if check is not None:
            check(location, False)  # an updated file is the user's: never removed
        return
    if exists and not overwrite:
        raise TargetExistsError(f"{location} exists; pass overwrite=True to replace it")
    own_keys = _replaceable(plugin, location) if exists else None
    # our own read handles on the target must not see a half-written or replaced file
    handles.close_location(location)
    strategy = plugin.capabilities.remote_write
    if strategy == "upload":
        with upload_temporary(location) as tmp, _named_as(tmp, location):
            plugin.write(Location(tmp), signal, **common)
            if check is not None:
                check(Location(tmp), False)  # before the upload replaces the old version
    elif strategy == "temporary":
        with remote_temporary(location) as tmp_location, _named_as(tmp_location.url, location):
            plugin.write(tmp_location, signal, **common)
            if check is not None:
                check(tmp_location, False)  # before the move replaces the old version
    else:
        _write_remote_store(plugin, location, signal, own_keys, exists, common)
        if check is not None:
            check(location, True)  # written in place: a store that fails is removed


def _write_remote_store(
    plugin: FormatPlugin, location: Location, signal: dict[str, Any],
    own_keys: list[str] | None, exists: bool, common: dict[str, Any],
) -> None:
    """Write a directory store in place: a marker says the store is being written (so a
    store left unfinished is recognised and replaceable; the plugin's store puts it back
    if zarr clears the prefix, and removes it once the root is written, last); the old
    store's root documents are removed first, so a half-removed store never loads."""
    import socket

    from lazyio.backends.atomic import remove_target
    from lazyio.backends.zarr.targets import WRITING_MARKER

    fs = location.fs
    marker = location.child(WRITING_MARKER).path
    with _named_as(location.url, location):
        fs.pipe_file(marker, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        if own_keys is not None:
            root = location.path.rstrip("/")
            own_keys = [k for k in own_keys if k != marker]
            roots = [k for k in own_keys if k.rpartition("/")[0] == root]
            remove_target(location, roots)
            remove_target(location, [k for k in own_keys if k not in roots])
        elif exists:
            remove_target(location)
            fs.pipe_file(marker, b"")
        plugin.write(location, signal, **common)  # writes the root last, drops the marker
        fs.invalidate_cache()


def _write_local(
    plugin: FormatPlugin, location: Location, signal: dict[str, Any], overwrite: bool,
    common: dict[str, Any], check: _Check | None = None,
    resuming: dict[str, str] | None = None,
) -> None:
    """Write a local target: refuse what must not be replaced, take the target's lock,
    recover a swap a dead writer left half-done, write a temporary, rename it."""
    from lazyio import handles
    from lazyio.backends.atomic import (
        atomic_path,
        checkpoint,
        copy_for_update,
        recover,
        staged_update,
        target_lock,
    )

    assert location.local_path is not None
    path = os.path.abspath(location.local_path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        # every format refuses the same way: no writer creates missing directories
        raise MissingDirectoryError(
            f"{location}: the directory {parent} does not exist; lazyio does not create it"
        )
    mode = plugin.write_mode(common)
    if (overwrite or mode != "create") and os.path.lexists(path) and _special_place(path):
        _replaceable(plugin, location)  # refused before a lock file is put beside it
    with _named_as("", location), target_lock(path):
        recover(path)
        exists = os.path.lexists(path)
        if mode == "update" and not exists:
            raise not_found(location, "write_dataset=False updates an existing file")
        if exists and mode == "create" and not overwrite:
            raise TargetExistsError(f"{location} exists; pass overwrite=True to replace it")
        if exists:
            _replaceable(plugin, location)
        # our own read handles on the target must not see a half-written or replaced file
        handles.close_location(location)
        if mode in ("update", "append") and exists and os.path.isdir(path):
            # a directory store: its metadata tree is updated in a staging copy and moved
            # in under a journal (a kill leaves the old or the new metadata, never a mix);
            # the signals' data chunks are neither copied nor touched
            data = [os.path.relpath(d, path) for d in
                    glob.glob(os.path.join(glob.escape(path), "Experiments", "*", "data"))]
            with staged_update(path, data) as stage, _named_as(stage, location):
                plugin.write(Location(stage), signal, **common)
            if check is not None:
                check(location, False)  # an updated store is the user's: never removed
            return
        from lazyio.backends.journal import resumable

        # resume=True: an interrupted write of the same signal is kept and continued
        with resumable(path, resuming) as resume, \
                atomic_path(path, resume.keep, resuming is not None) as tmp, \
                _named_as(tmp, location), resume.writing(tmp):
            if mode in ("update", "append") and exists:
                # an update killed half-way must leave the old file whole: update a copy
                copy_for_update(path, tmp)
                checkpoint("copied")
            plugin.write(Location(tmp), signal, **common)
            if check is not None:
                # before the rename: a copy that fails verification never replaces the
                # previous version (atomic_path removes it)
                check(Location(tmp), False)


_REFUSAL = ("lazyio replaces only a {fmt} target it recognises (a {fmt} file{store}) and "
            "leaves this untouched")


def _replaceable(plugin: FormatPlugin, location: Location) -> list[str] | None:
    """Refuse to replace (or update) what is not a target of ``plugin``'s kind.

    Returns the keys of a remote Zarr store to remove (its own keys only), else None.
    """
    from lazyio.errors import ForeignTargetError

    dir_stores = plugin.capabilities.accepts_store_objects
    why = _REFUSAL.format(fmt=plugin.name, store=" or a Zarr store" if dir_stores else "")

    def refuse(what: str) -> ForeignTargetError:
        return ForeignTargetError(f"{location} is {what}; {why}")

    local = location.local_path
    if local is not None:
        path = os.path.abspath(local)
        what = _special_place(path)
        if what is not None:
            return _raise(refuse(what))
    else:
        bucketless = location.path.strip("/")
        if "/" not in bucketless and location.url.split("://", 1)[0] in (
                "s3", "s3a", "gs", "gcs", "az", "abfs", "adl", "oss"):
            return _raise(refuse("a bucket root"))
    if location.isdir():
        if not dir_stores:
            return _raise(refuse("a directory"))
        from lazyio.backends.zarr.targets import WRITING_MARKER, hierarchy_keys

        if local is not None:  # the path as lazyio writes it (fsspec would expand "~")
            own, foreign = hierarchy_keys(None, os.path.abspath(local))
        else:
            own, foreign = hierarchy_keys(location.fs, location.path)
        root = (os.path.abspath(local) if local is not None else location.path).rstrip("/")
        unfinished = f"{root}/{WRITING_MARKER}" in own  # lazyio's own, left unfinished
        if not own or not (unfinished or plugin.sniff(location, b"")):
            return _raise(refuse(f"a directory holding {len(foreign)} entries and no "
                                 "Zarr hierarchy"))
        if foreign:
            name = foreign[0][len(root) + 1:]
            return _raise(refuse(f"a Zarr store that also holds {len(foreign)} other "
                                 f"entries (e.g. {name!r})"))
        return own if local is None else None
    with reading(location):
        head = location.read_head(HEAD_BYTES)
        if head and not plugin.sniff(location, head):
            return _raise(refuse(f"a file that is not a {plugin.name} file"))
    return None


def _special_place(path: str) -> str | None:
    """What the local ``path`` is if no writer may ever replace it, else None."""
    from lazyio.backends.atomic import is_special

    special = is_special(path)
    if special is not None:
        target = f" (to {os.readlink(path)})" if os.path.islink(path) else ""
        return special + target
    real = os.path.realpath(path)
    cwd = os.path.realpath(os.getcwd())
    if real == os.path.realpath(os.path.expanduser("~")):
        return "your home directory"
    if real == cwd or cwd.startswith(real.rstrip(os.sep) + os.sep) or real == os.sep:
        return "the working directory or one of its parents"
    return None


def _raise(err: BaseException) -> Any:
    raise err


@contextlib.contextmanager
def _named_as(temporary: str, location: Location) -> Iterator[None]:
    """Errors that name the temporary name the target the caller asked for instead, and
    errors of the operating system (a full disk, a refused directory, a writer holding
    the target) become lazyio's, naming the target."""
    from lazyio.backends.atomic import TargetBusy, is_disk_full

    def named(text: str) -> str:
        return text.replace(temporary, str(location)) if temporary else text

    try:
        yield
    except TargetBusy as err:
        holder = f" ({err.args[0]})" if err.args and err.args[0] else ""
        raise TargetBusyError(
            f"{location}: another process is writing it now{holder}; nothing was written, "
            "try again once it has finished"
        ) from None
    except LazyioError as err:
        message = str(err)
        if temporary and temporary in message and len(err.args) == 1:
            raise type(err)(named(message)) from err
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(
                f"{location}: no space left on the device; nothing was written (a previous "
                "version is intact)"
            ) from err
        if isinstance(err, PermissionError):
            raise access_denied(location, "cannot write there") from err
        if location.local_path is None:
            raise  # transport errors of remote stores are classified by the translator
        if isinstance(err, FileNotFoundError):
            raise MissingDirectoryError(
                f"{location}: a directory it is written in disappeared during the write"
            ) from err
        if isinstance(err, OSError) and type(err) in (OSError, IsADirectoryError,
                                                      NotADirectoryError, BlockingIOError):
            detail = named(err.strerror or str(err))
            raise WriteError(f"{location}: writing failed ({detail})") from err
        raise
