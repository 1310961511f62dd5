"""AlignmentPipeline with the shipped ParticleNet on a short synthetic scan (no daemon)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.synth.txm_xanes import TxmConfig, default_energies, generate
from monitor.bench.alignment import frames_of
from monitor.config import PipelineSettings
from monitor.errors import ConfigError
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.alignment import AlignmentPipeline

CFG = TxmConfig(energies=tuple(default_energies()[::3]))  # 13 energies


def settings(**options: bool | int | float | str) -> PipelineSettings:
    return PipelineSettings(name="alignment", kind="alignment", streams=("txm",), options=dict(options))


@pytest.fixture(scope="module")
def scan() -> tuple[object, list[Frame]]:
    seq = generate(150_001, CFG)  # held-out seed range
    return seq, frames_of(seq, "unit-scan")


def test_results_follow_the_schema_and_end_the_scan_with_maps(scan: tuple) -> None:
    seq, frames = scan
    pipe = AlignmentPipeline(settings(max_particles=12, roi_size=96))
    schema = pipe.schema()
    results = [pipe.process([f])[0] for f in frames]
    specs = {a.name: a for a in schema.arrays}
    for r in results:
        assert set(r.scalars) <= set(schema.scalars)
        for name, arr in r.arrays.items():
            assert arr.shape == specs[name].shape and arr.dtype == np.dtype(specs[name].dtype)
    ready = [r.scalars["xanes_ready"] for r in results]
    assert ready[-1] == 1 and not any(ready[:-1])
    last = results[-1]
    assert last.scalars["n_particles"] == 9 and last.scalars["lost_total"] == 0
    edge = last.arrays["xanes_edge_eV"]
    assert np.isfinite(edge).sum() > 9 * 1000
    ids = [tuple(r.arrays["track_id"]) for r in results]
    assert len(set(ids)) == 1  # the same 9 tracks in the same slots throughout
    # Registration: per-particle displacement close to ground truth.
    d = last.arrays["displacement"]
    c0 = results[0].arrays["centroid"]
    errs = []
    for s in range(9):
        g = int(np.argmin(np.linalg.norm(seq.centers[0] - c0[s][None], axis=1)))
        errs.append(np.linalg.norm(d[s] - seq.displacement[-1, g]))
    assert np.sqrt(np.mean(np.square(errs))) < 0.6
    overlays = pipe.display_overlays(last, (230, 230))
    assert overlays["labels"].shape == (230, 230) and overlays["labels"].max() == 9
    assert overlays["tracks"].shape == (12, pipe.opts.tail, 2)
    assert overlays["xanes_edge_eV"].shape == (12, 96, 96)


def test_detect_every_propagates_masks(scan: tuple) -> None:
    _seq, frames = scan
    pipe = AlignmentPipeline(settings(detect_every=4))
    results = [pipe.process([f])[0] for f in frames[:8]]
    assert [r.scalars["detected"] for r in results] == [1, 0, 0, 0, 1, 0, 0, 0]
    # One more call at most: the series' first frame again, if its instances gave another factor.
    assert pipe.scale_redetections <= 1
    assert pipe.network_calls == 2 + pipe.scale_redetections
    assert all(r.scalars["n_particles"] == 9 for r in results)


def test_blank_and_odd_frames_do_not_crash() -> None:
    pipe = AlignmentPipeline(settings())
    blank = Frame("txm", "t", "s", 0, np.zeros((100, 130), np.uint16), 0.0, 0.0, FrameMeta(energy_eV=8340.0))
    noise = Frame("txm", "t", "s", 1, np.random.default_rng(0).random((37, 61)).astype(np.float32), 1.0, 1.0)
    r_blank, r_noise = pipe.process([blank, noise])
    assert r_blank.scalars["n_particles"] == 0 and r_blank.scalars["xanes_ready"] == 0
    assert r_noise.scalars["n_particles"] <= 3 and r_noise.arrays["labels"].shape == (128, 128)


def test_bad_options_and_missing_model_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="options"):
        AlignmentPipeline(settings(max_particle=3))
    with pytest.raises(ConfigError, match="model"):
        AlignmentPipeline(PipelineSettings(name="a", kind="alignment", weights_dir=str(tmp_path)))
