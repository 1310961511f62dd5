"""TOML configuration → typed, validated settings.

Every section is a frozen dataclass. Loading rejects unknown keys and values of the wrong
type or out of range with a :class:`~monitor.errors.ConfigError` naming the key path, e.g.
``pipelines[0].queue_size: expected int, got 'eight'``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from monitor.config_checks import check_endpoint, check_filename, validate  # noqa: F401 - re-exported
from monitor.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DaemonSettings:
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_s: float = 10.0
    """Upper bound for the whole ordered shutdown (ingest stop, drain, flush, close)."""
    telemetry_interval_s: float = 1.0


@dataclass(frozen=True)
class SourceSettings:
    name: str
    kind: Literal["array10", "replay", "stream2", "bluesky"]
    # array10
    endpoint: str = ""
    socket: Literal["pull", "sub"] = "pull"
    mode: Literal["connect", "bind"] = "connect"
    topic: str = ""
    rcvhwm: int = 64
    max_frame_bytes: int = 256 * 1024 * 1024
    stream: str = "frames"
    """Stream name used when a message does not name its own."""
    timestamp_epoch: Literal["auto", "epics", "unix"] = "auto"
    """array10 ``timeStamp`` epoch: areaDetector sends EPICS seconds (since 1990-01-01); ``auto``
    reads a stamp as EPICS time when only that reading is within 30 days of reception."""
    # replay
    path: str = ""
    dataset: str = ""
    rate_hz: float = 0.0
    """Replay rate; 0 replays as fast as the pipeline takes frames."""
    loop: bool = False
    energies: str = ""
    """Per-frame energies (eV): a text file, one value per frame (whitespace/newline separated).
    Empty: the HDF5 dataset's ``energy_eV`` attribute when it has one (one value per frame)."""
    # bluesky (always a SUB socket connected to the proxy's out-port, e.g. tcp://host:5578)
    format: Literal["auto", "msgpack", "json", "pickle"] = "auto"
    """Document serialisation; ``auto`` tells pickle, msgpack and JSON apart by their first bytes."""
    trust_pickle: bool = False
    """Accept pickled documents (bluesky's default serializer). Only on a trusted network: they
    are still loaded by a restricted unpickler (builtins containers and numpy arrays only)."""
    prefix: str = ""
    """The Publisher's ``prefix``; messages with another prefix are filtered out. Empty: all."""
    data_key: str = ""
    """Data key that holds the image; empty: the first 2-D array key of each descriptor."""
    current_field: str = ""
    """Data key copied into ``FrameMeta.current_mA`` (e.g. ``potentiostat_current``); empty: none."""
    hdf5_timeout_s: float = 5.0
    """How long to retry reading an external (AD_HDF5 / stream_datum) frame while the file grows."""
    root_map: dict[str, str] = field(default_factory=dict)
    """Path prefixes to rewrite in resource paths (writer's root → this host's mount point)."""
    # stream2 (DECTRIS SIMPLON Stream V2: PULL connected to the detector's PUSH, port 31001)
    channel: str = ""
    """Image channel to route (e.g. ``threshold_1``); empty: the first channel of each series.
    Frames get ``stream`` as stream name, or the channel name when ``stream`` is empty."""


PipelineKind = Literal["frame_stats", "early_warning", "segmentation", "alignment"]


@dataclass(frozen=True)
class PipelineSettings:
    name: str
    kind: PipelineKind
    streams: tuple[str, ...] = ("frames",)
    queue_size: int = 8
    policy: Literal["drop_oldest", "block"] = "drop_oldest"
    """Overload policy: ``drop_oldest`` skips the oldest queued frame (counted, stored as
    skipped with reason ``overload``); ``block`` applies back-pressure to the sources."""
    max_batch: int = 1
    max_wait_ms: float = 0.0
    """How long a worker waits for more queued frames to fill ``max_batch`` (0: take what is there)."""
    max_latency_ms: float = 0.0
    """Frames received longer ago than this when the worker dequeues them are skipped with reason
    ``stale`` (counted, stored) so results stay fresh under load; 0: process every frame."""
    # model pipelines
    model: str = ""
    """Model name in the registry (``engines/weights/<model>.json``); empty: the pipeline's default."""
    weights_dir: str = ""
    """Directory holding manifests and ONNX files; empty: the shipped ``engines/weights``."""
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt", "triton"] = "onnxruntime"
    threads: int = 1
    """Intra-op threads for the inference backend (CPU)."""
    backend_precision: Literal["auto", "fp32", "int8", "bf16"] = "auto"
    """``auto``: an accepted int8 model (``operando-monitor quantize``) where the CPU has VNNI/AMX,
    else fp32; ``int8``/``bf16``/``fp32`` force one (see ``engines.runtime.PRECISIONS``)."""
    options: dict[str, bool | int | float | str] = field(default_factory=dict)
    """Kind-specific settings, parsed by the pipeline with :func:`parse_options`."""
    saturation_value: float = 0.0
    """Pixel value counted as saturated (0: the dtype's maximum)."""
    dead_value: float = 0.0
    """Pixel value at or below which a pixel counts as dead."""
    # cluster mode ([cluster] engine = "ray"; ignored by the default in-process engine)
    replicas: int = 1
    """Ray actors running this pipeline."""
    num_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    num_gpus: float = 0.0
    """GPUs Ray reserves for each replica (fractions share one GPU)."""


