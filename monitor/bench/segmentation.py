"""`operando-monitor bench segmentation --json OUT.json`: accuracy and speed of the XCT models.

Per model (fast U-Net, TransforCNN, E-Net ensemble; plus the paper-shaped U-Net for latency):

* ``mIoU``, ``mDSC`` (and per class) on held-out synthetic 512×512 slices, seeds
  ``BENCH_SEED0 …`` (never used in training), through the same path as the pipeline:
  percentile normalisation → blended tiles (ONNX Runtime, CPU) → argmax;
* ``mpx_per_s``: full-slice throughput on a 2560×2560 slice (normalise + tiles + argmax);
* ``latency_ms_per_128_patch``: median latency of one 128×128 patch (batch 1).

All on ONNX Runtime with ``--threads`` (default 2) intra-op threads. The machine's load average
is recorded next to the numbers: on a shared machine the timings are lower bounds.

Reduced precision, where the model has it: ``<model>_int8`` entries run the accepted int8 model
(``operando-monitor quantize``; same accuracy checks, same slices), and on a CPU with bf16
instructions ``xct_unet_fast_bf16_torch`` runs the torch module in bfloat16 (oneDNN, AMX where
present). ONNX Runtime's CPU provider has no bf16 convolution kernels, so there is no ORT bf16
entry. The throughput target depends on the CPU: 10 Mpx/s with int8 dot-product instructions
(VNNI/AMX), 5 without, at mIoU >= 0.93.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.isa import detect
from engines.registry import int8_manifest_for, load_manifest
from engines.runtime import BaseRunner, create_runner
from engines.synth.xct import N_CLASSES, make_slice
from engines.tiling import TileSpec, full_predict, labels_from_probs, normalise_slice, tiled_predict
from engines.train.segmentation_data import confusion, scores, slice_growth
from monitor.bench import host_info

log = logging.getLogger("monitor.bench.segmentation")

BENCH_SEED0 = 950_000
MODELS = ("xct_unet_fast", "xct_transforcnn", "xct_ensemble")
TARGETS = {
    "mIoU": 0.95,
    "mDSC": 0.96,
    "unet_latency_ms": 10.0,
    "mpx_per_s": 10.0 if detect().fast_int8 else 5.0,
    "fast_min_mIoU": 0.93,
}


def _paper_unet_onnx(tmp: Path) -> Path:
    """The paper-shaped U-Net (16 → 256 channels), untrained: latency does not depend on weights."""
    import torch

    from engines.export import export_onnx
    from engines.models.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(base=16, depth=5, space_to_depth=1, n_classes=N_CLASSES).eval()
    path = tmp / "xct_unet_paper.onnx"
    dyn = {"image": {0: "batch", 2: "height", 3: "width"}, "probs": {0: "batch", 2: "height", 3: "width"}}
    export_onnx(
        model,
        (torch.zeros(1, 1, 128, 128),),
        path,
        input_names=["image"],
        output_names=["probs"],
        dynamic_axes=dyn,
    )
    return path


def _latency(runner: BaseRunner, reps: int) -> float:
    x = np.random.default_rng(0).random((1, 1, 128, 128), dtype=np.float32)
    for _ in range(3):
        runner.infer({"image": x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.infer({"image": x})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _segment(runner: BaseRunner, image: np.ndarray, tile: TileSpec | None, multiple: int) -> np.ndarray:
    def predict(b: np.ndarray) -> np.ndarray:
        return runner.infer({"image": b})["probs"]

    x = normalise_slice(image)
    probs = full_predict(x, predict, multiple) if tile is None else tiled_predict(x, predict, tile)
    return labels_from_probs(probs)


def _throughput(
    runner: BaseRunner, image: np.ndarray, tile: TileSpec | None, multiple: int, reps: int
) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        _segment(runner, image, tile, multiple)
        best = min(best, time.perf_counter() - t0)
    return image.size / best / 1e6


def run_bench(
    out: Path, *, weights: Path | None = None, threads: int = 2, quick: bool = False
) -> dict[str, object]:
    n_slices, big, reps, lat_reps = (2, 1024, 1, 5) if quick else (8, 2560, 2, 30)
    # Raw (un-normalised, as streamed) slices at the same growth levels as the training set's.
    pairs = [
        make_slice((512, 512), BENCH_SEED0 + i, growth=slice_growth(BENCH_SEED0 + i)) for i in range(n_slices)
    ]
    raw, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    big_img = make_slice((big, big), BENCH_SEED0 + 999)[0]
    result: dict[str, object] = {
        "config": {
            "threads": threads,
            "held_out_seeds": [BENCH_SEED0, BENCH_SEED0 + n_slices - 1],
            "slices": f"{n_slices} x 512x512",
            "throughput_slice": f"{big}x{big}",
            "backend": "onnxruntime CPU",
            "quick": quick,
            "cpu_count": os.cpu_count(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "machine": platform.processor() or platform.machine(),
            "host": host_info(),
        },
        "targets": TARGETS,
        "models": {},
    }
    models: dict[str, dict[str, object]] = {}
    for name in MODELS:
        try:
            m = load_manifest(name, weights)
        except Exception as exc:  # noqa: BLE001 - a missing/corrupt model is reported, not fatal
            log.warning("skipping %s: %s", name, exc)
            models[name] = {"error": str(exc)}
            continue
        variants = [(name, m, "onnxruntime", "fp32")]
        q = int8_manifest_for(m, weights)
        if q is not None:
            variants.append((f"{name}_int8", q, "onnxruntime", "fp32"))
        if name == "xct_unet_fast" and detect().fast_bf16 and m.extra.get("torch"):
            variants.append((f"{name}_bf16_torch", m, "torch", "bf16"))
        for key, mm, backend, precision in variants:
            r = create_runner(mm, backend, threads=threads, weights_dir=weights, precision=precision)
            with r:
                models[key] = _measure(r, mm, raw, labels, big_img, reps, lat_reps)
            log.info("%s: %s", key, {k: v for k, v in models[key].items() if k != "per_class"})
    with (
        tempfile.TemporaryDirectory() as tmp,
        create_runner(_paper_unet_onnx(Path(tmp)), "onnxruntime", threads=threads) as r,
    ):
        models["xct_unet_paper_shape"] = {
            "note": "paper-shaped U-Net (16→256 channels, 1.9 M parameters), untrained: speed only",
            "latency_ms_per_128_patch": round(_latency(r, lat_reps), 2),
            "mpx_per_s": round(_throughput(r, big_img, TileSpec(256, 64, 24, 4), 16, 1), 3),
        }
    result["models"] = models
    result["bf16_onnxruntime_cpu"] = ort_bf16_probe()
    result["config"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]  # type: ignore[index]
    result["verdict"] = _verdict(models)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def ort_bf16_probe() -> str:
    """Whether ONNX Runtime's CPU provider runs a bfloat16 Conv (opset 22): 'ok' or its error."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 4, 3, 3], bytes(2 * 144), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "bf16_conv",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the probe reports whatever ORT says
        return f"onnxruntime {ort.__version__}: {type(exc).__name__}: {str(exc)[:160]}"
    return "ok"


