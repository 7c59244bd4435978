"""The quality probe on real weights (issue 26): what a recipe does to the images a worker serves.

For each (stage, recipe) asked, the whole pipeline runs on the host's real weights through the same serving stages
the workers run (`stagekit.serving.build_stage`: the model's diffusers pipeline, `encode_prompt`,
`output_type="latent"`, `vae.decode` + `image_processor`): the recipe's stage in the recipe's form, every other
stage in the reference form, over a fixed set of prompts (agent/quality_prompts.py), at the catalog's step count,
with the same seed per prompt for recipe and reference. Each image is compared with the reference pipeline's image
of the same prompt and seed:
- PSNR (dB, uint8 images as served, data range 1) of the pooled error over all prompts, and the worst prompt's;
- SSIM (Gaussian 11x11, sigma 1.5): the mean over prompts, the worst, and the spread (standard deviation);
- LPIPS (AlexNet) only where torchvision and its backbone weights are on this host (`lpips_status` says which);
all from torchmetrics (`pip install .[agent]`).

The reference of a stage is its highest-precision plain recipe (fp32: planner.catalog.quality.quality_reference);
where it does not run (out of memory on this device) the next one down is used and named in `reference`.
A compiled recipe is warmed up (compiled) on the first prompt before any image of it is scored, and the probe
checks that torch.compile did compile something; otherwise the recipe is not scored (its error says why).

Memory: one large module at a time. Reference text embeddings, then the text recipes' embeddings; the reference
denoiser's latents for both; the reference VAE (kept) decodes them; then each VAE recipe decodes the reference
latents and each denoiser recipe denoises the reference embeddings. Intermediates live on the CPU.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.quality_prompts import PROMPT_SET, PROMPTS
from planner.catalog import ModelSpec, Recipe, known_model, recipes
from planner.catalog.quality import PRECISION_RANK, is_plain
from stagekit.interface import Item, StageFn
from stagekit.recipes import RecipeOptions
from stagekit.sources import ModelSource

STAGE_ORDER = ("text_encoder", "denoiser", "vae_decoder")


@dataclass(frozen=True)
class QualityProbeOptions:
    """One probe: which model (and its real folder), which recipes of which stages, on which prompts."""

    model: str
    folder: Path
    recipes: tuple[str, ...]
    stages: tuple[str, ...] | None = None
    prompts: tuple[str, ...] = PROMPTS
    seed: int = 0
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    tiny: bool = False
    device: str = "cpu"
    options: RecipeOptions | None = None
    batch: int = 4


@dataclass(frozen=True)
class RecipeQuality:
    """What one (stage, recipe) does to the images, against the reference pipeline's, over the prompt set."""

    stage: str
    recipe: str
    reference: str
    prompts: int
    psnr: float | None = None
    psnr_min: float | None = None
    ssim: float | None = None
    ssim_min: float | None = None
    ssim_std: float | None = None
    lpips: float | None = None
    compiled: bool = False
    compile_s: float | None = None
    error: str | None = None

    def row_values(self) -> dict[str, Any]:
        """The measurement columns this result fills (the contract stores an infinite PSNR as 1000 dB)."""
        if self.error is not None:
            return {}
        return {
            "psnr_image": self.psnr,
            "ssim_image": self.ssim,
            "psnr_image_min": self.psnr_min,
            "ssim_image_min": self.ssim_min,
            "ssim_image_std": self.ssim_std,
            "lpips_image": self.lpips,
            "quality_weights": "real",
            "quality_reference": self.reference,
            "quality_prompts": self.prompts,
            "quality_prompt_set": PROMPT_SET,
        }


@dataclass
class QualityProbeResult:
    results: list[RecipeQuality] = field(default_factory=list)
    lpips_status: str = ""
    references: dict[str, str] = field(default_factory=dict)

    def get(self, stage: str, recipe: str) -> RecipeQuality | None:
        return next((r for r in self.results if (r.stage, r.recipe) == (stage, recipe)), None)


