"""replay of a multi-run HDF5 file (one series per dataset / group) and of alarm rules offline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from monitor.config import RuleSettings, SourceSettings
from monitor.errors import SourceError
from monitor.frames import Frame, SeriesEvent
from monitor.offline import default_rules, replay_file
from monitor.sources.replay import ReplaySource, count_frames, series_datasets


@pytest.fixture
def multi(tmp_path: Path) -> Path:
    path = tmp_path / "runs.h5"
    with h5py.File(path, "w") as f:
        for i, n in enumerate((3, 4, 2)):
            f.create_dataset(f"/run{i + 1}/frames", data=np.full((n, 20, 20), 100 * (i + 1), np.uint16))
        f.create_dataset("/run10/frames", data=np.zeros((1, 20, 20), np.uint16))
        f.create_dataset("/meta/temperature", data=np.arange(3.0))
        f.create_dataset("/grp7/entry/data/data", data=np.ones((2, 20, 20), np.uint16))
    return path


def test_series_glob_matches_datasets_and_groups_in_natural_order(multi: Path) -> None:
    assert series_datasets(multi, "/run*/frames") == [
        "/run1/frames",
        "/run2/frames",
        "/run3/frames",
        "/run10/frames",
    ]
    assert series_datasets(multi, "grp*") == ["/grp7/entry/data/data"]
    assert count_frames(multi, "/run*/frames") == 3 + 4 + 2 + 1
    with pytest.raises(SourceError, match="matches"):
        series_datasets(multi, "/nope*")


def test_replay_source_emits_one_series_per_match(multi: Path) -> None:
    src = ReplaySource(SourceSettings(name="rp", kind="replay", path=str(multi), dataset="/run[123]/frames"))
    events: list[object] = []

    async def emit(e: object) -> None:
        events.append(e)

    asyncio.run(asyncio.wait_for(src.run(emit, asyncio.Event()), 10))
    starts = [e.series for e in events if isinstance(e, SeriesEvent) and e.kind == "start"]
    assert starts == ["run1/frames", "run2/frames", "run3/frames"]
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.series for f in frames].count("run2/frames") == 4
    assert {int(f.array[0, 0]) for f in frames if f.series == "run3/frames"} == {300}


def test_offline_replay_writes_alarms_for_configured_rules(multi: Path, tmp_path: Path) -> None:
    from monitor.store.reader import RunReader

    rule = RuleSettings(
        name="bright", kind="threshold", pipeline="frame_stats", metric="mean", major=150.0, min_count=1
    )
    out = tmp_path / "out.h5"
    summary = replay_file(
        multi, pipeline="frame_stats", out=out, rules=(rule,), series_glob="/run*/frames", progress=False
    )
    assert summary.processed == 10
    with RunReader(out) as r:
        alarms = r.alarms()
        rows = r.results("frame_stats")
    assert len(rows) == 10
    assert any(a.alarm.severity.name == "MAJOR" for a in alarms)
    journal = [json.loads(x) for x in (tmp_path / "out.alarms.jsonl").read_text().splitlines()]
    assert journal and any("bright" in json.dumps(j) for j in journal)


def test_default_rules_are_the_calibrated_early_warning_rule() -> None:
    assert default_rules("frame_stats") == ()
    rules = default_rules("early_warning")
    assert rules[0].pipeline == "early_warning" and rules[0].major is not None


def test_cli_replay_with_series_glob_and_the_configs_rules(multi: Path, tmp_path: Path) -> None:
    from monitor.cli import main
    from monitor.store.reader import RunReader
    from tests.helpers import ROOT

    text = (ROOT / "examples" / "monitor.toml").read_text()
    text = text.replace('metric = "saturated_fraction"', 'metric = "mean"').replace(
        "major = 0.01", "major = 150.0"
    )
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text)
    out = tmp_path / "cli.h5"
    argv = ["replay", str(multi), "--pipeline", "frame_stats", "--out", str(out), "--no-progress"]
    assert main([*argv, "--series-glob", "/run*/frames", "--config", str(cfg)]) == 0
    with RunReader(out) as r:
        assert len(r.results("frame_stats")) == 10
        assert any(a.alarm.rule == "saturation" for a in r.alarms())


def test_offline_replay_checks_settings_of_a_pipeline_without_close(multi: Path, tmp_path: Path) -> None:
    # --weights-dir makes replay build the pipeline once up front; frame_stats holds no runner
    # and has no close() (only alignment does).
    summary = replay_file(
        multi,
        pipeline="frame_stats",
        out=tmp_path / "out.h5",
        series_glob="/run1/frames",
        weights_dir=str(tmp_path),
        progress=False,
    )
    assert summary.processed == 3


def test_replay_config_rejects_an_unknown_pipeline_kind(multi: Path, tmp_path: Path) -> None:
    from monitor.errors import MonitorError
    from monitor.offline import replay_config

    with pytest.raises(MonitorError, match="unknown pipeline 'nope'"):
        replay_config(multi, "nope", tmp_path / "out.h5", None)
