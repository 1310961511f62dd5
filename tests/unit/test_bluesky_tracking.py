"""BlueskySource document tracking without sockets: inline, AD_HDF5, stream_datum (SWMR), mid-run join."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

import h5py
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from monitor.config import SourceSettings, config_from_dict
from monitor.errors import ConfigError
from monitor.frames import Frame, IngestEvent, Rejection, SeriesEvent
from monitor.sources.bluesky import BlueskySource
from monitor.sources.hdf5_resolve import map_root

packb = functools.partial(msgpack.packb, default=msgpack_numpy.encode)
SHAPE = (6, 5)


def m(name: str, doc: dict[str, object], prefix: bytes = b"") -> bytes:
    return prefix + b" " + name.encode() + b" " + packb(doc)


def img(k: int) -> np.ndarray:
    return np.full(SHAPE, k, dtype=np.uint16)


def start(uid: str = "run-1", **md: object) -> bytes:
    return m(
        "start", {"uid": uid, "time": 10.0, "scan_id": 42, "plan_name": "count", "sample": "cell-7", **md}
    )


def descriptor(uid: str = "desc-1", run: str = "run-1", external: str = "", name: str = "primary") -> bytes:
    keys: dict[str, object] = {
        "det_image": {
            "dtype": "array",
            "shape": list(SHAPE),
            "source": "SIM",
            **({"external": external} if external else {}),
        },
        "pstat_current": {"dtype": "number", "shape": [], "source": "SIM"},
    }
    return m("descriptor", {"uid": uid, "run_start": run, "name": name, "data_keys": keys})


def event(seq: int, value: object, desc: str = "desc-1", current: float = 1.5) -> bytes:
    data = {"det_image": value, "pstat_current": current}
    return m(
        "event", {"descriptor": desc, "seq_num": seq, "time": 100.0 + seq, "data": data, "timestamps": {}}
    )


def stop(run: str = "run-1") -> bytes:
    return m("stop", {"run_start": run, "exit_status": "success"})


class Collector:
    def __init__(self, **kw: object) -> None:
        settings = SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1", **kw)  # type: ignore[arg-type]
        self.source = BlueskySource(settings)
        self.events: list[IngestEvent] = []

    async def _emit(self, e: IngestEvent) -> None:
        self.events.append(e)

    async def feed(self, *messages: bytes) -> None:
        for msg in messages:
            await self.source.handle(msg, self._emit)

    @property
    def frames(self) -> list[Frame]:
        return [e for e in self.events if isinstance(e, Frame)]

    @property
    def rejections(self) -> list[Rejection]:
        return [e for e in self.events if isinstance(e, Rejection)]


async def test_inline_run_with_metadata() -> None:
    c = Collector(current_field="pstat_current")
    await c.feed(start(), descriptor(), *(event(i, img(i)) for i in (1, 2, 4)), stop())
    assert [f.index for f in c.frames] == [1, 2, 4]
    f = c.frames[0]
    np.testing.assert_array_equal(f.array, img(1))
    assert f.series == "run-1" and f.stream == "frames" and f.t_detector == 101.0
    assert f.meta.current_mA == 1.5
    extra = dict(f.meta.extra)
    assert extra["scan_id"] == 42 and extra["plan_name"] == "count" and extra["sample"] == "cell-7"
    assert extra["descriptor"] == "primary" and extra["seq_num"] == 1 and extra["pstat_current"] == 1.5
    kinds = [(e.kind, e.series) for e in c.events if isinstance(e, SeriesEvent)]
    assert kinds == [("start", "run-1"), ("end", "run-1")]
    assert c.source.upstream_gaps() == 1  # seq_num 3 never arrived
    assert c.source.received == c.source.accounted() == 6


async def test_joining_mid_run_waits_for_next_start() -> None:
    c = Collector()
    await c.feed(event(5, img(5)), event(6, img(6)), stop(), start("run-2"), descriptor("desc-2", "run-2"))
    await c.feed(event(1, img(1), desc="desc-2"))
    assert [r.reason for r in c.rejections] == ["unknown_descriptor", "unknown_descriptor"]
    assert [r.index for r in c.rejections] == [-1, -1]
    assert [f.series for f in c.frames] == ["run-2"]
    assert c.source.received == c.source.accounted() == 6


async def test_descriptor_of_unknown_run_is_rejected() -> None:
    c = Collector()
    await c.feed(descriptor())
    assert [r.reason for r in c.rejections] == ["unknown_run"]


async def test_stream_without_image_is_ignored_and_bad_images_rejected() -> None:
    c = Collector()
    baseline = m(
        "descriptor",
        {
            "uid": "b",
            "run_start": "run-1",
            "name": "baseline",
            "data_keys": {"T": {"dtype": "number", "shape": [], "source": "x"}},
        },
    )
    await c.feed(
        start(), descriptor(), baseline, m("event", {"descriptor": "b", "seq_num": 1, "data": {"T": 3}})
    )
    await c.feed(event(1, "not an image"), event(2, np.zeros((2, 2, 2))), event(3, [[1, 2], [3]]))
    assert c.source.ignored == 1
    assert [r.reason for r in c.rejections] == ["bad_image"] * 3
    assert [r.index for r in c.rejections] == [1, 2, 3]


async def test_event_page_rows() -> None:
    c = Collector()
    page = m(
        "event_page",
        {
            "descriptor": "desc-1",
            "seq_num": [1, 2, 3],
            "time": [1.0, 2.0, 3.0],
            "data": {"det_image": [img(1), "bad", img(3)], "pstat_current": [0.0, 1.0, 2.0]},
            "timestamps": {},
        },
    )
    await c.feed(start(), descriptor(), page)
    assert [f.index for f in c.frames] == [1, 3]
    assert [(r.reason, r.index) for r in c.rejections] == [("bad_image", 2)]
    assert c.source.documents["event_page"] == 1 and c.source.rejected_rows["bad_image"] == 1


async def test_prefix_filter() -> None:
    c = Collector(prefix="bl1")
    await c.feed(start(), m("start", {"uid": "x", "time": 1.0}, prefix=b"bl1"))
    assert [r.reason for r in c.rejections] == ["wrong_prefix"]
    assert len([e for e in c.events if isinstance(e, SeriesEvent)]) == 1


def write_h5(path: Path, frames: int, swmr: bool = False) -> tuple[h5py.File, h5py.Dataset]:
    f = h5py.File(path, "w", libver="latest")
    ds = f.create_dataset("/entry/data/data", shape=(frames, *SHAPE), maxshape=(None, *SHAPE), dtype="uint16")
    for i in range(frames):
        ds[i] = img(i)
    if swmr:
        f.swmr_mode = True
    return f, ds


async def test_ad_hdf5_resource_and_datum(tmp_path: Path) -> None:
    f, _ = write_h5(tmp_path / "scan.h5", 3)
    f.close()
    c = Collector(root_map={"/beamline/data": str(tmp_path)})
    resource = m(
        "resource",
        {
            "uid": "res-1",
            "spec": "AD_HDF5",
            "root": "/beamline/data",
            "run_start": "run-1",
            "resource_path": "scan.h5",
            "resource_kwargs": {"frame_per_point": 1},
        },
    )
    datums = [
        m("datum", {"datum_id": f"res-1/{i}", "resource": "res-1", "datum_kwargs": {"point_number": i}})
        for i in range(3)
    ]
    await c.feed(start(), descriptor(external="FILESTORE:"), resource, *datums)
    await c.feed(*(event(i + 1, f"res-1/{i}") for i in range(3)), event(4, "res-1/99"), stop())
    assert [f.index for f in c.frames] == [1, 2, 3]
    for i, frame in enumerate(c.frames):
        np.testing.assert_array_equal(frame.array, img(i))
    assert [r.reason for r in c.rejections] == ["unknown_datum"]
    assert not c.source.tracker.datums and not c.source.tracker.resources  # forgotten at stop


async def test_ad_hdf5_missing_file_times_out(tmp_path: Path) -> None:
    c = Collector(hdf5_timeout_s=0.2)
    resource = m(
        "resource",
        {
            "uid": "r",
            "spec": "AD_HDF5",
            "root": str(tmp_path),
            "run_start": "run-1",
            "resource_path": "never.h5",
            "resource_kwargs": {"frame_per_point": 1},
        },
    )
    datum = m("datum", {"datum_id": "r/0", "resource": "r", "datum_kwargs": {"point_number": 0}})
    other = m(
        "resource", {"uid": "t", "spec": "TIFF", "root": "/", "resource_path": "x", "run_start": "run-1"}
    )
    datum_t = m("datum", {"datum_id": "t/0", "resource": "t", "datum_kwargs": {}})
    await c.feed(start(), descriptor(external="FILESTORE:"), resource, datum, other, datum_t)
    await c.feed(event(1, "r/0"), event(2, "t/0"))
    assert [r.reason for r in c.rejections] == ["hdf5_missing", "unsupported_spec"]


async def test_stream_datum_waits_for_a_growing_swmr_file(tmp_path: Path) -> None:
    path = tmp_path / "stream.h5"
    f, ds = write_h5(path, 2, swmr=True)
    c = Collector(hdf5_timeout_s=10.0)
    sres = m(
        "stream_resource",
        {
            "uid": "sr",
            "data_key": "det_image",
            "run_start": "run-1",
            "mimetype": "application/x-hdf5",
            "uri": f"file://localhost{path}",
            "parameters": {"dataset": "/entry/data/data"},
        },
    )
    sdatum = m(
        "stream_datum",
        {
            "uid": "sr/0",
            "stream_resource": "sr",
            "descriptor": "desc-1",
            "indices": {"start": 0, "stop": 5},
            "seq_nums": {"start": 1, "stop": 6},
        },
    )

    def grow() -> None:  # the writer appends three more rows after the datum was published
        time.sleep(0.3)
        for i in range(2, 5):
            ds.resize(i + 1, axis=0)
            ds[i] = img(i)
            ds.flush()
            time.sleep(0.05)

    writer = threading.Thread(target=grow)
    await c.feed(start(), descriptor(external="STREAM:"), sres)
    writer.start()
    try:
        await c.feed(sdatum)
    finally:
        writer.join()
        f.close()
    assert [fr.index for fr in c.frames] == [1, 2, 3, 4, 5]
    for i, frame in enumerate(c.frames):
        np.testing.assert_array_equal(frame.array, img(i))
    assert c.source._hdf5.retries > 0  # it really had to wait for rows
    assert c.source.received == c.source.accounted() == 4


def test_map_root() -> None:
    rm = {"/data": "/mnt/a", "/data/special": "/mnt/b"}
    assert map_root("/data/x.h5", rm) == "/mnt/a/x.h5"
    assert map_root("/data/special/y.h5", rm) == "/mnt/b/y.h5"
    assert map_root("/database/z.h5", rm) == "/database/z.h5"


def test_config_validation() -> None:
    ok = config_from_dict({"sources": [{"name": "b", "kind": "bluesky", "endpoint": "tcp://h:5578"}]})
    assert ok.sources[0].format == "auto" and not ok.sources[0].trust_pickle
    for bad, key in (
        ({"name": "b", "kind": "bluesky"}, "endpoint"),
        ({"name": "b", "kind": "bluesky", "endpoint": "tcp://h:1", "prefix": "a b"}, "prefix"),
        ({"name": "b", "kind": "bluesky", "endpoint": "tcp://h:1", "hdf5_timeout_s": 0}, "hdf5_timeout_s"),
        ({"name": "b", "kind": "bluesky", "endpoint": "tcp://h:1", "format": "cbor"}, "format"),
    ):
        with pytest.raises(ConfigError, match=key):
            config_from_dict({"sources": [bad]})
    with pytest.raises(ConfigError, match="heartbeat_s"):
        config_from_dict({"alerts": {"epics": {"enabled": True, "heartbeat_s": 0}}})
    with pytest.raises(ConfigError, match="trip_severity"):
        config_from_dict({"alerts": {"epics": {"trip_severity": "INVALID"}}})


def test_alarm_messages_name_the_run() -> None:
    from monitor.alerts.model import Severity
    from monitor.alerts.rules import Verdict
    from monitor.daemon import with_run_label

    v = Verdict("sat:frames", Severity.MAJOR, 0.5, 0.01, "too bright")
    assert with_run_label(v, {}) is v
    labelled = with_run_label(v, {"scan_id": 7, "plan_name": "count", "sample": "cell-7"})
    assert labelled.message == "too bright [scan 7 count, sample cell-7]"


async def test_runs_without_stop_are_forgotten() -> None:
    from monitor.sources.bluesky import MAX_RUNS

    c = Collector()
    await c.feed(*(start(f"run-{i}") for i in range(MAX_RUNS + 2)))
    assert len(c.source.tracker.runs) == MAX_RUNS and "run-0" not in c.source.tracker.runs
