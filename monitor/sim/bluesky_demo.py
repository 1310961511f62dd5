"""A real RunEngine publishing over 0MQ: ophyd sim devices → ``Publisher`` → ``Proxy`` → monitor.

Devices:

* :class:`SimPotentiostat` — ``current`` (mA) is a settable ophyd ``Signal``; anything that
  steps along with the plan (a growth simulator) reads ``pstat.current.get()`` each step.
  ``voltage`` follows it through a simple ohmic model.
* :class:`SimHdf5Detector` — an areaDetector-like image detector: each trigger appends a frame
  to ``/entry/data/data`` of an HDF5 file written in SWMR mode (as the HDF5 plugin does) and
  emits ``AD_HDF5`` resource/datum documents (``stream_resource``/``stream_datum`` with
  ``stream=True``, as ophyd-async does); with ``inline=True`` the image goes into the
  event itself instead. Its images brighten with the potentiostat current (and saturate above
  ``saturate_above_mA``), so a frame_stats threshold alarm raises during a current ramp.

Command line: ``operando-monitor bluesky-demo`` runs proxy + RunEngine + the daemon together;
``python -m monitor.sim.bluesky_demo publish|proxy ...`` runs one side (tests use these).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import h5py
import msgpack
import msgpack_numpy
import numpy as np
from bluesky import RunEngine
from bluesky import plans as bp
from bluesky.callbacks.zmq import Proxy, Publisher
from event_model import ComposeDatum, compose_resource
from event_model.documents.run_start import RunStart
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import NullStatus, new_uid

from monitor.config import (
    AlertSettings,
    DashboardSettings,
    EpicsSettings,
    MonitorConfig,
    PipelineSettings,
    RuleSettings,
    SourceSettings,
    StoreSettings,
)
from monitor.sim.ports import free_port

log = logging.getLogger("monitor.sim.bluesky")

SERIALIZERS: dict[str, Callable[[Any], bytes]] = {
    "msgpack": functools.partial(msgpack.packb, default=msgpack_numpy.encode),
    "json": lambda doc: _json_bytes(doc),
    "pickle": functools.partial(pickle.dumps, protocol=4),
}


def _json_bytes(doc: Any) -> bytes:
    import json

    return json.dumps(
        doc, default=lambda o: o.tolist() if isinstance(o, np.ndarray | np.generic) else str(o)
    ).encode()


class SimPotentiostat(Device):
    """A galvanostat: set ``current`` (mA); ``voltage`` = ``ocv_V`` + ``resistance_ohm`` · I."""

    current = Cpt(Signal, value=0.0, kind="hinted")
    voltage = Cpt(Signal, value=0.0, kind="normal")

    def __init__(self, *args: Any, ocv_V: float = 3.2, resistance_ohm: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ocv, self._r = ocv_V, resistance_ohm
        self.voltage.put(ocv_V)
        self.current.subscribe(self._follow, run=False)

    def _follow(self, value: float, **_: Any) -> None:
        self.voltage.put(self._ocv + self._r * float(value) / 1000.0)


class ImageModel:
    """Cheap synthetic frames: precomputed textured noise scaled by the potentiostat current."""

    def __init__(
        self,
        shape: tuple[int, int],
        seed: int = 0,
        saturate_above_mA: float = 8.0,
        n_noise: int = 8,
        hot_frames: frozenset[int] = frozenset(),
    ):
        """``hot_frames``: frame numbers (0-based, counted across runs) that saturate whatever the current."""
        self.hot_frames = hot_frames
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
        texture = 0.5 + 0.5 * np.sin(x / 17.0) * np.cos(y / 23.0)
        self._noise = [(texture * 800 + rng.normal(0, 40, shape)).astype(np.float32) for _ in range(n_noise)]
        self._i = itertools.count()
        self.shape = shape
        self.saturate_above_mA = saturate_above_mA

    def frame(self, current_mA: float) -> np.ndarray:
        i = next(self._i)
        base = self._noise[i % len(self._noise)]
        img = np.clip(base * (1.0 + 0.05 * current_mA), 0, 65535).astype(np.uint16)
        if current_mA > self.saturate_above_mA or i in self.hot_frames:  # a hot spot: 5 % at full scale
            h, w = self.shape
            img[: h // 4, : w // 5] = 65535
        return img


class SimHdf5Detector(Device):
    """areaDetector-like detector: HDF5 (SWMR) + AD_HDF5 resource/datum, or inline images."""

    def __init__(
        self,
        *args: Any,
        model: ImageModel,
        potentiostat: SimPotentiostat | None = None,
        save_dir: str | Path = ".",
        inline: bool = False,
        stream: bool = False,
        **kwargs: Any,
    ) -> None:
        """``stream=True``: ophyd-async style ``stream_resource``/``stream_datum`` instead of AD_HDF5."""
        super().__init__(*args, **kwargs)
        self.stream = stream and not inline
        self.model = model
        self.potentiostat = potentiostat
        self.save_dir = Path(save_dir)
        self.inline = inline
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._resource_uid = ""
        self._datum_factory: ComposeDatum | None = None
        self._point = itertools.count()
        self._assets: deque[tuple[str, dict[str, Any]]] = deque()
        self._reading: dict[str, dict[str, Any]] = {}
        self.files: list[Path] = []

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def stage(self) -> list[object]:
        staged = super().stage()
        self._point = itertools.count()
        if self.inline:
            return staged
        self.save_dir.mkdir(parents=True, exist_ok=True)
        name = f"{new_uid()[:12]}.h5"
        path = self.save_dir / name
        f = h5py.File(path, "w", libver="latest")
        h, w = self.model.shape
        self._dataset = f.create_dataset(
            "/entry/data/data", shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype="uint16"
        )
        f.swmr_mode = True
        self._file = f
        self.files.append(path)
        if self.stream:
            self._resource_uid = new_uid()
            sres = {
                "uid": self._resource_uid,
                "data_key": self.image_key,
                "mimetype": "application/x-hdf5",
                "uri": f"file://localhost{path.resolve()}",
                "parameters": {"dataset": "/entry/data/data", "chunk_shape": [1, h, w]},
            }
            self._assets.append(("stream_resource", sres))
            return staged
        bundle = compose_resource(
            spec="AD_HDF5",
            root=str(self.save_dir.resolve()),
            resource_path=name,
            resource_kwargs={"frame_per_point": 1},
            # the RunEngine sets run_start when it emits the resource; only the uid is read here
            start=cast(RunStart, {"uid": "placeholder"}),
        )
        resource = dict(bundle.resource_doc)
        resource.pop("run_start", None)
        self._resource_uid = bundle.resource_doc["uid"]
        self._datum_factory = bundle.compose_datum
        self._assets.append(("resource", resource))
        return staged

    def unstage(self) -> list[object]:
        if self._file is not None:
            self._file.close()
            self._file = self._dataset = None
        return super().unstage()

    def trigger(self) -> NullStatus:
        current = float(self.potentiostat.current.get()) if self.potentiostat is not None else 0.0
        img = self.model.frame(current)
        now = time.time()
        point = next(self._point)
        if self.inline or self._dataset is None:
            self._reading = {self.image_key: {"value": img, "timestamp": now}}
            return NullStatus()
        ds = self._dataset
        ds.resize(point + 1, axis=0)
        ds[point] = img
        ds.flush()
        if self.stream:  # the RunEngine fills in descriptor and seq_nums
            sdatum = {
                "uid": f"{self._resource_uid}/{point}",
                "stream_resource": self._resource_uid,
                "descriptor": "",
                "indices": {"start": point, "stop": point + 1},
                "seq_nums": {"start": 0, "stop": 0},
            }
            self._assets.append(("stream_datum", sdatum))
            self._reading = {}
            return NullStatus()
        assert self._datum_factory is not None
        datum = self._datum_factory(datum_kwargs={"point_number": point})
        self._assets.append(("datum", dict(datum)))
        self._reading = {self.image_key: {"value": datum["datum_id"], "timestamp": now}}
        return NullStatus()

    def read(self) -> dict[str, dict[str, Any]]:
        return dict(self._reading)

    def describe(self) -> dict[str, dict[str, Any]]:
        h, w = self.model.shape
        key: dict[str, Any] = {"source": "SIM:IMAGE", "dtype": "array", "shape": [h, w], "dtype_numpy": "<u2"}
        if not self.inline:
            key["external"] = "STREAM:" if self.stream else "FILESTORE:"
        return {self.image_key: key}

    def collect_asset_docs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while self._assets:
            yield self._assets.popleft()


# ---- proxy --------------------------------------------------------------------------------------
def start_proxy_thread(in_port: int | None = None, out_port: int | None = None) -> tuple[str, str]:
    """bluesky's ``Proxy`` in a daemon thread on 127.0.0.1: (publisher address, subscriber endpoint)."""
    in_port = in_port or free_port()
    out_port = out_port or free_port()
    proxy = Proxy(f"tcp://127.0.0.1:{in_port}", f"tcp://127.0.0.1:{out_port}")
    threading.Thread(target=proxy.start, name="bluesky-proxy", daemon=True).start()
    return f"127.0.0.1:{in_port}", f"tcp://127.0.0.1:{out_port}"