def _measure(
    r: BaseRunner,
    m: object,
    raw: list[np.ndarray],
    labels: list[np.ndarray],
    big_img: np.ndarray,
    reps: int,
    lat_reps: int,
) -> dict[str, object]:
    """mIoU/mDSC on the held-out slices, full-slice Mpx/s and 128² patch latency of one runner."""
    extra = m.extra  # type: ignore[attr-defined]
    tile = TileSpec(**extra["tile"])
    multiple = int(extra.get("multiple", 16))
    conf = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    for img, lab in zip(raw, labels, strict=True):
        conf += confusion(_segment(r, img, tile, multiple), lab)
    s = scores(conf)
    tiled = round(_throughput(r, big_img, tile, multiple, reps), 3)
    entry: dict[str, object] = {
        "mIoU": round(s.miou, 4),
        "mDSC": round(s.mdsc, 4),
        "per_class": s.as_dict(),
        "mpx_per_s": tiled,
        "latency_ms_per_128_patch": round(_latency(r, lat_reps), 2),
        "tile": extra["tile"],
        "runner": r.describe(),
        "onnx_sha256": m.sha256[:16],  # type: ignore[attr-defined]
    }
    if extra.get("fully_convolutional"):
        whole = round(_throughput(r, big_img, None, multiple, reps), 3)
        entry["mpx_per_s_whole_slice"] = whole
        entry["mpx_per_s"] = max(tiled, whole)
    return entry


def _verdict(models: dict[str, dict[str, object]]) -> dict[str, object]:
    ok = {n: m for n, m in models.items() if "mIoU" in m}
    best = max(("xct_transforcnn", "xct_ensemble"), key=lambda n: float(ok.get(n, {}).get("mIoU", 0.0)))  # type: ignore[arg-type]
    fast = [n for n, m in ok.items() if float(m["mIoU"]) >= TARGETS["fast_min_mIoU"]]  # type: ignore[arg-type]
    fastest = max(fast, key=lambda n: float(ok[n]["mpx_per_s"]), default=None)  # type: ignore[arg-type]
    unet = ok.get("xct_unet_fast", {})
    return {
        "best_of_transforcnn_ensemble": best,
        "accuracy_met": bool(
            best in ok
            and float(ok[best]["mIoU"]) >= TARGETS["mIoU"]  # type: ignore[arg-type]
            and float(ok[best]["mDSC"]) >= TARGETS["mDSC"]  # type: ignore[arg-type]
        ),
        "unet_latency_met": bool(unet)
        and float(unet["latency_ms_per_128_patch"]) <= TARGETS["unet_latency_ms"],  # type: ignore[arg-type]
        "fastest_with_mIoU_0.93": fastest,
        "throughput_met": fastest is not None and float(ok[fastest]["mpx_per_s"]) >= TARGETS["mpx_per_s"],  # type: ignore[arg-type]
    }


def cli_main(args: argparse.Namespace) -> int:
    res = run_bench(
        Path(args.json),
        weights=Path(args.weights) if args.weights else None,
        threads=args.threads or 2,
        quick=bool(args.quick),
    )
    models = res["models"]
    assert isinstance(models, dict)
    for name, m in models.items():
        print(name, json.dumps({k: v for k, v in m.items() if k not in ("per_class", "tile")}))
    print("verdict", json.dumps(res["verdict"]))
    return 0
