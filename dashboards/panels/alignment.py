"""Alignment panel: frame with particle contours and track tails, motion timelines, XANES maps.

Samples ``LiveState``: ``latest(pipeline)`` for the image and the pipeline's overlays
(``labels`` → contours, ``tracks`` → tails, ``xanes_edge_eV`` → the latest scan's maps) and
``points(pipeline)`` for the per-particle displacement/velocity and rigid vs non-rigid timelines.
"""

from __future__ import annotations

import html

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
from bokeh.models.annotations import ColorBar
from bokeh.models.ui import UIElement
from bokeh.models.widgets import Div
from bokeh.palettes import Category10_10, Turbo256
from bokeh.plotting import figure

from dashboards.panels.frame import auto_contrast, image_data
from dashboards.panels.style import SECTION_STYLE, TEXT_MUTED, heading, number, plot_title
from monitor.live import LiveFrame, LiveState

IMAGE_PX = 420
TILE = 64
SLOT_COLORS = [Category10_10[i % 10] for i in range(64)]


def contour_rgba(labels: np.ndarray) -> np.ndarray:
    """RGBA (uint32, Bokeh layout) with each particle's boundary in its slot colour."""
    lab = labels.astype(np.int32)
    edge = np.zeros(lab.shape, bool)
    edge[:-1] |= lab[:-1] != lab[1:]
    edge[1:] |= lab[:-1] != lab[1:]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge &= lab > 0
    out = np.zeros(lab.shape, np.uint32)
    view = out.view(np.uint8).reshape(*lab.shape, 4)
    for slot in np.unique(lab[edge]):
        c = SLOT_COLORS[(int(slot) - 1) % len(SLOT_COLORS)].lstrip("#")
        rgb = [int(c[i : i + 2], 16) for i in (0, 2, 4)]
        sel = edge & (lab == slot)
        view[sel, 0], view[sel, 1], view[sel, 2], view[sel, 3] = rgb[0], rgb[1], rgb[2], 255
    return out


