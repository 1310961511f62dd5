"""decode_stream2: compression round trips checked against dectris-compression, one test per reason."""

from __future__ import annotations

import datetime

import cbor2
import numpy as np
import pytest
from dectris.compression import decompress

from monitor.errors import FrameRejected
from monitor.frames import Frame, SeriesEvent
from monitor.sim.stream2 import (
    compress,
    detector_frames,
    detector_mask,
    end_message,
    image_message,
    multi_dim_array,
    start_message,
)
from monitor.sources.cbor_arrays import TYPED_ARRAY_DTYPES, TYPED_ARRAY_TAGS
from monitor.sources.stream2 import (
    REASONS,
    Ignored,
    SeriesInfo,
    SeriesStart,
    Stream2Rejected,
    clean_pixels,
    decode_stream2,
)

MAX = 1 << 20
IDS = {"series_id": 7, "series_unique_id": "ser-7"}
SHAPE = (6, 10)
SELF_DESCRIBE = b"\xd9\xd9\xf7"


def decode(message: bytes, *, series: SeriesInfo | None = None, max_frame_bytes: int = MAX, **kw: object):
    return decode_stream2(
        message, source="det", series=series, max_frame_bytes=max_frame_bytes, t_received=50.0, **kw
    )  # type: ignore[arg-type]


def start_info(**kw: object) -> SeriesInfo:
    args: dict[str, object] = {"shape": SHAPE, "dtype": "uint16"} | IDS | kw
    event = decode(start_message(**args))  # type: ignore[arg-type]
    assert isinstance(event, SeriesStart)
    return event.info


def ramp(dtype: str = "uint16", shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return (np.arange(shape[0] * shape[1]) % 97).astype(dtype).reshape(shape)


def image(data: dict[str, np.ndarray] | np.ndarray, compression: str = "bslz4", **kw: object) -> bytes:
    channels = data if isinstance(data, dict) else {"threshold_1": data}
    args: dict[str, object] = IDS | {"image_id": 3} | kw
    return image_message(channels, compression=compression, **args)  # type: ignore[arg-type]


def raw_message(msg: object) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(55799, msg))


def image_map(data: object, **kw: object) -> dict[str, object]:
    return {"type": "image", **IDS, "image_id": 3, "data": {"threshold_1": data}} | kw


def rejected(message: bytes, **kw: object) -> FrameRejected:
    with pytest.raises(FrameRejected) as info:
        decode(message, **kw)  # type: ignore[arg-type]
    assert info.value.reason in REASONS and info.value.detail
    return info.value


# --- compression: our encoder's bytes are what dectris-compression decodes -------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32"])
@pytest.mark.parametrize("algorithm", ["bslz4", "lz4"])
def test_encoded_bytes_are_hdf5_framed_and_decoded_by_dectris_compression(dtype: str, algorithm: str) -> None:
    a = np.clip(next(detector_frames((300, 170), dtype="uint32", seed=3)), 0, 250).astype(dtype)
    data = compress(a, algorithm)
    assert int.from_bytes(data[:8], "big") == a.nbytes  # HDF5 framing: total size, block size, blocks
    block = int.from_bytes(data[8:12], "big")
    assert block > 0 and (algorithm == "lz4" or block % a.dtype.itemsize == 0)
    assert decompress(data, algorithm, elem_size=a.dtype.itemsize) == a.tobytes()
    assert len(data) < a.nbytes


@pytest.mark.parametrize("dtype", sorted(TYPED_ARRAY_TAGS))
@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
def test_every_dtype_and_compression_round_trips(dtype: str, compression: str) -> None:
    a = ramp(dtype)
    frame = decode(image(a, compression))
    assert isinstance(frame, Frame)
    assert frame.array.dtype == np.dtype(dtype) and frame.array.dtype.isnative
    np.testing.assert_array_equal(frame.array, a)
    assert (frame.index, frame.series, frame.source, frame.stream) == (3, "ser-7", "det", "frames")


