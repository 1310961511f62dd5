"""Training loops for the CNN-GRU and the three baselines, and their window predictors.

Efficient batching: the frame encoder runs once per frame of a run, and the GRU over every
sliding window of the embeddings (``unfold``), so a run of ``n`` frames costs ``n`` CNN passes,
not ``n·T``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engines.models.cnn_gru import EMBED, HIDDEN, CnnGru, StaticCnn
from engines.models.descriptors import (
    DescriptorGru,
    DescriptorLogistic,
    DescriptorScaler,
    descriptors,
    logistic_features,
)
from engines.synth.growth import HORIZON, PSI_CRIT
from engines.train.early_warning_data import WINDOW, RunSet
from engines.train.early_warning_eval import auroc

Progress = Callable[[int], None]
log = logging.getLogger("engines.train.early_warning")


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 12
    runs_per_batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eta_weight: float = 0.2
    seed: int = 0
    # Forecast weighting of the risk loss (defaults: plain mean, the shipped model's training).
    # Windows ending more than ``post_margin`` frames after t* (dendrites plainly visible) get
    # ``post_weight``; windows ending in [t* - H, t*] (the forecasting ones) get ``lead_weight``.
    post_weight: float = 1.0
    post_margin: int = 2
    lead_weight: float = 1.0
    # Early stopping on "auroc" (every window) or "auroc_pre" (windows ending at or before t*).
    select_on: str = "auroc"
    # Multi-task: weight of an auxiliary regression of the order parameter psi (window end and
    # ``psi_ahead`` frames later) from the GRU state; the auxiliary head is dropped after training.
    psi_weight: float = 0.0
    psi_ahead: int = 7


def _run_tensors(runs: RunSet, i: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frames = torch.from_numpy(runs.run(i).astype(np.float32))
    if flip:
        frames = frames.flip(-1)
    y = torch.from_numpy(runs.labels(i))
    n = len(frames)
    t = torch.arange(n, dtype=torch.float32)
    t_star = int(runs.t_star[i])
    eta = (t_star - t).clamp(0, 2 * HORIZON) if t_star >= 0 else torch.full((n,), 2.0 * HORIZON)
    return frames, y, eta


def _sliding(emb: torch.Tensor, window: int) -> torch.Tensor:
    """``(n, E)`` → ``(n - window + 1, window, E)``."""
    return emb.unfold(0, window, 1).permute(0, 2, 1)


def _batches(n_runs: int, per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n_runs)
    return [order[i : i + per_batch] for i in range(0, n_runs, per_batch)]


def window_weights(n: int, t_star: int, cfg: FitConfig) -> torch.Tensor:
    """Loss weight of each full window of an ``n``-frame run (window ``j`` ends at ``j + WINDOW - 1``)."""
    t = torch.arange(WINDOW - 1, n)
    w = torch.ones(len(t))
    if t_star >= 0:
        w[t > t_star + cfg.post_margin] = cfg.post_weight
        w[(t >= t_star - HORIZON) & (t <= t_star)] = cfg.lead_weight
    return w


def _psi_targets(runs: RunSet, i: int, ahead: int) -> torch.Tensor:
    """Per full window: psi at the window's last frame and ``ahead`` frames later (clamped to
    the run's end), in units of ``PSI_CRIT``: ``(n - WINDOW + 1, 2)``."""
    psi = runs.psi[runs.offsets[i] : runs.offsets[i + 1]].astype(np.float32) / PSI_CRIT
    end = np.arange(WINDOW - 1, len(psi))
    later = np.minimum(end + ahead, len(psi) - 1)
    return torch.from_numpy(np.stack([psi[end], psi[later]], axis=1))


def _pos_weight(runs: RunSet) -> float:
    y = np.concatenate([runs.labels(i)[WINDOW - 1 :] for i in range(len(runs))])
    return float(np.clip((1 - y.mean()) / max(y.mean(), 1e-3), 1.0, 10.0))


