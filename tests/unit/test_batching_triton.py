"""Batch gathering (max_batch / max_wait) and the Triton model repository export."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from engines.export import export_onnx
from engines.models.reference import TinyConvNet
from engines.registry import TensorSpec, save_model
from engines.triton_repo import write_triton_repository
from monitor.batching import gather_batch


async def test_gather_takes_what_is_queued_without_waiting() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    for i in range(5):
        q.put_nowait(i)
    assert await gather_batch(q, 3, 0.0) == [0, 1, 2]
    assert await gather_batch(q, 8, 0.0) == [3, 4]


async def test_gather_waits_for_late_items_up_to_max_wait() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    q.put_nowait(0)

    async def late() -> None:
        await asyncio.sleep(0.02)
        q.put_nowait(1)

    task = asyncio.create_task(late())
    batch = await gather_batch(q, 4, 2.0)
    await task
    assert batch[:2] == [0, 1]


async def test_gather_stops_at_deadline() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    q.put_nowait(0)
    t0 = time.monotonic()
    assert await gather_batch(q, 4, 0.05) == [0]
    assert time.monotonic() - t0 >= 0.04


async def test_cancelled_gather_keeps_what_it_holds() -> None:
    q: asyncio.Queue[int] = asyncio.Queue()
    q.put_nowait(7)
    held: list[int] = []
    task = asyncio.create_task(gather_batch(q, 4, 10.0, into=held))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert held == [7]  # the caller can still account for it


def test_triton_repository(tmp_path: Path) -> None:
    weights = tmp_path / "w"
    rep = export_onnx(
        TinyConvNet(),
        (torch.randn(1, 1, 16, 16),),
        tmp_path / "c.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch", 2: "h", 3: "w"}},
    )
    m = save_model(
        rep.path,
        name="conv",
        version="1",
        task="t",
        inputs=[TensorSpec("image", ("batch", 1, "h", "w"))],
        outputs=[TensorSpec("logits", ("batch", 2, "h", "w"))],
        normalisation={},
        training={},
        metrics={},
        out_dir=weights,
    )
    out = tmp_path / "repo"
    assert write_triton_repository(out, weights) == ["conv"]
    cfg = (out / "conv" / "config.pbtxt").read_text()
    assert 'name: "conv"' in cfg and "max_batch_size: 32" in cfg and "dims: [ 1, -1, -1 ]" in cfg
    assert m.sha256 in cfg
    assert (out / "conv" / "1" / "model.onnx").read_bytes() == (weights / "conv.onnx").read_bytes()
