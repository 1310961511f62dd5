"""Health panel: fps in/out and latency p50/p99 over time, and the accounting counters."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from bokeh.layouts import column

# Widgets, UI elements and annotations from their sub-packages: bokeh.models' computed __all__
# hides them from type checkers.
from bokeh.models import ColumnDataSource, DataRange1d, DatetimeTickFormatter
from bokeh.models.annotations import Legend, LegendItem
from bokeh.models.renderers import GlyphRenderer
from bokeh.models.ui import UIElement
from bokeh.models.widgets import Div
from bokeh.plotting import figure

from dashboards.panels.style import (
    FPS_IN_COLOR,
    FPS_OUT_COLOR,
    P50_COLOR,
    P99_COLOR,
    SECTION_STYLE,
    TEXT_MUTED,
    age,
    heading,
    plot_title,
)
from monitor.telemetry import TelemetrySnapshot

if TYPE_CHECKING:
    from bokeh.models.sources import DataDict

PLOT_WIDTH = 690
PLOT_HEIGHT = 272
_COLUMNS = ("t", "fps_in", "fps_out", "p50", "p99")
_COUNTERS = ("received", "processed", "skipped", "rejected", "failed", "queue_depth", "upstream_gaps")


def _time_plot(name: str, title: str, y_label: str) -> figure:
    p = figure(
        name=name,
        css_classes=[f"om-{name.replace('_', '-')}"],
        title=title,
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        x_axis_type="datetime",
        y_range=DataRange1d(start=0),
        tools="pan,xwheel_zoom,box_zoom,reset",
        toolbar_location="right",
    )
    p.yaxis.axis_label = y_label
    p.xaxis.formatter = DatetimeTickFormatter(seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M")
    plot_title(p).text_font_size = "13px"
    p.toolbar.logo = None
    return p


def _columns(snaps: Sequence[TelemetrySnapshot]) -> DataDict:
    return {
        "t": np.array([s.t * 1e3 for s in snaps], dtype=np.float64),  # datetime axes use ms
        "fps_in": np.array([s.fps_in for s in snaps], dtype=np.float64),
        "fps_out": np.array([s.fps_out for s in snaps], dtype=np.float64),
        "p50": np.array([s.latency_p50_ms for s in snaps], dtype=np.float64),
        "p99": np.array([s.latency_p99_ms for s in snaps], dtype=np.float64),
    }


class HealthPanel:
    """Streams new telemetry snapshots into rolling plots and shows the latest counters."""

    def __init__(self, history: int) -> None:
        self.history = max(1, history)
        self.source = ColumnDataSource(data=_columns(()), name="health_source")
        self.fps = _time_plot("health_fps", "Frame rate", "frames / s")
        self.latency = _time_plot("health_latency", "Latency (receive → result)", "ms")
        for plot, lines in (
            (self.fps, (("fps_in", FPS_IN_COLOR, "in"), ("fps_out", FPS_OUT_COLOR, "out"))),
            (self.latency, (("p50", P50_COLOR, "p50"), ("p99", P99_COLOR, "p99"))),
        ):
            items = []
            for field, color, label in lines:
                renderers: list[GlyphRenderer[Any]] = [
                    plot.line("t", field, source=self.source, color=color, line_width=2)
                ]
                items.append(LegendItem(label=label, renderers=renderers))
            # padding is an int in pixels; bokeh's stub nests the Property types
            legend = Legend(items=items, orientation="horizontal", border_line_alpha=0, padding=0, margin=2)  # type: ignore[arg-type]
            legend.label_text_font_size = "12px"
            plot.add_layout(legend, "above")
        self.counters = Div(
            name="counters", css_classes=["om-counters"], text=self._counters_html(None), width=PLOT_WIDTH
        )
        self.layout: UIElement = column(
            Div(text=heading("Health")), self.counters, self.fps, self.latency, styles=SECTION_STYLE
        )
        self._last_t = float("-inf")
        self._latest: TelemetrySnapshot | None = None
        self._counters_text = self.counters.text

    def update(self, snaps: Sequence[TelemetrySnapshot], now: float | None = None) -> None:
        """Stream the snapshots newer than the last one shown; refresh the counters."""
        new = [s for s in snaps if s.t > self._last_t]
        if new:
            self._last_t = new[-1].t
            self._latest = new[-1]
            self.source.stream(_columns(new), rollover=self.history)
        self.tick(now)

    def tick(self, now: float | None = None) -> None:
        text = self._counters_html(self._latest, now)
        if text != self._counters_text:
            self._counters_text = text
            self.counters.text = text

    @staticmethod
    def _counters_html(snap: TelemetrySnapshot | None, now: float | None = None) -> str:
        if snap is None:
            return f'<div class="om-counter-grid" style="color: {TEXT_MUTED}">no telemetry yet</div>'
        cells = []
        for key in _COUNTERS:
            value = int(getattr(snap, key))
            alert = key in ("rejected", "failed", "upstream_gaps") and value > 0
            color = "#b91c1c" if alert else "#111827"
            cells.append(
                f'<div class="om-counter" style="min-width: 84px; padding: 2px 6px;">'
                f'<div style="color: {TEXT_MUTED}; font-size: 11px;">{key.replace("_", " ")}</div> '
                f'<div style="font: 600 18px/1.2 ui-monospace, monospace; color: {color};">{value}</div>'
                f"</div>"
            )
        breakdowns = []
        for label, pairs in (
            ("rejected by reason", snap.rejected_by_reason),
            ("skipped by reason", snap.skipped_by_reason),
        ):
            body = ", ".join(f"{html.escape(r)} {n}" for r, n in pairs) if pairs else "none"
            breakdowns.append(f'<span style="color: {TEXT_MUTED}">{label}:</span> {body}')
        if snap.latency_p99_ms_by_pipeline:
            body = ", ".join(f"{html.escape(p)} {ms:.0f} ms" for p, ms in snap.latency_p99_ms_by_pipeline)
            breakdowns.append(f'<span style="color: {TEXT_MUTED}">p99 by pipeline:</span> {body}')
        return (
            '<div class="om-counter-grid" style="font-family: system-ui, sans-serif;">'
            f'<div style="display: flex; flex-wrap: wrap; gap: 4px;">{"".join(cells)}</div>'
            f'<div style="font-size: 12px; margin-top: 4px;">{" &nbsp;·&nbsp; ".join(breakdowns)}'
            f' &nbsp;·&nbsp; <span style="color: {TEXT_MUTED}">snapshot age</span> {age(snap.t, now)}</div>'
            "</div>"
        )