def test_tag_layout_matches_the_detector() -> None:
    """tag 40 [[y, x], tag 70 (uint32 LE) tag 56500 ["bslz4", 4, bytes]] inside a self-described map."""
    a = ramp("uint32", (3, 5))
    msg = image(a)
    assert msg.startswith(SELF_DESCRIBE)
    top = cbor2.loads(msg)
    assert next(iter(top)) == "type"
    tag40 = top["data"]["threshold_1"]
    assert tag40.tag == 40 and list(tag40.value[0]) == [3, 5]
    typed = tag40.value[1]
    assert typed.tag == 70 and typed.value.tag == 56500
    algorithm, elem_size, data = typed.value.value
    assert (algorithm, elem_size) == ("bslz4", 4)
    assert np.array_equal(np.frombuffer(decompress(data, "bslz4", elem_size=4), "<u4").reshape(3, 5), a)


@pytest.mark.parametrize(("tag", "dtype"), [(65, ">u2"), (66, ">u4"), (73, ">i2"), (81, ">f4"), (82, ">f8")])
def test_big_endian_typed_arrays_become_native(tag: int, dtype: str) -> None:
    a = ramp("float64").astype(dtype)
    msg = raw_message(image_map(cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(tag, a.tobytes())])))
    frame = decode(msg)
    assert frame.array.dtype.isnative and TYPED_ARRAY_DTYPES[tag] == np.dtype(dtype)
    np.testing.assert_array_equal(frame.array, a)


def test_column_major_tag_1040() -> None:
    a = ramp("uint16")
    content = cbor2.CBORTag(69, np.asfortranarray(a).tobytes(order="F"))
    frame = decode(raw_message(image_map(cbor2.CBORTag(1040, [list(SHAPE), content]))))
    np.testing.assert_array_equal(frame.array, a)
    assert frame.array.flags.c_contiguous


def test_raw_frames_are_zero_copy_when_nothing_to_clean() -> None:
    msg = image(ramp(), "none")
    frame = decode(msg)
    assert not frame.array.flags.writeable  # a view of the decoded byte string, not a copy


def test_message_without_self_describe_prefix() -> None:
    msg = image(ramp())
    assert isinstance(decode(msg[len(SELF_DESCRIBE) :]), Frame)


# --- series, channels, metadata -------------------------------------------------------------


def test_start_and_end_messages() -> None:
    mask = detector_mask(SHAPE, dead=3)
    start = decode(
        start_message(
            **IDS, shape=SHAPE, dtype="uint16", channels=["threshold_1", "threshold_2"],
            number_of_images=9, saturation_value=1000, pixel_mask={"threshold_1": mask, "threshold_2": mask},
            incident_energy=8979.0,
        )
    )  # fmt: skip
    assert isinstance(start, SeriesStart)
    assert start.event == SeriesEvent("det", "ser-7", "start", 50.0)
    info = start.info
    assert (info.channel, info.channels, info.shape, info.number_of_images) == (
        "threshold_1", ("threshold_1", "threshold_2"), SHAPE, 9,
    )  # fmt: skip
    assert (info.saturation_value, info.incident_energy_eV, info.threshold_energy_eV) == (
        1000,
        8979.0,
        6200.0,
    )
    np.testing.assert_array_equal(info.mask_index, np.flatnonzero(mask))
    assert decode(end_message(**IDS)) == SeriesEvent("det", "ser-7", "end", 50.0)


def test_series_name_falls_back_to_series_id() -> None:
    assert decode(end_message(series_id=12, series_unique_id="")).series == "12"


def test_routes_the_configured_channel() -> None:
    a, b = ramp(), ramp() * 2
    msg = image({"threshold_1": a, "threshold_2": b})
    np.testing.assert_array_equal(decode(msg).array, a)  # default: the first channel
    frame = decode(msg, channel="threshold_2")
    np.testing.assert_array_equal(frame.array, b)
    assert frame.meta.extra["channel"] == "threshold_2" and frame.stream == "frames"
    assert decode(msg, channel="threshold_2", stream="").stream == "threshold_2"


def test_default_channel_is_the_start_message_first_channel() -> None:
    info = start_info(channels=["threshold_2", "threshold_1"])
    frame = decode(image({"threshold_1": ramp(), "threshold_2": ramp() + 1}), series=info)
    assert frame.meta.extra["channel"] == "threshold_2"


