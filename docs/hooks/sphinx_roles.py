"""Griffe extension: Sphinx cross-reference roles in docstrings become inline code.

lazyio's docstrings follow numpydoc, whose references are Sphinx roles
(:func:`lazyio.save`, :class:`~lazyio.errors.FormatError`); mkdocstrings would show them
verbatim. They become `lazyio.save` and `FormatError` (a leading ``~`` keeps the last name,
as in Sphinx). Not links: a link to an object this site does not document would fail the
strict build.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    target = match[2]
    return f"`{target.rsplit('.', 1)[-1] if match[1] else target}`"


class SphinxRoles(Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
