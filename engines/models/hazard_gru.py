"""Forecasting early-warning models: a discrete-time hazard head on a 1-D latent surrogate.

Every variant (the shipped hybrid and the ablation baselines) maps a window to a GRU state or a
feature vector, then to a **1-unit latent** ``z`` (the surrogate variable of destabilisation),
then to per-frame *hazards* ``h_k = sigmoid(softplus(a_k) · z + c_k)`` for ``k = 0 … K-1``:
the probability that the transition happens ``k`` frames after the window's last frame, given
that it has not happened before (``k = 0``: now, or already). Every hazard is monotone in ``z``.

From the hazards (survival ``S_k = Π_{j<k} (1 - h_j)``):

* ``risk`` = P(transition within ``H`` frames) = ``1 - S_{H+1}`` (the label of the old head);
* ``frames_to_transition`` = E[min(T, K)] = ``Σ_{k=1..K} S_k`` (``K`` = "not within the
  forecast range");
* an interval from the quantiles of the discrete distribution (done in numpy by the consumer,
  :func:`engines.prep.hazard_math.interval`).

Inputs: ``frames (B, T, 64, 64)`` polarity-corrected (deposit bright; each frame standardised
inside the graph) and ``features (B, T, N_FEAT)`` (:mod:`engines.prep.geo_features`,
standardised inside the graph with training statistics).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from engines.models.cnn_gru import FrameEncoder
from engines.prep.geo_features import N_FEAT

K_HAZARD = 28
HIDDEN = 32
EMBED = 64


class HazardHead(nn.Module):
    def __init__(self, k: int = K_HAZARD, horizon: int = 14) -> None:
        super().__init__()
        self.k, self.horizon = k, horizon
        self.scale = nn.Parameter(torch.full((k,), 0.5))
        self.bias = nn.Parameter(torch.linspace(0.0, -1.0, k) - 2.0)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, 1)`` → hazard logits ``(B, K)``."""
        return F.softplus(self.scale) * z + self.bias

    def summaries(self, hlogit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hazard logits → (hazard, risk within H, expected frames to transition)."""
        h = torch.sigmoid(hlogit)
        log_surv = torch.cumsum(F.logsigmoid(-hlogit), dim=1)  # log S_{k+1}
        surv = torch.exp(log_surv)
        risk = 1.0 - surv[:, self.horizon : self.horizon + 1]
        eta = surv.sum(dim=1, keepdim=True)
        return h, risk, eta


class HazardNet(nn.Module):
    """``mode``: ``hybrid`` (CNN + features → GRU), ``cnn`` (CNN → GRU), ``features`` (features
    → GRU), ``static`` (CNN on the last frame), ``logistic`` (linear on the last frame's
    features and their change over the window)."""

    feat_mean: torch.Tensor  # buffers (register_buffer), typed for the checker
    feat_std: torch.Tensor

    def __init__(self, mode: str = "hybrid", horizon: int = 14) -> None:
        super().__init__()
        if mode not in ("hybrid", "cnn", "features", "static", "logistic"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self.register_buffer("feat_mean", torch.zeros(N_FEAT))
        self.register_buffer("feat_std", torch.ones(N_FEAT))
        self.encoder = FrameEncoder() if mode in ("hybrid", "cnn", "static") else None
        width = {"hybrid": EMBED + N_FEAT, "cnn": EMBED, "features": N_FEAT}.get(mode, 0)
        self.gru = nn.GRU(width, HIDDEN, batch_first=True) if width else None
        in_latent = {"static": EMBED, "logistic": 2 * N_FEAT}.get(mode, HIDDEN)
        self.to_latent = nn.Linear(in_latent, 1)
        self.head = HazardHead(horizon=horizon)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 64, 64)`` → ``(N, EMBED)`` (modes with a CNN; the CNN sees 2×2 block means, 32×32:
        the fine scale is in the features, and it keeps training within a CPU budget)."""
        assert self.encoder is not None
        return self.encoder(F.avg_pool2d(frames.unsqueeze(1), 2).squeeze(1))

    def latent_from(self, emb: torch.Tensor | None, feats: torch.Tensor) -> torch.Tensor:
        """Per-window ``emb (B, T, EMBED)`` (or None) and raw ``feats (B, T, N_FEAT)`` → ``(B, 1)``."""
        f = (feats - self.feat_mean) / self.feat_std
        if self.mode == "static":
            assert emb is not None
            return self.to_latent(emb[:, -1])
        if self.mode == "logistic":
            return self.to_latent(torch.cat([f[:, -1], f[:, -1] - f[:, 1]], dim=1))
        if self.mode == "features":
            x = f
        else:  # hybrid or cnn
            assert emb is not None
            x = torch.cat([emb, f], dim=2) if self.mode == "hybrid" else emb
        assert self.gru is not None
        _, h = self.gru(x)
        return self.to_latent(h[-1])

    def forward(self, frames: torch.Tensor, features: torch.Tensor):
        b, t = frames.shape[:2]
        emb = None
        if self.encoder is not None:
            emb = self.embed(frames.reshape(b * t, *frames.shape[2:])).reshape(b, t, EMBED)
        z = self.latent_from(emb, features)
        if self.encoder is None:  # keep the "frames" input in the exported graph (same interface)
            z = z + 0.0 * frames[:, :1, :1, :1].reshape(b, 1)
        h, risk, eta = self.head.summaries(self.head.logits(z))
        return h, risk, z, eta
