"""TransforCNN (Quenum et al. 2023): a ViT encoder feeding a CNN decoder, for 128×128 patches.

The 128×128 patch is cut into 16×16 sub-patches (64 tokens) embedded in 64 dimensions; token
positions are encoded with random Fourier features of their (row, column) centre. Eight
transformer encoder units follow; the outputs of units 2, 4, 6 and 8 are tapped (one every two)
and brought back to 16, 32, 64 and 128 px by transposed convolutions, where a UNETR-style CNN
decoder fuses them coarse to fine with a full-resolution convolutional stem on the raw patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engines.models.unet import conv_block


class FourierPositions(nn.Module):
    """γ(p) = [sin 2πBp, cos 2πBp] for token centres p ∈ [0, 1]², B ~ N(0, σ²) fixed."""

    def __init__(self, grid: int, dim: int, sigma: float = 3.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        b = torch.randn(2, dim // 2, generator=g) * sigma
        c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
        p = torch.stack(torch.meshgrid(c, c, indexing="ij"), dim=-1).reshape(-1, 2)
        proj = 2 * math.pi * p @ b
        self.register_buffer("features", torch.cat([proj.sin(), proj.cos()], dim=-1), persistent=True)
        self.linear = nn.Linear(dim, dim)

    def forward(self) -> torch.Tensor:
        return self.linear(self.features)


def _up(cin: int, cout: int, factor: int) -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, factor, stride=factor), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class TransforCNN(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 5,
        patch: int = 128,
        sub_patch: int = 16,
        dim: int = 64,
        units: int = 8,
        heads: int = 4,
        mlp: int = 128,
        base: int = 16,
    ) -> None:
        super().__init__()
        if patch % sub_patch or units % 4:
            raise ValueError("patch must be a multiple of sub_patch and units a multiple of 4")
        self.patch, self.grid = patch, patch // sub_patch
        self.embed = nn.Conv2d(in_channels, dim, sub_patch, stride=sub_patch)
        self.pos = FourierPositions(self.grid, dim)
        self.units = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(units)
        )
        self.taps = tuple(range(units // 4 - 1, units, units // 4))  # 2nd, 4th, 6th, 8th unit
        c1, c2, c3, c4 = base, 2 * base, 4 * base, 4 * base
        self.t8 = _up(dim, c4, 2)  # 8 → 16 px grid
        self.t6 = _up(dim, c4, 2)
        self.d16 = conv_block(2 * c4, c4)
        self.u16 = _up(c4, c3, 2)  # 16 → 32
        self.t4 = _up(dim, c3, 4)
        self.d32 = conv_block(2 * c3, c3)
        self.u32 = _up(c3, c2, 2)  # 32 → 64
        self.t2 = _up(dim, c2, 8)
        self.d64 = conv_block(2 * c2, c2)
        self.u64 = _up(c2, c1, 2)  # 64 → 128
        self.stem = conv_block(in_channels, c1)
        self.d128 = conv_block(2 * c1, c1)
        self.head = nn.Conv2d(c1, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes, 128, 128)`` for ``x`` of shape ``(B, 1, 128, 128)``."""
        b = x.shape[0]
        z = self.embed(x).flatten(2).transpose(1, 2) + self.pos()
        taps = []
        for i, unit in enumerate(self.units):
            z = unit(z)
            if i in self.taps:
                taps.append(z.transpose(1, 2).reshape(b, -1, self.grid, self.grid))
        z2, z4, z6, z8 = taps
        y = self.d16(torch.cat([self.t8(z8), self.t6(z6)], dim=1))
        y = self.d32(torch.cat([self.u16(y), self.t4(z4)], dim=1))
        y = self.d64(torch.cat([self.u32(y), self.t2(z2)], dim=1))
        y = self.d128(torch.cat([self.u64(y), self.stem(x)], dim=1))
        return self.head(y)


def build_transforcnn(**kwargs: int) -> nn.Module:
    """Factory for the registry's torch backend: a :class:`TransforCNN` returning probabilities."""
    from engines.models.unet import WithSoftmax

    return WithSoftmax(TransforCNN(**kwargs))
