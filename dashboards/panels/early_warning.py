"""Early-warning panel: growth image, risk forecast with the alarm band, frames-to-transition
forecast with its interval, latent trace, status (with the out-of-distribution flag).

Samples ``LiveState``: ``latest(pipeline)`` for the newest growth image, ``points(pipeline)`` for
the timelines (every result; NaN while a window fills). The alarm level and its hysteresis band
come from the configured MAJOR threshold rule on this pipeline's ``alarm_risk`` / ``risk``
(``LiveState.thresholds``; 0.8 / 0.2 if none is configured). The forecast plot shows the
expected frames to transition (E[min(T, K)] from the hazard head) with its 10–90 % band.
"""

from __future__ import annotations

import html

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
from bokeh.models.annotations import BoxAnnotation, Span
from bokeh.models.ui import UIElement
from bokeh.models.widgets import Div
from bokeh.plotting import figure

from dashboards.panels.frame import auto_contrast, image_data
from dashboards.panels.style import SECTION_STYLE, SEVERITY_COLORS, TEXT_MUTED, heading, number, plot_title
from monitor.alerts.model import Severity
from monitor.live import LivePoint, LiveState

IMAGE_PX = 360
MAJOR = 0.8
CLEAR = 0.6
RISK_COLOR = "#dc2626"
LATENT_COLOR = "#7c3aed"


def _empty_image() -> dict[str, list[object]]:
    return {"image": [], "x": [], "y": [], "dw": [], "dh": []}


def timeline(points: list[LivePoint]) -> dict[str, list[float]]:
    """Columns for the timelines: ``t`` (ms epoch), risk, latent, lead time (and its 10–90 %
    interval, the lead time itself when the model gives none), OOD flag, frame index."""
    nan = float("nan")
    cols: dict[str, list[float]] = {
        "t": [], "risk": [], "latent": [], "lead": [], "lead_lo": [], "lead_hi": [], "ood": [], "index": []
    }  # fmt: skip
    for p in points:
        s = dict(p.scalars)
        lead = s.get("lead_time_frames", nan)
        cols["t"].append(p.t * 1000.0)
        cols["risk"].append(s.get("risk", nan))
        cols["latent"].append(s.get("latent", nan))
        cols["lead"].append(lead)
        cols["lead_lo"].append(s.get("lead_time_lo", lead))
        cols["lead_hi"].append(s.get("lead_time_hi", lead))
        cols["ood"].append(s.get("ood", 0.0))
        cols["index"].append(float(p.index))
    return cols


def frames_text(expected: float, lo: float, hi: float, k: int = 28) -> str:
    """Expected frames to transition with its interval, as an operator reads it: ``12 (5–20)``,
    ``> 28`` beyond the forecast range, ``now`` below one frame (never ``8e-05``)."""
    if not np.isfinite(expected):
        return "–"
    if expected < 1.0 and (not np.isfinite(hi) or hi < 1.0):
        return "now (already transitioning)"
    if expected >= k - 0.5:
        return f"> {k}"
    body = f"{expected:.0f}"
    if np.isfinite(lo) and np.isfinite(hi):
        hi_s = f"> {k}" if hi >= k else f"{hi:.0f}"
        body += f" ({lo:.0f}–{hi_s})"
    return body


def configured_threshold(live: LiveState, pipeline: str) -> tuple[float, float, int]:
    """(major, hysteresis, min_count) of the configured risk rule on ``pipeline``."""
    for name, metric, major, hyst, count in getattr(live, "thresholds", ()):
        if name == pipeline and metric in ("alarm_risk", "risk"):
            return float(major), float(hyst), int(count)
    return MAJOR, MAJOR - CLEAR, 3


