"""Load benchmark of the planner API: 1,000 agents heartbeating, probe submissions mixed in, on PostgreSQL.

It creates a fresh PostgreSQL database on loopback (migrated, catalogs seeded), starts `planner serve` with
uvicorn workers as a subprocess on 127.0.0.1, registers the agents, then:

1. open loop, one step per rate in --rates (25, 50 and the aim, 100, by default): heartbeats spread over all
   agents (each agent every agents/rate seconds, with 8 GPUs of telemetry), plus a probe run (8 measurements)
   every --probe-every heartbeats; requests go out on schedule whether or not earlier ones answered (no
   coordinated omission), and latency counts from the moment a request is sent;
2. closed loop: --concurrency clients heartbeating back to back, for the most requests/s the service takes.

It prints requests/s, p50/p99 latency, and p99 against the 50 ms aim at 100 heartbeats/s, with the machine.
The load generator runs on the same machine as the service and takes CPU from it: a conservative setup.

    PYTHONPATH=. python benchmarks/api_load.py     # defaults: 1000 agents; 25, 50, 100 heartbeats/s, 15 s each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# httpcore asks `import sniffio` on every request; when sniffio is not installed each failed import walks
# sys.path (~1 ms of CPU here). A None entry makes the import fail at once, and httpcore then assumes asyncio,
# which is what this runs on. The load generator shares the CPUs with the service: its waste is the service's loss.
sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.noop_fleet import drop_pg_database, new_pg_database  # noqa: E402
from planner.crud.seed import seed_catalogs  # noqa: E402
from planner.db import migrate  # noqa: E402
from planner.db.session import make_engine, session_scope  # noqa: E402

AIM_P99_S = 0.050
GPUS_PER_HOST = 8


@dataclass
class Sample:
    """Latencies (seconds) and failures of one kind of request."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    late: list[float] = field(default_factory=list)

    def add(self, latency: float, status: int | str, ok: bool) -> None:
        if ok:
            self.latencies.append(latency)
        else:
            self.errors[str(status)] = self.errors.get(str(status), 0) + 1

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))]

    def line(self, name: str, wall_s: float) -> str:
        n = len(self.latencies)
        errors = sum(self.errors.values())
        return (
            f"{name:<22} {n:>7} ok {errors:>5} failed  {n / wall_s:>8.1f} req/s  "
            f"p50 {self.pct(0.50) * 1e3:>7.1f} ms  p99 {self.pct(0.99) * 1e3:>7.1f} ms  "
            f"max {max(self.latencies, default=float('nan')) * 1e3:>7.1f} ms"
            + (f"  errors {self.errors}" if self.errors else "")
        )


@dataclass
class Agent:
    host_id: str
    headers: dict[str, str]
    gpus: list[str]
    heartbeat: bytes = b""
    """The agent's heartbeat body, encoded once: the load generator shares the CPUs with the service."""


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
            except OSError:
                continue
            out.append((int(entry.name), int(tail.split()[1]), head.split("(", 1)[1]))
    return out


@dataclass
class CpuMeter:
    """CPU seconds used by the service (uvicorn and its workers), PostgreSQL (all backends) and this process."""

    server_pid: int

    def read(self) -> dict[str, float]:
        procs = _processes()
        tree = {self.server_pid}
        for _ in range(3):
            tree |= {pid for pid, ppid, _ in procs if ppid in tree}
        return {
            "service": sum(_proc_cpu_s(p) for p in tree),
            "postgres": sum(_proc_cpu_s(p) for p, _, name in procs if name == "postgres"),
            "load generator": time.process_time(),
        }

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], requests: int) -> str:
        parts = [f"{k} {(after[k] - before[k]) / max(requests, 1) * 1e3:.1f}" for k in before]
        return "CPU ms per request: " + ", ".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(admin_url: str) -> tuple[str, str]:
    url, name = new_pg_database(admin_url, prefix="planner_bench")
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        seed_catalogs(session)
    engine.dispose()
    return url, name


