"""Display plug-in protocol: how the daemon starts a dashboard without importing it.

``monitor`` sits below ``dashboards`` in the layering, so the daemon finds display
implementations through the ``operando_monitor.displays`` entry-point group (the Bokeh
dashboard registers ``bokeh = dashboards.server:BokehDisplay``). See
docs/decisions/0001-dashboard-in-process.md.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from monitor.config import DashboardSettings
from monitor.errors import MonitorError
from monitor.live import LiveState


@runtime_checkable
class Display(Protocol):
    def __init__(self, live: LiveState, settings: DashboardSettings) -> None: ...

    async def start(self) -> str:
        """Start serving on the running event loop; return the URL to open."""
        ...

    async def stop(self) -> None: ...


def load_display(name: str = "bokeh") -> type[Display]:
    for ep in entry_points(group="operando_monitor.displays"):
        if ep.name == name:
            cls: type[Display] = ep.load()
            return cls
    raise MonitorError(
        f"no display plug-in named {name!r} is installed (is the package installed with pip -e .?)"
    )
