"""The daemon end to end, as a subprocess: real ZeroMQ sockets, a real HDF5 file, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import zmq

from monitor.alerts.sinks import read_journal
from monitor.config import redact_secrets
from monitor.errors import StoreError
from monitor.store import RunReader
from tests.helpers import MALFORMED, daemon_config, free_port, good_frame, start_daemon, wait_for


def _push(endpoint: str) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    return ctx, sock


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def test_malformed_messages_are_rejected_counted_and_the_daemon_keeps_going(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    alarm_pub = f"tcp://127.0.0.1:{free_port()}"
    cfg = daemon_config(tmp_path, endpoint, alarm_pub=alarm_pub)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    ctx, push = _push(endpoint)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"alarm")
    sub.connect(alarm_pub)
    try:
        sent = 0
        store = tmp_path / "runs" / "test.h5"

        # A good frame; once it is stored the daemon (and its alarm PUB) are up.
        push.send_multipart(good_frame(0))
        sent += 1
        wait_for(lambda: store.exists() and _stored_rows(store) == 1, 20, "the first frame stored")
        time.sleep(0.3)  # PUB/SUB: give the subscriber time to join before alarms are raised
        # Each malformed kind followed by a good frame.
        for i, (_reason, parts) in enumerate(MALFORMED, start=1):
            push.send_multipart(parts)
            push.send_multipart(good_frame(i))
            sent += 2
        # Then saturated frames to raise an alarm (min_count = 2), then normal ones to clear it.
        n = len(MALFORMED) + 1
        for k in range(4):
            push.send_multipart(good_frame(n + k, sat=200))
        for k in range(4, 8):
            push.send_multipart(good_frame(n + k))
        sent += 8
        wait_for(lambda: _stored_rows(store) >= sent, 20, f"{sent} accounted messages")
        assert proc.poll() is None, "daemon died on bad input"
        sub.setsockopt(zmq.RCVTIMEO, 5000)
        alarm_msgs = [json.loads(sub.recv_multipart()[1]) for _ in range(2)]
    finally:
        code = _stop(proc)
        push.close()
        sub.close()
        ctx.term()
    assert code == 0, log.read_text()
    with RunReader(store) as r:
        frames = r.dispositions()
        assert len(r.accounted_seqs()) == sent
        rejected = [d for d in frames if d.status.name == "REJECTED"]
        assert sorted(d.reason for d in rejected) == sorted(reason for reason, _ in MALFORMED)
        processed = [d for d in frames if d.status.name == "PROCESSED"]
        assert len(processed) == sent - len(MALFORMED)
        # Every good frame after a bad one arrived intact.
        assert sorted(d.index for d in processed) == list(range(len(MALFORMED) + 9))
        results = r.results("stats")
        assert len(results) == len(processed)
        transitions = [e.transition for e in r.alarms()]
        assert transitions == ["raise", "clear"]
        counts = r.status_counts()
        assert counts["REJECTED"] == len(MALFORMED)
        # The config and versions travel with the results; telemetry ends with the final counts.
        # ... with the operator token redacted (issue 12: no secrets in run files).
        assert r.attrs.config_toml == redact_secrets(cfg.read_text())
        assert "letmein" not in r.attrs.config_toml and "<redacted>" in r.attrs.config_toml
        assert r.attrs.versions["operando-monitor"] and r.attrs.versions["hdf5"]
        last = r.telemetry()[-1]
        assert (last.received, last.rejected, last.processed) == (sent, len(MALFORMED), sent - len(MALFORMED))
    journal = read_journal(tmp_path / "runs" / "alarms.jsonl")
    assert [e.transition for e in journal] == ["raise", "clear"]
    assert journal[0].alarm.severity.name == "MAJOR"
    assert [m["transition"] for m in alarm_msgs] == ["raise", "clear"]
    text = log.read_text()
    # One clear line per rejection, naming the reason.
    for reason, _ in MALFORMED:
        assert reason in text


def test_sigterm_shuts_down_within_the_configured_timeout(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = daemon_config(tmp_path, endpoint, shutdown_timeout_s=3.0)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    ctx, push = _push(endpoint)
    store = tmp_path / "runs" / "test.h5"
    try:
        for i in range(50):
            push.send_multipart(good_frame(i))
        wait_for(lambda: store.exists() and "recording to" in log.read_text(), 20, "daemon start")
        time.sleep(0.5)
        t0 = time.monotonic()
        code = _stop(proc, signal.SIGTERM, timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        push.close()
        ctx.term()
    assert code == 0, log.read_text()
    assert elapsed < 3.0 + 1.5, f"shutdown took {elapsed:.2f} s"
    text = log.read_text()
    for step in ("stop ingest", "drain", "flush store", "close sockets", "shutdown complete"):
        assert step in text
    with RunReader(store) as r:
        assert len(r.accounted_seqs()) == 50
        assert r.status_counts()["PROCESSED"] == 50


def test_kill_minus_9_mid_stream_leaves_a_readable_file_with_every_flushed_frame(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = daemon_config(tmp_path, endpoint)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    ctx, push = _push(endpoint)
    store = tmp_path / "runs" / "test.h5"
    stop = threading.Event()

    def stream() -> None:  # keeps frames flowing while the daemon is killed
        i = 0
        while not stop.is_set():
            push.send_multipart(good_frame(i))
            i += 1
            time.sleep(0.002)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        wait_for(lambda: _stored_rows(store) >= 100, 20, "100 stored rows")
        before = _stored_rows(store)
        proc.kill()
        proc.wait(timeout=10)
    finally:
        stop.set()
        sender.join()
        if proc.poll() is None:
            proc.kill()
        push.close(linger=0)
        ctx.term()
    with RunReader(store) as r:
        frames = r.dispositions()
        assert len(frames) >= before
        # Intact: the frames we sent, in order, each once, no holes.
        assert [d.index for d in frames] == list(range(len(frames)))
        assert all(d.status.name == "PROCESSED" for d in frames)
        assert len(r.results("stats")) >= before


def _stored_rows(store: Path) -> int:
    try:
        with RunReader(store) as r:
            return len(r.dispositions())
    except StoreError:  # not created yet, or created but SWMR not started yet
        return 0
