"""The ONNX-only daemon does not import torch (issue 12): the runtime install is the daemon,
ONNX Runtime and Bokeh. Checked on ``sys.modules`` of a fresh interpreter that builds, starts and
stops a daemon with the model pipelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = """
import asyncio, json, sys, tempfile
from monitor.config import config_from_dict
from monitor.daemon import Daemon

kinds = sys.argv[1].split(",")
async def main():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict({
            "sources": [{"name": "det", "kind": "array10", "endpoint": "tcp://127.0.0.1:0", "mode": "bind"}],
            "pipelines": [{"name": k, "kind": k} for k in kinds],
            "store": {"directory": tmp},
            "dashboard": {"enabled": False},
        })
        daemon = Daemon(cfg)
        await daemon.start()
        daemon.request_exit()
        await daemon.shutdown()
asyncio.run(main())
heavy = ("torch", "monitor.sim", "monitor.bench", "engines.train", "engines.synth", "engines.models")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m in heavy)))
"""


def loaded(kinds: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, kinds], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_onnx_daemon_does_not_import_torch() -> None:
    heavy = loaded("frame_stats,early_warning,segmentation,alignment")
    assert not heavy, f"the ONNX-only daemon imported {heavy}"
