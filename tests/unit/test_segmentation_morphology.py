"""Volume fractions, components, cumulative volume and dendrite penetration depth."""

from __future__ import annotations

import numpy as np
import pytest

from engines.synth.xct import DENDRITE, ELECTROLYTE, PIT, REDEPOSIT, labels_at, make_cell
from monitor.analysis.morphology import CumulativeVolume, interfaces, slice_morphology

H, W, TOP, BOT = 200, 300, 50, 150  # electrolyte rows 50..149: thickness 100 px


def cell_mask() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[TOP:BOT] = ELECTROLYTE
    return m


def test_no_dendrite_means_zero_penetration() -> None:
    r = slice_morphology(cell_mask())
    assert r.penetration == 0.0 and r.thickness_px == 100.0 and r.components == (0, 0, 0)
    assert r.fractions[ELECTROLYTE] == pytest.approx(0.5)


@pytest.mark.parametrize("depth", [10, 40, 75])
def test_penetration_from_the_top_interface(depth: int) -> None:
    m = cell_mask()
    m[TOP : TOP + depth, 100:106] = DENDRITE
    r = slice_morphology(m)
    assert r.penetration == pytest.approx(depth / 100, abs=0.011)
    assert r.components[0] == 1 and r.largest_dendrite_px == depth * 6


def test_penetration_from_the_bottom_and_the_deepest_wins() -> None:
    m = cell_mask()
    m[BOT - 30 : BOT, 20:25] = DENDRITE  # 30 % from the bottom
    m[TOP : TOP + 12, 200:204] = DENDRITE  # 12 % from the top
    m[TOP + 40 : TOP + 45, 250:260] = DENDRITE  # floating fragment nearer the top: reaches 45 %
    r = slice_morphology(m)
    assert r.penetration == pytest.approx(0.45, abs=0.011)
    assert r.components[0] == 3


def test_bridging_dendrite_is_a_short_circuit() -> None:
    m = cell_mask()
    m[TOP:BOT, 150:154] = DENDRITE
    assert slice_morphology(m).penetration == pytest.approx(1.0)


def test_small_components_and_other_classes() -> None:
    m = cell_mask()
    m[TOP + 50, 10] = DENDRITE  # one stray pixel: ignored
    m[TOP : TOP + 6, 30:40] = REDEPOSIT
    m[TOP : TOP + 6, 60:70] = REDEPOSIT
    m[TOP - 8 : TOP, 90:110] = PIT
    r = slice_morphology(m, min_px=4)
    assert r.penetration == 0.0 and r.components == (0, 2, 1)
    assert r.counts[REDEPOSIT] == 120 and r.dendrite_gap_fraction == pytest.approx(1 / (100 * W))


def test_interfaces_ignore_stray_pixels_in_the_electrode() -> None:
    m = cell_mask()
    m[5, 100] = ELECTROLYTE  # misclassified pixel deep in the top electrode
    top, bot, has = interfaces(m)
    assert has.all() and top[100] == TOP and bot[100] == BOT


def test_penetration_tracks_growth_on_synthetic_ground_truth() -> None:
    cell = make_cell((256, 256), seed=21, depth=16)
    pens = [slice_morphology(labels_at(cell, 8.0, g)).penetration for g in (0.2, 0.6, 1.0)]
    assert pens[0] <= pens[1] <= pens[2] and pens[2] > 0


def test_cumulative_volume_resets_per_series() -> None:
    c = CumulativeVolume(3)
    c.add("a", (1, 2, 3))
    np.testing.assert_array_equal(c.add("a", (1, 0, 0)), [2, 2, 3])
    assert c.slices == 2
    np.testing.assert_array_equal(c.add("b", (0, 1, 0)), [0, 1, 0])
    assert c.fractions().sum() == pytest.approx(1.0)


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError):
        slice_morphology(np.zeros((2, 3, 4), np.uint8))
