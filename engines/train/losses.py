"""Segmentation losses from Quenum et al. 2023: BCE, Tversky and focal Tversky (multi-class).

All take logits ``(B, C, H, W)`` and integer labels ``(B, H, W)``; probabilities are the
softmax over classes and the targets their one-hot encoding. Tversky index per class
TI = TP / (TP + α·FN + β·FP) (α = 0.7 weighs misses above false alarms, for thin dendrites);
the Tversky loss is mean(1 − TI), the focal Tversky loss mean((1 − TI)^γ) with γ = 0.75.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LOSSES = ("bce", "tversky", "focal_tversky")


def _onehot(labels: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(labels.long(), n).permute(0, 3, 1, 2).float()


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each class's softmax probability against its one-hot mask."""
    p = torch.softmax(logits, 1).clamp(1e-6, 1 - 1e-6)
    t = _onehot(labels, logits.shape[1])
    return F.binary_cross_entropy(p, t)


def tversky_index(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.7, beta: float = 0.3, eps: float = 1.0
) -> torch.Tensor:
    p = torch.softmax(logits, 1)
    t = _onehot(labels, logits.shape[1])
    dims = (0, 2, 3)
    tp = (p * t).sum(dims)
    fn = ((1 - p) * t).sum(dims)
    fp = (p * (1 - t)).sum(dims)
    return (tp + eps) / (tp + alpha * fn + beta * fp + eps)


def tversky_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (1 - tversky_index(logits, labels)).mean()


def focal_tversky_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 0.75) -> torch.Tensor:
    return ((1 - tversky_index(logits, labels)).clamp_min(0) ** gamma).mean()


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return {"bce": bce_loss, "tversky": tversky_loss, "focal_tversky": focal_tversky_loss}[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})") from None
