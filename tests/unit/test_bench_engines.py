"""`bench engines --quick` runs end to end and writes the fields the issue asks for."""

from __future__ import annotations

import json
from pathlib import Path

from monitor.cli import main


def test_bench_engines_quick(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    assert main(["bench", "engines", "--quick", "--json", str(out), "--threads", "1"]) == 0
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"reference_unet16_128", "reference_cnn_gru_4x32"}
    for entry in data["models"].values():
        for backend in ("torch_eager", "onnxruntime"):
            for key in ("batch_1", "best_batch"):
                row = entry[backend][key]
                assert row["throughput"] > 0 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
                assert row["batch"] >= 1
        assert entry["onnxruntime"]["best_batch"]["speedup_vs_torch_eager"] > 0
