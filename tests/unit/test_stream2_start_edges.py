"""Stream V2 start-message edges: a bad pixel mask / flatfield / LUT does not lose the start,
Jungfraujoch's ``error_value`` and Bitshuffle+Zstandard (``bszstd``) images.

Field names and types follow the DECTRIS stream_v2 README and Jungfraujoch ``docs/CBOR.md``
(``error_value`` int64 optional; "Bitshuffle+LZ4 and Bitshuffle+Zstandard are allowed"). The
bszstd bytes come from the real bitshuffle HDF5 filter with zstd (hdf5plugin), as Jungfraujoch
writes them for the HDF5 direct-chunk writer.
"""

from __future__ import annotations

import asyncio
import time

import cbor2
import numpy as np
import pytest
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, SeriesEvent
from monitor.sim.array10 import send_raw
from monitor.sim.stream2 import image_message, multi_dim_array, start_message
from monitor.sources.stream2 import SeriesInfo, SeriesStart, Stream2Source, decode_stream2

IDS = {"series_id": 3, "series_unique_id": "jfj-3"}
SHAPE = (8, 12)


def start_with(**extra: object) -> bytes:
    """A simulator start message with extra/overridden top-level fields."""
    base = cbor2.loads(start_message(**IDS, shape=SHAPE, dtype="int32", saturation_value=5000))
    msg = dict(base.value if isinstance(base, cbor2.CBORTag) else base)
    msg.update(extra)
    return cbor2.dumps(cbor2.CBORTag(55799, msg))


def decode(message: bytes, series: SeriesInfo | None = None):  # type: ignore[no-untyped-def]
    return decode_stream2(message, source="jfj", series=series, max_frame_bytes=1 << 20, t_received=1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"pixel_mask": {"threshold_1": "not an array"}},
        {"pixel_mask": {"threshold_1": multi_dim_array(np.zeros((3, 3), np.uint32), "none")}},  # wrong shape
        {"flatfield": {"threshold_1": [1, 2, "x"]}},
        {"countrate_correction_lookup_table": b"\x00\x01garbage"},
    ],
)
def test_malformed_start_arrays_keep_the_start(bad: dict) -> None:
    event = decode(start_with(**bad, error_value=-1))
    assert isinstance(event, SeriesStart)
    info = event.info
    assert info.shape == SHAPE and info.saturation_value == 5000 and info.incident_energy_eV
    assert info.threshold_energy_eV == 6200.0 and info.error_value == -1
    assert bool(info.mask_error) == ("pixel_mask" in bad)


@pytest.mark.parametrize("compression", ["bszstd", "bslz4", "none"])
def test_error_value_pixels_are_invalid(compression: str) -> None:
    start = decode(start_with(error_value=-(2**31)))
    assert isinstance(start, SeriesStart)
    a = np.arange(SHAPE[0] * SHAPE[1], dtype=np.int32).reshape(SHAPE)
    a[2, 3] = a[5, 7] = -(2**31)  # Jungfraujoch marks error/missing pixels with error_value
    a[0, 0] = 6000  # above saturation_value: invalid too
    frame = decode(image_message({"threshold_1": a}, **IDS, image_id=0, compression=compression), start.info)
    assert isinstance(frame, Frame)
    expected = a.copy()
    expected[2, 3] = expected[5, 7] = expected[0, 0] = 0
    assert np.array_equal(frame.array, expected)
    assert frame.meta.extra["invalid_pixels"] == 3


def test_bszstd_round_trips_every_dtype() -> None:
    for dtype in ("uint8", "uint16", "uint32", "int32", "float32"):
        a = (np.random.default_rng(1).poisson(3, size=SHAPE)).astype(dtype)
        frame = decode(image_message({"threshold_1": a}, **IDS, image_id=1, compression="bszstd"))
        assert isinstance(frame, Frame) and np.array_equal(frame.array, a), dtype


async def test_source_logs_and_counts_a_bad_mask_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    ctx = zmq.asyncio.Context()
    src = Stream2Source(
        SourceSettings(name="jfj", kind="stream2", endpoint="tcp://127.0.0.1:0", mode="bind"), ctx
    )
    endpoint = src.open()
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(src.run(emit, stop))
    a = np.full(SHAPE, 7, np.int32)
    msgs = [[start_with(pixel_mask={"threshold_1": [1, 2]})]]
    msgs += [[image_message({"threshold_1": a}, **IDS, image_id=i, compression="bszstd")] for i in range(3)]
    try:
        await asyncio.to_thread(send_raw, endpoint, msgs)
        deadline = time.monotonic() + 10
        while len(events) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
        ctx.destroy(0)
    assert isinstance(events[0], SeriesEvent) and events[0].kind == "start"
    frames = [e for e in events if isinstance(e, Frame)]
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.meta.extra["saturation_value"] == 5000 for f in frames)
    assert src.start_problems == {"bad_pixel_mask": 1}
    assert any("WITHOUT a pixel mask" in r.getMessage() for r in caplog.records)
