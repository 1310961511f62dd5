"""`bench stream2`: Stream V2 decode throughput, ours end to end vs dectris-compression alone.

Frames: EIGER2 4M, 2068 x 2162 pixels (array shape 2162 x 2068), uint32, bslz4, as the
simulator sends them (module gaps at NODATA and listed in the start message's pixel mask).

- ``library``: ``dectris.compression.decompress(bytes, "bslz4", elem_size=4)`` on the very bytes
  inside the messages: the floor, nothing else done.
- ``ours``: :func:`decode_stream2` on the whole CBOR message: parse, route the channel,
  decompress, check sizes, zero masked and NODATA pixels, build the Frame.
- ``ours_clean``/``library_clean``: the same without gaps and without a mask.

Both of ours decompress through the library's C API into a writable buffer of our own and zero
masked pixels in place (``monitor.sources.decompress_into``), so no frame is copied.
- ``source``: messages over real ZeroMQ (PUSH thread → :class:`Stream2Source` PULL) until the
  last Frame is emitted (informative; shares the CPU with the sender thread).

Cases are interleaved round by round and the median round is reported, so a noisy machine
affects both sides of each ratio alike. ``ratio = ours / library`` (target >= 0.8), from wall
time; ``ratio_cpu`` from this process's CPU time (less sensitive to other processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import numpy as np
import zmq
import zmq.asyncio
from dectris.compression import decompress

from monitor.bench import host_info
from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent
from monitor.sim.stream2 import (
    EIGER2_4M,
    SeriesIds,
    detector_frames,
    detector_mask,
    image_message,
    start_message,
)
from monitor.sources.stream2 import SeriesInfo, SeriesStart, Stream2Source, decode_stream2

IDS: SeriesIds = {"series_id": 1, "series_unique_id": "bench"}


def _messages(
    shape: tuple[int, int], n: int, masked: bool
) -> tuple[SeriesInfo, bytes, list[bytes], list[bytes]]:
    """The start message's series info, the start message, ``n`` image messages, their payloads."""
    mask = detector_mask(shape) if masked else None
    start = start_message(
        **IDS, shape=shape, dtype="uint32", pixel_mask={"threshold_1": mask} if mask is not None else None
    )
    event = decode_stream2(start, source="bench")
    assert isinstance(event, SeriesStart)
    frames = detector_frames(shape, dtype="uint32", mask=mask, seed=1)
    messages = [image_message({"threshold_1": next(frames)}, **IDS, image_id=i) for i in range(n)]
    payloads = [cbor2.loads(m)["data"]["threshold_1"].value[1].value.value[2] for m in messages]
    return event.info, start, messages, payloads


