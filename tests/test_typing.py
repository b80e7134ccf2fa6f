"""Type annotations users rely on: the ``Chunks`` alias on every chunk request, Literal
modes, and ``py.typed`` (mypy itself runs in ``ci/test.sh``)."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import lazyio
from lazyio import formats
from lazyio.backends import chunking
from lazyio.backends.raw import memmap
from lazyio.backends.zarr import codecs
from lazyio.formats import npy, zspy
from lazyio.formats.usid import plugin as usid

BUILTIN = ["npy", "zspy", "usid", "hspy"]


def _annotation(func: Callable[..., Any], name: str) -> Any:
    # annotations are strings (from __future__ import annotations); compare them as written
    return inspect.signature(func).parameters[name].annotation


@pytest.mark.parametrize("func", [
    lazyio.load, lazyio.save, lazyio.convert, lazyio.memmap_distributed,
    formats.FormatPlugin.read, formats.FormatPlugin.write,
], ids=lambda f: f.__qualname__)
def test_public_chunks_parameters_are_chunks(func: Callable[..., Any]) -> None:
    assert _annotation(func, "chunks") == "Chunks"


@pytest.mark.parametrize("name", BUILTIN)
def test_plugin_chunks_parameters_are_chunks(name: str) -> None:
    plugin = formats.get_plugin(name)
    assert _annotation(type(plugin).read, "chunks") == "Chunks"
    assert _annotation(type(plugin).write, "chunks") == "Chunks"


def test_chunks_alias_takes_every_request_form() -> None:
    # the alias is one union naming what load and save document
    members = set(typing.get_args(chunking.Chunks))
    assert {type(None), int, bool, typing.Literal["auto", "storage"]} <= members
    assert chunking.BlockChunks == tuple[tuple[int, ...], ...]


def test_mode_literals_are_declared_once() -> None:
    assert typing.get_args(memmap.Order) == ("C", "F")
    assert typing.get_args(codecs.ZarrFormat) == (2, 3)
    assert typing.get_args(zspy.StoreType) == ("local", "zip")
    assert _annotation(lazyio.memmap_distributed, "order") == "Order"
    assert _annotation(npy.NpyFormat.read, "mmap_mode") == "MmapMode | None"
    assert _annotation(usid.UsidFormat.read, "non_uniform") == "NonUniform | None"
    write = zspy.ZspyFormat.write
    assert _annotation(write, "zarr_format") == "ZarrFormat"
    assert _annotation(write, "store_type") == "StoreType | None"


def test_literal_aliases_are_not_redeclared() -> None:
    # typing caches Literal[...], so identity cannot tell a copy: read the declarations
    declared: dict[str, list[str]] = {}
    package = Path(lazyio.__file__).parent
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"^(\w+)(?:: TypeAlias)? = Literal\[", text, re.MULTILINE):
            declared.setdefault(match.group(1), []).append(str(path.relative_to(package)))
    assert {name: where for name, where in declared.items() if len(where) > 1} == {}
    assert declared["ZarrFormat"] == ["backends/zarr/codecs.py"]


def test_npy_header_order_is_a_literal() -> None:
    import numpy as np

    from lazyio.backends.raw.npy_header import NpyHeader

    header = NpyHeader((1, 0), (2, 3), np.dtype("f4"), True, 128)
    assert header.order == "F"
    assert header.order in typing.get_args(memmap.Order)


def test_py_typed_is_shipped() -> None:
    assert resources.files("lazyio").joinpath("py.typed").is_file()
