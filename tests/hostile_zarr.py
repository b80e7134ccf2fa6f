"""Hostile .zspy stores: one builder per attack class of issue 13 (Zarr part).

Each builder takes an empty folder and returns the path to load (a directory store or a
zip file) and writes a ``secret`` file *beside* the store that a correct reader never
returns. :func:`hostile_zarr_inputs` builds them all, for the fuzz campaign; the tests are
in ``tests/backends/zarr/test_hostile.py``.

The bombs are small on disk (a few KB to 2 MB) but inflate to 1.5-2 GiB: they are built
from a compressed block repeated (zlib/deflate: full flushes make the block's compressed
bytes repeatable; bz2: concatenated streams), so building one costs about a second.
"""

from __future__ import annotations

import bz2
import json
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numcodecs
import numpy as np

import lazyio

DATA = np.arange(8 * 6, dtype="f4").reshape(8, 6)
ARRAY = "Experiments/__unnamed__/data"
SECRET = b"TOP-SECRET-" * 8  # 88 bytes: 22 float32, the size of no chunk
BOMB_BYTES = 2 * 2**30
ZATTRS_BOMB_BYTES = 3 * 2**29  # 1.5 GiB
_BLOCK = 4 * 2**20


def write_store(path: Path, compressor: object | None = "default", data: np.ndarray = DATA,
                store_type: str | None = None) -> Path:
    """A small valid .zspy (chunks of 2 x 3) with ``compressor`` (None: raw chunks)."""
    kwds: dict[str, object] = {"chunks": (2, 3), "show_progressbar": False}
    if compressor not in ("default", None):
        kwds["compressor"] = compressor
    if store_type:
        kwds["store_type"] = store_type
    lazyio.save(path, data, overwrite=True, **kwds)
    if compressor is None:  # rewrite the chunks raw (lazyio's writer always compresses)
        zarray = path / ARRAY / ".zarray"
        meta = json.loads(zarray.read_text())
        codec = numcodecs.get_codec(meta["compressor"])
        for root, _dirs, files in os.walk(path / ARRAY):
            for name in files:
                if not name.startswith("."):
                    chunk = Path(root) / name
                    chunk.write_bytes(bytes(codec.decode(chunk.read_bytes())))
        meta["compressor"] = None
        zarray.write_text(json.dumps(meta))
    return path


def write_secret(folder: Path) -> Path:
    """The file outside every store that must never be read."""
    secret = folder / "secret"
    secret.write_bytes(SECRET)
    return secret


def _chunk(path: Path, key: str = "0/0") -> Path:
    return path / ARRAY / key


def _set_meta(path: Path, key: str, **changes: object) -> None:
    doc = path / key
    meta = json.loads(doc.read_text())
    meta.update(changes)
    doc.write_text(json.dumps(meta))


# ------------------------------------------------------------------------- decompression


def _repeated_deflate(total: int, wbits: int) -> tuple[bytes, int]:
    """A zlib (wbits 15) or raw deflate (-15) stream of ``total`` zero bytes, and its
    CRC-32 (raw) or nothing useful (zlib: the Adler-32 is in the stream)."""
    zeros = bytes(_BLOCK)
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush()
    count = total // _BLOCK
    body = first + again * (count - 1)
    if wbits > 0:
        # the last 4 bytes of a zlib stream: the Adler-32 of everything, which for n
        # zero bytes is A = 1, B = n mod 65521
        return body + end[:-4] + struct.pack(">I", ((total % 65521) << 16) | 1), 0
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return body + end, crc


