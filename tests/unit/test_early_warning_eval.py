"""Early-warning metrics, the replayed alarm rule, descriptors and the data windows."""

from __future__ import annotations

import numpy as np
import pytest

from engines.models.descriptors import DESCRIPTOR_NAMES, descriptors
from engines.train.early_warning_data import RunSet, to_net, windows_of_run
from engines.train.early_warning_eval import Traces, auroc, first_alarm, metrics
from monitor.alerts.model import Severity
from monitor.alerts.rules import ThresholdRule
from monitor.config import RuleSettings


def test_auroc_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auroc(np.full(4, 0.5), y) == 0.5
    assert auroc(np.array([0.1, 0.6, 0.5, 0.9]), y) == 0.75
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize("seed", range(5))
def test_first_alarm_matches_the_daemons_threshold_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    risk = np.clip(np.cumsum(rng.normal(0, 0.15, 80)) * 0.3 + 0.5, 0, 1)
    risk[:5] = np.nan
    rule = ThresholdRule(
        RuleSettings(
            name="r", kind="threshold", pipeline="p", metric="risk", major=0.8, hysteresis=0.2, min_count=3
        )
    )
    expected = -1
    for t, r in enumerate(risk):
        v = rule.evaluate("s", float(r))
        if v is not None and v.severity == Severity.MAJOR:
            expected = t
            break
    assert first_alarm(risk) == expected


def _runset(t_stars: list[int], n: int = 30) -> RunSet:
    r = len(t_stars)
    return RunSet(
        frames=np.zeros((r * n, 8, 8), np.float16),
        offsets=np.arange(r + 1) * n,
        t_star=np.array(t_stars),
        da_start=np.zeros(r),
        da_end=np.full(r, np.nan),
        seeds=np.arange(r),
        psi=np.zeros(r * n, np.float32),
    )


def test_metrics_count_lead_time_false_alarms_and_misses() -> None:
    runs = _runset([20, 25, -1, -1])
    risk = [np.full(30, np.nan) for _ in range(4)]
    for r in risk:
        r[7:] = 0.1
    risk[0][10:] = 0.95  # alarm at frame 12 → lead 8 frames before t* = 20
    risk[1][27:] = 0.95  # alarms at 29, after t* = 25 → missed
    risk[3][15:18] = 0.9  # three windows above 0.8 → a false alarm
    m = metrics(runs, Traces(risk))
    assert m["lead_time_frames_median"] == pytest.approx((8 + (25 - 29)) / 2)
    assert m["missed_rate"] == 0.5
    assert m["false_alarm_rate"] == 0.5
    assert m["runs_transitioning"] == 2


def test_descriptors_separate_a_flat_front_from_fingers() -> None:
    flat = np.zeros((64, 64), np.float32)
    flat[40:] = 1.0
    comb = np.zeros((64, 64), np.float32)
    comb[50:] = 1.0
    comb[10:50, ::8] = 1.0  # thin fingers
    d = descriptors(np.stack([flat, comb]))
    assert d.shape == (2, len(DESCRIPTOR_NAMES))
    names = dict(zip(DESCRIPTOR_NAMES, d.T, strict=True))
    assert names["roughness"][0] == pytest.approx(0.0, abs=1e-6) and names["roughness"][1] > 0.2
    assert names["perimeter_area"][1] > names["perimeter_area"][0]
    overhang = flat.copy()
    overhang[20:24, 10:40] = 1.0  # a side branch with electrolyte under it
    overhang[24:40, 20:22] = 1.0
    fill = descriptors(np.stack([flat, overhang]))[:, DESCRIPTOR_NAMES.index("fill")]
    assert fill[0] == pytest.approx(1.0, abs=1e-3) and fill[1] < 0.9


def test_windows_and_resize() -> None:
    frames = np.arange(10)[:, None, None] * np.ones((1, 4, 4))
    w = windows_of_run(frames, 8)
    assert w.shape == (3, 8, 4, 4)
    assert w[2, -1, 0, 0] == 9 and w[0, 0, 0, 0] == 0
    assert to_net(np.ones((2, 128, 128)), 64).shape == (2, 64, 64)
    assert to_net(np.ones((3, 100, 90)), 64).shape == (3, 64, 64)