@dataclass(frozen=True)
class StoreSettings:
    directory: str = "runs"
    filename: str = "{run}-{time}.h5"
    flush_interval_s: float = 0.5
    compression: Literal["bslz4", "gzip", "none"] = "bslz4"
    chunk_rows: int = 256
    max_pending_mb: float = 256.0
    """Result arrays (masks, ROIs) held between flushes above this flush early (bounds memory)."""
    allow_outside_store: bool = False
    """Allow ``run``/``filename`` to place the run file outside ``directory`` (``..``, absolute)."""


@dataclass(frozen=True)
class RuleSettings:
    name: str
    kind: Literal["threshold", "silence"]
    # threshold
    pipeline: str = ""
    metric: str = ""
    direction: Literal["above", "below"] = "above"
    minor: float | None = None
    major: float | None = None
    hysteresis: float = 0.0
    min_count: int = 1
    """Consecutive results beyond a level before the alarm raises (the minimum duration)."""
    latch: bool = False
    reset_on_series: bool = False
    """Clear the alarm when a new series (run) starts on the stream, so one run's alarm does not
    carry into the next (e.g. early warning: each growth run is its own series)."""
    # silence
    source: str = ""
    timeout_s: float = 5.0


@dataclass(frozen=True)
class EpicsSettings:
    """Alarm PVs served over Channel Access by caproto (``<prefix>STATE``, ``SCORE``, ``TRIP``, ...)."""

    enabled: bool = False
    prefix: str = "OPERANDO:"
    heartbeat_s: float = 1.0
    """``<prefix>HEARTBEAT`` increments this often."""
    trip_severity: Literal["MINOR", "MAJOR"] = "MAJOR"
    """``<prefix>TRIP`` is 1 while an alarm of at least this severity (up to MAJOR) is active."""
    trip_on_invalid: bool = False
    """Also trip while an INVALID alarm (a silent source) is active."""
    interfaces: tuple[str, ...] = ()
    """Addresses the server listens on; empty: EPICS_CAS_INTF_ADDR_LIST, else 127.0.0.1 only
    (``["0.0.0.0"]`` serves every interface)."""


@dataclass(frozen=True)
class QueueServerSettings:
    """bluesky-queueserver adapter (``monitor.alerts.queueserver``): act on chosen alarms."""

    enabled: bool = False
    zmq_control_addr: str = "tcp://127.0.0.1:60615"
    """The RE Manager's control socket (``start-re-manager --zmq-control-addr``)."""
    zmq_public_key: str = ""
    """The manager's public key when its control socket is encrypted."""
    action: Literal["pause_deferred", "pause_immediate", "queue_plan"] = "pause_deferred"
    rules: tuple[str, ...] = ()
    """Rule names that trigger the action; empty: any rule."""
    min_severity: Literal["MINOR", "MAJOR", "INVALID"] = "MAJOR"
    plan_name: str = ""
    """``queue_plan``: the plan to add (must exist in the manager's environment)."""
    plan_kwargs: dict[str, bool | int | float | str | tuple[str, ...]] = field(default_factory=dict)
    """Plan keyword arguments; a list of names (e.g. ``detectors = ["det1"]``) is passed as a list."""
    queue_position: Literal["front", "back"] = "front"
    user: str = "operando-monitor"
    user_group: str = "primary"
    timeout_s: float = 2.0


@dataclass(frozen=True)
class AlertSettings:
    journal: str = "alarms.jsonl"
    """JSON Lines journal path, relative to the store directory unless absolute."""
    zmq_pub: str = ""
    """Endpoint the alarm PUB socket binds (e.g. ``tcp://127.0.0.1:5570``); empty: off."""
    rules: tuple[RuleSettings, ...] = ()
    epics: EpicsSettings = field(default_factory=EpicsSettings)
    queueserver: QueueServerSettings = field(default_factory=QueueServerSettings)


