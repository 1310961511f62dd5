"""Closed loop: a Bluesky plan charges a simulated cell; the monitor's TRIP makes it lower the current.

The loop (every hop real)::

    RunEngine ── charge_cell plan ── pstat.current ──► CellCamera.trigger: GrowthSim.step(Da(I))
        │ Publisher (msgpack)                                      (inline 128×128 uint16 image)
        ▼
    bluesky Proxy ─► daemon: bluesky source ─► early_warning (CNN-GRU, ONNX) ─► threshold rule
                                                  risk ≥ 0.8 for 3 windows → MAJOR → alarm PUB
        ▲                                                                             │
        └── plan step: ``bps.rd(trip)`` is 1 → ``bps.mv(pstat.current, safe_mA)`` ◄── ZmqTripFollower

Current → growth (documented mapping, :class:`CellModel`): a galvanostatic current ``I`` sets the
overpotential and with it the reaction rate, so the Damköhler number rises with the current,
``Da(I) = da_ref · (I / i_ref)^gamma`` (defaults: 0.02 at 1 mA, ``gamma = 2``: 0.8 mA → 0.013
compact, 4 mA → 0.32 dendritic within the run; floored at ``da_min`` so the walkers always
react). The camera is triggered per fixed charge increment (a coulomb-counter trigger), so every
frame deposits the same charge (``GrowthSim`` current 1.0) unless ``charge_ref_mA`` is set, in
which case a frame deposits ``I / charge_ref_mA`` of the nominal charge.

The reaction is a plan step, not a suspender (suspended, no frames are taken and the risk could
never fall): once TRIP reads 1 the current stays at ``safe_mA``. :func:`open_loop` runs the same
seed without a reaction; its ground-truth ``t*`` is what the reaction must beat. See
docs/closed-loop.md for the measured frames.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd import Device, Signal
from ophyd.sim import NullStatus

from engines.synth.growth import PSI_CRIT, GrowthParams, GrowthSim, StepTruth, smoothed_psi, transition_frame
from monitor.alerts.model import AlarmEvent
from monitor.alerts.sinks import CallbackSink
from monitor.alerts.trip_signal import TripSignal, ZmqTripFollower
from monitor.config import (
    AlertSettings,
    DashboardSettings,
    MonitorConfig,
    PipelineSettings,
    RuleSettings,
    SourceSettings,
    StoreSettings,
)
from monitor.pipelines.early_warning_rule import calibrated_rule
from monitor.sim.bluesky_demo import SimPotentiostat, make_run_engine, start_proxy_thread
from monitor.sim.growth_stream import FULL_SCALE
from monitor.sim.ports import free_port
from monitor.store.reader import RunReader

log = logging.getLogger("monitor.sim.closed_loop")

PIPELINE = "early_warning"
RULE = "dendrite_risk"


@dataclass(frozen=True)
class CellModel:
    """Current (mA) → Damköhler number and charge per frame (see the module docstring)."""

    i_ref_mA: float = 1.0
    da_ref: float = 0.02
    gamma: float = 2.0
    da_min: float = 0.002
    charge_ref_mA: float | None = None
    """None: every frame deposits the nominal charge (camera triggered per charge increment)."""

    def damkohler(self, current_mA: float) -> float:
        i = max(float(current_mA), 0.0) / self.i_ref_mA
        return max(self.da_min, self.da_ref * i**self.gamma)

    def charge(self, current_mA: float) -> float:
        if self.charge_ref_mA is None:
            return 1.0
        return max(float(current_mA), 0.0) / self.charge_ref_mA


@dataclass(frozen=True)
class ChargeProtocol:
    """The charging protocol, the monitor's rule and the reaction."""

    seed: int = 14
    frames: int = 64
    start_mA: float = 0.8
    end_mA: float = 4.0
    step_frame: int | None = None
    """None: a geometric ramp ``start_mA`` → ``end_mA``; else ``start_mA`` before this frame and
    ``end_mA`` from it on."""
    safe_mA: float = 0.5
    delay_s: float = 0.25
    """Pause after each frame (the monitor's latency must fit in it for a prompt reaction)."""
    risk_major: float | None = None
    """The rule: MAJOR when ``risk`` ≥ this for ``risk_windows`` consecutive windows (None: the
    shipped model's calibrated rule, :mod:`monitor.pipelines.early_warning_rule`)."""
    risk_windows: int | None = None
    cell: CellModel = field(default_factory=CellModel)


def current_ramp(p: ChargeProtocol) -> list[float]:
    """The set-point per frame: a geometric ramp ``start_mA`` → ``end_mA`` (or a step)."""
    if p.step_frame is not None:
        return [p.start_mA if k < p.step_frame else p.end_mA for k in range(p.frames)]
    n = max(2, p.frames)
    a, b = math.log(p.start_mA), math.log(p.end_mA)
    return [float(math.exp(a + (b - a) * k / (n - 1))) for k in range(p.frames)]


