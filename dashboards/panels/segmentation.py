"""Segmentation panel: XCT slice with the mask overlay, volume fraction and penetration, MIP.

Samples ``LiveState``: ``latest(pipeline)`` for the newest slice (display image + ``mask`` and
``mip`` overlays from the pipeline), ``points(pipeline)`` for the per-slice scalars (every
result). Plots: dendrite fraction of the electrolyte against slice (latest scan in colour, the
previous scan grey) and against time with the cumulative fraction; penetration depth against
time with the alarm levels (minor 0.5, major 0.8 of the electrolyte thickness).
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

IMAGE_PX = 400
MINOR, MAJOR = 0.5, 0.8
# RGBA per class id: electrode and electrolyte transparent; dendrite red, redeposit cyan, pit yellow.
CLASS_RGBA = np.array(
    [[0, 0, 0, 0], [0, 0, 0, 0], [239, 68, 68, 170], [34, 211, 238, 170], [250, 204, 21, 170]], np.uint8
)
DENDRITE_COLOR = "#dc2626"
CUM_COLOR = "#7c3aed"
PEN_COLOR = "#ea580c"


def rgba_overlay(mask: np.ndarray) -> np.ndarray:
    """Label map → packed uint32 RGBA (Bokeh ``image_rgba``), rows flipped for a y-down plot."""
    m = np.clip(np.asarray(mask, dtype=np.intp), 0, len(CLASS_RGBA) - 1)
    rgba = np.ascontiguousarray(CLASS_RGBA[m])
    return rgba.view(np.uint32).reshape(m.shape)


def _empty() -> dict[str, list[object]]:
    return {"image": [], "x": [], "y": [], "dw": [], "dh": []}


def series_columns(
    points: list[LivePoint],
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[float]]]:
    """(timeline, latest-scan profile, previous-scan profile) columns from the results."""
    t: dict[str, list[float]] = {"t": [], "vf": [], "cum": [], "pen": [], "z": []}
    scans: list[str] = []
    by_scan: dict[str, dict[str, list[float]]] = {}
    for p in points:
        s = dict(p.scalars)
        t["t"].append(p.t * 1000.0)
        t["vf"].append(s.get("dendrite_gap_fraction", float("nan")))
        t["cum"].append(s.get("cum_dendrite_gap_fraction", float("nan")))
        t["pen"].append(s.get("penetration", float("nan")))
        t["z"].append(s.get("slice_z", float(p.index)))
        if p.series not in by_scan:
            scans.append(p.series)
            by_scan[p.series] = {"z": [], "vf": []}
        by_scan[p.series]["z"].append(s.get("slice_z", float(p.index)))
        by_scan[p.series]["vf"].append(s.get("dendrite_gap_fraction", float("nan")))
    empty: dict[str, list[float]] = {"z": [], "vf": []}
    latest = by_scan[scans[-1]] if scans else empty
    previous = by_scan[scans[-2]] if len(scans) > 1 else empty
    return t, latest, previous


class SegmentationPanel:
    def __init__(self, pipeline: str, live: LiveState) -> None:
        self.pipeline = pipeline
        self.live = live
        self.image = ColumnDataSource(_empty(), name="segmentation_image_source")
        self.overlay = ColumnDataSource(_empty(), name="segmentation_overlay_source")
        self.mip = ColumnDataSource(_empty(), name="segmentation_mip_source")
        self.mapper = LinearColorMapper(palette="Greys256", low=0, high=1)
        self.mip_mapper = LinearColorMapper(palette="Inferno256", low=0, high=1)
        self.frame = figure(
            name="segmentation_slice", title="waiting for XCT slices…", width=IMAGE_PX, height=IMAGE_PX,
            x_range=Range1d(start=0, end=1), y_range=Range1d(start=1, end=0),
            tools="pan,wheel_zoom,reset", toolbar_location=None,
        )  # fmt: skip
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.frame.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper
        )
        self.frame.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=self.overlay)
        self.proj = figure(
            name="segmentation_mip", title="Dendrite projection through the volume (MIP)", width=IMAGE_PX,
            height=IMAGE_PX, x_range=self.frame.x_range, y_range=self.frame.y_range, tools="",
            toolbar_location=None,
        )  # fmt: skip
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.proj.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.mip, color_mapper=self.mip_mapper
        )
        for fig in (self.frame, self.proj):
            fig.grid.visible = False
            fig.axis.visible = False
            plot_title(fig).text_font_size = "13px"
        self.timeline = ColumnDataSource(
            {"t": [], "vf": [], "cum": [], "pen": [], "z": []}, name="segmentation_series"
        )
        self.latest = ColumnDataSource({"z": [], "vf": []}, name="segmentation_profile")
        self.previous = ColumnDataSource({"z": [], "vf": []})
        self.profile = figure(
            name="segmentation_profile_plot", title="Dendrite fraction of electrolyte vs slice", width=420,
            height=200, tools="", toolbar_location=None,
        )  # fmt: skip
        self.profile.line(
            "z", "vf", source=self.previous, color="#9ca3af", line_width=2, legend_label="previous scan"
        )
        self.profile.line(
            "z", "vf", source=self.latest, color=DENDRITE_COLOR, line_width=2, legend_label="this scan"
        )
        self.profile.xaxis.axis_label = "slice z"
        self.profile.legend.location = "top_left"
        self.profile.legend.label_text_font_size = "10px"
        self.vf = figure(
            name="segmentation_vf", title="Dendrite fraction vs time (slice; cumulative over the scan)",
            width=420, height=180, x_axis_type="datetime", tools="xpan,xwheel_zoom,reset",
            toolbar_location=None,
        )  # fmt: skip
        self.vf.scatter("t", "vf", source=self.timeline, color=DENDRITE_COLOR, size=3)
        self.vf.line("t", "cum", source=self.timeline, color=CUM_COLOR, line_width=2)
        self.pen = figure(
            name="segmentation_penetration", title="Penetration depth (fraction of electrolyte thickness)",
            width=420, height=180, x_axis_type="datetime", x_range=self.vf.x_range,
            y_range=Range1d(start=-0.02, end=1.02), tools="", toolbar_location=None,
        )  # fmt: skip
        self.pen.add_layout(BoxAnnotation(bottom=MINOR, top=MAJOR, fill_color="#eab308", fill_alpha=0.15))
        self.pen.add_layout(BoxAnnotation(bottom=MAJOR, top=1.02, fill_color="#dc2626", fill_alpha=0.10))
        self.pen.add_layout(Span(location=MAJOR, dimension="width", line_color="#dc2626", line_dash="dashed"))
        self.pen.scatter("t", "pen", source=self.timeline, color=PEN_COLOR, size=3)
        for fig in (self.profile, self.vf, self.pen):
            plot_title(fig).text_font_size = "12px"
        self.status = Div(name="segmentation_status", text=self._status_html(None), width=IMAGE_PX * 2)
        self.layout: UIElement = column(
            Div(text=heading(f"Segmentation · {pipeline}")),
            row(self.frame, self.proj, column(self.profile, self.vf, self.pen)),
            self.status,
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
                overlays = dict(frame.overlays)
                mask = overlays.get("mask")
                fits = mask is not None and mask.shape == img.shape
                self.overlay.data = image_data(rgba_overlay(mask)) if mask is not None and fits else _empty()
                mip = overlays.get("mip")
                if mip is not None and mip.ndim == 2:
                    self.mip_mapper.update(low=0.0, high=max(1.0, float(mip.max())))
                    # Stretch the stored-mask-sized projection over the slice's display extent.
                    self.mip.data = {
                        "image": [mip],
                        "x": [0.0],
                        "y": [0.0],
                        "dw": [float(nx)],
                        "dh": [float(ny)],
                    }
                self.frame.x_range.update(start=0, end=nx)
                self.frame.y_range.update(start=ny, end=0)
                plot_title(self.frame).text = f"{frame.series} · slice {frame.index}"
        points = self.live.points(self.pipeline)
        last = (points[-1].series, points[-1].index) if points else None
        if len(points) != self._n_points or last != self._last_point:
            self._n_points, self._last_point = len(points), last
            t, latest, previous = series_columns(points)
            self.timeline.data = t
            self.latest.data = latest
            self.previous.data = previous
            self.status.text = self._status_html(points[-1] if points else None)

    @staticmethod
    def _status_html(point: LivePoint | None) -> str:
        if point is None:
            return f'<div class="om-seg-status" style="color: {TEXT_MUTED}">no results yet</div>'
        s = dict(point.scalars)
        pen = s.get("penetration", float("nan"))
        if pen >= MAJOR:
            state, color = (
                "SHORT-CIRCUIT RISK — dendrite across most of the electrolyte",
                SEVERITY_COLORS[Severity.MAJOR],
            )
        elif pen >= MINOR:
            state, color = "dendrites past half the electrolyte", SEVERITY_COLORS[Severity.MINOR]
        else:
            state, color = "dendrites shallow", SEVERITY_COLORS[Severity.NO_ALARM]
        cells = [
            ("series", point.series),
            ("slice", number(s.get("slice_z", float(point.index)))),
            ("penetration", number(pen)),
            ("dendrite / electrolyte", number(s.get("dendrite_gap_fraction", float("nan")))),
            ("growth vs last scan", number(s.get("dendrite_vf_growth", float("nan")))),
            ("dendrites", number(s.get("n_dendrite", float("nan")))),
            ("redeposit", number(s.get("n_redeposit", float("nan")))),
            ("pits", number(s.get("n_pit", float("nan")))),
        ]
        body = "".join(
            f'<span style="margin-right: 14px; white-space: nowrap;"><span style="color: {TEXT_MUTED}">'
            f"{html.escape(k)}</span> <b>{html.escape(v)}</b></span>"
            for k, v in cells
        )
        return (
            f'<div class="om-seg-status" style="font: 13px/1.6 system-ui, sans-serif;">'
            f'<b style="color: {color}">{html.escape(state)}</b><br>{body}</div>'
        )
