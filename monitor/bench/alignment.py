"""`bench alignment`: the alignment pipeline end to end on held-out synthetic TXM-XANES scans.

Stacks use seeds from ``BENCH_SEED0`` (200 000; training uses < 100 000, registration settings
were tuned on 150 010–150 012), one energy scan of 460×460 frames with 9 particles each, under
rigid jitter + drift + non-rigid deformation. The pipeline runs with its default options
(network on every 4th frame, masks propagated between) and, for comparison, with the network on
every frame (``*_detect_every_1``). Reported, all on the same frames:

- ``rms_error_px``: per-particle registration (pipeline displacement vs ground truth);
- ``baseline_rms_error_px``: the better of the global baselines (phase correlation and
  template matching, one shift per frame for every particle), each also reported;
- ``ssim_after`` / ``ssim_before``: mean SSIM of consecutive per-particle ROI crops aligned by
  the pipeline / left where the particle was in the first frame;
- ``instance_f1``: ParticleNet + watershed at IoU 0.5 against ground-truth labels;
- ``fps``: frames per second through ``AlignmentPipeline.process`` (network, registration,
  tracking, XANES accumulation), ONNX Runtime on CPU with ``--threads`` (default 2);
  wall-clock, so it depends on what else the host runs (``host.loadavg_1m`` is recorded), and
  ``cpu_ms_per_frame_*`` (process CPU time, all threads) measures the work itself;
- ``xanes_edge_rmse_eV``: per-pixel edge energy at the end of each scan vs ground truth, over
  particle pixels whose thickness is at least 45 % of the particle's maximum.
- ``real_texture``: the pipeline with no option set on real-like textured stacks (either
  polarity, cracks, edge-cut particles, non-rigid field to 4 px; :mod:`monitor.bench.alignment_real`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.models.particle_net import (
    downsample,
    instance_f1,
    normalise,
)
from engines.synth.txm_xanes import TxmConfig, TxmSequence, generate
from engines.train.alignment_data import BENCH_SEED0
from monitor.analysis.particles import upsample_labels
from monitor.analysis.registration import (
    aligned_crop,
    highpass_log,
    phase_correlation_shift,
    template_matching_shift,
)
from monitor.analysis.tracking import ssim
from monitor.config import PipelineSettings
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.alignment import AlignmentPipeline
from monitor.pipelines.base import Result


@dataclass
class StackRun:
    results: list[Result]
    seconds: float
    cpu_seconds: float
    """CPU time of this process (all threads) over the run: the work, whatever else the host runs."""


def frames_of(seq: TxmSequence, series: str) -> list[Frame]:
    n = len(seq.frames)
    per_scan = int(np.sum(seq.scan == 0))
    out = []
    for t in range(n):
        point = int(t - seq.scan[t] * per_scan)
        meta = FrameMeta(
            energy_eV=float(seq.energies[t]),
            extra={"scan": int(seq.scan[t]), "scan_point": point, "scan_points": per_scan},
        )
        arr = np.clip(seq.frames[t], 0, 65535).astype(np.uint16)
        out.append(Frame("txm", "bench", series, t, arr, 0.25 * t, 0.25 * t, meta, seq=t + 1))
    return out


def run_pipeline(
    frames: list[Frame], weights: str, threads: int, detect_every: int
) -> tuple[AlignmentPipeline, StackRun]:
    settings = PipelineSettings(
        name="alignment", kind="alignment", streams=("txm",), weights_dir=weights, threads=threads,
        options={"detect_every": detect_every, "max_particles": 16},
    )  # fmt: skip
    pipe = AlignmentPipeline(settings)
    pipe.process(frames[:1])  # warm-up (ONNX Runtime allocations), then a fresh pipeline state
    pipe = AlignmentPipeline(settings)
    t0, c0 = time.perf_counter(), time.process_time()
    results = [pipe.process([f])[0] for f in frames]
    return pipe, StackRun(results, time.perf_counter() - t0, time.process_time() - c0)


def track_errors(
    seq: TxmSequence, run: StackRun, max_particles: int
) -> tuple[np.ndarray, dict[int, tuple[int, int]]]:
    """Per (frame, track) registration error vectors; track id → (GT particle, first frame)."""
    errs = []
    owner: dict[int, tuple[int, int]] = {}
    for t, r in enumerate(run.results):
        ids, disp, cen = r.arrays["track_id"], r.arrays["displacement"], r.arrays["centroid"]
        for s in range(max_particles):
            tid = int(ids[s])
            if tid < 0 or not np.all(np.isfinite(disp[s])):
                continue
            if tid not in owner:
                g = int(np.argmin(np.linalg.norm(seq.centers[t] - cen[s][None], axis=1)))
                owner[tid] = (g, t)
            g, t0 = owner[tid]
            truth = seq.displacement[t, g] - seq.displacement[t0, g]
            errs.append(disp[s] - truth)
    return np.array(errs).reshape(-1, 2), owner


def baseline_errors(seq: TxmSequence) -> dict[str, np.ndarray]:
    ref = highpass_log(seq.frames[0])
    out: dict[str, list[np.ndarray]] = {"phase_correlation": [], "template_matching": []}
    for t in range(len(seq.frames)):
        mov = highpass_log(seq.frames[t])
        for name, fn in (
            ("phase_correlation", phase_correlation_shift),
            ("template_matching", template_matching_shift),
        ):
            shift = fn(ref, mov)
            out[name].append(shift[None, :] - seq.displacement[t])
    return {k: np.concatenate(v) for k, v in out.items()}


def ssim_scores(seq: TxmSequence, run: StackRun, owner: dict[int, tuple[int, int]]) -> tuple[float, float]:
    """Mean SSIM of consecutive aligned ROI crops (after) and of crops at the first position (before)."""
    after, before = [], []
    size = 64
    first: dict[int, np.ndarray] = {}
    prev: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for t, r in enumerate(run.results):
        img = np.log(np.maximum(seq.frames[t], 1.0))
        for s, tid in enumerate(r.arrays["track_id"]):
            tid = int(tid)
            cen = r.arrays["centroid"][s]
            if tid < 0 or not np.all(np.isfinite(cen)):
                continue
            first.setdefault(tid, cen.copy())
            a = aligned_crop(img, (float(cen[0]), float(cen[1])), size)
            b = aligned_crop(img, (float(first[tid][0]), float(first[tid][1])), size)
            if tid in prev and np.isfinite(a).all() and np.isfinite(b).all():
                after.append(ssim(prev[tid][0], a))
                before.append(ssim(prev[tid][1], b))
            prev[tid] = (a, b)
    return float(np.mean(after)) if after else float("nan"), float(np.mean(before)) if before else float(
        "nan"
    )


def xanes_errors(
    seq: TxmSequence, run: StackRun, owner: dict[int, tuple[int, int]], roi: int
) -> tuple[np.ndarray, float]:
    """Edge-energy errors (eV) on GT particle pixels away from the edge; and the coverage."""
    errs, covered, total = [], 0, 0
    first_centre: dict[int, np.ndarray] = {}
    for r in run.results:
        for s, tid in enumerate(r.arrays["track_id"]):
            if int(tid) >= 0 and np.all(np.isfinite(r.arrays["centroid"][s])):
                first_centre.setdefault(int(tid), r.arrays["centroid"][s].astype(float))
        if not r.scalars.get("xanes_ready"):
            continue
        edge = r.arrays.get("xanes_edge_eV")
        if edge is None:
            continue
        for s, tid in enumerate(r.arrays["track_id"]):
            tid = int(tid)
            if tid < 0 or tid not in owner or owner[tid][1] != 0:
                continue  # maps are aligned to the scan's first frame: compare tracks seen there
            g = owner[tid][0]
            c = first_centre[tid]
            truth = aligned_crop(seq.edge_map, (c[0], c[1]), roi)
            lab = aligned_crop((seq.labels[0] == g + 1).astype(np.float32), (c[0], c[1]), roi)
            thick = aligned_crop(seq.thickness_map, (c[0], c[1]), roi)
            interior = (
                (lab > 0.99)
                & np.isfinite(truth)
                & (thick > 0.45 * np.nanmax(np.where(lab > 0.99, thick, np.nan)))
            )
            total += int(interior.sum())
            ok = interior & np.isfinite(edge[s])
            covered += int(ok.sum())
            errs.append(edge[s][ok] - truth[ok])
    return (np.concatenate(errs) if errs else np.zeros(0)), covered / max(total, 1)


def detection_f1(pipe: AlignmentPipeline, seq: TxmSequence, every: int = 4) -> tuple[int, int, int]:
    tp = fp = fn = 0
    for t in range(0, len(seq.frames), every):
        f = pipe.network_factor(seq.frames[t].shape)
        small = normalise(downsample(seq.frames[t], f))
        lab = pipe.detect_labels([small])[0]
        a, b, c = instance_f1(upsample_labels(lab, f, seq.frames[t].shape), seq.labels[t])
        tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def rms(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(e**2, axis=-1)))) if e.size else float("nan")


def run_bench(out: Path, *, quick: bool, weights: str, threads: int) -> dict[str, object]:
    n_stacks = 1 if quick else 5
    cfg = TxmConfig()
    energies = cfg.energies if not quick else cfg.energies[::3]
    cfg = TxmConfig(energies=tuple(energies))
    ours, ours4 = [], []
    base: dict[str, list[np.ndarray]] = {"phase_correlation": [], "template_matching": []}
    secs = {1: 0.0, 4: 0.0}
    cpu = {1: 0.0, 4: 0.0}
    nframes = 0
    edge_errs, coverage, ssim_a, ssim_b, counts = [], [], [], [], np.zeros(3, int)
    for i in range(n_stacks):
        seed = BENCH_SEED0 + i
        seq = generate(seed, cfg)
        frames = frames_of(seq, f"bench-{seed}")
        nframes += len(frames)
        pipe, run1 = run_pipeline(frames, weights, threads, 1)
        _, run4 = run_pipeline(frames, weights, threads, 4)
        secs[1] += run1.seconds
        secs[4] += run4.seconds
        cpu[1] += run1.cpu_seconds
        cpu[4] += run4.cpu_seconds
        e1, _owner1 = track_errors(seq, run1, pipe.opts.max_particles)
        e4, owner4 = track_errors(seq, run4, pipe.opts.max_particles)
        ours.append(e1)
        ours4.append(e4)
        for k, v in baseline_errors(seq).items():
            base[k].append(v)
        a, b = ssim_scores(seq, run4, owner4)
        ssim_a.append(a)
        ssim_b.append(b)
        ee, cov = xanes_errors(seq, run4, owner4, pipe.opts.roi_size)
        edge_errs.append(ee)
        coverage.append(cov)
        counts += np.array(detection_f1(pipe, seq, every=1 if not quick else 4))
        pipe.close()
    tp, fp, fn = (int(c) for c in counts)
    base_rms = {k: rms(np.concatenate(v)) for k, v in base.items()}
    edge_all = np.concatenate(edge_errs)
    rms_ours = rms(np.concatenate(ours4))
    rms_baseline = min(base_rms.values())
    result: dict[str, object] = {
        "rms_error_px": rms_ours,
        "rms_error_px_detect_every_1": rms(np.concatenate(ours)),
        "baseline_rms_error_px": rms_baseline,
        "baseline_phase_correlation_rms_px": base_rms["phase_correlation"],
        "baseline_template_matching_rms_px": base_rms["template_matching"],
        "ssim_after": float(np.nanmean(ssim_a)),
        "ssim_before": float(np.nanmean(ssim_b)),
        "instance_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "fps": nframes / secs[4],
        "fps_detect_every_1": nframes / secs[1],
        "fps_detect_every_4": nframes / secs[4],
        "cpu_ms_per_frame_detect_every_1": 1e3 * cpu[1] / nframes,
        "cpu_ms_per_frame_detect_every_4": 1e3 * cpu[4] / nframes,
        "xanes_edge_rmse_eV": float(np.sqrt(np.mean(edge_all**2))) if edge_all.size else float("nan"),
        "xanes_coverage": float(np.mean(coverage)),
        "frames": nframes,
        "stacks": n_stacks,
        "seeds": [BENCH_SEED0 + i for i in range(n_stacks)],
        "frame_shape": [cfg.size, cfg.size],
        "particles": cfg.n_particles,
        "threads": threads,
        "quick": quick,
        "host": {
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "machine": platform.machine(),
            "cpu_model": _cpu_model(),
        },  # fmt: skip
    }
    result["ratio_baseline_over_ours"] = rms_baseline / max(rms_ours, 1e-9)
    from monitor.bench.alignment_real import run_real_texture

    result["real_texture"] = run_real_texture(
        weights, threads, stacks=1 if quick else 4, frames=30 if quick else 100, f1_frames=4 if quick else 40
    )
    real_volume = os.environ.get("OPERANDO_REAL_VOLUME", "")
    if real_volume:  # "PATH[:PHASE]": a segmented real electrode volume (kept outside the repo)
        import tifffile

        from monitor.bench.alignment_real import real_geometry_f1

        path, _, phase = real_volume.partition(":")
        vol = tifffile.imread(path)
        result["real_geometry"] = {
            "source": Path(path).name,
            **real_geometry_f1(vol, int(phase or 1), weights, slices=2 if quick else 8),
        }
    result["host"]["loadavg_1m_end"] = os.getloadavg()[0]  # type: ignore[index]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cli_main(args: argparse.Namespace) -> int:
    res = run_bench(
        Path(args.json), quick=bool(args.quick), weights=args.weights or "", threads=args.threads or 2
    )
    print(json.dumps(res, indent=2))
    return 0