def test_mask_and_saturation() -> None:
    """Masked pixels -> 0 (counted); above saturation -> 0 (counted); at saturation kept."""
    mask = np.zeros(SHAPE, dtype=np.uint32)
    mask[0, :4] = 1  # a gap
    mask[5, 9] = 2  # a dead pixel
    info = start_info(saturation_value=1000, pixel_mask={"threshold_1": mask})
    a = np.full(SHAPE, 10, dtype=np.uint16)
    a[mask != 0] = 65535  # the detector's NODATA value on masked pixels
    a[2, 2] = 1000  # saturated: valid
    a[3, 3] = 4000  # above the saturation value, not masked: invalid
    frame = decode(image(a), series=info)
    expected = a.copy()
    expected[mask != 0] = 0
    expected[3, 3] = 0
    np.testing.assert_array_equal(frame.array, expected)
    extra = frame.meta.extra
    assert (extra["masked_pixels"], extra["invalid_pixels"], extra["saturation_value"]) == (5, 1, 1000)
    assert frame.meta.energy_eV == 12398.4


def test_without_start_only_nodata_is_invalid() -> None:
    a = np.full(SHAPE, 60000, dtype=np.uint16)
    a[0, 0] = 65535
    frame = decode(image(a))
    assert frame.array[0, 0] == 0 and frame.array[0, 1] == 60000
    assert (frame.meta.extra["invalid_pixels"], frame.meta.extra["masked_pixels"]) == (1, 0)
    assert "saturation_value" not in frame.meta.extra


def test_float_images_have_no_invalid_threshold_without_start() -> None:
    a = np.full(SHAPE, 3.0e38, dtype=np.float32)
    np.testing.assert_array_equal(decode(image(a)).array, a)


def test_image_of_another_series_is_decoded_without_its_start() -> None:
    mask = np.ones(SHAPE, dtype=np.uint32)
    info = start_info(pixel_mask={"threshold_1": mask}, series_unique_id="other")
    frame = decode(image(ramp()), series=info)
    np.testing.assert_array_equal(frame.array, ramp())
    assert frame.series == "ser-7" and frame.meta.extra["masked_pixels"] == 0


def test_clean_pixels_leaves_clean_arrays_alone() -> None:
    a = ramp()
    out, masked, invalid = clean_pixels(a, np.empty(0, dtype=np.intp), 1000)
    assert out is a and (masked, invalid) == (0, 0)


def test_detector_time_and_user_data() -> None:
    date = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    user = {"cycle": 4, "current_mA": -1.5, "sample": "NMC811", "nested": {"x": 1}}
    frame = decode(image(ramp(), image_id=2, series_date=date, user_data=user))
    assert frame.t_detector == pytest.approx(date.timestamp() + (3 * 5_000_000 - 5) / 50e6)
    assert (frame.meta.cycle, frame.meta.current_mA) == (4, -1.5)
    assert frame.meta.extra["user_sample"] == "NMC811" and "user_nested" not in frame.meta.extra
    assert frame.meta.extra["real_time_s"] == pytest.approx(0.0999999)


def test_unknown_message_types_are_ignored() -> None:
    assert decode(raw_message({"type": "calibration", "data": 1})) == Ignored("calibration")


def test_shape_checked_against_start() -> None:
    info = start_info()
    assert rejected(image(ramp(shape=(10, 6))), series=info).reason == "bad_shape"


# --- one test per reason code ----------------------------------------------------------------


def test_bad_buffer() -> None:
    assert rejected(12345).reason == "bad_buffer"  # type: ignore[arg-type]


def test_oversize_message_and_declared_frame() -> None:
    assert rejected(bytes(1100), max_frame_bytes=10).reason != "oversize"  # within 4x + 1 MiB
    assert rejected(bytes(5 * 1024 * 1024), max_frame_bytes=100).reason == "oversize"
    huge = image_map(cbor2.CBORTag(40, [[100_000, 100_000], cbor2.CBORTag(70, b"")]))
    exc = rejected(raw_message(huge))
    assert exc.reason == "oversize" and isinstance(exc, Stream2Rejected) and exc.index == 3


