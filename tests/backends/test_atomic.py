"""Atomic local writes: a temporary sibling renamed over the target once complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyio.backends.atomic import atomic_path


def test_atomic_path_for_files_and_directories(tmp_path):
    target = tmp_path / "t"
    with atomic_path(target) as tmp:
        Path(tmp).write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(KeyError), atomic_path(target) as tmp:  # noqa: PT012
        Path(tmp).write_text("two")
        raise KeyError("stop")  # fails inside the block: the target must survive
    assert target.read_text() == "one"
    with atomic_path(target) as tmp:  # a directory replaces a file
        os.mkdir(tmp)
        (Path(tmp) / "inner").write_text("three")
    assert (target / "inner").read_text() == "three"
    with atomic_path(target) as tmp:  # and a file a directory
        Path(tmp).write_text("four")
    assert target.read_text() == "four"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
