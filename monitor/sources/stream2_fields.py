"""Stream V2 message fields: typed checks of start/image metadata, and bad-pixel cleaning.

Every checker raises :class:`~monitor.errors.FrameRejected` with a reason code from
:data:`monitor.sources.stream2.REASONS` when a field has the wrong type or range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TypeGuard

import numpy as np

from monitor.errors import FrameRejected
from monitor.sources.pixel_mask import MaskPlan

TYPED_META = ("energy_eV", "slice_z", "cycle", "step", "current_mA")
"""``user_data`` keys that become typed :class:`~monitor.frames.FrameMeta` fields."""


def series_name(series_id: int, series_unique_id: str) -> str:
    """The monitor's series name: ``series_unique_id``, else the ``series_id`` number."""
    return series_unique_id or (str(series_id) if series_id >= 0 else "")


def short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def number_field(msg: Mapping[str, object], key: str) -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FrameRejected("bad_metadata", f"'{key}' must be a number, got {short(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise FrameRejected("bad_metadata", f"'{key}' is out of range") from None
    if not math.isfinite(result):
        raise FrameRejected("bad_metadata", f"'{key}' must be finite, got {short(value)}")
    return result


def count_field(msg: Mapping[str, object], key: str) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if not is_int(value) or not 0 <= value < 2**63:
        raise FrameRejected("bad_metadata", f"'{key}' must be a non-negative integer, got {short(value)}")
    return value


def ids_field(msg: Mapping[str, object]) -> tuple[int, str]:
    sid = msg.get("series_id", -1)
    uid = msg.get("series_unique_id", "")
    if not is_int(sid) or not -1 <= sid < 2**63:
        raise FrameRejected("bad_series", f"'series_id' must be a non-negative integer, got {short(sid)}")
    if not isinstance(uid, str):
        raise FrameRejected("bad_series", f"'series_unique_id' must be text, got {short(uid)}")
    return sid, uid


def rational_field(msg: Mapping[str, object], key: str) -> float | None:
    value = msg.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(is_int(v) and 0 <= v < 2**64 for v in value)
        or value[1] == 0
    ):
        raise FrameRejected(
            "bad_metadata", f"'{key}' must be [numerator, denominator > 0], got {short(value)}"
        )
    return value[0] / value[1]


def channels_field(msg: Mapping[str, object]) -> tuple[str, ...]:
    value = msg.get("channels", ())
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) and c for c in value):
        raise FrameRejected("bad_metadata", f"'channels' must be a list of names, got {short(value)}")
    return tuple(value)


def clean_pixels(
    array: np.ndarray,
    mask_index: np.ndarray,
    invalid_above: float | None,
    plan: MaskPlan | None = None,
) -> tuple[np.ndarray, int, int]:
    """Set masked pixels and pixels above ``invalid_above`` to 0; return (array, masked, invalid).

    A writable C-contiguous ``array`` (a decompressed buffer of our own) is cleaned in place;
    a read-only one (a view of the message) is copied first, and only if there is something to
    clean. ``plan`` (the same pixels as ``mask_index``, as row/column runs) is used when it
    fits the array's shape. The result is read-only: frames are not modified downstream.
    """
    in_place = array.flags.writeable and array.flags.c_contiguous
    out = array
    if mask_index.size:
        if not in_place:
            out = np.array(array, order="C")
        if plan is not None and plan.shape == out.shape:
            plan.apply(out)
        else:
            out.reshape(-1)[mask_index] = 0
    invalid = 0
    if invalid_above is not None and out.max() > invalid_above:
        bad = out > invalid_above
        invalid = int(np.count_nonzero(bad))
        if out is array and not in_place:
            out = np.array(array, order="C")
        out[bad] = 0
    out.flags.writeable = False
    return out, int(mask_index.size), invalid


def user_meta(user_data: object) -> tuple[dict[str, object], dict[str, str | int | float | bool]]:
    """Typed FrameMeta fields and scalar extras from an image's ``user_data`` map."""
    typed: dict[str, object] = {}
    extra: dict[str, str | int | float | bool] = {}
    if not isinstance(user_data, Mapping):
        return typed, extra
    for key, value in user_data.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            continue
        if key in TYPED_META and not isinstance(value, bool | str):
            if key in ("cycle", "step"):
                if is_int(value) and abs(value) < 2**63:
                    typed[key] = value
                continue
            if math.isfinite(value):
                typed[key] = float(value)
            continue
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            continue
        extra[f"user_{key}"] = value
    return typed, extra


def error_value_field(msg: Mapping[str, object]) -> int | None:
    """Jungfraujoch's optional ``error_value`` (int64); anything else is ignored as absent."""
    value = msg.get("error_value")
    if not is_int(value) or not -(2**63) <= value < 2**63:
        return None
    return value


def clean_error_value(
    array: np.ndarray, error_value: int, invalid_above: float | None
) -> tuple[np.ndarray, int]:
    """Set pixels equal to ``error_value`` to 0; return (array, count). No work when the value
    is out of the dtype's range or already above ``invalid_above`` (cleaned as NODATA)."""
    if array.dtype.kind not in "ui":
        return array, 0
    info = np.iinfo(array.dtype)
    if not info.min <= error_value <= info.max:
        return array, 0
    if invalid_above is not None and error_value > invalid_above:
        return array, 0
    bad = array == error_value
    n = int(np.count_nonzero(bad))
    if n:
        array = np.array(array, order="C")
        array[bad] = 0
    return array, n
