"""Training and evaluation data for ParticleNet, drawn from ``engines.synth.txm_xanes``.

Seed ranges (never overlapping): training frames use seeds ``TRAIN_SEED0 + i`` below
``HELDOUT_SEED0``; held-out frames and benchmark sequences use seeds from ``HELDOUT_SEED0`` up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engines.models.particle_net import auto_downsample, downsample, instance_targets, normalise
from engines.synth.txm_xanes import TxmConfig, make_scene, render

TRAIN_SEED0 = 0
HELDOUT_SEED0 = 100_000
BENCH_SEED0 = 200_000
"""Benchmark sequences (``monitor.bench.alignment``) start here; also never used in training."""
REAL_TRAIN_SEED0 = 50_000
"""Real-like frames (``engines.synth.txm_real``) for training: ``REAL_TRAIN_SEED0 + i`` (< 100 000)."""
REAL_HELDOUT_SEED0 = 160_000
"""Real-like held-out frames (manifest metrics); ``bench alignment``'s real-texture stacks use
``REAL_BENCH_SEED0`` and up."""
REAL_BENCH_SEED0 = 210_000


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (h, w) normalised network input at reduced resolution
    fg: np.ndarray  # (h, w) float32 target
    dist: np.ndarray  # (h, w) float32 target
    labels_full: np.ndarray  # (H, W) ground-truth instance labels at full resolution
    factor: int


def random_config(rng: np.random.Generator, large_fraction: float = 0.1) -> TxmConfig:
    """A varied scene: frame size, particle count and size, cracks, contact, noise, background."""
    size = 1024 if rng.random() < large_fraction else 460
    lo = rng.uniform(18, 30)
    return dataclasses.replace(
        TxmConfig(),
        size=size,
        n_particles=int(rng.integers(4, 15)),
        radius_px=(lo, lo + rng.uniform(12, 30)),
        crack_prob=float(rng.uniform(0.3, 0.8)),
        touch_prob=float(rng.uniform(0.2, 0.8)),
        noise=float(rng.uniform(0.5, 2.5)),
        counts=float(rng.uniform(600, 3000)),
        flat_amplitude=float(rng.uniform(0.05, 0.3)),
    )


def make_sample(seed: int, large_fraction: float = 0.1) -> Sample:
    rng = np.random.default_rng(seed)
    cfg = random_config(rng, large_fraction)
    scene = make_scene(rng, cfg)
    energy = float(rng.uniform(cfg.energies[0], cfg.energies[-1]))
    shifts = rng.standard_normal((len(scene.particles), 2)) * 2
    counts, labels = render(scene, energy, shifts, rng)
    factor = auto_downsample(counts.shape)
    small = normalise(downsample(counts, factor))
    h, w = small.shape
    c = factor // 2
    low_labels = labels[c::factor, c::factor][:h, :w]
    fg, dist = instance_targets(low_labels)
    return Sample(small, fg, dist, labels, factor)


def make_set(seed0: int, n: int, large_fraction: float = 0.1) -> list[Sample]:
    return [make_sample(seed0 + i, large_fraction) for i in range(n)]


def make_real_sample(seed: int) -> Sample:
    """A real-like frame (either polarity, textured, cracked, touching, edge-cut particles) at a
    random scale: particles 9–36 px across at the network input (the block factor the monitor
    picks from an estimated diameter lands them near 20 px, the estimate is not exact), drawn
    at 1–4× that resolution and block-averaged like the monitor does."""
    from engines.prep.particle_prep import normalise as normalise_as
    from engines.synth.txm_real import real_like

    rng = np.random.default_rng(seed)
    d_net = float(20.0 * np.exp(rng.uniform(np.log(0.45), np.log(1.8))))
    factor = int(rng.choice([1, 2, 2, 3, 3, 4]))
    net_shape = (int(rng.integers(112, 168)), int(rng.integers(112, 168)))
    frame = real_like(rng, (net_shape[0] * factor, net_shape[1] * factor), d_net * factor)
    small = normalise_as(downsample(frame.image, factor), frame.contrast)
    h, w = small.shape
    c = factor // 2
    low_labels = frame.labels[c::factor, c::factor][:h, :w].astype(np.int32)
    fg, dist = instance_targets(low_labels)
    return Sample(small, fg, dist, frame.labels.astype(np.int32), factor)


def make_real_set(seed0: int, n: int) -> list[Sample]:
    return [make_real_sample(seed0 + i) for i in range(n)]


def random_crops(
    samples: list[Sample], rng: np.random.Generator, batch: int, crop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of random ``crop``² windows with flips and 90° rotations → (x, fg, dist) N×1×crop×crop."""
    xs = np.empty((batch, 1, crop, crop), np.float32)
    fs = np.empty_like(xs)
    ds = np.empty_like(xs)
    for b in range(batch):
        s = samples[int(rng.integers(len(samples)))]
        h, w = s.image.shape
        y0 = int(rng.integers(0, max(h - crop, 0) + 1))
        x0 = int(rng.integers(0, max(w - crop, 0) + 1))
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        stack = np.stack([s.image[sl], s.fg[sl], s.dist[sl]])
        k = int(rng.integers(4))
        stack = np.rot90(stack, k, axes=(1, 2))
        if rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        # Gain jitter on the normalised input: contrast changes across the energy scan.
        gain = rng.uniform(0.7, 1.3)
        xs[b, 0], fs[b, 0], ds[b, 0] = stack[0] * gain, stack[1], stack[2]
    return xs, fs, ds
