"""The format registry: built-ins, entry-point plugins, refresh, detection, unknown names."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazyio
from lazyio import formats
from lazyio.backends import StorageLayout
from lazyio.errors import UnknownFormatError
from lazyio.formats import Capabilities, FileDescription, FormatPlugin
from lazyio.location import Location, as_location
from lazyio.signals import make_signal_dict

BUILTIN = ["npy", "zspy", "usid", "hspy"]


class TextFormat(FormatPlugin):
    """A toy format: a text file starting with ``TEXTARRAY`` then numbers, one per line."""

    name = "textarray"
    extensions = (".txa",)
    description = "numbers as text"
    capabilities = Capabilities(keeps_axes=False, keeps_metadata=False,
                                keeps_original_metadata=False, keeps_models=False,
                                keeps_learning_results=False, remote_write="temporary")
    read_options = frozenset({"scale"})
    write_options = frozenset({"precision"})

    def sniff(self, location: Location, head: bytes) -> bool:
        return head.startswith(b"TEXTARRAY")

    def read(self, source: Any, *, lazy: bool = True, chunks: Any = "auto",
             allow_external: bool = False, scale: float = 1.0) -> list[dict[str, Any]]:
        with as_location(source).open("rb") as f:
            values = np.array([float(v) for v in f.read().split()[1:]]) * scale
        return [make_signal_dict(values, title="text", lazy=False)]

    def write(self, target: Any, signal: dict[str, Any], *, chunks: Any = None,
              show_progressbar: bool = True, precision: int = 6) -> None:
        values = np.asarray(signal["data"]).ravel()
        with as_location(target).open("wb") as f:
            f.write(b"TEXTARRAY\n" + "\n".join(f"{v:.{precision}g}" for v in values).encode())

    def describe(self, source: Location) -> FileDescription:
        return FileDescription("1", [StorageLayout(stored=as_location(source).size())])


class RaisingFormat(TextFormat):
    name = "raising"
    extensions = (".rse",)

    def sniff(self, location: Location, head: bytes) -> bool:
        raise RuntimeError("this sniffer is broken")


class FakeEntryPoint:
    def __init__(self, name: str, target: Any, value: str = "fake.module:PLUGIN") -> None:
        self.name, self.value, self._target = name, value, target

    def load(self) -> Any:
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points with a list the test fills in."""
    fake: list[FakeEntryPoint] = []
    monkeypatch.setattr(formats, "_entry_points", lambda: list(fake))
    formats.refresh()
    formats.format_names()  # read now: later additions need a refresh
    yield fake
    monkeypatch.undo()
    formats.refresh()
    for name in ("textarray", "raising"):  # namespaces built for the fake formats
        sys.modules.pop(f"lazyio.{name}", None)
        lazyio.__dict__.pop(name, None)


def test_builtins_in_detection_order():
    assert formats.format_names()[:4] == BUILTIN
    for name in BUILTIN:
        plugin = formats.get_plugin(name)
        assert isinstance(plugin, FormatPlugin)
        assert plugin.name == name
        assert isinstance(plugin.capabilities, Capabilities)
        assert plugin.extensions
        assert all(e.startswith(".") for e in plugin.extensions)
    assert formats.get_plugin(".HSPY") is formats.get_plugin("hspy")
    assert formats.get_plugin("zspy").capabilities.accepts_store_objects
    assert not formats.get_plugin("npy").capabilities.keeps_axes
    assert not formats.get_plugin("hspy").capabilities.supports_remote_write


def test_builtin_extensions_match_the_plugins():
    # detection sniffs the format of a file's extension first without importing the others
    declared = {ext: name for name in BUILTIN
                for ext in formats.get_plugin(name).extensions}
    assert declared == formats.BUILTIN_EXTENSIONS


