"""`operando-monitor train alignment`: train ParticleNet on synthetic TXM frames, export, ship.

Training frames: seeds ``TRAIN_SEED0 + 10 000·seed + i`` (below 100 000); held-out metrics on
seeds from ``HELDOUT_SEED0`` (100 000) up — never used in training. The held-out instance F1
(IoU 0.5, at full resolution, after the watershed split) goes into the manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.export import export_onnx
from engines.models.particle_net import (
    DEFAULT_CHANNELS,
    ParticleNet,
    instance_f1,
    pad_to_multiple,
    split_instances,
)
from engines.registry import WEIGHTS_DIR, TensorSpec, save_model
from engines.train.alignment_data import (
    HELDOUT_SEED0,
    REAL_HELDOUT_SEED0,
    REAL_TRAIN_SEED0,
    TRAIN_SEED0,
    Sample,
    make_real_set,
    make_set,
    random_crops,
)

log = logging.getLogger("engines.train.alignment")

MODEL_NAME = "txm_particle_net"
VERSION = "2.0"


@dataclass(frozen=True)
class TrainConfig:
    train_frames: int = 1600
    val_frames: int = 40
    steps: int = 1500
    batch: int = 12
    crop: int = 96
    lr: float = 3e-3
    channels: tuple[int, ...] = DEFAULT_CHANNELS
    large_fraction: float = 0.08
    seed: int = 0
    real_frames: int = 0
    """Real-like frames (``engines.synth.txm_real``: both polarities, texture, cracks, edge-cut
    and touching particles, scale randomisation) added to the txm_xanes frames."""
    real_val_frames: int = 0
    init: str = ""
    """Start from these weights (a ``.pt`` state dict; empty: from scratch)."""


def quick_config(seed: int = 0) -> TrainConfig:
    return TrainConfig(
        train_frames=12, val_frames=4, steps=6, batch=4, crop=64, seed=seed, large_fraction=0.0,
        real_frames=6, real_val_frames=3,
    )  # fmt: skip


def real_config(seed: int = 0) -> TrainConfig:
    """The shipped 2.0 model: fine-tuned from 1.0 on txm_xanes + real-like frames."""
    return TrainConfig(
        train_frames=300, val_frames=40, steps=700, batch=12, crop=96, lr=2e-3, seed=seed,
        large_fraction=0.08, real_frames=700, real_val_frames=60,
        init=str(WEIGHTS_DIR / f"{MODEL_NAME}.pt"),
    )  # fmt: skip


def predict(model: ParticleNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fg, dist) at the input's size, torch eval (used for validation)."""
    h, w = image.shape
    x = torch.from_numpy(pad_to_multiple(image, model.multiple)[None, None].copy())
    with torch.no_grad():
        fg, dist = model(x)
    return fg[0, 0, :h, :w].numpy(), dist[0, 0, :h, :w].numpy()


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    up = np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)
    out = np.zeros(shape, up.dtype)
    h, w = min(shape[0], up.shape[0]), min(shape[1], up.shape[1])
    out[:h, :w] = up[:h, :w]
    return out


def evaluate(model: ParticleNet, samples: list[Sample]) -> dict[str, float]:
    model.eval()
    tp = fp = fn = 0
    for s in samples:
        fg, dist = predict(model, s.image)
        labels = split_instances(fg, dist)
        full = upsample_labels(labels, s.factor, s.labels_full.shape)
        a, b, c = instance_f1(full, s.labels_full)
        tp, fp, fn = tp + a, fp + b, fn + c
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"instance_f1": f1, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1)}


def train(cfg: TrainConfig, progress: bool = True) -> tuple[ParticleNet, dict[str, float], list[float]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    seed0 = TRAIN_SEED0 + 10_000 * cfg.seed
    if seed0 + cfg.train_frames > HELDOUT_SEED0:
        raise ValueError(f"training seeds {seed0}..{seed0 + cfg.train_frames} would reach the held-out range")
    t0 = time.time()
    samples = make_set(seed0, cfg.train_frames, cfg.large_fraction)
    val = make_set(HELDOUT_SEED0, cfg.val_frames, cfg.large_fraction)
    rseed0 = REAL_TRAIN_SEED0 + 10_000 * cfg.seed
    if cfg.real_frames and rseed0 + cfg.real_frames > HELDOUT_SEED0:
        raise ValueError("real-like training seeds would reach the held-out range")
    samples += make_real_set(rseed0, cfg.real_frames)
    real_val = make_real_set(REAL_HELDOUT_SEED0, cfg.real_val_frames)
    log.info("data: %d train / %d held-out frames in %.0f s", len(samples), len(val), time.time() - t0)
    model = ParticleNet(cfg.channels)
    if cfg.init:
        model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True))
        log.info("initialised from %s", cfg.init)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    losses: list[float] = []
    for step in range(cfg.steps):
        model.train()
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(cfg.steps, 1)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, fg, dist = (torch.from_numpy(a) for a in random_crops(samples, rng, cfg.batch, cfg.crop))
        logits = model.logits(x)
        loss = F.binary_cross_entropy_with_logits(logits[:, 0:1], fg)
        loss = loss + 2.0 * F.binary_cross_entropy_with_logits(logits[:, 1:2], dist)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            log.info(
                "step %d/%d loss %.4f (%.0f s)", step, cfg.steps, np.mean(losses[-100:]), time.time() - t0
            )
    metrics = evaluate(model, val)
    if real_val:
        for k, v in evaluate(model, real_val).items():
            metrics[f"real_like_{k}"] = v
    metrics["train_seconds"] = time.time() - t0
    log.info("held-out: %s", json.dumps(metrics))
    return model, metrics, losses


