"""Run files carry NeXus structure: read back with the ``nexusformat`` library (NeXpy's API)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from nexusformat.nexus import nxload

from monitor.config import PipelineSettings, StoreSettings
from monitor.frames import Frame
from monitor.pipelines.base import ArraySpec, ResultSchema
from monitor.pipelines.frame_stats import SCALARS, FrameStatsPipeline
from monitor.store import RunReader, RunStore
from monitor.store.nexus import add_nexus


def frames(n: int) -> list[Frame]:
    rng = np.random.default_rng(9)
    return [
        Frame("xrd", "det", "s1", i, rng.integers(0, 1000 * (i + 1), (16, 16), dtype=np.uint16),
              t_detector=1000.0 + i, t_received=1000.25 + 0.5 * i, seq=i)
        for i in range(n)
    ]  # fmt: skip


def write_run(tmp_path: Path) -> tuple[Path, list]:  # type: ignore[type-arg]
    pipe = FrameStatsPipeline(PipelineSettings(name="stats", kind="frame_stats"))
    results = pipe.process(frames(12))
    schemas = {"stats": pipe.schema(), "masks": ResultSchema((), (ArraySpec("data", (4, 4), "uint8"),))}
    store = RunStore(
        tmp_path / "run.h5", StoreSettings(directory=str(tmp_path), compression="none"), schemas,
        "", {"operando-monitor": "0.1.0"}, ["det"], run="cell7", t_start=1000.0,
    )  # fmt: skip
    store.write_results("stats", results[:7])
    store.flush()
    store.write_results("stats", results[7:])
    store.close()  # NeXus structure is added here
    return tmp_path / "run.h5", results


def test_nexus_classes_signal_and_axes(tmp_path: Path) -> None:
    path, results = write_run(tmp_path)
    root = nxload(str(path))
    assert root.nxclass == "NXroot"
    entry = root["entry"]
    assert entry.nxclass == "NXentry" and str(entry["title"]) == "cell7"
    assert str(entry["start_time"]).startswith("1970-01-01T00:16:40")
    process = entry["stats"]
    assert process.nxclass == "NXprocess" and str(process["program"]) == "operando-monitor pipeline stats"
    data = process["data"]
    assert data.nxclass == "NXdata"
    assert data.nxsignal.nxname == SCALARS[0] == "mean"
    assert [a.nxname for a in data.nxaxes] == ["time"]
    np.testing.assert_allclose(data.nxsignal.nxvalue, [r.scalars["mean"] for r in results])
    np.testing.assert_allclose(data["time"].nxvalue, [0.25 + 0.5 * i for i in range(12)])
    assert str(data["time"].attrs["units"]) == "s"
    assert {a.nxname for a in data.nxauxiliary_signals} == set(SCALARS[1:])
    # the default chain a generic viewer follows lands on this NXdata
    assert root.plottable_data.nxpath == "/entry/stats/data"
    # a pipeline without scalars is an NXprocess without NXdata; its own array named "data" survives
    masks = entry["masks"]
    assert masks.nxclass == "NXprocess" and masks["data"].nxclass == "NXfield"


def test_monitor_reader_still_reads_and_nexus_is_idempotent(tmp_path: Path) -> None:
    path, results = write_run(tmp_path)
    assert add_nexus(path) == ["stats"]  # again: same structure, no duplicates
    with RunReader(path) as r:
        assert r.pipelines() == ["masks", "stats"]
        assert len(r.results("stats")) == 12
    with h5py.File(path) as f:
        assert f.attrs["default"] == "entry" and f["entry"].attrs["default"] == "stats"
