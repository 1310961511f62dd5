"""`operando-monitor` command line: run, check, simulate, replay, demo, bench."""

from __future__ import annotations

import os

# Before numpy is imported: the daemon does its array work in its own threads, and OpenBLAS's
# spin-waiting worker threads would only take CPU from ingest (see `bench ingest`).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from monitor.cli_offline import (
    cmd_export_phoebus,
    cmd_export_triton,
    cmd_merge,
    cmd_particles,
    cmd_quantize,
    cmd_recover,
    cmd_replay,
)
from monitor.config import MonitorConfig, load_config
from monitor.errors import MonitorError
from monitor.logutil import setup_logging

log = logging.getLogger("monitor.cli")


def _load_display(cfg: MonitorConfig) -> type | None:
    if not cfg.dashboard.enabled:
        return None
    from monitor.display import load_display

    return load_display("bokeh")


async def _serve(cfg: MonitorConfig, config_text: str, store_path: Path | None = None) -> int:
    from monitor.daemon import Daemon

    daemon = Daemon(cfg, config_text=config_text, display=_load_display(cfg), store_path=store_path)
    daemon.install_signal_handlers()
    await daemon.serve()
    print(f"results: {daemon.store_path}", file=sys.stderr)
    return daemon.exit_code  # non-zero when a component failed during the run (see monitor.supervise)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    setup_logging(args.log_level or cfg.daemon.log_level)
    return asyncio.run(_serve(cfg, Path(args.config).read_text(encoding="utf-8")))


