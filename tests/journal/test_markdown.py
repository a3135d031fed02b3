"""Markdown typed by anyone with the right to write the log or a runbook is shown to everyone:
nothing in it may run in a reader's browser or send them elsewhere unseen."""

from __future__ import annotations

import pytest

from journal.markdown import render


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "<a href='javascript:alert(1)'>x</a>",
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "<javascript:alert(1)>",
        "[x](file:///etc/passwd)",
        "[x](//evil.example/phish)",
        '<iframe src="https://evil.example"></iframe>',
        "![pixel](https://tracker.example/p.gif)",
    ],
)
def test_hostile_markdown_renders_as_inert_text(hostile: str) -> None:
    html = render(hostile).lower()

    for danger in ("<script", "<img", "<iframe", "javascript:", "vbscript:", "data:", "file:"):
        if danger.endswith(":"):
            assert f'href="{danger}' not in html
        else:
            assert danger not in html
    assert 'href="//' not in html


def test_ordinary_markdown_keeps_its_formatting_and_safe_links() -> None:
    html = render(
        "**Pause** first, then [the runbook](/runbooks/strategy-bug/) or "
        "[docs](https://example.com/a).\n\n- one\n- two"
    )

    assert "<strong>Pause</strong>" in html
    assert '<a href="/runbooks/strategy-bug/">the runbook</a>' in html
    assert '<a href="https://example.com/a">docs</a>' in html
    assert "<li>one</li>" in html
