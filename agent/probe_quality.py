"""Quality columns of probe rows: the whole-pipeline quality probe on real weights, numeric drift on random ones.

Real weights (`RealQuality`): `agent.quality_probe` runs the serving pipeline over the prompt set for every recipe
with cells to do, once per sweep, against the fp32 reference; its scores fill each row of that (stage, recipe).
Synthetic weights (`Drift`, only when asked: `synthetic_drift`): the recipe's stage outputs against the stage's
quality reference (fp32) at batch 1, same seed and inputs -- numeric drift of the recipe's arithmetic, labelled
`quality_weights=synthetic`, never an image quality (DESIGN.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from agent import quality
from agent.memory import free_gpu
from agent.probe_cell import describe
from agent.probe_options import ProbeOptions
from agent.quality_probe import QualityProbe, QualityProbeOptions, QualityProbeResult
from agent.quality_prompts import PROMPTS
from agent.target import Target
from planner.catalog import ModelSpec, Recipe, recipes
from planner.catalog.quality import quality_reference
from stagekit.pipelines import StageRunner, StageSetup, build_stage
from stagekit.recipes import PreparedStage, reset_cache


class RealQuality:
    """The quality probe of a sweep on real weights: run once for the recipes with cells to do, then read per row."""

    def __init__(self, spec: ModelSpec, opts: ProbeOptions, target: Target, *, height: int, width: int) -> None:
        self.spec, self.opts, self.target = spec, opts, target
        self.height, self.width = height, width
        self.result: QualityProbeResult | None = None

    def run(self, todo: list[str], stages: list[str], say: Callable[[str], None]) -> None:
        """Score every recipe of `todo` through the serving pipeline; a failure leaves quality unknown, saying why."""
        assert self.opts.weights_dir is not None
        prompts = PROMPTS[: self.opts.quality_prompts] if self.opts.quality_prompts else PROMPTS
        opts = QualityProbeOptions(
            model=self.spec.id,
            folder=self.opts.weights_dir,
            recipes=tuple(todo),
            stages=tuple(stages),
            prompts=prompts,
            seed=self.opts.seed,
            steps=self.opts.quality_steps,
            height=self.height if not self.opts.tiny else None,
            width=self.width if not self.opts.tiny else None,
            tiny=self.opts.tiny,
            device=str(self.target.device),
            options=self.opts.recipe_options,
        )
        say(f"quality probe: {len(prompts)} prompts, recipes {', '.join(todo)}")
        try:
            self.result = QualityProbe(opts, progress=say).run()
        except Exception as exc:  # the timing goes on; the quality stays unknown, and the run says why
            self.result = QualityProbeResult(lpips_status=f"quality probe failed: {describe(exc)}")
        finally:
            free_gpu(self.target.device)

    def values(self, stage: str, recipe: Recipe) -> dict[str, Any]:
        if self.result is None:
            return {}
        got = self.result.get(stage, recipe.id)
        return got.row_values() if got is not None else {}


class Drift:
    """Numeric drift of each recipe's stage outputs against the stage's quality reference (synthetic weights)."""

    def __init__(
        self,
        spec: ModelSpec,
        opts: ProbeOptions,
        target: Target,
        prepare: Callable[[str, Recipe], PreparedStage],
        *,
        sizes: tuple[int, int, int],
    ) -> None:
        self.spec, self.opts, self.target, self.prepare = spec, opts, target, prepare
        self.height, self.width, self.text_tokens = sizes
        self._reference: dict[str, dict[str, torch.Tensor]] = {}
        self._ref_vae: StageRunner | None = None

    def close(self) -> None:
        self._ref_vae = None
        self._reference.clear()

    def values(self, stage: str, recipe: Recipe, prepared: PreparedStage) -> dict[str, Any]:
        """Drift of this recipe against the stage's quality reference (fp32) at batch 1, same seed and inputs.

        Runs before the group's timing, so a compiled recipe is scored eagerly here: per-stage drift is numeric
        drift of the recipe's arithmetic; the whole-pipeline quality of real weights (agent/quality_probe.py)
        scores compiled recipes after compilation.
        """
        try:
            outputs: dict[str, torch.Tensor] | None = self._outputs(stage, prepared)
        except Exception:  # drift is optional: a failure here must not lose the latency cells
            outputs = None
        if outputs is None:
            free_gpu(self.target.device)
            return {}
        reference = quality_reference(stage, recipes())
        if reference is not None and recipe.id == reference.id:
            self._reference[stage] = outputs
        ref = self._reference.get(stage) or self._reference_outputs(stage)
        if ref is None:
            return {}
        drift = compare(outputs, ref)
        return {"quality_weights": "synthetic", **drift} if drift else {}

    def _reference_outputs(self, stage: str) -> dict[str, torch.Tensor] | None:
        ref_recipe = quality_reference(stage, recipes())
        if ref_recipe is None:
            return None
        try:
            out = self._outputs(stage, self.prepare(stage, ref_recipe))
        except Exception:
            return None
        finally:
            free_gpu(self.target.device)
        self._reference[stage] = out
        return out

    def _decoder(self) -> StageRunner | None:
        """The reference VAE (fp32) that turns denoised latents into images for the image metrics."""
        if self._ref_vae is None and "vae_decoder" in self.spec.stage_names:
            device = self.target.device
            built = build_stage(
                self.spec, "vae_decoder", tiny=self.opts.tiny, device=device, dtype=torch.float32, weights_dir=None
            )
            setup = StageSetup(
                spec=self.spec,
                stage="vae_decoder",
                height=self.height,
                width=self.width,
                text_tokens=self.text_tokens,
                tiny=self.opts.tiny,
                device=device,
                dtype=torch.float32,
            )
            self._ref_vae = StageRunner(setup, built.modules)
        return self._ref_vae

    def _outputs(self, stage: str, prepared: PreparedStage) -> dict[str, torch.Tensor]:
        """The stage's module outputs at batch 1 on the probe's seeded inputs (not the served call's)."""
        runner = prepared.runner
        served, runner.served = runner.served, None  # drift compares the modules' outputs on the same inputs
        runner.prepare(1, seed=self.opts.seed + 1)
        try:
            if stage == "text_encoder":
                with runner.call_context or contextlib.nullcontext():
                    return {"latent": runner.conditioning().cpu()}
            if stage == "vae_decoder":
                return {"image": runner.call().float().cpu()}
            return self._denoised(prepared)
        finally:
            runner.inputs = {}
            runner.served = served

    def _denoised(self, prepared: PreparedStage) -> dict[str, torch.Tensor]:
        """A few Euler steps of the denoiser from the seeded latents, and their decode by the reference VAE."""
        runner = prepared.runner
        latents: torch.Tensor = runner.inputs["latents"]
        steps = max(1, self.opts.quality_steps or 4)
        for m in prepared.cache_modules:
            reset_cache(m)
        x = latents
        for i in range(steps):
            t0, t1 = 1.0 - i / steps, 1.0 - (i + 1) / steps
            v = runner.step(x, t0)
            x = (x.float() + (t1 - t0) * v.float()).to(latents.dtype)
        out: dict[str, torch.Tensor] = {"latent": x.float().cpu()}
        vae = self._decoder()
        if vae is not None:
            with torch.inference_mode():
                out["image"] = vae.vae_decode(x.to(torch.float32)).float().cpu()
        return out


def compare(outputs: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    """PSNR of latents; PSNR and SSIM of images, both scaled by the reference's range (random weights' images are
    not in [-1, 1])."""
    drift: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        if "latent" in outputs and "latent" in ref:
            drift["psnr_latent"] = quality.psnr(outputs["latent"], ref["latent"])
    with contextlib.suppress(ValueError):
        if "image" in outputs and "image" in ref:
            lo, hi = ref["image"].min(), ref["image"].max()
            span = (hi - lo).clamp(min=1e-6)
            a = ((outputs["image"] - lo) / span).clamp(0, 1)
            b = ((ref["image"] - lo) / span).clamp(0, 1)
            drift["psnr_image"] = quality.psnr(a, b, data_range=1.0)
            drift["ssim_image"] = quality.ssim(a, b, data_range=1.0)
    return drift
