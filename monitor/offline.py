"""Offline replay: a file through the same daemon, pipeline and store code as a live run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from monitor.config import (
    DashboardSettings,
    MonitorConfig,
    PipelineSettings,
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

    def __str__(self) -> str:
        return (
            f"{self.out}: {self.frames} frames in, {self.processed} processed, {self.skipped} skipped, "
            f"{self.rejected} rejected, {self.failed} failed"
        )


def replay_config(
    inp: Path, pipeline: str, out: Path, dataset: str | None, model: str = "", weights_dir: str = ""
) -> MonitorConfig:
    return MonitorConfig(
        run=out.stem,
        sources=(SourceSettings(name="replay", kind="replay", path=str(inp), dataset=dataset or ""),),
        # "block": offline nothing is skipped, the reader waits for the pipeline.
        pipelines=(
            PipelineSettings(
                name=pipeline, kind=pipeline, policy="block", model=model, weights_dir=weights_dir
            ),  # type: ignore[arg-type]
        ),
        store=StoreSettings(directory=str(out.parent), filename=out.name),
        dashboard=DashboardSettings(enabled=False),
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
    )


def replay_file(
    inp: Path,
    *,
    pipeline: str,
    out: Path,
    dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: str = "",
    weights_dir: str = "",
) -> ReplaySummary:
    from monitor.sources.replay import count_frames

    if pipeline not in PIPELINE_KINDS:
        raise MonitorError(f"unknown pipeline {pipeline!r} (available: {', '.join(sorted(PIPELINE_KINDS))})")
    if out.exists():
        if not overwrite:
            raise MonitorError(f"{out} exists (use --overwrite to replace it)")
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    total = count_frames(inp, dataset)
    if weights_dir and not Path(weights_dir).is_dir():
        raise MonitorError(f"--weights-dir {weights_dir}: not a directory")
    cfg = replay_config(inp, pipeline, out, dataset, model, weights_dir)
    return asyncio.run(_replay(cfg, out, total, progress))
