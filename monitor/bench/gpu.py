"""`operando-monitor bench gpu --json OUT.json`: the shipped models on a CUDA GPU.

1. Per shipped model (torch, CUDA, fp16 and bf16, CUDA graphs): throughput (items/s) at batch
   1, 2, 4, … up to 64 (or until memory runs out) and the best batch.
2. A seed-size XCT volume, 3977 x 2575 x 2582 voxels (z, y, x), segmented slice by slice with
   ``xct_unet_fast`` on whole slices as the pipeline does (percentile normalisation, reflect pad
   to the model's multiple, fp16 forward, argmax, labels back to the host). The slices are
   streamed synthetically: a few distinct synthetic slices are made once on the CPU and cycled
   with a per-slice intensity change, so the volume is never held in memory and the CPU
   generator is not what is timed. ``--frames N`` segments N slices and scales to 3977
   (the JSON says which). Target: <= 150 s on one H100/H200 (>= 176 Mpx/s).

Without CUDA it writes ``{"skipped": ...}`` with the reason, prints one clear line and exits 0:
the bench is one command that runs where a GPU is and says so where none is.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monitor.bench import host_info

if TYPE_CHECKING:  # engines are imported lazily, in the functions that run them
    from engines.registry import Manifest, TensorSpec

log = logging.getLogger("monitor.bench.gpu")

SEED_VOLUME = (3977, 2575, 2582)
"""(z, y, x) voxels of the seeds' XCT volume."""
TARGET_S = 150.0
BATCHES = (1, 2, 4, 8, 16, 32, 64)


def cuda_status() -> tuple[bool, str]:
    """(available, description or the reason it is not)."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, f"no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda})"
    return True, f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], seconds: float = 1.0, device: str = "cuda") -> float:
    """Median seconds per call of ``fn`` (device-synchronised), after warm-up."""
    for _ in range(3):
        fn()
    _sync(device)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def model_throughput(
    weights: Path | None,
    seconds: float,
    *,
    device: str = "cuda",
    precisions: tuple[str, ...] = ("fp16", "bf16"),
    batches: tuple[int, ...] = BATCHES,
) -> dict[str, object]:
    """Items/s per model, precision and batch (torch runner; CUDA graphs on CUDA)."""
    import torch

    from engines.errors import EngineError
    from engines.registry import list_models, load_manifest
    from engines.runtime import create_runner

    out: dict[str, object] = {}
    for listed in list_models(weights):
        if listed.extra.get("precision") == "int8" or not listed.extra.get("torch"):
            continue
        per: dict[str, object] = {}
        try:
            m = load_manifest(listed.name, weights)
            for precision in precisions:
                runner = create_runner(m, "torch", weights_dir=weights, device=device, precision=precision)
                rates: dict[str, float] = {}
                with runner:
                    for batch in batches:
                        feeds = {s.name: _example(s, m, batch) for s in m.inputs}
                        try:
                            fn = lambda f=feeds, r=runner: r.infer(f)  # noqa: E731
                            t = _time(fn, seconds, device)
                        except torch.cuda.OutOfMemoryError:
                            torch.cuda.empty_cache()
                            break
                        rates[str(batch)] = round(batch / t, 1)
                best = max(rates, key=lambda b: rates[b]) if rates else None
                per[precision] = {"items_per_s": rates, "best_batch": best, "runner": runner.describe()}
        except (EngineError, RuntimeError, ValueError) as exc:  # one model's failure is reported
            log.warning("bench gpu: %s: %s", listed.name, exc)
            per["error"] = f"{type(exc).__name__}: {exc}"
        out[listed.name] = per
    return out


def _example(spec: TensorSpec, m: Manifest, batch: int) -> np.ndarray:
    """A random input of the manifest's shape (symbolic dims from ``extra.bench_dims`` or 128)."""
    shape = [batch]
    hints = m.extra.get("bench_dims", {})
    hints = hints if isinstance(hints, dict) else {}
    for d in spec.shape[1:]:
        shape.append(int(d) if isinstance(d, int) else int(hints.get(str(d), 128)))
    dtype = np.dtype(spec.dtype)
    rng = np.random.default_rng(0)
    return (rng.random(shape) if dtype.kind == "f" else rng.integers(0, 2, shape)).astype(dtype)


