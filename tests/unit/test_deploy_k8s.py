"""deploy/k8s (issue 18): the KubeRay RayCluster and the Triton deployment carry the fields
their controllers require, and agree with the project (Ray version, ports, model repository)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_raycluster_has_head_and_cpu_and_gpu_worker_groups() -> None:
    (rc,) = _docs("raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"]
    spec = rc["spec"]
    ray = pytest.importorskip("ray")
    assert spec["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2], "image Ray == client Ray"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    ports = {p["containerPort"] for c in _containers(head["template"]) for p in c.get("ports", [])}
    assert {6379, 10001} <= ports  # GCS and the Ray client the daemon joins through
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for g in groups.values():
        assert isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        _containers(g["template"])
    gpu = groups["gpu"]
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    (c,) = _containers(gpu["template"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (c,) = _containers(groups["cpu"]["template"])
    assert "nvidia.com/gpu" not in c["resources"]["limits"]


def test_triton_deployment_serves_the_model_repository() -> None:
    docs = {d["kind"]: d for d in _docs("triton.yaml")}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(docs)
    dep = docs["Deployment"]
    assert dep["apiVersion"] == "apps/v1"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = _containers(dep["spec"]["template"])
    assert "tritonserver" in c["image"]
    assert "--model-repository=/models" in c["args"]
    assert any(m["mountPath"] == "/models" for m in c["volumeMounts"])
    claim = dep["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == 8001  # what engines.runtime's Triton runner connects to
    svc_ports = {p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    assert svc_ports <= set(ports)
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
