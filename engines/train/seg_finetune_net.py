"""Network side of ``finetune segmentation``: split, sampling of labelled patches, a step-bounded
seeded training loop with unlabelled pixels ignored, and metrics over the classes present."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.registry import WEIGHTS_DIR, Manifest
from engines.synth.xct import CLASSES
from engines.tiling import Predict, TileSpec, full_predict, labels_from_probs, tiled_predict
from engines.train.seg_labels import IGNORE, FinetuneDataError, LabelledSlice

log = logging.getLogger("engines.train.segmentation")
PATCH = 128


@dataclass(frozen=True)
class Split:
    train: list[LabelledSlice]
    val: list[LabelledSlice]
    test: list[LabelledSlice]
    how: str


def _hide(s: LabelledSlice, keep: np.ndarray) -> LabelledSlice:
    return replace(s, mask=np.where(keep, s.mask, np.uint8(IGNORE)).astype(np.uint8))


def split_slices(slices: Sequence[LabelledSlice], seed: int, block: int = 96) -> Split:
    """Seeded random split. Three or more slices: by slice (≈60/20/20, at least one each).
    Fewer: by square blocks of ``block`` px inside the slices (≈60/20/20 of the blocks that hold
    labels); the other splits' labels are hidden (:data:`IGNORE`), the image stays whole."""
    rng = np.random.default_rng(seed)
    n = len(slices)
    if n >= 3:
        order = rng.permutation(n)
        n_test = max(1, round(0.2 * n))
        n_val = max(1, round(0.2 * n))
        test = [slices[i] for i in order[:n_test]]
        val = [slices[i] for i in order[n_test : n_test + n_val]]
        train = [slices[i] for i in order[n_test + n_val :]]
        how = f"by slice (seed {seed}): {len(train)} train, {len(val)} val, {len(test)} test"
        return Split(train, val, test, how)
    train, val, test = [], [], []
    for s in slices:
        h, w = s.mask.shape
        b = max(32, min(block, min(h, w) // 3))
        gy, gx = -(-h // b), -(-w // b)
        blocks = np.arange(gy * gx).reshape(gy, gx)
        bmap = np.kron(blocks, np.ones((b, b), np.int64))[:h, :w]
        labelled = np.unique(bmap[s.mask != IGNORE])
        if labelled.size < 3:
            raise FinetuneDataError(f"{s.source}: too few labelled {b}-px blocks ({labelled.size}) to split")
        perm = rng.permutation(labelled)
        k = max(1, round(0.2 * perm.size))
        parts = {"test": perm[:k], "val": perm[k : 2 * k], "train": perm[2 * k :]}
        test.append(_hide(s, np.isin(bmap, parts["test"])))
        val.append(_hide(s, np.isin(bmap, parts["val"])))
        train.append(_hide(s, np.isin(bmap, parts["train"])))
    how = f"by {b}-px blocks within {n} slice(s) (seed {seed}): ~60% train, 20% val, 20% test blocks"
    return Split(train, val, test, how)


def confusion_labelled(pred: np.ndarray, gt: np.ndarray, n: int) -> np.ndarray:
    keep = gt != IGNORE
    idx = gt[keep].astype(np.int64) * n + pred[keep].astype(np.int64)
    return np.bincount(idx, minlength=n * n).reshape(n, n)


def present_metrics(conf: np.ndarray, classes: Sequence[str] = CLASSES) -> dict[str, float]:
    """IoU/DSC per class present in the ground truth; means over those classes only."""
    tp = np.diag(conf).astype(np.float64)
    fp, fn = conf.sum(0) - tp, conf.sum(1) - tp
    present = conf.sum(1) > 0
    out: dict[str, float] = {}
    ious, dscs = [], []
    for c in np.flatnonzero(present).tolist():
        iou = tp[c] / max(tp[c] + fp[c] + fn[c], 1)
        dsc = 2 * tp[c] / max(2 * tp[c] + fp[c] + fn[c], 1)
        out[f"IoU_{classes[c]}"], out[f"DSC_{classes[c]}"] = round(iou, 4), round(dsc, 4)
        ious.append(iou)
        dscs.append(dsc)
    out["mIoU"] = round(float(np.mean(ious)), 4) if ious else float("nan")
    out["mDSC"] = round(float(np.mean(dscs)), 4) if dscs else float("nan")
    out["pixels"] = float(conf.sum())
    return out


def evaluate_slices(
    probs_of: Callable[[np.ndarray], np.ndarray], slices: Sequence[LabelledSlice]
) -> dict[str, float]:
    n = len(CLASSES)
    conf = np.zeros((n, n), np.int64)
    for s in slices:
        conf += confusion_labelled(labels_from_probs(probs_of(s.image)), s.mask, n)
    return present_metrics(conf)


def manifest_probs(manifest: Manifest, predict: Predict) -> Callable[[np.ndarray], np.ndarray]:
    """Full-slice probabilities the way the pipeline computes them (manifest tiling)."""
    tile = TileSpec(**manifest.extra["tile"])  # type: ignore[arg-type]
    return lambda x: tiled_predict(x, predict, tile)


# ---- network -------------------------------------------------------------------------------


@dataclass
class NetHistory:
    steps: int = 0
    seconds: float = 0.0
    stopped_by_time: bool = False
    val_step: list[int] = field(default_factory=list)
    val_miou: list[float] = field(default_factory=list)


def load_network(manifest: Manifest, weights: Path | None) -> tuple[torch.nn.Module, bool]:
    """The shipped model's torch module and whether it outputs probabilities (else logits)."""
    info = manifest.extra.get("torch")
    if not isinstance(info, dict):
        raise FinetuneDataError(f"model {manifest.name} has no torch weights to fine-tune")
    mod, _, attr = str(info["factory"]).partition(":")
    wrapped = getattr(importlib.import_module(mod), attr)(**info["kwargs"])
    state = torch.load(
        (weights or WEIGHTS_DIR) / str(info["state_dict"]), map_location="cpu", weights_only=True
    )
    wrapped.load_state_dict(state)
    inner = getattr(wrapped, "model", None)
    return (inner, False) if isinstance(inner, torch.nn.Module) else (wrapped, True)


class LabelledPatches:
    """Random ``PATCH``² crops (flipped), mostly around labelled pixels; slices smaller than a
    patch are padded (image: reflect, labels: :data:`IGNORE`)."""

    def __init__(self, slices: Sequence[LabelledSlice], seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.items = []
        for s in slices:
            ph, pw = max(0, PATCH - s.image.shape[0]), max(0, PATCH - s.image.shape[1])
            img = np.pad(s.image, ((0, ph), (0, pw)), mode="reflect") if ph or pw else s.image
            lab = np.pad(s.mask, ((0, ph), (0, pw)), constant_values=IGNORE) if ph or pw else s.mask
            where = np.flatnonzero(lab.ravel() != IGNORE)
            if where.size:
                self.items.append((img, lab, where))
        if not self.items:
            raise FinetuneDataError("no labelled pixels in the training split")
        w = np.array([it[2].size for it in self.items], np.float64)
        self.p = w / w.sum()

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        xb = np.empty((n, 1, PATCH, PATCH), np.float32)
        yb = np.empty((n, PATCH, PATCH), np.int64)
        for k in range(n):
            img, lab, where = self.items[int(self.rng.choice(len(self.items), p=self.p))]
            h, w = lab.shape
            if self.rng.random() < 0.8:
                y, x = divmod(int(where[int(self.rng.integers(where.size))]), w)
                y = int(
                    np.clip(y - PATCH // 2 + self.rng.integers(-PATCH // 3, PATCH // 3 + 1), 0, h - PATCH)
                )
                x = int(
                    np.clip(x - PATCH // 2 + self.rng.integers(-PATCH // 3, PATCH // 3 + 1), 0, w - PATCH)
                )
            else:
                y, x = int(self.rng.integers(0, h - PATCH + 1)), int(self.rng.integers(0, w - PATCH + 1))
            a, b = img[y : y + PATCH, x : x + PATCH], lab[y : y + PATCH, x : x + PATCH]
            if self.rng.random() < 0.5:
                a, b = a[:, ::-1], b[:, ::-1]
            if self.rng.random() < 0.5:
                a, b = a[::-1], b[::-1]
            xb[k, 0], yb[k] = a, b
        return xb, yb


def torch_probs(
    net: torch.nn.Module, probs_out: bool, manifest: Manifest
) -> Callable[[np.ndarray], np.ndarray]:
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net(torch.from_numpy(np.ascontiguousarray(batch)))
            return (out if probs_out else torch.softmax(out, 1)).numpy()

    if manifest.extra.get("fully_convolutional"):
        multiple = int(manifest.extra.get("multiple", 16))  # type: ignore[call-overload]
        return lambda x: full_predict(x, predict, multiple)
    return manifest_probs(manifest, predict)


def train_network(
    net: torch.nn.Module,
    probs_out: bool,
    manifest: Manifest,
    split: Split,
    *,
    steps: int,
    max_seconds: float | None,
    seed: int,
    lr: float,
    batch: int = 8,
    evals: int = 4,
) -> tuple[torch.nn.Module, NetHistory, float]:
    """AdamW, warm-up + cosine over ``steps`` (steps, not time, so runs repeat); cross-entropy
    on labelled pixels only; the checkpoint with the best validation mIoU is kept."""
    torch.manual_seed(seed)
    sampler = LabelledPatches(split.train, seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    hist = NetHistory()
    best: tuple[float, dict[str, torch.Tensor] | None] = (-1.0, None)
    eval_at = {max(1, round(steps * (k + 1) / evals)) for k in range(evals)}
    t0 = time.monotonic()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 20) * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps))
        net.train()
        xb, yb = sampler.batch(batch)
        out = net(torch.from_numpy(xb))
        target = torch.from_numpy(yb)
        if probs_out:
            loss = F.nll_loss(torch.log(out.clamp_min(1e-6)), target, ignore_index=IGNORE)
        else:
            loss = F.cross_entropy(out, target, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hist.steps = step
        timed_out = max_seconds is not None and time.monotonic() - t0 > max_seconds
        if step in eval_at or timed_out or step == steps:
            net.eval()
            m = evaluate_slices(torch_probs(net, probs_out, manifest), split.val)["mIoU"]
            hist.val_step.append(step)
            hist.val_miou.append(m)
            log.info("network step %d/%d: loss %.4f, val mIoU %.4f", step, steps, float(loss.detach()), m)
            if m > best[0]:
                best = (m, {k: v.detach().clone() for k, v in net.state_dict().items()})
        if timed_out:
            hist.stopped_by_time = True
            log.warning("network: --max-minutes reached after %d of %d steps", step, steps)
            break
    if best[1] is not None:
        net.load_state_dict(best[1])
    net.eval()
    hist.seconds = time.monotonic() - t0
    return net, hist, best[0]
