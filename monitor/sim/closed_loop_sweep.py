"""Closed-loop success rate over many seeds, without the RunEngine and the daemon.

Per seed: the cell camera's frames go straight through the real :class:`EarlyWarningPipeline`
(ONNX) and the real :class:`ThresholdRule`; the current drops to ``safe_mA`` from the frame
after the alarm (the reaction lag the full loop shows when the monitor keeps up with the plan;
``operando-monitor closed-loop-demo`` gives the same frames for a seed). Compared with the same
seed's open-loop run (no reaction)::

    python -m monitor.sim.closed_loop_sweep --seeds 20 40 [--risk-major 0.8] [--start-mA 1.2 --end-mA 1.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engines.synth.growth import PSI_CRIT, GrowthSim, smoothed_psi
from monitor.alerts.model import Severity
from monitor.alerts.rules import ThresholdRule
from monitor.frames import Frame
from monitor.pipelines.early_warning import EarlyWarningPipeline
from monitor.pipelines.early_warning_rule import calibrated_rule
from monitor.sim.closed_loop import ChargeProtocol, current_ramp, daemon_config, open_loop
from monitor.sim.growth_stream import FULL_SCALE


@dataclass(frozen=True)
class SeedOutcome:
    seed: int
    open_loop_transition: int
    alarm_frame: int
    lowered_frame: int
    peak_psi: float

    @property
    def in_time(self) -> bool:
        return self.open_loop_transition >= 0 and 0 <= self.lowered_frame < self.open_loop_transition

    @property
    def compact(self) -> bool:
        return self.peak_psi < PSI_CRIT


def simulate(p: ChargeProtocol, weights_dir: str = "") -> SeedOutcome:
    # The daemon's pipeline and rule settings (nothing is started or written).
    cfg = daemon_config(
        Path("."), "", "", dashboard_port=None, risk_major=p.risk_major, risk_windows=p.risk_windows,
        weights_dir=weights_dir,
    )  # fmt: skip
    pipeline = EarlyWarningPipeline(cfg.pipelines[0])
    rule = ThresholdRule(cfg.alerts.rules[0])
    sim = GrowthSim(p.seed)
    alarm = lowered = -1
    for k, setpoint in enumerate(current_ramp(p)):
        if alarm >= 0 and lowered < 0:
            lowered = k
        current = p.safe_mA if lowered >= 0 else setpoint
        img, truth = sim.step(p.cell.damkohler(current), p.cell.charge(current))
        array = np.clip(img * FULL_SCALE, 0, 65535).astype(np.uint16)
        now = time.time()
        frame = Frame("frames", "sweep", f"seed-{p.seed}", k + 1, array, now, now)
        (result,) = pipeline.process([frame])
        verdict = rule.evaluate("frames", result.scalars[rule.metric], frame.series)
        if alarm < 0 and verdict is not None and verdict.severity >= Severity.MAJOR:
            alarm = k
        if truth.full:
            break
    s = smoothed_psi(np.asarray(sim.psi))
    peak = float(np.nanmax(s)) if np.isfinite(s).any() else 0.0
    return SeedOutcome(p.seed, open_loop(p).transition, alarm, lowered, peak)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m monitor.sim.closed_loop_sweep")
    ap.add_argument("--seeds", type=int, nargs=2, default=[20, 40], metavar=("FIRST", "END"))
    ap.add_argument("--start-mA", dest="start_mA", type=float, default=ChargeProtocol.start_mA)
    ap.add_argument("--end-mA", dest="end_mA", type=float, default=ChargeProtocol.end_mA)
    ap.add_argument("--risk-major", type=float, default=None, help="default: the calibrated rule")
    ap.add_argument("--risk-windows", type=int, default=None)
    ap.add_argument("--weights", default="")
    args = ap.parse_args(argv)
    base = ChargeProtocol(
        start_mA=args.start_mA, end_mA=args.end_mA, risk_major=args.risk_major, risk_windows=args.risk_windows
    )
    outs = []
    for seed in range(*args.seeds):
        o = simulate(replace(base, seed=seed), args.weights)
        outs.append(o)
        print(
            f"seed {o.seed}: open-loop t* {o.open_loop_transition:3d}  alarm {o.alarm_frame:3d}  "
            f"lowered {o.lowered_frame:3d}  peak psi {o.peak_psi:.3f}  "
            f"{'in time' if o.in_time else '-'}  {'compact' if o.compact else 'dendritic'}",
            flush=True,
        )
    cal = calibrated_rule(args.weights)
    rule_desc = (
        f"{cal.metric} >= {args.risk_major if args.risk_major is not None else cal.major} for "
        f"{args.risk_windows if args.risk_windows is not None else cal.min_count} windows"
    )
    n = len(outs)
    trans = sum(o.open_loop_transition >= 0 for o in outs)
    alarms = sum(o.alarm_frame >= 0 for o in outs)
    print(
        f"{n} seeds, rule {rule_desc}: "
        f"open-loop transitions {trans}/{n}, "
        f"alarms {alarms}/{n}, current lowered before t* {sum(o.in_time for o in outs)}/{trans}, "
        f"stayed compact {sum(o.compact for o in outs)}/{n}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