def fit_cnn_gru(
    train: RunSet,
    val: RunSet,
    cfg: FitConfig,
    model: CnnGru | None = None,
    progress: Progress | None = None,
) -> tuple[CnnGru, list[dict[str, float]]]:
    """Train (or fine-tune ``model``); keep the state with the best validation AUROC."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = model or CnnGru()
    psi_head = nn.Linear(HIDDEN, 2) if cfg.psi_weight > 0 else None
    params = list(model.parameters()) + (list(psi_head.parameters()) if psi_head is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(_batches(len(train), cfg.runs_per_batch, rng))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, steps))
    pos_w = torch.tensor(_pos_weight(train))
    if cfg.select_on not in ("auroc", "auroc_pre"):
        raise ValueError(f"select_on must be 'auroc' or 'auroc_pre', not {cfg.select_on!r}")
    history: list[dict[str, float]] = []
    best, best_auc = copy.deepcopy(model.state_dict()), -1.0
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        for idx in _batches(len(train), cfg.runs_per_batch, rng):
            parts = [
                (*_run_tensors(train, int(i), bool(rng.random() < 0.5)), int(train.t_star[i]), int(i))
                for i in idx
            ]
            parts = [p for p in parts if len(p[0]) >= WINDOW]
            frames = torch.cat([p[0] for p in parts])
            emb = model.encoder(frames)
            wins, ys, etas, ws, psis = [], [], [], [], []
            start = 0
            for f, y, eta, ts, i in parts:
                if psi_head is not None:
                    psis.append(_psi_targets(train, i, cfg.psi_ahead))
                wins.append(_sliding(emb[start : start + len(f)], WINDOW))
                ys.append(y[WINDOW - 1 :])
                etas.append(eta[WINDOW - 1 :])
                ws.append(window_weights(len(f), ts, cfg))
                start += len(f)
            states = model.window_states(torch.cat(wins))
            logit, _latent, eta_hat = model.heads(states)
            y, eta_t, w = torch.cat(ys), torch.cat(etas), torch.cat(ws)
            bce = F.binary_cross_entropy_with_logits(logit[:, 0], y, pos_weight=pos_w, reduction="none")
            loss = (bce * w).sum() / w.sum()
            loss = loss + cfg.eta_weight * F.smooth_l1_loss(eta_hat[:, 0] / HORIZON, eta_t / HORIZON)
            if psi_head is not None:
                loss = loss + cfg.psi_weight * F.smooth_l1_loss(psi_head(states), torch.cat(psis))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress:
                progress(1)
        val_auc = evaluate_auroc(val, cnn_gru_predictor(model), pre_only=cfg.select_on == "auroc_pre")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auroc": val_auc})
        log.info("epoch %d: loss %.4f, val AUROC %.4f", epoch + 1, history[-1]["loss"], val_auc)
        if not np.isfinite(val_auc) or val_auc > best_auc:  # undefined AUROC (one class): keep the latest
            best_auc, best = (val_auc if np.isfinite(val_auc) else -1.0), copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    model.eval()
    return model, history


def cnn_gru_predictor(model: CnnGru) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """Windows ``(B, T, 64, 64)`` → (risk, latent, frames_to_transition) with torch."""

    def predict(windows: np.ndarray) -> tuple[np.ndarray, ...]:
        model.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
            # Encode each distinct frame once (windows of one run overlap).
            b, t = x.shape[:2]
            if b > 1 and torch.equal(x[1:, :-1], x[:-1, 1:]):
                frames = torch.cat([x[0], x[1:, -1]])
                wins = _sliding(model.encoder(frames), t)
            else:
                wins = model.encoder(x.reshape(b * t, *x.shape[2:])).reshape(b, t, EMBED)
            logit, latent, eta = model.heads(model.window_states(wins))
            return torch.sigmoid(logit)[:, 0].numpy(), latent[:, 0].numpy(), eta[:, 0].numpy()

    return predict


def evaluate_auroc(
    runs: RunSet, predict: Callable[[np.ndarray], tuple[np.ndarray, ...]], pre_only: bool = False
) -> float:
    """AUROC over every full window, or (``pre_only``) over windows ending at or before t*."""
    from engines.train.early_warning_eval import run_traces

    tr = run_traces(runs, predict)
    s, y = [], []
    for i, r in enumerate(tr.risk):
        keep = np.arange(len(r)) >= WINDOW - 1
        if pre_only and runs.t_star[i] >= 0:
            keep &= np.arange(len(r)) <= runs.t_star[i]
        s.append(r[keep])
        y.append(runs.labels(i)[keep])
    return auroc(np.concatenate(s), np.concatenate(y))


def shift_risk(risk: np.ndarray, shift: float) -> np.ndarray:
    """Move a probability along its logit: ``sigmoid(logit(risk) + shift)`` (NaN stays NaN)."""
    r = np.clip(np.asarray(risk, dtype=np.float64), 1e-7, 1 - 1e-7)
    return (1.0 / (1.0 + np.exp(-(np.log(r / (1 - r)) + shift)))).astype(np.float32)


def calibrate_shift(runs: RunSet, risk: list[np.ndarray]) -> float:
    """Operating point for the fixed alarm rule (≥ 0.8 for 3 windows): the logit shift that
    maximises ``(1 - missed) + lead fraction - 4 · false alarms`` on validation runs.
    A monotone shift: AUROC is unchanged."""
    from engines.train.early_warning_eval import Traces, metrics

    best, best_score = 0.0, -np.inf
    for shift in np.arange(-3.0, 3.01, 0.25):
        m = metrics(runs, Traces([shift_risk(r, shift) for r in risk]))
        lead = m["lead_time_fraction_median"]
        score = (1 - m["missed_rate"]) + (0.0 if np.isnan(lead) else lead) - 4 * m["false_alarm_rate"]
        if score > best_score + 1e-9:
            best, best_score = float(shift), score
    return best


def static_epochs(cfg: FitConfig) -> int:
    return max(1, cfg.epochs // 2)


# -- baselines ------------------------------------------------------------------------------------
def fit_static(train: RunSet, val: RunSet, cfg: FitConfig, progress: Progress | None = None) -> StaticCnn:
    """Static CNN on single frames (label of that frame)."""
    torch.manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 1)
    model = StaticCnn()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    pos_w = torch.tensor(_pos_weight(train))
    best, best_auc = copy.deepcopy(model.state_dict()), -1.0
    for _ in range(static_epochs(cfg)):
        model.train()
        for idx in _batches(len(train), cfg.runs_per_batch, rng):
            parts = [_run_tensors(train, int(i), bool(rng.random() < 0.5)) for i in idx]
            frames = torch.cat([p[0][WINDOW - 1 :] for p in parts])
            y = torch.cat([p[1][WINDOW - 1 :] for p in parts])
            loss = F.binary_cross_entropy_with_logits(model.logits(frames)[:, 0], y, pos_weight=pos_w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress:
                progress(1)
        val_auc = evaluate_auroc(val, static_predictor(model))
        if val_auc > best_auc:
            best_auc, best = val_auc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    model.eval()
    return model


def static_predictor(model: StaticCnn, shift: float = 0.0) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    def predict(windows: np.ndarray) -> tuple[np.ndarray, ...]:
        model.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(windows[:, -1], dtype=np.float32))
            return (torch.sigmoid(model.logits(x) + shift)[:, 0].numpy(),)

    return predict


def _desc_windows(runs: RunSet, scaler: DescriptorScaler) -> tuple[list[np.ndarray], list[np.ndarray]]:
    xs, ys = [], []
    for i in range(len(runs)):
        d = scaler(descriptors(runs.run(i)))
        if len(d) < WINDOW:
            continue
        xs.append(np.lib.stride_tricks.sliding_window_view(d, WINDOW, axis=0).transpose(0, 2, 1))
        ys.append(runs.labels(i)[WINDOW - 1 :])
    return xs, ys


def fit_descriptor_models(
    train: RunSet, cfg: FitConfig, progress: Progress | None = None
) -> tuple[DescriptorScaler, DescriptorGru, DescriptorLogistic]:
    """GRU over descriptor windows and logistic regression on descriptor features."""
    torch.manual_seed(cfg.seed + 2)
    scaler = DescriptorScaler.fit(descriptors(train.frames.astype(np.float32)))
    xs, ys = _desc_windows(train, scaler)
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(xs)))
    y = torch.from_numpy(np.concatenate(ys).astype(np.float32))
    pos_w = torch.tensor(_pos_weight(train))
    gru, logi = DescriptorGru(), DescriptorLogistic()
    feats = torch.from_numpy(logistic_features(x.numpy()))
    for model, inputs, epochs in ((gru, x, 3 * cfg.epochs), (logi, feats, 6 * cfg.epochs)):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(cfg.seed + 3)
        for _ in range(epochs):
            perm = torch.randperm(len(inputs), generator=g)
            for j in range(0, len(perm), 512):
                b = perm[j : j + 512]
                loss = F.binary_cross_entropy_with_logits(model(inputs[b])[:, 0], y[b], pos_weight=pos_w)
                opt.zero_grad()
                loss.backward()
                opt.step()
        if progress:
            progress(1)
        model.eval()
    return scaler, gru, logi


def descriptor_predictor(
    scaler: DescriptorScaler, model: nn.Module, logistic: bool, shift: float = 0.0
) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    def predict(windows: np.ndarray) -> tuple[np.ndarray, ...]:
        b, t = windows.shape[:2]
        d = scaler(descriptors(windows.reshape(b * t, *windows.shape[2:]))).reshape(b, t, -1)
        x = logistic_features(d) if logistic else d
        with torch.no_grad():
            return (torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x))) + shift)[:, 0].numpy(),)

    return predict
