"""Synthetic TXM-XANES generator: determinism, ground truth consistency."""

from __future__ import annotations

import numpy as np

from engines.synth.txm_xanes import E_HIGH_EV, E_LOW_EV, TxmConfig, default_energies, generate

SMALL = TxmConfig(size=200, n_particles=4, radius_px=(30.0, 40.0), energies=tuple(default_energies()[::6]))


def test_deterministic_per_seed() -> None:
    a, b, c = generate(5, SMALL), generate(5, SMALL), generate(6, SMALL)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_ground_truth_is_consistent() -> None:
    seq = generate(11, SMALL)
    n = len(SMALL.energies)
    assert seq.frames.shape == (n, 200, 200) and seq.labels.shape == (n, 200, 200)
    assert np.allclose(seq.displacement[0], 0)
    assert set(np.unique(seq.labels[0])) <= set(range(SMALL.n_particles + 1))
    assert len(np.unique(seq.labels[0])) >= 3
    # Particles absorb: mean counts inside particles are lower than outside, more so above the edge.
    inside = seq.labels[-1] > 0
    assert seq.frames[-1][inside].mean() < 0.8 * seq.frames[-1][~inside].mean()
    c0 = seq.frames[0][seq.labels[0] > 0].mean() / seq.frames[0][seq.labels[0] == 0].mean()
    c1 = seq.frames[-1][seq.labels[-1] > 0].mean() / seq.frames[-1][seq.labels[-1] == 0].mean()
    assert c1 < c0
    edge = seq.edge_map[np.isfinite(seq.edge_map)]
    assert edge.size > 0 and edge.min() > E_LOW_EV - 1.5 and edge.max() < E_HIGH_EV + 1.5


def test_labels_follow_displacement() -> None:
    seq = generate(3, SMALL)
    for p in range(SMALL.n_particles):
        ys0, xs0 = np.nonzero(seq.labels[0] == p + 1)
        ys1, xs1 = np.nonzero(seq.labels[-1] == p + 1)
        if len(ys0) < 200 or len(ys1) < 200:
            continue  # partly hidden behind a neighbour
        moved = np.array([ys1.mean() - ys0.mean(), xs1.mean() - xs0.mean()])
        assert np.linalg.norm(moved - seq.displacement[-1, p]) < 1.5
