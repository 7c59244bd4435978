"""Helpers for tests that run the real command-line programs in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
