"""Offline `operando-monitor` commands: replay, particles, merge, recover, quantize and the
exporters (Triton, Phoebus). The daemon's own commands stay in :mod:`monitor.cli`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from monitor.config import load_config
from monitor.errors import MonitorError
from monitor.logutil import setup_logging


def cmd_merge(args: argparse.Namespace) -> int:
    from monitor.store.merge import merge_journals, merge_runs

    setup_logging(args.log_level or "WARNING")
    rows = merge_runs(args.out, args.files)
    print(f"{args.out}: " + ", ".join(f"{k} {v}" for k, v in rows.items()) + " rows (virtual)")
    if args.journals:
        n = merge_journals(args.journal_out or Path(args.out).with_suffix(".alarms.jsonl"), args.journals)
        print(f"alarm journal: {n} records merged by time")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from monitor.store.recovery import recover_file

    setup_logging(args.log_level or "WARNING")
    for path in args.files:
        print(recover_file(Path(path)))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from monitor.offline import parse_option_args, replay_file

    setup_logging(args.log_level or "WARNING")
    summary = replay_file(
        Path(args.input),
        pipeline=args.pipeline,
        out=Path(args.out),
        dataset=args.dataset,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        options=parse_option_args(getattr(args, "option", None)),
        energies=getattr(args, "energies", None) or "",
        rules=_replay_rules(args),
        series_glob=getattr(args, "series_glob", None),
        model=args.model or "",
        weights_dir=args.weights_dir or "",
    )
    print(summary)
    return 0


def cmd_particles(args: argparse.Namespace) -> int:
    from monitor.analysis.particle_labels import ParticleLabeller, read_image, write_labels

    setup_logging(args.log_level or "WARNING")
    try:
        image = read_image(Path(args.image), args.dataset)
    except (OSError, ValueError, KeyError) as exc:
        raise MonitorError(f"cannot read {args.image}: {exc}") from exc
    labeller = ParticleLabeller(args.model, args.weights)
    try:
        labels, info = labeller.label(image, args.contrast, args.particle_diameter)
    finally:
        labeller.close()
    write_labels(Path(args.out), labels)
    how = "auto" if info.contrast_auto else "option"
    print(
        f"{args.out}: {info.count} particles (contrast {info.contrast} [{how}], particle diameter "
        f"{info.diameter_px:.0f} px, block factor {info.factor})"
    )
    return 0


def _replay_rules(args: argparse.Namespace) -> tuple | None:
    """``replay --config``: that config's threshold rules on pipelines of the replayed kind
    (re-targeted at the replay's pipeline); else None (the defaults)."""
    if not getattr(args, "config", None):
        return None
    from dataclasses import replace

    cfg = load_config(Path(args.config))
    names = {p.name for p in cfg.pipelines if p.kind == args.pipeline} | {args.pipeline}
    return tuple(
        replace(r, pipeline=args.pipeline)
        for r in cfg.alerts.rules
        if r.kind == "threshold" and r.pipeline in names
    )


def cmd_quantize(args: argparse.Namespace) -> int:
    from engines.quantize import quantize_model

    setup_logging(args.log_level or "INFO")
    kept = 0
    for name in args.models:
        r = quantize_model(
            name, args.weights, n_calib=args.calib, n_eval=args.eval, tolerance=args.tolerance,
            threads=args.threads,
        )  # fmt: skip
        metric = f"{r['metric']} fp32 {r['fp32']:.4f} int8 {r['int8']:.4f}" if "metric" in r else ""
        verdict = "kept" if r["kept"] else f"not kept ({r.get('reason', '')})"
        print(f"{name}: {metric} {verdict}".replace("  ", " "))
        kept += bool(r["kept"])
    return 0


def cmd_export_triton(args: argparse.Namespace) -> int:
    from engines.triton_repo import write_triton_repository

    setup_logging(args.log_level or "INFO")
    written = write_triton_repository(
        Path(args.out), weights_dir=Path(args.weights) if args.weights else None
    )
    for name in written:
        print(f"{args.out}/{name}")
    return 0


def cmd_export_phoebus(args: argparse.Namespace) -> int:
    from monitor.config import config_from_dict, load_config
    from monitor.phoebus import write_alarm_tree

    cfg = load_config(args.config) if args.config else config_from_dict({})
    n = write_alarm_tree(cfg, args.out, args.config_name)
    print(f"{args.out}: {n} PVs of prefix {cfg.alerts.epics.prefix!r} in Phoebus config {args.config_name!r}")
    print(f"import: alarm-server.sh -config {args.config_name} -import {args.out}")
    if not cfg.alerts.epics.enabled:
        print("warning: [alerts.epics] enabled = false: the PVs exist only once enabled", file=sys.stderr)
    return 0