def test_detecting_an_h5_file_imports_no_other_plugin(tmp_path, rng):
    path = tmp_path / "scan.h5"
    lazyio.save(path, {"data": rng.random((3, 4, 5))}, format="usid", show_progressbar=False)
    code = ("import sys; from lazyio.formats import detect_format; "
            "from lazyio.location import Location; "
            f"print(detect_format(Location({str(path)!r})), "
            "sorted(m for m in ('lazyio.formats.zspy', 'lazyio.formats.hspy', 'zarr') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    assert out.stdout.split() == ["usid", "[]"]


def test_unknown_format_names(tmp_path):
    with pytest.raises(UnknownFormatError, match=r"'tiff'.*hspy"):
        formats.get_plugin("tiff")
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(UnknownFormatError, match="tiff"):
        lazyio.load(path, format="tiff")
    with pytest.raises(UnknownFormatError, match="tiff"):
        lazyio.save(tmp_path / "b.npy", np.zeros(3), format="tiff")
    with pytest.raises(UnknownFormatError, match="tiff"):
        lazyio.info(path, format="tiff")
    assert not (tmp_path / "b.npy").exists()
    with pytest.raises(AttributeError):
        lazyio.tiff  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        __import__("lazyio.tiff")


def test_entry_point_plugin_is_registered_and_used(entry_points, tmp_path):
    entry_points.append(FakeEntryPoint("textarray", TextFormat))  # a class
    assert "textarray" not in formats.format_names()  # read once per process ...
    formats.refresh()  # ... until refreshed
    assert formats.format_names() == [*BUILTIN, "textarray"]
    plugin = formats.get_plugin("textarray")
    assert isinstance(plugin, TextFormat)

    path = tmp_path / "values.txa"
    lazyio.save(path, np.array([1.5, 2.5, 4.0]), precision=3)
    assert path.read_bytes().startswith(b"TEXTARRAY")
    [sig] = lazyio.load(path, scale=2)
    np.testing.assert_array_equal(sig["data"], [3.0, 5.0, 8.0])
    assert lazyio.info(path).format == "textarray"
    with pytest.raises(TypeError, match=r"'scael'.*textarray accepts: .*scale"):
        lazyio.load(path, scael=2)
    # detection by content: another extension still reads as textarray
    other = tmp_path / "values.dat"
    other.write_bytes(path.read_bytes())
    assert formats.detect_format(as_location(other)) == "textarray"
    # its RosettaSciIO-style namespace, built from the registry
    from lazyio.textarray import file_reader, file_writer

    file_writer(str(path), {"data": np.array([7.0])})  # replaces, as RosettaSciIO does
    np.testing.assert_array_equal(file_reader(str(path))[0]["data"], [7.0])
    assert lazyio.textarray.file_reader is file_reader
    # convert reads what the target cannot hold from its capabilities
    src = tmp_path / "calibrated.hspy"
    lazyio.save(src, {"data": np.arange(3.0), "axes": [{"name": "E", "units": "eV",
                                                       "scale": 2.0, "size": 3}],
                      "metadata": {"General": {"title": "t"}}}, show_progressbar=False)
    with pytest.warns(lazyio.LazyioWarning, match="textarray format cannot hold the axes"):
        lazyio.convert(src, tmp_path / "out.txa", show_progressbar=False)


def test_entry_point_object_module_and_broken(entry_points, tmp_path):
    import types

    module = types.ModuleType("fake_plugin_module")
    module.PLUGIN = TextFormat()
    entry_points += [FakeEntryPoint("textarray", module),
                     FakeEntryPoint("broken", ImportError("no module named 'nothere'")),
                     FakeEntryPoint("notaplugin", object()),
                     FakeEntryPoint("hspy", TextFormat())]  # a taken name is ignored
    formats.refresh()
    assert formats.get_plugin("textarray") is module.PLUGIN
    assert type(formats.get_plugin("hspy")).__name__ == "HspyFormat"
    with pytest.raises(UnknownFormatError, match="nothere"):
        formats.get_plugin("broken")
    with pytest.raises(UnknownFormatError, match="not a lazyio FormatPlugin"):
        formats.get_plugin("notaplugin")
    assert set(formats.available_plugins()) == {*BUILTIN, "textarray"}
    # a broken plugin does not stop detection of the others
    path = tmp_path / "a.npy"
    np.save(path, np.arange(3))
    assert formats.detect_format(as_location(path)) == "npy"


def test_raising_sniffer_is_skipped(entry_points, tmp_path, caplog):
    entry_points += [FakeEntryPoint("raising", RaisingFormat()),
                     FakeEntryPoint("textarray", TextFormat())]
    formats.refresh()
    path = tmp_path / "values.bin"
    path.write_bytes(b"TEXTARRAY\n1\n2\n")
    with caplog.at_level(logging.DEBUG, logger="lazyio"):
        assert formats.detect_format(as_location(path)) == "textarray"
    assert any("this sniffer is broken" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(lazyio.load(path)[0]["data"], [1.0, 2.0])


def test_store_objects_need_a_format_that_accepts_them():
    import zarr

    store = zarr.storage.MemoryStore()
    lazyio.save(store, np.arange(6.0).reshape(2, 3), show_progressbar=False)
    np.testing.assert_array_equal(lazyio.load(store, lazy=False)[0]["data"],
                                  np.arange(6.0).reshape(2, 3))
    with pytest.raises(UnknownFormatError, match="store objects"):
        lazyio.load(store, format="hspy")


@pytest.mark.parametrize("name", BUILTIN)
def test_describe_gives_one_layout_per_signal(tmp_path, name):
    plugin = formats.get_plugin(name)
    path = tmp_path / f"a{plugin.extensions[0]}"
    data = np.arange(4 * 6 * 10, dtype="f4").reshape(4, 6, 10)
    axes = [{"size": 4, "navigate": True}, {"size": 6, "navigate": True},
            {"size": 10, "navigate": False}]
    lazyio.save(path, {"data": data, "axes": axes}, show_progressbar=False)
    description = plugin.describe(as_location(path))
    assert isinstance(description, FileDescription)
    signals = lazyio.load(path)
    assert len(description.layouts) == len(signals)
    assert all(layout.stored for layout in description.layouts)


def test_import_lazyio_stays_light():
    code = ("import sys, lazyio; "
            "print(sorted(m for m in ('dask.array', 'zarr', 'h5py', 'fsspec', 'numcodecs', "
            "'hdf5plugin') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent)
    assert out.stdout.strip() == "[]"


def test_format_modules_do_not_import_the_api():
    # the plugins are below load/save, never above them (no import cycle)
    root = Path(formats.__file__).parent
    for path in root.rglob("*.py"):
        imports = re.findall(r"^\s*(?:from|import) (lazyio\.\w+)", path.read_text(),
                             re.MULTILINE)
        assert not {"lazyio._api", "lazyio.rsciio"} & set(imports), path
