"""MkDocs hook: pages that live outside docs/.

- The home page is README.md itself, its links to ``docs/<page>.md`` rewritten to the site's
  pages, so the README and the site's front page never drift apart.
- Every notebook in notebooks/ is a page (rendered by mkdocs-jupyter from its stored outputs),
  listed under "Notebooks" in the navigation in file-name order, so a new notebook appears
  without editing mkdocs.yml.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
_DOCS_LINK = re.compile(r"\]\(docs/")


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def on_config(config: Any) -> Any:
    nav = config["nav"]
    entries = [f"notebooks/{path.name}" for path in _notebooks()]
    if entries and not any(isinstance(e, dict) and "Notebooks" in e for e in nav):
        # right after the page that introduces the notebooks
        where = next((i + 1 for i, e in enumerate(nav)
                      if isinstance(e, dict) and "integration.md" in e.values()), len(nav))
        nav.insert(where, {"Notebooks": entries})
    return config


# before mkdocs-jupyter's on_files, which turns the notebook files added here into pages
@event_priority(100)
def on_files(files: Files, config: Any) -> Files:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=_DOCS_LINK.sub("](", readme)))
    for path in _notebooks():
        files.append(File(f"notebooks/{path.name}", str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files
