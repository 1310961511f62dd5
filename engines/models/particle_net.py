"""ParticleNet: a small U-Net for particle instance segmentation in TXM frames.

Input: one channel, a frame block-averaged by ``downsample`` and normalised (see
:func:`normalise`); height and width must be multiples of ``2 ** len(channels[1:])``
(:func:`pad_to_multiple`). Outputs, both probabilities in [0, 1] at the input resolution:

- ``fg``: particle foreground (cracks inside a particle count as foreground);
- ``dist``: per-instance normalised distance to the particle's border or to a touching
  neighbour (1 at the particle's "centre", 0 at its edge) — StarDist-like; thresholding it
  gives one seed per particle even where particles touch, and a watershed on it splits them.
"""

from __future__ import annotations

import torch
from torch import nn

# Numpy pre-/post-processing moved to engines.prep.particles (the daemon imports it without torch).
from engines.prep.particles import (  # noqa: F401 - re-exported for training code
    auto_downsample,
    downsample,
    instance_f1,
    instance_targets,
    normalise,
    pad_to_multiple,
    split_instances,
)

DEFAULT_CHANNELS = (8, 16, 32)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ParticleNet(nn.Module):
    def __init__(self, channels: tuple[int, ...] = DEFAULT_CHANNELS) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.down = nn.ModuleList()
        cin = 1
        for c in channels:
            self.down.append(_block(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, c, 2, stride=2))
            self.dec.append(_block(2 * c, c))
            cin = c
        self.head = nn.Conv2d(cin, 2, 1)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.sigmoid(self.logits(image))
        return out[:, 0:1], out[:, 1:2]
