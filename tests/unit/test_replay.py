"""ReplaySource, iter_frames and count_frames on HDF5 datasets, TIFF stacks and TIFF directories."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from monitor.config import SourceSettings
from monitor.errors import SourceError
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sources.base import Source
from monitor.sources.replay import ReplaySource, count_frames, iter_frames, natural_key


def stack(n: int = 5, shape: tuple[int, int] = (6, 7), dtype: str = "uint16") -> np.ndarray:
    return (np.arange(n * shape[0] * shape[1]) % 1000).astype(dtype).reshape(n, *shape)


def replay(path: Path, **kw: object) -> ReplaySource:
    return ReplaySource(SourceSettings(name="rp", kind="replay", path=str(path), **kw))  # type: ignore[arg-type]


async def collect(source: ReplaySource, stop: asyncio.Event | None = None, limit: int | None = None):
    events: list[IngestEvent] = []
    stop = stop or asyncio.Event()

    async def emit(event: IngestEvent) -> None:
        events.append(event)
        if limit is not None and len(events) >= limit:
            stop.set()

    await asyncio.wait_for(source.run(emit, stop), timeout=10)
    return events


@pytest.fixture
def h5_file(tmp_path: Path) -> Path:
    path = tmp_path / "scan_0042.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/instrument/detector/temperature", data=np.arange(5.0))
        f.create_dataset("/entry/aux/other", data=np.zeros((2, 3, 3)))
        f.create_dataset("/entry/data/data", data=stack(), chunks=(1, 6, 7), compression="gzip")
        f.create_dataset("/entry/flat", data=np.ones((6, 7), dtype="float32"))
    return path


def test_hdf5_prefers_entry_data_data(h5_file: Path) -> None:
    frames = list(iter_frames(h5_file))
    assert count_frames(h5_file) == 5 == len(frames)
    np.testing.assert_array_equal(np.stack(frames), stack())


def test_hdf5_explicit_dataset_2d_and_4d(tmp_path: Path, h5_file: Path) -> None:
    (flat,) = iter_frames(h5_file, "/entry/flat")
    assert flat.shape == (6, 7) and flat.dtype == np.float32
    path = tmp_path / "four.h5"
    with h5py.File(path, "w") as f:
        f["images"] = stack(6).reshape(2, 3, 6, 7)
    assert count_frames(path) == 6
    np.testing.assert_array_equal(np.stack(list(iter_frames(path))), stack(6))


def test_hdf5_autodetects_first_3d_dataset(tmp_path: Path) -> None:
    path = tmp_path / "raw.hdf5"
    with h5py.File(path, "w") as f:
        f["a_scalar"] = 3.0
        f["b_flat"] = np.ones((4, 4))
        f["c/frames"] = stack(3)
    np.testing.assert_array_equal(np.stack(list(iter_frames(path))), stack(3))


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        ("/nope", "does not exist"),
        ("/entry", "not a dataset"),
        ("/entry/instrument/detector/temperature", "numeric image"),
    ],
)
def test_hdf5_bad_dataset_is_a_source_error(h5_file: Path, dataset: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        count_frames(h5_file, dataset)
    with pytest.raises(SourceError, match=match):
        replay(h5_file, dataset=dataset)


def test_hdf5_without_images_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(10)
    with pytest.raises(SourceError, match="no numeric dataset"):
        replay(path)


def test_tiff_stack(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack(4, dtype="float32"), photometric="minisblack")
    assert count_frames(path) == 4
    frames = list(iter_frames(path))
    np.testing.assert_array_equal(np.stack(frames), stack(4, dtype="float32"))


def test_directory_of_tiffs_sorted_naturally(tmp_path: Path) -> None:
    data = stack(12)
    for i in range(12):
        suffix = ".TIFF" if i == 3 else ".tif"
        tifffile.imwrite(tmp_path / f"img_{i}{suffix}", data[i])
    (tmp_path / "notes.txt").write_text("not an image")
    assert count_frames(tmp_path) == 12
    np.testing.assert_array_equal(np.stack(list(iter_frames(tmp_path))), data)
    assert sorted(["a10", "a2", "A1"], key=natural_key) == ["A1", "a2", "a10"]


@pytest.mark.parametrize("name", ["missing.h5", "missing.tif", "missing_dir"])
def test_missing_input_is_a_source_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        replay(tmp_path / name)
    with pytest.raises(SourceError):
        count_frames(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "content"),
    [("junk.h5", b"not hdf5"), ("junk.tif", b"not a tiff"), ("hdr.tif", b"II*\x00garbage")],
)
def test_unreadable_file_is_a_source_error(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError, match="cannot (read|open)|contains no frames"):
        replay(tmp_path / name)


def test_empty_directory_and_unknown_file_type_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no frames"):
        replay(tmp_path)
    (tmp_path / "frames.txt").write_text("1 2 3")
    with pytest.raises(SourceError, match="not a directory, TIFF or HDF5"):
        replay(tmp_path / "frames.txt")


async def test_replay_source_emits_series_and_frames(h5_file: Path) -> None:
    source = replay(h5_file, stream="xrd")
    assert isinstance(source, Source) and source.upstream_gaps() == 0
    events = await collect(source)
    assert len(events) == 7
    assert events[0] == SeriesEvent("rp", "scan_0042", "start", t_received=events[0].t_received)
    assert events[-1] == SeriesEvent("rp", "scan_0042", "end", t_received=events[-1].t_received)
    frames = events[1:-1]
    assert all(isinstance(f, Frame) for f in frames)
    assert [f.index for f in frames] == list(range(5))  # type: ignore[union-attr]
    assert {(f.stream, f.source, f.series) for f in frames} == {("xrd", "rp", "scan_0042")}  # type: ignore[union-attr]
    np.testing.assert_array_equal(np.stack([f.array for f in frames]), stack())  # type: ignore[union-attr]


async def test_replay_directory_sets_file_name(tmp_path: Path) -> None:
    for i in range(3):
        tifffile.imwrite(tmp_path / f"f{i}.tiff", stack(3)[i])
    events = await collect(replay(tmp_path))
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.meta.extra["file"] for f in frames] == ["f0.tiff", "f1.tiff", "f2.tiff"]
    assert frames[0].series == tmp_path.name


async def test_loop_repeats_with_a_new_series_each_pass(h5_file: Path) -> None:
    events = await collect(replay(h5_file, loop=True), limit=7 * 2 + 3)
    series = [e for e in events if isinstance(e, SeriesEvent)]
    assert [(s.series, s.kind) for s in series] == [
        ("scan_0042", "start"),
        ("scan_0042", "end"),
        ("scan_0042#1", "start"),
        ("scan_0042#1", "end"),
        ("scan_0042#2", "start"),
        ("scan_0042#2", "end"),  # stopped mid-pass: the series is still closed
    ]


async def test_rate_is_roughly_honoured(tmp_path: Path) -> None:
    path = tmp_path / "paced.h5"
    with h5py.File(path, "w") as f:
        f["data"] = stack(10)
    t0 = time.monotonic()
    events = await collect(replay(path, rate_hz=50.0))  # 10 frames at 50 Hz: ~0.18 s
    elapsed = time.monotonic() - t0
    assert len(events) == 12
    assert 0.15 < elapsed < 3.0
    stamps = [e.t_received for e in events if isinstance(e, Frame)]
    assert stamps[-1] - stamps[0] > 0.15


async def test_stop_interrupts_a_slow_replay(h5_file: Path) -> None:
    stop = asyncio.Event()
    source = replay(h5_file, rate_hz=0.5, loop=True)
    task = asyncio.create_task(collect(source, stop))
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    stop.set()
    events = await asyncio.wait_for(task, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert [type(e) for e in events] == [SeriesEvent, Frame, SeriesEvent]


async def test_per_frame_read_error_is_a_rejection(tmp_path: Path) -> None:
    for i in range(3):
        tifffile.imwrite(tmp_path / f"im{i}.tif", stack(3)[i])
    (tmp_path / "im1.tif").write_bytes(b"II*\x00broken")  # files are only read when replayed
    events = await collect(replay(tmp_path))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SeriesEvent", "Frame", "Rejection", "Frame", "SeriesEvent"]
    rejection = events[2]
    assert isinstance(rejection, Rejection) and rejection.reason == "read_error" and rejection.index == 1
    assert "im1.tif" in rejection.detail
    with pytest.raises(SourceError, match="cannot read frame 1"):
        list(iter_frames(tmp_path))
