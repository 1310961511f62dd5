"""Offline replay: a file through the same daemon, pipeline, alarm rules and store code as a live
run. Alarm rules: the ones given (e.g. from a config), or for ``early_warning`` with none given,
the shipped model's calibrated rule (:mod:`monitor.pipelines.early_warning_rule`); alarms go to
the run file's ``/entry/alarms`` and to ``<out stem>.alarms.jsonl`` next to it, as live. A
``series_glob`` replays every matching HDF5 dataset (or group) of a multi-run file as its own
series in one call."""

from __future__ import annotations

import asyncio
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard, get_args

from tqdm import tqdm

from monitor.config import (
    AlertSettings,
    DashboardSettings,
    MonitorConfig,
    PipelineKind,
    PipelineSettings,
    RuleSettings,
    SourceSettings,
    StoreSettings,
)
from monitor.errors import MonitorError
from monitor.pipelines.registry import PIPELINE_KINDS


@dataclass(frozen=True)
class ReplaySummary:
    out: Path
    frames: int
    processed: int
    skipped: int
    rejected: int
    failed: int
    seconds: float = float("nan")
    """Wall-clock time of the replay (daemon start to store closed)."""

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else float("nan")

    def __str__(self) -> str:
        return (
            f"{self.out}: {self.frames} frames in, {self.processed} processed, {self.skipped} skipped, "
            f"{self.rejected} rejected, {self.failed} failed; {self.fps:.1f} frames/s "
            f"({self.seconds:.1f} s wall, start-up included)"
        )


def parse_option_args(items: list[str] | None) -> dict[str, bool | int | float | str]:
    """``KEY=VALUE`` strings → options; VALUE is read as a TOML value (``4``, ``0.5``, ``true``,
    ``"text"``), anything else is taken as a string. Checked later like ``[pipelines.options]``."""
    out: dict[str, bool | int | float | str] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise MonitorError(f"--option {item!r}: expected KEY=VALUE")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if not isinstance(value, bool | int | float | str):
            raise MonitorError(f"--option {key}: expected a number, true/false or a string, got {raw!r}")
        out[key] = value
    return out


def is_pipeline_kind(name: str) -> TypeGuard[PipelineKind]:
    return name in get_args(PipelineKind)


def replay_config(
    inp: Path,
    pipeline: str,
    out: Path,
    dataset: str | None,
    *,
    options: dict[str, bool | int | float | str] | None = None,
    energies: str = "",
    rules: tuple[RuleSettings, ...] = (),
    model: str = "",
    weights_dir: str = "",
) -> MonitorConfig:
    if not is_pipeline_kind(pipeline):
        raise MonitorError(f"unknown pipeline {pipeline!r} (available: {', '.join(get_args(PipelineKind))})")
    return MonitorConfig(
        run=out.stem,
        sources=(
            SourceSettings(
                name="replay", kind="replay", path=str(inp), dataset=dataset or "", energies=energies
            ),
        ),
        # "block": offline nothing is skipped, the reader waits for the pipeline.
        pipelines=(
            PipelineSettings(
                name=pipeline,
                kind=pipeline,
                policy="block",
                options=dict(options or {}),
                model=model,
                weights_dir=weights_dir,
            ),
        ),
        store=StoreSettings(directory=str(out.parent), filename=out.name),
        dashboard=DashboardSettings(enabled=False),
        alerts=AlertSettings(journal=f"{out.stem}.alarms.jsonl", rules=rules),
    )


async def _replay(cfg: MonitorConfig, out: Path, total: int, progress: bool) -> ReplaySummary:
    from monitor.daemon import Daemon

    daemon = Daemon(cfg, config_text="", store_path=out)
    bar = tqdm(total=total, unit="frame", disable=not progress, desc=out.name)

    async def follow() -> None:
        done = 0
        while True:
            t = daemon.telemetry
            now = sum(t.processed.values()) + sum(t.skipped.values()) + sum(t.failed.values())
            now += sum(t.rejected.values())
            bar.update(now - done)
            done = now
            await asyncio.sleep(0.1)

    follower = asyncio.create_task(follow())
    t0 = time.perf_counter()
    try:
        await daemon.serve()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        bar.close()
    t = daemon.telemetry
    return ReplaySummary(
        out=out,
        frames=sum(t.received.values()),
        processed=sum(t.processed.values()),
        skipped=sum(t.skipped.values()),
        rejected=sum(t.rejected.values()),
        failed=sum(t.failed.values()),
        seconds=time.perf_counter() - t0,
    )


def replay_file(
    inp: Path,
    *,
    pipeline: str,
    out: Path,
    dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    options: dict[str, bool | int | float | str] | None = None,
    energies: str = "",
    rules: tuple[RuleSettings, ...] | None = None,
    series_glob: str | None = None,
    model: str = "",
    weights_dir: str = "",
) -> ReplaySummary:
    from monitor.pipelines.registry import build_pipeline
    from monitor.sources.replay import count_frames, load_energies

    if pipeline not in PIPELINE_KINDS:
        raise MonitorError(f"unknown pipeline {pipeline!r} (available: {', '.join(sorted(PIPELINE_KINDS))})")
    if out.exists() and not overwrite:
        raise MonitorError(f"{out} exists (use --overwrite to replace it)")
    if weights_dir and not Path(weights_dir).is_dir():
        raise MonitorError(f"--weights-dir {weights_dir}: not a directory")
    if series_glob:
        dataset = series_glob
    if rules is None:
        rules = default_rules(pipeline)
    total = count_frames(inp, dataset)
    load_energies(inp, dataset, energies, total)  # a bad energies file fails here, not mid-run
    cfg = replay_config(
        inp,
        pipeline,
        out,
        dataset,
        options=options,
        energies=energies,
        rules=tuple(rules),
        model=model,
        weights_dir=weights_dir,
    )
    if options or model or weights_dir:  # checked like [pipelines], before anything is written
        closer = getattr(build_pipeline(cfg.pipelines[0]), "close", None)
        if callable(closer):  # only pipelines that hold a runner have close() (alignment)
            closer()
    if out.exists():
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_replay(cfg, out, total, progress))


def default_rules(pipeline: str) -> tuple[RuleSettings, ...]:
    """Rules replay evaluates when none are given: the shipped early-warning model's calibrated
    rule (and its OOD rule) for ``early_warning``; none for the other pipelines."""
    if pipeline != "early_warning":
        return ()
    from monitor.pipelines.early_warning_rule import rule_settings

    return rule_settings("dendrite_risk", pipeline)
