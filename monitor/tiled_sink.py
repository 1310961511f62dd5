"""Tiled sink: results and run metadata written live to a Tiled server.

Like NSLS-II's live analyses that write into Tiled as they go: at start the sink creates one
container per run (``<container>/<run file stem>``) whose metadata carries the run name, start
time, sources, pipelines, versions and the configuration; each pipeline gets a 2-D float64
array (rows = processed frames; columns ``seq``, ``index``, ``t_received``, ``t_done``, then the
pipeline's scalars, named in the array's ``columns`` metadata) that grows by one
``patch(..., extend=True)`` per flush. At stop the run metadata gains ``t_stop`` and row counts.

The daemon's loop only copies each result's numbers into a queue (microseconds per frame); a
thread talks to Tiled with the official client (``tiled[client]``, imported only when enabled).
A missing or failing server is a log line (then at most one every 30 s) and a counter
(``outcomes``: ``connected``, ``written``, ``unreachable``, ``error``, ``dropped_rows``); rows wait
(up to ``max_pending_rows``) and are written once the server is back. Never a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from monitor.config import TiledSettings

log = logging.getLogger("monitor.tiled")

FIXED_COLUMNS = ("seq", "index", "t_received", "t_done")
_QUIET_S = 30.0


class TiledSink:
    name = "tiled"

    def __init__(
        self,
        settings: TiledSettings,
        run_key: str,
        schemas: Mapping[str, Sequence[str]],
        run_metadata: Mapping[str, object],
    ) -> None:
        self.settings = settings
        self.run_key = run_key
        self.columns = {p: (*FIXED_COLUMNS, *scalars) for p, scalars in schemas.items()}
        self.run_metadata = dict(run_metadata)
        self.outcomes: Counter[str] = Counter()
        self.rows_written: Counter[str] = Counter()
        self._pending: dict[str, deque[tuple[float, ...]]] = {p: deque() for p in schemas}
        self._n_pending = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._client: Any = None
        self._run: Any = None
        self._arrays: dict[str, Any] = {}
        self._last_log = -1e9
        self._errors: tuple[type[BaseException], ...] = (OSError, KeyError, ValueError, RuntimeError)
        """What a failing server raises; httpx.HTTPError is added once the client is imported."""
        self._thread = threading.Thread(target=self._loop, name="tiled-sink", daemon=True)

    # ---- loop thread (daemon) ----------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def on_results(self, pipeline: str, results: Sequence[Any]) -> None:
        """Queue one row per result (called on the daemon's loop; no I/O)."""
        scalars = self.columns.get(pipeline)
        if scalars is None:
            return
        names = scalars[len(FIXED_COLUMNS) :]
        rows = [
            (
                float(r.frame.seq), float(r.frame.index), r.frame.t_received,
                r.frame.t_received + r.latency.queued + r.latency.compute,
                *(float(r.scalars.get(n, np.nan)) for n in names),
            )
            for r in results
        ]  # fmt: skip
        with self._lock:
            q = self._pending[pipeline]
            q.extend(rows)
            self._n_pending += len(rows)
            while self._n_pending > self.settings.max_pending_rows:
                for other in self._pending.values():
                    if other:
                        other.popleft()
                        self._n_pending -= 1
                        self.outcomes["dropped_rows"] += 1
                        break

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(self._thread.join, self.settings.timeout_s * 3)
        if self._thread.is_alive():
            log.error("tiled: writer thread still busy at shutdown; %d rows not written", self._n_pending)

    # ---- writer thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.settings.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping.is_set()
            self._flush()
            if stopping:
                if self._run is not None:
                    self._finish()
                return

    def _problem(self, outcome: str, message: str) -> None:
        self.outcomes[outcome] += 1
        now = time.monotonic()
        if now - self._last_log >= _QUIET_S:
            self._last_log = now
            log.error("tiled: %s (%d rows waiting; the HDF5 file has them all)", message, self._n_pending)

    def _connect(self) -> bool:
        if self._run is not None:
            return True
        s = self.settings
        try:
            import httpx
            from tiled.client import from_uri  # only when enabled

            self._errors = (httpx.HTTPError, OSError, KeyError, ValueError, RuntimeError)
            _bound_retries(s.timeout_s)
        except ImportError as exc:
            self._problem("error", f"the Tiled client is not installed (pip install 'tiled[client]'): {exc}")
            return False
        try:
            if self._client is None:
                api_key = s.api_key or os.environ.get("TILED_API_KEY") or None
                self._client = from_uri(s.uri, api_key=api_key)
            parent = self._client[s.container] if s.container else self._client
            if self.run_key in parent:
                self._run = parent[self.run_key]
            else:
                self._run = parent.create_container(self.run_key, metadata=self.run_metadata)
        except self._errors as exc:
            self._client = None
            self._problem("unreachable", f"cannot reach/create the run at {s.uri}: {_short(exc)}")
            return False
        self.outcomes["connected"] += 1
        log.info("tiled: writing run %r to %s", self.run_key, s.uri)
        return True

    def _flush(self) -> None:
        if self._n_pending == 0 or not self._connect():
            return
        for pipeline, q in self._pending.items():
            with self._lock:
                rows = list(q)
            if not rows:
                continue
            block = np.asarray(rows, dtype="<f8")
            try:
                self._write(pipeline, block)
            except self._errors as exc:  # logged, counted, retried at the next flush
                self._problem("error", f"writing {len(rows)} rows of {pipeline!r} failed: {_short(exc)}")
                self._run = None  # reconnect next time (the server may have restarted)
                self._arrays.clear()
                return
            with self._lock:
                for _ in range(len(rows)):
                    q.popleft()
                self._n_pending -= len(rows)
            self.rows_written[pipeline] += len(rows)
            self.outcomes["written"] += 1

    def _write(self, pipeline: str, block: np.ndarray) -> None:
        """One request per flush: create the array, or extend it at the row count we know."""
        entry = self._arrays.get(pipeline)
        if entry is None and pipeline in self._run:  # reconnected: ask the server how far it got
            array = self._run[pipeline]
            entry = self._arrays[pipeline] = [array, array.shape[0]]
        if entry is None:
            metadata = {"columns": list(self.columns[pipeline]), "pipeline": pipeline}
            array = self._run.write_array(block, key=pipeline, metadata=metadata)
            self._arrays[pipeline] = [array, block.shape[0]]
            return
        entry[0].patch(block, offset=(entry[1],), extend=True)
        entry[1] += block.shape[0]

    def _finish(self) -> None:
        try:
            done = {"t_stop": time.time(), "rows": dict(self.rows_written)}
            self._run.update_metadata(done | {"rows_dropped": self.outcomes["dropped_rows"]})
        except self._errors as exc:
            self._problem("error", f"cannot update the run metadata: {_short(exc)}")


def _bound_retries(timeout_s: float) -> None:
    """The client retries a failing request up to 10 times over 45 s by default (env
    ``TILED_RETRY_ATTEMPTS`` / ``TILED_RETRY_TIMEOUT``); unless those are set, bound it to 2
    attempts within ``timeout_s`` so a dead server cannot hold the writer past shutdown."""
    import tiled.client.utils as tu

    if "TILED_RETRY_ATTEMPTS" not in os.environ:
        tu.TILED_RETRY_ATTEMPTS = 2
    if "TILED_RETRY_TIMEOUT" not in os.environ:
        tu.TILED_RETRY_TIMEOUT = timeout_s


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_metadata(cfg_run: str, t_start: float, sources: Sequence[str], versions: Mapping[str, str],
                 pipelines: Mapping[str, Sequence[str]], config_toml: str) -> dict[str, object]:  # fmt: skip
    """The metadata of a run container (JSON-safe)."""
    return {
        "run": cfg_run,
        "t_start": t_start,
        "sources": list(sources),
        "pipelines": {p: list(s) for p, s in pipelines.items()},
        "versions": json.loads(json.dumps(dict(versions))),
        "config_toml": config_toml,
        "writer": "operando-monitor",
    }
