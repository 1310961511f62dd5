"""kill -9 a writer process: every row flushed before the kill must be readable and intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from monitor.store import RunReader, status_flags

ROOT = Path(__file__).resolve().parents[2]
BATCH = 40

WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    import h5py
    import numpy as np

    from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, Severity
    from monitor.config import StoreSettings
    from monitor.frames import Disposition, Frame, Status
    from monitor.pipelines.base import ArraySpec, Result, ResultSchema
    from monitor.store import RunStore
    from monitor.telemetry import TelemetrySnapshot

    path, mode, batches, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if mode == "pre_swmr":
        def die(self, value):
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        h5py.File.swmr_mode = property(lambda self: False, die)

    schemas = {"xrd": ResultSchema(scalars=("peak",), arrays=(ArraySpec("mask", (16, 16), "uint8"),))}
    settings = StoreSettings(compression="bslz4", chunk_rows=64)
    store = RunStore(path, settings, schemas, "[run]\\n", {"monitor": "test"}, ["det"], run="crash")

    def frame(seq):
        return Frame("xrd", "det", "s1", seq, np.zeros((1, 1)), seq * 0.5, seq * 0.5 + 0.1, seq=seq)

    b = 0
    while mode == "busy" or b < batches:
        seqs = range(b * batch, (b + 1) * batch)
        store.write_dispositions(
            [Disposition.for_frame(frame(s), "xrd", Status(s % 4), f"r{s}", t_done=s + 0.2) for s in seqs]
        )
        store.write_results(
            "xrd",
            [
                Result("xrd", frame(s), {"peak": s * 1.5}, {"mask": np.full((16, 16), s % 251, np.uint8)})
                for s in seqs
            ],
        )
        alarm = Alarm(f"a{b}", "rule", Severity.MINOR, AlarmState.ACTIVE, f"m{b}", 1.0, 0.5, None, b, b)
        store.write_alarm_events([AlarmEvent(float(b), "raise", alarm)])
        store.write_telemetry([TelemetrySnapshot(float(b), b, b, 0, 0, 0, 1.0, 1.0, 1.0, 2.0, 0, 0)])
        store.flush()
        b += 1
        print("flushed", b, flush=True)
    time.sleep(60)
    """
)


def start_writer(tmp_path: Path, mode: str, batches: int = 0) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "run.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), mode, str(batches), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    return proc, path


def wait_for_lines(proc: subprocess.Popen[str], k: int) -> int:
    assert proc.stdout is not None
    last = 0
    while last < k:
        line = proc.stdout.readline()
        assert line, f"writer exited early with {proc.wait()}"
        last = int(line.split()[1])
    return last


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert proc.stdout is not None
    proc.stdout.close()


def check_intact(path: Path, flushed_batches: int) -> int:
    """Assert the first ``flushed_batches`` batches are there, and every readable row is intact."""
    with RunReader(path) as reader:
        assert not reader.recovered
        assert reader.attrs.run == "crash"
        frames = reader.frames()
        n = len(frames)
        assert n >= flushed_batches * BATCH and n % BATCH == 0
        seq = np.arange(n)
        np.testing.assert_array_equal(frames["seq"], seq)
        np.testing.assert_array_equal(frames["status"], seq % 4)
        np.testing.assert_array_equal(frames["t_detector"], seq * 0.5)
        assert [r.decode() for r in frames["reason"]] == [f"r{s}" for s in seq]
        assert reader.accounted_seqs() == set(range(n))

        results = reader.results("xrd")
        assert len(results) >= flushed_batches * BATCH
        np.testing.assert_array_equal(results["peak"], np.arange(len(results)) * 1.5)
        mask = reader.array("xrd", "mask")
        assert mask.shape == (len(results), 16, 16)
        expected = (np.arange(len(results)) % 251).astype(np.uint8)
        np.testing.assert_array_equal(mask, np.broadcast_to(expected[:, None, None], mask.shape))

        alarms, telemetry = reader.alarms(), reader.telemetry()
        assert len(alarms) >= flushed_batches and len(telemetry) >= flushed_batches
        assert [a.alarm.id for a in alarms] == [f"a{b}" for b in range(len(alarms))]
        assert [t.received for t in telemetry] == list(range(len(telemetry)))
        return n


def test_kill_after_flushes_keeps_every_flushed_row(tmp_path: Path) -> None:
    proc, path = start_writer(tmp_path, "sleep", batches=6)
    try:
        flushed = wait_for_lines(proc, 6)
    finally:
        kill(proc)
    assert status_flags(path) & 0x04, "SWMR-write flag stays set after kill -9"
    assert check_intact(path, flushed) == 6 * BATCH


@pytest.mark.parametrize("delay", [0.0, 0.03])
def test_kill_mid_write(tmp_path: Path, delay: float) -> None:
    """The writer never stops appending and flushing; the kill lands wherever it lands."""
    proc, path = start_writer(tmp_path, "busy")
    try:
        flushed = wait_for_lines(proc, 3)
        time.sleep(delay)
    finally:
        kill(proc)
    check_intact(path, flushed)
    with RunReader(path, committed_only=False) as reader:
        assert len(reader.frames()) >= flushed * BATCH


def test_kill_before_swmr_started_is_recovered(tmp_path: Path) -> None:
    proc, path = start_writer(tmp_path, "pre_swmr", batches=1)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert proc.stdout is not None
    proc.stdout.close()
    flags = status_flags(path)
    assert flags == 0x01, "write-access flag set, SWMR flag not"
    before = path.read_bytes()
    with RunReader(path) as reader:
        assert reader.recovered
        assert reader.attrs.run == "crash"
        assert reader.pipelines() == ["xrd"]
        assert reader.rows() == {"frames": 0, "alarms": 0, "telemetry": 0, "xrd": 0}
        assert len(reader.array("xrd", "mask")) == 0
    assert path.read_bytes() == before, "the reader leaves the original file untouched"