def cmd_check(args: argparse.Namespace) -> int:
    from monitor.preflight import preflight

    cfg = load_config(args.config)
    setup_logging(args.log_level or "WARNING")
    preflight(cfg)  # exactly what `run` validates before it opens sockets
    print(f"{args.config}: OK")
    print(f"  sources:   {', '.join(f'{s.name} ({s.kind})' for s in cfg.sources) or '(none)'}")
    pipes = ", ".join(f"{p.name} ({p.kind}) <- {list(p.streams)}" for p in cfg.pipelines)
    print(f"  pipelines: {pipes or '(none)'}")
    print(f"  rules:     {', '.join(r.name for r in cfg.alerts.rules) or '(none)'}")
    epics = cfg.alerts.epics
    print(f"  epics:     {f'{epics.prefix}STATE/SCORE/TRIP/MSG/HEARTBEAT' if epics.enabled else 'disabled'}")
    print(f"  store:     {cfg.store.directory}/{cfg.store.filename}")
    if cfg.cluster.engine == "ray":
        each = ", ".join(
            f"{p.name} x{p.replicas} ({p.num_cpus:g} CPU, {p.num_gpus:g} GPU)" for p in cfg.pipelines
        )
        print(f"  cluster:   ray at {cfg.cluster.address}: {each}")
    dash = cfg.dashboard
    print(f"  dashboard: {f'http://{dash.host}:{dash.port}/' if dash.enabled else 'disabled'}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from monitor.sim.array10 import run_simulator

    setup_logging(args.log_level or "INFO")
    if args.protocol == "stream2":
        from monitor.sim.stream2 import cli_simulate

        return cli_simulate(args)
    if args.protocol == "ndpluginzmq":
        from monitor.sim.areadetector import cli_simulate as ad_simulate

        return ad_simulate(args)
    if args.protocol == "bluesky":
        from monitor.sim.bluesky_demo import cli_simulate as bluesky_simulate

        return bluesky_simulate(args)
    if args.protocol != "array10":
        raise MonitorError(f"protocol {args.protocol!r} is not implemented yet (available: array10)")
    sent = asyncio.run(
        run_simulator(
            args.endpoint,
            rate_hz=args.rate,
            shape=(args.shape[0], args.shape[1]),
            count=args.count,
            socket=args.socket,
            mode=args.mode,
            stream=args.stream,
            dtype=args.dtype,
            seed=args.seed,
        )
    )
    print(f"sent {sent} frames", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.sim.demo import run_demo

    setup_logging(args.log_level or "INFO")
    return asyncio.run(
        run_demo(duration=args.duration, port=args.port, out_dir=Path(args.out), parts=args.parts)
    )


def cmd_bluesky_demo(args: argparse.Namespace) -> int:
    from monitor.sim.bluesky_demo import cli_demo

    setup_logging(args.log_level or "INFO")
    return cli_demo(args)


def cmd_closed_loop_demo(args: argparse.Namespace) -> int:
    from monitor.sim.closed_loop import cli_main

    setup_logging(args.log_level or "WARNING")
    return cli_main(args)


def _bench_ingest(args: argparse.Namespace) -> int:
    from monitor.bench.ingest import run_ingest_bench

    return run_ingest_bench(Path(args.json), frames=args.frames, sizes=args.sizes)


# what → "module:function"; each function takes the parsed arguments and returns an exit code.
# Imported lazily so that e.g. `bench ingest` never imports torch.
BENCHES: dict[str, str] = {
    "ingest": "monitor.cli:_bench_ingest",
    "engines": "monitor.bench.engines:cli_main",
    "early-warning": "monitor.bench.early_warning:cli_main",
    "early-warning-forecast": "monitor.bench.early_warning_forecast:cli_main",
    "segmentation": "monitor.bench.segmentation:cli_main",
    "alignment": "monitor.bench.alignment:cli_main",
    "stream2": "monitor.bench.stream2:cli_main",
    "bluesky": "monitor.bench.bluesky:cli_main",
    "demo-latency": "monitor.bench.latency_report:cli_main",
    "gpu": "monitor.bench.gpu:cli_main",
    "sinks": "monitor.bench.sinks:cli_main",
    "soak": "monitor.bench.soak:cli_main",
    "scale": "monitor.bench.scale:cli_main",
}
TRAINERS: dict[str, str] = {
    "early-warning": "engines.train.early_warning:cli_main",
    "early-warning-forecast": "engines.train.early_warning_forecast:cli_main",
    "segmentation": "engines.train.segmentation:cli_main",
    "alignment": "engines.train.alignment:cli_main",
}
FINETUNERS: dict[str, str] = {
    "early-warning": "engines.train.early_warning:finetune_main",
    "segmentation": "engines.train.segmentation:finetune_main",
}


def _dispatch(table: dict[str, str], what: str, args: argparse.Namespace) -> int:
    import importlib

    module_name, _, attr = table[what].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise MonitorError(f"{what!r} is not available: {exc}") from exc
    return int(getattr(module, attr)(args))


def cmd_bench(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "WARNING")
    return _dispatch(BENCHES, args.what, args)


def cmd_train(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "INFO")
    return _dispatch(TRAINERS, args.what, args)


def cmd_finetune(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "INFO")
    return _dispatch(FINETUNERS, args.what, args)


def add_segmentation_finetune_args(t: argparse.ArgumentParser) -> None:
    """``finetune segmentation`` options (labels people have, reproducible training, method)."""
    t.add_argument("--method", default="auto", choices=["auto", "network", "forest"], help="segmentation")
    t.add_argument("--model", default=None, help="segmentation: shipped model to fine-tune (network)")
    t.add_argument("--name", default=None, help="segmentation: name of the new model (xct_finetuned)")
    t.add_argument(
        "--class-map", default=None, help="segmentation: mask VALUE=CLASS[,...], e.g. 255=electrode"
    )
    t.add_argument("--ignore", type=int, default=None, help="segmentation: mask value of unlabelled pixels")
    t.add_argument("--steps", type=int, default=None, help="segmentation: network training steps (500)")
    t.add_argument("--max-minutes", type=float, default=None, help="segmentation: wall-clock cap (network)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="operando-monitor", description=__doc__)
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the daemon from a TOML config")
    r.add_argument("--config", required=True)
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("check", help="validate a TOML config and print what it sets up")
    c.add_argument("--config", required=True)
    c.set_defaults(fn=cmd_check)

    mg = sub.add_parser("merge", help="one view (HDF5 virtual datasets) of several daemons' run files")
    mg.add_argument("out", help="merged file to write (holds no data: virtual datasets)")
    mg.add_argument("files", nargs="+", help="the per-daemon run files")
    mg.add_argument("--journals", nargs="*", default=[], help="alarm journals to merge by time")
    mg.add_argument("--journal-out", default=None, help="merged journal (default OUT.alarms.jsonl)")
    mg.set_defaults(fn=cmd_merge)

    rc = sub.add_parser("recover", help="make a run file left by a crash (kill -9) open with plain h5py")
    rc.add_argument("files", nargs="+")
    rc.set_defaults(fn=cmd_recover)

    s = sub.add_parser("simulate", help="stream synthetic detector frames")
    s.add_argument("--protocol", default="array10", choices=["array10", "stream2", "bluesky", "ndpluginzmq"])
    s.add_argument("--endpoint", required=True, help="e.g. tcp://127.0.0.1:5555")
    s.add_argument("--rate", type=float, default=10.0, help="frames per second (0: as fast as possible)")
    s.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("Y", "X"))
    s.add_argument("--count", type=int, default=None, help="frames to send (default: until Ctrl-C)")
    s.add_argument("--socket", default="push", choices=["push", "pub"])
    s.add_argument("--mode", default="bind", choices=["bind", "connect"])
    s.add_argument("--stream", default="frames")
    s.add_argument("--dtype", default="uint16")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--compression", default="bslz4", choices=["bslz4", "lz4", "none"], help="stream2 only")
    s.add_argument("--channels", nargs="+", default=["threshold_1"], help="stream2 only: channel names")
    s.add_argument(
        "--codec", default="none", choices=["none", "lz4", "blosc", "zlib"], help="ndpluginzmq only"
    )
    s.set_defaults(fn=cmd_simulate)

    rp = sub.add_parser("replay", help="run a file through a pipeline offline (same result layout)")
    rp.add_argument("input", help="HDF5 file, TIFF stack, or directory of TIFFs")
    rp.add_argument("--pipeline", required=True, help="pipeline kind, e.g. frame_stats")
    rp.add_argument("--out", required=True, help="results HDF5 file")
    rp.add_argument("--dataset", default=None, help="HDF5 dataset path (default: auto-detect)")
    rp.add_argument("--overwrite", action="store_true")
    rp.add_argument("--no-progress", action="store_true")
    rp.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="pipeline option (repeatable), checked like [pipelines.options], e.g. --option detect_every=1",
    )
    rp.add_argument("--energies", default=None, help="per-frame energies (eV), a text file, one per frame")
    rp.add_argument("--series-glob", default=None, help="HDF5: replay every dataset/group matching this glob")
    rp.add_argument("--config", default=None, help="evaluate this config's alarm rules on the pipeline")
    rp.add_argument("--weights-dir", default=None, help="model directory for model pipelines")
    rp.add_argument("--model", default=None, help="model name for model pipelines (default: the pipeline's)")
    rp.set_defaults(fn=cmd_replay)

    pa = sub.add_parser("particles", help="instance labels of one 2-D image (uint16 TIFF), prints the count")
    pa.add_argument("image", help="TIFF, or HDF5 with --dataset")
    pa.add_argument("--out", required=True, help="labels TIFF (uint16, 0 = background)")
    pa.add_argument("--contrast", default="auto", choices=["auto", "transmission", "absorbance"])
    pa.add_argument("--particle-diameter", type=float, default=0.0, help="px; 0: estimated from the image")
    pa.add_argument("--dataset", default="", help="HDF5 dataset path")
    pa.add_argument("--weights", default=None, help="weights directory (default: engines/weights)")
    pa.add_argument("--model", default="", help="model name (default: txm_particle_net)")
    pa.set_defaults(fn=cmd_particles)

    from monitor.segment_cli import add_parser as add_segment_parser

    add_segment_parser(sub)

    d = sub.add_parser("demo", help="simulator + daemon + dashboard on this machine")
    d.add_argument("--duration", type=float, default=None, help="exit cleanly after S seconds")
    d.add_argument("--port", type=int, default=5006, help="dashboard port")
    d.add_argument("--out", default="runs/demo", help="directory for the demo's HDF5 and journal")
    d.add_argument(
        "--parts", nargs="*", default=None, help="pipeline demos to include (default: all available)"
    )
    d.set_defaults(fn=cmd_demo)

    bd = sub.add_parser("bluesky-demo", help="RunEngine + ophyd sim devices → 0MQ proxy → daemon")
    bd.add_argument("--out", default="runs/bluesky-demo", help="detector HDF5, results and journal go here")
    bd.add_argument("--points", type=int, default=40, help="points per scan (a current ramp)")
    bd.add_argument("--scans", type=int, default=3)
    bd.add_argument("--format", default="msgpack", choices=["msgpack", "json", "pickle"])
    bd.add_argument("--inline", action="store_true", help="images inline in events (default: HDF5 + datum)")
    bd.add_argument("--stream", action="store_true", help="HDF5 + stream_resource/stream_datum (ophyd-async)")
    bd.add_argument("--shape", type=int, nargs=2, default=[512, 512], metavar=("Y", "X"))
    bd.add_argument("--delay", type=float, default=0.1, help="seconds between points")
    bd.add_argument("--port", type=int, default=5006, help="dashboard port")
    bd.add_argument("--no-dashboard", action="store_true")
    bd.add_argument("--epics-prefix", default="", help="serve alarm PVs with this prefix (e.g. OPERANDO:)")
    bd.set_defaults(fn=cmd_bluesky_demo)

    cl = sub.add_parser(
        "closed-loop-demo", help="RunEngine charges a simulated cell; the monitor's TRIP lowers the current"
    )
    cl.add_argument("--out", default="runs/closed-loop", help="results and alarm journal go here")
    cl.add_argument("--seed", type=int, default=14, help="GrowthSim seed (the open-loop run uses the same)")
    cl.add_argument("--frames", type=int, default=64)
    cl.add_argument("--start-mA", dest="start_mA", type=float, default=0.8, help="charging ramp start")
    cl.add_argument("--end-mA", dest="end_mA", type=float, default=4.0, help="charging ramp end")
    cl.add_argument("--step-frame", type=int, default=None, help="a current step at this frame, not a ramp")
    cl.add_argument("--safe-mA", dest="safe_mA", type=float, default=0.5, help="current after TRIP")
    cl.add_argument(
        "--risk-major", type=float, default=None, help="MAJOR when risk >= this (default: calibrated)"
    )
    cl.add_argument(
        "--risk-windows", type=int, default=None, help="... for this many windows (default: calibrated)"
    )
    cl.add_argument("--weights", default=None, help="weights directory (default: engines/weights)")
    cl.add_argument("--delay", type=float, default=0.25, help="seconds between frames")
    cl.add_argument("--open-loop", action="store_true", help="ignore TRIP (no reaction)")
    cl.add_argument("--dashboard", action="store_true", help="serve the dashboard on --port")
    cl.add_argument("--port", type=int, default=5006, help="dashboard port")
    cl.add_argument("--hold", type=float, default=0.0, help="keep the daemon up this long after the run")
    cl.set_defaults(fn=cmd_closed_loop_demo)

    b = sub.add_parser("bench", help="benchmarks (JSON results)")
    b.add_argument("what", choices=sorted(BENCHES))
    b.add_argument("--json", required=True)
    b.add_argument("--frames", type=int, default=None, help="frames per measurement")
    b.add_argument("--sizes", type=int, nargs="*", default=None, help="square frame sizes, e.g. 2048 512")
    b.add_argument("--quick", action="store_true", help="a small, fast run (smoke tests)")
    b.add_argument("--weights", default=None, help="weights directory (default: engines/weights)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    b.add_argument("--run", default=None, help="run file (demo-latency)")
    b.add_argument("--minutes", type=float, default=None, help="soak: minutes per flush interval")
    b.add_argument("--flush", type=float, nargs="*", default=None, help="soak: store flush intervals (s)")
    b.set_defaults(fn=cmd_bench)

    for name, table, fn, what_help in (
        ("train", TRAINERS, cmd_train, "train a shipped model, export ONNX, write its manifest"),
        ("finetune", FINETUNERS, cmd_finetune, "adapt a shipped model to new data"),
    ):
        t = sub.add_parser(name, help=what_help)
        t.add_argument("what", choices=sorted(table))
        t.add_argument("--out", default=None, help="output directory (default: engines/weights)")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--epochs", type=int, default=None)
        t.add_argument("--quick", action="store_true", help="tiny smoke run (tests)")
        t.add_argument("--data", default=None, help="training data directory (finetune)")
        t.add_argument("--weights", default=None, help="starting weights directory (finetune)")
        t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        t.add_argument("--no-progress", action="store_true")
        if name == "finetune":
            add_segmentation_finetune_args(t)
        t.set_defaults(fn=fn)

    q = sub.add_parser(
        "quantize", help="int8 static quantisation of shipped models, kept if the metric holds"
    )
    q.add_argument("models", nargs="+", help="model names (e.g. xct_unet_fast)")
    q.add_argument("--weights", default=None, help="weights directory (default: engines/weights)")
    q.add_argument("--calib", type=int, default=32, help="synthetic calibration samples")
    q.add_argument("--eval", type=int, default=None, help="held-out samples (default: per task)")
    q.add_argument("--tolerance", type=float, default=0.005, help="largest metric drop accepted")
    q.add_argument("--threads", type=int, default=2)
    q.set_defaults(fn=cmd_quantize)

    et = sub.add_parser("export-triton", help="write a Triton model repository for the shipped models")
    et.add_argument("--out", required=True)
    et.add_argument("--weights", default=None, help="weights directory (default: engines/weights)")
    et.set_defaults(fn=cmd_export_triton)

    ep = sub.add_parser("export-phoebus", help="write a Phoebus alarm-tree XML for the alarm PVs")
    ep.add_argument("--out", required=True)
    ep.add_argument("--config", default=None, help="monitor TOML (its [alerts] rules and PV prefix)")
    ep.add_argument("--config-name", default="OperandoMonitor", help="Phoebus alarm config name")
    ep.set_defaults(fn=cmd_export_phoebus)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except MonitorError as exc:
        print(f"operando-monitor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback only at DEBUG
        log.debug("unexpected error", exc_info=exc)
        print(f"operando-monitor: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
