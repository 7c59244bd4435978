"""The scheduler runs without torch (DESIGN.md): only the stage code imports it, and only when a worker builds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

MODULES = [
    "scheduler",
    "scheduler.cli",
    "scheduler.celery_app",
    "scheduler.client",
    "scheduler.dispatch",
    "scheduler.rebalance",
    "scheduler.worker",
    "scheduler.stages",
    "scheduler.intermediates",
    "planner.api.routes.jobs",
]


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_torch(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in ('torch', 'diffusers', 'transformers', 'pynvml') if m in sys.modules); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, f"{module} imported {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_a_noop_worker_runs_without_torch() -> None:
    """Building and running no-op stages (the benchmarks' and fault tests' workers) loads no torch."""
    code = (
        "import sys; from scheduler.stages import GroupRunner, GroupSpec, noop_builder; "
        "r = GroupRunner.build(GroupSpec('sd15', ('text_encoder','denoiser','vae_decoder'), (), True, 'cpu'), "
        "noop_builder(0)); out = r.run([{'prompt': 'x', 'seed': 1}]); "
        "from scheduler.codec import encode_png; encode_png(out[0]['image']); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
