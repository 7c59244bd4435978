"""Helpers for tests that run the real command-line programs in a subprocess, or load a benchmark script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as module `name` (benchmarks/ is scripts, not a package)."""
    bench = str(REPO / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)  # the scripts import each other by bare name
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_cli(
    program: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m <program> args...` as a user would run the console script; capture its output."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", program, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO,
        check=False,
    )


def run_benchmark(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `python benchmarks/<name>.py args...` as on a machine without a GPU (CUDA hidden, a bare PATH)."""
    return subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""},
        check=False,
    )


def invoke(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run the `planner` command in-process (typer's runner): the same code path, without interpreter start-up."""
    from typer.testing import CliRunner

    from planner.cli.main import app

    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", **(env or {})}).invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def recommend(url: str, *args: str) -> CliResult:
    """`planner recommend --database-url URL ARGS...` in-process."""
    return invoke("recommend", "--database-url", url, *args)


def recommend_json(url: str, *args: str) -> dict[str, Any]:
    """The plan `planner recommend ... --format json` prints (the command must succeed)."""
    result = recommend(url, *args, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data
