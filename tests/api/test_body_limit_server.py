"""A 20 MB body without a token, sent to a real `planner serve`, is refused with 413 before it is read, and the
server's memory does not grow (issue 28: one 97 MiB request used to take it from 452 MB to 2.1 GB)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import REPO

TOKEN = "body-limit-admin-token-0123456789"
BODY = 20 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def post_unread(port: int, path: str, *, chunked: bool = False) -> bytes:
    """Send a 20 MB POST without a token as a client would (headers, then the body as fast as the server
    takes it) and return the status line; the server may close before the body is all sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY}"
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}\r\n\r\n".encode())
    block = b"x" * 65536
    sent = 0
    try:
        while sent < BODY:
            sock.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block)
            sent += len(block)
    except OSError:
        pass  # the server answered and closed: the point
    reply = b""
    with contextlib.suppress(OSError):
        reply = sock.recv(4096)
    sock.close()
    return reply.split(b"\r\n", 1)[0]


def test_20_mb_bodies_without_a_token_are_refused_unread_and_memory_stays_flat(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PLANNER_ENVIRONMENT": "production",
        "PLANNER_ADMIN_TOKEN": TOKEN,
        "PLANNER_SEED_REFERENCE_DATA": "false",
        "PLANNER_HEARTBEAT_SWEEP_S": "0",
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
    server = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        for _ in range(3):  # warm the routes a bounded request touches
            httpx.post(f"http://127.0.0.1:{port}/v1/probe-runs", json={})
        before = rss_kib(server.pid)
        for path in ("/v1/probe-runs", "/v1/hosts") * 5:
            assert post_unread(port, path) == b"HTTP/1.1 413 Request Entity Too Large", path
        # A chunked body declares no length: no token, so 401 before a byte is read.
        assert post_unread(port, "/v1/hosts", chunked=True) == b"HTTP/1.1 401 Unauthorized"
        grown = rss_kib(server.pid) - before
        print(f"server RSS {before} KiB before, grew {grown} KiB over 11 refused 20 MB requests")
        assert grown < 5 * 1024, f"server memory grew by {grown} KiB over 11 refused 20 MB requests"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
