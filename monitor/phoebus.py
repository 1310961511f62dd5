"""Phoebus alarm-tree XML for the monitor's EPICS alarm PVs (``operando-monitor export-phoebus``).

The file is what Phoebus's alarm server imports with
``alarm-server.sh -config NAME -import alarms.xml``: the element vocabulary and order of
``XmlModelWriter`` / ``XmlModelReader`` (ControlSystemStudio/phoebus,
``app/alarm/model/.../xml``): ``<config name>`` → ``<component name>`` → ``<pv name>`` with
``description``, ``enabled``, ``latching``, ``annunciating``, ``delay``, then ``guidance`` /
``display`` / ``command`` / ``automated_action`` entries of ``<title>`` + ``<details>``.

PVs (see :mod:`monitor.alerts.epics`): ``<prefix>STATE`` (highest active severity),
``<prefix>TRIP`` (1 while an alarm of at least ``trip_severity`` is active: latching, so an
operator sees a trip that already cleared) and ``<prefix>SCORE`` (the value behind the latest
alarm change). ``MSG`` (text) and ``HEARTBEAT`` (a counter) carry no alarm severity and are
left out. The guidance lists the configured rules, so the alarm panel explains itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from monitor.config import MonitorConfig, RuleSettings


@dataclass(frozen=True)
class PhoebusPV:
    suffix: str
    description: str
    latching: bool
    annunciating: bool
    delay_s: int = 0


PVS = (
    PhoebusPV("STATE", "operando-monitor: highest active alarm severity", latching=False, annunciating=True),
    PhoebusPV("TRIP", "operando-monitor: TRIP (bluesky suspender signal)", latching=True, annunciating=True),
    PhoebusPV("SCORE", "operando-monitor: value behind the latest alarm", latching=False, annunciating=False),
)


def _rule_line(r: RuleSettings) -> str:
    if r.kind == "silence":
        return f"- {r.name}: source '{r.source}' silent for {r.timeout_s:g} s -> INVALID"
    pairs = (("MINOR", r.minor), ("MAJOR", r.major))
    levels = ", ".join(f"{name} {value:g}" for name, value in pairs if value is not None)
    extra = " (latching until acknowledged)" if r.latch else ""
    return f"- {r.name}: {r.pipeline}.{r.metric} {r.direction} {levels}{extra}"


def _title_details(parent: ET.Element, tag: str, title: str, details: str) -> None:
    entry = ET.SubElement(parent, tag)
    ET.SubElement(entry, "title").text = title
    ET.SubElement(entry, "details").text = details


def alarm_tree(cfg: MonitorConfig, config_name: str = "OperandoMonitor") -> ET.ElementTree:
    """The alarm tree for ``cfg``'s alarm PVs (``[alerts.epics] prefix``)."""
    prefix = cfg.alerts.epics.prefix
    root = ET.Element("config", name=config_name)
    top = ET.SubElement(root, "component", name=f"operando-monitor {cfg.run}")
    rules = "\n".join(_rule_line(r) for r in cfg.alerts.rules) or "(no rules configured)"
    _title_details(
        top,
        "guidance",
        "What these alarms mean",
        "The operando monitor raises alarms from live detector analysis. Rules:\n" + rules + "\n"
        "Acknowledge in the monitor's dashboard (operator token); a TRIP pauses bluesky plans "
        "through their suspender on the TRIP PV.",
    )
    if cfg.dashboard.enabled:
        url = f"http://{cfg.dashboard.host}:{cfg.dashboard.port}/"
        _title_details(top, "display", "Monitor dashboard", url)
    for pv in PVS:
        node = ET.SubElement(top, "pv", name=f"{prefix}{pv.suffix}")
        ET.SubElement(node, "description").text = pv.description
        ET.SubElement(node, "enabled").text = "true"
        ET.SubElement(node, "latching").text = "true" if pv.latching else "false"
        ET.SubElement(node, "annunciating").text = "true" if pv.annunciating else "false"
        if pv.delay_s:
            ET.SubElement(node, "delay").text = str(pv.delay_s)
        if pv.suffix == "TRIP":
            _title_details(
                node,
                "guidance",
                "A trip",
                f"At least one {cfg.alerts.epics.trip_severity} alarm is active. Check the cell and the "
                "dashboard before resuming the plan.",
            )
    ET.indent(root, space="  ")
    return ET.ElementTree(root)


def write_alarm_tree(cfg: MonitorConfig, out: str, config_name: str = "OperandoMonitor") -> int:
    """Write the XML file; return how many PVs it lists."""
    tree = alarm_tree(cfg, config_name)
    tree.write(out, encoding="UTF-8", xml_declaration=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write("\n")
    return len(PVS)
