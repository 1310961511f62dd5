"""Per-frame file specs through bluesky's own pieces: ``NPY_SEQ`` from ophyd.sim's
``SynSignalWithRegistry`` on a real RunEngine and Publisher (serialised with the msgpack-numpy
fix the ``pickle_untrusted`` message advises, verbatim), and ``AD_TIFF`` resource/datum
documents composed like ophyd's ``FileStoreTIFF`` with the TIFF files written as the TIFF plugin
names them. Any other spec is rejected naming it."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np
import pytest
import tifffile
import zmq.asyncio
from event_model import compose_run
from ophyd.sim import NumpySeqHandler

from monitor.config import SourceSettings
from monitor.frames import Frame, IngestEvent, Rejection
from monitor.sim.bluesky_demo import start_proxy_thread
from monitor.sources.bluesky import BlueskySource
from monitor.sources.bluesky_docs import PICKLE_ADVICE

ROOT = Path(__file__).resolve().parents[2]
TIFF_TEMPLATE = "%s%s_%6.6d.tiff"  # ophyd FileStoreTIFF's file_template (C printf, as the plugin uses)

RUN_ENGINE_SCRIPT = """
import sys, numpy as np
from bluesky import RunEngine
from bluesky.callbacks.zmq import Publisher
from bluesky.plans import count
from ophyd.sim import SynSignalWithRegistry
rng = np.random.default_rng(5)
img = SynSignalWithRegistry(
    func=lambda: rng.integers(0, 9999, (6, 7), dtype=np.uint16), name="img", save_path=sys.argv[2]
)
RE = RunEngine({{}}, context_managers=[])
{fix}
import time; time.sleep(0.5)
RE(count([img], num=5))
"""


def advised_lines() -> str:
    """The two lines of code the pickle_untrusted message gives, with ``addr`` bound."""
    lines = [part.strip("` ") for part in PICKLE_ADVICE.split("`")[1::2]]
    assert len(lines) == 2, PICKLE_ADVICE
    return "addr = sys.argv[1]\n" + "\n".join(lines)


async def collect(source: BlueskySource, until: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while source.documents["stop"] < until and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_npy_seq_from_ophyd_sim_via_the_advised_publisher(tmp_path: Path) -> None:
    pub_addr, sub_endpoint = start_proxy_thread()
    ctx = zmq.asyncio.Context()
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint=sub_endpoint), ctx)
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    stop = asyncio.Event()
    task = asyncio.create_task(source.run(emit, stop))
    script = textwrap.dedent(RUN_ENGINE_SCRIPT.format(fix=advised_lines()))
    try:
        await asyncio.sleep(0.3)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, pub_addr, str(tmp_path), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()[-2000:]
        await collect(source, 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        ctx.destroy(0)
    rejections = [e for e in events if isinstance(e, Rejection)]
    assert not rejections, rejections
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == 5 and source.documents["resource"] == 1 and source.documents["datum"] == 5
    # read back with ophyd's own NPY_SEQ handler: the files the device wrote, in datum order
    (stem,) = {p.name.rsplit("_", 1)[0] for p in tmp_path.glob("*.npy")}
    handler = NumpySeqHandler(stem, root=str(tmp_path))
    for i, frame in enumerate(frames):
        want = handler(i)
        assert want.shape == (6, 7) and np.array_equal(frame.array, want)
    assert len({f.array.tobytes() for f in frames}) == 5


def ad_tiff_documents(root: Path, fpp: int, points: int, spec: str = "AD_TIFF") -> list[bytes]:
    """start/descriptor/resource/datum/event/stop as ophyd's FileStoreTIFF + bluesky would send."""
    packb = functools.partial(msgpack.packb, default=msgpack_numpy.encode)
    run = compose_run()
    desc = run.compose_descriptor(
        name="primary",
        data_keys={
            "det_image": {"dtype": "array", "shape": [1, 9, 11], "source": "PV:", "external": "FILESTORE:"}
        },
    )
    res = run.compose_resource(
        spec=spec, root=str(root), resource_path="2026/12/05/abc", resource_kwargs={
            "template": TIFF_TEMPLATE, "filename": "cell7", "frame_per_point": fpp},
    )  # fmt: skip
    docs: list[tuple[str, object]] = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs.append(("resource", res.resource_doc))
    for p in range(points):
        datum = res.compose_datum(datum_kwargs={"point_number": p})
        docs.append(("datum", datum))
        event = desc.compose_event(data={"det_image": datum["datum_id"]}, timestamps={"det_image": 1.0})
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop()))
    return [b" " + name.encode() + b" " + packb(doc) for name, doc in docs]


def write_tiffs(root: Path, n: int) -> np.ndarray:
    """What the TIFF plugin writes in Single mode: FileTemplate % (FilePath, FileName, FileNumber)."""
    d = root / "2026/12/05/abc"
    d.mkdir(parents=True)
    stack = np.random.default_rng(3).integers(0, 4000, size=(n, 9, 11), dtype=np.uint16)
    for j, frame in enumerate(stack):
        tifffile.imwrite(TIFF_TEMPLATE % (f"{d}/", "cell7", j), frame)
    return stack


@pytest.mark.parametrize("fpp", [1, 2])
async def test_ad_tiff_resource_frames(tmp_path: Path, fpp: int) -> None:
    stack = write_tiffs(tmp_path, 3 * fpp)
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1", hdf5_timeout_s=1.0))
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    for msg in ad_tiff_documents(tmp_path, fpp, 3):
        await source.handle(msg, emit)
    frames = [e for e in events if isinstance(e, Frame)]
    assert not [e for e in events if isinstance(e, Rejection)]
    assert len(frames) == 3 * fpp
    for frame, want in zip(frames, stack, strict=True):
        assert np.array_equal(frame.array, want)


async def test_other_specs_are_rejected_naming_the_spec(tmp_path: Path) -> None:
    write_tiffs(tmp_path, 1)
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1", hdf5_timeout_s=0.2))
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    for msg in ad_tiff_documents(tmp_path, 1, 1, spec="AD_CBF"):
        await source.handle(msg, emit)
    rejections = [e for e in events if isinstance(e, Rejection)]
    assert [r.reason for r in rejections] == ["unsupported_spec"]
    assert "'AD_CBF'" in rejections[0].detail and "AD_TIFF" in rejections[0].detail


async def test_missing_tiff_times_out_with_a_reason(tmp_path: Path) -> None:
    source = BlueskySource(SourceSettings("bs", "bluesky", endpoint="tcp://127.0.0.1:1", hdf5_timeout_s=0.2))
    events: list[IngestEvent] = []

    async def emit(e: IngestEvent) -> None:
        events.append(e)

    for msg in ad_tiff_documents(tmp_path, 1, 1):
        await source.handle(msg, emit)
    assert [e.reason for e in events if isinstance(e, Rejection)] == ["file_timeout"]
