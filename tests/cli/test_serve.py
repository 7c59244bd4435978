"""`planner serve`: refuses unsafe settings and unmigrated fleet stores; serves the API over the embedded store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, run_cli

TOKEN = "serve-test-admin-token-0123456789"


@pytest.mark.parametrize(
    ("environment", "host_args", "message"),
    [
        ("production", (), "PLANNER_ADMIN_TOKEN"),
        # No token set, no dev mode: refused even on loopback (issue 28), saying how to set one or ask for --dev.
        ("development", (), "planner serve --dev"),
        # The container image listens on 0.0.0.0 and defaults to development: a plain `docker run` must not
        # serve an API anyone on the network can administer, dev mode or not.
        ("development", ("--host", "0.0.0.0", "--dev"), "listens on 0.0.0.0"),
    ],
)
def test_serve_refuses_the_default_admin_token(
    tmp_path: Path, environment: str, host_args: tuple[str, ...], message: str
) -> None:
    proc = run_cli(
        "planner",
        "serve",
        *host_args,
        "--database-url",
        f"sqlite:///{tmp_path / 'x.db'}",
        env={"PLANNER_ENVIRONMENT": environment, "PLANNER_ADMIN_TOKEN": "change-me"},
    )
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.mark.postgres
def test_serve_refuses_a_postgresql_store_behind_its_migrations(backend: str, empty_db_url: str) -> None:
    if backend != "postgresql":
        return  # the embedded store migrates itself; the fleet store is the one that must be refused
    proc = run_cli("planner", "serve", "--database-url", empty_db_url, env={"PLANNER_ADMIN_TOKEN": TOKEN})
    assert proc.returncode != 0
    assert "planner db upgrade" in proc.stdout + proc.stderr


def test_serve_answers_over_the_embedded_store(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PLANNER_ENVIRONMENT": "production",
        "PLANNER_ADMIN_TOKEN": TOKEN,
        "PLANNER_SEED_REFERENCE_DATA": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "planner",
        "serve",
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{tmp_path / 's.db'}",
    ]
    server = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert ready is not None, server.stdout.read().decode() if server.stdout and server.poll() is not None else ""
        assert ready.status_code == 200
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "sdxl" in [m["id"] for m in models.json()]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
