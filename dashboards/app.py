"""The Bokeh document: live frame, health and alarm panels, refreshed by one periodic callback.

The display samples :class:`~monitor.live.LiveState` at ``settings.update_ms`` (latest wins), so
its rate is decoupled from the compute rate and it can never back-pressure the frame path.
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Protocol

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import LayoutDOM
from bokeh.models.widgets import Div  # not via bokeh.models: its computed __all__ hides it from type checkers

from dashboards.panels.alarms import AlarmsPanel
from dashboards.panels.frame import FramePanel
from dashboards.panels.health import HealthPanel
from dashboards.panels.style import TEXT_MUTED, clock
from monitor.config import DashboardSettings
from monitor.live import LiveState

PAGE_TITLE = "operando-monitor"
log = logging.getLogger("dashboards.app")

PIPELINE_PANELS: dict[str, str] = {
    "early_warning": "dashboards.panels.early_warning:EarlyWarningPanel",
    "segmentation": "dashboards.panels.segmentation:SegmentationPanel",
    "alignment": "dashboards.panels.alignment:AlignmentPanel",
}
"""Pipeline kind → ``module:Panel``; one panel per configured pipeline of that kind."""


class PipelinePanel(Protocol):
    """A pipeline's panel: built as ``Panel(pipeline_name, live)``; ``update`` samples LiveState."""

    layout: LayoutDOM

    def update(self, now: float) -> None: ...


def pipeline_panels(live: LiveState) -> list[PipelinePanel]:
    panels: list[PipelinePanel] = []
    for name, kind in live.pipelines:
        target = PIPELINE_PANELS.get(kind)
        if target is None:
            continue
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            log.warning("no dashboard panel for pipeline %s (%s): %s", name, kind, exc)
            continue
        panels.append(getattr(module, attr)(name, live))
    return panels


def _header_html(now: float, version: int) -> str:
    return (
        '<div style="display: flex; align-items: baseline; gap: 18px; font-family: system-ui, sans-serif;">'
        '<span style="font: 700 22px/1.2 system-ui, sans-serif; color: #0f172a;">operando-monitor</span>'
        f'<span style="color: {TEXT_MUTED}; font-size: 13px;">live · {clock(now)} · state v{version}</span>'
        "</div>"
    )


class Dashboard:
    """One browser session's document; ``update`` is its only periodic callback."""

    def __init__(self, doc: Document, live: LiveState, settings: DashboardSettings) -> None:
        self.live = live
        self.settings = settings
        self.frame = FramePanel()
        self.health = HealthPanel(settings.history)
        self.alarms = AlarmsPanel(live)
        self.header = Div(name="header", text=_header_html(time.time(), live.version), width=1340)
        self.panels = pipeline_panels(live)
        self.layout = column(
            self.header,
            row(self.frame.layout, self.health.layout),
            *(p.layout for p in self.panels),
            self.alarms.layout,
            name="dashboard",
            styles={"padding": "10px", "gap": "10px"},
        )
        self._version = -1
        self._header_text = self.header.text
        doc.title = PAGE_TITLE
        doc.add_root(self.layout)
        self.update()
        doc.add_periodic_callback(self.update, max(20, int(settings.update_ms)))

    def update(self) -> None:
        """Sample LiveState; skip the heavy work when its version has not moved."""
        now = time.time()
        version = self.live.version
        if version != self._version:
            self._version = version
            self.frame.update(self.live.frames(), now)
            self.health.update(self.live.health(), now)
            self.alarms.update(self.live.alarms())
            for panel in self.panels:
                panel.update(now)
        else:
            self.frame.tick(now)
            self.health.tick(now)
        header = _header_html(now, version)
        if header != self._header_text:
            self._header_text = header
            self.header.text = header


def make_document(doc: Document, live: LiveState, settings: DashboardSettings) -> Dashboard:
    """Bokeh ``FunctionHandler`` body: build the dashboard into ``doc``."""
    return Dashboard(doc, live, settings)
