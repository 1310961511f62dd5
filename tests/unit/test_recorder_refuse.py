"""The recorder keeps recording when the store cannot write a row (issue 12, failure 1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from monitor.config import StoreSettings
from monitor.frames import Disposition, Frame, Status
from monitor.pipelines.base import ArraySpec, Result, ResultSchema
from monitor.recorder import Recorder
from monitor.store import RunReader, RunStore

SCHEMA = ResultSchema(scalars=("mean",), arrays=(ArraySpec("mask", (4, 4), "uint8"),))


def _frame(seq: int, index: int) -> Frame:
    return Frame("frames", "bs", "run1", index, np.ones((64, 64), np.uint16), 1.0, 2.0, seq=seq)


def _open(path: Path) -> RunStore:
    return RunStore(path, StoreSettings(), {"stats": SCHEMA}, "", {}, ["bs"], run="t")


async def _record(path: Path, recorder: Recorder, indices: list[int]) -> None:
    await recorder.open()
    results, rows = [], []
    for seq, index in enumerate(indices, start=1):
        f = _frame(seq, index)
        results.append(Result("stats", f, {"mean": float(seq)}, {"mask": np.full((4, 4), seq, np.uint8)}))
        rows.append(Disposition.for_frame(f, "stats", Status.PROCESSED))
    recorder.add_results("stats", results)
    for d in rows:
        recorder.add_disposition(d)
    await recorder.flush()
    # Recording goes on after the bad row: a later batch is written too.
    later = _frame(99, 7)
    recorder.add_results("stats", [Result("stats", later, {"mean": 99.0})])
    recorder.add_disposition(Disposition.for_frame(later, "stats", Status.PROCESSED))
    await recorder.close()


def test_out_of_range_seq_num_is_refused_and_the_rest_of_the_batch_written(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    recorder = Recorder(lambda: _open(path), 0.1)
    indices = [0, 1, 2**63, 3, 2**70, 5]  # Bluesky seq_num beyond int64 (was: recorder task died)
    asyncio.run(_record(path, recorder, indices))
    assert recorder.results_refused == 2
    assert recorder.write_errors == 0
    with RunReader(path) as reader:
        results = reader.results("stats")
        assert list(results["seq"]) == [1, 2, 4, 6, 99]
        assert list(results["mean"]) == [1.0, 2.0, 4.0, 6.0, 99.0]
        masks = reader.array("stats", "mask")
        assert [int(m[0, 0]) for m in masks] == [1, 2, 4, 6, 0]
        frames = reader.frames()
        # Every message keeps its frames row; an index out of range is stored as -1.
        assert list(frames["seq"]) == [1, 2, 3, 4, 5, 6, 99]
        assert list(frames["index"]) == [0, 1, -1, 3, -1, 5, 7]


def test_pending_results_do_not_hold_frames_and_flush_early(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"

    async def go() -> Recorder:
        recorder = Recorder(lambda: _open(path), 3600.0, max_pending_bytes=16 * 10)
        await recorder.open()
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop))
        f = _frame(1, 0)
        recorder.add_results(
            "stats", [Result("stats", f, {"mean": 1.0}, {"mask": np.zeros((4, 4), np.uint8)})]
        )
        held = recorder._pending.results["stats"][0]
        assert held.frame.array.size == 0, "pending results must not keep the detector frame alive"
        for i in range(20):  # 20 x 16 bytes of masks > the 160-byte cap: an early flush
            recorder.add_results("stats", [Result("stats", _frame(i + 2, i + 1), {"mean": 1.0},
                                                  {"mask": np.zeros((4, 4), np.uint8)})])  # fmt: skip
        for _ in range(100):
            if recorder.pending_bytes == 0:
                break
            await asyncio.sleep(0.02)
        assert recorder.pending_bytes == 0, "the flush interval is an hour: only an early flush empties it"
        stop.set()
        await task
        await recorder.close()
        return recorder

    recorder = asyncio.run(go())
    assert recorder.early_flushes >= 1
    with RunReader(path) as reader:
        assert len(reader.results("stats")) == 21
