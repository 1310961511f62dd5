"""`bench alignment`, real-texture section: the pipeline with no option set on real-like stacks.

Stacks (``engines.synth.txm_real.real_stack``, seeds from ``REAL_BENCH_SEED0`` = 210 000, never
used in training): one field of textured, cracked, touching and edge-cut particles, either
polarity, 100 frames under a rigid random walk, a smooth non-rigid field growing to ~4 px,
per-particle XANES-like contrast change (core and shell differently), background drift and
noise. Reported per stack and overall:

- ``rms_error_px``: per-particle displacement of the pipeline's tracks vs the truth (the mean
  of the field over the particle), on whole particles that the pipeline also reports whole
  (``p{slot}_edge_cut`` 0: what it puts in its registration statistics);
  ``rms_error_px_all_tracks``: every track on a whole particle, flagged or not (a whole
  particle merged with an edge-cut neighbour is flagged, and counts only here);
- ``baseline_phase_correlation_rms_px``: one global phase correlation per frame (on the
  high-passed density, the same polarity the pipeline decided) applied to every particle;
- ``tracked_through_pct``: whole particles followed by one track through every frame;
- ``lost_found_per_particle_per_100``: lost + found events of whole particles (a change of
  track id counts as one of each) per particle per 100 frames;
- ``contrast_correct``: the auto contrast decision vs the stack's convention;
- ``instance_f1_gt800``: detection on single held-out real-like frames (seeds 220 000 +) at
  IoU 0.5 against the reference particles larger than 800 px (predictions matched to smaller
  reference particles are neither counted right nor wrong; unmatched predictions larger than
  800 px are false positives).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engines.prep.particle_prep import density
from engines.synth.txm_real import RealStack, real_like, real_stack
from engines.train.alignment_data import REAL_BENCH_SEED0
from monitor.analysis.registration import phase_correlation_shift
from monitor.config import PipelineSettings
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.alignment import AlignmentPipeline
from monitor.pipelines.base import Result

F1_SEED0 = REAL_BENCH_SEED0 + 10_000


@dataclass(frozen=True)
class StackScore:
    errors: np.ndarray  # (N, 2): tracks of whole particles that the pipeline also reports whole
    errors_all: np.ndarray  # (N, 2): every track on a whole particle (flagged edge-cut or not)
    baseline: np.ndarray  # (N, 2)
    whole: int
    tracked_through: int
    events: int
    frames: int
    contrast_ok: bool
    seconds: float


def stack_frames(st: RealStack, series: str) -> list[Frame]:
    return [
        Frame("txm", "bench", series, t, st.frames[t], 0.25 * t, 0.25 * t, FrameMeta(), seq=t + 1)
        for t in range(len(st.frames))
    ]


def run_stack(
    st: RealStack, weights: str, threads: int, options: dict | None = None
) -> tuple[list[Result], float]:
    settings = PipelineSettings(
        name="alignment", kind="alignment", streams=("txm",), weights_dir=weights, threads=threads,
        options=dict(options or {}),
    )  # fmt: skip
    frames = stack_frames(st, "real")
    pipe = AlignmentPipeline(settings)
    t0 = time.perf_counter()
    results = [pipe.process([f])[0] for f in frames]
    dt = time.perf_counter() - t0
    pipe.close()
    return results, dt


def _highpass(a: np.ndarray) -> np.ndarray:
    return a - ndimage.gaussian_filter(a, 20.0)


def score_stack(st: RealStack, results: list[Result], seconds: float) -> StackScore:
    n_t = len(results)
    whole = np.flatnonzero(st.whole)
    owner: dict[int, int] = {}
    first: dict[int, int] = {}
    present = np.full((n_t, st.whole.size), -1, np.int64)
    errs = []
    errs_all = []
    radius = 0.5 * st.diameter_px
    for t, r in enumerate(results):
        ids, disp, cen = r.arrays["track_id"], r.arrays["displacement"], r.arrays["centroid"]
        for s in range(ids.size):
            tid = int(ids[s])
            if tid < 0 or not np.all(np.isfinite(cen[s])):
                continue
            if tid not in owner:
                d = np.linalg.norm(st.centres[t] - cen[s][None], axis=1)
                g = int(np.argmin(d))
                owner[tid] = g if d[g] < radius else -1
                first[tid] = t
            g = owner[tid]
            if g < 0:
                continue
            if present[t, g] < 0:
                present[t, g] = tid
            if st.whole[g] and np.all(np.isfinite(disp[s])):
                truth = st.displacement[t, g] - st.displacement[first[tid], g]
                errs_all.append(disp[s] - truth)
                if r.scalars.get(f"p{s}_edge_cut", 0.0) == 0.0:
                    errs.append(disp[s] - truth)
    through = 0
    events = 0
    for g in whole.tolist():  # Python ints, like owner's values above
        col = present[:, g]
        if (col >= 0).all() and np.unique(col).size == 1:
            through += 1
        prev = -1
        for t, tid in enumerate(col):
            if t > 0 and prev >= 0 and tid < 0:
                events += 1  # lost
            elif t > 0 and prev < 0 and tid >= 0:
                events += 1  # found
            elif t > 0 and prev >= 0 and tid >= 0 and tid != prev:
                events += 2  # a new track for the same particle: lost and found
            prev = tid
    contrast = results[0].scalars.get("contrast_absorbance", float("nan"))
    contrast_ok = bool((contrast == 1.0) == (st.contrast == "absorbance"))
    decided = "absorbance" if contrast == 1.0 else "transmission"
    ref = _highpass(density(st.frames[0], decided))
    base = []
    for t in range(n_t):
        shift = phase_correlation_shift(ref, _highpass(density(st.frames[t], decided)))
        base.append(shift[None, :] - st.displacement[t, whole])
    return StackScore(
        np.array(errs).reshape(-1, 2), np.array(errs_all).reshape(-1, 2), np.concatenate(base),
        int(whole.size), through, events, n_t, contrast_ok, seconds,
    )  # fmt: skip


def rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(e**2, axis=-1)))) if e.size else float("nan")


def f1_gt800(pred: np.ndarray, ref: np.ndarray, min_area: int = 800) -> tuple[int, int, int]:
    """(tp, fp, fn) at IoU > 0.5 against the reference particles of at least ``min_area`` px."""
    n_p, n_t = int(pred.max()), int(ref.max())
    if n_t == 0 or n_p == 0:
        big = np.bincount(ref.ravel(), minlength=n_t + 1)[1:] >= min_area
        pbig = np.bincount(pred.ravel(), minlength=n_p + 1)[1:] >= min_area
        return 0, int(pbig.sum()), int(big.sum())
    joint = np.bincount(
        pred.ravel().astype(np.int64) * (n_t + 1) + ref.ravel().astype(np.int64),
        minlength=(n_p + 1) * (n_t + 1),
    ).reshape(n_p + 1, n_t + 1)
    area_p, area_t = joint.sum(axis=1)[1:], joint.sum(axis=0)[1:]
    inter = joint[1:, 1:].astype(np.float64)
    iou = inter / np.maximum(area_p[:, None] + area_t[None, :] - inter, 1)
    match = iou > 0.5
    big_t = area_t >= min_area
    tp = int((match[:, big_t]).any(axis=0).sum())
    fn = int(big_t.sum()) - tp
    matched_p = match.any(axis=1)
    fp = int(((~matched_p) & (area_p >= min_area)).sum())
    return tp, fp, fn


def detection_f1(weights: str, n: int) -> dict[str, float]:
    from monitor.analysis.particle_labels import ParticleLabeller

    lab = ParticleLabeller("", weights or None)
    counts = {"transmission": np.zeros(3, int), "absorbance": np.zeros(3, int)}
    right = 0
    try:
        for i in range(n):
            rng = np.random.default_rng(F1_SEED0 + i)
            shape = (int(rng.integers(400, 800)), int(rng.integers(500, 1200)))
            frame = real_like(rng, shape, float(np.exp(rng.uniform(np.log(35), np.log(160)))))
            pred, info = lab.label(frame.image)
            right += info.contrast == frame.contrast
            counts[frame.contrast] += np.array(f1_gt800(pred, frame.labels))
    finally:
        lab.close()
    out: dict[str, float] = {}
    tot = sum(counts.values(), np.zeros(3, int))
    for k, (tp, fp, fn) in [*counts.items(), ("all", tuple(tot))]:
        out[f"instance_f1_gt800_{k}"] = 2 * tp / max(2 * tp + fp + fn, 1)
    out["contrast_auto_correct"] = right / max(n, 1)
    out["frames"] = n
    return out


def run_real_texture(
    weights: str, threads: int, stacks: int, frames: int, f1_frames: int
) -> dict[str, object]:
    scores = []
    per_stack = []
    for i in range(stacks):
        st = real_stack(REAL_BENCH_SEED0 + i, frames=frames)
        results, dt = run_stack(st, weights, threads)
        sc = score_stack(st, results, dt)
        scores.append(sc)
        per_stack.append(
            {
                "seed": REAL_BENCH_SEED0 + i, "contrast": st.contrast, "whole_particles": sc.whole,
                "rms_error_px": rms(sc.errors), "rms_error_px_all_tracks": rms(sc.errors_all),
                "baseline_phase_correlation_rms_px": rms(sc.baseline),
                "tracked_through_pct": 100.0 * sc.tracked_through / max(sc.whole, 1),
                "lost_found_per_particle_per_100": 100.0 * sc.events / max(sc.whole, 1) / max(sc.frames, 1),
                "contrast_correct": sc.contrast_ok, "fps": sc.frames / sc.seconds,
            }
        )  # fmt: skip
    errs = np.concatenate([s.errors for s in scores])
    errs_all = np.concatenate([s.errors_all for s in scores])
    base = np.concatenate([s.baseline for s in scores])
    whole = sum(s.whole for s in scores)
    out: dict[str, object] = {
        "rms_error_px": rms(errs),
        "rms_error_px_all_tracks": rms(errs_all),
        "baseline_phase_correlation_rms_px": rms(base),
        "ratio_baseline_over_ours": rms(base) / max(rms(errs), 1e-9),
        "tracked_through_pct": 100.0 * sum(s.tracked_through for s in scores) / max(whole, 1),
        "lost_found_per_particle_per_100": 100.0
        * sum(s.events for s in scores)
        / max(whole, 1)
        / max(frames, 1),
        "whole_particles": whole,
        "stacks": stacks,
        "frames_per_stack": frames,
        "fps": sum(s.frames for s in scores) / sum(s.seconds for s in scores),
        "per_stack": per_stack,
    }
    if f1_frames:
        out["detection"] = detection_f1(weights, f1_frames)
    return out


def classical_instances(mask: np.ndarray, h: float = 2.0) -> np.ndarray:
    """Reference instances of a binary particle mask: distance-transform watershed seeded by its
    h-maxima (the classical split of touching particles)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    edt = ndimage.distance_transform_edt(mask)
    markers, _ = ndimage.label(h_maxima(ndimage.gaussian_filter(edt, 1.0), h))
    return watershed(-edt, markers, mask=mask).astype(np.int32)


