"""CNN-GRU early-warning model (after Jang et al. 2026) and the static-CNN baseline.

Input: a window of ``T`` frames ``(batch, T, 64, 64)`` float32, raw intensities resized to
64×64 (each frame is standardised inside the model, so detector gain/offset do not matter).

Per frame a small CNN (4 stride-2 conv blocks, 8→16→32→32 channels, global average + max pool)
makes a 64-d embedding; a GRU (hidden 32) runs over the window; from its last hidden state ``h``:

* ``latent = w·h + b`` — a **1-unit linear bottleneck**, the surrogate variable that tracks
  destabilisation. The risk head sees *only* this scalar: ``risk = sigmoid(a·latent + c)`` with
  ``a > 0`` (softplus), so the latent is monotone in risk by construction and its trajectory over
  a run (plotted aligned on the transition) shows the approach to instability;
* ``frames_to_transition = softplus(v·h + d)`` — a lead-time estimate in frames, trained on runs
  that transition (target ``min(t* - t, 2H)``), and ``2H`` for runs that stay compact.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EMBED = 64
HIDDEN = 32


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-frame zero mean, unit variance over the last two axes."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(-2, -1), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6)


class FrameEncoder(nn.Module):
    """``(N, 64, 64)`` → ``(N, EMBED)``."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * c_in, EMBED)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv(standardise(frames).unsqueeze(1))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return F.relu(self.proj(pooled))


class CnnGru(nn.Module):
    """Window ``(B, T, 64, 64)`` → ``risk (B, 1)``, ``latent (B, 1)``, ``frames_to_transition (B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = FrameEncoder()
        self.gru = nn.GRU(EMBED, HIDDEN, batch_first=True)
        self.to_latent = nn.Linear(HIDDEN, 1)
        self.risk_scale = nn.Parameter(torch.tensor(0.5))
        self.risk_bias = nn.Parameter(torch.tensor(0.0))
        self.eta = nn.Linear(HIDDEN, 1)

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From GRU states ``(..., HIDDEN)``: (risk logit, latent, frames_to_transition)."""
        latent = self.to_latent(h)
        logit = F.softplus(self.risk_scale) * latent + self.risk_bias
        return logit, latent, F.softplus(self.eta(h))

    def window_states(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, T, EMBED)`` → last GRU state ``(B, HIDDEN)``."""
        _, h = self.gru(emb)
        return h[-1]

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, hh, ww = frames.shape
        emb = self.encoder(frames.reshape(b * t, hh, ww)).reshape(b, t, EMBED)
        logit, latent, eta = self.heads(self.window_states(emb))
        return torch.sigmoid(logit), latent, eta


class StaticCnn(nn.Module):
    """Baseline: the same frame encoder on the window's last frame only → risk ``(B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = FrameEncoder()
        self.head = nn.Linear(EMBED, 1)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 64, 64)`` single frames → logits ``(N, 1)``."""
        return self.head(self.encoder(frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(frames[:, -1]))
