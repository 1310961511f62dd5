"""Replica choice (issue 18) without Ray: least-loaded with a per-replica in-flight limit,
sticky (stream, series) pinning, and loss reporting once per replica death or restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cluster.routing import ReplicaTable
from monitor.config import ConfigError, config_from_dict


def test_least_loaded_respects_the_in_flight_limit() -> None:
    t = ReplicaTable(2, in_flight_limit=2)
    picks = []
    for _ in range(4):
        r = t.least_loaded()
        assert r is not None
        t.in_flight[r] += 1
        picks.append(r)
    assert picks == [0, 1, 0, 1]
    assert t.least_loaded() is None  # all full: the worker waits
    t.in_flight[1] -= 1
    assert t.least_loaded() == 1


def test_a_series_stays_on_one_replica_and_new_series_balance() -> None:
    t = ReplicaTable(3, in_flight_limit=4)
    first = {s: t.replica_for(("frames", s)) for s in ("a", "b", "c")}
    assert sorted(first.values()) == [0, 1, 2]
    for _ in range(5):
        for s, r in first.items():
            assert t.replica_for(("frames", s)) == r
    assert t.series_on(first["b"]) == [("frames", "b")]
    assert t.replica_for(("other", "a")) in (0, 1, 2)  # the stream is part of the key


def test_loss_reported_once_per_death_and_on_silent_restart() -> None:
    t = ReplicaTable(1, in_flight_limit=1)
    assert not t.answered(0, "inc1")
    assert t.replica_died(0)  # first failed call: report
    assert not t.replica_died(0)  # its other in-flight calls: already reported
    assert not t.answered(0, "inc1")  # a late reply from the dead incarnation
    assert not t.answered(0, "inc2")  # the restarted actor: loss already reported
    assert t.answered(0, "inc3")  # restarted between calls, nothing failed: report now
    assert t.replica_died(0)


def _cfg(**cluster: object) -> dict[str, object]:
    return {
        "sources": [{"name": "det", "kind": "replay", "path": "x.h5"}],
        "pipelines": [{"name": "stats", "kind": "frame_stats", "replicas": 2, "num_gpus": 0.5}],
        "cluster": cluster,
    }


def test_cluster_settings_default_to_in_process_and_are_checked() -> None:
    cfg = config_from_dict(_cfg())
    assert cfg.cluster.engine == "none" and cfg.pipelines[0].replicas == 2
    assert config_from_dict(_cfg(engine="ray", address="10.0.0.1:6379")).cluster.engine == "ray"
    with pytest.raises(ConfigError, match="cluster.engine"):
        config_from_dict(_cfg(engine="dask"))
    with pytest.raises(ConfigError, match="cluster.in_flight"):
        config_from_dict(_cfg(in_flight=0))
    bad = _cfg()
    bad["pipelines"][0]["replicas"] = 0  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"pipelines\[0\].replicas"):
        config_from_dict(bad)


def test_16m_need_scales_with_pixels_and_uses_a_measured_gpu_rate(tmp_path: Path) -> None:
    import json

    from monitor.bench.scale import GPU_TARGET_MPX_S, gpu_rate, need_16m

    n = need_16m(per_replica_fps=10.0, side=512, gpu_mpx_per_s=200.0)
    assert n["mpx_per_s"] == round(4148 * 4362 * 133 / 1e6, 1)
    assert n["cpu_replicas"] == -(-int(4148 * 4362 * 133) // int(10 * 512 * 512))
    assert n["gpus"] == 13  # 2406.4 Mpx/s / 200
    assert n["network_gbit_s_raw"] == round(4148 * 4362 * 2 * 133 * 8 / 1e9, 1)
    assert gpu_rate(None) == (GPU_TARGET_MPX_S, gpu_rate(None)[1])
    (tmp_path / "gpu.json").write_text(json.dumps({"xct_volume": {"mpx_per_s": 250.0}}))
    rate, src = gpu_rate(tmp_path / "gpu.json")
    assert rate == 250.0 and src.startswith("measured")


def test_default_engine_never_imports_ray() -> None:
    """The single-machine mode stays as it was: building a daemon does not load Ray."""
    import subprocess
    import sys

    script = (
        "import sys, tempfile\n"
        "from monitor.config import config_from_dict\n"
        "from monitor.daemon import Daemon\n"
        "d = tempfile.mkdtemp()\n"
        "cfg = config_from_dict({'sources': [{'name': 'det', 'kind': 'array10', "
        "'endpoint': 'tcp://127.0.0.1:0', 'mode': 'bind'}], "
        "'pipelines': [{'name': 's', 'kind': 'frame_stats', 'replicas': 3}], "
        "'store': {'directory': d}, 'dashboard': {'enabled': False}})\n"
        "Daemon(cfg)\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] == 'ray' or m.startswith('monitor.cluster.')))\n"
    )
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
