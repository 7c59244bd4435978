"""docs/deploy.md stays true to the code: its commands, settings, files, routes and request bodies are real.

Also checks that the checkers themselves catch what they are for (a made-up option is not waved through).
"""

from __future__ import annotations

import json
import re

import pytest
from pydantic import BaseModel

from planner.catalog.loader import models, recipes
from planner.schemas.catalog import FamilyIn
from planner.schemas.fleets import FleetIn, WorkloadIn
from planner.schemas.hosts import ProbeRequestIn
from planner.schemas.jobs import JobIn
from planner.schemas.plans import SolveIn
from tests.deploy.conftest import Routes
from tests.deploy.project import (
    DEPLOY_DOC,
    REPO,
    Invocation,
    check_invocation,
    env_names_in,
    invocations_in_shell,
    unknown_env_names,
)

FENCE = re.compile(r"^[ \t]*```[a-z]*\n(?P<body>.*?)^[ \t]*```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
ROUTE = re.compile(r"(?<!/api)(/v1/[A-Za-z0-9_.{}$/-]*)")  # the planner's, not /api/v1 (Kubernetes)
BODY = re.compile(r"(?P<url>\S*/v1/\S*)\s*\\?\s*-d\s*'(?P<json>[^']*)'", re.S)
# deploy/<folder>/... (not `kubectl logs deploy/planner`, a Deployment)
DEPLOY_PATH = re.compile(r"\bdeploy/(?:compose|kubernetes|systemd|grafana)(?:/[A-Za-z0-9_.@-]*[A-Za-z0-9_])*")
# What the agent's daemon reads from a probe request's spec (docs/agent.md, agent/daemon.py run_probe).
PROBE_SPEC_KEYS = {
    "model", "recipes", "batches", "stages", "height", "width", "budget_s", "quality", "synthetic_drift", "tiny",
    "gpu_index",
}  # fmt: skip


def doc() -> str:
    return DEPLOY_DOC.read_text(encoding="utf-8")


def shell_texts() -> list[str]:
    """Code blocks and inline code spans: where the doc tells the reader what to type."""
    text = doc()
    blocks = [m.group("body") for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return blocks + INLINE.findall(prose)


def test_checkers_catch_made_up_commands_and_options() -> None:
    assert check_invocation(Invocation("planner", ("serve", "--port", "8000"), "ok")) == []
    assert check_invocation(Invocation("scheduler", ("worker", "--pool", "p", "--tiny"), "ok")) == []
    assert check_invocation(Invocation("planner", ("db", "upgrad"), "x"))
    assert check_invocation(Invocation("planner", ("serve", "--prot", "1"), "x"))
    assert check_invocation(Invocation("agent", ("run", "--pool", "p"), "x"))
    found = invocations_in_shell(
        "docker compose exec planner planner db upgrade && FOO=1 exec /opt/x/bin/agent run # planner nope", "t"
    )
    assert [(i.program, i.args) for i in found] == [("planner", ("db", "upgrade")), ("agent", ("run",))]
    assert invocations_in_shell("docker compose logs -f planner; kubectl logs deploy/planner", "t") == []
    assert unknown_env_names({"PLANNER_API_PORT", "PLANNER_API_PROT", "AGENT_NODE_NAME"}) == ["PLANNER_API_PROT"]


def test_every_command_and_option_in_the_doc_is_real() -> None:
    invocations = [inv for text in shell_texts() for inv in invocations_in_shell(text, "docs/deploy.md")]
    assert {inv.program for inv in invocations} == {"planner", "agent", "scheduler"}
    problems = [p for inv in invocations for p in check_invocation(inv)]
    assert problems == []


def test_every_setting_file_and_route_the_doc_names_exists(routes: Routes) -> None:
    text = doc()
    assert unknown_env_names(env_names_in(text)) == []
    for path in set(DEPLOY_PATH.findall(text)):
        assert (REPO / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    for path in set(ROUTE.findall(text)):
        assert routes.matches(path.rstrip(".")), f"docs/deploy.md names {path}, which the app does not route"


SCHEMAS: list[tuple[str, type[BaseModel]]] = [
    (r"/v1/fleets$", FleetIn),
    (r"/v1/fleets/[^/]+/workloads$", WorkloadIn),
    (r"/v1/fleets/[^/]+/plans/solve$", SolveIn),
    (r"/v1/hosts/[^/]+/requests$", ProbeRequestIn),
    (r"/v1/jobs$", JobIn),
    (r"/v1/gpu-families/[^/]+$", FamilyIn),
]


def test_request_bodies_in_the_doc_are_valid() -> None:
    bodies = list(BODY.finditer(doc()))
    assert len(bodies) >= 5
    for m in bodies:
        route = ROUTE.search(m.group("url"))
        assert route, m.group(0)
        schema = next((s for pattern, s in SCHEMAS if re.search(pattern, route.group(1))), None)
        assert schema is not None, f"no schema known for {route.group(1)}"
        body = json.loads(m.group("json"))
        schema.model_validate(body)
        if schema is ProbeRequestIn:
            spec = body["spec"]
            assert set(spec) <= PROBE_SPEC_KEYS
            assert spec["model"] in models()
            assert set(spec.get("recipes", [])) <= set(recipes())


@pytest.mark.parametrize("section", ["## 1. A trial with compose", "## 2. A fleet on Kubernetes", "## 3. Bare metal"])
def test_each_way_covers_migration_agents_a_plan_and_workers(section: str) -> None:
    text = doc()
    start = text.index(section)
    end = text.find("\n## ", start + 1)
    part = text[start : end if end > 0 else None]
    assert "planner db upgrade" in part
    assert "agent" in part
    assert "scheduler worker" in part or "worker" in part
    assert "plan" in part