# ---- metrics -----------------------------------------------------------------------------------------------------
def _as_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images as served -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def lpips_metric() -> tuple[Callable[[torch.Tensor, torch.Tensor], float] | None, str]:
    """torchmetrics' LPIPS (AlexNet) when torchvision and the backbone's weights are on this host, else why not."""
    if importlib.util.find_spec("torchvision") is None:
        return None, "LPIPS not measured: torchvision is not installed (torchmetrics' LPIPS needs its AlexNet)"
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return None, f"LPIPS not measured: no AlexNet weights in {hub} (this host has no network to fetch them)"
    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)

    def score(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(metric(a, b))

    return score, "LPIPS (AlexNet, torchmetrics) measured"


def score_images(
    images: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    lpips: Callable[[torch.Tensor, torch.Tensor], float] | None,
) -> dict[str, float | None]:
    """PSNR (pooled, worst), SSIM (mean, worst, spread), LPIPS (mean) of images against the reference's."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    a, b = _as_tensor(images), _as_tensor(reference)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)
    pooled = float(mse.mean())
    psnr = math.inf if pooled == 0 else 10 * math.log10(1.0 / pooled)
    worst = float(mse.max())
    psnr_min = math.inf if worst == 0 else 10 * math.log10(1.0 / worst)
    per = ssim_fn(a, b, data_range=1.0, reduction="none")
    per = per if isinstance(per, torch.Tensor) else torch.tensor(per)
    return {
        "psnr": psnr,
        "psnr_min": psnr_min,
        "ssim": float(per.mean()),
        "ssim_min": float(per.min()),
        "ssim_std": float(per.std(unbiased=False)),
        "lpips": lpips(a, b) if lpips is not None else None,
    }


# ---- the probe ---------------------------------------------------------------------------------------------------
class QualityProbe:
    """Runs QualityProbeOptions; `build` makes a serving stage (tests may wrap it), `progress` hears each step."""

    def __init__(
        self,
        opts: QualityProbeOptions,
        *,
        build: Callable[[str, str], StageFn] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = opts
        self.spec: ModelSpec = known_model(opts.model)
        self.catalog = recipes()
        self.stages = [s for s in STAGE_ORDER if s in (opts.stages or self.spec.stage_names)]
        self._build = build or self._serving_stage
        self.progress = progress or (lambda _m: None)
        self.lpips, self.lpips_status = lpips_metric()
        self._compiled: dict[tuple[str, str], tuple[bool, float | None]] = {}

    def _serving_stage(self, stage: str, recipe: str) -> StageFn:
        from stagekit.serving import build_stage

        source = ModelSource(self.opts.model, self.opts.folder)
        return build_stage(
            self.opts.model, stage, recipe, self.opts.tiny, self.opts.device, source=source, options=self.opts.options
        )

    def items(self) -> list[Item]:
        from stagekit.pipelines import tiny_shapes

        h, w, _ = tiny_shapes(self.spec) if self.opts.tiny else (self.spec.height, self.spec.width, 0)
        steps = self.opts.steps or self.spec.default_steps
        return [
            {"prompt": p, "seed": self.opts.seed + i, "height": self.opts.height or h, "width": self.opts.width or w,
             "steps": steps}
            for i, p in enumerate(self.opts.prompts)
        ]  # fmt: skip

    def _run(self, fn: StageFn, items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for i in range(0, len(items), self.opts.batch):
            out.extend(_to_cpu(it) for it in fn(items[i : i + self.opts.batch]))
        return out

    def _reference(self, stage: str) -> tuple[str, StageFn]:
        """The stage's reference stage: its highest-precision plain recipe that builds here (fp32 first)."""
        plain = sorted(
            (r for r in self.catalog.values() if stage in r.stages and is_plain(r)),
            key=lambda r: (-PRECISION_RANK.get(r.precision, 0), not r.reference, r.id),
        )
        problems: list[str] = []
        for r in plain:
            try:
                return r.id, self._build(stage, r.id)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                problems.append(f"{r.id}: {str(exc).splitlines()[0][:200]}")
        raise RuntimeError(f"no reference recipe of {stage} runs here: {'; '.join(problems)}")

    def run(self, recipe_ids: Sequence[str] | None = None) -> QualityProbeResult:
        """Score every (stage, recipe) of the options; a recipe that fails is reported, the others go on."""
        chosen = [self.catalog[r] for r in (recipe_ids or self.opts.recipes)]
        result = QualityProbeResult(lpips_status=self.lpips_status)
        items = self.items()
        wanted = {s: [r for r in chosen if s in r.stages] for s in self.stages}
        # 1. Text: the reference's embeddings, and each text recipe's.
        ref_id, te = self._reference("text_encoder")
        result.references["text_encoder"] = ref_id
        self.progress(f"reference text encoder ({ref_id})")
        ref_text = self._run(te, items)
        del te
        text_of: dict[str, list[Item]] = {}
        for r in wanted.get("text_encoder", []):
            got = self._recipe_outputs("text_encoder", r, items, result)
            if got is not None:
                text_of[r.id] = got
        # 2. Denoiser: the reference's latents from the reference embeddings and from each text recipe's.
        ref_id, dn = self._reference("denoiser")
        result.references["denoiser"] = ref_id
        self.progress(f"reference denoiser ({ref_id}), {len(items)} prompts x {items[0]['steps']} steps")
        ref_latents = self._run(dn, ref_text)
        latents_of_text = {rid: self._run(dn, emb) for rid, emb in text_of.items()}
        del dn
        # 3. VAE: the reference decodes everything the reference denoiser made.
        ref_id, vae = self._reference("vae_decoder")
        result.references["vae_decoder"] = ref_id
        ref_images = [it["image"] for it in self._run(vae, ref_latents)]
        for rid, lat in latents_of_text.items():
            self._score("text_encoder", rid, [it["image"] for it in self._run(vae, lat)], ref_images, result)
        for r in wanted.get("vae_decoder", []):
            got = self._recipe_outputs("vae_decoder", r, ref_latents, result)
            if got is not None:
                self._score("vae_decoder", r.id, [it["image"] for it in got], ref_images, result)
        for r in wanted.get("denoiser", []):
            got = self._recipe_outputs("denoiser", r, ref_text, result)
            if got is not None:
                self._score("denoiser", r.id, [it["image"] for it in self._run(vae, got)], ref_images, result)
        return result

    def _recipe_outputs(
        self, stage: str, recipe: Recipe, inputs: list[Item], result: QualityProbeResult
    ) -> list[Item] | None:
        """The recipe's stage outputs for every input; a compiled recipe compiles on the first input first."""
        try:
            fn = self._build(stage, recipe.id)
            compile_s = None
            if recipe.compile != "none":
                before = _compiled_graphs()
                t0 = time.perf_counter()
                fn(inputs[:1])  # warm-up: torch.compile compiles on this call, before any image is scored
                compile_s = time.perf_counter() - t0
                if _compiled_graphs() <= before:
                    raise RuntimeError(
                        "torch.compile compiled nothing on the warm-up call: the images would be eager code's, "
                        "not the compiled recipe's; not scored"
                    )
            self.progress(f"{stage} {recipe.id}")
            out = self._run(fn, inputs)
        except Exception as exc:  # one recipe's failure must not lose the others' scores
            result.results.append(
                RecipeQuality(stage, recipe.id, result.references.get(stage, "?"), 0, error=_describe(exc))
            )
            return None
        finally:
            if recipe.compile != "none":
                torch._dynamo.reset()  # compiled entries of shared code objects must not pile up across recipes
        self._compiled[(stage, recipe.id)] = (recipe.compile != "none", compile_s)
        del fn
        return out

    def _score(
        self, stage: str, recipe: str, images: list[np.ndarray], ref: list[np.ndarray], result: QualityProbeResult
    ) -> None:
        compiled, compile_s = self._compiled.get((stage, recipe), (False, None))
        m = score_images(images, ref, self.lpips)
        result.results.append(
            RecipeQuality(
                stage, recipe, result.references[stage], len(images),
                psnr=m["psnr"], psnr_min=m["psnr_min"], ssim=m["ssim"], ssim_min=m["ssim_min"],
                ssim_std=m["ssim_std"], lpips=m["lpips"], compiled=compiled, compile_s=compile_s,
            )
        )  # fmt: skip


def _compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's own counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _to_cpu(item: Item) -> Item:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in item.items()}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:1000]
