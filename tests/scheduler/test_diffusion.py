"""The worker's stage code on random weights (`--synthetic`) against the diffusers pipelines, and against the
agent's recipe code.

- Parity: for every architecture, the worker's text_encoder -> denoiser -> vae_decoder (fp32, 3 steps) gives
  the image the model's diffusers pipeline gives when called whole on the same modules (the pipeline object
  `stagekit.synthetic` builds: offline tokenizers, the catalog's scheduler config) with the same prompt, negative
  prompt, seed and steps: on random weights the worker runs the pipeline's own code, as on a user's folder.
- The modules the worker runs are the ones `stagekit.recipes.prepare` built and nothing else (a spy on prepare;
  fused QKV, int8 layers, compile): a regression that builds modules on its own fails here.
- Recipes a device cannot run fail with the agent's reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scheduler.stages import GroupRunner, GroupSpec
from stagekit.errors import UnsupportedModelError
from tests.scheduler.stage_helpers import FP32, MODELS, SYNTHETIC, group, items

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from stagekit import (  # noqa: E402
    quant,
    recipes,
    serving,
    synthetic,
)
from stagekit.recipes import PreparedStage, RecipeOptions  # noqa: E402


def _pipeline_images(batch: list[dict[str, Any]], runner: GroupRunner) -> np.ndarray:
    """The diffusers pipeline's images (N, H, W, 3) in 0..255, called whole on the worker's modules, per item."""
    stages: list[Any] = list(runner.fns)
    spec = stages[0].spec
    modules = {name: m for s in stages for name, m in s.prepared.modules.items()}
    pipe = synthetic.pipeline(spec, modules, tiny=True)
    pipe.set_progress_bar_config(disable=True)
    guidance = "true_cfg_scale" if spec.architecture == "qwen-image" else "guidance_scale"
    images = []
    for item in batch:
        negative = item["negative_prompt"]
        if negative is None:
            negative = serving.DEFAULT_NEGATIVE.get(spec.architecture)
        out = pipe(
            item["prompt"],
            negative_prompt=negative if spec.cfg else None,
            generator=torch.Generator("cpu").manual_seed(item["seed"]),
            num_inference_steps=item["steps"],
            height=item["height"],
            width=item["width"],
            output_type="np",
            **{guidance: spec.guidance_scale},
        ).images[0]
        images.append((out * 255).round())
    return np.stack(images)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_worker_images_are_the_diffusers_pipelines(model: str) -> None:
    runner = group(model, FP32)
    batch = items(2, steps=3)
    batch[1]["negative_prompt"] = "blurry, low quality"  # one row with a negative prompt, one without
    out = runner.run([runner.prepare(i) for i in batch])
    ours = np.stack([o["image"] for o in out]).astype(np.float64)
    with torch.inference_mode():
        theirs = _pipeline_images(batch, runner)
    assert {o["weights"] for o in out} == {"synthetic"}
    assert ours.std() > 1.0  # not a flat image: the comparison means something
    assert np.abs(ours - theirs).max() <= 1.0  # batched (ours) and one by one (theirs): float noise only
    assert np.abs(ours[0] - ours[1]).max() > 10  # two prompts, two seeds: two images


def test_synthetic_tokenizers_keep_the_pipelines_token_counts() -> None:
    """Probe prompts are one token per word, and Qwen-Image's template prefix is the 34 tokens its pipeline drops
    (as with Qwen's own tokenizer), so a synthetic text stage encodes the lengths the catalog assumes; every id
    is inside the text encoder's vocabulary, CLIP's end token last (the pooled output is read at the highest id)."""
    for model_id in ("sd15", "flux-dev", "qwen-image"):
        for tiny in (True, False):
            spec = serving.catalog.models()[model_id]
            pipe = synthetic.pipeline(spec, {}, tiny=tiny)
            prompt = serving.PROBE_PROMPTS[0]
            words = len(prompt.split())
            for comp in (c for s in spec.stages for c in s.components if c.name.startswith("text_encoder")):
                tok = getattr(pipe, comp.name.replace("text_encoder", "tokenizer"))
                ids = tok(prompt).input_ids
                vocab = synthetic._vocab_size(comp, tiny)
                assert max(ids) < vocab
                if comp.class_name.startswith("CLIP"):
                    assert ids == [vocab - 2, *ids[1:-1], vocab - 1]
                    assert len(ids) == words + 2
                elif comp.class_name.startswith("T5"):
                    assert len(ids) == words + 1  # </s>
            if spec.architecture == "qwen-image":
                prefix = pipe.prompt_template_encode.split("{}")[0]
                assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[PreparedStage]:
    """Every PreparedStage stagekit.recipes.prepare makes while the test builds stages."""
    made: list[PreparedStage] = []
    real = recipes.prepare

    def spy(*args: Any, **kwargs: Any) -> PreparedStage:
        result = real(*args, **kwargs)
        made.append(result)
        return result

    monkeypatch.setattr(serving, "prepare", spy)
    return made


def test_worker_modules_are_what_agent_recipes_prepare_built(prepared: list[PreparedStage]) -> None:
    stages = ("text_encoder", "denoiser", "vae_decoder")
    recipes = (("text_encoder", "bf16"), ("denoiser", "bf16-fused-qkv"), ("vae_decoder", "bf16-tiny-vae"))
    runner = GroupRunner.build(GroupSpec("sdxl", stages, recipes, True, "cpu"), SYNTHETIC)
    assert [p.runner.setup.stage for p in prepared] == list(stages)
    for fn, made in zip(runner.fns, prepared, strict=True):
        stage: Any = fn
        assert stage.prepared is made
    pipes: list[Any] = [fn.pipe for fn in runner.fns]  # type: ignore[attr-defined]
    assert pipes[0].text_encoder is prepared[0].modules["text_encoder"]
    assert pipes[0].text_encoder_2 is prepared[0].modules["text_encoder_2"]
    assert pipes[1].unet is prepared[1].modules["unet"]
    unet: Any = pipes[1].unet
    assert "fused QKV projections" in prepared[1].notes
    fused = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert fused
    assert all(getattr(m, "fused_projections", False) for m in fused)
    assert type(runner.fns[2].vae).__name__ == "AutoencoderTiny"  # type: ignore[attr-defined]
    out = runner.run([runner.prepare(i) for i in items(1)])
    assert out[0]["image"].shape == (64, 64, 3)


def test_quantized_recipe_runs_the_agents_int8_layers(prepared: list[PreparedStage]) -> None:
    # the tiny models' layers are narrower than the agent's default eligibility (128 features): lower it
    options = RecipeOptions(quant_min_features=16)
    te = serving.build_stage("flux-dev", "text_encoder", "bf16", True, "cpu")
    dn: Any = serving.build_stage("flux-dev", "denoiser", "int8", True, "cpu", options=options)
    transformer = dn.pipe.transformer
    assert transformer is prepared[-1].modules["transformer"]
    layers = [m for m in transformer.modules() if isinstance(m, quant.Int8DynamicLinear)]
    assert layers
    assert any(f"{len(layers)} Linear layers int8-dynamic" in note for note in prepared[-1].notes)
    out = dn(te(items(2)))
    assert all(o["latents"].shape == (16, 64) and torch.isfinite(o["latents"]).all() for o in out)  # packed


def test_compiling_recipe_is_compiled_by_the_agent(prepared: list[PreparedStage]) -> None:
    stage: Any = serving.build_stage("sd15", "denoiser", "bf16-compile", True, "cpu")
    assert stage.prepared is prepared[-1]
    assert stage.prepared.compiled  # apply_compile() ran (torch.compile is lazy: nothing compiles until a call)
    assert any("compile" in note for note in stage.prepared.notes)


@pytest.mark.parametrize(
    ("model", "stage", "recipe", "reason"),
    [
        ("flux-dev", "denoiser", "fp8", "fp8 matmul needs an NVIDIA GPU"),
        ("flux-dev", "denoiser", "int8", "no Linear layer is eligible"),
        ("sd15", "denoiser", "bf16-fbcache", "no diffusers cache hooks"),
        ("sd15", "text_encoder", "bf16-tiny-vae", "does not apply to stage"),
        ("qwen-image", "vae_decoder", "bf16-tiny-vae", "no tiny VAE"),
        ("sd15", "denoiser", "bf16-sdpa-cudnn", "cuDNN attention backend needs an NVIDIA GPU"),
    ],
)
def test_unsupported_recipes_fail_with_the_agents_reason(model: str, stage: str, recipe: str, reason: str) -> None:
    with pytest.raises(UnsupportedModelError, match=reason):
        serving.build_stage(model, stage, recipe, True, "cpu")


def test_unknown_model_or_recipe() -> None:
    with pytest.raises(UnsupportedModelError, match="not in the catalog"):
        serving.build_stage("no-such-model", "denoiser", "bf16", True, "cpu")
    with pytest.raises(UnsupportedModelError, match="not in the catalog"):
        serving.build_stage("sd15", "denoiser", "bf16-some-new-kernel", True, "cpu")
