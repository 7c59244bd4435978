"""A no-op worker runs without torch (DESIGN.md); tests/test_imports.py checks the imports of every module."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


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