def start_server(url: str, port: int, workers: int, admin_token: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PLANNER_ENVIRONMENT": "production",
        "PLANNER_ADMIN_TOKEN": admin_token,
        "PLANNER_LOG_LEVEL": "warning",
        "PLANNER_DATABASE_URL": url,
    }
    cmd = [sys.executable, "-m", "planner", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"planner serve exited with {proc.returncode}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("planner serve did not become ready in time")


def gpu_payload(host: int, index: int) -> dict[str, Any]:
    return {
        "uuid": f"GPU-bench-{host:05d}-{index}-{uuid.uuid4().hex[:8]}",
        "index": index,
        "product_name": "NVIDIA H100 80GB HBM3",
        "gpu_family": "h100-sxm-80gb",
        "memory_gib": 79.6,
        "compute_capability": "9.0",
        "power_limit_w": 700.0,
    }


async def register(
    client: httpx.AsyncClient, admin: dict[str, str], n: int, concurrency: int
) -> tuple[list[Agent], Sample, float]:
    sample = Sample()
    agents: list[Agent] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        gpus = [gpu_payload(i, g) for g in range(GPUS_PER_HOST)]
        body = {"name": f"bench-node-{i:05d}", "driver_version": "570.124.06", "agent_version": "0.1.0", "gpus": gpus}
        async with sem:
            t = time.perf_counter()
            resp = await client.post("/v1/hosts", json=body, headers=admin)
            sample.add(time.perf_counter() - t, resp.status_code, resp.status_code == 201)
        if resp.status_code == 201:
            data = resp.json()
            headers = {"Authorization": f"Bearer {data['token']}", "Content-Type": "application/json"}
            agent = Agent(data["host_id"], headers, [g["uuid"] for g in gpus])
            agent.heartbeat = json.dumps(heartbeat_body(agent, i)).encode()
            agents.append(agent)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return agents, sample, time.perf_counter() - started


def heartbeat_body(agent: Agent, tick: int) -> dict[str, Any]:
    return {
        "agent_version": "0.1.0",
        "gpus": [
            {
                "uuid": u,
                "utilization_pct": float((tick * 7 + i * 13) % 100),
                "memory_used_gib": 40.0 + i,
                "power_w": 500.0 + (tick % 50),
                "sm_clock_mhz": 1980,
                "mem_clock_mhz": 2619,
                "temperature_c": 60 + i % 10,
                "xid_errors": 0,
            }
            for i, u in enumerate(agent.gpus)
        ],
    }


def probe_body(agent: Agent) -> dict[str, Any]:
    rows = [
        {
            "gpu_family": "h100-sxm-80gb",
            "model": "sdxl",
            "stage": "denoiser",
            "recipe": "bf16",
            "batch": b,
            "height": 1024,
            "width": 1024,
            "latency_ms": 90.0 * b**0.8,
            "latency_p95_ms": 92.0 * b**0.8,
            "peak_mem_gib": 10.0 + b,
            "power_w": 650.0,
            "weights": "synthetic",
            "source": "measured",
        }
        for b in (1, 2, 3, 4, 6, 8, 12, 16)
    ]
    now = datetime.now(UTC).isoformat()
    return {
        "id": str(uuid.uuid4()),
        "host_id": agent.host_id,
        "kind": "probe",
        "gpu_uuid": agent.gpus[0],
        "gpu_family": "h100-sxm-80gb",
        "weights": "synthetic",
        "provenance": {"driver": "570.124.06", "cuda": "12.8", "torch": "2.8.0", "agent_version": "0.1.0"},
        "started_at": now,
        "finished_at": now,
        "measurements": rows,
    }


async def open_loop(
    client: httpx.AsyncClient, agents: list[Agent], rate: float, duration_s: float, probe_every: int
) -> tuple[Sample, Sample, float]:
    """Send heartbeats on a fixed schedule (rate per second); every `probe_every`-th slot also sends a probe run."""
    heartbeats, probes = Sample(), Sample()
    total = int(rate * duration_s)
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.2

    async def send(kind: str, agent: Agent, tick: int, scheduled: float) -> None:
        sample = heartbeats if kind == "heartbeat" else probes
        sample.late.append(max(0.0, time.perf_counter() - scheduled))
        t = time.perf_counter()
        try:
            if kind == "heartbeat":
                resp = await client.post(
                    f"/v1/hosts/{agent.host_id}/heartbeat", content=agent.heartbeat, headers=agent.headers
                )
                ok = resp.status_code == 200
            else:
                resp = await client.post("/v1/probe-runs", json=probe_body(agent), headers=agent.headers)
                ok = resp.status_code == 201
            sample.add(time.perf_counter() - t, resp.status_code, ok)
        except httpx.HTTPError as exc:
            sample.add(time.perf_counter() - t, type(exc).__name__, False)

    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        agent = agents[i % len(agents)]
        tasks.append(asyncio.create_task(send("heartbeat", agent, i, scheduled)))
        if probe_every and i % probe_every == probe_every - 1:
            tasks.append(asyncio.create_task(send("probe", agents[(i * 7919) % len(agents)], i, scheduled)))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration_s + 60)
    return heartbeats, probes, time.perf_counter() - start


