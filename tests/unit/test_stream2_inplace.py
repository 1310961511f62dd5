"""Decompressing into our own buffer and masking in place: pixels identical to the copy path."""

from __future__ import annotations

import numpy as np
import pytest
from dectris.compression import decompress

from monitor.frames import Frame
from monitor.sim.stream2 import compress, detector_frames, detector_mask, image_message, start_message
from monitor.sources import decompress_into as di
from monitor.sources.pixel_mask import MaskPlan
from monitor.sources.stream2 import SeriesStart, decode_stream2

IDS = {"series_id": 3, "series_unique_id": "inplace"}


def reference_clean(raw: np.ndarray, mask: np.ndarray, saturation: int) -> np.ndarray:
    """The previous decoder's result: copy, zero flat mask indices, zero pixels above saturation."""
    out = np.array(raw)
    out.reshape(-1)[np.flatnonzero(mask)] = 0
    out[out > saturation] = 0
    return out


def test_c_api_passes_self_test_and_matches_python_api() -> None:
    assert di.available()
    rng = np.random.default_rng(5)
    for dtype, algorithm in (("uint32", "bslz4"), ("uint16", "bslz4"), ("uint8", "lz4"), ("int32", "lz4")):
        a = rng.integers(0, 5000, (37, 53)).astype(dtype)
        stream = compress(a, algorithm)
        out = di.decompress_into(stream, algorithm, a.dtype.itemsize, a.nbytes)
        assert out.flags.writeable and out.nbytes == a.nbytes
        assert out.tobytes() == decompress(stream, algorithm, elem_size=a.dtype.itemsize)


def test_corrupt_and_short_streams_raise() -> None:
    a = np.arange(4096, dtype=np.uint32)
    stream = bytearray(compress(a, "bslz4"))
    with pytest.raises(di.DecompressError):
        di.decompress_into(bytes(stream), "bslz4", 4, a.nbytes + 4)  # wrong size
    stream[20:40] = b"\xff" * 20
    with pytest.raises(di.DecompressError):
        di.decompress_into(bytes(stream[:60]), "bslz4", 4, a.nbytes)  # truncated and corrupt


def test_self_test_rejects_a_function_that_decodes_differently() -> None:
    def wrong(algorithm: int, dst: int, dst_size: int, src: int, src_size: int, elem: int) -> int:
        return dst_size  # claims success, writes nothing

    assert not di.self_test(wrong)


@pytest.mark.parametrize("shape", [(2162, 2068), (514, 1030), (40, 33)])
def test_mask_plan_zeroes_exactly_the_mask(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0])
    masks = [detector_mask(shape), rng.random(shape) < 0.01, np.zeros(shape, np.uint8)]
    full = np.zeros(shape, np.uint8)
    full[:, 3:5] = 1
    full[7, :] = 1
    masks.append(full)
    for mask in masks:
        plan = MaskPlan.from_mask(mask)
        a = rng.integers(1, 100, shape).astype(np.uint32)
        expected = a.copy()
        expected[mask != 0] = 0
        plan.apply(a)
        np.testing.assert_array_equal(a, expected)
        assert plan.count == int(np.count_nonzero(mask))
    with pytest.raises(ValueError):
        MaskPlan.from_mask(masks[0]).apply(np.zeros((shape[0] + 1, shape[1]), np.uint32))


@pytest.mark.parametrize("dtype", ["uint32", "uint16"])
def test_decoded_pixels_identical_to_the_copy_path(dtype: str) -> None:
    shape = (514, 1030)
    mask = detector_mask(shape)
    start = decode_stream2(
        start_message(**IDS, shape=shape, dtype=dtype, pixel_mask={"threshold_1": mask}), source="t"
    )
    assert isinstance(start, SeriesStart) and start.info.mask_plan is not None
    sat = start.info.saturation_value
    assert sat is not None
    frames = detector_frames(shape, dtype=dtype, mask=mask, seed=2)
    for i in range(3):
        img = next(frames)
        img.reshape(-1)[17 + i] = np.iinfo(dtype).max  # an unlisted bad pixel: invalid, not masked
        msg = image_message({"threshold_1": img}, **IDS, image_id=i)
        frame = decode_stream2(msg, source="t", series=start.info)
        assert isinstance(frame, Frame)
        np.testing.assert_array_equal(frame.array, reference_clean(img, mask, sat))
        assert not frame.array.flags.writeable  # frames stay immutable downstream
        assert frame.meta.extra["masked_pixels"] == np.count_nonzero(mask)
        assert frame.meta.extra["invalid_pixels"] == 1


def test_uncompressed_frames_never_modify_the_message() -> None:
    shape = (20, 30)
    mask = np.zeros(shape, np.uint32)
    mask[:, 5] = 1
    start = decode_stream2(
        start_message(**IDS, shape=shape, dtype="uint16", pixel_mask={"threshold_1": mask}), source="t"
    )
    assert isinstance(start, SeriesStart)
    img = np.full(shape, 7, np.uint16)
    msg = bytearray(image_message({"threshold_1": img}, compression="none", **IDS, image_id=0))
    before = bytes(msg)
    frame = decode_stream2(memoryview(msg), source="t", series=start.info)
    assert isinstance(frame, Frame) and frame.array[:, 5].max() == 0 and frame.array[0, 0] == 7
    assert bytes(msg) == before


def test_buffers_are_reused_only_when_no_frame_holds_them() -> None:
    shape = (1024, 1030)  # 4 MB of uint32: pooled
    mask = detector_mask(shape)
    start = decode_stream2(
        start_message(**IDS, shape=shape, dtype="uint32", pixel_mask={"threshold_1": mask}), source="t"
    )
    assert isinstance(start, SeriesStart)
    frames = detector_frames(shape, dtype="uint32", mask=mask, seed=4)
    imgs = [next(frames) for _ in range(3)]
    msgs = [image_message({"threshold_1": img}, **IDS, image_id=i) for i, img in enumerate(imgs)]
    held = []
    for msg in msgs:  # all three frames alive: three distinct buffers
        frame = decode_stream2(msg, source="t", series=start.info)
        assert isinstance(frame, Frame)
        held.append(frame)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not np.shares_memory(held[a].array, held[b].array)
    sat = start.info.saturation_value
    for frame, img in zip(held, imgs, strict=True):
        np.testing.assert_array_equal(frame.array, reference_clean(img, mask, sat))  # none overwritten
    first = held[0].array.__array_interface__["data"][0]
    del held, frame
    reused_before = di.POOL.reused
    again = decode_stream2(msgs[2], source="t", series=start.info)
    assert isinstance(again, Frame) and di.POOL.reused == reused_before + 1
    assert again.array.__array_interface__["data"][0] != 0 and first != 0
    np.testing.assert_array_equal(again.array, reference_clean(imgs[2], mask, sat))
