"""E-Net: a weighted average of member models' class probabilities (weights chosen on validation)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


class Ensemble(nn.Module):
    """``forward`` returns probabilities ``Σ w_i softmax(member_i(x))``; members return logits."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(weights) or not members:
            raise ValueError("one weight per member")
        w = torch.tensor(list(weights), dtype=torch.float32)
        self.members = nn.ModuleList(members)
        self.weights: torch.Tensor
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for i, m in enumerate(self.members):
            p = torch.softmax(m(x), dim=1) * self.weights[i]
            out = p if out is None else out + p
        assert out is not None
        return out


def weight_grid(n: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """All weight vectors on a simplex grid with the given step (each ≥ 0, summing to 1)."""
    k = round(1 / step)
    out = []
    for combo in itertools.product(range(k + 1), repeat=n - 1):
        if sum(combo) <= k:
            out.append(tuple(c / k for c in combo) + ((k - sum(combo)) / k,))
    return out


def search_weights(
    probs: Sequence[np.ndarray], score: Callable[[np.ndarray], float], step: float = 0.1
) -> tuple[tuple[float, ...], float]:
    """Grid-search member weights maximising ``score(weighted probabilities)`` on validation data."""
    best: tuple[tuple[float, ...], float] = ((1.0 / len(probs),) * len(probs), -np.inf)
    for w in weight_grid(len(probs), step):
        p = sum((wi * pi for wi, pi in zip(w, probs, strict=True)), np.zeros_like(probs[0]))
        s = score(p)
        if s > best[1]:
            best = (w, s)
    return best


def build_ensemble(members: Sequence[dict], weights: Sequence[float]) -> Ensemble:
    """Factory for the registry's torch backend: ``members`` are ``{"kind", "kwargs"}`` dicts."""
    from engines.models.transforcnn import TransforCNN
    from engines.models.unet import UNet

    kinds = {"unet": UNet, "transforcnn": TransforCNN}
    return Ensemble([kinds[m["kind"]](**m["kwargs"]) for m in members], weights)
