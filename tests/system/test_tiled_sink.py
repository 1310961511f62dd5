"""The Tiled sink against a real ``tiled serve`` on 127.0.0.1, read back with the Tiled client;
and the monitor's HDF5 run file served by Tiled's HDF5 adapter (``tiled serve directory``).

Skipped, with the reason, when Tiled is not installed (``pip install 'tiled[server,client]'``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.sim.ports import free_port
from monitor.store import RunReader
from tests.helpers import good_frame

TILED = shutil.which("tiled") or str(Path(sys.executable).parent / "tiled")
tiled_client = pytest.importorskip(
    "tiled.client", reason="NOT RUN: Tiled is not installed (pip install 'tiled[server,client]')"
)
pytestmark = pytest.mark.skipif(not Path(TILED).exists(), reason="NOT RUN: no `tiled` command")
API_KEY = "operandotestkey16"


def serve(args: list[str], cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [TILED, "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd, stdout=(cwd / "tiled.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with __import__("urllib.request").request.urlopen(f"{url}/api/v1/", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"tiled serve did not start: {(cwd / 'tiled.log').read_text()[-2000:]}")
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def tiled_catalog(tmp_path: Path) -> Iterator[str]:
    d = tmp_path / "tiled"
    d.mkdir()
    proc, url = serve(["catalog", "--temp", "--api-key", API_KEY], d)
    try:
        yield url
    finally:
        stop(proc)


def _send(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for i in range(n):
        sock.send_multipart(good_frame(i, value=100 + 10 * i))
    sock.close()
    ctx.term()


def config(tmp_path: Path, endpoint: str, uri: str) -> dict:
    return {
        "run": "cell7",
        "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
        "pipelines": [{"name": "stats", "kind": "frame_stats", "policy": "block", "queue_size": 64}],
        "store": {"directory": str(tmp_path / "runs"), "filename": "{run}.h5", "flush_interval_s": 0.1},
        "dashboard": {"enabled": False},
        "tiled": {"enabled": True, "uri": uri, "api_key": API_KEY, "flush_interval_s": 0.2, "timeout_s": 2.0},
    }


async def run_daemon(cfg: dict, endpoint: str, n: int) -> Daemon:
    daemon = Daemon(config_from_dict(cfg), config_text="# the run's TOML\n")
    await daemon.start()
    try:
        await asyncio.to_thread(_send, endpoint, n)
        deadline = time.monotonic() + 20
        while sum(daemon.telemetry.processed.values()) < n:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # at least one flush while live
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    return daemon


async def test_results_written_live_and_read_back(tmp_path: Path, tiled_catalog: str) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daemon = await run_daemon(config(tmp_path, endpoint, tiled_catalog), endpoint, 25)
    sink = daemon.integrations.adapters["tiled"]
    assert sink.outcomes["connected"] == 1 and sink.outcomes["written"] >= 1
    assert not sink.outcomes["unreachable"] and not sink.outcomes["error"]
    client = tiled_client.from_uri(tiled_catalog, api_key=API_KEY)
    run = client["cell7"]
    md = run.metadata
    assert md["run"] == "cell7" and md["sources"] == ["det"] and md["rows"] == {"stats": 25}
    assert "mean" in md["pipelines"]["stats"] and md["config_toml"] == "# the run's TOML\n"
    table = run["stats"].read()
    columns = run["stats"].metadata["columns"]
    assert table.shape == (25, len(columns)) and columns[:4] == ["seq", "index", "t_received", "t_done"]
    with RunReader(daemon.store_path) as r:
        stored = r.results("stats")
    got = dict(
        zip(table[:, columns.index("index")].astype(int), table[:, columns.index("mean")], strict=True)
    )
    want = dict(zip(stored["index"].astype(int), stored["mean"], strict=True))
    assert got == pytest.approx(want) and sorted(got) == list(range(25))


async def test_hdf5_run_file_through_tiled_hdf5_adapter(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config(tmp_path, endpoint, "http://127.0.0.1:1") | {"tiled": {"enabled": False}}
    daemon = await run_daemon(cfg, endpoint, 10)
    proc, url = serve(["directory", str(daemon.store_path.parent), "--public"], tmp_path)
    try:
        client = tiled_client.from_uri(url)
        deadline = time.monotonic() + 30
        while "cell7" not in client:  # the directory is indexed after the server is up
            assert time.monotonic() < deadline, "tiled never indexed the run file"
            time.sleep(0.2)
        node = client["cell7/entry/stats/data"]
        assert node.metadata["signal"] == "mean"
        mean = client["cell7/entry/stats/data/mean"].read()
    finally:
        stop(proc)
    with RunReader(daemon.store_path) as r:
        np.testing.assert_allclose(np.sort(mean), np.sort(r.results("stats")["mean"]))


async def test_missing_server_is_a_log_line_and_a_counter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.ERROR, logger="monitor.tiled"):
        daemon = await run_daemon(config(tmp_path, endpoint, f"http://127.0.0.1:{free_port()}"), endpoint, 5)
    sink = daemon.integrations.adapters["tiled"]
    assert sink.outcomes["unreachable"] >= 1 and not sink.outcomes["written"]
    assert sum(daemon.telemetry.processed.values()) == 5  # the run itself is unaffected
    assert len([r for r in caplog.records if r.name == "monitor.tiled"]) == 1  # rate-limited
