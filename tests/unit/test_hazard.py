"""Discrete-time hazard: survival maths, censoring targets, the alarm-rule calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.models.hazard_gru import K_HAZARD, HazardHead, HazardNet
from engines.prep.hazard_math import interval, risk_within, survival
from engines.train.early_warning_data import WINDOW, RunSet
from engines.train.early_warning_hazard import Rule, calibrate_rule, first_alarm, rule_metrics, targets


def test_survival_risk_and_interval_by_hand() -> None:
    h = np.array([0.0, 0.5, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(survival(h), [1.0, 0.5, 0.25, 0.25, 0.0])
    assert risk_within(h, 2) == pytest.approx(0.75)
    lo, hi = interval(h, 0.1, 0.9)
    assert (lo, hi) == (1, 4)
    assert interval(np.zeros(5))[1] == 5  # never within range → K


def test_head_summaries_match_numpy() -> None:
    head = HazardHead(k=K_HAZARD, horizon=14)
    z = torch.linspace(-3, 3, 5)[:, None]
    h, risk, eta = head.summaries(head.logits(z))
    hn = h.detach().numpy()
    np.testing.assert_allclose(risk[:, 0].detach().numpy(), risk_within(hn, 14), atol=1e-5)
    np.testing.assert_allclose(eta[:, 0].detach().numpy(), survival(hn).sum(axis=1), atol=1e-4)
    assert np.all(np.diff(risk[:, 0].detach().numpy()) > 0)  # monotone in the 1-D latent


def test_targets_events_and_censoring() -> None:
    y, m = targets(40, 20, k=10)
    ends = np.arange(WINDOW - 1, 40)
    for j, t in enumerate(ends):
        if t >= 20:  # already happened: event now
            assert y[j, 0] == 1 and m[j].sum() == 1
        elif 20 - t < 10:
            assert y[j, 20 - t] == 1 and m[j].sum() == 20 - t + 1
        else:
            assert y[j].sum() == 0 and m[j].sum() == 10
    y, m = targets(30, -1, k=10)  # compact run: censored at its end
    assert y.sum() == 0
    assert m[-1].sum() == 1 and m[0].sum() == 10


def test_every_mode_builds_and_runs() -> None:
    frames, feats = torch.randn(2, WINDOW, 64, 64), torch.rand(2, WINDOW, 8)
    for mode in ("hybrid", "cnn", "features", "static", "logistic"):
        h, risk, z, eta = HazardNet(mode)(frames, feats)
        assert h.shape == (2, K_HAZARD) and risk.shape == z.shape == eta.shape == (2, 1)
    with pytest.raises(ValueError):
        HazardNet("nope")


def _runs(t_stars: list[int], n: int = 40) -> RunSet:
    k = len(t_stars)
    return RunSet(
        frames=np.zeros((k * n, 2, 2), np.float16),
        offsets=np.arange(k + 1, dtype=np.int64) * n,
        t_star=np.array(t_stars, dtype=np.int64),
        da_start=np.zeros(k),
        da_end=np.zeros(k),
        seeds=np.arange(k, dtype=np.int64),
        psi=np.zeros(k * n, np.float32),
    )


def test_rule_metrics_and_calibration_respect_the_false_alarm_budget() -> None:
    runs = _runs([30] * 10 + [-1] * 20)
    risk = []
    for i in range(30):
        r = np.full(40, 0.1)
        if i < 10:
            r[20:] = 0.9  # warns 10 frames before t* = 30
        elif i == 10:
            r[5:] = 0.7  # one compact run at 0.7: a rule at <= 0.7 false-alarms 1/20 = 5 %
        elif i == 11:
            r[5:] = 0.6
        risk.append(r)
    m = rule_metrics(runs, risk, Rule(0.5, 2))
    assert m["false_alarm_rate"] == pytest.approx(0.1) and m["warned_before_t_star"] == 1.0
    assert first_alarm(risk[0], Rule(0.5, 2)) == 21
    rule, cm = calibrate_rule(runs, risk, max_false=0.05)
    assert cm["false_alarm_rate"] <= 0.05 and cm["warned_before_t_star"] == 1.0
    assert rule.major > 0.6
