"""Growth simulator: determinism, the stepping API, the compact-to-dendritic crossover, labels."""

from __future__ import annotations

import numpy as np
import pytest

from engines.synth.growth import (
    HORIZON,
    PSI_CRIT,
    GrowthParams,
    GrowthSim,
    RunSpec,
    labels,
    simulate_run,
    simulate_runs,
    smoothed_psi,
    sticking_probability,
    transition_frame,
)

SMALL = GrowthParams(width=48, height=48, delta=6, per_frame=30, n_frames=24, render_size=64)


def test_stepping_api_returns_a_rendered_frame_and_ground_truth() -> None:
    sim = GrowthSim(3, SMALL)
    img, truth = sim.step(0.1)
    assert img.shape == (64, 64) and img.dtype == np.float32
    assert truth.frame == 0 and truth.particles >= SMALL.per_frame and truth.da == pytest.approx(0.1)
    _, truth2 = sim.step(0.1, current=2.0)
    assert truth2.frame == 1
    assert truth2.particles - truth.particles >= 2 * SMALL.per_frame  # the current scales the charge


def test_same_seed_same_run_and_the_batch_matches_the_stepper() -> None:
    spec = RunSpec(11, 0.2, None, SMALL)
    a, b = simulate_run(spec), simulate_run(spec)
    np.testing.assert_array_equal(a.images, b.images)
    sim = GrowthSim(11, SMALL)
    stepped = [sim.step(spec.da_at(t))[0] for t in range(5)]
    np.testing.assert_array_equal(np.stack(stepped), a.images[:5])
    other = simulate_run(RunSpec(12, 0.2, None, SMALL))
    assert not np.array_equal(other.images[-1], a.images[-1])


def test_low_da_stays_compact_and_high_da_turns_dendritic() -> None:
    params = GrowthParams(width=64, height=64, delta=8, per_frame=48, n_frames=40, render_size=64)
    compact, dendritic = simulate_runs([RunSpec(1, 0.01, None, params), RunSpec(2, 1.5, None, params)])
    assert compact.t_star == -1
    assert np.nanmax(smoothed_psi(compact.psi)) < PSI_CRIT
    assert dendritic.t_star >= 0
    assert dendritic.psi[-5:].mean() > compact.psi[-5:].mean() + 0.2
    # Dendrites reach further for the same charge: the front is wider and reaches higher.
    assert dendritic.width[-1] > compact.width[-1]


def test_ramp_spans_its_da_range_geometrically() -> None:
    spec = RunSpec(0, 0.01, 1.0, SMALL)
    assert spec.da_at(0) == pytest.approx(0.01)
    assert spec.da_at(SMALL.n_frames - 1) == pytest.approx(1.0)
    assert spec.da_at((SMALL.n_frames - 1) // 2) == pytest.approx(0.1, rel=0.2)


def test_transition_frame_needs_persistence_and_labels_look_ahead_h_frames() -> None:
    psi = np.zeros(40)
    psi[12] = 1.0  # a blip is not a transition
    assert transition_frame(psi) == -1
    psi[25:] = 0.6
    assert transition_frame(psi) == 25
    flicker = psi.copy()
    flicker[33:] = 0.1  # falls back: not a lasting transition at 25
    assert transition_frame(flicker) == -1
    y = labels(40, 25)
    assert y[25 - HORIZON - 1] == 0 and y[25 - HORIZON] == 1 and y[-1] == 1
    assert labels(40, -1).sum() == 0


def test_sticking_probability_is_da_for_small_da_and_bounded() -> None:
    assert sticking_probability(0.001) == pytest.approx(0.001, rel=1e-2)
    assert 0 < sticking_probability(100.0) < 1
    assert sticking_probability(-1.0) == 0.0
