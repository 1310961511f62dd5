"""Shared look: colours, sizes and small HTML helpers for the dashboard panels."""

from __future__ import annotations

import html
import time
from datetime import datetime

from bokeh.models import Plot
from bokeh.models.annotations import Title

from monitor.alerts.model import AlarmState, Severity

PANEL_BG = "#f7f8fa"
BORDER = "#d5d9e0"
TEXT_MUTED = "#6b7280"

FPS_IN_COLOR = "#2563eb"
FPS_OUT_COLOR = "#16a34a"
P50_COLOR = "#7c3aed"
P99_COLOR = "#dc2626"

# EPICS alarm colours as operators know them from control-system displays.
SEVERITY_COLORS: dict[Severity, str] = {
    Severity.NO_ALARM: "#16a34a",
    Severity.MINOR: "#eab308",
    Severity.MAJOR: "#dc2626",
    Severity.INVALID: "#c026d3",
}
STATE_COLORS: dict[AlarmState, str] = {
    AlarmState.ACTIVE: "#dc2626",
    AlarmState.ACKNOWLEDGED: "#d97706",
    AlarmState.CLEARED: "#6b7280",
}

SECTION_STYLE = {
    "background-color": PANEL_BG,
    "border": f"1px solid {BORDER}",
    "border-radius": "6px",
    "padding": "8px",
}


def plot_title(p: Plot) -> Title:
    """A plot's title model: bokeh types ``Plot.title`` as ``Title | str | None``; ``figure()`` always
    makes a :class:`Title`."""
    title = p.title
    if not isinstance(title, Title):
        raise TypeError(f"plot {p.name!r} has no Title model")
    return title


def heading(text: str) -> str:
    """HTML for a panel heading."""
    return (
        f'<div style="font: 600 15px/1.3 system-ui, sans-serif; color: #111827; '
        f'letter-spacing: 0.02em; text-transform: uppercase;">{html.escape(text)}</div>'
    )


def clock(t: float) -> str:
    """Local wall-clock time of an epoch timestamp (``HH:MM:SS``)."""
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def age(t: float, now: float | None = None) -> str:
    """Human age of an epoch timestamp: ``0.4 s``, ``12 s``, ``3 min``, ``2.1 h``."""
    dt = max(0.0, (time.time() if now is None else now) - t)
    if dt < 10:
        return f"{dt:.1f} s"
    if dt < 120:
        return f"{dt:.0f} s"
    if dt < 7200:
        return f"{dt / 60:.0f} min"
    return f"{dt / 3600:.1f} h"


def number(value: float) -> str:
    """Compact number for tables: integers as is, floats with 4 significant digits."""
    if value != value:  # NaN
        return "–"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
