"""Forecast weighting and the psi auxiliary targets of the CNN-GRU training loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engines.synth.growth import HORIZON, PSI_CRIT
from engines.train.early_warning_data import WINDOW, RunSet
from engines.train.early_warning_models import FitConfig, _psi_targets, fit_cnn_gru, window_weights


def test_default_weights_are_uniform() -> None:
    assert torch.equal(window_weights(40, 20, FitConfig()), torch.ones(40 - WINDOW + 1))
    assert torch.equal(window_weights(40, -1, FitConfig(post_weight=0.1)), torch.ones(40 - WINDOW + 1))


def test_forecast_weights_by_window_end() -> None:
    n, t_star = 60, 30
    w = window_weights(n, t_star, FitConfig(post_weight=0.25, post_margin=2, lead_weight=2.0))
    end = np.arange(WINDOW - 1, n)
    assert np.all(w.numpy()[end > t_star + 2] == 0.25)
    assert np.all(w.numpy()[(end >= t_star - HORIZON) & (end <= t_star)] == 2.0)
    assert np.all(w.numpy()[end < t_star - HORIZON] == 1.0)
    assert np.all(w.numpy()[(end > t_star) & (end <= t_star + 2)] == 1.0)


def _runs(n_runs: int = 2, n: int = 12) -> RunSet:
    rng = np.random.default_rng(0)
    psi = np.tile(np.linspace(0.0, 0.5, n, dtype=np.float32), n_runs)
    return RunSet(
        frames=rng.random((n_runs * n, 64, 64)).astype(np.float16),
        offsets=np.arange(n_runs + 1, dtype=np.int64) * n,
        t_star=np.array([8, -1][:n_runs], dtype=np.int64),
        da_start=np.full(n_runs, 0.1),
        da_end=np.full(n_runs, np.nan),
        seeds=np.arange(n_runs, dtype=np.int64),
        psi=psi,
    )


def test_psi_targets_now_and_ahead() -> None:
    runs = _runs()
    t = _psi_targets(runs, 1, ahead=3).numpy()
    psi = runs.psi[12:24] / PSI_CRIT
    assert t.shape == (12 - WINDOW + 1, 2)
    np.testing.assert_allclose(t[:, 0], psi[WINDOW - 1 :])
    np.testing.assert_allclose(t[:, 1], psi[np.minimum(np.arange(WINDOW - 1, 12) + 3, 11)])


def test_fit_with_forecast_weights_and_psi_head_runs() -> None:
    runs = _runs()
    cfg = FitConfig(epochs=1, runs_per_batch=2, post_weight=0.25, lead_weight=2.0, psi_weight=1.0)
    model, history = fit_cnn_gru(runs, runs, replace(cfg, select_on="auroc_pre"))
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert not any(k.startswith("psi") for k in model.state_dict())  # auxiliary head is not shipped
    with pytest.raises(ValueError):
        fit_cnn_gru(runs, runs, replace(cfg, select_on="nope"))
