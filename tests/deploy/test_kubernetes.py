"""deploy/kubernetes: every manifest parses and is true to the code.

Commands and options are real, environment variables are Settings fields and each container's environment
loads, container ports match the serve and metrics settings, probes hit routes the app has, references between
objects resolve (ConfigMaps, Secret keys, claims, service accounts, services), and the GPU parts are wired the
way NVIDIA's device plugin and GPU Feature Discovery expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from planner.catalog.loader import gpu_families, match_family, models, recipes
from tests.deploy.conftest import Routes
from tests.deploy.project import (
    KUBERNETES_DIR,
    PodTemplate,
    agent_settings,
    check_invocation,
    env_names_in,
    invocations_in_argv,
    kubernetes_files,
    kubernetes_objects,
    load_settings,
    planner_settings,
    pod_templates,
    scheduler_settings,
    unknown_env_names,
    urls_in,
    yaml_documents,
)

SECRET_VALUES = {
    "admin-token": "k8s-admin-token-0123456789abcdef",
    "enrollment-token": "k8s-enrollment-token-0123456789abcdef",
    "database-url": "postgresql+psycopg://planner:pw@postgres.example.internal:5432/planner",
    "submitter-token": "k8s-submitter-token-0123456789abcdef",
    "redis-password": "0123456789abcdef0123456789abcdef",
    "redis-url": "redis://:0123456789abcdef0123456789abcdef@redis:6379/0",
}
PLANNER_IMAGE, AGENT_IMAGE = "gpu-fleet-planner", "gpu-fleet-agent"


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in kubernetes_objects() if o["kind"] == kind}


def template(name: str) -> PodTemplate:
    return next(t for t in pod_templates() if t.name == name)


def container(pod: PodTemplate, name: str) -> dict[str, Any]:
    return next(c for c in pod.containers() if c["name"] == name)


def argv(c: dict[str, Any]) -> list[str]:
    return [str(a) for a in (*c.get("command", []), *c.get("args", []))]


def environment(c: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (Secrets from SECRET_VALUES, fieldRefs a node name)."""
    config_maps = objects("ConfigMap")
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update({k: str(v) for k, v in config_maps[source["configMapRef"]["name"]]["data"].items()})
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = SECRET_VALUES[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[item["name"]] = "gpu-node-7"
    return env


def image_name(c: dict[str, Any]) -> str:
    return str(c["image"]).split(":", 1)[0]


def test_every_manifest_parses_and_the_kustomization_lists_files_that_exist() -> None:
    for path in kubernetes_files():
        for doc in yaml_documents(path):
            assert {"apiVersion", "kind"} <= set(doc), path
    kustomization = yaml_documents(KUBERNETES_DIR / "kustomization.yaml")[0]
    for resource in kustomization["resources"]:
        assert (KUBERNETES_DIR / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"]  # placeholders must never overwrite the real one
    assert {i["name"] for i in kustomization["images"]} == {PLANNER_IMAGE, AGENT_IMAGE}


def test_every_command_and_option_is_real_and_runs_on_the_right_image() -> None:
    seen = 0
    for pod in pod_templates():
        for c in pod.containers():
            for inv in invocations_in_argv(argv(c), f"{pod.path.name} {pod.name}/{c['name']}"):
                seen += 1
                assert check_invocation(inv) == []
                needs_torch = inv.program == "agent" or inv.args[:1] == ("worker",)
                assert image_name(c) == (AGENT_IMAGE if needs_torch else PLANNER_IMAGE), inv
    assert seen >= 5


def test_every_variable_is_a_settings_field_and_every_container_environment_loads() -> None:
    for path in kubernetes_files():
        assert unknown_env_names(env_names_in(path.read_text())) == [], path
    for pod in pod_templates():
        for c in pod.containers():
            load_settings(environment(c))


def test_references_between_objects_resolve() -> None:
    secret = yaml_documents(KUBERNETES_DIR / "secret.example.yaml")[0]
    config_maps, claims = objects("ConfigMap"), objects("PersistentVolumeClaim")
    accounts = objects("ServiceAccount")
    assert set(secret["stringData"]) == set(SECRET_VALUES)
    for pod in pod_templates():
        for c in pod.containers():
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in secret["stringData"]
            mounts = {m["name"] for m in c.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in pod.spec.get("volumes", [])}, (pod.name, c["name"])
        for volume in pod.spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        if "serviceAccountName" in pod.spec:
            assert pod.spec["serviceAccountName"] in accounts
    for path, obj in kubernetes_objects():
        if obj["kind"] in ("Deployment", "DaemonSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), (path, obj["metadata"]["name"])
    pods = [t.labels for t in pod_templates()]
    for name, service in objects("Service").items():
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pods), name


def test_the_planner_migrates_first_listens_on_its_port_and_probes_real_routes(routes: Routes) -> None:
    pod = template("planner")
    migrate = pod.spec["initContainers"][0]
    assert [inv.args[:2] for inv in invocations_in_argv(argv(migrate), "migrate")] == [("db", "upgrade")]
    api = container(pod, "planner")
    assert [inv.args for inv in invocations_in_argv(argv(api), "planner")] == [("serve",)]
    settings = planner_settings(environment(api))
    assert settings.environment == "production"
    assert settings.api_host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": settings.api_port}
    for probe in ("readinessProbe", "livenessProbe"):
        get = api[probe]["httpGet"]
        assert get["port"] in ports, probe
        assert routes.matches(get["path"]), probe
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = pod_annotations("planner")
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert routes.matches(annotations["prometheus.io/path"])
    service = objects("Service")["planner"]["spec"]["ports"][0]
    assert service["targetPort"] == "http"
    # Agents and the scheduler reach the API and Redis by their Services.
    agent_url = environment(container(template("gpu-fleet-agent"), "agent"))["AGENT_PLANNER_URL"]
    assert urls_in(agent_url) == [("planner", service["port"], "/")]
    broker = scheduler_settings(environment(api)).broker_url
    redis = objects("Service")["redis"]["spec"]["ports"][0]["port"]
    assert urls_in(broker.replace(f"redis://:{SECRET_VALUES['redis-password']}@", "http://")) == [
        ("redis", redis, "/0")
    ]


def pod_annotations(name: str) -> dict[str, str]:
    for _, obj in kubernetes_objects():
        if obj["metadata"]["name"] == name and obj["kind"] in ("Deployment", "DaemonSet"):
            annotations: dict[str, str] = obj["spec"]["template"]["metadata"].get("annotations", {})
            return annotations
    raise AssertionError(name)


def test_the_agent_daemonset_runs_on_gpu_nodes_with_nvml_and_reads_its_node() -> None:
    pod = template("gpu-fleet-agent")
    assert pod.kind == "DaemonSet"
    terms = pod.spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]} in terms[0]["matchExpressions"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod.spec["tolerations"]
    agent = container(pod, "agent")
    env = environment(agent)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"]
    assert "nvidia.com/gpu" not in str(agent.get("resources"))  # monitoring takes no GPU from the workers
    assert pod.spec["runtimeClassName"] == "nvidia"
    fields = {
        i["name"]: i["valueFrom"]["fieldRef"]["fieldPath"] for i in agent["env"] if "fieldRef" in i.get("valueFrom", {})
    }
    assert fields == {"AGENT_NODE_NAME": "spec.nodeName", "AGENT_HOST_NAME": "spec.nodeName"}
    settings = agent_settings(env)
    assert settings.node_label_prefixes == ["nvidia.com/"]
    # Its metrics (a refused run is counted there): the port the settings serve, declared, annotated, let in.
    assert settings.metrics_port is not None
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {"metrics": settings.metrics_port}
    assert int(pod_annotations(pod.name)["prometheus.io/port"]) == settings.metrics_port
    let_in = objects("NetworkPolicy")["agent-metrics"]["spec"]
    assert let_in["podSelector"]["matchLabels"] == pod.labels
    assert let_in["ingress"][0]["ports"] == [{"protocol": "TCP", "port": settings.metrics_port}]
    # The token file lives on the node: a replaced pod keeps the host's identity.
    state = next(m for m in agent["volumeMounts"] if m["name"] == "state")
    assert Path(state["mountPath"]) == settings.state_dir
    volume = next(v for v in pod.spec["volumes"] if v["name"] == "state")
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    # RBAC: its ServiceAccount may get nodes, and nothing else.
    role = objects("ClusterRole")["gpu-fleet-agent-node-reader"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = objects("ClusterRoleBinding")["gpu-fleet-agent-node-reader"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": pod.spec["serviceAccountName"], "namespace": "gpu-fleet"}
    ]


def _gfd_family(pod: PodTemplate) -> str:
    """The catalog family of the GPU product a pod selects (GFD: the NVML name with spaces as dashes)."""
    product = pod.spec["nodeSelector"]["nvidia.com/gpu.product"]
    family = match_family(product.replace("-", " "))
    assert family is not None, f"{product} matches no catalog family"
    return family.id


def test_probe_jobs_request_one_gpu_on_a_product_and_probe_catalog_cells() -> None:
    jobs = [t for t in pod_templates() if t.kind == "Job"]
    assert jobs
    for pod in jobs:
        _gfd_family(pod)
        probe = pod.containers()[0]
        assert probe["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert "NVIDIA_VISIBLE_DEVICES" not in environment(probe)  # the device plugin chooses the GPU
        args = argv(probe)
        assert args[:2] == ["agent", "probe"]
        assert "--report" in args
        assert args[args.index("--model") + 1] in models()
        chosen = [args[i + 1] for i, a in enumerate(args) if a in ("--recipe", "-r")]
        assert chosen
        assert set(chosen) <= set(recipes())
        # It reports with the node's host token: the agent's state folder is mounted where the agent keeps it.
        state = next(m for m in probe["volumeMounts"] if m["name"] == "state")
        assert Path(state["mountPath"]) == agent_settings(environment(probe)).state_dir


def test_worker_deployments_serve_one_pool_on_its_gpu_product_and_export_metrics() -> None:
    workers = [t for t in pod_templates() if any(a[:2] == ["scheduler", "worker"] for a in map(argv, t.containers()))]
    assert workers
    for pod in workers:
        worker = pod.containers()[0]
        args = argv(worker)
        pool = args[args.index("--pool") + 1]
        _workload, group, family = pool.split(".")
        assert group.isdigit()
        assert family in gpu_families()
        assert _gfd_family(pod) == family, f"{pool} must run on {family} nodes"
        assert pod.labels["gpu-fleet/pool"] == pool
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        settings = scheduler_settings(environment(worker))
        ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert ports == {"metrics": settings.metrics_port}
        for probe in ("startupProbe", "livenessProbe"):
            assert worker[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
        assert int(pod_annotations(pod.name)["prometheus.io/port"]) == ports["metrics"]
        results = next(m for m in worker["volumeMounts"] if m["name"] == "results")
        assert Path(results["mountPath"]) == settings.results_dir
    api = scheduler_settings(environment(container(template("planner"), "planner")))
    api_results = next(m for m in container(template("planner"), "planner")["volumeMounts"] if m["name"] == "results")
    assert Path(api_results["mountPath"]) == api.results_dir
    assert objects("PersistentVolumeClaim")["planner-results"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_redis_requires_a_password_and_only_the_planner_and_workers_reach_it() -> None:
    redis = container(template("redis"), "redis")
    assert "--requirepass" in " ".join(argv(redis))
    assert '"$REDIS_PASSWORD"' in " ".join(argv(redis))
    assert environment(redis)["REDIS_PASSWORD"] == SECRET_VALUES["redis-password"]
    for name in ("planner", "worker-sdxl-prod-0-h100-sxm-80gb"):
        pod = template(name)
        env = environment(next(x for x in pod.containers() if "SCHEDULER_BROKER_URL" in environment(x)))
        assert env["SCHEDULER_BROKER_URL"] == SECRET_VALUES["redis-url"], name
    policies = objects("NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    allowed = policies["redis-from-planner-and-workers"]["spec"]["ingress"][0]["from"]
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in allowed} == {
        "planner",
        "gpu-fleet-worker",
    }


def test_every_container_has_requests_and_limits_and_only_the_state_folder_step_runs_as_root() -> None:
    for pod in pod_templates():
        for c in pod.containers():
            res = c.get("resources", {})
            assert res.get("requests", {}).get("memory"), (pod.name, c["name"])
            assert res.get("limits", {}).get("memory"), (pod.name, c["name"])
            ctx = {**pod.spec.get("securityContext", {}), **c.get("securityContext", {})}
            if c["name"] == "state-owner":  # chowns the hostPath folder kubelet creates root-owned, nothing else
                assert ctx["capabilities"]["add"] == ["CHOWN", "FOWNER"]
                continue
            assert ctx.get("runAsNonRoot") is True, (pod.name, c["name"])
            assert ctx.get("runAsUser", 0) != 0, (pod.name, c["name"])
