"""Live frame panel: stream selector, latest display image with auto contrast, frame scalars."""

from __future__ import annotations

import html
import time
from typing import Any

import numpy as np
from bokeh.layouts import column

# Widgets, UI elements and annotations from their sub-packages: bokeh.models' computed __all__
# hides them from type checkers.
from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
from bokeh.models.annotations import ColorBar
from bokeh.models.ui import UIElement
from bokeh.models.widgets import Div, Select
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from dashboards.panels.style import SECTION_STYLE, TEXT_MUTED, age, heading, number, plot_title
from monitor.live import LiveFrame

FrameKey = tuple[str, str, int]
"""(stream, series, index): a frame is redrawn only when this changes."""

PLOT_SIZE = 540
CONTRAST_PERCENTILES = (1.0, 99.0)
_WAITING = "waiting for frames…"


def image_data(image: np.ndarray) -> dict[str, list[object]]:
    """ColumnDataSource data for one image placed at the origin, one display pixel per unit."""
    ny, nx = image.shape
    return {"image": [image], "x": [0.0], "y": [0.0], "dw": [float(nx)], "dh": [float(ny)]}


def auto_contrast(image: np.ndarray) -> tuple[float, float]:
    """Colour limits at the 1st and 99th percentile of the finite pixels (never equal)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, CONTRAST_PERCENTILES))
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-6)
    return lo, hi


def _empty_image() -> dict[str, list[object]]:
    return {"image": [], "x": [], "y": [], "dw": [], "dh": []}


class FramePanel:
    """Shows the latest :class:`LiveFrame` of the selected stream."""

    def __init__(self) -> None:
        self.select = Select(
            title="Stream",
            options=[],
            value="",
            width=260,
            name="stream_select",
            css_classes=["om-stream-select"],
        )
        self.source = ColumnDataSource(data=_empty_image(), name="live_frame_source")
        self.mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=1.0)
        self.plot = figure(
            name="live_frame",
            css_classes=["om-live-frame"],
            title=_WAITING,
            width=PLOT_SIZE + 90,
            height=PLOT_SIZE,
            x_range=Range1d(start=0, end=1),
            y_range=Range1d(start=1, end=0),  # detector convention: row 0 at the top
            tools="pan,wheel_zoom,box_zoom,reset,save,hover",
            active_scroll="wheel_zoom",
            tooltips=[("x, y", "$x{0}, $y{0}"), ("value", "@image{0.000}")],
            toolbar_location="right",
        )
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.plot.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.source, color_mapper=self.mapper
        )
        plot_title(self.plot).text_font_size = "13px"
        self.plot.xaxis.axis_label = "x [px]"
        self.plot.yaxis.axis_label = "y [px]"
        self.plot.grid.visible = False
        self.plot.toolbar.logo = None
        self.colorbar = ColorBar(color_mapper=self.mapper, width=14, title="counts", padding=4)
        self.plot.add_layout(self.colorbar, "right")
        self.scalars = Div(
            name="frame_scalars", css_classes=["om-frame-scalars"], text=self._scalars_html(None), width=620
        )
        self.layout: UIElement = column(
            Div(text=heading("Live frame")),
            self.select,
            self.plot,
            self.scalars,
            styles=SECTION_STYLE,
        )
        self._key: FrameKey | None = None
        self._shape: tuple[int, int] | None = None
        self._frame: LiveFrame | None = None
        self._title = _WAITING
        self._frames: dict[str, LiveFrame] = {}
        self.select.on_change("value", lambda _attr, _old, _new: self._on_select())

    def _on_select(self) -> None:
        self._key = None  # force a redraw of the newly selected stream
        self.update(self._frames)

    def update(self, frames: dict[str, LiveFrame], now: float | None = None) -> None:
        """Sync the selector with the streams seen and redraw when the frame changed."""
        self._frames = frames
        streams = sorted(frames)
        if streams != list(self.select.options):
            options: list[str | tuple[Any, str]] = list(streams)
            self.select.options = options
        if streams and self.select.value not in frames:
            self.select.value = streams[0]  # triggers _on_select, which redraws
            return
        frame = frames.get(self.select.value)
        if frame is not None and (frame.stream, frame.series, frame.index) != self._key:
            self._show(frame)
        self.tick(now)

    def _show(self, frame: LiveFrame) -> None:
        image = np.ascontiguousarray(frame.image, dtype=np.float32)
        if image.ndim != 2 or image.size == 0:
            return
        ny, nx = image.shape
        lo, hi = auto_contrast(image)
        self.mapper.update(low=lo, high=hi)
        # One assignment: the numpy array goes to the browser as a binary buffer.
        self.source.data = image_data(image)
        if self._shape != (ny, nx):
            self._shape = (ny, nx)
            self.plot.x_range.update(start=0, end=nx)
            self.plot.y_range.update(start=ny, end=0)
        self._key = (frame.stream, frame.series, frame.index)
        self._frame = frame
        self.scalars.text = self._scalars_html(frame)

    def tick(self, now: float | None = None) -> None:
        """Refresh the title (the frame's age moves even when nothing else does)."""
        frame = self._frame
        if frame is None:
            title = _WAITING
        else:
            t = time.time() if now is None else now
            parts = (frame.stream, frame.series, f"frame {frame.index}", f"age {age(frame.t_received, t)}")
            title = "  ·  ".join(parts)
        if title != self._title:
            self._title = title
            plot_title(self.plot).text = title

    @staticmethod
    def _scalars_html(frame: LiveFrame | None) -> str:
        if frame is None:
            return f'<div class="om-scalars" style="color: {TEXT_MUTED}">no frame scalars yet</div>'
        h, w = frame.image.shape[:2]
        cells = [("source", frame.source), ("display px", f"{w}×{h}")]
        cells += [(name, number(value)) for name, value in frame.scalars]
        body = "".join(
            f'<span style="margin-right: 14px; white-space: nowrap;">'
            f'<span style="color: {TEXT_MUTED}">{html.escape(k)}</span> <b>{html.escape(v)}</b></span>'
            for k, v in cells
        )
        return f'<div class="om-scalars" style="font: 13px/1.6 system-ui, sans-serif;">{body}</div>'
