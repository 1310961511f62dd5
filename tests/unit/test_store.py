"""Round trips through the HDF5 run store (writer -> file -> reader)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, FrameRef, Severity
from monitor.config import StoreSettings
from monitor.errors import InvalidResult, StoreError
from monitor.frames import Disposition, Frame, Status
from monitor.pipelines.base import ArraySpec, Latency, Result, ResultSchema
from monitor.store import RunReader, RunStore, clear_status_flags, status_flags
from monitor.store.layout import FRAMES_DTYPE, decode_by_reason, encode_by_reason, encode_str
from monitor.store.recovery import lookup3
from monitor.telemetry import TelemetrySnapshot

SCHEMAS = {
    "xrd": ResultSchema(
        scalars=("peak_pos", "fwhm"),
        arrays=(ArraySpec("mask", (8, 6), "uint8"), ArraySpec("roi", (4, 4), "float32")),
    ),
    "stats": ResultSchema(scalars=("mean",)),
}


def make_store(tmp_path: Path, compression: str = "bslz4", chunk_rows: int = 4, **kw: object) -> RunStore:
    settings = StoreSettings(directory=str(tmp_path), compression=compression, chunk_rows=chunk_rows)
    return RunStore(
        tmp_path / "run.h5",
        settings,
        SCHEMAS,
        config_toml='[store]\ncompression = "bslz4"\n',
        versions={"monitor": "0.1.0", "h5py": h5py.__version__},
        sources=["xrd-det", "txm"],
        **kw,
    )


def frame(seq: int, index: int | None = None) -> Frame:
    return Frame(
        stream="xrd",
        source="xrd-det",
        series="cycle-1",
        index=seq if index is None else index,
        array=np.zeros((2, 2), dtype=np.uint16),
        t_detector=1000.0 + seq,
        t_received=1000.5 + seq,
        seq=seq,
    )


def result(seq: int, pipeline: str = "xrd") -> Result:
    rng = np.random.default_rng(seq)
    arrays = (
        {"mask": rng.integers(0, 2, (8, 6), dtype=np.uint8), "roi": rng.random((4, 4), dtype=np.float32)}
        if pipeline == "xrd"
        else {}
    )
    scalars = {"peak_pos": 1.5 * seq, "fwhm": 0.25} if pipeline == "xrd" else {"mean": float(seq)}
    return Result(
        pipeline=pipeline,
        frame=frame(seq),
        scalars=scalars,
        arrays=arrays,
        latency=Latency(queued=0.01, compute=0.002 * seq, batch_size=2),
    )


def alarm_event(i: int, ref: FrameRef | None) -> AlarmEvent:
    alarm = Alarm(
        id=f"threshold:xrd.fwhm:{i}",
        rule="fwhm_high",
        severity=Severity.MAJOR,
        state=AlarmState.ACTIVE,
        message=f"fwhm above 0.3 (event {i})",
        value=0.5,
        threshold=0.3,
        frame=ref,
        t_raised=10.0 + i,
        t_changed=11.0 + i,
        latched=bool(i % 2),
        acked_by="" if i % 2 == 0 else "operator",
    )
    return AlarmEvent(t=12.0 + i, transition="raise", alarm=alarm)


def snapshot(i: int) -> TelemetrySnapshot:
    return TelemetrySnapshot(
        t=100.0 + i,
        received=10 * i,
        processed=9 * i,
        skipped=i,
        rejected=2,
        failed=0,
        fps_in=50.0,
        fps_out=49.5,
        latency_p50_ms=3.0,
        latency_p99_ms=float("nan"),
        queue_depth=i,
        upstream_gaps=1,
        rejected_by_reason=(("bad_json", 1), ("size_mismatch", 1)),
        skipped_by_reason=(("drop_oldest", i),),
    )


def test_dispositions_round_trip(tmp_path: Path) -> None:
    rows = [
        Disposition.for_frame(frame(s), "xrd", Status(s % 4), reason=f"r{s}", t_done=2000.0 + s)
        for s in range(10)
    ]
    with make_store(tmp_path) as store:
        store.write_dispositions(rows[:3])
        store.write_dispositions(rows[3:])
        store.write_dispositions([])
    with RunReader(tmp_path / "run.h5") as reader:
        assert reader.dispositions() == rows
        table = reader.frames()
        assert table.dtype == FRAMES_DTYPE
        assert list(table["seq"]) == list(range(10))
        assert reader.frames(start=8).shape == (2,)
        assert reader.status_counts() == {"PROCESSED": 3, "SKIPPED": 3, "REJECTED": 2, "FAILED": 2}
        assert reader.status_counts(pipeline="other") == dict.fromkeys(Status.__members__, 0)
        assert reader.accounted_seqs() == set(range(10))
        names = json.loads(reader._entry["frames"].attrs["status_names"])
        assert names == {"PROCESSED": 0, "SKIPPED": 1, "REJECTED": 2, "FAILED": 3}


@pytest.mark.parametrize("compression", ["bslz4", "gzip", "none"])
def test_results_and_arrays_round_trip(tmp_path: Path, compression: str) -> None:
    results = [result(s) for s in range(7)]
    with make_store(tmp_path, compression=compression) as store:
        store.write_results("xrd", results[:5])
        store.write_results("xrd", results[5:])
        store.write_results("stats", [result(s, "stats") for s in range(3)])
    with RunReader(tmp_path / "run.h5") as reader:
        assert reader.pipelines() == ["stats", "xrd"]
        assert reader.schema("xrd") == ResultSchema(
            scalars=("peak_pos", "fwhm"),
            arrays=(ArraySpec("mask", (8, 6), "|u1"), ArraySpec("roi", (4, 4), "<f4")),
        )
        table = reader.results("xrd")
        assert table.dtype.names[-2:] == ("peak_pos", "fwhm")
        assert list(table["seq"]) == list(range(7))
        np.testing.assert_allclose(table["peak_pos"], [1.5 * s for s in range(7)])
        np.testing.assert_allclose(table["latency_compute"], [0.002 * s for s in range(7)])
        np.testing.assert_allclose(table["t_done"], table["t_received"] + 0.01 + table["latency_compute"])
        assert set(table["batch_size"]) == {2}
        mask, roi = reader.array("xrd", "mask"), reader.array("xrd", "roi")
        assert mask.shape == (7, 8, 6) and mask.dtype == np.uint8
        for s, r in enumerate(results):
            np.testing.assert_array_equal(mask[s], r.arrays["mask"])
            np.testing.assert_array_equal(roi[s], r.arrays["roi"])
        np.testing.assert_array_equal(reader.array("xrd", "roi", start=5)[0], results[5].arrays["roi"])
        assert list(reader.results("stats")["mean"]) == [0.0, 1.0, 2.0]
        ds = reader._entry["xrd"]["mask"]
        assert ds.chunks == (1, 8, 6)
        dcpl = ds.id.get_create_plist()
        filter_ids = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        assert filter_ids == {"bslz4": [32008], "gzip": [h5py.h5z.FILTER_DEFLATE], "none": []}[compression]


def test_missing_scalars_and_arrays_are_filled(tmp_path: Path) -> None:
    partial = Result(pipeline="xrd", frame=frame(0), scalars={"fwhm": 0.1})
    with make_store(tmp_path) as store:
        store.write_results("xrd", [partial, result(1)])
    with RunReader(tmp_path / "run.h5") as reader:
        row = reader.results("xrd")[0]
        assert math.isnan(row["peak_pos"]) and row["fwhm"] == pytest.approx(0.1)
        assert not reader.array("xrd", "mask")[0].any()
        assert reader.array("xrd", "mask").shape[0] == 2


def test_bad_results_are_refused_whole(tmp_path: Path) -> None:
    bad_shape = Result(pipeline="xrd", frame=frame(1), scalars={}, arrays={"mask": np.zeros((3, 3))})
    unknown = Result(pipeline="xrd", frame=frame(1), scalars={"nope": 1.0})
    with make_store(tmp_path) as store:
        for batch, pipeline in (([result(0), bad_shape], "xrd"), ([unknown], "xrd"), ([result(0)], "stats")):
            with pytest.raises(InvalidResult):
                store.write_results(pipeline, batch)
        with pytest.raises(InvalidResult, match="no schema"):
            store.write_results("missing", [result(0)])
        assert store.rows["xrd"] == 0 and store.rows["stats"] == 0


def test_alarms_round_trip_and_truncation(tmp_path: Path) -> None:
    long_msg = "é" * 200 + "☃" * 10  # 430 bytes of UTF-8, two-byte chars straddle the 256 cut
    events = [alarm_event(0, None), alarm_event(1, FrameRef("xrd-det", "xrd", "cycle-1", 5, 42))]
    odd = alarm_event(2, None)
    odd_alarm = Alarm(
        **{f: getattr(odd.alarm, f) for f in odd.alarm.__dataclass_fields__} | {"message": long_msg}
    )
    events.append(AlarmEvent(t=odd.t, transition="acknowledge", alarm=odd_alarm))
    with make_store(tmp_path) as store:
        store.write_alarm_events(events)
    with RunReader(tmp_path / "run.h5") as reader:
        got = reader.alarms()
        assert got[:2] == events[:2]
        assert got[0].alarm.frame is None and reader.alarm_rows()["seq"][0] == -1
        msg = got[2].alarm.message
        assert msg == "é" * 128 and "\ufffd" not in msg
        assert got[2].transition == "acknowledge"


def test_encode_str_never_splits_characters() -> None:
    for size in range(0, 12):
        raw = encode_str("a€b☃cé", size)
        assert len(raw) <= size
        raw.decode("utf-8")  # strict: must be valid
    assert encode_str("\ud800x", 8).decode("utf-8") == "?x"


def test_telemetry_round_trip(tmp_path: Path) -> None:
    snaps = [snapshot(i) for i in range(5)]
    with make_store(tmp_path) as store:
        store.write_telemetry(snaps[:2])
        store.write_telemetry(snaps[2:])
    with RunReader(tmp_path / "run.h5") as reader:
        got = reader.telemetry()
        assert len(got) == 5
        for a, b in zip(got, snaps, strict=True):
            assert math.isnan(a.latency_p99_ms)
            assert a == dataclasses.replace(b, latency_p99_ms=a.latency_p99_ms)


def test_by_reason_overflow_stays_valid_json() -> None:
    many = tuple((f"reason_{i:04d}_{'x' * 20}", i) for i in range(100))
    raw = encode_by_reason(many, (("drop_oldest", 1000),), size=1024)
    assert len(raw) <= 1024
    doc = json.loads(raw)
    assert doc["truncated"] is True and doc["skipped"] == {"drop_oldest": 1000}
    rejected, skipped = decode_by_reason(raw)
    assert ("reason_0099_" + "x" * 20, 99) in rejected and skipped == (("drop_oldest", 1000),)


def test_attrs(tmp_path: Path) -> None:
    make_store(tmp_path, run="cell-7", t_start=123.0).close()
    with RunReader(tmp_path / "run.h5") as reader:
        attrs = reader.attrs
        assert attrs.run == "cell-7" and attrs.t_start == 123.0 and attrs.format_version == 2
        assert attrs.config_toml.startswith("[store]")
        assert attrs.versions["monitor"] == "0.1.0"
        assert attrs.sources == ("xrd-det", "txm")
        assert not reader.recovered


def test_read_while_writer_open(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    try:
        store.write_dispositions([Disposition.for_frame(frame(s), "xrd", Status.PROCESSED) for s in range(5)])
        store.write_results("xrd", [result(s) for s in range(5)])
        store.flush()
        with RunReader(tmp_path / "run.h5") as reader:
            assert reader.accounted_seqs() == set(range(5))
            assert reader.array("xrd", "mask").shape == (5, 8, 6)
            # Written but not flushed: not yet committed, so not visible.
            store.write_dispositions(
                [Disposition.for_frame(frame(s), "xrd", Status.SKIPPED) for s in range(5, 9)]
            )
            store.write_results("xrd", [result(s) for s in range(5, 9)])
            store.write_telemetry([snapshot(0)])
            assert len(reader.frames()) == 5
            store.flush()
            assert reader.accounted_seqs() == set(range(9))
            assert reader.status_counts()["SKIPPED"] == 4
            assert len(reader.results("xrd")) == 9
            np.testing.assert_array_equal(reader.array("xrd", "mask")[8], result(8).arrays["mask"])
            assert len(reader.telemetry()) == 1
            assert reader.rows() == {"frames": 9, "alarms": 0, "telemetry": 1, "stats": 0, "xrd": 9}
    finally:
        store.close()
    with RunReader(tmp_path / "run.h5") as reader:
        assert reader.rows()["frames"] == 9


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.write_telemetry([snapshot(0)])
    with pytest.raises(StoreError, match="closed"):
        store.flush()


def test_refuses_to_clobber_and_bad_names(tmp_path: Path) -> None:
    make_store(tmp_path).close()
    with pytest.raises(StoreError, match="cannot create"):
        make_store(tmp_path)
    make_store(tmp_path, overwrite=True).close()
    settings = StoreSettings(compression="bslz4")
    for schemas in (
        {"frames": ResultSchema(("a",))},
        {"p": ResultSchema(("seq",))},
        {"a/b": ResultSchema(())},
    ):
        with pytest.raises(StoreError):
            RunStore(tmp_path / "bad.h5", settings, schemas, "", {}, [])
    bad_dtype = {"p": ResultSchema(("a",), (ArraySpec("m", (2,), "not-a-dtype"),))}
    with pytest.raises(StoreError, match="lay out"):
        RunStore(tmp_path / "bad.h5", settings, bad_dtype, "", {}, [])
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(StoreError, match="compression"):
        RunStore(tmp_path / "bad.h5", StoreSettings(compression="zstd"), {}, "", {}, [])  # type: ignore[arg-type]


def test_missing_file_and_not_a_run_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        RunReader(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not a run file"):
        RunReader(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreError, match="cannot open"):
        RunReader(tmp_path / "junk.h5")
    with pytest.raises(StoreError, match="no pipeline"):
        make_store(tmp_path).close()
        with RunReader(tmp_path / "run.h5") as reader:
            reader.results("nope")


def test_status_flags_and_lookup3(tmp_path: Path) -> None:
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
    store = make_store(tmp_path)
    assert status_flags(tmp_path / "run.h5") == 0x05  # write access + SWMR write
    store.close()
    assert status_flags(tmp_path / "run.h5") == 0
    assert clear_status_flags(tmp_path / "run.h5") is False


def test_every_alarm_transition_name_survives_the_store(tmp_path: Path) -> None:
    from monitor.alerts.model import TRANSITIONS

    events = [dataclasses.replace(alarm_event(i, None), transition=t) for i, t in enumerate(TRANSITIONS)]
    with make_store(tmp_path) as store:
        store.write_alarm_events(events)
        store.flush()
    with RunReader(tmp_path / "run.h5") as r:
        assert [e.transition for e in r.alarms()] == list(TRANSITIONS)


def test_results_carry_frame_metadata(tmp_path: Path) -> None:
    """Run metadata (bluesky scan_id, plan_name, ...) and wire metadata reach the results table."""
    import json as _json

    from monitor.frames import Frame, FrameMeta
    from monitor.pipelines.base import Result
    from monitor.store import RunReader
    from monitor.store.layout import meta_extra_json

    meta = FrameMeta(
        energy_eV=8340.5,
        current_mA=1.25,
        cycle=3,
        extra={"scan_id": 7, "plan_name": "count", "sample": "cell-A"},
    )
    f = Frame("s", "src", "ser", 0, np.zeros((2, 2), np.uint16), 0.0, 1.0, meta, seq=1)
    g = Frame("s", "src", "ser", 1, np.zeros((2, 2), np.uint16), 0.0, 1.0, seq=2)
    with make_store(tmp_path) as store:
        store.write_results("stats", [Result("stats", f, {"mean": 1.0}), Result("stats", g, {"mean": 2.0})])
        path = store.path
    rows = RunReader(path).results("stats")
    assert rows["meta_energy_eV"][0] == 8340.5 and np.isnan(rows["meta_energy_eV"][1])
    assert rows["meta_cycle"].tolist() == [3, -1] and rows["meta_current_mA"][0] == 1.25
    assert _json.loads(rows["meta_extra"][0]) == {"scan_id": 7, "plan_name": "count", "sample": "cell-A"}
    big = meta_extra_json({f"k{i}": "v" * 40 for i in range(40)})
    doc = _json.loads(big)
    assert len(big) <= 512 and doc["_truncated"] > 0
