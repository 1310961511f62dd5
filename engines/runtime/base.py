"""The Runner protocol (after Polygraphy): activate, ``infer`` with validated inputs, timed calls.

Backends subclass :class:`BaseRunner` and implement ``_activate``, ``_deactivate`` and
``_infer_impl``; the public ``infer`` checks names, shapes and dtypes against the model's
:class:`~engines.registry.TensorSpec` list and times every call. ``infer`` is blocking (pipelines
call it from their executor thread); the runner is a context manager, sync or async.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np

from engines.errors import EngineError, InputMismatch
from engines.registry import TensorSpec


@dataclass(frozen=True)
class RunnerStats:
    calls: int
    items: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


@runtime_checkable
class Runner(Protocol):
    backend: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def stats(self) -> RunnerStats: ...


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(name)


class BaseRunner:
    backend = "base"

    def __init__(self, name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.name = name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._active = False
        self._lock = threading.Lock()
        self._times: deque[float] = deque(maxlen=4096)
        self._calls = 0
        self._items = 0

    # lifecycle -------------------------------------------------------------------------------
    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    async def __aenter__(self) -> BaseRunner:
        import asyncio

        await asyncio.to_thread(self.activate)  # session creation / engine build can take seconds
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    # inference -------------------------------------------------------------------------------
    def validate(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        want = {s.name for s in self.inputs}
        got = set(feeds)
        if want != got:
            missing, extra = sorted(want - got), sorted(got - want)
            raise InputMismatch(
                f"{self.name}: inputs {sorted(got)} do not match model inputs "
                f"{sorted(want)} (missing {missing}, unexpected {extra})"
            )
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            a = feeds[spec.name]
            if not isinstance(a, np.ndarray):
                raise InputMismatch(
                    f"{self.name}: input {spec.name!r} is {type(a).__name__}, not a numpy array"
                )
            if a.dtype != _np_dtype(spec.dtype):
                raise InputMismatch(
                    f"{self.name}: input {spec.name!r} has dtype {a.dtype}, model wants {spec.dtype}"
                )
            if not spec.matches(a.shape):
                raise InputMismatch(
                    f"{self.name}: input {spec.name!r} has shape {a.shape}, model wants {list(spec.shape)}"
                )
            out[spec.name] = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        return out

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise EngineError(f"{self.name}: runner used before activate() (use it as a context manager)")
        checked = self.validate(feeds)
        t0 = time.perf_counter()
        result = self._infer_impl(checked)
        dt = time.perf_counter() - t0
        first = next(iter(checked.values()))
        with self._lock:
            self._times.append(dt)
            self._calls += 1
            self._items += int(first.shape[0]) if first.ndim else 1
        return result

    def stats(self) -> RunnerStats:
        with self._lock:
            times = np.array(self._times, dtype=np.float64) * 1e3
            calls, items = self._calls, self._items
        if times.size == 0:
            return RunnerStats(calls, items, float("nan"), float("nan"), float("nan"))
        return RunnerStats(
            calls,
            items,
            float(np.percentile(times, 50)),
            float(np.percentile(times, 99)),
            float(times.mean()),
        )

    def describe(self) -> str:
        return f"{self.backend}"

    # backend hooks ---------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError
