"""ONNX export, held-out evaluation through ONNX Runtime, manifests and plots for XCT models."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engines.export import export_onnx
from engines.models.unet import WithSoftmax
from engines.registry import TensorSpec, save_model
from engines.runtime import BaseRunner, create_runner
from engines.synth.xct import CLASSES
from engines.tiling import TileSpec
from engines.train.segmentation_core import History, ModelSpec, evaluate

log = logging.getLogger("engines.train.segmentation")

ENSEMBLE_TILE = TileSpec(tile=128, overlap=32, margin=8, batch=32)
NORMALISATION = {"percentile_low": 1.0, "percentile_high": 99.0, "percentile_step": 4.0}
"""x' = (x − p_low) / (p_high − p_low), percentiles of the slice (every ``step``-th pixel)."""
VERSION = "1.0"


def _probs_of(runner: BaseRunner) -> Callable[[np.ndarray], np.ndarray]:
    return lambda b: runner.infer({"image": b})["probs"]


def _tile_dict(t: TileSpec) -> dict[str, int]:
    return {"tile": t.tile, "overlap": t.overlap, "margin": t.margin, "batch": t.batch}


def export_model(
    spec: ModelSpec | None,
    model: torch.nn.Module,
    out: Path,
    test_data: tuple[np.ndarray, np.ndarray],
    *,
    command: str,
    seed: int,
    config: dict[str, object],
    history: History | None = None,
    members: list[ModelSpec] | None = None,
) -> dict[str, float]:
    """Export ``model`` (logits model for a spec; probability model for the ensemble), evaluate
    it on the held-out slices through ONNX Runtime, and save it with its manifest in ``out``."""
    wrapped: torch.nn.Module
    kwargs: dict[str, object]
    if spec is not None:
        name, wrapped, tile = spec.name, WithSoftmax(model).eval(), spec.tile
        fully_conv = spec.fully_convolutional
        factory, kwargs = spec.factory, dict(spec.kwargs)
        multiple = model.multiple if fully_conv else 128
    else:
        assert members is not None
        name, wrapped, tile, fully_conv, multiple = "xct_ensemble", model.eval(), ENSEMBLE_TILE, False, 128
        factory = "engines.models.ensemble:build_ensemble"
        weights = model.weights  # the Ensemble's normalised weight buffer
        assert isinstance(weights, torch.Tensor)
        kwargs = {
            "members": [{"kind": m.kind, "kwargs": dict(m.kwargs)} for m in members],
            "weights": [float(w) for w in weights],
        }
    h = w = 128
    dyn = {"image": {0: "batch"}, "probs": {0: "batch"}}
    in_shape: tuple[int | str, ...] = ("batch", 1, 128, 128)
    if fully_conv:
        dyn = {"image": {0: "batch", 2: "height", 3: "width"}, "probs": {0: "batch", 2: "height", 3: "width"}}
        in_shape = ("batch", 1, "height", "width")
    out_shape = (in_shape[0], len(CLASSES), in_shape[2], in_shape[3])
    example = torch.from_numpy(test_data[0][0, None, None, :h, :w].copy())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        rep = export_onnx(
            wrapped, (example,), path, input_names=["image"], output_names=["probs"], dynamic_axes=dyn
        )
        with create_runner(path, "onnxruntime", threads=2) as runner:
            s = evaluate(lambda b: runner.infer({"image": b})["probs"], *test_data, tile)
        metrics = s.as_dict()
        training = {"command": command, "seed": seed, "config": config}
        if history is not None:
            training["steps"] = history.steps_done
            training["seconds"] = round(history.seconds, 1)
        save_model(
            path,
            name=name,
            version=VERSION,
            task="segmentation",
            inputs=(TensorSpec("image", in_shape),),
            outputs=(TensorSpec("probs", out_shape),),
            normalisation=NORMALISATION,
            training=training,
            metrics=metrics,
            extra={
                "classes": list(CLASSES),
                "tile": _tile_dict(tile),
                "fully_convolutional": fully_conv,
                "multiple": multiple,
                "onnx_max_abs_err": rep.max_abs_err,
                "held_out": "{} synthetic slices {}x{}".format(len(test_data[0]), *test_data[0].shape[1:]),
            },
            out_dir=out,
            torch_module=wrapped,
            torch_factory=factory,
            torch_kwargs=kwargs,
        )
    log.info("%s: held-out mIoU %.4f mDSC %.4f", name, s.miou, s.mdsc)
    return metrics


OVERLAY_COLOURS = np.array(
    [[0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0.2, 0.1, 0.8], [0.1, 0.8, 1.0, 0.8], [1.0, 0.9, 0.1, 0.8]], np.float32
)


def write_plots(
    rdir: Path,
    histories: dict[str, History],
    weights: Path,
    test_data: tuple[np.ndarray, np.ndarray],
    names: list[str],
) -> None:
    """Training curves and a held-out slice overlaid with each model's prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engines.registry import load_manifest
    from engines.tiling import tiled_predict

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for n, h in histories.items():
        k = max(1, len(h.loss) // 100)
        sm = np.convolve(h.loss, np.ones(k) / k, mode="valid")
        ax[0].plot(h.step[: len(sm)], sm, label=n)
        ax[1].plot(h.val_step, h.val_miou, "o-", label=n)
    ax[0].set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    ax[1].set(xlabel="step", ylabel="val mIoU", title="validation mIoU (full slices)")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(rdir / "training_curves.png", dpi=80)
    plt.close(fig)
    img, lab = test_data[0][0], test_data[1][0]
    fig, ax = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 4.2))
    ax[0].imshow(img, cmap="gray")
    ax[0].imshow(OVERLAY_COLOURS[lab])
    ax[0].set_title("ground truth (held-out seed)")
    for a, n in zip(ax[1:], names, strict=True):
        m = load_manifest(n, weights)
        tile = TileSpec(**m.extra["tile"])  # type: ignore[arg-type]
        with create_runner(m, "onnxruntime", threads=2, weights_dir=weights) as r:
            pred = tiled_predict(img, _probs_of(r), tile).argmax(0)
        a.imshow(img, cmap="gray")
        a.imshow(OVERLAY_COLOURS[pred])
        a.set_title(f"{n}: mIoU {m.metrics['mIoU']:.3f}")
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(rdir / "overlays.png", dpi=70)
    plt.close(fig)


def export_untrained(name: str, out: Path, seed: int = 0) -> dict[str, float]:
    """An untrained (random) model with a full manifest: for tests and speed measurements."""
    from engines.synth.xct import make_slice
    from engines.tiling import normalise_slice
    from engines.train.segmentation_core import SPECS

    torch.manual_seed(seed)
    spec = SPECS[name]
    img, lab = make_slice((128, 128), seed)
    data = (normalise_slice(img)[None], lab[None])
    return export_model(
        spec,
        spec.build().eval(),
        out,
        data,
        command="export_untrained (tests)",
        seed=seed,
        config={"untrained": True},
    )