def mosaic(maps: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Non-empty per-particle maps (P, R, R) resampled to ``tile`` px and tiled 4 per row."""
    idx = [i for i in range(maps.shape[0]) if np.isfinite(maps[i]).any()]
    if not idx:
        return np.full((tile, tile), np.nan, np.float32)
    cols = min(4, len(idx))
    rows = -(-len(idx) // cols)
    r = maps.shape[1]
    pick = np.minimum((np.arange(tile) + 0.5) * r / tile, r - 1).astype(int)
    out = np.full((rows * tile, cols * tile), np.nan, np.float32)
    for k, i in enumerate(idx):
        y, x = divmod(k, cols)
        out[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = maps[i][pick][:, pick]
    return out


class AlignmentPanel:
    def __init__(self, pipeline: str, live: LiveState) -> None:
        self.pipeline = pipeline
        self.live = live
        self.image = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name="align_image")
        self.contours = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []})
        self.tails = ColumnDataSource({"xs": [], "ys": [], "color": []}, name="align_tails")
        self.mapper = LinearColorMapper(palette="Greys256", low=0, high=1)
        self.frame = figure(
            name="alignment_frame", title="waiting for frames…", width=IMAGE_PX, height=IMAGE_PX,
            x_range=Range1d(start=0, end=1), y_range=Range1d(start=1, end=0), tools="pan,wheel_zoom,reset",
            toolbar_location=None,
        )  # fmt: skip
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.frame.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper
        )
        self.frame.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=self.contours)
        self.frame.multi_line(xs="xs", ys="ys", line_color="color", line_width=2, source=self.tails)
        self.frame.grid.visible = False
        plot_title(self.frame).text_font_size = "13px"
        self.series = ColumnDataSource({"t": [], "disp": [], "speed": [], "rigid": [], "nonrigid": []})
        self.motion = figure(
            name="alignment_motion", title="rigid vs non-rigid (px)", width=440, height=200,
            x_axis_type="datetime", tools="pan,xwheel_zoom,reset", toolbar_location=None,
        )  # fmt: skip
        self.motion.line("t", "rigid", source=self.series, color="#2563eb", legend_label="rigid |d|")
        self.motion.line("t", "nonrigid", source=self.series, color="#dc2626", legend_label="non-rigid rms")
        self.motion.legend.location = "top_left"
        self.particles = ColumnDataSource({"xs": [], "ys": [], "vs": [], "color": []}, name="align_particles")
        self.disp_plot = figure(
            name="alignment_displacement", title="displacement per particle (px)", width=440, height=200,
            x_axis_type="datetime", tools="pan,xwheel_zoom,reset", toolbar_location=None,
        )  # fmt: skip
        self.disp_plot.multi_line(xs="xs", ys="ys", line_color="color", source=self.particles)
        self.speed_plot = figure(
            name="alignment_velocity", title="speed per particle (px/s)", width=440, height=200,
            x_axis_type="datetime", tools="pan,xwheel_zoom,reset", toolbar_location=None,
        )  # fmt: skip
        self.speed_plot.multi_line(xs="xs", ys="vs", line_color="color", source=self.particles)
        self.xanes = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name="align_xanes")
        self.xmapper = LinearColorMapper(palette=Turbo256, low=8340, high=8348, nan_color=(0, 0, 0, 0))
        self.xplot = figure(
            name="alignment_xanes", title="XANES edge energy (eV), latest scan", width=360, height=360,
            x_range=Range1d(start=0, end=1), y_range=Range1d(start=1, end=0), tools="reset",
            toolbar_location=None,
        )  # fmt: skip
        # Image glyphs take a color_mapper; bokeh's GlyphAPI.image stub leaves it out
        self.xplot.image(  # type: ignore[call-arg]
            image="image", x="x", y="y", dw="dw", dh="dh", source=self.xanes, color_mapper=self.xmapper
        )
        self.xplot.add_layout(ColorBar(color_mapper=self.xmapper, width=12), "right")
        self.xplot.grid.visible = False
        self.status = Div(
            name="alignment_status", css_classes=["om-alignment-status"], text=self._status(None)
        )
        for p in (self.motion, self.disp_plot, self.speed_plot, self.xplot):
            plot_title(p).text_font_size = "13px"
        self.layout: UIElement = column(
            Div(text=heading(f"Alignment · {pipeline}")),
            self.status,
            row(self.frame, column(self.motion, self.disp_plot, self.speed_plot), self.xplot),
            name=f"alignment_panel_{pipeline}",
            styles=SECTION_STYLE,
        )
        self._key: tuple[str, int] | None = None
        self._npoints = -1
        self._xanes_key: float | None = None

    def update(self, now: float) -> None:
        frame = self.live.latest(self.pipeline)
        if frame is not None and (frame.series, frame.index) != self._key:
            self._key = (frame.series, frame.index)
            self._show(frame)
        points = self.live.points(self.pipeline)
        if len(points) != self._npoints:
            self._npoints = len(points)
            self._timelines(points)

    def _show(self, frame: LiveFrame) -> None:
        img = np.ascontiguousarray(frame.image, dtype=np.float32)
        h, w = img.shape
        lo, hi = auto_contrast(img)
        self.mapper.update(low=lo, high=hi)
        self.image.data = image_data(img)
        self.frame.x_range.update(start=0, end=w)
        self.frame.y_range.update(start=h, end=0)
        ov = dict(frame.overlays)
        labels = ov.get("labels")
        if labels is not None and labels.shape == img.shape:
            self.contours.data = image_data(contour_rgba(labels))
        tracks = ov.get("tracks")
        if tracks is not None:
            xs, ys, colors = [], [], []
            for slot in range(tracks.shape[0]):
                ok = np.isfinite(tracks[slot, :, 0])
                if ok.sum() >= 2:
                    ys.append(tracks[slot, ok, 0] + 0.5)
                    xs.append(tracks[slot, ok, 1] + 0.5)
                    colors.append(SLOT_COLORS[slot])
            self.tails.data = {"xs": xs, "ys": ys, "color": colors}
        edge = ov.get("xanes_edge_eV")
        if edge is not None:
            m = mosaic(edge)
            key = float(np.nansum(m)) if np.isfinite(m).any() else None
            if key != self._xanes_key:
                self._xanes_key = key
                if np.isfinite(m).any():
                    lo_e, hi_e = np.nanpercentile(m, (2, 98))
                    self.xmapper.update(low=float(lo_e), high=float(max(hi_e, lo_e + 0.5)))
                mh, mw = m.shape
                self.xanes.data = {"image": [m], "x": [0.0], "y": [0.0], "dw": [float(mw)], "dh": [float(mh)]}
                self.xplot.x_range.update(start=0, end=mw)
                self.xplot.y_range.update(start=mh, end=0)
        s = dict(frame.scalars)
        title = f"{frame.series} · frame {frame.index} · E {number(s.get('energy_eV', float('nan')))} eV"
        plot_title(self.frame).text = title
        self.status.text = self._status(s)

    def _timelines(self, points: list) -> None:  # list[LivePoint]
        if not points:
            return
        t = np.array([p.t * 1e3 for p in points])
        cols = [dict(p.scalars) for p in points]
        nan = float("nan")
        rigid = np.array([np.hypot(c.get("rigid_dy", nan), c.get("rigid_dx", nan)) for c in cols])
        nonrigid = np.array([c.get("nonrigid_rms_px", nan) for c in cols])
        self.series.data = {"t": t, "disp": rigid, "speed": rigid, "rigid": rigid, "nonrigid": nonrigid}
        xs, ys, vs, colors = [], [], [], []
        slots = sorted(
            {int(k[1:].split("_")[0]) for k in cols[-1] if k.startswith("p") and k.endswith("_dy")}
        )
        for slot in slots:
            d = np.array([np.hypot(c.get(f"p{slot}_dy", nan), c.get(f"p{slot}_dx", nan)) for c in cols])
            v = np.array([c.get(f"p{slot}_speed", nan) for c in cols])
            if np.isfinite(d).sum() < 2:
                continue
            xs.append(t)
            ys.append(d)
            vs.append(v)
            colors.append(SLOT_COLORS[slot])
        self.particles.data = {"xs": xs, "ys": ys, "vs": vs, "color": colors}

    @staticmethod
    def _status(s: dict[str, float] | None) -> str:
        if s is None:
            return f'<div style="color: {TEXT_MUTED}">no alignment results yet</div>'
        keys = (
            ("particles", "n_particles"), ("tracks", "n_tracks"), ("lost now", "lost_now"),
            ("lost", "lost_total"), ("found", "found_total"), ("non-rigid rms px", "nonrigid_rms_px"),
            ("non-rigid rate px/s", "nonrigid_rate_px_s"), ("SSIM", "ssim_mean"), ("scan", "scan_index"),
            ("mean edge eV", "xanes_mean_edge_eV"),
        )  # fmt: skip
        cells = "".join(
            f'<span style="margin-right: 14px; white-space: nowrap;"><span style="color: {TEXT_MUTED}">'
            f"{html.escape(k)}</span> <b>{html.escape(number(s.get(v, float('nan'))))}</b></span>"
            for k, v in keys
        )
        return f'<div class="om-scalars" style="font: 13px/1.6 system-ui, sans-serif;">{cells}</div>'
