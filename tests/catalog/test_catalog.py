"""The shipped catalogs: they load, their facts hang together, and every architecture config builds.

Three layers, cheapest first:
- data only (no torch): the YAML files validate, NVML patterns pick exactly one family, the configs keep
  the pipelines' contracts (latent channels, VAE scale factor, text width, Flux/Qwen 2x2 packing);
- full configs on the meta device: each builds with its real class and has the catalog's parameter count;
- tiny configs on the CPU with random weights: each builds fast, and text_encoder -> one denoiser step ->
  vae_decoder runs end to end with the right shapes (the plumbing below mirrors the diffusers pipelines).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from planner.catalog import (
    STAGES,
    Component,
    ModelSpec,
    component_config,
    gpu_families,
    match_family,
    models,
    recipes,
)
from planner.catalog.loader import DATA_DIR
from planner.core.errors import CatalogError

REQUIRED_FAMILIES = [
    "t4-16gb", "l4-24gb", "a10g-24gb", "a10-24gb", "l40s-48gb", "rtx-6000-ada-48gb", "rtx-pro-6000-96gb",
    "a100-40gb", "a100-80gb", "h100-sxm-80gb", "h100-pcie-80gb", "h200-141gb", "b200-180gb", "mi300x-192gb",
]  # fmt: skip
REQUIRED_MODELS = [
    "sd15", "sdxl", "sdxl-lightning", "flux-dev", "flux-schnell", "qwen-image", "qwen-image-lightning",
    "z-image-turbo",
]  # fmt: skip
REQUIRED_RECIPES = [
    "fp32", "fp16", "bf16", "bf16-compile", "bf16-compile-max-autotune", "fp8", "fp8-compile", "int8",
    "int8-compile", "bf16-sdpa-flash", "bf16-sdpa-efficient", "bf16-sdpa-cudnn", "bf16-fused-qkv",
    "bf16-channels-last", "bf16-fbcache", "bf16-fbcache-compile", "bf16-tiled-vae", "bf16-tiny-vae",
    "fp16-tiny-vae",
]  # fmt: skip
# Product names that belong to no catalog family: a near miss must not be priced as its neighbour.
FOREIGN_PRODUCTS = [
    "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA L40", "Quadro RTX 6000", "NVIDIA GeForce RTX 4090",
    "NVIDIA A40", "NVIDIA RTX A6000", "NVIDIA GH200 480GB", "AMD Instinct MI250X",
]  # fmt: skip


# --------------------------------------------------------------------------------------------- helpers
def _all_components(spec: ModelSpec) -> Iterator[Component]:
    for stage in spec.stages:
        yield from stage.components
    if spec.tiny_vae is not None:
        yield from spec.tiny_vae.components


def _unique_components() -> dict[str, Component]:
    """One entry per distinct (class, config) pair: shared configs are built once."""
    out: dict[str, Component] = {}
    for spec in models().values():
        for comp in _all_components(spec):
            out.setdefault(f"{comp.class_name}:{comp.config}", comp)
    return out


def _component_class(comp: Component) -> Any:
    if comp.library == "diffusers":
        import diffusers

        return getattr(diffusers, comp.class_name)
    import transformers

    return getattr(transformers, comp.class_name)


def _build(comp: Component, cfg: dict[str, Any]) -> torch.nn.Module:
    """How the agent builds a module from a catalog config (metadata keys `_...` are not config fields)."""
    cls = _component_class(comp)
    if comp.library == "diffusers":
        module: torch.nn.Module = cls.from_config(cfg)
        return module
    fields = {k: v for k, v in cfg.items() if not k.startswith("_")}
    built: torch.nn.Module = cls(cls.config_class(**fields))
    return built


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _text_width(spec: ModelSpec, *, tiny: bool) -> tuple[int, int | None]:
    """(width of the denoiser's text context, width of the pooled vector) the text encoders produce."""
    encs = spec.stage("text_encoder").components
    cfgs = {c.name: component_config(c, tiny=tiny) for c in encs}
    hidden = {name: int(cfg["hidden_size"] if "hidden_size" in cfg else cfg["d_model"]) for name, cfg in cfgs.items()}
    if spec.architecture == "sd":
        return hidden["text_encoder"], None
    if spec.architecture == "sdxl":
        return hidden["text_encoder"] + hidden["text_encoder_2"], int(cfgs["text_encoder_2"]["projection_dim"])
    if spec.architecture == "flux":
        return hidden["text_encoder_2"], hidden["text_encoder"]  # T5 sequence, CLIP pooler_output
    return hidden["text_encoder"], None


def _vae_downscale(cfg: dict[str, Any]) -> int:
    if cfg["_class_name"] == "AutoencoderKL":
        return int(2 ** (len(cfg["block_out_channels"]) - 1))
    if cfg["_class_name"] == "AutoencoderTiny":
        return int(cfg.get("upsampling_scaling_factor", 2) ** (len(cfg["decoder_block_out_channels"]) - 1))
    if cfg["_class_name"] == "AutoencoderKLQwenImage":
        return int(2 ** (len(cfg.get("dim_mult", [1, 2, 4, 4])) - 1))
    raise AssertionError(f"unknown VAE class {cfg['_class_name']}")


def _vae_latent_channels(cfg: dict[str, Any]) -> int:
    return int(cfg["z_dim"] if cfg["_class_name"] == "AutoencoderKLQwenImage" else cfg["latent_channels"])


# ------------------------------------------------------------------------------------------ data only
def test_catalogs_load_and_hold_the_required_ids() -> None:
    assert set(REQUIRED_FAMILIES) <= set(gpu_families())
    assert set(REQUIRED_MODELS) <= set(models())
    assert set(REQUIRED_RECIPES) <= set(recipes())
    assert [r.id for r in recipes().values() if r.reference] == ["bf16"]


def test_defaults_that_other_parts_rely_on() -> None:
    h100 = gpu_families()["h100-sxm-80gb"]
    assert h100.default_price is not None
    assert (h100.default_price.price_per_hour, h100.default_price.provider) == (4.18, "runpod")
    assert h100.memory_gib == pytest.approx(85520809984 / 2**30, abs=0.01)
    assert gpu_families()["h200-141gb"].memory_gib == pytest.approx(143771 / 1024, abs=0.01)
    assert gpu_families()["t4-16gb"].peak_tflops("bf16") is None  # no bf16 on Turing
    assert gpu_families()["a100-80gb"].peak_tflops("fp8") is None
    assert gpu_families()["a100-80gb"].peak_tflops("fp32") == 156  # falls back to tf32
    fbcache = recipes()["bf16-fbcache"]
    assert fbcache.data_dependent
    assert fbcache.cache_threshold
    assert fbcache.stages == ["denoiser"]


@pytest.mark.parametrize("family_id", REQUIRED_FAMILIES)
def test_family_facts_are_sourced_or_marked(family_id: str) -> None:
    fam = gpu_families()[family_id]
    assert fam.prices, "every family has at least one price"
    assert fam.sources
    for price in fam.prices:
        assert price.source
        assert price.as_of
    assert fam.nvml_examples, "give the product names the patterns must match"


@pytest.mark.parametrize("family_id", REQUIRED_FAMILIES)
def test_nvml_patterns_match_own_examples_and_no_other_family(family_id: str) -> None:
    for name in gpu_families()[family_id].nvml_examples:
        for variant in (name, name.upper(), name.lower()):
            found = match_family(variant)
            assert found is not None, f"{variant!r} matches no family"
            assert found.id == family_id, f"{variant!r} -> {found.id}"


@pytest.mark.parametrize("product", FOREIGN_PRODUCTS)
def test_nvml_patterns_leave_other_products_unmatched(product: str) -> None:
    assert match_family(product) is None


@pytest.mark.parametrize("model_id", [*REQUIRED_MODELS, "sdxl-turbo"])
def test_model_configs_keep_the_pipeline_contracts(model_id: str) -> None:
    spec = models()[model_id]
    assert spec.stage_names == list(STAGES)
    assert all(s.tflops_per_call and s.flops_source for s in spec.stages)
    assert all(c.params and c.source for c in _all_components(spec))
    if spec.distilled_from:
        assert spec.distilled_from in models()
    (denoiser,) = spec.stage("denoiser").components
    vaes = list(spec.stage("vae_decoder").components) + (spec.tiny_vae.components if spec.tiny_vae else [])
    for tiny in (False, True):
        dn = component_config(denoiser, tiny=tiny)
        text, pooled = _text_width(spec, tiny=tiny)
        for vae in vaes:
            cfg = component_config(vae, tiny=tiny)
            assert _vae_latent_channels(cfg) == spec.latent_channels, vae.config
            assert _vae_downscale(cfg) == spec.vae_scale_factor, vae.config
        c = spec.latent_channels
        if spec.architecture in ("sd", "sdxl"):
            assert (dn["in_channels"], dn["out_channels"]) == (c, c)
            assert dn["cross_attention_dim"] == text
        if spec.architecture == "sdxl":
            assert pooled is not None
            assert dn["projection_class_embeddings_input_dim"] == pooled + 6 * dn["addition_time_embed_dim"]
        if spec.architecture == "flux":
            assert dn["in_channels"] == 4 * c  # 2x2 packing of the latents
            assert (dn["joint_attention_dim"], dn["pooled_projection_dim"]) == (text, pooled)
            assert dn["guidance_embeds"] == (spec.id == "flux-dev")
            rope = dn.get("axes_dims_rope", [16, 56, 56])  # FluxTransformer2DModel's default
            assert sum(rope) == dn["attention_head_dim"]
        if spec.architecture == "qwen-image":
            assert (dn["in_channels"], dn["out_channels"]) == (4 * c, c)
            assert dn["joint_attention_dim"] == text
            assert sum(dn["axes_dims_rope"]) == dn["attention_head_dim"]
        if spec.architecture == "z-image":
            assert dn["in_channels"] == c
            assert dn["cap_feat_dim"] == text
            assert sum(dn["axes_dims"]) == dn["dim"] // dn["n_heads"]


def test_planner_catalog_imports_no_torch() -> None:
    code = "import sys, planner.catalog as c; c.models(); c.gpu_families(); c.recipes(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------ loader errors
def _write(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def test_loader_error_names_file_entry_and_field(tmp_path: Path) -> None:
    data = _write(
        tmp_path,
        "gpu_families.yaml",
        "families:\n"
        "  - {id: ok-gpu, name: OK, vendor: nvidia, memory_gib: 10, memory_bandwidth_tbps: 1,"
        " tflops: {bf16: 1}, tdp_w: 100}\n"
        "  - {id: bad-gpu, name: Bad, vendor: nvidia, memory_gib: -3, memory_bandwidth_tbps: 1,"
        " tflops: {bf17: 1}, tdp_w: 100, colour: red}\n",
    )
    with pytest.raises(CatalogError) as err:
        gpu_families(data)
    msg = str(err.value)
    assert str(data / "gpu_families.yaml") in msg
    assert "families[1] (id 'bad-gpu') field memory_gib" in msg
    assert "families[1] (id 'bad-gpu') field tflops.bf17" in msg
    assert "families[1] (id 'bad-gpu') field colour" in msg
    assert "ok-gpu" not in msg
    assert msg.rstrip().endswith("load again.")


def test_loader_error_for_duplicates_bad_yaml_and_missing_configs(tmp_path: Path) -> None:
    recipe = "  - {id: bf16, stages: [denoiser]}\n"
    with pytest.raises(CatalogError, match=r"recipes\[1\] \(id 'bf16'\) field id: 'bf16' is defined twice"):
        recipes(_write(tmp_path, "recipes.yaml", "recipes:\n" + recipe + recipe))

    bad_yaml = tmp_path / "yaml"
    bad_yaml.mkdir()
    with pytest.raises(CatalogError, match=r"cannot read catalog .*recipes\.yaml"):
        recipes(_write(bad_yaml, "recipes.yaml", "recipes: [\n"))

    source = (DATA_DIR / "models.yaml").read_text()
    broken = tmp_path / "models"
    broken.mkdir()
    _write(broken, "models.yaml", source.replace("config: sdxl/unet.json", "config: sdxl/unet-missing.json"))
    (broken / "configs").symlink_to(DATA_DIR / "configs")
    with pytest.raises(CatalogError) as err:
        models(broken)
    msg = str(err.value)
    assert str(broken / "models.yaml") in msg
    assert "model 'sdxl' stage denoiser component 'unet' field config: sdxl/unet-missing.json" in msg


def test_schema_rejects_unknown_unverified_names_and_bad_patterns(tmp_path: Path) -> None:
    base = "  - {id: g, name: G, vendor: nvidia, memory_gib: 1, memory_bandwidth_tbps: 1, tflops: {bf16: 1}, tdp_w: 1"
    with pytest.raises(CatalogError, match=r"families\[0\] \(id 'g'\) field .*tflops\.fp8"):
        gpu_families(_write(tmp_path, "gpu_families.yaml", f"families:\n{base}, unverified: [tflops.fp8]}}\n"))
    other = tmp_path / "re"
    other.mkdir()
    with pytest.raises(CatalogError, match=r"field nvml_patterns.*not a valid regex"):
        gpu_families(_write(other, "gpu_families.yaml", f"families:\n{base}, nvml_patterns: ['(H100']}}\n"))


# ------------------------------------------------------------------------------ full configs (meta)
@pytest.mark.parametrize("key", sorted(_unique_components()))
def test_full_config_builds_on_meta_with_catalog_param_count(key: str) -> None:
    comp = _unique_components()[key]
    with torch.device("meta"):
        module = _build(comp, component_config(comp))
    assert type(module).__name__ == comp.class_name
    assert _n_params(module) == comp.params


def test_verified_parameter_counts() -> None:
    """The two counts checked on a GPU (DESIGN.md, h100-baseline.json)."""
    assert models()["sdxl"].stage("denoiser").components[0].params == 2_567_463_684
    assert models()["flux-dev"].stage("denoiser").components[0].params == 11_901_408_320


# ------------------------------------------------------------------------------- tiny configs (CPU)
_TINY_CACHE: dict[str, Any] = {}


def _tiny(comp: Component) -> Any:
    """Build a tiny component once per session; fail if a 'tiny' config is not actually small and fast."""
    key = f"{comp.class_name}:{comp.tiny_config}"
    if key not in _TINY_CACHE:
        _component_class(comp)  # import outside the timed part
        torch.manual_seed(0)
        start = time.process_time()  # CPU time: other load on the machine does not count
        module = _build(comp, component_config(comp, tiny=True)).eval()
        elapsed = time.process_time() - start
        assert elapsed < 2.0, f"tiny {comp.tiny_config} took {elapsed:.2f} s of CPU to build"
        assert _n_params(module) < 5_000_000, f"tiny {comp.tiny_config} is not tiny"
        _TINY_CACHE[key] = module
    return _TINY_CACHE[key]


def _ids(n: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (1, n))  # ids 0-2 are special tokens in the tiny vocabularies


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): the 2x2 patch packing of the Flux and Qwen-Image pipelines."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = tokens.shape
    x = tokens.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def _encode_text(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """text_encoder stage: what each pipeline hands the denoiser."""
    encs = {c.name: (_tiny(c), component_config(c, tiny=True)) for c in spec.stage("text_encoder").components}
    n = spec.tiny.text_tokens
    if spec.architecture == "sd":
        model, cfg = encs["text_encoder"]
        return {"context": model(_ids(n, cfg["vocab_size"])).last_hidden_state}
    if spec.architecture == "sdxl":
        # penultimate layers of both encoders, concatenated; pooled projection of encoder 2
        (m1, c1), (m2, c2) = encs["text_encoder"], encs["text_encoder_2"]
        o1 = m1(_ids(n, c1["vocab_size"]), output_hidden_states=True)
        o2 = m2(_ids(n, c2["vocab_size"]), output_hidden_states=True)
        context = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        return {"context": context, "pooled": o2.text_embeds}
    if spec.architecture == "flux":  # CLIP pooled (always 77 tokens) + T5 sequence
        (clip, cc), (t5, tc) = encs["text_encoder"], encs["text_encoder_2"]
        pooled = clip(_ids(cc["max_position_embeddings"], cc["vocab_size"])).pooler_output
        return {"context": t5(_ids(n, tc["vocab_size"])).last_hidden_state, "pooled": pooled}
    model, cfg = encs["text_encoder"]
    ids = _ids(n, cfg["vocab_size"])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    layer = -1 if spec.architecture == "qwen-image" else -2  # Qwen-Image: last; Z-Image: penultimate
    return {"context": out.hidden_states[layer]}


def _denoise_once(spec: ModelSpec, text: dict[str, torch.Tensor], latents: torch.Tensor) -> torch.Tensor:
    """One denoiser call on (1, C, h, w) latents; returns the prediction in the same layout."""
    (comp,) = spec.stage("denoiser").components
    model = _tiny(comp)
    _, _, h, w = latents.shape
    if spec.architecture == "sd":
        pred: torch.Tensor = model(latents, torch.tensor([999]), encoder_hidden_states=text["context"]).sample
        return pred
    if spec.architecture == "sdxl":
        time_ids = torch.tensor([[spec.tiny.height, spec.tiny.width, 0, 0, spec.tiny.height, spec.tiny.width]])
        cond = {"text_embeds": text["pooled"], "time_ids": time_ids.float()}
        sample: torch.Tensor = model(
            latents, torch.tensor([999]), encoder_hidden_states=text["context"], added_cond_kwargs=cond
        ).sample
        return sample
    if spec.architecture == "flux":
        n_txt = text["context"].shape[1]
        img_ids = torch.zeros(h // 2, w // 2, 3)
        img_ids[..., 1] = torch.arange(h // 2)[:, None]
        img_ids[..., 2] = torch.arange(w // 2)[None, :]
        dev = component_config(comp)["guidance_embeds"]
        guidance = {"guidance": torch.tensor([spec.guidance_scale])} if dev else {}
        out = model(
            hidden_states=_pack(latents),
            timestep=torch.tensor([1.0]),
            pooled_projections=text["pooled"],
            encoder_hidden_states=text["context"],
            txt_ids=torch.zeros(n_txt, 3),
            img_ids=img_ids.reshape(-1, 3),
            **guidance,
        ).sample
        return _unpack(out, h, w)
    if spec.architecture == "qwen-image":
        mask = torch.ones(text["context"].shape[:2], dtype=torch.long)
        out = model(
            hidden_states=_pack(latents),
            timestep=torch.tensor([1.0]),
            encoder_hidden_states=text["context"],
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2)]],
        ).sample
        return _unpack(out, h, w)
    # z-image: lists of (C, frames=1, h, w) latents and (tokens, width) caption features
    frames = list(latents.unsqueeze(2).unbind(0))
    out = model(frames, torch.tensor([0.5]), list(text["context"].unbind(0)))
    return torch.stack(list(out.sample), dim=0).squeeze(2)


def _decode(vae_comp: Component, latents: torch.Tensor) -> torch.Tensor:
    """vae_decoder stage: undo the pipeline's latent scaling, decode, return (1, 3, H, W) pixels."""
    vae = _tiny(vae_comp)
    cfg = component_config(vae_comp, tiny=True)
    if cfg["_class_name"] == "AutoencoderKLQwenImage":  # 5-D latents (B, C, frames, h, w), per-channel stats
        c = latents.shape[1]
        mean = torch.tensor(cfg["latents_mean"]).view(1, c, 1, 1, 1)
        std = torch.tensor(cfg["latents_std"]).view(1, c, 1, 1, 1)
        frames: torch.Tensor = vae.decode(latents.unsqueeze(2) * std + mean).sample
        return frames[:, :, 0]
    scaled = latents / cfg.get("scaling_factor", 1.0) + (cfg.get("shift_factor") or 0.0)
    image: torch.Tensor = vae.decode(scaled).sample
    return image


@pytest.mark.parametrize("model_id", [*REQUIRED_MODELS, "sdxl-turbo"])
def test_tiny_pipeline_runs_end_to_end_on_cpu(model_id: str) -> None:
    spec = models()[model_id]
    h, w = spec.tiny.height // spec.vae_scale_factor, spec.tiny.width // spec.vae_scale_factor
    torch.manual_seed(0)
    with torch.no_grad():
        text = _encode_text(spec)
        width, pooled = _text_width(spec, tiny=True)
        assert text["context"].shape == (1, spec.tiny.text_tokens, width)
        if pooled is not None:
            assert text["pooled"].shape == (1, pooled)
        latents = torch.randn(1, spec.latent_channels, h, w)
        pred = _denoise_once(spec, text, latents)
        assert pred.shape == latents.shape
        assert torch.isfinite(pred).all()
        vae_components = list(spec.stage("vae_decoder").components)
        if spec.tiny_vae is not None:
            vae_components += spec.tiny_vae.components
        for vae_comp in vae_components:
            image = _decode(vae_comp, pred)
            assert image.shape == (1, 3, spec.tiny.height, spec.tiny.width), vae_comp.config
            assert torch.isfinite(image).all()
