"""Markdown of the log's notes and the runbooks, rendered safely.

CommonMark through markdown-it-py with raw HTML off: a ``<script>`` typed into a note is shown as
text, never run. Links keep only http(s), mailto and the site's own paths (markdown-it refuses
javascript:, vbscript: and file: itself; we also refuse data: and anything else), and images are
not rendered at all: a note must not make every reader's browser fetch someone's tracking pixel.
"""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_SCHEMES = frozenset({"http", "https", "mailto"})


def _safe_link(url: str) -> bool:
    url = url.strip()
    if url.startswith("//"):
        return False  # another host, with whatever scheme the page has: not what it looks like
    scheme = urlsplit(url).scheme.lower()
    return scheme in _SCHEMES if scheme else url[:1] in ("/", "#", "?") or ":" not in url


@cache
def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    parser.disable("image")
    parser.validateLink = _safe_link  # type: ignore[method-assign]
    return parser


def render(text: str) -> SafeString:
    """``text`` (Markdown) as HTML that is safe to put in a page."""
    return mark_safe(_parser().render(text))
