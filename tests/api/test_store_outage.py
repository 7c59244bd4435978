"""A database that hangs (accepts, never answers) is survived (issue 28): requests answer 503 within the
configured timeout, /healthz answers throughout, and the API recovers without a restart when the database is
back. A real uvicorn server, a real PostgreSQL behind a local TCP proxy that can black-hole it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from planner.api.main import create_app, service_engine
from planner.core.config import Settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN


class Proxy:
    """A TCP listener in front of PostgreSQL: `forward` pipes bytes both ways; `blackhole` accepts new
    connections and never answers, and stops forwarding on the ones it has (a hung server)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.blackhole = True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(client)
            if not self.blackhole:
                upstream = socket.create_connection(self.target)
                self.held.append(upstream)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.blackhole:  # hung: hold the bytes, answer nothing
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for s in self.held:
            s.close()


@pytest.fixture
def proxied(backend: str, fresh_store_url: str) -> Iterator[tuple[Proxy, str]]:
    if backend != "postgresql":
        pytest.skip("SQLite is a local file: nothing between the service and it can hang")
    url = make_url(fresh_store_url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def serve(settings: Settings) -> tuple[uvicorn.Server, int]:
    app = create_app(settings, engine=service_engine(settings))
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    port = sock.getsockname()[1]
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, port


def test_a_blackholed_database_gives_503_in_time_healthz_answers_and_the_api_recovers(
    proxied: tuple[Proxy, str],
) -> None:
    proxy, url = proxied
    settings = Settings(
        environment="test",
        database_url=url,
        admin_token=SecretStr(ADMIN_TOKEN),
        heartbeat_sweep_s=0,
        db_connect_timeout_s=2,
        db_statement_timeout_s=2,
        db_pool_timeout_s=2,
    )
    proxy.blackhole = False
    server, port = serve(settings)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers=ADMIN, timeout=30) as client:
            assert client.get("/v1/hosts").status_code == 200  # a pooled connection, then the database hangs
            proxy.blackhole = True
            with ThreadPoolExecutor(8) as pool:
                started = time.monotonic()
                hung = [pool.submit(client.get, "/v1/hosts") for _ in range(6)]
                time.sleep(0.5)
                health = [client.get("/healthz", timeout=1) for _ in range(5)]
                answers = [f.result() for f in hung]
                took = time.monotonic() - started
            assert all(h.status_code == 200 for h in health)
            assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
            assert all(int(a.headers["retry-after"]) > 0 for a in answers)
            # connect 2 s, statement 2 s + the watchdog's 2 s grace, pool wait 2 s: well under 12 s
            assert took < 12, took
            proxy.blackhole = False
            recovered = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                resp = client.get("/v1/hosts")
                if resp.status_code == 200:
                    recovered = time.monotonic()
                    break
                time.sleep(0.2)
            assert recovered is not None, "the API did not recover within 10 s of the database's return"
    finally:
        server.should_exit = True
