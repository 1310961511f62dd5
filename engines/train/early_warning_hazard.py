"""Training and evaluation of the forecasting (hazard) early-warning models on any geometry.

Targets per window ending at frame ``t`` of a run with ``n`` frames and transition ``t*``
(robust, :func:`engines.synth.growth_geometry.robust_transition_frame`):

* ``t* >= 0`` and ``t* - t < K``: an *event* at ``k = max(0, t* - t)`` (0: now or already);
* otherwise *censored* after ``c = min(K, n - t)`` hazard steps (no transition was seen in the
  observed frames; runs that stay compact are censored at their end).

Loss: the discrete-time survival negative log-likelihood (BCE on the hazard logits, masked to the
observed steps). Augmentation: a random rotation by a multiple of 90° and a flip per run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from engines.models.hazard_gru import K_HAZARD, HazardNet
from engines.prep.geo_features import N_FEAT, features, polarity
from engines.synth.growth import HORIZON
from engines.train.early_warning_data import WINDOW, RunSet, windows_of_run
from engines.train.early_warning_eval import auroc

log = logging.getLogger("engines.train.early_warning")


@dataclass
class Prepared:
    """Per run: polarity-corrected frames ``(n, 64, 64)``, window features ``(n-T+1, T, F)``."""

    runs: RunSet
    frames: list[np.ndarray]
    feats: list[np.ndarray]


def prepare(runs: RunSet, workers: int = 1) -> Prepared:
    """Polarity and window features of every run (``workers`` processes for large sets)."""
    if workers > 1 and len(runs) > 8:
        from concurrent.futures import ProcessPoolExecutor

        parts = np.array_split(np.arange(len(runs)), workers * 4)
        with ProcessPoolExecutor(max_workers=workers) as pool:
            done = list(pool.map(prepare, [runs.subset(list(p)) for p in parts]))
        return Prepared(runs, [f for d in done for f in d.frames], [x for d in done for x in d.feats])
    frames, feats = [], []
    for i in range(len(runs)):
        f = runs.run(i).astype(np.float32)
        w = windows_of_run(f)
        pols = np.array([polarity(x) for x in w]) if len(w) else np.ones(1)
        pol = 1.0 if pols.sum() >= 0 else -1.0
        frames.append(f * pol)
        feats.append(
            np.stack([features(x, p) for x, p in zip(w, pols, strict=True)])
            if len(w)
            else np.zeros((0, WINDOW, N_FEAT), np.float32)
        )
    return Prepared(runs, frames, feats)


def targets(n: int, t_star: int, k: int = K_HAZARD) -> tuple[np.ndarray, np.ndarray]:
    """Per full window: hazard targets and mask ``(n - T + 1, K)`` (see module docstring)."""
    ends = np.arange(WINDOW - 1, n)
    y = np.zeros((len(ends), k), np.float32)
    m = np.zeros((len(ends), k), np.float32)
    for j, t in enumerate(ends.tolist()):
        if t_star >= 0 and t_star - t < k:
            e = max(0, t_star - t)
            y[j, e] = 1.0
            m[j, : e + 1] = 1.0
        else:
            m[j, : min(k, n - t)] = 1.0
    return y, m


@dataclass(frozen=True)
class HazardConfig:
    mode: str = "hybrid"
    epochs: int = 10
    runs_per_batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def _sliding(emb: torch.Tensor) -> torch.Tensor:
    return emb.unfold(0, WINDOW, 1).permute(0, 2, 1)


def _augment(f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = np.rot90(f, int(rng.integers(0, 4)), axes=(1, 2))
    return np.ascontiguousarray(f[:, :, ::-1] if rng.random() < 0.5 else f)


def forward_run(model: HazardNet, frames: np.ndarray, feats: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows of one run → (hazard logits ``(W, K)``, latent ``(W, 1)``)."""
    emb = None
    if model.encoder is not None:
        emb = _sliding(model.embed(torch.from_numpy(frames)))
    z = model.latent_from(emb, torch.from_numpy(feats))
    return model.head.logits(z), z


def subset(data: Prepared, idx: list[int]) -> Prepared:
    return Prepared(data.runs.subset(idx), [data.frames[i] for i in idx], [data.feats[i] for i in idx])