def start_proxy_process(in_port: int, out_port: int) -> subprocess.Popen[bytes]:
    """bluesky's ``Proxy`` in its own process (``python -m monitor.sim.bluesky_demo proxy``)."""
    cmd = [sys.executable, "-m", "monitor.sim.bluesky_demo", "proxy", "--in-port", str(in_port)]
    return subprocess.Popen([*cmd, "--out-port", str(out_port)])


# ---- RunEngine ----------------------------------------------------------------------------------
def make_devices(
    shape: tuple[int, int],
    save_dir: Path,
    *,
    inline: bool,
    stream: bool = False,
    seed: int = 0,
    saturate_above_mA: float = 8.0,
) -> tuple[SimHdf5Detector, SimPotentiostat]:
    pstat = SimPotentiostat(name="pstat")
    det = SimHdf5Detector(
        name="det",
        model=ImageModel(shape, seed, saturate_above_mA),
        potentiostat=pstat,
        save_dir=save_dir,
        inline=inline,
        stream=stream,
    )
    return det, pstat


def make_run_engine(
    address: str, fmt: str = "msgpack", *, settle_s: float = 0.5
) -> tuple[RunEngine, Publisher]:
    """A RunEngine (no signal handlers: usable off the main thread) publishing to ``address``."""
    RE = RunEngine({}, context_managers=[])
    publisher = Publisher(address, serializer=SERIALIZERS[fmt])
    RE.subscribe(publisher)
    time.sleep(settle_s)  # PUB/SUB slow joiner: let the connection to the proxy settle
    return RE, publisher


def current_ramp(points: int, top_mA: float) -> list[float]:
    """A triangle: 0 → ``top_mA`` → 0 over ``points`` steps."""
    up = np.linspace(0.0, top_mA, (points + 1) // 2)
    return [float(v) for v in np.concatenate([up, up[::-1][points % 2 :]])][:points]


def publish(
    address: str,
    *,
    events: int,
    shape: tuple[int, int] = (512, 512),
    fmt: str = "msgpack",
    inline: bool = True,
    stream: bool = False,
    save_dir: Path = Path("runs/bluesky-demo"),
    scans: int = 1,
    top_mA: float = 10.0,
    sample: str = "demo-cell",
    delay_s: float = 0.0,
) -> list[str]:
    """Run ``scans`` list_scans of ``events`` points (current ramp) and publish them; returns run uids."""
    det, pstat = make_devices(shape, save_dir, inline=inline, stream=stream)
    RE, publisher = make_run_engine(address, fmt)
    uids: list[str] = []
    try:
        per_step = _slow_step(delay_s) if delay_s > 0 else None
        for _ in range(scans):
            ramp = current_ramp(events, top_mA)
            # list_scan takes (motor, points) as flat *args; bluesky annotates them as tuples
            plan = bp.list_scan([det, pstat], pstat.current, ramp, md={"sample": sample}, per_step=per_step)  # type: ignore[arg-type]
            run_uids = RE(plan)
            assert isinstance(run_uids, tuple)  # a RunEngine without call_returns_result
            uids.extend(run_uids)
        time.sleep(0.2)  # let the PUB socket flush the last documents
    finally:
        publisher.close()
    return uids


def _slow_step(delay_s: float) -> Callable[..., Any]:
    from bluesky.plan_stubs import one_nd_step, sleep

    def step(detectors: Any, step: Any, pos_cache: Any, take_reading: Any = None) -> Any:
        yield from one_nd_step(detectors, step, pos_cache)
        yield from sleep(delay_s)

    return step


# ---- CLI entries ---------------------------------------------------------------------------------
def demo_config(
    out_dir: Path, endpoint: str, *, dashboard_port: int | None, epics_prefix: str
) -> MonitorConfig:
    """Daemon config for the demo: bluesky source → frame_stats → saturation alarm (→ EPICS PVs)."""
    return MonitorConfig(
        run="bluesky-demo",
        sources=(
            SourceSettings(name="bluesky", kind="bluesky", endpoint=endpoint, current_field="pstat_current"),
        ),
        pipelines=(PipelineSettings(name="stats", kind="frame_stats", queue_size=64),),
        store=StoreSettings(directory=str(out_dir), filename="{run}-{time}.h5"),
        alerts=AlertSettings(
            rules=(
                RuleSettings(
                    name="saturation",
                    kind="threshold",
                    pipeline="stats",
                    metric="saturated_fraction",
                    major=0.01,
                    hysteresis=0.005,
                    min_count=2,
                ),
            ),
            epics=EpicsSettings(enabled=bool(epics_prefix), prefix=epics_prefix or "OPERANDO:"),
        ),
        dashboard=DashboardSettings(enabled=dashboard_port is not None, port=dashboard_port or 0),
    )


async def run_bluesky_demo(
    out_dir: Path,
    *,
    points: int = 40,
    scans: int = 3,
    fmt: str = "msgpack",
    storage: str = "hdf5",
    shape: tuple[int, int] = (512, 512),
    delay_s: float = 0.1,
    dashboard_port: int | None = None,
    epics_prefix: str = "",
) -> int:
    """Proxy (thread) + RunEngine (thread) + daemon (this loop) until the scans are done."""
    from monitor.daemon import Daemon
    from monitor.display import load_display

    address, endpoint = start_proxy_thread()
    cfg = demo_config(out_dir, endpoint, dashboard_port=dashboard_port, epics_prefix=epics_prefix)
    display = load_display("bokeh") if dashboard_port is not None else None
    daemon = Daemon(cfg, display=display)
    await daemon.start()
    if daemon.dashboard_url:
        print(f"dashboard: {daemon.dashboard_url}", file=sys.stderr)
    try:
        await asyncio.sleep(0.5)  # let the source's SUB connect before the first start document
        uids = await asyncio.to_thread(
            publish,
            address,
            events=points,
            shape=shape,
            fmt=fmt,
            inline=storage == "inline",
            stream=storage == "stream",
            save_dir=out_dir / "detector",
            scans=scans,
            delay_s=delay_s,
        )
        log.info("RunEngine finished %d run(s): %s", len(uids), ", ".join(u[:8] for u in uids))
        await asyncio.sleep(1.0)
    finally:
        await daemon.shutdown()
    print(f"results: {daemon.store_path}", file=sys.stderr)
    return 0


def cli_demo(args: argparse.Namespace) -> int:
    """``operando-monitor bluesky-demo``."""
    return asyncio.run(
        run_bluesky_demo(
            Path(args.out),
            points=args.points,
            scans=args.scans,
            fmt=args.format,
            storage="inline" if args.inline else "stream" if getattr(args, "stream", False) else "hdf5",
            shape=(args.shape[0], args.shape[1]),
            delay_s=args.delay,
            dashboard_port=None if args.no_dashboard else args.port,
            epics_prefix=args.epics_prefix,
        )
    )


def cli_simulate(args: argparse.Namespace) -> int:
    """``operando-monitor simulate --protocol bluesky --endpoint HOST:PORT`` (the proxy's in-port)."""
    endpoint = args.endpoint.removeprefix("tcp://")
    delay = 0.0 if args.rate <= 0 else 1.0 / args.rate
    uids = publish(endpoint, events=args.count or 100, shape=(args.shape[0], args.shape[1]), delay_s=delay)
    print(f"published {len(uids)} run(s): {' '.join(uids)}", file=sys.stderr)
    return 0


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m monitor.sim.bluesky_demo")
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("proxy")
    pr.add_argument("--in-port", type=int, required=True)
    pr.add_argument("--out-port", type=int, required=True)
    pu = sub.add_parser("publish")
    pu.add_argument("--address", required=True, help="proxy in-port, e.g. 127.0.0.1:5577")
    pu.add_argument("--events", type=int, default=20)
    pu.add_argument("--scans", type=int, default=1)
    pu.add_argument("--shape", type=int, nargs=2, default=[512, 512])
    pu.add_argument("--format", default="msgpack", choices=sorted(SERIALIZERS))
    pu.add_argument(
        "--hdf5", action="store_true", help="write HDF5 + resource/datum instead of inline images"
    )
    pu.add_argument("--stream", action="store_true", help="HDF5 + stream_resource/stream_datum (ophyd-async)")
    pu.add_argument("--save-dir", default="runs/bluesky-demo")
    pu.add_argument("--delay", type=float, default=0.0, help="seconds between points")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if args.cmd == "proxy":
        Proxy(f"tcp://127.0.0.1:{args.in_port}", f"tcp://127.0.0.1:{args.out_port}").start()
        return 0
    uids = publish(
        args.address,
        events=args.events,
        shape=(args.shape[0], args.shape[1]),
        fmt=args.format,
        inline=not (args.hdf5 or args.stream),
        stream=args.stream,
        save_dir=Path(args.save_dir),
        scans=args.scans,
        delay_s=args.delay,
    )
    print(" ".join(uids), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