def _rate(fn: Callable[[int], object], n: int, k: int) -> tuple[float, float]:
    """Calls of ``fn(i % k)`` per wall-clock second and per CPU second of this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i % k)
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def _source_rate(start: bytes, messages: list[bytes], n: int) -> float:
    """Frames per second through a real Stream2Source (PUSH sender in a thread), first to last."""

    async def run() -> float:
        ctx = zmq.asyncio.Context()
        settings = SourceSettings(name="bench", kind="stream2", endpoint="tcp://127.0.0.1:0", mode="bind")
        source = Stream2Source(settings, ctx)
        endpoint = source.open()
        got = 0
        done = asyncio.Event()
        t_first = t_last = 0.0

        async def emit(event: IngestEvent) -> None:
            nonlocal got, t_first, t_last
            if isinstance(event, Frame):
                got += 1
                t_last = time.perf_counter()
                if got == 1:
                    t_first = t_last
                if got == n:
                    done.set()

        def send() -> None:
            sctx = zmq.Context()
            sock = sctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 8)
            sock.connect(endpoint)
            sock.send(start)
            for i in range(n):
                sock.send(messages[i % len(messages)], copy=False)
            sock.close(linger=10_000)
            sctx.term()

        stop = asyncio.Event()
        task = asyncio.create_task(source.run(emit, stop))
        sender = threading.Thread(target=send)
        sender.start()
        await asyncio.wait_for(done.wait(), timeout=300)
        stop.set()
        await task
        await asyncio.to_thread(sender.join)
        ctx.destroy(linger=0)
        return (n - 1) / (t_last - t_first)

    return asyncio.run(run())


def run_bench(out: Path, *, frames: int, rounds: int, shape: tuple[int, int]) -> dict[str, object]:
    load = os.getloadavg()
    k = 4  # distinct frames, cycled
    info, start, msgs, payloads = _messages(shape, k, masked=True)
    clean_info, _, clean_msgs, clean_payloads = _messages(shape, k, masked=False)
    nbytes = shape[0] * shape[1] * 4
    for i in range(k):  # the decoder's output is what the library decompresses, minus bad pixels
        frame = decode_stream2(msgs[i], source="bench", series=info)
        raw = np.frombuffer(decompress(payloads[i], "bslz4", elem_size=4), "<u4").reshape(shape)
        assert isinstance(frame, Frame) and np.array_equal(frame.array[raw <= info.saturation_value],
                                                           raw[raw <= info.saturation_value])  # fmt: skip
    cases: dict[str, Callable[[int], object]] = {
        "library": lambda i: decompress(payloads[i], "bslz4", elem_size=4),
        "ours": lambda i: decode_stream2(msgs[i], source="bench", series=info),
        "library_clean": lambda i: decompress(clean_payloads[i], "bslz4", elem_size=4),
        "ours_clean": lambda i: decode_stream2(clean_msgs[i], source="bench", series=clean_info),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    cpu_samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            wall, cpu = _rate(fn, frames, k)
            samples[name].append(wall)
            cpu_samples[name].append(cpu)
    fps = {name: statistics.median(v) for name, v in samples.items()}
    cpu_fps = {name: statistics.median(v) for name, v in cpu_samples.items()}
    source_fps = _source_rate(start, msgs, frames * 2)
    result: dict[str, object] = {
        "benchmark": "stream2",
        "frame": {"shape_yx": list(shape), "dtype": "uint32", "compression": "bslz4", "bytes": nbytes},
        "compression_ratio": round(nbytes / statistics.mean(len(p) for p in payloads), 2),
        "masked_pixels": int(info.mask_index.size),
        "frames_per_round": frames,
        "rounds": rounds,
        "fps": {name: round(v, 1) for name, v in fps.items()},
        "GB_per_s": {name: round(v * nbytes / 1e9, 2) for name, v in fps.items()},
        "fps_rounds": {name: [round(x, 1) for x in v] for name, v in samples.items()},
        "fps_per_cpu_second": {name: round(v, 1) for name, v in cpu_fps.items()},
        "source_fps_zmq": round(source_fps, 1),
        "ratio": round(fps["ours"] / fps["library"], 3),
        "ratio_clean": round(fps["ours_clean"] / fps["library_clean"], 3),
        "ratio_source_zmq": round(source_fps / fps["library"], 3),
        "ratio_cpu": round(cpu_fps["ours"] / cpu_fps["library"], 3),
        "ratio_clean_cpu": round(cpu_fps["ours_clean"] / cpu_fps["library_clean"], 3),
        "load_average_before": [round(x, 2) for x in load],
        "target_ratio": 0.8,
        "host_at_end": host_info(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cli_main(args: argparse.Namespace) -> int:
    quick = bool(getattr(args, "quick", False))
    frames = args.frames or (8 if quick else 60)
    shape = (514, 1030) if quick else EIGER2_4M
    result = run_bench(Path(args.json), frames=frames, rounds=3 if quick else 7, shape=shape)
    fps = result["fps"]
    print(
        f"stream2 {shape[1]}x{shape[0]} uint32 bslz4: ours {fps['ours']} fps, library {fps['library']} fps, "  # type: ignore[index]
        f"ratio {result['ratio']} (clean {result['ratio_clean']}; via ZeroMQ {result['ratio_source_zmq']})"
    )
    return 0