@pytest.mark.parametrize(
    "message", [b"", b"\xff", b"\x9f\x01", b"\xa2\x61", b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff"]
)
def test_bad_cbor(message: bytes) -> None:
    assert rejected(message).reason == "bad_cbor"


@pytest.mark.parametrize("item", [[1, 2], "image", 5, None])
def test_not_a_map(item: object) -> None:
    assert rejected(raw_message(item)).reason == "not_a_map"


@pytest.mark.parametrize("kind", [None, 5, b"image"])
def test_bad_type(kind: object) -> None:
    assert (
        rejected(raw_message({"type": kind} if kind is not None else {"series_id": 1})).reason == "bad_type"
    )


@pytest.mark.parametrize("ids", [{"series_id": "7"}, {"series_id": -5}, {"series_unique_id": 7}])
def test_bad_series(ids: dict[str, object]) -> None:
    assert rejected(raw_message({"type": "end"} | ids)).reason == "bad_series"
    exc = rejected(raw_message(image_map(multi_dim_array(ramp()), **ids)))
    assert exc.reason == "bad_series" and isinstance(exc, Stream2Rejected) and exc.index == 3


@pytest.mark.parametrize("image_id", [None, -1, 1.0, "3", True])
def test_bad_image_id(image_id: object) -> None:
    msg = image_map(multi_dim_array(ramp()), image_id=image_id)
    assert rejected(raw_message(msg)).reason == "bad_image_id"


def test_missing_channel() -> None:
    assert rejected(image(ramp()), channel="threshold_9").reason == "missing_channel"
    assert rejected(raw_message(image_map(None) | {"data": {}})).reason == "missing_channel"
    assert rejected(raw_message(image_map(None) | {"data": [1]})).reason == "missing_channel"
    msg = start_message(**IDS, shape=SHAPE, channels=["threshold_1"])
    assert rejected(msg, channel="threshold_2").reason == "missing_channel"


@pytest.mark.parametrize(
    "data",
    [
        b"raw bytes",
        cbor2.CBORTag(69, bytes(120)),
        cbor2.CBORTag(40, [list(SHAPE)]),
        cbor2.CBORTag(40, "nope"),
        cbor2.CBORTag(69, "text"),
    ],
)
def test_bad_array(data: object) -> None:
    assert rejected(raw_message(image_map(data))).reason == "bad_array"


@pytest.mark.parametrize(
    "content", [cbor2.CBORTag(76, bytes(120)), cbor2.CBORTag(87, bytes(960)), list(range(60))]
)
def test_bad_dtype(content: object) -> None:
    assert rejected(raw_message(image_map(cbor2.CBORTag(40, [list(SHAPE), content])))).reason == "bad_dtype"


@pytest.mark.parametrize("dims", [[60], [1, 6, 10], [0, 10], [6, -10], [6.0, 10], [True, 60]])
def test_bad_shape(dims: list[object]) -> None:
    msg = image_map(cbor2.CBORTag(40, [dims, cbor2.CBORTag(69, bytes(120))]))
    assert rejected(raw_message(msg)).reason == "bad_shape"


def test_size_mismatch_raw_and_compressed() -> None:
    short = image_map(cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, bytes(118))]))
    assert rejected(raw_message(short)).reason == "size_mismatch"
    # A valid bslz4 stream of a different size: refused from its header, before decompressing.
    other = compress(ramp(shape=(6, 11)), "bslz4")
    wrong = image_map(
        cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, other]))])
    )
    exc = rejected(raw_message(wrong))
    assert exc.reason == "size_mismatch" and "declares" in exc.detail


def _compressed(algorithm: object, elem_size: object, data: object) -> bytes:
    tag = cbor2.CBORTag(56500, [algorithm, elem_size, data])
    return raw_message(image_map(cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, tag)])))


