"""mkdocs hooks: render the Sphinx roles of fedai's docstrings as plain code.

fedai's docstrings cross-reference with Sphinx roles (``:class:`~fedai.errors.ConfigError```);
mkdocstrings renders them as ``:class:<code>~fedai.errors.ConfigError</code>``. This turns
them into ``<code>ConfigError</code>`` (``~`` keeps the last name, as Sphinx does).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):<code>(~)?([^<]*)</code>")


def _plain(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite role markup left in a rendered page."""
    return _ROLE.sub(_plain, html)
