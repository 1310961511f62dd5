"""Model specs, the training loop and evaluation for the XCT segmentation models."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from engines.models.transforcnn import TransforCNN
from engines.models.unet import UNet
from engines.synth.xct import N_CLASSES
from engines.tiling import Predict, TileSpec, labels_from_probs, tiled_predict
from engines.train.losses import get_loss
from engines.train.segmentation_data import PatchSampler, SegScores, confusion, scores

log = logging.getLogger("engines.train.segmentation")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    """"unet" or "transforcnn"."""
    kwargs: dict[str, int] = field(default_factory=dict)
    lr: float = 2e-3
    steps: int = 1500
    batch: int = 16
    budget_s: float = 420.0
    """Wall-clock cap on training (the learning-rate schedule follows elapsed time too)."""
    tile: TileSpec = TileSpec()

    def build(self) -> nn.Module:
        """The logits model."""
        return (UNet if self.kind == "unet" else TransforCNN)(n_classes=N_CLASSES, **self.kwargs)

    @property
    def factory(self) -> str:
        return {
            "unet": "engines.models.unet:build_unet",
            "transforcnn": "engines.models.transforcnn:build_transforcnn",
        }[self.kind]

    @property
    def fully_convolutional(self) -> bool:
        return self.kind == "unet"


SPECS: dict[str, ModelSpec] = {
    # Fast variant: 4×4 pixel-unshuffle stem, three levels (16-32-64 channels at 1/4..1/16 px).
    "xct_unet_fast": ModelSpec(
        "xct_unet_fast",
        "unet",
        {"base": 16, "depth": 3, "space_to_depth": 4},
        lr=4e-3,
        steps=5000,
        batch=8,
        budget_s=720.0,
        tile=TileSpec(tile=512, overlap=96, margin=32, batch=4),
    ),
    "xct_transforcnn": ModelSpec(
        "xct_transforcnn",
        "transforcnn",
        {},
        lr=1.5e-3,
        steps=5000,
        batch=8,
        budget_s=600.0,
        tile=TileSpec(128, 32, 8, 32),
    ),
    # Paper-shaped U-Net (16 → 256 channels, five levels).
    "xct_unet": ModelSpec(
        "xct_unet",
        "unet",
        {"base": 16, "depth": 5, "space_to_depth": 1},
        lr=2e-3,
        steps=3000,
        batch=8,
        tile=TileSpec(tile=256, overlap=64, margin=24, batch=4),
    ),
}


class Progress:
    """A one-line text progress bar on stderr (off with ``enabled=False``)."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(28 * frac) + "." * (28 - int(28 * frac))
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        sys.stderr.write(f"\r{self.label:16s} [{bar}] {done}/{self.total} {note} {el:5.0f}s eta {eta:4.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass
class History:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_miou: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps_done: int = 0


def torch_predict(model: nn.Module) -> Predict:
    """A tiling ``Predict`` from a logits model (eval mode, no grad, softmax)."""

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.from_numpy(batch)), 1).numpy()

    return predict


def evaluate(predict: Predict, images: np.ndarray, labels: np.ndarray, tile: TileSpec) -> SegScores:
    """Pooled per-class scores of full-slice tiled predictions."""
    conf = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for img, lab in zip(images, labels, strict=True):
        conf += confusion(labels_from_probs(tiled_predict(img, predict, tile)), lab)
    return scores(conf)


def train(
    spec: ModelSpec,
    train_data: tuple[np.ndarray, np.ndarray],
    val_data: tuple[np.ndarray, np.ndarray],
    *,
    loss: str = "focal_tversky",
    seed: int = 0,
    steps: int | None = None,
    budget_s: float | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
    lr: float | None = None,
    evals: int = 4,
) -> tuple[nn.Module, History]:
    """AdamW + cosine schedule on random 128-px patches; keeps the best validation checkpoint."""
    torch.manual_seed(seed)
    model = model if model is not None else spec.build()
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = get_loss(loss)
    sampler = PatchSampler(*train_data, size=128, seed=seed)
    total = steps or spec.steps
    budget = spec.budget_s if budget_s is None else budget_s
    base_lr = lr or spec.lr
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=1e-4)
    hist = History()
    bar = Progress(spec.name, 1000, progress)
    best: tuple[float, dict[str, torch.Tensor] | None] = (-1.0, None)
    t0 = time.monotonic()
    step = 0
    frac = 0.0
    next_eval = 1.0 / evals
    # Progress is max(steps, wall-clock) so the cosine schedule and the evaluations adapt to a
    # shared machine whose speed changes during the run; training ends at the budget.
    while frac < 1.0:
        for g in opt.param_groups:
            g["lr"] = base_lr * (min(1.0, (step + 1) / 30) * 0.5 * (1 + np.cos(np.pi * frac)))
        model.train()
        xb, yb = sampler.batch(spec.batch)
        out = model(torch.from_numpy(xb))
        lv = loss_fn(out, torch.from_numpy(yb))
        opt.zero_grad(set_to_none=True)
        lv.backward()
        opt.step()
        step += 1
        hist.step.append(step)
        hist.loss.append(float(lv.detach()))
        frac = min(1.0, max(step / total, (time.monotonic() - t0) / budget))
        if frac >= next_eval or frac >= 1.0:
            next_eval += 1.0 / evals
            model.eval()
            s = evaluate(torch_predict(model), *val_data, spec.tile)
            hist.val_step.append(step)
            hist.val_miou.append(s.miou)
            if s.miou > best[0]:
                best = (s.miou, {k: v.detach().clone() for k, v in model.state_dict().items()})
        note = f"loss {np.mean(hist.loss[-20:]):.4f}"
        if hist.val_miou:
            note += f" val mIoU {hist.val_miou[-1]:.4f}"
        bar.update(int(frac * 1000), note)
    bar.update(1000, f"{step} steps", force=True)
    bar.close()
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    hist.seconds = time.monotonic() - t0
    hist.steps_done = step
    log.info(
        "%s: %d steps in %.0f s, best val mIoU %.4f (loss %s)", spec.name, step, hist.seconds, best[0], loss
    )
    return model, hist