class EarlyWarningPanel:
    def __init__(self, pipeline: str, live: LiveState) -> None:
        self.pipeline = pipeline
        self.live = live
        self.image = ColumnDataSource(_empty_image(), name="early_warning_image_source")
        self.mapper = LinearColorMapper(palette="Greys256", low=0, high=1)
        self.frame = figure(
            name="early_warning_image", css_classes=["om-ew-image"], title="waiting for growth frames…",
            width=IMAGE_PX, height=IMAGE_PX,
            x_range=Range1d(start=0, end=1), y_range=Range1d(start=1, end=0),
            tools="pan,wheel_zoom,reset", toolbar_location=None,
        )  # fmt: skip
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.frame.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper
        )
        self.frame.grid.visible = False
        self.frame.axis.visible = False
        plot_title(self.frame).text_font_size = "13px"
        self.major, hyst, self.min_count = configured_threshold(live, pipeline)
        self.clear = self.major - hyst
        self.series = ColumnDataSource(timeline([]), name="early_warning_series")
        self.risk = figure(
            name="early_warning_risk", title="Risk: transition within H frames", width=560, height=200,
            x_axis_type="datetime", y_range=Range1d(start=-0.02, end=1.02), tools="xpan,xwheel_zoom,reset",
            toolbar_location=None,
        )  # fmt: skip
        major = self.major
        self.risk.add_layout(
            BoxAnnotation(bottom=self.clear, top=major, fill_color="#eab308", fill_alpha=0.15)
        )
        self.risk.add_layout(
            BoxAnnotation(bottom=major, top=1.02, fill_color=SEVERITY_COLORS[Severity.MAJOR], fill_alpha=0.10)
        )
        self.risk.add_layout(
            Span(location=major, dimension="width", line_color=RISK_COLOR, line_dash="dashed")
        )
        risk_title = f"Risk: transition within H frames (alarm ≥ {major:g} for {self.min_count})"
        plot_title(self.risk).text = risk_title
        self.risk.line("t", "risk", source=self.series, color=RISK_COLOR, line_width=2)
        self.risk.yaxis.axis_label = "risk"
        self.latent = figure(
            name="early_warning_latent", title="Latent (surrogate variable of destabilisation)", width=560,
            height=160, x_axis_type="datetime", x_range=self.risk.x_range, tools="", toolbar_location=None,
        )  # fmt: skip
        self.latent.line("t", "latent", source=self.series, color=LATENT_COLOR, line_width=2)
        self.latent.yaxis.axis_label = "latent"
        self.forecast = figure(
            name="early_warning_forecast", title="Forecast: frames to transition (expected, 10–90 % band)",
            width=560, height=160, x_axis_type="datetime", x_range=self.risk.x_range, tools="",
            toolbar_location=None,
        )  # fmt: skip
        self.forecast.varea(
            "t", "lead_lo", "lead_hi", source=self.series, fill_color=RISK_COLOR, fill_alpha=0.15
        )
        self.forecast.line("t", "lead", source=self.series, color=RISK_COLOR, line_width=2)
        self.forecast.yaxis.axis_label = "frames"
        for fig in (self.risk, self.latent, self.forecast):
            plot_title(fig).text_font_size = "13px"
        self.status = Div(name="early_warning_status", text=self._status_html(None), width=560)
        self.layout: UIElement = column(
            Div(text=heading(f"Early warning · {pipeline}")),
            row(self.frame, column(self.risk, self.forecast, self.latent, self.status)),
            styles=SECTION_STYLE,
        )
        self._key: tuple[str, int] | None = None
        self._n_points = -1
        self._last_point: tuple[str, int] | None = None

    def update(self, now: float) -> None:
        frame = self.live.latest(self.pipeline)
        if frame is not None and (frame.series, frame.index) != self._key:
            self._key = (frame.series, frame.index)
            img = np.ascontiguousarray(frame.image, dtype=np.float32)
            if img.ndim == 2 and img.size:
                lo, hi = auto_contrast(img)
                self.mapper.update(low=lo, high=hi)
                ny, nx = img.shape
                self.image.data = image_data(img)
                self.frame.x_range.update(start=0, end=nx)
                self.frame.y_range.update(start=ny, end=0)
                plot_title(self.frame).text = f"{frame.series} · frame {frame.index}"
        points = self.live.points(self.pipeline)
        last = (points[-1].series, points[-1].index) if points else None
        if len(points) != self._n_points or last != self._last_point:
            self._n_points, self._last_point = len(points), last
            self.series.data = timeline(points)
            self.status.text = self._status_html(points[-1] if points else None)

    def _status_html(self, point: LivePoint | None) -> str:
        if point is None:
            return f'<div class="om-ew-status" style="color: {TEXT_MUTED}">no results yet</div>'
        s = dict(point.scalars)
        risk = s.get("risk", float("nan"))
        fill = s.get("window_fill", 0.0)
        if not np.isfinite(risk):
            state, color = f"filling window ({fill:.0%})", TEXT_MUTED
        elif s.get("ood", 0.0) >= 0.5:
            state, color = "OUT OF DISTRIBUTION — forecast not trusted", SEVERITY_COLORS[Severity.MINOR]
        elif risk >= self.major:
            state, color = "HIGH — dendritic transition imminent", SEVERITY_COLORS[Severity.MAJOR]
        elif risk >= self.clear:
            state, color = "elevated", SEVERITY_COLORS[Severity.MINOR]
        else:
            state, color = "compact growth", SEVERITY_COLORS[Severity.NO_ALARM]
        cells = [
            ("series", point.series),
            ("frame", str(point.index)),
            ("risk", number(risk)),
            ("latent", number(s.get("latent", float("nan")))),
            (
                "frames to transition",
                frames_text(
                    s.get("lead_time_frames", float("nan")),
                    s.get("lead_time_lo", float("nan")),
                    s.get("lead_time_hi", float("nan")),
                ),
            ),
            ("OOD", "yes" if s.get("ood", 0.0) >= 0.5 else "no"),
        ]
        body = "".join(
            f'<span style="margin-right: 14px; white-space: nowrap;"><span style="color: {TEXT_MUTED}">'
            f"{html.escape(k)}</span> <b>{html.escape(v)}</b></span>"
            for k, v in cells
        )
        return (
            f'<div class="om-ew-status" style="font: 13px/1.6 system-ui, sans-serif;">'
            f'<b style="color: {color}">{html.escape(state)}</b><br>{body}</div>'
        )