def real_geometry_f1(
    volume: np.ndarray, particle_phase: int, weights: str, slices: int = 6, zoom: int = 3
) -> dict:
    """Instance F1 (> 800 px reference particles) on slices of a segmented real electrode volume
    (real particle shapes, packing and contacts), rendered as CT slices: particles bright with
    grain texture, binder grey, pores dark, blur and noise; each slice upsampled ``zoom`` times
    (nano-CT sampling). The reference is :func:`classical_instances` of the true particle mask."""
    from monitor.analysis.particle_labels import ParticleLabeller

    lab = ParticleLabeller("", weights or None)
    tot = np.zeros(3, int)
    rng = np.random.default_rng(REAL_BENCH_SEED0 + 20_000)
    idx = np.linspace(0, volume.shape[0] - 1, slices + 2)[1:-1].astype(int)
    try:
        for z in idx:
            phase = np.repeat(np.repeat(volume[z], zoom, axis=0), zoom, axis=1)
            mask = phase == particle_phase
            ref = classical_instances(mask)
            level = np.where(mask, 1.0, np.where(phase == 0, 0.08, 0.35)).astype(np.float32)
            grains = ndimage.gaussian_filter(rng.standard_normal(level.shape).astype(np.float32), 2.0)
            img = level * (1 + 0.6 * grains * mask) + rng.normal(0, 0.06, level.shape).astype(np.float32)
            img = ndimage.gaussian_filter(img, 1.0)
            pred, _info = lab.label(img)
            tot += np.array(f1_gt800(pred, ref))
    finally:
        lab.close()
    tp, fp, fn = (int(v) for v in tot)
    return {
        "instance_f1_gt800": 2 * tp / max(2 * tp + fp + fn, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "slices": len(idx),
    }
