"""decode_array10: one test per rejection reason, good frames of every kind, and a fuzz property."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import FrameRejected
from monitor.frames import Frame, SeriesEvent
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.sources.array10 import DTYPES, REASONS, Array10Rejected, decode_array10

MAX = 1 << 20


def decode(parts, *, max_frame_bytes: int = MAX, default_stream: str = "frames"):
    return decode_array10(
        parts, source="det1", default_stream=default_stream, max_frame_bytes=max_frame_bytes, t_received=123.5
    )


def header(**overrides) -> dict:
    h = {"htype": "array-1.0", "type": "uint16", "shape": [3, 4], "frame": 7}
    h.update(overrides)
    return {k: v for k, v in h.items() if v is not ...}


def msg(h: dict | bytes, data: bytes | None = None) -> list[bytes]:
    raw = h if isinstance(h, bytes) else json.dumps(h).encode()
    return [raw, bytes(24) if data is None else data]


def rejected(parts, **kw) -> FrameRejected:
    with pytest.raises(FrameRejected) as info:
        decode(parts, **kw)
    assert info.value.detail, "every rejection carries a human-readable detail"
    assert info.value.reason in REASONS
    return info.value


# --- one test per reason code ------------------------------------------------------------


def test_missing_parts_empty_message() -> None:
    assert rejected([]).reason == "missing_parts"


def test_missing_parts_header_only() -> None:
    assert rejected([json.dumps(header()).encode()]).reason == "missing_parts"


def test_extra_parts() -> None:
    assert rejected([*msg(header()), b"trailer"]).reason == "extra_parts"


def test_extra_parts_on_control_message() -> None:
    assert rejected([*series_start("s1"), b"x"]).reason == "extra_parts"


@pytest.mark.parametrize("raw", [b"\xff\xfe{", b"{not json", b"", b'{"htype": "array-1.0"'])
def test_bad_json(raw: bytes) -> None:
    assert rejected(msg(raw)).reason == "bad_json"


@pytest.mark.parametrize("raw", [b"[1, 2]", b"42", b'"array-1.0"', b"null"])
def test_not_an_object(raw: bytes) -> None:
    assert rejected(msg(raw)).reason == "not_an_object"


@pytest.mark.parametrize("htype", [..., "array-2.0", None, 5, ["array-1.0", "x"], []])
def test_bad_htype(htype: object) -> None:
    assert rejected(msg(header(htype=htype))).reason == "bad_htype"


@pytest.mark.parametrize("dtype", [..., "complex64", "float16", "bool", 16, "<u2"])
def test_bad_dtype(dtype: object) -> None:
    assert rejected(msg(header(type=dtype))).reason == "bad_dtype"


@pytest.mark.parametrize(
    "shape", [..., [], [12], [2, 3, 4], [3, 0], [3, -4], [3.0, 4], "3x4", [True, 12], [1, 1, 3, 4]]
)
def test_bad_shape(shape: object) -> None:
    assert rejected(msg(header(shape=shape))).reason == "bad_shape"


@pytest.mark.parametrize("nbytes", [0, 23, 25, 48])
def test_size_mismatch(nbytes: int) -> None:
    exc = rejected(msg(header(), bytes(nbytes)))
    assert exc.reason == "size_mismatch"
    assert isinstance(exc, Array10Rejected) and exc.index == 7


def test_oversize_declared_is_checked_before_the_data() -> None:
    # A tiny data part: the declared size alone must trigger the rejection.
    exc = rejected(msg(header(shape=[100_000, 100_000], type="float64"), b"x"))
    assert exc.reason == "oversize"
    assert rejected(msg(header(shape=[2**40, 2**40]), b"")).reason == "oversize"


def test_oversize_actual() -> None:
    assert rejected(msg(header(), bytes(200)), max_frame_bytes=100).reason == "oversize"


@pytest.mark.parametrize("key", ["endianness", "endianess"])
@pytest.mark.parametrize("value", ["middle", "LITTLE", None, 1])
def test_bad_endianness(key: str, value: object) -> None:
    assert rejected(msg(header(**{key: value}))).reason == "bad_endianness"


@pytest.mark.parametrize("encoding", ["jpeg", "h264", None, 0])
def test_unsupported_encoding(encoding: object) -> None:
    exc = rejected(msg(header(encoding=encoding)))
    assert exc.reason == "unsupported_encoding"
    assert "lossy" in exc.detail if encoding == "jpeg" else "encoding" in exc.detail


@pytest.mark.parametrize("encoding", ["lz4", "bslz4", "blosc", "lz4hdf5", "zlib"])
def test_bad_compression(encoding: str) -> None:
    """24 bytes that are not a valid stream of the named codec (tests/unit/test_ad_codec.py: valid ones)."""
    assert rejected(msg(header(encoding=encoding), b"\xff" * 24)).reason == "bad_compression"


@pytest.mark.parametrize("frame", [-1, 1.5, "7", None, True, 2**64])
def test_bad_frame_number(frame: object) -> None:
    assert rejected(msg(header(frame=frame))).reason == "bad_frame_number"


@pytest.mark.parametrize(
    "extra",
    [
        {"energy_eV": "8 keV"},
        {"slice_z": None},
        {"current_mA": True},
        {"energy_eV": float("nan")},
        {"cycle": 1.5},
        {"step": "3"},
        {"stream": 5},
        {"stream": ""},
        {"series": ["a"]},
        {"timeStamp": "yesterday"},
        {"ndattr": [1, 2]},
        {"energy_eV": 10**400},
    ],
)
def test_bad_metadata(extra: dict) -> None:
    assert rejected(msg(header(**extra))).reason == "bad_metadata"


def test_bad_metadata_on_control_message() -> None:
    parts = [json.dumps({"htype": "series-end-1.0", "series": 3}).encode()]
    assert rejected(parts).reason == "bad_metadata"


def test_rejection_carries_identity_for_accounting() -> None:
    exc = rejected(msg(header(stream="xrd", series="run9", type="uint32")))  # 12 px * 4 != 24
    assert isinstance(exc, Array10Rejected)
    assert (exc.reason, exc.index, exc.stream, exc.series) == ("size_mismatch", 7, "xrd", "run9")


def test_all_listed_reasons_have_tests() -> None:
    tested = {
        "missing_parts", "extra_parts", "bad_json", "not_an_object", "bad_htype", "bad_dtype", "bad_shape",
        "size_mismatch", "oversize", "bad_endianness", "unsupported_encoding", "bad_frame_number",
        "bad_metadata", "bad_compression",
    }  # fmt: skip
    assert tested <= set(REASONS)
    assert set(REASONS) - tested == {"bad_buffer"}  # only reachable with non-contiguous buffers


# --- good frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_round_trips(dtype: str) -> None:
    rng = np.random.default_rng(1)
    a = (rng.random((5, 7)) * 100).astype(dtype)
    frame = decode(encode_array10(a, frame=3, timestamp=10.25))
    assert isinstance(frame, Frame)
    assert frame.array.dtype == np.dtype(dtype) and frame.array.shape == (5, 7)
    np.testing.assert_array_equal(frame.array, a)
    assert (frame.index, frame.t_detector, frame.t_received) == (3, 10.25, 123.5)
    assert (frame.source, frame.stream, frame.series) == ("det1", "frames", "")


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "float64", "uint64"])
def test_big_endian_converted_to_native(dtype: str) -> None:
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    parts = msg(header(type=dtype, endianness="big"), a.astype(np.dtype(dtype).newbyteorder(">")).tobytes())
    frame = decode(parts)
    assert frame.array.dtype.isnative
    np.testing.assert_array_equal(frame.array, a)


def test_misspelled_endianess_key_is_accepted() -> None:
    a = np.arange(12, dtype=">u2").reshape(3, 4)
    frame = decode(msg(header(endianess="big"), a.tobytes()))
    np.testing.assert_array_equal(frame.array, a.astype("u2"))


def test_little_endian_is_zero_copy_bytes() -> None:
    parts = msg(header(), np.arange(12, dtype="<u2").tobytes())
    frame = decode(parts)
    assert frame.array.base is not None
    assert np.shares_memory(frame.array, np.frombuffer(parts[1], dtype=np.uint8))
    assert not frame.array.flags.writeable


def test_little_endian_is_zero_copy_memoryview() -> None:
    buf = bytearray(np.arange(12, dtype="<u2").tobytes())
    frame = decode([json.dumps(header()).encode(), memoryview(buf)])
    buf[0] = 99  # the frame is a view of the receive buffer, not a copy
    assert frame.array[0, 0] == 99


def test_three_d_with_leading_one() -> None:
    a = np.arange(12, dtype="u2").reshape(3, 4)
    frame = decode(msg(header(shape=[1, 3, 4]), a.tobytes()))
    assert frame.array.shape == (3, 4)
    np.testing.assert_array_equal(frame.array, a)


def test_pre_1_4_list_htype_with_x_y_shape() -> None:
    a = np.arange(12, dtype="u2").reshape(3, 4)  # 3 rows (y), 4 columns (x)
    frame = decode(msg(header(htype=["array-1.0"], shape=[4, 3]), a.tobytes()))
    assert frame.array.shape == (3, 4)
    np.testing.assert_array_equal(frame.array, a)


def test_metadata_stream_series_and_ndattr() -> None:
    a = np.ones((3, 4), dtype="u2")
    meta = {"energy_eV": 8979, "slice_z": 1.5, "cycle": 2, "step": 11, "current_mA": -0.25}
    meta |= {"sample": "NMC811", "T_C": 25.5, "ok": True, "n": 4}
    parts = encode_array10(a, frame=0, stream="xrd", series="scan42", meta=meta, timestamp=5.0)
    h = json.loads(parts[0])
    h["ndattr"]["nested"] = {"drop": "me"}
    h["ndattr"]["listy"] = [1, 2]
    frame = decode([json.dumps(h).encode(), parts[1]])
    m = frame.meta
    assert (m.energy_eV, m.slice_z, m.cycle, m.step, m.current_mA) == (8979.0, 1.5, 2, 11, -0.25)
    assert dict(m.extra) == {"sample": "NMC811", "T_C": 25.5, "ok": True, "n": 4}
    assert (frame.stream, frame.series, frame.t_detector) == ("xrd", "scan42", 5.0)


def test_missing_frame_number_and_timestamp() -> None:
    frame = decode(msg(header(frame=...)))
    assert frame.index == -1 and frame.t_detector == 123.5


def test_empty_encoding_and_explicit_little_endianness_accepted() -> None:
    assert isinstance(decode(msg(header(encoding="", endianness="little"))), Frame)


@pytest.mark.parametrize("series", ["", "run-1"])
@pytest.mark.parametrize(("make", "kind"), [(series_start, "start"), (series_end, "end")])
def test_series_control_messages(make, kind: str, series: str) -> None:
    event = decode(make(series))
    assert event == SeriesEvent(source="det1", series=series, kind=kind, t_received=123.5)


def test_legacy_list_htype_control_message() -> None:
    event = decode([b'{"htype": ["series-start-1.0"], "series": "a"}'])
    assert isinstance(event, SeriesEvent) and event.kind == "start"


# --- property: arbitrary input never escapes as anything but FrameRejected ------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_values = st.recursive(
    _json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c), max_leaves=8
)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "htype": st.sampled_from(["array-1.0", ["array-1.0"], "series-start-1.0", "series-end-1.0"])
        | _values,
        "type": st.sampled_from(list(DTYPES)) | _values,
        "shape": st.lists(st.integers(-2, 6), max_size=4) | _values,
        "frame": st.integers(-3, 2**70) | _values,
        "endianness": st.sampled_from(["little", "big"]) | _values,
        "encoding": st.sampled_from(["", "lz4"]) | _values,
        "energy_eV": _values,
        "cycle": _values,
        "stream": _values,
        "series": _values,
        "timeStamp": _values,
        "ndattr": _values,
    },
)
_parts = st.lists(st.binary(max_size=64), max_size=4) | st.tuples(
    _headers.map(lambda h: json.dumps(h).encode()), st.binary(max_size=300)
).map(list)


def _check_valid(result: Frame | SeriesEvent) -> None:
    if isinstance(result, SeriesEvent):
        assert result.kind in ("start", "end") and isinstance(result.series, str)
        return
    assert isinstance(result, Frame)
    assert result.array.ndim == 2 and result.array.size > 0
    assert result.array.nbytes <= 4096
    assert result.array.dtype.name in DTYPES and result.array.dtype.isnative
    assert isinstance(result.index, int) and result.index >= -1
    assert isinstance(result.stream, str) and result.stream
    assert result.source == "det1"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_parts)
def test_arbitrary_messages_only_raise_frame_rejected(parts: list[bytes]) -> None:
    try:
        result = decode(parts, max_frame_bytes=4096)
    except FrameRejected as exc:
        assert exc.reason in REASONS
        return
    _check_valid(result)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(list(DTYPES)),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    trim=st.integers(-3, 3),
    big=st.booleans(),
)
def test_encoded_frames_round_trip_or_are_rejected(
    dtype: str, shape: tuple[int, int], trim: int, big: bool
) -> None:
    a = np.arange(shape[0] * shape[1], dtype=dtype).reshape(shape)
    h = header(type=dtype, shape=list(shape), endianness="big" if big else "little")
    data = a.astype(a.dtype.newbyteorder(">" if big else "<")).tobytes()
    data = data[:trim] if trim < 0 else data + bytes(trim)
    try:
        frame = decode(msg(h, data), max_frame_bytes=4096)
    except FrameRejected as exc:
        assert trim != 0 and exc.reason == "size_mismatch"
        return
    assert trim == 0
    _check_valid(frame)
    np.testing.assert_array_equal(frame.array, a)
