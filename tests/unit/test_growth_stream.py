"""The growth demo simulator: run list, ground truth in the headers, series per run over PUSH."""

from __future__ import annotations

import asyncio
import json
from itertools import islice

import pytest
import zmq
import zmq.asyncio

from engines.synth.growth import RunSpec, simulate_run
from monitor.sim.growth_stream import STREAM, demo_part, demo_runs, growth_frames, simulate_growth
from monitor.sim.ports import free_port


def test_demo_runs_alternate_dendritic_compact_and_ramp() -> None:
    runs = list(islice(demo_runs(), 4))
    assert [r.seed for r in runs] == [500_000, 500_001, 500_002, 500_003]
    assert 0.07 <= runs[0].da_start <= 0.14 and runs[1].da_start <= 0.02 and runs[2].da_end is not None


def test_frames_carry_ground_truth_matching_the_batch_simulator() -> None:
    first = next(demo_runs())
    frames = []
    for f in growth_frames(iter([first])):
        frames.append(f)
    assert frames[-1].last and not any(f.last for f in frames[:-1])
    assert frames[0].image.dtype.name == "uint16" and frames[0].image.shape == (128, 128)
    truth = simulate_run(RunSpec(first.seed, first.da_start))
    assert frames[-1].meta["t_star"] == truth.t_star
    assert len(frames) == len(truth.images)


@pytest.mark.timeout(180)
async def test_simulator_streams_one_series_per_run() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    ctx = zmq.asyncio.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(endpoint)
    stop = asyncio.Event()
    sim = asyncio.create_task(simulate_growth(endpoint, stop, rate_hz=0, runs=1))
    headers = []
    try:
        while True:
            parts = await asyncio.wait_for(pull.recv_multipart(), 90)
            h = json.loads(parts[0])
            headers.append(h)
            if h["htype"].startswith("series-end"):
                break
        sent = await sim
    finally:
        stop.set()
        pull.close(linger=0)
        ctx.term()
    assert headers[0]["htype"].startswith("series-start")
    data = [h for h in headers if h["htype"] == "array-1.0"]
    assert len(data) == sent and data[0]["stream"] == STREAM
    assert {h["series"] for h in headers} == {"growth-run-500000"}
    assert "t_star" in data[-1]["ndattr"] and "psi" in data[0]["ndattr"]


def test_demo_part_wires_source_pipeline_and_the_threshold_rule() -> None:
    part = demo_part()
    assert part.pipelines[0].kind == "early_warning" and part.pipelines[0].streams == (STREAM,)
    rule = part.rules[0]
    assert (rule.metric, rule.major, rule.hysteresis, rule.min_count) == ("risk", 0.8, 0.2, 3)
