"""ISA detection from /proc/cpuinfo text, and backend_precision choosing the int8 model."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from engines import isa
from engines.registry import WEIGHTS_DIR
from engines.runtime import chosen_backends, create_runner

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
"""
SAPPHIRE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16 avx_vnni
processor\t: 1
model name\t: ignored
flags\t\t: fpu
"""


def test_parse_cpuinfo() -> None:
    amd = isa.parse_cpuinfo(EPYC, cpus=2)
    assert amd.model == "AMD EPYC 7B13" and amd.avx2 and not amd.fast_int8 and not amd.fast_bf16
    intel = isa.parse_cpuinfo(SAPPHIRE, cpus=2)
    assert intel.amx_int8 and intel.amx_bf16 and intel.avx512_vnni and intel.fast_int8 and intel.fast_bf16
    assert "AMX_INT8" in intel.summary() and intel.summary().startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert isa.parse_cpuinfo("", cpus=1).summary().endswith("no AVX2")
    assert isa.detect().cpus >= 1  # this machine: whatever it has, it parses


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    for suffix in ("json", "onnx"):
        shutil.copy(WEIGHTS_DIR / f"xct_unet_fast.{suffix}", tmp_path)
    return tmp_path


def _fake_int8(weights: Path, fp32_sha: str | None = None, speedup: float = 1.8) -> None:
    """An 'int8' sibling (here a copy of the fp32 ONNX, enough to test the choice)."""
    import json

    from engines.registry import sha256_file

    src = json.loads((weights / "xct_unet_fast.json").read_text())
    shutil.copy(weights / "xct_unet_fast.onnx", weights / "xct_unet_fast_int8.onnx")
    q = src | {"name": "xct_unet_fast_int8", "onnx": "xct_unet_fast_int8.onnx"}
    q["sha256"] = sha256_file(weights / "xct_unet_fast_int8.onnx")
    q["extra"] = src["extra"] | {
        "precision": "int8",
        "fp32_sha256": fp32_sha or src["sha256"],
        "speedup_vs_fp32": speedup,
    }
    (weights / "xct_unet_fast_int8.json").write_text(json.dumps(q))


def _uses_int8(weights: Path, precision: str) -> bool:
    r = create_runner("xct_unet_fast", "onnxruntime", weights_dir=weights, precision=precision)
    return r.path.name == "xct_unet_fast_int8.onnx"  # type: ignore[attr-defined]


def test_precision_choice(
    weights: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert not _uses_int8(weights, "int8")  # none shipped yet: fp32, with a warning
    assert "no accepted int8 model" in caplog.text
    _fake_int8(weights)
    assert _uses_int8(weights, "int8")
    assert "int8" in chosen_backends()["xct_unet_fast"]  # stored with the run
    assert not _uses_int8(weights, "fp32")
    monkeypatch.setattr(isa, "detect", lambda: isa.parse_cpuinfo(SAPPHIRE, 2))
    assert _uses_int8(weights, "auto")
    monkeypatch.setattr(isa, "detect", lambda: isa.parse_cpuinfo(EPYC, 2))
    assert not _uses_int8(weights, "auto")  # no VNNI/AMX: fp32
    assert not _uses_int8(weights, "bf16")  # no bf16 instructions: fp32
    monkeypatch.setattr(isa, "detect", lambda: isa.parse_cpuinfo(SAPPHIRE, 2))
    _fake_int8(weights, speedup=0.5)  # measured slower when quantised (a tiny model): auto keeps fp32
    assert not _uses_int8(weights, "auto")
    assert _uses_int8(weights, "int8")


def test_int8_of_another_fp32_model_is_ignored(weights: Path, caplog: pytest.LogCaptureFixture) -> None:
    _fake_int8(weights, fp32_sha="0" * 64)
    with caplog.at_level(logging.WARNING):
        assert not _uses_int8(weights, "int8")
    assert "quantised from another fp32 model" in caplog.text


def test_unknown_precision_is_an_error(weights: Path) -> None:
    from engines.errors import EngineError

    with pytest.raises(EngineError):
        create_runner("xct_unet_fast", "onnxruntime", weights_dir=weights, precision="int4")
