"""Reference models for the engine tests and benchmark: a tiny conv net, a U-Net, a CNN-GRU.

They are not trained; they fix shapes and operator mixes representative of the shipped models
(the engine benchmark's "reference U-Net with 16 base channels at 512×512" and "CNN-GRU over
16×64×64 frames").
"""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """(B, 1, H, W) → (B, 2, H, W)."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class RefUNet(nn.Module):
    """A plain U-Net: ``base`` channels doubling over ``depth`` levels; (B, 1, H, W) → (B, classes, H, W).

    H and W must be divisible by 2**depth.
    """

    def __init__(self, base: int = 16, depth: int = 4, classes: int = 3) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(1, chans[0])] + [_block(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in range(depth)]
        )
        self.dec = nn.ModuleList([_block(chans[i] * 2, chans[i]) for i in range(depth)])
        self.head = nn.Conv2d(chans[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.up))):
            x = self.dec[i](torch.cat([self.up[i](x), skips.pop()], dim=1))
        return self.head(x)


class RefCNNGRU(nn.Module):
    """(B, T, 1, H, W) → risk (B, 1) and latent (B, 1): a per-frame CNN, a GRU, two heads."""

    def __init__(self, channels: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels * 2, channels * 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.gru = nn.GRU(channels * 2, hidden, batch_first=True)
        self.latent = nn.Linear(hidden, 1)
        self.risk = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = x.shape[0], x.shape[1]
        f = self.cnn(x.flatten(0, 1)).flatten(1).view(b, t, -1)
        out, _ = self.gru(f)
        z = self.latent(out[:, -1])
        return torch.sigmoid(self.risk(z)), z


class TinyGRU(nn.Module):
    """(B, T, F) → (B, 1): a GRU over feature vectors (the descriptor baseline's shape)."""

    def __init__(self, features: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return torch.sigmoid(self.head(out[:, -1]))