def volume_time(
    weights: Path | None,
    frames: int | None,
    *,
    device: str = "cuda",
    volume: tuple[int, int, int] = SEED_VOLUME,
) -> dict[str, object]:
    """Seconds to segment ``volume`` slice by slice (scaled from ``frames`` slices)."""
    import torch

    from engines.registry import WEIGHTS_DIR, load_manifest
    from engines.runtime.torch_backend import torch_module_from_manifest
    from engines.synth.xct import make_slice

    m = load_manifest("xct_unet_fast", weights)
    cuda = device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    module = torch_module_from_manifest(m, weights or WEIGHTS_DIR).eval().to(device, dtype)
    multiple = int(m.extra.get("multiple", 16))  # type: ignore[call-overload]
    nz, ny, nx = volume
    n = min(frames or nz, nz)
    base = [make_slice((ny, nx), 990_000 + i)[0].astype(np.float32) for i in range(4)]
    host = [torch.from_numpy(b).pin_memory() if cuda else torch.from_numpy(b) for b in base]
    ph, pw = -(-ny // multiple) * multiple, -(-nx // multiple) * multiple
    labels_host = torch.empty((ny, nx), dtype=torch.uint8)
    labels_host = labels_host.pin_memory() if cuda else labels_host
    q = torch.tensor([0.01, 0.99], device=device)

    def segment(k: int) -> None:
        x = host[k % len(host)].to(device, non_blocking=True) * (1.0 + 0.01 * (k % 7))
        sub = x[::4, ::4].flatten()
        lo, hi = torch.quantile(sub[:: max(1, sub.numel() // 1_000_000)], q)
        x = ((x - lo) / torch.clamp(hi - lo, min=1e-6)).to(dtype)
        x = torch.nn.functional.pad(x[None, None], (0, pw - nx, 0, ph - ny), mode="reflect")
        with torch.inference_mode():
            probs = module(x)
        labels_host.copy_(probs[0, :, :ny, :nx].argmax(0).to(torch.uint8), non_blocking=True)

    for k in range(min(3, n)):
        segment(k)
    _sync(device)
    t0 = time.perf_counter()
    for k in range(n):
        segment(k)
    _sync(device)
    seconds = time.perf_counter() - t0
    total = seconds * nz / n
    mpx = nz * ny * nx / total / 1e6
    return {
        "device": device,
        "volume_zyx": list(volume),
        "slices_segmented": n,
        "seconds_measured": float(f"{seconds:.4g}"),
        "seconds_for_volume": float(f"{total:.4g}"),
        "scaled_from_slices": n < nz,
        "mpx_per_s": float(f"{mpx:.4g}"),
        "target_s": TARGET_S,
        "met": total <= TARGET_S,
        "path": f"whole-slice xct_unet_fast, {str(dtype)[6:]}, torch eager on {device}, "
        "normalise/pad/argmax on the device",
    }


def run_bench(out: Path, *, weights: Path | None, frames: int | None, quick: bool) -> dict[str, object]:
    ok, device = cuda_status()
    result: dict[str, object] = {"benchmark": "gpu", "host": host_info(), "device": device}
    if not ok:
        result["skipped"] = f"bench gpu not run: {device}"
    else:
        result["models"] = model_throughput(weights, 0.3 if quick else 1.0)
        result["xct_volume"] = volume_time(weights, frames or (16 if quick else None))
    result["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def cli_main(args: argparse.Namespace) -> int:
    res = run_bench(
        Path(args.json),
        weights=Path(args.weights) if args.weights else None,
        frames=args.frames,
        quick=bool(args.quick),
    )
    if "skipped" in res:
        print(f"{res['skipped']}; wrote {args.json}")
        return 0
    vol = res["xct_volume"]
    assert isinstance(vol, dict)  # volume_time's summary
    print(
        f"gpu {res['device']}: seed-size XCT volume {vol['seconds_for_volume']} s ({vol['mpx_per_s']} Mpx/s)"
    )
    return 0