async def closed_loop(
    client: httpx.AsyncClient, agents: list[Agent], concurrency: int, duration_s: float
) -> tuple[Sample, float]:
    """`concurrency` clients heartbeating back to back: the most the service takes."""
    sample = Sample()
    stop = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < stop:
            i = next(counter)
            agent = agents[i % len(agents)]
            t = time.perf_counter()
            try:
                resp = await client.post(
                    f"/v1/hosts/{agent.host_id}/heartbeat", content=agent.heartbeat, headers=agent.headers
                )
                sample.add(time.perf_counter() - t, resp.status_code, resp.status_code == 200)
            except httpx.HTTPError as exc:
                sample.add(time.perf_counter() - t, type(exc).__name__, False)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sample, time.perf_counter() - started


async def run(args: argparse.Namespace, base_url: str, admin: dict[str, str], proc: subprocess.Popen[bytes]) -> None:
    cpu = CpuMeter(proc.pid)
    limits = httpx.Limits(max_connections=args.connections, max_keepalive_connections=args.connections)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        await wait_ready(client, proc)
        agents, reg, reg_wall = await register(client, admin, args.agents, concurrency=16)
        print(reg.line("register (admin)", reg_wall))
        if len(agents) < args.agents:
            raise SystemExit(f"only {len(agents)} of {args.agents} agents registered: {reg.errors}")
        verdicts = []
        for rate in args.rates:
            before = cpu.read()
            hb, probes, wall = await open_loop(client, agents, rate, args.duration, args.probe_every)
            after = cpu.read()
            print(hb.line(f"heartbeat @{rate:g}/s", wall))
            print(probes.line("  + probe runs (8 cells)", wall))
            late = sorted(hb.late)
            lateness_ms = late[int(0.99 * (len(late) - 1))] * 1e3
            print(f"{'':<22} {cpu.per_request(before, after, len(hb.latencies) + len(probes.latencies))}")
            print(f"{'':<22} client lateness p99 {lateness_ms:.1f} ms (how far the load generator fell behind)")
            ratio = hb.pct(0.99) / AIM_P99_S
            verdicts.append(f"heartbeat p99 / 50 ms aim at {rate:g} heartbeats/s: {ratio:.2f}")
            await asyncio.sleep(2)  # let the service settle between steps
        print("\n".join(verdicts))
        if args.closed_duration > 0:
            before = cpu.read()
            sat, sat_wall = await closed_loop(client, agents, args.concurrency, args.closed_duration)
            after = cpu.read()
            print(sat.line(f"heartbeat, {args.concurrency} clients", sat_wall))
            print(f"{'':<22} {cpu.per_request(before, after, len(sat.latencies))}")
        resp = await client.get("/metrics")
        hosts = [
            line
            for line in resp.text.splitlines()
            if line.startswith("planner_hosts{") or line.startswith("planner_measurements_stored ")
        ]
        print("service metrics: " + "; ".join(hosts))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument(
        "--rates",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[25.0, 50.0, 100.0],
        help="open-loop heartbeats per second, one step each (comma-separated; the aim is 100)",
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of open-loop load per step")
    parser.add_argument("--probe-every", type=int, default=50, help="a probe run every N heartbeats (0: none)")
    parser.add_argument("--closed-duration", type=float, default=10.0, help="seconds of closed-loop load (0: skip)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--connections", type=int, default=32, help="HTTP connections of the load generator")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="uvicorn workers")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("PLANNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    if args.agents < 1 or min(args.rates) <= 0 or not 0 < args.duration <= 600 or len(args.rates) > 10:
        parser.error("need agents >= 1, at most 10 rates > 0 and 0 < duration <= 600")

    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, {cpu}, Python {platform.python_version()}")
    print(
        f"setup: {args.agents} agents x {GPUS_PER_HOST} GPUs, PostgreSQL on loopback, "
        f"planner serve --workers {args.workers}, load generator on the same machine ({args.connections} connections)"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on this machine counts)")
    url, name = create_database(args.postgres)
    port = free_port()
    admin_token = secrets.token_urlsafe(32)
    proc = start_server(url, port, args.workers, admin_token)
    try:
        coro = run(args, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {admin_token}"}, proc)
        try:  # the load generator shares the CPUs with the service: give it the faster event loop when there is one
            import uvloop

            uvloop.run(coro)
        except ImportError:
            asyncio.run(coro)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        drop_pg_database(args.postgres, name)


if __name__ == "__main__":
    main()
