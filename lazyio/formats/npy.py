"""The ``.npy`` format plugin: distributed memory-mapped reads, streamed writes.

Reads parse the header here (format versions 1, 2 and 3; Fortran order, byte order,
structured and 0-d arrays), refuse object arrays (nothing is ever unpickled), and check
that the file holds the payload its header promises. Lazy reads are a
:func:`~lazyio.backends.raw.memmap.memmap_distributed` of the payload; eager reads copy it into
memory (or map it, with ``mmap_mode``). Writes stream dask arrays block by block into the
payload (:mod:`lazyio.backends.raw.npy_target`). A ``.npy`` file holds no metadata: only the data are
written, and read signals get default axes. The RosettaSciIO-style ``lazyio.npy.file_reader``
and ``file_writer`` live in :mod:`lazyio.rsciio`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lazyio.backends import StorageLayout
from lazyio.backends.chunking import Chunks
from lazyio.backends.raw.memmap import MemmapSource, memmap_distributed
from lazyio.backends.raw.npy_header import MAGIC, NpyHeader, read_header
from lazyio.errors import FormatError, UnsupportedError, reading
from lazyio.formats import (
    Capabilities,
    FileDescription,
    FormatPlugin,
    OptionError,
    check_axes,
    check_bool_option,
)
from lazyio.location import Location, as_location
from lazyio.signals import default_axes, make_signal_dict

if TYPE_CHECKING:
    import dask.array as da

__all__ = ["PLUGIN", "NpyFormat"]

MmapMode = Literal["r", "r+", "c"]


def _read_eager(
    location: Location, header: NpyHeader, mmap_mode: MmapMode | None
) -> np.ndarray:
    if mmap_mode is not None:
        if location.local_path is None:
            raise UnsupportedError(f"{location}: mmap_mode needs a local file")
        if mmap_mode not in ("r", "r+", "c"):
            raise ValueError(f"mmap_mode must be 'r', 'r+' or 'c' to read, not {mmap_mode!r}")
        if header.nbytes == 0:  # numpy cannot map zero bytes
            return np.empty(header.shape, dtype=header.dtype, order=header.order)
        return np.memmap(
            location.local_path, dtype=header.dtype, mode=mmap_mode, offset=header.offset,
            shape=header.shape, order=header.order,
        )
    count = math.prod(header.shape)
    if location.local_path is not None and header.dtype.itemsize:
        with open(location.local_path, "rb") as f:
            f.seek(header.offset)
            flat = np.fromfile(f, dtype=header.dtype, count=count)
        if flat.size != count:  # the file shrank since its header was checked
            raise FormatError(
                f"{location}: the payload ended after {flat.size} of {count} items"
            )
        return flat.reshape(header.shape, order=header.order)
    raw = np.empty(header.nbytes, dtype=np.uint8)
    with location.open("rb") as f:
        f.seek(header.offset)
        view = raw.data  # a memoryview of the buffer
        done = 0
        while done < header.nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise FormatError(
                    f"{location}: the payload ended after {done} of {header.nbytes} bytes"
                )
            done += n
    flat = raw.view(header.dtype) if header.dtype.itemsize else np.empty(count, header.dtype)
    return flat.reshape(header.shape, order=header.order)


def _check_ints(name: str, value: Any) -> None:
    if value is None:
        return
    items = [value] if isinstance(value, int | np.integer) else value
    if isinstance(items, Iterable) and not isinstance(items, Sequence | np.ndarray):
        return  # an iterator: checking it would consume it
    if isinstance(items, str | bytes) or not isinstance(items, Iterable) or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in items):
        raise OptionError(f"{name} must be integers, not {value!r}")


def _place_scan(frames: np.ndarray, pos: np.ndarray, nav_shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(tuple(nav_shape) + frames.shape[1:], dtype=frames.dtype)
    out[tuple(pos.T)] = frames[: len(pos)]
    return out


class NpyFormat(FormatPlugin):
    """NumPy's ``.npy`` format: data only, no axes or metadata.

    Read options
    ------------
    navigation_axes : iterable of int, optional
        Axes marked ``navigate`` in the returned axes; none by default.
    key : str, optional
        For a structured dtype, read this field only (its sub-array axes are appended).
    positions : array-like of int, optional
        Scan positions ``(n_frames, n_navigation_axes)``: the file holds frames (its last
        two axes are the signal) and frame ``i`` goes to navigation index
        ``positions[i]``; positions without a frame are zero.
    navigation_shape : tuple of int, optional
        The scan's navigation shape with ``positions``; by default just large enough.
    block_size_limit : int or str, optional
        Bytes per block for ``"auto"`` chunks.
    mmap_mode : {"r", "r+", "c"}, optional
        Eager reads only: return a :class:`numpy.memmap` (as :func:`numpy.load` does).
    max_header_size : int, optional
        Largest header accepted (10000 bytes by default, as in :func:`numpy.load`).
    allow_pickle : bool, default False
        Accepted for compatibility with :func:`numpy.load`; ``True`` is refused, since
        lazyio never unpickles.
    fix_imports, encoding
        Accepted for compatibility with :func:`numpy.load`; they concern pickled arrays
        only and change nothing.

    Write options
    -------------
    allow_pickle, fix_imports
        Accepted for compatibility with :func:`numpy.save`; object arrays are refused
        either way. ``chunks`` rechunks a dask array before writing (``.npy`` has no
        storage chunks; blocks only set the size of each write task).
    """

    name = "npy"
    extensions = (".npy",)
    description = "NumPy's .npy format (data only)"
    capabilities = Capabilities(
        keeps_axes=False, keeps_metadata=False, keeps_original_metadata=False,
        keeps_models=False, keeps_learning_results=False, remote_write="temporary",
    )
    read_options = frozenset({"navigation_axes", "key", "positions", "navigation_shape",
                              "block_size_limit", "mmap_mode", "max_header_size",
                              "allow_pickle", "fix_imports", "encoding"})
    write_options = frozenset({"allow_pickle", "fix_imports"})
    reader_positional = ("chunks", "navigation_axes")

    def sniff(self, location: Location, head: bytes) -> bool:
        """Whether ``head`` (the file's first bytes) starts with the ``.npy`` magic string."""
        return head.startswith(MAGIC)

    def check_read(self, options: Mapping[str, Any]) -> None:
        """Refuse ``allow_pickle=True`` and option values of the wrong type or choice."""
        check_bool_option("allow_pickle", options.get("allow_pickle"))
        check_bool_option("fix_imports", options.get("fix_imports"))
        if options.get("allow_pickle"):
            raise UnsupportedError("allow_pickle=True: lazyio never unpickles data")
        mmap_mode = options.get("mmap_mode")
        if mmap_mode is not None and mmap_mode not in ("r", "r+", "c"):
            raise ValueError(f"mmap_mode must be 'r', 'r+' or 'c' to read, not {mmap_mode!r}")
        key = options.get("key")
        if key is not None and not isinstance(key, str):
            raise OptionError(f"key must be the name of a field (a str), not {key!r}")
        encoding = options.get("encoding")
        if encoding is not None and not isinstance(encoding, str):
            raise OptionError(f"encoding must be a str, not {encoding!r}")
        for name in ("max_header_size", "block_size_limit"):
            value = options.get(name)
            if value is None or (name == "block_size_limit" and isinstance(value, str)):
                continue
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise OptionError(f"{name} must be a positive integer, not {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        _check_ints("navigation_axes", options.get("navigation_axes"))
        _check_ints("navigation_shape", options.get("navigation_shape"))

    def check_write(
        self, target: Any, signal: dict[str, Any], options: Mapping[str, Any]
    ) -> None:
        """Refuse axes that contradict the data (a ``.npy`` keeps none, but a signal
        whose axes are wrong is the caller's mistake) and non-bool flags."""
        check_axes(target, signal)
        check_bool_option("allow_pickle", options.get("allow_pickle"), target)
        check_bool_option("fix_imports", options.get("fix_imports"), target)

    def read(
        self,
        source: Any,
        *,
        lazy: bool = True,
        chunks: Chunks = "auto",
        allow_external: bool = False,
        navigation_axes: Any = None,
        key: str | None = None,
        positions: Any = None,
        navigation_shape: tuple[int, ...] | None = None,
        block_size_limit: int | str | None = None,
        mmap_mode: MmapMode | None = None,
        max_header_size: int | None = None,
        allow_pickle: bool = False,
        fix_imports: Any = None,
        encoding: Any = None,
    ) -> list[dict[str, Any]]:
        """Read a ``.npy`` file into one signal dictionary titled with the file's stem
        (see :func:`lazyio.load`; lazy reads memory-map the payload task by task, with
        range reads for remote files)."""
        location = as_location(source)
        self.check_read({"allow_pickle": allow_pickle, "mmap_mode": mmap_mode})
        with reading(location):
            header = read_header(location, max_header_size)
        pos: np.ndarray | None = None
        nav_shape: tuple[int, ...] = ()
        if positions is not None:
            pos = np.asarray(positions)
            pos = pos[:, None] if pos.ndim == 1 else pos
            if not header.shape or header.shape[0] < len(pos):
                raise ValueError(
                    f"{location}: with positions the file must hold at least one frame per "
                    f"position along its first axis; it has shape {header.shape} for "
                    f"{len(pos)} positions"
                )
            if navigation_shape is None:  # just large enough for every position
                navigation_shape = (tuple(int(m) + 1 for m in pos.max(axis=0)) if len(pos)
                                    else (0,))
            nav_shape = tuple(navigation_shape)
        if lazy:
            if mmap_mode is not None:
                raise ValueError("mmap_mode applies to eager reads (lazy=False) only")
            # With positions, memmap_distributed takes the scan's shape, frames after the
            # navigation axes.
            shape = header.shape if pos is None else (*nav_shape, *header.shape[1:])
            data: da.Array | np.ndarray = memmap_distributed(
                location, header.dtype, positions=pos, offset=header.offset, shape=shape,
                order=header.order, chunks=chunks, block_size_limit=block_size_limit,
                key=key,
            )
        else:
            array = _read_eager(location, header, mmap_mode)
            if key is not None:
                if header.dtype.names is None or key not in header.dtype.names:
                    raise ValueError(f"key {key!r} is not a field of dtype {header.dtype!r}")
                array = array[key] if mmap_mode is not None else np.array(array[key], order="K")
            if pos is not None:
                array = _place_scan(array, pos, nav_shape)
            data = array
        title = PurePosixPath(location.name).stem
        signal = make_signal_dict(
            data, default_axes(data.shape, navigation_axes), title=title, lazy=lazy
        )
        return [signal]

    def write(
        self, target: Any, signal: dict[str, Any], *, chunks: Chunks = None,
        show_progressbar: bool = True, allow_pickle: Any = None, fix_imports: Any = None,
    ) -> None:
        """Write the signal's data (numpy or dask) into ``target``; only the data: a
        ``.npy`` file holds no axes or metadata."""
        # the streamed writer needs dask.array: imported on write only (lazyio info)
        from lazyio.backends.raw.npy_target import write_npy_into

        data = signal["data"]
        if chunks is not None and hasattr(data, "rechunk"):
            data = data.rechunk(chunks)
        write_npy_into(as_location(target), data, show_progressbar=show_progressbar)

    def describe(self, source: Location) -> FileDescription:
        """The ``.npy`` format version and the payload's size."""
        location = as_location(source)
        with reading(location):
            header = read_header(location)
        major, minor = header.version
        stored = MemmapSource(
            location, header.offset, tuple(header.shape), header.dtype, header.order
        ).stored_nbytes
        return FileDescription(f"{major}.{minor}", [StorageLayout(stored=int(stored))])


PLUGIN = NpyFormat()
