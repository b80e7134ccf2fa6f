"""Every fenced ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order, in one namespace, in a fresh Python process whose working
directory is an empty temporary folder (so a page may build on its earlier blocks, and no page
sees another's files or state). Anything that is not meant to run is fenced as ``text``,
``console`` or ``bash``, never ``python``.

A block that needs work from another branch (an entry point that does not exist yet) is preceded
by a marker line, which the rendered page does not show::

    <!-- docs-example: needs lazyio.hyperspy -->        (a module that must be importable)
    <!-- docs-example: needs xarray-engine lazyio -->   (an xarray backend that must be listed)

Such a block is skipped while the need is unmet, and `test_example_waiting_for` reports it as a
skipped test naming the block and the need; once the need is met it runs like any other block.
Remote examples run against servers the page itself starts on 127.0.0.1 (moto's S3 server, from
the test extra); examples naming real cloud URLs are ``text``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})[ ]*(?P<info>[^`]*)$")
_NEEDS = re.compile(r"^<!--\s*docs-example:\s*needs\s+(?P<need>.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    needs: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.page}:{self.line}"


def parse_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their language and needs."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    page = path.relative_to(root).as_posix()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        language = match["info"].split()[0].lower() if match["info"].strip() else ""
        needs: list[str] = []
        j = i - 1
        while j >= 0 and (found := _NEEDS.match(lines[j].strip())):
            needs.append(found["need"])
            j -= 1
        body: list[str] = []
        k = i + 1
        while k < len(lines) and not (
            lines[k].strip().startswith(fence[0] * len(fence))
            and set(lines[k].strip()) == {fence[0]}
        ):
            body.append(lines[k][indent:] if lines[k][:indent].isspace() else lines[k])
            k += 1
        if k == len(lines):
            raise AssertionError(f"{page}:{i + 1}: unclosed code fence")
        blocks.append(Block(page, i + 1, language, "\n".join(body) + "\n", tuple(needs)))
        i = k + 1
    return blocks


def unmet(need: str) -> str | None:
    """Why `need` is not met in this environment, or None when it is."""
    kind, _, name = need.partition(" ")
    if kind == "xarray-engine":
        try:
            import xarray
        except ImportError:
            return "xarray is not installed"
        engines = xarray.backends.list_engines()
        return None if name in engines else f"no xarray engine {name!r} is registered"
    try:
        found = importlib.util.find_spec(need) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"module {need} does not exist"


# Runs in the child: executes the blocks in order in one namespace; a block whose need is
# unmet is skipped (and reported by the parent). Tracebacks name page and line.
_RUNNER = r"""
import json, sys, time, traceback, linecache
sys.path.insert(0, sys.argv[1])
from test_docs_examples import unmet
del sys.path[0]
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for block in blocks:
    label = f"{block['page']}:{block['line']}"
    reasons = [r for r in map(unmet, block["needs"]) if r]
    if reasons:
        print(f"SKIPPED {label}: {'; '.join(reasons)}", flush=True)
        continue
    # fence line + 1 is the block's first line: pad so tracebacks show the page's line numbers
    source = "\n" * block["line"] + block["code"]
    linecache.cache[label] = (len(source), None, source.splitlines(True), label)
    start = time.perf_counter()
    try:
        exec(compile(source, label, "exec"), namespace)
    except BaseException:
        print(f"FAILED {label}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
    print(f"RAN {label} in {time.perf_counter() - start:.1f} s", flush=True)
"""


def _python_blocks(path: Path) -> list[Block]:
    return [b for b in parse_blocks(path) if b.language in ("python", "py", "python3")]


PAGES_WITH_PYTHON = [p for p in PAGES if _python_blocks(p)]
WAITING = [b for p in PAGES for b in _python_blocks(p) if b.needs]


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_pages_are_found():
    assert (ROOT / "README.md") in PAGES
    assert len(PAGES) >= 11


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_python_blocks_compile(path):
    for block in _python_blocks(path):
        # a signature listing (`f(a, *, b=None)`) or a console session fenced as python fails
        # here, before anything runs
        compile(block.code, block.label, "exec")


def run_blocks(blocks: list[Block], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `blocks` in order in one fresh process started in `cwd`."""
    # this checkout's lazyio, never an installed copy; figures drawn without a display
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, str(ROOT / "tests")],
        input=json.dumps([b.__dict__ for b in blocks]), text=True, capture_output=True,
        cwd=cwd, env=env, timeout=240, check=False,
    )