@dataclass(frozen=True)
class DashboardSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5006
    update_ms: int = 250
    operator_token: str = ""
    """Token required to acknowledge alarms. Empty: read OPERANDO_OPERATOR_TOKEN."""
    allow_websocket_origin: tuple[str, ...] = ()
    history: int = 600


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus ``/metrics`` (``monitor.metrics``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    """Bind address; loopback by default (put a reverse proxy or node exporter in front to share)."""
    port: int = 9464


@dataclass(frozen=True)
class TiledSettings:
    """Tiled sink (``monitor.tiled_sink``): results and run metadata written live to a Tiled server."""

    enabled: bool = False
    uri: str = "http://127.0.0.1:8000"
    api_key: str = ""
    """Empty: read TILED_API_KEY."""
    container: str = ""
    """Parent container path on the server (must exist); empty: the root."""
    flush_interval_s: float = 1.0
    max_pending_rows: int = 100_000
    """Rows kept while the server is unreachable; older ones are dropped (counted) beyond this."""
    timeout_s: float = 5.0


@dataclass(frozen=True)
class ClusterSettings:
    """Where pipelines run: ``none`` in this process (the default), ``ray`` as Ray actors."""

    engine: Literal["none", "ray"] = "none"
    address: str = "local"
    """``local`` starts a Ray instance on this machine; otherwise a cluster address (``host:port``)."""
    in_flight: int = 4
    """Batches in flight per replica (stateless pipelines; a keyed series is always in order)."""
    max_restarts: int = 5
    """Times Ray restarts a dead replica (its in-flight frames are stored ``failed/worker_lost``)."""
    object_store_mb: int = 200
    """Object store of a ``local`` instance."""
    num_cpus: int = 0
    """CPUs of a ``local`` instance (0: all)."""


@dataclass(frozen=True)
class MonitorConfig:
    run: str = "run"
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    sources: tuple[SourceSettings, ...] = ()
    pipelines: tuple[PipelineSettings, ...] = ()
    store: StoreSettings = field(default_factory=StoreSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tiled: TiledSettings = field(default_factory=TiledSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

    def operator_token(self) -> str:
        return self.dashboard.operator_token or os.environ.get("OPERANDO_OPERATOR_TOKEN", "")


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: object, tp: object, key: str) -> object:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(key, f"expected one of {allowed}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(key, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {value!r}")
        item_tp = args[0]
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return _build(tp, value, key)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {tp!r}")  # pragma: no cover - programming error


def _build(cls: type[T], data: dict[str, object], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, object] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(path, f"unknown key (known keys: {known})")
        kwargs[key] = _convert(value, hints[key], path)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{prefix}.{name}" if prefix else name, "required key is missing")
    return cls(**kwargs)


def parse_options(cls: type[T], options: dict[str, bool | int | float | str], key: str) -> T:
    """Build a pipeline's typed options dataclass from ``[pipelines.options]``; bad keys name ``key``."""
    return _build(cls, dict(options), key)


_SECRET = re.compile(
    r"""(?P<key>\b[A-Za-z0-9_-]*(?:token|password|passwd|secret|api_key)[A-Za-z0-9_-]*["']?\s*=\s*)"""
    r"""(?P<value>"{3}.*?"{3}|'{3}.*?'{3}|"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s,}#]+)""",
    re.IGNORECASE | re.DOTALL,
)
REDACTED = '"<redacted>"'


def redact_secrets(toml_text: str) -> str:
    """The config text with the value of every ``*token*``/``*password*``/``*secret*`` key
    replaced, for the run file and logs (``operator_token`` must not be readable there)."""
    return _SECRET.sub(lambda m: m["key"] + REDACTED, toml_text)


SOURCE_KIND_KEYS: dict[str, frozenset[str]] = {
    "endpoint": frozenset({"array10", "stream2", "bluesky"}),
    "mode": frozenset({"array10", "stream2", "bluesky"}),
    "rcvhwm": frozenset({"array10", "stream2", "bluesky"}),
    "max_frame_bytes": frozenset({"array10", "stream2", "bluesky"}),
    "socket": frozenset({"array10", "stream2"}),
    "topic": frozenset({"array10", "stream2"}),
    "channel": frozenset({"stream2"}),
    "path": frozenset({"replay"}),
    "dataset": frozenset({"replay"}),
    "rate_hz": frozenset({"replay"}),
    "loop": frozenset({"replay"}),
    "format": frozenset({"bluesky"}),
    "trust_pickle": frozenset({"bluesky"}),
    "prefix": frozenset({"bluesky"}),
    "data_key": frozenset({"bluesky"}),
    "current_field": frozenset({"bluesky"}),
    "hdf5_timeout_s": frozenset({"bluesky"}),
    "root_map": frozenset({"bluesky"}),
}
"""``[[sources]]`` keys that apply only to some kinds; setting one for another kind is an error.
Keys not listed here (``name``, ``kind``, ``stream``, new keys) apply to every kind."""


def check_source_keys(data: dict[str, object]) -> None:
    """A key that does not apply to the source's kind is an error naming it (e.g. ``channel`` on
    an array10 source would be silently ignored otherwise)."""
    sources = data.get("sources")
    if not isinstance(sources, list):
        return
    for i, src in enumerate(sources):
        if not isinstance(src, dict) or not isinstance(src.get("kind"), str):
            continue
        kind = src["kind"]
        for key in src:
            kinds = SOURCE_KIND_KEYS.get(key)
            if kinds is not None and kind not in kinds:
                raise ConfigError(
                    f"sources[{i}].{key}",
                    f"does not apply to kind {kind!r} (only to {', '.join(sorted(kinds))})",
                )


def config_from_dict(data: dict[str, object]) -> MonitorConfig:
    check_source_keys(data)
    return validate(_build(MonitorConfig, data))


def load_config(path: str | Path) -> MonitorConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{p} is not valid TOML: {exc}") from exc
    return config_from_dict(data)