class CellCamera(Device):
    """An ophyd detector whose trigger advances the growth simulator by one frame.

    Readings: ``<name>_image`` (inline uint16 image), ``<name>_frame``, ``<name>_da``,
    ``<name>_psi`` (ground-truth order parameter) and ``<name>_transition`` (ground-truth
    transition frame so far, -1: none yet).
    """

    def __init__(
        self,
        *args: Any,
        sim: GrowthSim,
        potentiostat: SimPotentiostat,
        cell: CellModel | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim
        self.potentiostat = potentiostat
        self.cell = cell or CellModel()
        self.truths: list[StepTruth] = []
        self.currents: list[float] = []
        self._reading: dict[str, dict[str, Any]] = {}

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    @property
    def frames_taken(self) -> int:
        return len(self.truths)

    @property
    def done(self) -> bool:
        return self.sim.done

    def trigger(self) -> NullStatus:
        current = float(self.potentiostat.current.get())
        img, truth = self.sim.step(self.cell.damkohler(current), self.cell.charge(current))
        self.truths.append(truth)
        self.currents.append(current)
        now = time.time()
        frame = np.clip(img * FULL_SCALE, 0, 65535).astype(np.uint16)
        values: dict[str, Any] = {
            self.image_key: frame,
            f"{self.name}_frame": truth.frame,
            f"{self.name}_da": truth.da,
            f"{self.name}_psi": truth.psi,
            f"{self.name}_transition": self.sim.transition_frame(),
        }
        self._reading = {k: {"value": v, "timestamp": now} for k, v in values.items()}
        return NullStatus()

    def read(self) -> dict[str, dict[str, Any]]:
        return dict(self._reading)

    def describe(self) -> dict[str, dict[str, Any]]:
        s = self.sim.params.render_size
        src = "SIM:CELL"
        return {
            self.image_key: {"source": src, "dtype": "array", "shape": [s, s], "dtype_numpy": "<u2"},
            f"{self.name}_frame": {"source": src, "dtype": "integer", "shape": []},
            f"{self.name}_da": {"source": src, "dtype": "number", "shape": []},
            f"{self.name}_psi": {"source": src, "dtype": "number", "shape": []},
            f"{self.name}_transition": {"source": src, "dtype": "integer", "shape": []},
        }


@dataclass
class Reaction:
    """What the plan did (filled in while it runs)."""

    lowered_frame: int = -1
    """Index of the first frame taken at the safe current (-1: never lowered)."""
    trip_frames: list[int] = field(default_factory=list)
    """Frames already taken when TRIP rose, per rise."""


def charge_cell(
    cam: CellCamera,
    pstat: SimPotentiostat,
    currents: Sequence[float],
    *,
    trip: Signal | None = None,
    safe_mA: float = 0.5,
    delay_s: float = 0.0,
    reaction: Reaction | None = None,
    md: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """Charge at ``currents[k]`` for frame ``k``, taking one cell-camera frame per step.

    With ``trip``: before each frame read it; once it is 1 set ``safe_mA`` for the rest of the
    run (recorded in ``reaction``). Stops early when the deposit fills the field of view.
    """
    reaction = reaction if reaction is not None else Reaction()
    _md = {"plan_name": "charge_cell", "sample": "sim-cell", "num_points": len(currents), **(md or {})}

    @bpp.stage_decorator([cam])
    @bpp.run_decorator(md=_md)
    def inner() -> Iterator[Any]:
        for setpoint in currents:
            if trip is not None and reaction.lowered_frame < 0:
                tripped = yield from bps.rd(trip)
                if tripped:
                    reaction.lowered_frame = cam.frames_taken
                    log.info(
                        "TRIP is high: lowering the current to %.2f mA at frame %d", safe_mA, cam.frames_taken
                    )
            target = safe_mA if reaction.lowered_frame >= 0 else float(setpoint)
            if pstat.current.get() != target:
                yield from bps.mv(pstat.current, target)
            yield from bps.trigger_and_read([cam, pstat])
            if cam.done:
                break
            if delay_s > 0:
                yield from bps.sleep(delay_s)

    return (yield from inner())


@dataclass(frozen=True)
class OpenLoop:
    frames: int
    transition: int
    psi: tuple[float, ...]


def open_loop(p: ChargeProtocol, params: GrowthParams | None = None) -> OpenLoop:
    """The same seed and protocol with no reaction (plain ``GrowthSim``, no RunEngine)."""
    sim = GrowthSim(p.seed, params)
    for current in current_ramp(p):
        _, truth = sim.step(p.cell.damkohler(current), p.cell.charge(current))
        if truth.full:
            break
    return OpenLoop(len(sim.psi), sim.transition_frame(), tuple(sim.psi))


@dataclass(frozen=True)
class ClosedLoopResult:
    seed: int
    frames: int
    """Frames the closed-loop run took."""
    open_loop_frames: int
    open_loop_transition: int
    """Ground-truth t* of the same seed without a reaction (-1: it stays compact)."""
    alarm_frame: int
    """The frame whose risk raised the MAJOR alarm (-1: no alarm)."""
    trip_frame: int
    """Frames already taken when TRIP rose (-1: never)."""
    lowered_frame: int
    """First frame taken at the safe current (-1: never)."""
    transition: int
    """Ground-truth t* of the closed-loop run (-1: the cell stayed compact)."""
    psi: tuple[float, ...]
    open_loop_psi: tuple[float, ...]
    risk: tuple[float, ...]
    """The monitor's risk per frame (NaN until the window is full or for frames it missed)."""
    currents: tuple[float, ...]
    stop_status: str

    @property
    def peak_psi(self) -> float:
        """Highest smoothed order parameter of the closed-loop run."""
        s = smoothed_psi(np.asarray(self.psi))
        return float(np.nanmax(s)) if np.isfinite(s).any() else 0.0

    @property
    def compact(self) -> bool:
        """The smoothed order parameter never reached ``PSI_CRIT`` (stricter than ``t* < 0``)."""
        return self.peak_psi < PSI_CRIT

    def summary(self) -> str:
        t = self.open_loop_transition
        lead = ""
        if t >= 0 and self.lowered_frame >= 0:
            d = t - self.lowered_frame
            lead = f" ({d} frames before t*)" if d > 0 else f" ({-d} frames after t*)"
        return "\n".join(
            [
                f"seed {self.seed}: {self.frames} frames, run {self.stop_status}",
                f"alarm fired at frame:              {self.alarm_frame}",
                f"TRIP seen after frame:             {self.trip_frame - 1 if self.trip_frame > 0 else -1}",
                f"current lowered at frame:          {self.lowered_frame}{lead}",
                f"open-loop transition t* (same seed): {t} of {self.open_loop_frames} frames",
                f"closed-loop transition t*:         {self.transition}",
                f"cell stayed compact:               {'yes' if self.compact else 'no'} "
                f"(peak smoothed psi {self.peak_psi:.3f}, transition at {PSI_CRIT})",
            ]
        )


def daemon_config(
    out_dir: Path,
    endpoint: str,
    alarm_pub: str,
    *,
    dashboard_port: int | None,
    risk_major: float | None = None,
    risk_windows: int | None = None,
    weights_dir: str = "",
) -> MonitorConfig:
    """bluesky source → early_warning → risk threshold (default: the shipped model's calibrated
    rule, as the growth demo; ``risk_major`` / ``risk_windows`` override it)."""
    cal = calibrated_rule(weights_dir)
    return MonitorConfig(
        run="closed-loop",
        sources=(
            SourceSettings(name="bluesky", kind="bluesky", endpoint=endpoint, current_field="pstat_current"),
        ),
        pipelines=(
            PipelineSettings(
                name=PIPELINE, kind="early_warning", queue_size=64, policy="block", weights_dir=weights_dir
            ),
        ),
        store=StoreSettings(directory=str(out_dir), filename="{run}-{time}.h5"),
        alerts=AlertSettings(
            zmq_pub=alarm_pub,
            rules=(
                RuleSettings(
                    name=RULE,
                    kind="threshold",
                    pipeline=PIPELINE,
                    metric=cal.metric,
                    major=cal.major if risk_major is None else risk_major,
                    hysteresis=cal.hysteresis,
                    min_count=cal.min_count if risk_windows is None else risk_windows,
                ),
            ),
        ),
        dashboard=DashboardSettings(enabled=dashboard_port is not None, port=dashboard_port or 0),
    )


class _SeqMap:
    """RunEngine callback: event ``seq_num`` → cell-camera frame (to name the alarm's frame)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.frame_of: dict[int, int] = {}
        self.stop_status = ""

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "event" and self.key in doc["data"]:
            self.frame_of[int(doc["seq_num"])] = int(doc["data"][self.key])
        elif name == "stop":
            self.stop_status = str(doc.get("exit_status", ""))


async def run_closed_loop(
    p: ChargeProtocol,
    out_dir: Path,
    *,
    react: bool = True,
    params: GrowthParams | None = None,
    dashboard_port: int | None = None,
    hold_s: float = 0.0,
    weights_dir: str = "",
) -> ClosedLoopResult:
    """Proxy (thread) + RunEngine (thread) + daemon (this loop) + TRIP follower; one charge_cell run."""
    from monitor.daemon import Daemon
    from monitor.display import load_display

    reference = open_loop(p, params)
    address, endpoint = start_proxy_thread()
    alarm_pub = f"tcp://127.0.0.1:{free_port()}"
    cfg = daemon_config(
        out_dir,
        endpoint,
        alarm_pub,
        dashboard_port=dashboard_port,
        risk_major=p.risk_major,
        risk_windows=p.risk_windows,
        weights_dir=weights_dir,
    )
    daemon = Daemon(cfg, display=load_display("bokeh") if dashboard_port is not None else None)
    await daemon.start()
    if daemon.dashboard_url:
        print(f"dashboard: {daemon.dashboard_url}", file=sys.stderr)
    raised: list[AlarmEvent] = []
    if daemon.alarms is None:
        raise RuntimeError("the daemon started without an alarm manager")
    daemon.alarms.add_sink(
        CallbackSink("closed_loop", lambda e: raised.append(e) if e.transition == "raise" else None)
    )

    pstat = SimPotentiostat(name="pstat")
    cam = CellCamera(name="cam", sim=GrowthSim(p.seed, params), potentiostat=pstat, cell=p.cell)
    trip = TripSignal()
    reaction = Reaction()
    trip.subscribe(
        lambda value, **_: reaction.trip_frames.append(cam.frames_taken) if value else None, run=False
    )
    seqmap = _SeqMap(f"{cam.name}_frame")

    def run_plan() -> None:
        RE, publisher = make_run_engine(address, "msgpack")
        RE.subscribe(seqmap)
        try:
            plan = charge_cell(
                cam,
                pstat,
                current_ramp(p),
                trip=trip if react else None,
                safe_mA=p.safe_mA,
                delay_s=p.delay_s,
                reaction=reaction,
                md={"seed": p.seed},
            )
            RE(plan)
            time.sleep(0.2)  # let the PUB socket flush the last documents
        finally:
            publisher.close()

    try:
        with ZmqTripFollower(alarm_pub, trip):
            await asyncio.sleep(0.5)  # the source's and the follower's SUB connect
            await asyncio.to_thread(run_plan)
            await _drain(daemon, cam.frames_taken, timeout=10.0)
        if hold_s > 0:
            await asyncio.sleep(hold_s)
    finally:
        await daemon.shutdown()
    risk = _risk_by_frame(daemon.store_path, seqmap.frame_of, cam.frames_taken)
    alarm_frame = -1
    for e in raised:
        if e.alarm.rule == RULE and e.alarm.frame is not None:
            alarm_frame = seqmap.frame_of.get(e.alarm.frame.index, -1)
            break
    psi = tuple(t.psi for t in cam.truths)
    return ClosedLoopResult(
        seed=p.seed,
        frames=cam.frames_taken,
        open_loop_frames=reference.frames,
        open_loop_transition=reference.transition,
        alarm_frame=alarm_frame,
        trip_frame=reaction.trip_frames[0] if reaction.trip_frames else -1,
        lowered_frame=reaction.lowered_frame,
        transition=transition_frame(np.asarray(psi)),
        psi=psi,
        open_loop_psi=reference.psi,
        risk=tuple(risk),
        currents=tuple(cam.currents),
        stop_status=seqmap.stop_status,
    )


async def _drain(daemon: Any, frames: int, timeout: float) -> None:
    """Wait until the pipeline has processed (or failed) every frame, or ``timeout``."""
    tel = daemon.telemetry
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and tel.processed[PIPELINE] + tel.failed[PIPELINE] < frames:
        await asyncio.sleep(0.05)


def _risk_by_frame(store: Path, frame_of: dict[int, int], n: int) -> list[float]:
    """Each camera frame's ``risk`` from the run file (NaN: no full window or never processed)."""
    risk = [float("nan")] * n
    with RunReader(store) as reader:
        rows = reader.results(PIPELINE)
    for index, value in zip(rows["index"], rows["risk"], strict=True):
        frame = frame_of.get(int(index), -1)
        if 0 <= frame < n:
            risk[frame] = float(value)
    return risk


def cli_main(args: argparse.Namespace) -> int:
    """``operando-monitor closed-loop-demo``."""
    p = ChargeProtocol(
        seed=args.seed,
        frames=args.frames,
        start_mA=args.start_mA,
        end_mA=args.end_mA,
        step_frame=args.step_frame,
        safe_mA=args.safe_mA,
        delay_s=args.delay,
        risk_major=args.risk_major,
        risk_windows=args.risk_windows,
    )
    res = asyncio.run(
        run_closed_loop(
            p,
            Path(args.out),
            react=not args.open_loop,
            dashboard_port=args.port if args.dashboard else None,
            hold_s=args.hold,
            weights_dir=args.weights or "",
        )
    )
    print(res.summary())
    risk = " ".join("  nan" if math.isnan(r) else f"{r:5.2f}" for r in res.risk)
    print(f"risk per frame: {risk}")
    return 0 if res.stop_status == "success" else 1
