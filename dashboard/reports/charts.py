"""Plotly figures of the weekly report, for the page (JSON for Plotly.js) and the e-mail (PNG).

PNGs are rendered by kaleido driving the Chromium that controlplane.chromium finds
(``CHROMIUM_PATH``, else the system's), given to kaleido explicitly: it never looks for, nor
downloads, a browser of its own. The page's Plotly.js comes from the plotly wheel, the same file
the site serves, and MathJax is off, so rendering needs no network.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly
import plotly.graph_objects as go
import plotly.io as pio
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from plotly.subplots import make_subplots

from controlplane import chromium
from dashboard.reports.analytics import Analytics

GREEN = "#2da44e"
RED = "#cf222e"
BLUE = "#0969da"
PNG_WIDTH = 720
PNG_HEIGHT = 360
PNG_CACHE_S = 6 * 3600
RENDER_TIMEOUT_S = 60
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

THEMES: dict[str, dict[str, Any]] = {
    # The app's dark page.
    "page": {
        "template": "plotly_dark",
        "paper_bgcolor": "#11161d",
        "plot_bgcolor": "#11161d",
        "font": {"color": "#c9d3df", "size": 12},
        "grid": "#253040",
    },
    # E-mail clients show white pages.
    "email": {
        "template": "plotly_white",
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"color": "#1f2328", "size": 12},
        "grid": "#d8dee4",
    },
}

CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["lasso2d"]}


def _style(fig: go.Figure, theme: str, *, height: int, title: str) -> go.Figure:
    look = THEMES[theme]
    fig.update_layout(
        template=look["template"],
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        height=height,
        margin={"l": 64, "r": 16, "t": 48, "b": 36},
        paper_bgcolor=look["paper_bgcolor"],
        plot_bgcolor=look["plot_bgcolor"],
        font=look["font"],
        showlegend=False,
        hovermode="x unified",
    )
    fig.update_xaxes(gridcolor=look["grid"])
    fig.update_yaxes(gridcolor=look["grid"], zerolinecolor=look["grid"])
    return fig


def equity_drawdown_figure(report: Analytics, *, theme: str = "page") -> go.Figure:
    """Combined equity (from the period's opening value) above its drawdown from the peak."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.68, 0.32],
        vertical_spacing=0.08,
    )
    ts = [report.start] + [p[0] for p in report.curve]
    equity = [float(report.start_equity or 0)] + [float(p[1]) for p in report.curve]
    drawdown = [0.0] + [p[2] for p in report.curve]
    if report.curve:
        ts.append(report.end)
        equity.append(equity[-1])
        drawdown.append(drawdown[-1])
    fig.add_trace(
        go.Scatter(
            x=ts,
            y=equity,
            name="equity",
            mode="lines",
            line={"color": BLUE, "width": 2},
            line_shape="hv",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=ts,
            y=drawdown,
            name="drawdown %",
            mode="lines",
            fill="tozeroy",
            line={"color": RED, "width": 1},
            line_shape="hv",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="equity", row=1, col=1)
    fig.update_yaxes(title_text="drawdown %", row=2, col=1)
    fig.update_xaxes(range=[report.start, report.end], type="date")
    return _style(fig, theme, height=PNG_HEIGHT + 40, title="Equity and drawdown")


def daily_pnl_figure(report: Analytics, *, theme: str = "page") -> go.Figure:
    days = [d.day.isoformat() for d in report.days]
    pnl = [float(d.pnl) for d in report.days]
    fig = go.Figure(
        go.Bar(x=days, y=pnl, name="P&L", marker_color=[GREEN if v >= 0 else RED for v in pnl])
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(title_text="P&L")
    return _style(fig, theme, height=PNG_HEIGHT + 40 if theme == "page" else 300, title="Daily P&L")


def engine_equity_figure(
    curves: Sequence[tuple[str, Analytics]], *, theme: str = "page"
) -> go.Figure:
    """Each engine's return (%) since the period started, one line per engine."""
    fig = go.Figure()
    for name, report in curves:
        if not report.curve or not report.start_equity:
            continue
        base = float(report.start_equity)
        fig.add_trace(
            go.Scatter(
                x=[report.start] + [p[0] for p in report.curve],
                y=[0.0] + [(float(p[1]) / base - 1) * 100 for p in report.curve],
                name=name,
                mode="lines",
                line_shape="hv",
            )
        )
    fig.update_yaxes(title_text="return %")
    if curves:
        fig.update_xaxes(range=[curves[0][1].start, curves[0][1].end], type="date")
    _style(fig, theme, height=PNG_HEIGHT, title="Return by engine")
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": -0.15})
    return fig


def figure_json(fig: go.Figure) -> str:
    return pio.to_json(fig, validate=False)


# --- PNG ---------------------------------------------------------------------------------------


def chromium_path() -> str:
    path = chromium.find()
    if path is None:
        configured = os.environ.get("CHROMIUM_PATH")
        problem = f"CHROMIUM_PATH={configured} is not a Chromium executable" if configured else ""
        raise ImproperlyConfigured(
            f"The report's PNG charts need Chromium. {problem or chromium.MISSING}"
        )
    return path


async def _render(figures: list[dict[str, Any]], browser: str) -> list[bytes]:
    import kaleido

    opts = {"format": "png", "width": PNG_WIDTH, "height": None, "scale": 2}
    async with kaleido.Kaleido(
        n=1, timeout=RENDER_TIMEOUT_S, path=browser, plotlyjs=str(PLOTLY_JS), mathjax=False
    ) as renderer:
        images = []
        for figure in figures:
            height = figure.get("layout", {}).get("height") or PNG_HEIGHT
            images.append(await renderer.calc_fig(figure, opts={**opts, "height": height}))
        return images


def _dicts(figures: Sequence[go.Figure]) -> list[dict[str, Any]]:
    return [json.loads(figure_json(f)) for f in figures]


def png_cache_key(figures: Sequence[go.Figure]) -> str:
    blob = json.dumps(_dicts(figures), sort_keys=True).encode()
    return "reports:png:" + hashlib.sha256(blob).hexdigest()


def render_pngs(figures: Sequence[go.Figure]) -> list[bytes]:
    """PNG bytes of each figure, from one Chromium; the same figures are rendered once (cache)."""
    dicts = _dicts(figures)
    key = png_cache_key(figures)
    cached = cache.get(key)
    if cached is not None:
        return list(cached)
    browser = chromium_path()
    # Celery workers and tests may already run an event loop in this thread: use a fresh one.
    images = _run_in_new_loop(_render(dicts, browser))
    cache.set(key, images, PNG_CACHE_S)
    return images


def _run_in_new_loop(coroutine: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