def test_bad_compression() -> None:
    good = compress(ramp(), "bslz4")
    corrupt = good[:12] + bytes(len(good) - 12)
    for msg in [
        _compressed("zstd", 2, good),
        _compressed("bslz4", 3, good),
        _compressed("bslz4", 2, good[:8]),
        _compressed("bslz4", 2, corrupt),
        _compressed("bslz4", 2, good[:-4]),
        _compressed("lz4", 0, good[:12] + b"\x00\x00\x00\x05abcde"),
        _compressed(1, 2, good),
        _compressed("bslz4", "2", good),
        raw_message(
            image_map(cbor2.CBORTag(40, [list(SHAPE), cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4"]))]))
        ),
    ]:
        assert rejected(msg).reason == "bad_compression"


@pytest.mark.parametrize(
    "fields",
    [
        {"incident_energy": "12 keV"},
        {"count_time": float("inf")},
        {"number_of_images": -1},
        {"saturation_value": 1.5},
        {"channels": "threshold_1"},
        {"channels": [1]},
        {"threshold_energy": [6200.0]},
        {"image_size_x": "2068"},
    ],
)
def test_bad_metadata_in_start(fields: dict[str, object]) -> None:
    msg = {"type": "start", **IDS, "image_size_x": 10, "image_size_y": 6} | fields
    assert rejected(raw_message(msg)).reason == "bad_metadata"


@pytest.mark.parametrize("field", ["start_time", "stop_time", "real_time"])
@pytest.mark.parametrize("value", [[1, 0], [1], "1/2", [1.5, 2], [-1, 2]])
def test_bad_metadata_in_image(field: str, value: object) -> None:
    msg = image_map(multi_dim_array(ramp())) | {field: value}
    assert rejected(raw_message(msg)).reason == "bad_metadata"


@pytest.mark.parametrize(
    "mask",
    [
        [1, 2, 3],
        cbor2.CBORTag(40, [[6, 11], cbor2.CBORTag(70, bytes(6 * 11 * 4))]),
        cbor2.CBORTag(40, [[6, 10], cbor2.CBORTag(85, bytes(240))]),
        cbor2.CBORTag(40, [[6, 10], cbor2.CBORTag(70, bytes(7))]),
    ],
)
def test_bad_pixel_mask_keeps_the_start(mask: object) -> None:
    """A malformed mask loses only the mask: shape, saturation, energy, thresholds survive."""
    msg = {
        "type": "start", **IDS, "channels": ["threshold_1"], "image_size_x": 10, "image_size_y": 6,
        "saturation_value": 1234, "incident_energy": 8979.0, "threshold_energy": {"threshold_1": 4500.0},
    }  # fmt: skip
    for bad in ({"pixel_mask": {"threshold_1": mask}}, {"pixel_mask": mask}):
        event = decode(raw_message(msg | bad))
        assert isinstance(event, SeriesStart)
        info = event.info
        assert info.mask_error and info.mask_index.size == 0
        assert (info.shape, info.saturation_value) == ((6, 10), 1234)
        assert (info.incident_energy_eV, info.threshold_energy_eV) == (8979.0, 4500.0)


def test_every_reason_has_a_test() -> None:
    tested = {
        "bad_buffer", "oversize", "bad_cbor", "not_a_map", "bad_type", "bad_series", "bad_image_id",
        "missing_channel", "bad_array", "bad_dtype", "bad_shape", "size_mismatch", "bad_compression",
        "bad_metadata",
    }  # fmt: skip
    assert set(REASONS) - tested == {"extra_parts"}  # source level: tests/system/test_stream2_source.py


# --- configuration ----------------------------------------------------------------------------


def test_config_and_daemon_build_a_stream2_source() -> None:
    import zmq.asyncio

    from monitor.config import config_from_dict
    from monitor.daemon import build_source
    from monitor.errors import ConfigError
    from monitor.sources.stream2 import Stream2Source

    source = {
        "name": "eiger",
        "kind": "stream2",
        "endpoint": "tcp://127.0.0.1:31001",
        "channel": "threshold_2",
    }
    cfg = config_from_dict({"sources": [source]})
    assert cfg.sources[0].channel == "threshold_2"
    ctx = zmq.asyncio.Context()
    try:
        built = build_source(cfg.sources[0], ctx)
        assert isinstance(built, Stream2Source) and built.settings.channel == "threshold_2"
    finally:
        ctx.destroy(linger=0)
    with pytest.raises(ConfigError, match=r"sources\[0\].endpoint"):
        config_from_dict({"sources": [{"name": "eiger", "kind": "stream2"}]})
    with pytest.raises(ConfigError, match=r"sources\[0\].channel"):
        config_from_dict({"sources": [source | {"channel": " threshold_1"}]})


def test_non_contiguous_buffer_is_bad_buffer() -> None:
    strided = memoryview(np.frombuffer(image(ramp()), dtype=np.uint8)[::2])
    assert rejected(strided).reason == "bad_buffer"  # type: ignore[arg-type]


def test_simulated_eiger2_4m_geometry() -> None:
    from monitor.sim.stream2 import EIGER2_4M

    mask = detector_mask(EIGER2_4M, dead=0)
    gap_rows = np.flatnonzero(mask.all(axis=1))
    gap_cols = np.flatnonzero(mask.all(axis=0))
    assert EIGER2_4M == (4 * 512 + 3 * 38, 2 * 1028 + 12)  # 2162 rows (y) x 2068 columns (x)
    assert list(gap_rows[::38]) == [512, 1062, 1612] and gap_rows.size == 3 * 38
    assert list(gap_cols) == list(range(1028, 1040))