def fit(train: Prepared, val: Prepared, cfg: HazardConfig, progress: Callable[[int], None] | None = None):
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = HazardNet(cfg.mode, horizon=HORIZON)
    allf = np.concatenate([f.reshape(-1, N_FEAT) for f in train.feats if len(f)])
    model.feat_mean.copy_(torch.from_numpy(allf.mean(0)))
    model.feat_std.copy_(torch.from_numpy(np.maximum(allf.std(0), 1e-3)))
    tg = [targets(len(f), int(t)) for f, t in zip(train.frames, train.runs.t_star, strict=True)]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train.frames)
    steps = cfg.epochs * -(-n // cfg.runs_per_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, steps))
    best, best_auc, history = copy.deepcopy(model.state_dict()), -1.0, []
    for epoch in range(cfg.epochs):
        model.train()
        losses = []
        order = rng.permutation(n)
        for b0 in range(0, n, cfg.runs_per_batch):
            logits, ys, ms = [], [], []
            for i in order[b0 : b0 + cfg.runs_per_batch]:
                if len(train.feats[i]) == 0:
                    continue
                lg, _ = forward_run(model, _augment(train.frames[i], rng), train.feats[i])
                logits.append(lg)
                ys.append(torch.from_numpy(tg[i][0]))
                ms.append(torch.from_numpy(tg[i][1]))
            lg, y, m = torch.cat(logits), torch.cat(ys), torch.cat(ms)
            loss = (F.binary_cross_entropy_with_logits(lg, y, reduction="none") * m).sum() / len(lg)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress:
                progress(1)
        model.eval()
        auc = evaluate(val, predict_all(model, val))["auroc_pre_transition"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auroc_pre": auc})
        log.info("%s epoch %d loss %.4f val pre-AUROC %.4f", cfg.mode, epoch + 1, history[-1]["loss"], auc)
        if auc > best_auc:
            best_auc, best = auc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best)
    model.eval()
    return model, history


@dataclass
class Outputs:
    """Per run, per frame (NaN before the first full window): risk, latent, hazards, eta."""

    risk: list[np.ndarray]
    latent: list[np.ndarray]
    hazard: list[np.ndarray]
    eta: list[np.ndarray]


def predict_all(model: HazardNet, data: Prepared) -> Outputs:
    out = Outputs([], [], [], [])
    with torch.no_grad():
        for f, x in zip(data.frames, data.feats, strict=True):
            n = len(f)
            r, z, e = (np.full(n, np.nan, np.float32) for _ in range(3))
            hz = np.full((n, K_HAZARD), np.nan, np.float32)
            if len(x):
                lg, lat = forward_run(model, f, x)
                h, risk, eta = model.head.summaries(lg)
                r[WINDOW - 1 :], z[WINDOW - 1 :], e[WINDOW - 1 :] = risk[:, 0], lat[:, 0], eta[:, 0]
                hz[WINDOW - 1 :] = h.numpy()
            out.risk.append(r)
            out.latent.append(z)
            out.hazard.append(hz)
            out.eta.append(e)
    return out


# -- alarm rule and metrics -----------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    major: float = 0.5
    min_count: int = 2
    hysteresis: float = 0.2


def first_alarm(risk: np.ndarray, rule: Rule) -> int:
    """First MAJOR under the daemon's threshold rule semantics (NaN ignored); -1 if none."""
    streak = 0
    for t, r in enumerate(risk):
        if not np.isfinite(r):
            continue
        streak = streak + 1 if r >= rule.major else 0
        if streak >= rule.min_count:
            return t
    return -1


def rule_metrics(
    runs: RunSet, risk: list[np.ndarray], rule: Rule, idx: np.ndarray | None = None
) -> dict[str, float]:
    sel = range(len(runs)) if idx is None else idx
    leads, fracs, warned, n_tr, n_st, n_fa = [], [], 0, 0, 0, 0
    for i in sel:
        a = first_alarm(risk[i], rule)
        ts = int(runs.t_star[i])
        if ts >= 0:
            n_tr += 1
            if a >= 0:
                leads.append(ts - a)
                fracs.append((ts - a) / max(ts, 1))
            warned += 0 <= a <= ts
        else:
            n_st += 1
            n_fa += a >= 0
    return {
        "lead_time_frames_median": float(np.median(leads)) if leads else float("nan"),
        "lead_time_fraction_median": float(np.median(fracs)) if fracs else float("nan"),
        "warned_before_t_star": warned / n_tr if n_tr else float("nan"),
        "missed_rate": 1 - warned / n_tr if n_tr else float("nan"),
        "false_alarm_rate": n_fa / n_st if n_st else float("nan"),
        "runs": float(len(list(sel))),
        "runs_transitioning": float(n_tr),
        "runs_compact": float(n_st),
    }


def evaluate(
    runs: RunSet | Prepared, out: Outputs, idx: np.ndarray | None = None, horizon: int = HORIZON
) -> dict[str, float]:
    """AUROC (all windows) and pre-transition AUROC (windows ending at or before t*)."""
    rs = runs.runs if isinstance(runs, Prepared) else runs
    sel = range(len(rs)) if idx is None else idx
    s, y, ps, py = [], [], [], []
    for i in sel:
        r = out.risk[i]
        lab = rs.labels(i, horizon)
        ok = np.isfinite(r)
        s.append(r[ok])
        y.append(lab[ok])
        pre = ok & ((np.arange(len(r)) <= rs.t_star[i]) if rs.t_star[i] >= 0 else True)
        ps.append(r[pre])
        py.append(lab[pre])
    return {
        "auroc": auroc(np.concatenate(s), np.concatenate(y)),
        "auroc_pre_transition": auroc(np.concatenate(ps), np.concatenate(py)),
    }


def calibrate_rule(
    runs: RunSet, risk: list[np.ndarray], max_false: float = 0.05
) -> tuple[Rule, dict[str, float]]:
    """The rule (threshold, min_count) with false alarms <= ``max_false`` on these (validation)
    runs that warns most transitions before t*, then with the longest median lead."""
    best, best_key, best_m = Rule(0.995, 8), (-1.0, -1e9), {}
    thresholds = np.concatenate([np.arange(0.2, 0.98, 0.02), [0.98, 0.985, 0.99, 0.995]])
    for mc in (1, 2, 3, 4, 5, 6, 8):
        for thr in np.round(thresholds, 3):
            rule = Rule(float(thr), mc)
            m = rule_metrics(runs, risk, rule)
            if not m["false_alarm_rate"] <= max_false:
                continue
            lead = m["lead_time_frames_median"]
            key = (round(m["warned_before_t_star"], 3), -1e9 if np.isnan(lead) else lead)
            if key > best_key:
                best, best_key, best_m = rule, key, m
    return best, best_m
