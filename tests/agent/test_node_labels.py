"""GPU Feature Discovery labels of the agent's Kubernetes node, read through a fake Kubernetes API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from agent.config import AgentSettings
from agent.node_labels import (
    MAX_LABELS,
    NodeLabelsError,
    in_cluster_api_url,
    merge_labels,
    node_labels_from_object,
    registration_labels,
    select_node_labels,
)
from planner.schemas.hosts import HostRegister

# What GFD and NFD put on an H100 node (docs/gpu-feature-discovery/README.md of NVIDIA/k8s-device-plugin).
GFD_NODE: dict[str, Any] = {
    "kind": "Node",
    "apiVersion": "v1",
    "metadata": {
        "name": "gpu-node-7",
        "labels": {
            "kubernetes.io/hostname": "gpu-node-7",
            "feature.node.kubernetes.io/pci-10de.present": "true",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.memory": "81559",
            "nvidia.com/gpu.family": "hopper",
            "nvidia.com/gpu.compute.major": "9",
            "nvidia.com/cuda.driver-version.full": "570.124.06",
            "nvidia.com/mig.capable": "true",
            "nvidia.com/gfd.timestamp": "1736939415",
            "nvidia.com/" + "x" * 60: "too long a key for a host label",
        },
    },
}
NODE_LABELS = {
    "nvidia.com/cuda.driver-version.full": "570.124.06",
    "nvidia.com/gpu.compute.major": "9",
    "nvidia.com/gpu.count": "8",
    "nvidia.com/gpu.family": "hopper",
    "nvidia.com/gpu.memory": "81559",
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    "nvidia.com/mig.capable": "true",
}


def test_gfd_labels_are_selected_by_prefix_without_the_timestamp_or_keys_a_host_cannot_hold() -> None:
    assert node_labels_from_object(GFD_NODE, ["nvidia.com/"]) == NODE_LABELS
    both = node_labels_from_object(GFD_NODE, ["nvidia.com/", "feature.node.kubernetes.io/"])
    assert both["feature.node.kubernetes.io/pci-10de.present"] == "true"
    assert node_labels_from_object({"metadata": {}}, ["nvidia.com/"]) == {}
    assert select_node_labels({"nvidia.com/a": 3, "nvidia.com/b": "x\x00y"}, ["nvidia.com/"]) == {}
    with pytest.raises(NodeLabelsError):
        node_labels_from_object([], ["nvidia.com/"])
    # The planner's registration body accepts what the agent selected.
    HostRegister(name="gpu-node-7", labels=NODE_LABELS)


def test_explicit_labels_win_and_the_total_stays_within_the_planner_limit() -> None:
    merged = merge_labels(NODE_LABELS, {"zone": "eu-west-1a", "nvidia.com/gpu.product": "override"})
    assert merged["nvidia.com/gpu.product"] == "override"
    assert merged["zone"] == "eu-west-1a"
    many = {f"nvidia.com/l{i}": "v" for i in range(100)}
    assert len(merge_labels(many, {"zone": "a"})) == MAX_LABELS


def test_in_cluster_api_url() -> None:
    assert in_cluster_api_url({}) is None
    assert in_cluster_api_url({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}) == (
        "https://10.0.0.1:6443"
    )
    assert in_cluster_api_url({"KUBERNETES_SERVICE_HOST": "fd00::1"}) == "https://[fd00::1]:443"


def _service_account(tmp_path: Path) -> Path:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("sa-token\n")
    return sa


def _settings(**kw: Any) -> AgentSettings:
    return AgentSettings(enrollment_token=SecretStr("enroll-me"), labels={"zone": "eu-west-1a"}, **kw)


ENV = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_registration_reads_the_node_through_the_api_with_the_service_account_token(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=GFD_NODE)

    logs: list[str] = []
    labels = registration_labels(
        _settings(node_name="gpu-node-7"),
        log=logs.append,
        env=ENV,
        service_account_dir=_service_account(tmp_path),
        transport=httpx.MockTransport(api),
    )
    assert labels == {"zone": "eu-west-1a", **NODE_LABELS}
    assert str(seen[0].url) == "https://10.0.0.1/api/v1/nodes/gpu-node-7"  # 443 is https's default
    assert seen[0].headers["Authorization"] == "Bearer sa-token"
    assert "8 label(s)" in logs[0]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(403, json={"reason": "Forbidden"}), "get` on `nodes"),
        (httpx.Response(200, content=b"<html>"), "not JSON"),
    ],
)
def test_a_node_that_cannot_be_read_costs_only_its_labels(
    tmp_path: Path, answer: httpx.Response, expected: str
) -> None:
    logs: list[str] = []
    labels = registration_labels(
        _settings(node_name="gpu-node-7"),
        log=logs.append,
        env=ENV,
        service_account_dir=_service_account(tmp_path),
        transport=httpx.MockTransport(lambda _r: answer),
    )
    assert labels == {"zone": "eu-west-1a"}
    assert expected in logs[0]


def test_no_node_name_no_cluster_or_no_token_means_agent_labels_only(tmp_path: Path) -> None:
    def fail(_r: httpx.Request) -> httpx.Response:
        raise AssertionError("the API must not be called")

    transport = httpx.MockTransport(fail)
    logs: list[str] = []
    assert registration_labels(_settings(), log=logs.append, env=ENV, transport=transport) == {"zone": "eu-west-1a"}
    assert logs == []  # not on Kubernetes: nothing to say
    outside = registration_labels(_settings(node_name="n"), log=logs.append, env={}, transport=transport)
    assert outside == {"zone": "eu-west-1a"}
    assert "KUBERNETES_SERVICE_HOST" in logs[-1]
    no_token = registration_labels(
        _settings(node_name="n"), log=logs.append, env=ENV, service_account_dir=tmp_path / "none", transport=transport
    )
    assert no_token == {"zone": "eu-west-1a"}
    assert "no service account token" in logs[-1]


def test_settings_read_the_node_name_and_prefixes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_NODE_NAME", "gpu-node-7")
    monkeypatch.setenv("AGENT_NODE_LABEL_PREFIXES", json.dumps(["nvidia.com/", "feature.node.kubernetes.io/"]))
    settings = AgentSettings()
    assert settings.node_name == "gpu-node-7"
    assert settings.node_label_prefixes == ["nvidia.com/", "feature.node.kubernetes.io/"]
