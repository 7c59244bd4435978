"""The planner and the scheduler run without torch (DESIGN.md): importing them must not load it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO

MODULES = [
    "planner",
    "planner.cli.main",
    "planner.api.main",
    "planner.api.routes.jobs",
    "planner.db.models",
    "planner.measurements.store",
    # The scheduler: only the stage code imports torch, and only when a worker builds a real pipeline.
    "scheduler",
    "scheduler.cli",
    "scheduler.celery_app",
    "scheduler.client",
    "scheduler.dispatch",
    "scheduler.rebalance",
    "scheduler.worker",
    "scheduler.stages",
    "scheduler.intermediates",
    "scheduler.generate",
    # The stage package's interface and model sources (the stage code itself imports torch).
    "stagekit",
    "stagekit.interface",
    "stagekit.errors",
    "stagekit.sources",
]


@pytest.mark.parametrize("module", MODULES)
def test_import_leaves_torch_out(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in ('torch', 'diffusers', 'transformers', 'pynvml') if m in sys.modules); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, f"{module} imported {proc.stdout.strip()} {proc.stderr[-2000:]}"


def test_the_check_itself_sees_torch() -> None:
    """Guard against a check that cannot fail: importing torch is seen."""
    code = "import sys, torch; sys.exit(0 if 'torch' in sys.modules else 1)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert proc.returncode == 0
