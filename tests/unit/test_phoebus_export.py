"""`operando-monitor export-phoebus`: the alarm tree Phoebus's alarm server imports.

Checked against Phoebus's own XML model (ControlSystemStudio/phoebus ``XmlModelReader`` /
``XmlModelWriter``): the tags the reader knows, the order the writer uses, ``<title>`` +
``<details>`` pairs, booleans it parses, no duplicate PV names; and against the monitor's own
caproto PV group, so the file lists PVs that exist.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from monitor.alerts.epics import MonitorPVs
from monitor.cli import main

# XmlModelReader's tags; the order is XmlModelWriter's (getLeafXML, then getItemXML).
PV_TAGS = ["description", "enabled", "latching", "annunciating", "delay", "count", "filter",
           "guidance", "display", "command", "automated_action", "tags"]  # fmt: skip
ITEM_TAGS = ["guidance", "display", "command", "automated_action", "tags"]
TOML = """
run = "cell7"
[[sources]]
name = "det"
kind = "array10"
endpoint = "tcp://127.0.0.1:5555"
[[pipelines]]
name = "ew"
kind = "early_warning"
[alerts.epics]
enabled = true
prefix = "BL07:OPM:"
[[alerts.rules]]
name = "runaway"
kind = "threshold"
pipeline = "ew"
metric = "score"
minor = 0.5
major = 0.8
latch = true
[[alerts.rules]]
name = "detector-silent"
kind = "silence"
source = "det"
timeout_s = 10
"""


def check_order(element: ET.Element, allowed: list[str], extra: tuple[str, ...] = ()) -> None:
    tags = [c.tag for c in element if c.tag not in extra]
    assert all(t in allowed for t in tags), f"{element.get('name')}: unknown tags {tags}"
    assert tags == sorted(tags, key=allowed.index), f"{element.get('name')}: not in writer order {tags}"


def check_title_details(element: ET.Element) -> None:
    for tag in ITEM_TAGS:
        for entry in element.findall(tag):
            want = ["title", "details"] + (["delay"] if tag == "automated_action" else [])
            assert [c.tag for c in entry] == want
            assert (entry.findtext("title") or "").strip()


def walk(node: ET.Element, pvs: list[str]) -> None:
    for child in node:
        if child.tag == "component":
            assert child.get("name")
            check_order(child, ITEM_TAGS, extra=("component", "pv"))
            check_title_details(child)
            walk(child, pvs)
        elif child.tag == "pv":
            assert child.get("name")
            check_order(child, PV_TAGS)
            check_title_details(child)
            for flag in ("enabled", "latching", "annunciating"):
                assert child.findtext(flag) in ("true", "false")
            if child.find("delay") is not None:
                int(child.findtext("delay") or "")
            pvs.append(child.get("name", ""))
        else:
            assert child.tag in ITEM_TAGS, child.tag  # checked by check_order / check_title_details


def test_export_phoebus_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "monitor.toml"
    cfg.write_text(TOML)
    out = tmp_path / "alarms.xml"
    assert main(["export-phoebus", "--config", str(cfg), "--out", str(out), "--config-name", "BL07"]) == 0
    assert "-config BL07 -import" in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<?xml version='1.0' encoding='UTF-8'?>")
    root = ET.fromstring(text)
    assert root.tag == "config" and root.get("name") == "BL07"
    pvs: list[str] = []
    walk(root, pvs)
    assert len(pvs) == len(set(pvs)) == 3  # Phoebus ignores duplicate PV names
    served = {f"BL07:OPM:{p.pvspec.name}" for p in MonitorPVs._pvs_.values()}  # type: ignore[attr-defined]
    assert set(pvs) <= served, set(pvs) - served
    trip = root.find(".//pv[@name='BL07:OPM:TRIP']")
    assert trip is not None and trip.findtext("latching") == "true"
    guidance = root.find("component/guidance/details")
    assert guidance is not None and "runaway: ew.score above MINOR 0.5, MAJOR 0.8" in (guidance.text or "")
    assert "detector-silent: source 'det' silent for 10 s" in (guidance.text or "")
