"""Plotly figures of the engine page, built in Python and drawn by the Plotly.js we serve.

Each function returns the figure as JSON text for the page to hand to ``Plotly.newPlot``. Live
updates then append points with ``Plotly.extendTraces`` in the trace order fixed here: the
``TRACES`` constants say which trace index is which.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

BACKGROUND = "#11161d"
GRID = "#253040"
TEXT = "#c9d3df"
GREEN = "#3fb950"
RED = "#f85149"
BLUE = "#58a6ff"
AMBER = "#d29922"

# Trace order of each figure, for extendTraces.
EQUITY_TRACES = {"equity": 0, "drawdown": 1}
LATENCY_TRACES = {"latency": 0}
REJECTION_TRACES = {"rejection": 0}

CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}


def _layout(fig: go.Figure, *, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_dark",
        height=height,
        margin={"l": 56, "r": 16, "t": 28, "b": 32},
        paper_bgcolor=BACKGROUND,
        plot_bgcolor=BACKGROUND,
        font={"color": TEXT, "size": 12},
        showlegend=False,
        hovermode="x unified",
        uirevision="keep",  # live updates keep the operator's zoom
    )
    fig.update_xaxes(gridcolor=GRID, type="date")
    fig.update_yaxes(gridcolor=GRID, zerolinecolor=GRID)
    return fig


def equity_figure(series: dict[str, list[Any]]) -> str:
    """Equity on top, drawdown from the session's running peak (%) below, sharing the time axis."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.7, 0.3],
        vertical_spacing=0.06,
        subplot_titles=("Equity", "Drawdown from the session's peak (%)"),
    )
    fig.add_trace(
        go.Scatter(
            x=series["ts"],
            y=series["equity"],
            name="equity",
            mode="lines",
            line={"color": BLUE, "width": 1.6},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=series["ts"],
            y=series["drawdown_pct"],
            name="drawdown",
            mode="lines",
            fill="tozeroy",
            line={"color": RED, "width": 1},
        ),
        row=2,
        col=1,
    )
    return pio.to_json(_layout(fig, height=380))


def latency_figure(series: dict[str, list[Any]]) -> str:
    fig = go.Figure(
        go.Scatter(
            x=series["ts"],
            y=series["value"],
            name="latency",
            mode="lines",
            line={"color": AMBER, "width": 1.2},
        )
    )
    fig.update_layout(title={"text": "Order latency (ms)", "font": {"size": 13}})
    return pio.to_json(_layout(fig, height=220))


# Minutes on the axis when its ticks are a minute or more apart, seconds below that: two ticks
# within one minute never read the same.
MINUTE_TICKS = [
    {"dtickrange": [None, 60_000], "value": "%H:%M:%S"},
    {"dtickrange": [60_000, None], "value": "%H:%M"},
]


def rejection_figure(series: dict[str, Any]) -> str:
    """Per-minute buckets over the series' whole window (``since`` to ``until``).

    The axis always spans the window, whatever its bars: an engine without orders for two hours
    has none, and a date axis with nothing to span falls back to a whole year, where the forced
    one-minute ticks this chart once had came to half a million and held the page's main thread
    for about a minute. Plotly picks the tick spacing; ``MINUTE_TICKS`` only formats them.
    """
    fig = go.Figure(
        go.Bar(x=series["ts"], y=series["rejection_pct"], name="rejections", marker={"color": RED})
    )
    fig.update_layout(title={"text": "Rejected orders per minute (%)", "font": {"size": 13}})
    fig.update_yaxes(range=[0, 100])
    _layout(fig, height=220)
    fig.update_xaxes(
        autorangeoptions={"include": [series["since"], series["until"]]},
        tickformatstops=MINUTE_TICKS,
    )
    return pio.to_json(fig)


def divergence_figure(days: list[Any], threshold_pct: float) -> str:
    """The divergence log (golive.models.DivergenceDay rows, any order), oldest day first: the
    day's live and baseline returns on top, how far apart below, red beyond the alert threshold
    (a dashed line)."""
    days = sorted(days, key=lambda d: d.day)
    x = [d.day.isoformat() for d in days]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.55, 0.45],
        vertical_spacing=0.1,
        subplot_titles=("Return of the day (%)", "Apart from the baseline (%)"),
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[d.live_return_pct for d in days],
            name="live",
            mode="lines+markers",
            line={"color": BLUE, "width": 1.6},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[d.baseline_return_pct for d in days],
            name="baseline",
            mode="lines+markers",
            line={"color": AMBER, "width": 1.2, "dash": "dot"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Bar(
            x=x,
            y=[d.divergence_pct for d in days],
            name="apart",
            marker={
                "color": [
                    RED
                    if d.divergence_pct is not None and d.divergence_pct > threshold_pct
                    else GREEN
                    for d in days
                ]
            },
        ),
        row=2,
        col=1,
    )
    fig.add_hline(y=threshold_pct, line={"color": RED, "dash": "dash", "width": 1}, row=2, col=1)
    _layout(fig, height=340)
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": 1.12, "x": 0})
    return pio.to_json(fig, validate=False)
