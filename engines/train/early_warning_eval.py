"""Early-warning evaluation: per-run risk traces, AUROC, the alarm rule, lead times, plots.

The alarm rule replays the daemon's threshold rule (``monitor.alerts.rules.ThresholdRule``
semantics, re-implemented here because engines never imports monitor): MAJOR once risk ≥
``major`` for ``min_count`` consecutive windows; cleared when risk < ``major - hysteresis``.

Metrics over a set of runs (each run: per-frame risk, NaN until the window is full):

* ``auroc`` — over every full window, label "transition within H frames or already happened";
* ``auroc_pre_transition`` — the same over windows ending at or before ``t*`` only (pure
  forecasting: the dendrites are not visible yet);
* ``lead_time_frames_median`` — ``t* - first alarm frame`` over transitioning runs that alarm
  (negative: late); ``lead_time_fraction_median`` — the same divided by ``t*``;
* ``false_alarm_rate`` — runs that never transition but alarm; ``missed_rate`` — transitioning
  runs with no alarm at or before ``t*``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.synth.growth import HORIZON
from engines.train.early_warning_data import WINDOW, RunSet, windows_of_run

MAJOR = 0.8
HYSTERESIS = 0.2
MIN_COUNT = 3

WindowPredictor = Callable[[np.ndarray], np.ndarray]
"""Windows ``(B, T, 64, 64)`` float32 → risk ``(B,)``."""


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney with mid-ranks for ties); NaN with one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks for ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) over descending thresholds."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    y = np.asarray(labels).astype(bool)[order]
    tp = np.concatenate([[0], np.cumsum(y)])
    fp = np.concatenate([[0], np.cumsum(~y)])
    return fp / max(1, fp[-1]), tp / max(1, tp[-1])


def first_alarm(
    risk: np.ndarray, major: float = MAJOR, hysteresis: float = HYSTERESIS, min_count: int = MIN_COUNT
) -> int:
    """Frame of the first MAJOR alarm under the threshold rule (NaN ignored); -1 if none."""
    active = False
    streak = 0
    for t, r in enumerate(risk):
        if not np.isfinite(r):
            continue
        if active:
            if r < major - hysteresis:
                active = False
            continue
        streak = streak + 1 if r >= major else 0
        if streak >= min_count:
            return t
    return -1


@dataclass(frozen=True)
class Traces:
    """Per-run, per-frame model outputs (NaN for frames before the first full window)."""

    risk: list[np.ndarray]
    latent: list[np.ndarray] | None = None
    eta: list[np.ndarray] | None = None


def run_traces(
    runs: RunSet, predict: Callable[[np.ndarray], tuple[np.ndarray, ...]], window: int = WINDOW
) -> Traces:
    """Apply ``predict`` (windows → (risk, [latent, eta])) to every full window of every run."""
    risks, latents, etas = [], [], []
    have_latent = True
    for i in range(len(runs)):
        frames = runs.run(i).astype(np.float32)
        n = len(frames)
        w = windows_of_run(frames, window)
        out = predict(np.ascontiguousarray(w)) if len(w) else (np.zeros(0),)
        full = [np.full(n, np.nan, dtype=np.float32) for _ in out]
        for f, o in zip(full, out, strict=True):
            f[window - 1 :] = np.asarray(o, dtype=np.float32).reshape(-1)
        risks.append(full[0])
        if len(full) >= 3:
            latents.append(full[1])
            etas.append(full[2])
        else:
            have_latent = False
    return Traces(risks, latents if have_latent else None, etas if have_latent else None)


def metrics(runs: RunSet, traces: Traces, horizon: int = HORIZON) -> dict[str, float]:
    scores, labels, pre_s, pre_l = [], [], [], []
    leads, fracs = [], []
    n_tr = n_missed = n_stable = n_false = 0
    for i in range(len(runs)):
        r = traces.risk[i]
        y = runs.labels(i, horizon)
        ok = np.isfinite(r)
        scores.append(r[ok])
        labels.append(y[ok])
        t_star = int(runs.t_star[i])
        if t_star >= 0:
            pre = ok & (np.arange(len(r)) <= t_star)
            pre_s.append(r[pre])
            pre_l.append(y[pre])
        else:
            pre_s.append(r[ok])
            pre_l.append(y[ok])
        alarm = first_alarm(r)
        if t_star >= 0:
            n_tr += 1
            if alarm < 0 or alarm > t_star:
                n_missed += 1
            if alarm >= 0:
                leads.append(t_star - alarm)
                fracs.append((t_star - alarm) / max(t_star, 1))
        else:
            n_stable += 1
            n_false += alarm >= 0
    s, lab = np.concatenate(scores), np.concatenate(labels)
    out = {
        "auroc": auroc(s, lab),
        "auroc_pre_transition": auroc(np.concatenate(pre_s), np.concatenate(pre_l)),
        "lead_time_frames_median": float(np.median(leads)) if leads else float("nan"),
        "lead_time_fraction_median": float(np.median(fracs)) if fracs else float("nan"),
        "false_alarm_rate": n_false / n_stable if n_stable else float("nan"),
        "missed_rate": n_missed / n_tr if n_tr else float("nan"),
        "runs": float(len(runs)),
        "runs_transitioning": float(n_tr),
        "windows": float(len(s)),
        "positive_fraction": float(lab.mean()) if len(lab) else float("nan"),
    }
    if n_tr:
        ts = runs.t_star[runs.t_star >= 0]
        out["frames_before_transition_median"] = float(np.median(ts))
    return out


def lead_times(runs: RunSet, traces: Traces) -> np.ndarray:
    out = []
    for i in range(len(runs)):
        t_star = int(runs.t_star[i])
        alarm = first_alarm(traces.risk[i])
        if t_star >= 0 and alarm >= 0:
            out.append(t_star - alarm)
    return np.asarray(out, dtype=np.float64)


def write_plots(
    out_dir: Path, runs: RunSet, traces: Traces, baselines: dict[str, Traces], horizon: int = HORIZON
) -> list[Path]:
    """ROC (model and baselines), lead-time histogram, latent against time aligned on ``t*``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for name, tr in {"CNN-GRU": traces, **baselines}.items():
        s = np.concatenate([r[np.isfinite(r)] for r in tr.risk])
        y = np.concatenate([runs.labels(i, horizon)[np.isfinite(tr.risk[i])] for i in range(len(runs))])
        fpr, tpr = roc_curve(s, y)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(s, y):.3f})", lw=2 if name == "CNN-GRU" else 1)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(
        xlabel="false-positive rate", ylabel="true-positive rate", title=f"ROC, transition within H={horizon}"
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(out_dir / "roc.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    lt = lead_times(runs, traces)
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    if len(lt):
        ax.hist(lt, bins=np.arange(lt.min() - 0.5, lt.max() + 1.5, 1.0).tolist(), color="#2563eb")
        ax.axvline(float(np.median(lt)), color="k", ls="--", label=f"median {np.median(lt):.0f}")
        ax.legend(fontsize=8)
    ax.set(xlabel="lead time [frames] (t* − first alarm)", ylabel="runs", title="Lead time")
    fig.tight_layout()
    paths.append(out_dir / "lead_time_hist.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if traces.latent is not None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for i in range(len(runs)):
            lat = traces.latent[i]
            t = np.arange(len(lat))
            if runs.t_star[i] >= 0:
                ax.plot(t - runs.t_star[i], lat, color="#dc2626", alpha=0.25, lw=0.8)
            elif i % 2 == 0:
                ax.plot(t - len(lat), lat, color="#16a34a", alpha=0.15, lw=0.8)
        ax.axvline(0, color="k", lw=1)
        ax.set(
            xlabel="frames relative to t* (red: transitioning runs; green: compact runs, vs. run end)",
            ylabel="latent (surrogate variable)",
            title="Latent against time aligned on the transition",
        )
        ax.xaxis.label.set_fontsize(7)
        fig.tight_layout()
        paths.append(out_dir / "latent_aligned.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def summarise(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}
