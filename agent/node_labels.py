"""GPU Feature Discovery labels of this host's Kubernetes node, sent as host labels at registration.

GFD (NVIDIA's GPU Feature Discovery) labels GPU nodes (`nvidia.com/gpu.product`, `nvidia.com/gpu.count`,
`nvidia.com/cuda.driver-version.major`, ...). A pod cannot mount its node's labels (the downward API gives a pod
its *own* labels, not its node's), so the agent's DaemonSet passes the node name (`spec.nodeName`) as
`AGENT_NODE_NAME` and the agent reads the node through the Kubernetes API with its ServiceAccount (RBAC: `get`
on `nodes`; deploy/kubernetes/agent.yaml). Labels the planner's host record cannot hold (key over 63 characters,
more than 64 labels) are left out rather than failing the registration; labels the operator sets in
`AGENT_LABELS` win over the node's.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from agent.config import AgentSettings

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
VOLATILE_LABELS = frozenset({"nvidia.com/gfd.timestamp"})
"""Labels that change on every GFD pass: not a property of the host."""
MAX_LABELS = 64
MAX_KEY_LENGTH = 63
MAX_VALUE_LENGTH = 255
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


class NodeLabelsError(Exception):
    """The node's labels could not be read (no service account, no API server, RBAC refused, ...)."""


def host_label_ok(key: str, value: str) -> bool:
    """True when the planner's host record accepts this label (docs/api.md: `labels`)."""
    return (
        len(key) <= MAX_KEY_LENGTH
        and KEY_PATTERN.match(key) is not None
        and len(value) <= MAX_VALUE_LENGTH
        and "\x00" not in value
    )


def select_node_labels(labels: Mapping[str, Any], prefixes: Sequence[str]) -> dict[str, str]:
    """The node labels under one of `prefixes` that a host record can hold, sorted by key; volatile ones left out."""
    chosen: dict[str, str] = {}
    for key in sorted(labels):
        value = labels[key]
        if key in VOLATILE_LABELS or not isinstance(value, str) or not key.startswith(tuple(prefixes)):
            continue
        if host_label_ok(key, value):
            chosen[key] = value
    return chosen


def node_labels_from_object(node: Any, prefixes: Sequence[str]) -> dict[str, str]:
    """The selected labels of a Node object as the Kubernetes API returns it (`metadata.labels`)."""
    if not isinstance(node, dict):
        raise NodeLabelsError(f"expected a Node object, got {type(node).__name__}")
    metadata = node.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise NodeLabelsError("the Node's metadata.labels is not an object")
    return select_node_labels(labels, prefixes)


def merge_labels(node: Mapping[str, str], explicit: Mapping[str, str]) -> dict[str, str]:
    """Explicit labels (AGENT_LABELS) first and winning; node labels fill the rest up to the planner's limit."""
    merged = dict(explicit)
    for key, value in node.items():
        if len(merged) >= MAX_LABELS:
            break
        merged.setdefault(key, value)
    return merged


def in_cluster_api_url(env: Mapping[str, str]) -> str | None:
    """The API server's URL from the variables Kubernetes sets in every pod; None outside a cluster."""
    host = env.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = env.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def read_node_labels(
    node_name: str,
    *,
    api_url: str,
    token: str,
    prefixes: Sequence[str],
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, str]:
    """GET /api/v1/nodes/{name} with the service account's token; the selected labels."""
    try:
        with httpx.Client(base_url=api_url, verify=verify, timeout=timeout_s, transport=transport) as client:
            resp = client.get(f"/api/v1/nodes/{node_name}", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise NodeLabelsError(f"cannot reach the Kubernetes API at {api_url}: {exc}") from exc
    if resp.status_code != 200:
        hint = ""
        if resp.status_code in (401, 403):
            hint = " (the agent's ServiceAccount needs `get` on `nodes`: see deploy/kubernetes/agent.yaml)"
        raise NodeLabelsError(f"reading node {node_name!r}: HTTP {resp.status_code}{hint}")
    try:
        node = resp.json()
    except ValueError as exc:
        raise NodeLabelsError(f"reading node {node_name!r}: the answer is not JSON") from exc
    return node_labels_from_object(node, prefixes)


def registration_labels(
    settings: AgentSettings,
    *,
    log: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, str]:
    """The host's labels for registration: AGENT_LABELS, plus its node's GFD labels when AGENT_NODE_NAME is set.

    A node that cannot be read costs only its labels: the host still registers, and the reason is logged.
    """
    explicit = dict(settings.labels)
    if not settings.node_name:
        return explicit
    env = os.environ if env is None else env
    api_url = in_cluster_api_url(env)
    token_file = service_account_dir / "token"
    try:
        if api_url is None:
            raise NodeLabelsError("KUBERNETES_SERVICE_HOST is not set (not running in a Kubernetes pod)")
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise NodeLabelsError(f"no service account token at {token_file} ({exc.strerror})") from exc
        ca_file = service_account_dir / "ca.crt"
        try:
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=str(ca_file)) if ca_file.exists() else True
            )
        except (OSError, ssl.SSLError) as exc:
            raise NodeLabelsError(f"the service account's CA {ca_file} is unusable: {exc}") from exc
        node = read_node_labels(
            settings.node_name,
            api_url=api_url,
            token=token,
            prefixes=settings.node_label_prefixes,
            verify=verify,
            timeout_s=settings.request_timeout_s,
            transport=transport,
        )
    except NodeLabelsError as exc:
        log(f"node labels of {settings.node_name!r} not read: {exc}; registering with AGENT_LABELS only")
        return explicit
    merged = merge_labels(node, explicit)
    log(f"node {settings.node_name}: {len(node)} label(s) under {', '.join(settings.node_label_prefixes)}")
    return merged