def ship(
    model: ParticleNet, cfg: TrainConfig, metrics: dict[str, float], out_dir: Path, command: str
) -> Path:
    """Export to ONNX (checked against torch) and write the manifest next to it."""
    model.eval()
    seed0 = TRAIN_SEED0 + 10_000 * cfg.seed
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / f"{MODEL_NAME}.onnx"
        report = export_onnx(
            model,
            (torch.randn(1, 1, 116, 116),),
            onnx_path,
            input_names=["image"],
            output_names=["fg", "dist"],
            dynamic_axes={k: {0: "batch", 2: "height", 3: "width"} for k in ("image", "fg", "dist")},
        )
        manifest = save_model(
            onnx_path,
            name=MODEL_NAME,
            version=VERSION,
            task="instance_segmentation",
            inputs=(TensorSpec("image", ("batch", 1, "height", "width")),),
            outputs=(
                TensorSpec("fg", ("batch", 1, "height", "width")),
                TensorSpec("dist", ("batch", 1, "height", "width")),
            ),
            normalisation={
                "downsample_target_px": 128.0,  # block-mean factor = round(max(H, W) / 128)
                "log": 1.0,  # transmission: v = -log I; absorbance: v = value (particle_prep)
                "training_diameter_px": 20.0,  # particle diameter at the input (block factor)
                "pad_multiple": float(model.multiple),
            },
            training={"command": command, "seed": cfg.seed, "config": asdict(cfg)},
            metrics={**metrics, "export_max_abs_err": report.max_abs_err},
            extra={
                "channels": list(cfg.channels),
                "multiple": model.multiple,
                "split": {"fg_threshold": 0.5, "seed_threshold": 0.45},
                "heldout_seeds": f"{HELDOUT_SEED0}..{HELDOUT_SEED0 + cfg.val_frames - 1}",
                "real_like_heldout_seeds": f"{REAL_HELDOUT_SEED0}.."
                f"{REAL_HELDOUT_SEED0 + cfg.real_val_frames - 1}",
                "input": (
                    "one channel, particles positive on a background near 0: transmission frames "
                    "(dark particles) as -log I, absorbance / optical density / CT slices (bright "
                    "particles) as they are; minus the background class median, divided by the "
                    "2-98 percentile range; block-averaged so particles are ~20 px across"
                ),
                "train_seeds": f"{seed0}..{seed0 + cfg.train_frames - 1}",
            },
            out_dir=out_dir,
            torch_module=model,
            torch_factory="engines.models.particle_net:ParticleNet",
            torch_kwargs={"channels": list(cfg.channels)},
        )
    return out_dir / f"{manifest.name}.json"


def write_report(out: Path, metrics: dict[str, float], losses: list[float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    k = max(1, len(losses) // 100)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(smooth)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (fg BCE + 2·dist BCE)")
    ax.set_title(f"ParticleNet, held-out instance F1 {metrics['instance_f1']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=80)
    plt.close(fig)


def cli_main(args: argparse.Namespace) -> int:
    threads = args.threads or 1  # on a shared 2-core machine one thread is faster (measured)
    torch.set_num_threads(threads)
    cfg = quick_config(args.seed) if args.quick else real_config(args.seed)
    if args.epochs:
        cfg = TrainConfig(**{**asdict(cfg), "steps": int(args.epochs) * 100})
    out = Path(args.out) if args.out else WEIGHTS_DIR
    model, metrics, losses = train(cfg, progress=not args.no_progress)
    command = "operando-monitor train alignment" + (" --quick" if args.quick else "") + f" --seed {args.seed}"
    path = ship(model, cfg, metrics, out, command)
    report_dir = out / "reports" / "alignment"
    write_report(report_dir, metrics, losses)
    print(json.dumps({"manifest": str(path), **metrics}))
    return 0
