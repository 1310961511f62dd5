"""U-Net for per-pixel XCT segmentation (Quenum et al. 2023 use 16 → 256 channels on 128×128).

``UNet(base=16, depth=5)`` is the paper's shape: five levels of two 3×3 conv + BN + ReLU, 2×2 max
pooling, transposed-conv upsampling and skip concatenation. ``space_to_depth=s`` adds a lossless
pixel-unshuffle stem (s×s pixels → s² channels) and a pixel-shuffle head, so the network runs at
1/s resolution while still predicting every pixel: the fast variant used for full slices.
Fully convolutional: input height and width must be multiples of ``s · 2**(depth-1)``.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 5,
        base: int = 16,
        depth: int = 5,
        space_to_depth: int = 1,
    ) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.s = space_to_depth
        chans = [base * 2**i for i in range(depth)]
        cin = in_channels * self.s * self.s
        self.down = nn.ModuleList()
        for c in chans:
            self.down.append(conv_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(chans[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.dec.append(conv_block(2 * c, c))
            cin = c
        self.head = nn.Conv2d(cin, n_classes * self.s * self.s, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return self.s * 2 ** (len(self.down) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes, H, W)`` for ``x`` of shape ``(B, 1, H, W)``."""
        if self.s > 1:
            x = nn.functional.pixel_unshuffle(x, self.s)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        x = self.head(x)
        if self.s > 1:
            x = nn.functional.pixel_shuffle(x, self.s)
        return x


class WithSoftmax(nn.Module):
    """Wraps a logits model so the exported graph returns class probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def build_unet(**kwargs: int) -> WithSoftmax:
    """Factory for the registry's torch backend: a :class:`UNet` returning probabilities."""
    return WithSoftmax(UNet(**kwargs))