def bz2_bomb(folder: Path) -> Path:
    """A bz2 chunk of about 2.5 KB that inflates to 2 GiB (concatenated bz2 streams)."""
    path = write_store(folder / "bz2-bomb.zspy", numcodecs.BZ2(level=9))
    block = 2**20
    stream = bz2.compress(bytes(block), 9)
    _chunk(path).write_bytes(stream * (BOMB_BYTES // block))
    return path


def zlib_bomb(folder: Path) -> Path:
    """A 2 MB zlib chunk that inflates to 2 GiB."""
    path = write_store(folder / "zlib-bomb.zspy", numcodecs.Zlib(level=1))
    _chunk(path).write_bytes(_repeated_deflate(BOMB_BYTES, 15)[0])
    return path


def blosc_header_bomb(folder: Path) -> Path:
    """A Blosc chunk whose header claims 2 GiB of decoded data."""
    path = write_store(folder / "blosc-header.zspy")
    raw = bytearray(_chunk(path).read_bytes())
    raw[4:8] = struct.pack("<I", BOMB_BYTES - 1)
    _chunk(path).write_bytes(bytes(raw))
    return path


def _write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip file written by hand: (name, stored bytes, method, CRC-32, size) per member,
    so a member can be pre-compressed (zipfile would deflate 1.5 GiB itself)."""
    central, offset = [], 0
    with open(path, "wb") as f:
        for name, blob, method, crc, size in members:
            encoded = name.encode()
            header = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0,
                                 crc, len(blob), size, len(encoded), 0)
            f.write(header + encoded + blob)
            central.append(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0,
                                       method, 0, 0, crc, len(blob), size, len(encoded),
                                       0, 0, 0, 0, 0, offset) + encoded)
            offset += len(header) + len(encoded) + len(blob)
        directory = b"".join(central)
        f.write(directory)
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central),
                            len(directory), offset, 0))


def _zip_of(store: Path, replace: dict[str, tuple[bytes, int, int, int]],
            extra: dict[str, bytes] | None = None) -> list[tuple[str, bytes, int, int, int]]:
    members = []
    with zipfile.ZipFile(store) as zf:
        for name in zf.namelist():
            if name in replace:
                members.append((name, *replace[name]))
            else:
                data = zf.read(name)
                members.append((name, data, 0, zlib.crc32(data), len(data)))
    for name, data in (extra or {}).items():
        members.append((name, data, 0, zlib.crc32(data), len(data)))
    return members


def zip_zattrs_bomb(folder: Path) -> Path:
    """A zip store whose root ``.zattrs`` member inflates to 1.5 GiB."""
    valid = write_store(folder / "valid.zspy", store_type="zip")
    blob, crc = _repeated_deflate(ZATTRS_BOMB_BYTES, -15)
    path = folder / "zattrs-bomb.zspy"
    _write_zip(path, _zip_of(valid, {".zattrs": (blob, 8, crc, ZATTRS_BOMB_BYTES)}))
    valid.unlink()
    return path


def zip_chunk_bomb(folder: Path) -> Path:
    """A zip store whose chunk member (of raw chunks) inflates to 1.5 GiB."""
    valid = write_store(folder / "valid.zspy", store_type="zip")
    blob, crc = _repeated_deflate(ZATTRS_BOMB_BYTES, -15)
    path = folder / "zip-chunk-bomb.zspy"
    _write_zip(path, _zip_of(valid, {f"{ARRAY}/0/0": (blob, 8, crc, ZATTRS_BOMB_BYTES)}))
    valid.unlink()
    return path


HUGE_METADATA_ITEMS = 50_000_000


def huge_metadata_array(folder: Path, kind: str) -> Path:
    """A store whose metadata holds an array declaring 5e7 elements that were never
    written (a few hundred bytes on disk): ``kind`` "list" a ``_list_`` of float64,
    "strings" an array of vlen-utf8 strings. Each is read whole at load; unchecked, 5e7
    Python objects take gigabytes."""
    path = write_store(folder / f"huge-{kind}.zspy")
    group = path / "Experiments/__unnamed__/metadata"
    name, dtype, filters = (("_list_huge", "<f8", None) if kind == "list"
                            else ("huge_strings", "|O", [{"id": "vlen-utf8"}]))
    (group / name).mkdir()
    meta = {"zarr_format": 2, "shape": [HUGE_METADATA_ITEMS],
            "chunks": [HUGE_METADATA_ITEMS], "dtype": dtype, "compressor": None,
            "fill_value": 0 if kind == "list" else None, "order": "C", "filters": filters,
            "dimension_separator": "."}
    (group / name / ".zarray").write_text(json.dumps(meta))
    (group / name / ".zattrs").write_text("{}")
    return path


# ------------------------------------------------------------------ damaged zip members
# The fuzz campaign's findings (issue 13): zipfile checks a member's local header, CRC-32
# and compression only when the member is read, so each of these zips opens and fails on
# the read of one member. Each edit is one of the campaign's failing mutations, reduced
# to the field it hit.


def _local_data(raw: bytes | bytearray, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where the stored bytes of ``info`` start in the zip, and how many there are."""
    off = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", raw, off + 26)
    return off + 30 + name_len + extra_len, info.compress_size


def _central_entry(raw: bytes | bytearray, member: str) -> int:
    """The offset of ``member``'s entry in the central directory."""
    encoded = member.encode()
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        name_len = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46:at + 46 + name_len] == encoded:
            return at
        at = raw.find(b"PK\x01\x02", at + 4)
    raise KeyError(member)


def _flip_data(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    start, size = _local_data(raw, info)
    raw[start + size // 2] ^= 0xFF  # the CRC-32 no longer matches


def _flip_header_name(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    raw[info.header_offset + 30] ^= 0x20  # the local header names another member


def _blank_header_magic(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    raw[info.header_offset:info.header_offset + 4] = bytes(4)


def _unknown_method(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    struct.pack_into("<H", raw, central + 10, 77)  # no such compression method


def _stored_as_deflate(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    # stored bytes declared deflated: zlib fails on them (zlib.error)
    struct.pack_into("<H", raw, central + 10, zipfile.ZIP_DEFLATED)
    struct.pack_into("<H", raw, info.header_offset + 8, zipfile.ZIP_DEFLATED)


def _encrypted_flag(raw: bytearray, info: zipfile.ZipInfo, central: int) -> None:
    flags = struct.unpack_from("<H", raw, central + 8)[0]
    struct.pack_into("<H", raw, central + 8, flags | 1)  # zipfile wants a password


ZIP_MEMBER_DAMAGE: dict[str, Callable[[bytearray, zipfile.ZipInfo, int], None]] = {
    "bad-crc": _flip_data,
    "header-name-mismatch": _flip_header_name,
    "header-magic": _blank_header_magic,
    "unknown-method": _unknown_method,
    "bad-deflate": _stored_as_deflate,
    "encrypted": _encrypted_flag,
}
"""Damage to one zip member, found by the fuzz campaign (each raised a bare zipfile,
zlib or builtin error before)."""


def damaged_zip_member(folder: Path, damage: str, member: str) -> Path:
    """A valid zip store whose ``member`` has the damage ``damage``
    (:data:`ZIP_MEMBER_DAMAGE`); everything else is intact."""
    valid = write_store(folder / "valid.zspy", store_type="zip")
    raw = bytearray(valid.read_bytes())
    with zipfile.ZipFile(valid) as zf:
        info = zf.getinfo(member)
    ZIP_MEMBER_DAMAGE[damage](raw, info, _central_entry(raw, member))
    path = folder / f"{damage}.zspy"
    path.write_bytes(bytes(raw))
    valid.unlink()
    return path


def sparse_chunk(folder: Path) -> Path:
    """A raw chunk file that is a 100 GB sparse file (a few KB on disk)."""
    path = write_store(folder / "sparse-chunk.zspy", None)
    with open(_chunk(path), "r+b") as f:
        f.truncate(100 * 10**9)
    return path


def sparse_zattrs(folder: Path) -> Path:
    """A root ``.zattrs`` that is a 2 GB sparse file."""
    path = write_store(folder / "sparse-zattrs.zspy")
    with open(path / ".zattrs", "r+b") as f:
        f.truncate(2 * 10**9)
    return path


def zip_directory_offset(folder: Path) -> Path:
    """A zip store whose end record places the central directory 1 MiB further than it
    is: zipfile shifts every member's offset by as much, to below 0 for the first ones
    (the campaign's ``OSError: [Errno 22]`` from a read at a negative offset)."""
    valid = write_store(folder / "valid.zspy", store_type="zip")
    raw = bytearray(valid.read_bytes())
    end = raw.rfind(b"PK\x05\x06")
    struct.pack_into("<I", raw, end + 16, struct.unpack_from("<I", raw, end + 16)[0] + 2**20)
    path = folder / "directory-offset.zspy"
    path.write_bytes(bytes(raw))
    valid.unlink()
    return path


# ------------------------------------------------------------------------- links, FIFOs


def chunk_symlink(folder: Path) -> Path:
    """A raw chunk that is a symbolic link to the secret (the secret would be data)."""
    secret = write_secret(folder)
    path = write_store(folder / "chunk-link.zspy", None)
    _chunk(path).unlink()
    os.symlink(secret, _chunk(path))
    return path


def chunk_dir_symlink(folder: Path) -> Path:
    """A chunk-key directory (``data/0``) that is a link to a folder holding the secret."""
    secret = write_secret(folder)
    outside = folder / "outside"
    outside.mkdir()
    shutil.copy(secret, outside / "0")
    path = write_store(folder / "chunk-dir-link.zspy", None)
    shutil.rmtree(path / ARRAY / "0")
    os.symlink(outside, path / ARRAY / "0")
    return path


def zattrs_symlink(folder: Path) -> Path:
    """The root ``.zattrs`` linked to a JSON file outside the store."""
    outside = folder / "outside.json"
    outside.write_text(json.dumps({"secret": SECRET.decode()}))
    path = write_store(folder / "zattrs-link.zspy")
    (path / ".zattrs").unlink()
    os.symlink(outside, path / ".zattrs")
    return path


def group_symlink(folder: Path) -> Path:
    """``Experiments/`` linked to another store's (outside this one)."""
    other = write_store(folder / "other.zspy", data=np.full((4, 4), 7, "f4"))
    path = write_store(folder / "group-link.zspy")
    shutil.rmtree(path / "Experiments")
    os.symlink(other / "Experiments", path / "Experiments")
    return path


def symlink_dag(folder: Path, levels: int = 40) -> Path:
    """Groups that each link the next level twice: a walk that follows them visits
    2**levels groups."""
    path = write_store(folder / "dag.zspy")
    meta = path / "Experiments" / "__unnamed__" / "metadata"
    for level in range(levels, 0, -1):
        node = meta / f"level{level}"
        node.mkdir()
        (node / ".zgroup").write_text('{"zarr_format": 2}')
        (node / ".zattrs").write_text("{}")
        if level < levels:
            os.symlink(meta / f"level{level + 1}", node / "a")
            os.symlink(meta / f"level{level + 1}", node / "b")
    os.symlink(meta / "level1", meta / "start")
    return path


def dev_zero_chunk(folder: Path) -> Path:
    """A chunk linked to ``/dev/zero`` (read until memory runs out)."""
    path = write_store(folder / "dev-zero-link.zspy", None)
    _chunk(path).unlink()
    os.symlink("/dev/zero", _chunk(path))
    return path


def device_chunk(folder: Path) -> Path:
    """A chunk that is a character device node like ``/dev/zero`` (root only; else a
    link to /dev/zero)."""
    path = write_store(folder / "device-chunk.zspy", None)
    _chunk(path).unlink()
    try:
        os.mknod(_chunk(path), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    except (PermissionError, OSError):
        os.symlink("/dev/zero", _chunk(path))
    return path


def fifo_chunk(folder: Path) -> Path:
    """A chunk that is a FIFO with no writer (a plain open blocks forever)."""
    path = write_store(folder / "fifo-chunk.zspy", None)
    _chunk(path).unlink()
    os.mkfifo(_chunk(path))
    return path


def fifo_zgroup(folder: Path) -> Path:
    """The root ``.zgroup`` is a FIFO."""
    path = write_store(folder / "fifo-zgroup.zspy")
    (path / ".zgroup").unlink()
    os.mkfifo(path / ".zgroup")
    return path


def ragged_traversal(folder: Path) -> Path:
    """A ragged (object) array whose ``dimension_separator`` climbs out of the store to a
    ``0`` file beside it holding the secret in vlen-array form."""
    data = np.empty(2, dtype=object)
    data[0], data[1] = np.arange(3, dtype="i8"), np.arange(2, dtype="i8")
    items = np.empty(1, dtype=object)
    items[0] = np.frombuffer(SECRET[:80], dtype="i8").copy()
    outside = folder / "0"
    outside.write_bytes(bytes(numcodecs.VLenArray("<i8").encode(items)))
    path = folder / "ragged.zspy"
    lazyio.save(path, {"data": data, "axes": [{"name": "x", "navigate": True}],
                       "attributes": {"ragged": True}}, overwrite=True,
                show_progressbar=False)
    # chunk (0, 0) is "<array>/0" + sep + "0": with sep climbing 5 levels from the
    # directory "<array>/0", that is <folder>/0
    _set_meta(path, f"{ARRAY}/.zarray", shape=[1, 1], chunks=[1, 1],
              dimension_separator="/../../../../../")
    (path / ARRAY / "0").unlink()
    (path / ARRAY / "0").mkdir()
    return path


def zero_chunks(folder: Path) -> Path:
    """``chunks`` of 0 in ``.zarray`` (zarr-python divides by it)."""
    path = write_store(folder / "zero-chunks.zspy")
    _set_meta(path, f"{ARRAY}/.zarray", chunks=[0, 3])
    return path


def many_groups_zip(folder: Path, groups: int = 20_000) -> Path:
    """A zip store whose metadata holds ``groups`` groups (zarr lists every member of the
    zip for each group: quadratic). A valid store: it must load, quickly."""
    valid = write_store(folder / "valid.zspy", store_type="zip")
    extra = {}
    for i in range(groups):
        extra[f"Experiments/__unnamed__/metadata/g{i:05d}/.zgroup"] = b'{"zarr_format": 2}'
        extra[f"Experiments/__unnamed__/metadata/g{i:05d}/.zattrs"] = b"{}"
    path = folder / "many-groups.zspy"
    _write_zip(path, _zip_of(valid, {}, extra))
    valid.unlink()
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "bz2-bomb": bz2_bomb,
    "zlib-bomb": zlib_bomb,
    "blosc-header-bomb": blosc_header_bomb,
    "zip-zattrs-bomb": zip_zattrs_bomb,
    "zip-chunk-bomb": zip_chunk_bomb,
    "sparse-chunk": sparse_chunk,
    "sparse-zattrs": sparse_zattrs,
    "chunk-symlink": chunk_symlink,
    "chunk-dir-symlink": chunk_dir_symlink,
    "zattrs-symlink": zattrs_symlink,
    "group-symlink": group_symlink,
    "symlink-dag": symlink_dag,
    "dev-zero-chunk": dev_zero_chunk,
    "device-chunk": device_chunk,
    "fifo-chunk": fifo_chunk,
    "fifo-zgroup": fifo_zgroup,
    "ragged-traversal": ragged_traversal,
    "zero-chunks": zero_chunks,
    "many-groups-zip": many_groups_zip,
    "zip-chunk-bad-crc": lambda folder: damaged_zip_member(folder, "bad-crc", f"{ARRAY}/0/0"),
    "zip-zarray-header-mismatch": lambda folder: damaged_zip_member(
        folder, "header-name-mismatch", f"{ARRAY}/.zarray"),
    "zip-directory-offset": zip_directory_offset,
    "metadata-list-5e7": lambda folder: huge_metadata_array(folder, "list"),
    "metadata-strings-5e7": lambda folder: huge_metadata_array(folder, "strings"),
}
"""Every attack class, by name."""


def hostile_zarr_inputs(directory: Path) -> list[tuple[str, Path]]:
    """Build every hostile store under ``directory`` (one sub-folder each).

    Returns
    -------
    list of (str, Path)
        The attack's name and the path to load. Every one but ``many-groups-zip`` (a
        valid store that must load quickly) must raise a ``LazyioError``; none may return
        the bytes of a ``secret`` file beside it.
    """
    out = []
    for name, build in BUILDERS.items():
        folder = Path(directory) / name
        folder.mkdir(parents=True, exist_ok=True)
        out.append((name, build(folder)))
    return out
