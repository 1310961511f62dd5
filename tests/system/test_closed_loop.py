"""Closed loop: RunEngine charges the simulated cell; the monitor's TRIP lowers the current before t*.

1. The plan alone (in-process RunEngine, TRIP raised by hand after frame K): the current drops at
   frame K + 1, the frames before are the open-loop run's frames (same seed), the cell stays compact.
2. End to end: RunEngine → Publisher → Proxy → daemon (bluesky source → early_warning ONNX model
   → risk threshold → alarm PUB) → ZmqTripFollower → TRIP → plan step lowers the current. The
   reaction frame must come before the ground-truth transition frame t* of the open-loop run of
   the same seed, and the closed-loop cell must stay compact.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine

from engines.synth.growth import PSI_CRIT, GrowthSim, smoothed_psi
from monitor.alerts.trip_signal import TripSignal
from monitor.sim.bluesky_demo import SimPotentiostat
from monitor.sim.closed_loop import (
    CellCamera,
    CellModel,
    ChargeProtocol,
    Reaction,
    charge_cell,
    current_ramp,
    open_loop,
    run_closed_loop,
)

PROTOCOL = ChargeProtocol(seed=14, frames=64, start_mA=0.8, end_mA=4.0, safe_mA=0.5, delay_s=0.25)


def test_current_maps_to_damkohler_monotonically() -> None:
    cell = CellModel()
    das = [cell.damkohler(i) for i in (0.0, 0.5, 0.8, 1.0, 2.0, 4.0)]
    assert das == sorted(das) and das[0] == cell.da_min
    assert math.isclose(cell.damkohler(1.0), 0.02) and math.isclose(cell.damkohler(4.0), 0.32)
    ramp = current_ramp(PROTOCOL)
    assert len(ramp) == 64 and math.isclose(ramp[0], 0.8) and math.isclose(ramp[-1], 4.0)


def test_plan_lowers_the_current_when_trip_rises() -> None:
    reference = open_loop(PROTOCOL)
    t_star = reference.transition
    assert 20 <= t_star < reference.frames - 8, f"open-loop t* = {t_star} is not well inside the run"
    k = t_star - 8  # raise TRIP once frame k has been read
    trip = TripSignal()
    pstat = SimPotentiostat(name="pstat")
    cam = CellCamera(name="cam", sim=GrowthSim(PROTOCOL.seed), potentiostat=pstat, cell=PROTOCOL.cell)

    def monitor(name: str, doc: dict[str, Any]) -> None:
        if name == "event" and doc["data"]["cam_frame"] == k:
            trip.put(1)

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(monitor)
    reaction = Reaction()
    RE(charge_cell(cam, pstat, current_ramp(PROTOCOL), trip=trip, safe_mA=0.5, reaction=reaction))
    assert reaction.lowered_frame == k + 1
    assert cam.currents[k + 1 :] == [0.5] * (cam.frames_taken - k - 1)
    assert cam.currents[: k + 1] == current_ramp(PROTOCOL)[: k + 1]
    psi = [t.psi for t in cam.truths]
    assert psi[: k + 1] == list(reference.psi[: k + 1]), "not the open-loop run of the same seed"
    assert cam.sim.transition_frame() == -1, "the derated cell still turned dendritic"
    assert np.nanmax(smoothed_psi(np.asarray(psi))) < PSI_CRIT, "the derated cell reached the transition"


def test_monitor_trip_lowers_the_current_before_the_transition(tmp_path: Path) -> None:
    res = asyncio.run(run_closed_loop(PROTOCOL, tmp_path))
    t_star = res.open_loop_transition
    risk = " ".join(f"{r:.2f}" for r in res.risk)
    report = f"{res.summary()}\nrisk: {risk}"
    assert res.stop_status == "success", report
    assert 20 <= t_star < res.open_loop_frames - 8, report
    assert res.alarm_frame >= 0, f"the monitor never raised the alarm\n{report}"
    assert 0 <= res.lowered_frame < t_star, f"the reaction came too late\n{report}"
    assert res.alarm_frame < res.lowered_frame, report
    # Up to the reaction the closed-loop cell is the open-loop cell (same seed, same currents).
    n = res.lowered_frame
    assert res.psi[:n] == res.open_loop_psi[:n], report
    assert res.compact, f"the cell turned dendritic anyway\n{report}"
    # The monitor saw every frame up to the alarm (nothing dropped on the way).
    assert all(not math.isnan(r) for r in res.risk[7 : res.alarm_frame + 1]), report
