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


def _imports(package: str) -> dict[str, set[str]]:
    """Module file -> the top-level-qualified modules it imports (absolute imports, at any depth of the file)."""
    import ast

    out: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(REPO))] = names
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("scheduler", ("agent",)),
        ("agent", ("scheduler",)),
        ("stagekit", ("agent", "scheduler", "planner.api", "planner.db", "planner.crud")),
    ],
)
def test_the_agent_and_the_scheduler_share_the_stage_package_and_never_import_each_other(
    package: str, forbidden: tuple[str, ...]
) -> None:
    bad = {
        f"{path}: {name}"
        for path, names in _imports(package).items()
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    }
    assert not bad, sorted(bad)
    assert any(n.startswith("stagekit") for names in _imports(package).values() for n in names) or package == "stagekit"
