"""XANES: half-edge-step energy per pixel from an aligned stack, oxidation-state calibration."""

from __future__ import annotations

import numpy as np

from engines.synth.txm_xanes import default_energies
from monitor.analysis.xanes import (
    ScanAccumulator,
    XanesSettings,
    _percentile_rows,
    edge_positions,
    xanes_maps,
)


def stack_with_edges(e0: np.ndarray, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    e = default_energies()
    rng = np.random.default_rng(seed)
    mu = 0.4 + 1.0 / (1 + np.exp(-(e[:, None, None] - e0[None]) / 1.2))
    return e, (mu + noise * rng.standard_normal(mu.shape)).astype(np.float32)


def test_recovers_the_edge_map() -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    e0 = np.where(np.hypot(yy - 16, xx - 16) < 8, 8341.5, 8346.0)
    e, stack = stack_with_edges(e0, noise=0.01)
    maps = xanes_maps(e, stack, np.ones((32, 32), bool), XanesSettings(box=1))
    assert maps is not None
    err = maps.edge_eV - e0
    assert np.sqrt(np.nanmean(err**2)) < 0.2
    assert maps.valid_fraction > 0.95
    assert abs(np.nanmean(maps.oxidation[e0 == 8346.0]) - 4.0) < 0.2
    assert abs(np.nanmean(maps.oxidation[e0 == 8341.5]) - 2.0) < 0.2


def test_background_pixels_are_nan() -> None:
    e0 = np.full((16, 16), 8344.0)
    e, stack = stack_with_edges(e0, noise=0.005)
    stack[:, :, :4] = 0.0  # no absorption, no edge step
    maps = xanes_maps(e, stack, np.ones((16, 16), bool), XanesSettings(box=1))
    assert maps is not None
    assert np.isnan(maps.edge_eV[:, :4]).all() and np.isfinite(maps.edge_eV[:, 6:]).all()


def test_accumulator_needs_enough_energies() -> None:
    acc = ScanAccumulator(24)
    yy, xx = np.mgrid[0:24, 0:24] - 11.5
    disc = np.hypot(yy, xx) < 7
    e, stack = stack_with_edges(np.full((24, 24), 8344.0), noise=0.0)
    counts = 1000 * np.exp(-np.where(disc[None], stack, 0.0))  # absorbing disc on a clear background
    for i in range(4):
        acc.add(1, float(e[i]), counts[i], 7.0)
    assert acc.finish() == {}
    acc.reset()
    for i in range(len(e)):
        acc.add(1, float(e[i]), counts[i], 7.0)
    maps = acc.finish()
    assert set(maps) == {1} and abs(maps[1].mean_edge_eV - 8344.0) < 0.2
    assert np.isnan(maps[1].edge_eV[0, 0]) and np.isfinite(maps[1].edge_eV[12, 12])


def test_percentile_and_masked_maps_agree_with_the_full_computation() -> None:
    a = np.random.default_rng(1).random((6, 333)).astype(np.float32)
    assert np.allclose(_percentile_rows(a, 85.0), np.percentile(a, 85, axis=1))
    yy, xx = np.mgrid[0:20, 0:20]
    e, stack = stack_with_edges(np.where(xx < 10, 8342.0, 8345.0), noise=0.01)
    mask = np.hypot(yy - 9.5, xx - 9.5) < 8
    maps = xanes_maps(e, stack, mask, XanesSettings())
    edge, _step = edge_positions(e, stack, XanesSettings())
    assert maps is not None and np.isnan(maps.edge_eV[~mask]).all()
    ok = np.isfinite(maps.edge_eV)
    assert ok.sum() > 0.9 * mask.sum() and np.allclose(maps.edge_eV[ok], edge[ok])
