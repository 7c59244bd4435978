"""The real-weights quality probe (issue 26) on a tiny real-format SD 1.5 folder (tests/models/tiny_folders.py).

What must hold: the reference is fp32; fp32 against fp32 is identical; a compiled recipe is scored after it was
compiled (the test that breaks compilation sees the recipe refused, not scored); images go through the serving
stages a worker runs; the prompt set shipped with the project has at least 16 varied prompts.
Trajectories are shortened here (`steps`) to keep the CPU test short; the probe's own default is the catalog's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from agent import quality_probe as qp
from agent.quality_prompts import PROMPT_SET, PROMPTS
from tests.models.tiny_folders import TinyFolders

pytest.importorskip("torchmetrics")


def test_the_shipped_prompt_set_is_large_and_varied() -> None:
    assert len(PROMPTS) >= 16
    assert len(set(PROMPTS)) == len(PROMPTS)
    assert len({p.split()[1] for p in PROMPTS}) >= 12  # not one subject in many words
    assert PROMPT_SET


def _probe(folder: Path, recipes: tuple[str, ...], stages: tuple[str, ...], **kw: Any) -> qp.QualityProbe:
    opts = qp.QualityProbeOptions(model="sd15", folder=folder, recipes=recipes, stages=stages, tiny=True, steps=3, **kw)
    return qp.QualityProbe(opts)


@pytest.mark.slow
def test_fp32_is_the_identical_reference_and_a_compiled_recipe_is_scored_after_compiling(
    tiny_model_dirs: TinyFolders, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stagekit import serving

    served: dict[str, int] = {}
    for cls in serving.STAGES.values():  # the images come from the workers' serving stages

        def counted(self: Any, batch: Any, _real: Any = cls.__call__, _name: str = cls.__name__) -> Any:
            served[_name] = served.get(_name, 0) + len(batch)
            return _real(self, batch)

        monkeypatch.setattr(cls, "__call__", counted)
    graphs_at_score: dict[tuple[int, int], int] = {}
    real_score = qp.score_images

    def spy(images: Any, reference: Any, lpips: Any) -> Any:
        graphs_at_score[(len(graphs_at_score), len(images))] = qp._compiled_graphs()
        return real_score(images, reference, lpips)

    monkeypatch.setattr(qp, "score_images", spy)
    before = qp._compiled_graphs()
    probe = _probe(tiny_model_dirs["sd15"], ("fp32", "bf16", "bf16-compile"), ("text_encoder",))
    result = probe.run()
    assert result.references == {"text_encoder": "fp32", "denoiser": "fp32", "vae_decoder": "fp32"}
    by = {r.recipe: r for r in result.results}
    assert set(by) == {"fp32", "bf16", "bf16-compile"}, [r.error for r in result.results]
    n = len(PROMPTS)
    fp32 = by["fp32"]
    assert fp32.error is None
    assert fp32.prompts == n
    assert fp32.psnr == math.inf
    assert fp32.ssim == pytest.approx(1.0)
    assert fp32.row_values()["psnr_image"] == math.inf  # the contract stores it as 1000 dB
    bf16 = by["bf16"]
    assert bf16.error is None
    assert bf16.psnr is not None
    assert 0 < bf16.psnr < math.inf  # a lower precision differs from the reference, and the probe sees it
    assert bf16.ssim is not None
    assert bf16.ssim <= 1.0
    assert bf16.ssim_min is not None
    assert bf16.ssim_min <= bf16.ssim
    assert bf16.ssim_std is not None
    compiled = by["bf16-compile"]
    assert compiled.error is None, compiled.error
    assert compiled.compiled
    assert compiled.compile_s is not None
    assert compiled.compile_s > 0
    # Every scoring happened after torch.compile had compiled graphs in this process.
    assert graphs_at_score
    assert all(g > before for g in graphs_at_score.values())
    assert served.get("TextStage", 0) >= 3 * n  # reference + each recipe, every prompt
    assert served.get("DenoiserStage", 0) >= n
    assert served.get("VaeStage", 0) >= n
    assert "LPIPS" in result.lpips_status


@pytest.mark.slow
def test_a_compiled_recipe_that_did_not_compile_is_not_scored(
    tiny_model_dirs: TinyFolders, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring before compilation would score eager code under a compiled recipe's name: the probe refuses."""
    from stagekit.recipes import PreparedStage

    monkeypatch.setattr(PreparedStage, "apply_compile", lambda self: None)
    result = _probe(tiny_model_dirs["sd15"], ("bf16-compile",), ("text_encoder",), prompts=PROMPTS[:2]).run()
    (only,) = result.results
    assert only.error is not None
    assert "compiled nothing" in only.error
    assert only.row_values() == {}  # its quality stays unknown
