"""Alarms panel: the alarm table and the operator's acknowledge controls."""

from __future__ import annotations

import html
from collections.abc import Sequence

from bokeh.layouts import column, row

# Widgets, UI elements and annotations from their sub-packages: bokeh.models' computed __all__
# hides them from type checkers.
from bokeh.models import AllIndices, CDSView, ColumnDataSource
from bokeh.models.ui import UIElement
from bokeh.models.widgets import (
    Button,
    DataTable,
    Div,
    HTMLTemplateFormatter,
    PasswordInput,
    TableColumn,
    TextInput,
)

from dashboards.panels.style import SECTION_STYLE, SEVERITY_COLORS, STATE_COLORS, TEXT_MUTED, clock, heading
from monitor.alerts.model import Alarm, AlarmState
from monitor.errors import MonitorError
from monitor.live import AckResult, LiveState

TABLE_WIDTH = 1340
_FIELDS = (
    "id",
    "rule",
    "severity",
    "severity_color",
    "state",
    "state_color",
    "value",
    "threshold",
    "message",
    "raised",
    "changed",
    "acked_by",
)

# ``<%- %>`` escapes: alarm messages are data, never markup.
_BADGE = (
    '<span style="background: <%- {color} %>; color: white; font-weight: 600; padding: 1px 8px; '
    'border-radius: 3px;"><%- value %></span>'
)
_STATE = '<span style="color: <%- state_color %>; font-weight: 600;"><%- value %></span>'


def _rows(alarms: Sequence[Alarm]) -> dict[str, list[str]]:
    data: dict[str, list[str]] = {k: [] for k in _FIELDS}
    for a in alarms:
        data["id"].append(a.id)
        data["rule"].append(a.rule)
        data["severity"].append(a.severity.name)
        data["severity_color"].append(SEVERITY_COLORS.get(a.severity, "#6b7280"))
        data["state"].append(a.state.value)
        data["state_color"].append(STATE_COLORS.get(a.state, "#6b7280"))
        data["value"].append(f"{a.value:.4g}")
        data["threshold"].append(f"{a.threshold:.4g}")
        data["message"].append(a.message)
        data["raised"].append(clock(a.t_raised))
        data["changed"].append(clock(a.t_changed))
        data["acked_by"].append(a.acked_by)
    return data


def _status_html(text: str, ok: bool | None) -> str:
    color = {True: "#15803d", False: "#b91c1c", None: TEXT_MUTED}[ok]
    return (
        f'<div class="om-ack-status" style="font: 600 13px/1.5 system-ui, sans-serif; color: {color};">'
        f"{html.escape(text)}</div>"
    )


def _text(widget: TextInput) -> str:
    """What the operator typed (``value_input`` follows every keystroke, ``value`` only on change)."""
    return (widget.value_input or widget.value or "").strip()


