"""`bench engines`: torch eager vs ONNX Runtime on CPU (and GPU backends when present), one run.

For each model: throughput, p50/p99 call latency at batch 1 and at the best batch, and
``speedup_vs_torch_eager`` (ONNX Runtime throughput / torch eager throughput, same batch).
Backends are measured in alternating rounds and the median round is kept, so drift on a noisy
machine hits both sides alike. Reduced precision is tried where it may pay on this CPU: int8
(ONNX Runtime static QDQ quantisation) and bf16 (torch autocast), each with its accuracy cost.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engines.export import export_onnx
from engines.models.reference import RefCNNGRU, RefUNet
from engines.registry import Manifest, TensorSpec, list_models, load_manifest, onnx_path
from engines.runtime import create_runner
from engines.runtime.torch_backend import torch_module_from_manifest

log = logging.getLogger("monitor.bench.engines")


@dataclass(frozen=True)
class Measurement:
    backend: str
    batch: int
    throughput: float
    """Items (frames, windows) per second."""
    p50_ms: float
    p99_ms: float
    calls: int
    threads: int = 1


@dataclass
class BenchModel:
    name: str
    module: torch.nn.Module | None
    onnx: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    item_shape: dict[str, tuple[int, ...]]
    """Per-input shape of one item (without the batch dim)."""
    note: str = ""


def _time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3) -> list[float]:
    t_warm = time.perf_counter() + min(0.5, seconds)
    for i in range(100):  # warm-up: oneDNN primitive creation, allocations, lazy init
        t0 = time.perf_counter()
        fn()
        slow = time.perf_counter() - t0 > 0.3
        if (i >= 2 or (i >= 1 and slow)) and time.perf_counter() > t_warm:
            break
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _summary(backend: str, batch: int, times: list[float], threads: int = 1) -> Measurement:
    arr = np.array(times) * 1e3
    return Measurement(
        backend,
        batch,
        batch / float(np.median(times)),
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
        len(times),
        threads,
    )


def _feeds(m: BenchModel, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: rng.standard_normal((batch, *s)).astype(np.float32) for n, s in m.item_shape.items()}


def _torch_fn(
    module: torch.nn.Module, feeds: dict[str, np.ndarray], bf16: bool = False
) -> Callable[[], object]:
    tensors = [torch.from_numpy(a) for a in feeds.values()]

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(*tensors)

    return run


def measure_model(
    m: BenchModel, batches: list[int], threads: int, seconds: float, rounds: int
) -> dict[str, object]:
    """Each backend at each batch and thread count (1..threads); the best thread count is kept.

    Oversubscribed OpenMP makes torch much slower with 2 threads than with 1 on a loaded 2-core
    machine, so comparing at a fixed thread count would flatter ONNX Runtime.
    """
    rng = np.random.default_rng(0)
    thread_counts = sorted({1, threads})
    runners = {t: create_runner(m.onnx, "onnxruntime", threads=t) for t in thread_counts}
    for r in runners.values():
        r.activate()
    per: dict[tuple[str, int, int], list[Measurement]] = {}
    for _ in range(rounds):
        for b in batches:
            feeds = _feeds(m, b, rng)
            for t in thread_counts:
                if m.module is not None:
                    torch.set_num_threads(t)
                    per.setdefault(("torch_eager", b, t), []).append(
                        _summary("torch_eager", b, _time_calls(_torch_fn(m.module, feeds), seconds), t)
                    )
                runner = runners[t]
                infer = functools.partial(runner.infer, feeds)
                per.setdefault(("onnxruntime", b, t), []).append(
                    _summary("onnxruntime", b, _time_calls(infer, seconds), t)
                )
    for r in runners.values():
        r.deactivate()
    torch.set_num_threads(threads)
    med_all = {k: sorted(v, key=lambda x: x.throughput)[len(v) // 2] for k, v in per.items()}
    med: dict[tuple[str, int], Measurement] = {}
    for (backend, b, _t), meas in med_all.items():
        if (backend, b) not in med or meas.throughput > med[(backend, b)].throughput:
            med[(backend, b)] = meas
    out: dict[str, object] = {"note": m.note, "item_shape": {k: list(v) for k, v in m.item_shape.items()}}
    for backend in ("torch_eager", "onnxruntime"):
        rows = [med[(backend, b)] for b in batches if (backend, b) in med]
        if not rows:
            continue
        best = max(rows, key=lambda r: r.throughput)
        out[backend] = {"batch_1": asdict(rows[0]), "best_batch": asdict(best)}
    if "torch_eager" in out:
        eager, o = out["torch_eager"], out["onnxruntime"]
        assert isinstance(eager, dict) and isinstance(o, dict)
        o["batch_1"]["speedup_vs_torch_eager"] = o["batch_1"]["throughput"] / eager["batch_1"]["throughput"]
        o["best_batch"]["speedup_vs_torch_eager"] = (
            o["best_batch"]["throughput"] / eager["best_batch"]["throughput"]
        )
    return out


def reduced_precision(
    m: BenchModel, batch: int, threads: int, seconds: float, workdir: Path
) -> dict[str, object]:
    """int8 (ONNX Runtime static QDQ) and bf16 (torch autocast) against fp32: speed and error."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(1)
    calib = [_feeds(m, 1, rng) for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    pre = workdir / f"{m.name}-pre.onnx"
    q8 = workdir / f"{m.name}-int8.onnx"
    quant_pre_process(str(m.onnx), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(q8),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    feeds = _feeds(m, batch, rng)
    out: dict[str, object] = {}
    with create_runner(m.onnx, threads=threads) as fp32, create_runner(q8, threads=threads) as int8:
        ref = fp32.infer(feeds)
        got = int8.infer(feeds)
        t32 = _summary("onnxruntime_fp32", batch, _time_calls(lambda: fp32.infer(feeds), seconds))
        t8 = _summary("onnxruntime_int8", batch, _time_calls(lambda: int8.infer(feeds), seconds))
    out["int8_onnxruntime"] = {
        **asdict(t8),
        "speedup_vs_fp32": t8.throughput / t32.throughput,
        **_errors(ref, got),
    }
    if m.module is not None and not cpu_has_bf16():
        out["bf16_torch"] = {
            "skipped": "this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): bf16 is emulated, "
            "measured ~100x slower than fp32 here, never worth it"
        }
    elif m.module is not None:
        tf = _summary("torch_fp32", batch, _time_calls(_torch_fn(m.module, feeds), seconds))
        tb = _summary("torch_bf16", batch, _time_calls(_torch_fn(m.module, feeds, bf16=True), seconds))
        with torch.inference_mode():
            r = _torch_fn(m.module, feeds)()
            b = _torch_fn(m.module, feeds, bf16=True)()
        names = [s.name for s in m.outputs]
        as_dict = lambda x: {  # noqa: E731
            n: t.float().numpy() for n, t in zip(names, x if isinstance(x, tuple) else (x,), strict=True)
        }
        out["bf16_torch"] = {
            **asdict(tb),
            "speedup_vs_fp32": tb.throughput / tf.throughput,
            **_errors(as_dict(r), as_dict(b)),
        }
    return out


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, float]:
    errs: dict[str, float] = {}
    for k, r in ref.items():
        g = got[k].astype(np.float64)
        errs[f"max_abs_err_{k}"] = float(np.abs(g - r).max())
        if r.ndim == 4 and r.shape[1] > 1:  # segmentation logits: how many pixels change class
            errs[f"argmax_agreement_{k}"] = float((g.argmax(1) == r.argmax(1)).mean())
    return errs


def reference_models(workdir: Path, quick: bool) -> list[BenchModel]:
    torch.manual_seed(0)
    size, frames, win = (128, 32, 4) if quick else (512, 64, 16)
    unet = RefUNet(base=16, depth=4, classes=3).eval()
    gru = RefCNNGRU(channels=16, hidden=32).eval()
    out = []
    for name, mod, shape, ins, outs in (
        (f"reference_unet16_{size}", unet, (1, size, size), ["image"], ["logits"]),
        (f"reference_cnn_gru_{win}x{frames}", gru, (win, 1, frames, frames), ["window"], ["risk", "latent"]),
    ):
        ex = torch.randn(1, *shape)
        axes = {n: {0: "batch"} for n in ins + outs}
        rep = export_onnx(
            mod,
            (ex,),
            workdir / f"{name}.onnx",
            input_names=ins,
            output_names=outs,
            dynamic_axes=axes,
            atol=1e-3,
        )
        out.append(
            BenchModel(
                name,
                mod,
                rep.path,
                (TensorSpec(ins[0], ("batch", *shape)),),
                tuple(TensorSpec(o, ("batch", 1)) for o in outs),
                {ins[0]: shape},
                note="untrained reference architecture (issue 4)",
            )
        )
    return out


def _item_shape(spec: TensorSpec, manifest: Manifest) -> tuple[int, ...]:
    dims = manifest.extra.get("bench_dims", {})
    dims = dims if isinstance(dims, dict) else {}
    shape = []
    for d in spec.shape[1:]:
        shape.append(d if isinstance(d, int) else int(dims.get(d, 256)))
    return tuple(shape)


def shipped_models(weights: Path | None) -> list[BenchModel]:
    out = []
    for m in list_models(weights):
        if m.extra.get("precision") == "int8":
            continue  # measured as its fp32 parent's int8 variant (reduced_precision)
        m = load_manifest(m.name, weights)
        try:
            module: torch.nn.Module | None = torch_module_from_manifest(m, weights or onnx_path(m).parent)
            note = "shipped"
        except Exception as exc:  # noqa: BLE001 - any failure to rebuild means: no torch side for this model
            module, note = None, f"shipped; torch eager not measured ({type(exc).__name__}: {exc})"
        out.append(
            BenchModel(
                m.name,
                module,
                onnx_path(m, weights),
                m.inputs,
                m.outputs,
                {s.name: _item_shape(s, m) for s in m.inputs},
                note,
            )
        )
    return out


def run(json_path: Path, quick: bool, weights: Path | None, threads: int) -> dict[str, object]:
    seconds, rounds = (0.3, 1) if quick else (2.0, 3)
    batches = [1, 2] if quick else [1, 2, 4]
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": threads,
            "processor": platform.processor(),
            "torch": torch.__version__,
            "simd": sorted(
                cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "avx_vnni"}
            ),
            "cuda": torch.cuda.is_available(),
        },
        "method": f"alternating rounds ({rounds}) of {seconds:g} s per backend and batch; median round kept",
        "models": {},
    }
    models: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for m in reference_models(work, quick) + ([] if quick else shipped_models(weights)):
            log.warning("bench engines: %s", m.name)
            entry = measure_model(m, batches, threads, seconds, rounds)
            if m.name.startswith("reference_unet") and not quick:
                entry["reduced_precision"] = reduced_precision(m, 1, threads, seconds, work)
            models[m.name] = entry
    results["models"] = models
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def cli_main(args: argparse.Namespace) -> int:
    threads = args.threads or min(os.cpu_count() or 1, 2)
    res = run(Path(args.json), args.quick, Path(args.weights) if args.weights else None, threads)
    models = res["models"]
    assert isinstance(models, dict)
    for name, entry in models.items():
        ort = entry.get("onnxruntime", {})
        for key in ("batch_1", "best_batch"):
            r = ort.get(key, {})
            sp = r.get("speedup_vs_torch_eager")
            print(
                f"{name:34s} {key:10s} batch {r.get('batch'):2d} thr {r.get('threads')}  "
                f"ORT {r.get('throughput', 0):8.1f}/s  "
                f"p50 {r.get('p50_ms', 0):8.2f} ms  " + (f"{sp:.2f}x torch eager" if sp else "")
            )
    print(f"wrote {args.json}")
    return 0