@pytest.mark.parametrize("path", PAGES_WITH_PYTHON, ids=_page_id)
def test_page_examples_run(path, tmp_path):
    blocks = _python_blocks(path)
    proc = run_blocks(blocks, tmp_path)
    if proc.returncode != 0:
        pytest.fail(f"an example of {_page_id(path)} failed:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    ran = [line for line in proc.stdout.splitlines() if line.startswith(("RAN ", "SKIPPED "))]
    assert len(ran) == len(blocks), proc.stdout


def test_runner_shares_a_namespace_and_names_the_failing_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\n```python\nassert x == 1\nprint(y)\n```\n"
                    "```python\nprint('never')\n```\n", encoding="utf-8")
    proc = run_blocks(parse_blocks(page, root=tmp_path), tmp_path)
    assert proc.returncode == 1
    assert "RAN page.md:1" in proc.stdout
    assert "FAILED page.md:5" in proc.stderr
    assert 'File "page.md:5", line 7' in proc.stderr  # the page's own line number
    assert "NameError: name 'y' is not defined" in proc.stderr
    assert "never" not in proc.stdout


@pytest.mark.parametrize("block", WAITING, ids=lambda b: b.label)
def test_example_waiting_for(block):
    """A block marked as needing other work: skipped (named in the summary) until it is met."""
    reasons = [r for r in map(unmet, block.needs) if r]
    if reasons:
        pytest.skip(f"{block.label} waits for {', '.join(block.needs)}: {'; '.join(reasons)}")


def test_parser_reads_fences_and_needs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n<!-- docs-example: needs some.module -->\n```python\nx = 1\n```\n"
        "- item\n\n  ```text\n  not run\n  ```\n````python\n```\ny = 2\n````\n"
        "1. step\n\n    ```py\n    z = 3\n    ```\n",
        encoding="utf-8",
    )
    blocks = parse_blocks(page, root=tmp_path)
    assert [(b.line, b.language, b.code, b.needs) for b in blocks] == [
        (3, "python", "x = 1\n", ("some.module",)),
        (8, "text", "not run\n", ()),
        (11, "python", "```\ny = 2\n", ()),
        (17, "py", "z = 3\n", ()),  # deep in a list: still found, so still run
    ]
    assert unmet("some.module.that.does.not.exist") is not None
    assert unmet("json") is None


def test_every_page_is_in_the_site_navigation():
    # mkdocs only logs (never warns about) a page left out of the nav, so the strict build
    # would not catch it
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", config, flags=re.MULTILINE))
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages - listed == set(), "add these pages to the nav of mkdocs.yml"
    assert "index.md" in listed  # generated from README.md by docs/hooks/pages.py


def test_sphinx_roles_become_inline_code_on_the_site():
    pytest.importorskip("griffe")  # the docs extra
    spec = importlib.util.spec_from_file_location("sphinx_roles",
                                                  ROOT / "docs/hooks/sphinx_roles.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("See :func:`lazyio.save`, :class:`~lazyio.errors.FormatError` and "
            ":meth:`FileInfo.to_dict`; ``:func:`` alone stays.")
    assert module._ROLE.sub(module._plain, text) == (
        "See `lazyio.save`, `FormatError` and `FileInfo.to_dict`; ``:func:`` alone stays.")