class AlarmsPanel:
    """Alarm table with severity badges; acknowledges through :meth:`LiveState.acknowledge`."""

    def __init__(self, live: LiveState) -> None:
        self.live = live
        self.source = ColumnDataSource(data=_rows(()), name="alarms_source")
        # BokehJS (3.9) refreshes a DataTable only when its CDSView changes, and replacing the
        # data with as many rows leaves the view's indices equal: no refresh. Flipping between
        # two equivalent filters changes the view, so the grid redraws with the new rows.
        self._filters = (AllIndices(), AllIndices())
        self._flip = 0
        columns = [
            TableColumn(field="id", title="Alarm id", width=190),
            TableColumn(
                field="severity",
                title="Severity",
                width=105,
                formatter=HTMLTemplateFormatter(template=_BADGE.format(color="severity_color")),
            ),
            TableColumn(
                field="state", title="State", width=100, formatter=HTMLTemplateFormatter(template=_STATE)
            ),
            TableColumn(field="rule", title="Rule", width=140),
            TableColumn(field="value", title="Value", width=70),
            TableColumn(field="threshold", title="Threshold", width=75),
            TableColumn(field="message", title="Message", width=340),
            TableColumn(field="raised", title="Raised", width=70),
            TableColumn(field="changed", title="Changed", width=70),
            TableColumn(field="acked_by", title="Acked by", width=100),
        ]
        self.table = DataTable(
            name="alarms_table",
            css_classes=["om-alarms-table"],
            source=self.source,
            view=CDSView(filter=self._filters[0]),
            columns=columns,
            width=TABLE_WIDTH,
            height=180,
            index_position=None,
            selectable=True,
            sortable=True,
            row_height=26,
        )
        self.alarm_id = TextInput(
            name="ack_alarm_id",
            css_classes=["om-ack-alarm-id"],
            title="Alarm id",
            width=240,
            placeholder="select a row or type an id",
        )
        self.operator = TextInput(
            name="ack_operator", css_classes=["om-ack-operator"], title="Operator", width=180
        )
        self.token = PasswordInput(name="ack_token", css_classes=["om-ack-token"], title="Token", width=180)
        self.button = Button(
            name="ack_button",
            css_classes=["om-ack-button"],
            label="Acknowledge selected",
            button_type="warning",
            width=200,
            align="end",
        )
        self.status = Div(
            name="ack_status",
            css_classes=["om-ack-status-div"],
            text=_status_html("select an alarm, enter operator and token", None),
            width=480,
            align="end",
        )
        self.summary = Div(text=self._summary_html(()), width=TABLE_WIDTH)
        self.layout: UIElement = column(
            Div(text=heading("Alarms")),
            self.summary,
            self.table,
            row(self.alarm_id, self.operator, self.token, self.button, self.status),
            styles=SECTION_STYLE,
        )
        self._alarms: list[Alarm] = []
        self.source.selected.on_change("indices", lambda _attr, _old, new: self._on_select(new))
        self.button.on_click(self._on_ack)

    def update(self, alarms: list[Alarm]) -> None:
        """Replace the table's rows when the alarms changed (keeping the selected alarm selected)."""
        if alarms == self._alarms:
            return
        selected = self._selected_id()
        self._alarms = alarms
        self.source.data = _rows(alarms)
        self._flip ^= 1
        self.table.view.filter = self._filters[self._flip]
        ids = [a.id for a in alarms]
        self.source.selected.indices = [ids.index(selected)] if selected in ids else []
        self.summary.text = self._summary_html(alarms)

    def _selected_id(self) -> str | None:
        indices = self.source.selected.indices
        if indices and 0 <= indices[0] < len(self._alarms):
            return self._alarms[indices[0]].id
        return None

    def _on_select(self, indices: list[int]) -> None:
        if indices and 0 <= indices[0] < len(self._alarms):
            alarm_id = self._alarms[indices[0]].id
            if _text(self.alarm_id) != alarm_id:
                self.alarm_id.update(value=alarm_id, value_input=alarm_id)

    def _on_ack(self) -> None:
        alarm_id = _text(self.alarm_id) or (self._selected_id() or "")
        operator = _text(self.operator)
        token = self.token.value_input or self.token.value or ""
        if not alarm_id:
            self.status.text = _status_html("select an alarm (or type its id) first", False)
            return
        if not operator:
            self.status.text = _status_html("enter the operator name", False)
            return
        try:
            result: AckResult = self.live.acknowledge(alarm_id, operator, token)
        except MonitorError as exc:  # the daemon refused in its own words: show it, don't crash the page
            result = AckResult(False, str(exc))
        verdict = f"✓ {alarm_id}" if result.ok else f"✗ {alarm_id} not acknowledged"
        self.status.text = _status_html(f"{verdict}: {result.message}", result.ok)
        self.update(self.live.alarms())

    @staticmethod
    def _summary_html(alarms: Sequence[Alarm]) -> str:
        active = sum(1 for a in alarms if a.state is AlarmState.ACTIVE)
        acked = sum(1 for a in alarms if a.state is AlarmState.ACKNOWLEDGED)
        if not alarms:
            return f'<div style="color: {TEXT_MUTED}; font: 13px system-ui, sans-serif;">no alarms</div>'
        color = "#b91c1c" if active else "#111827"
        return (
            f'<div style="font: 13px system-ui, sans-serif; color: {color};">'
            f"<b>{active}</b> active · <b>{acked}</b> acknowledged · {len(alarms)} total</div>"
        )
