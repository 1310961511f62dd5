"""Engines: export check, registry (sha256), every CPU backend agreeing with torch, guarded backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import (
    BackendUnavailable,
    EngineError,
    ExportMismatch,
    InputMismatch,
    ModelCorrupt,
    ModelNotFound,
)
from engines.export import export_onnx
from engines.models.reference import RefCNNGRU, RefUNet, TinyConvNet, TinyGRU
from engines.registry import TensorSpec, load_manifest, save_model
from engines.runtime import chosen_backends, create_runner
from engines.runtime.tensorrt_backend import engine_cache_key, profile_shapes

GOLDEN = {
    "conv": (
        lambda: TinyConvNet(),
        (torch.randn(2, 1, 32, 48),),
        ["image"],
        ["logits"],
        {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
    ),
    "unet": (
        lambda: RefUNet(base=4, depth=2),
        (torch.randn(2, 1, 32, 32),),
        ["image"],
        ["logits"],
        {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
    ),
    "gru": (
        lambda: TinyGRU(),
        (torch.randn(3, 7, 4),),
        ["features"],
        ["risk"],
        {"features": {0: "batch"}, "risk": {0: "batch"}},
    ),
    "cnn_gru": (
        lambda: RefCNNGRU(channels=4, hidden=8),
        (torch.randn(2, 5, 1, 32, 32),),
        ["window"],
        ["risk", "latent"],
        {"window": {0: "batch"}, "risk": {0: "batch"}, "latent": {0: "batch"}},
    ),
}
FACTORIES = {
    "conv": ("engines.models.reference:TinyConvNet", {}),
    "unet": ("engines.models.reference:RefUNet", {"base": 4, "depth": 2}),
    "gru": ("engines.models.reference:TinyGRU", {}),
    "cnn_gru": ("engines.models.reference:RefCNNGRU", {"channels": 4, "hidden": 8}),
}


def _spec(name: str, t: torch.Tensor, axes: dict[int, str]) -> TensorSpec:
    return TensorSpec(name, tuple(axes.get(i, int(d)) for i, d in enumerate(t.shape)))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each golden model exported, checked and saved to a registry directory with torch weights."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("weights")
    for key, (make, example, ins, outs, axes) in GOLDEN.items():
        model = make().eval()
        with torch.no_grad():
            ref = model(*example)
        ref = ref if isinstance(ref, tuple) else (ref,)
        report = export_onnx(
            model, example, d / f"tmp_{key}.onnx", input_names=ins, output_names=outs, dynamic_axes=axes
        )
        assert report.max_abs_err < 1e-4
        factory, kwargs = FACTORIES[key]
        save_model(
            report.path,
            name=f"golden_{key}",
            version="0",
            task="test",
            inputs=[_spec(n, t, axes[n]) for n, t in zip(ins, example, strict=True)],
            outputs=[_spec(n, t, axes[n]) for n, t in zip(outs, ref, strict=True)],
            normalisation={},
            training={"command": "tests", "seed": 0},
            metrics={},
            out_dir=d,
            torch_module=model,
            torch_factory=factory,
            torch_kwargs=kwargs,
        )
    return d


@pytest.mark.parametrize("key", sorted(GOLDEN))
@pytest.mark.parametrize("backend", ["onnxruntime", "torch", "auto"])
def test_every_cpu_backend_agrees_with_torch(shipped: Path, key: str, backend: str) -> None:
    make, example, ins, outs, axes = GOLDEN[key]
    model = make()
    factory, kwargs = FACTORIES[key]
    model.load_state_dict(torch.load(shipped / f"golden_{key}.pt", weights_only=True))
    model.eval()
    # a batch size other than the export example's, to exercise the dynamic axis
    inputs = tuple(torch.cat([t, t[:1] * 0.5]) for t in example)
    with torch.no_grad():
        ref = model(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    with create_runner(f"golden_{key}", backend, weights_dir=shipped) as runner:
        got = runner.infer({n: t.numpy() for n, t in zip(ins, inputs, strict=True)})
        assert runner.stats().calls == 1
    for name, r in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got[name], r.numpy(), rtol=1e-3, atol=1e-4)
    assert f"golden_{key}" in chosen_backends()


def test_auto_picks_onnxruntime_without_cuda(shipped: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; auto would pick a GPU backend")
    runner = create_runner("golden_conv", "auto", weights_dir=shipped)
    assert runner.backend == "onnxruntime"


def test_export_mismatch_is_an_error(tmp_path: Path) -> None:
    class Nondeterministic(torch.nn.Module):
        """Behaves differently in torch than in the exported graph (a Python-side branch)."""

        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return x * float(self.calls)

    with pytest.raises(ExportMismatch, match="differ beyond"):
        export_onnx(
            Nondeterministic(),
            (torch.ones(1, 3),),
            tmp_path / "m.onnx",
            input_names=["x"],
            output_names=["y"],
        )


def test_input_validation_names_shapes_dtypes(shipped: Path) -> None:
    with create_runner("golden_unet", weights_dir=shipped) as r:
        with pytest.raises(InputMismatch, match="missing"):
            r.infer({"img": np.zeros((1, 1, 32, 32), np.float32)})
        with pytest.raises(InputMismatch, match="dtype float64"):
            r.infer({"image": np.zeros((1, 1, 32, 32))})
        with pytest.raises(InputMismatch, match="shape"):
            r.infer({"image": np.zeros((1, 32, 32), np.float32)})
        assert r.stats().calls == 0  # rejected calls are not timed as inferences


def test_runner_needs_activation(shipped: Path) -> None:
    r = create_runner("golden_conv", weights_dir=shipped)
    with pytest.raises(EngineError, match="before activate"):
        r.infer({"image": np.zeros((1, 1, 8, 8), np.float32)})


async def test_async_context_manager(shipped: Path) -> None:
    async with create_runner("golden_gru", weights_dir=shipped) as r:
        out = await asyncio.to_thread(r.infer, {"features": np.zeros((2, 7, 4), np.float32)})
    assert out["risk"].shape == (2, 1)


def test_registry_detects_corrupt_and_missing(shipped: Path, tmp_path: Path) -> None:
    m = load_manifest("golden_conv", shipped)
    assert m.inputs[0].shape == ("batch", 1, "height", "width") and len(m.sha256) == 64
    for f in shipped.glob("golden_conv.*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    onnx_file = tmp_path / "golden_conv.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelCorrupt, match="sha256"):
        load_manifest("golden_conv", tmp_path)
    onnx_file.unlink()
    with pytest.raises(ModelNotFound, match="missing"):
        load_manifest("golden_conv", tmp_path)
    with pytest.raises(ModelNotFound, match="available: golden_conv"):
        load_manifest("nope", tmp_path)
    (tmp_path / "golden_conv.json").write_text("{not json")
    with pytest.raises(ModelCorrupt, match="not a valid model manifest"):
        load_manifest("golden_conv", tmp_path)
    (tmp_path / "golden_conv.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelCorrupt, match="KeyError"):
        load_manifest("golden_conv", tmp_path)


def test_tensorrt_without_tensorrt_says_what_is_missing(shipped: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="TensorRT is not importable.*pip install tensorrt"):
        create_runner("golden_conv", "tensorrt", weights_dir=shipped)


def test_triton_without_client_says_what_is_missing(shipped: Path) -> None:
    try:
        import tritonclient  # noqa: F401

        pytest.skip("tritonclient is importable here")
    except ImportError:
        pass
    r = create_runner("golden_conv", "triton", weights_dir=shipped)
    with pytest.raises(BackendUnavailable, match="tritonclient"):
        r.activate()


def test_tensorrt_profile_and_cache_key() -> None:
    specs = (TensorSpec("image", ("batch", 1, "height", "width")),)
    prof = profile_shapes(specs, {"height": (64, 512, 2048), "width": (64, 512, 2048)})
    assert prof["image"] == ((1, 1, 64, 64), (8, 1, 512, 512), (32, 1, 2048, 2048))
    with pytest.raises(EngineError, match="needs"):
        profile_shapes(specs, {})
    k = engine_cache_key("ab" * 32, "NVIDIA H100", "10.9", "fp16", prof)
    assert k == engine_cache_key("ab" * 32, "NVIDIA H100", "10.9", "fp16", prof)
    assert k != engine_cache_key("ab" * 32, "NVIDIA H200", "10.9", "fp16", prof)
    assert k != engine_cache_key("ab" * 32, "NVIDIA H100", "10.9", "fp32", prof)


@pytest.mark.gpu
@pytest.mark.parametrize("key", sorted(GOLDEN))
@pytest.mark.parametrize("backend", ["torch", "tensorrt"])
def test_gpu_backends_agree_with_torch(shipped: Path, key: str, backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend == "tensorrt":
        pytest.importorskip("tensorrt")
    make, example, ins, outs, axes = GOLDEN[key]
    model = make()
    model.load_state_dict(torch.load(shipped / f"golden_{key}.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        ref = model(*example)
    ref = ref if isinstance(ref, tuple) else (ref,)
    dims = {"height": (8, 32, 64), "width": (8, 48, 64)}
    with create_runner(f"golden_{key}", backend, weights_dir=shipped, trt_dims=dims) as runner:
        got = runner.infer({n: t.numpy() for n, t in zip(ins, example, strict=True)})
        got2 = runner.infer({n: t.numpy() for n, t in zip(ins, example, strict=True)})  # CUDA-graph replay
    for name, r in zip(outs, ref, strict=True):
        np.testing.assert_allclose(got[name], r.numpy(), rtol=2e-2, atol=2e-2)  # fp16
        np.testing.assert_array_equal(got[name], got2[name])
