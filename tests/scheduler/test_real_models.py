"""A user's own models served end to end: real-format folders, the job API, real Redis, real worker processes.

For every architecture (SD 1.5, SDXL, Flux, Qwen-Image, Z-Image) a tiny diffusers folder (tests/models/
tiny_folders.py: save_pretrained, tokenizers made offline) is named to the workers with `GFP_MODEL_DIRS`, as an
operator would. Jobs run co-located (one pool runs all stages) and split (worker A encodes the text, worker B
denoises and decodes, the embeddings handed over through Redis), and each image must equal, within 1/255 per
pixel, what `DiffusionPipeline.from_pretrained(folder)` makes from the same prompt, seed and steps; different
prompts must give different images, the same seed the same image. Worker A also has two broken pools (a
truncated safetensors file, a missing tokenizer): it refuses them with the path and the part, serves the others,
and takes no job of theirs.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from scheduler.cli import app as scheduler_app
from scheduler.client import JobClient
from scheduler.config import SchedulerSettings
from scheduler.state import SchedulerState
from tests.conftest import BACKENDS
from tests.models.tiny_folders import ARCHITECTURE_MODELS, TinyFolders, copy_folder, reference_image
from tests.scheduler.api_app import TOKEN, make_app
from tests.scheduler.conftest import PoolDef, WorkerProcess, create_plan

pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

STEPS = 2
ALL = ["text_encoder", "denoiser", "vae_decoder"]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def broken_folders(dirs: TinyFolders, root: Path) -> dict[str, tuple[Path, str]]:
    """Model id -> (a broken copy of its folder, the path the error must name)."""
    bad_weights = copy_folder(dirs["sdxl-lightning"], root / "sdxl-lightning-truncated")
    unet = next((bad_weights / "unet").glob("*.safetensors"))
    unet.write_bytes(unet.read_bytes()[:1000])
    no_tokenizer = copy_folder(dirs["flux-schnell"], root / "flux-schnell-no-tokenizer")
    for f in (no_tokenizer / "tokenizer_2").iterdir():
        f.unlink()
    return {"sdxl-lightning": (bad_weights, str(unet)), "flux-schnell": (no_tokenizer, "tokenizer_2")}


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[-1:], indirect=True)  # the job store is not what this tests
def test_real_folders_served_co_located_and_split_equal_the_diffusers_pipeline(
    settings: SchedulerSettings,
    engine: Engine,
    fleet_name: str,
    workers: list[WorkerProcess],
    tmp_path: Path,
    tiny_model_dirs: TinyFolders,
) -> None:
    co = {m: PoolDef(f"co-{m}", 0, "l4-24gb", m, ALL, batch=2) for m in ARCHITECTURE_MODELS}
    te = {m: PoolDef(f"split-{m}", 0, "t4-16gb", m, ["text_encoder"], batch=2) for m in ARCHITECTURE_MODELS}
    dn = {m: PoolDef(f"split-{m}", 1, "l4-24gb", m, ["denoiser", "vae_decoder"], batch=2) for m in ARCHITECTURE_MODELS}
    broken = broken_folders(tiny_model_dirs, tmp_path)
    bad = {m: PoolDef(f"bad-{m}", 0, "l4-24gb", m, ALL, batch=1) for m in broken}
    pools = [*co.values(), *te.values(), *dn.values(), *bad.values()]
    create_plan(engine, fleet_name, pools, sizes={p.workload: (64, 64, STEPS) for p in pools})
    env = {
        "GFP_MODEL_DIRS": ",".join(
            [tiny_model_dirs.env(*ARCHITECTURE_MODELS), *(f"{m}={folder}" for m, (folder, _) in broken.items())]
        )
    }
    real = settings.model_copy(update={"synthetic": False, "model_cache_size": 12})
    a_pools = [p.name for p in (*co.values(), *te.values(), *bad.values())]
    a = WorkerProcess(real, a_pools, name=f"a-{uuid.uuid4().hex[:6]}@t", log_path=tmp_path / "a.log", env=env)
    b_pools = [p.name for p in dn.values()]
    b = WorkerProcess(real, b_pools, name=f"b-{uuid.uuid4().hex[:6]}@t", log_path=tmp_path / "b.log", env=env)
    workers.extend([a, b])
    a.wait_ready(400)
    b.wait_ready(400)

    # the broken pools are refused with the path and the part; the worker serves the rest
    log = a.log()
    for m, (_, named) in broken.items():
        assert f"pool {bad[m].name} refused" in log, log[-4000:]
        assert named in log
    assert "corrupt safetensors file" in log
    # ... and say so in their heartbeat too: the worker registry an operator (or the rebalancer) reads
    state = SchedulerState(redis.Redis.from_url(real.state_redis_url), real.key_prefix)
    registry = {w.name: w for w in state.workers()}
    refused = registry[a.name].refused
    assert set(refused) == {bad[m].name for m in broken}
    for m, (_, named) in broken.items():
        assert named in refused[bad[m].name]
    assert "part 'tokenizer_2'" in log
    # `scheduler workers` shows an operator the same, and exits 1 while a pool is refused.
    shown = CliRunner().invoke(
        scheduler_app,
        ["workers"],
        env={"SCHEDULER_REDIS_URL": real.state_redis_url, "SCHEDULER_KEY_PREFIX": real.key_prefix},
    )
    assert shown.exit_code == 1, shown.output
    listed = {w["name"]: w for w in json.loads(shown.stdout)}
    assert set(listed[a.name]["refused"]) == set(refused)
    assert "part 'tokenizer_2'" in shown.stdout
    assert "weights=real" in log
    assert "weights=synthetic" not in log

    jobs = {  # (workload, prompt, seed, negative prompt)
        "A": ("a red cat sitting in the garden", 1, None),
        "B": ("a photo of the moon at night", 1, "blurry"),
        "C": ("a red cat sitting in the garden", 1, None),  # A again: the same seed gives the same image
    }
    with TestClient(make_app(settings, engine)) as http:
        client = JobClient(token=TOKEN, client=http)
        submitted = {
            (kind, m, key): client.submit(
                workload=f"{kind}-{m}", prompt=p, seed=s, negative_prompt=n, height=64, width=64, steps=STEPS
            )
            for m in ARCHITECTURE_MODELS
            for kind in ("co", "split")
            for key, (p, s, n) in jobs.items()
        }
        refused = client.submit(workload="bad-sdxl-lightning", prompt="a red cat", seed=1, steps=STEPS)
        images = {}
        for k, job in submitted.items():
            done = client.wait(job.id, timeout_s=400, poll_s=0.25)
            assert done.state == "done", (k, done, a.log()[-3000:], b.log()[-3000:])
            assert done.weights == "real"  # the job's row says which weights made it
            png = client.result(job.id)
            assert Image.open(io.BytesIO(png)).text == {"weights": "real", "model": k[1], "seed": "1"}
            images[k] = pixels(png)
        assert client.get(refused.id).state == "queued"  # no worker took it; nothing crashed
    assert a.proc.poll() is None
    assert b.proc.poll() is None

    for m in ARCHITECTURE_MODELS:
        folder = tiny_model_dirs[m]
        for key in ("A", "B"):
            p, s, n = jobs[key]
            ref = reference_image(folder, m, prompt=p, seed=s, steps=STEPS, negative_prompt=n)
            for kind in ("co", "split"):
                assert images[(kind, m, key)].shape == (64, 64, 3)
                assert max_diff(images[(kind, m, key)], ref) <= 1, (m, kind, key, max_diff(images[(kind, m, key)], ref))
        for kind in ("co", "split"):
            ab, ac = (
                max_diff(images[(kind, m, "A")], images[(kind, m, "B")]),
                max_diff(*(images[(kind, m, k)] for k in "AC")),
            )
            assert ab > 2, (m, kind, ab)  # prompts matter: beyond the equality tolerance (tiny random weights)
            assert ac <= 1, (m, kind, ac)  # the same seed gives the same image


def test_a_compiled_denoiser_on_a_real_folder_pads_to_warmed_sizes_and_matches_eager(
    tiny_model_dirs: TinyFolders,
) -> None:
    """Qwen-Image: batches padded to the warmed sizes, text padded to a warmed length and masked (what the pipeline
    does not do), the same images as the eager stage (bf16 both; `eager` compile backend: graphs and guards
    without code generation, a CPU test)."""
    from scheduler.stages import GroupRunner, GroupSpec
    from stagekit.recipes import RecipeOptions
    from stagekit.serving import build_stage
    from stagekit.sources import ModelSources

    m = "qwen-image"
    source = ModelSources({m: tiny_model_dirs[m]}).source(m)
    te = build_stage(m, "text_encoder", "fp32", True, "cpu", source=source)
    vae = build_stage(m, "vae_decoder", "fp32", True, "cpu", source=source)
    eager = build_stage(m, "denoiser", "bf16", True, "cpu", source=source)
    options = RecipeOptions(compile_backend="eager")
    compiled = build_stage(m, "denoiser", "bf16-compile", True, "cpu", source=source, options=options)
    group = GroupRunner(GroupSpec(m, ("denoiser", "vae_decoder"), (), True, "cpu"), [compiled, vae], batch_sizes=(2, 4))
    assert group.warm(height=64, width=64, steps=STEPS) == [2, 4]
    prompts = ["a red cat", "a photo of the moon at night in the city", "cat"]
    items = te([{"prompt": p, "seed": i, "height": 64, "width": 64, "steps": STEPS} for i, p in enumerate(prompts)])
    padded = group.run(items)  # 3 items padded to the warmed 4
    plain = vae(eager(items))
    assert len(padded) == 3
    for a, b in zip(padded, plain, strict=True):
        assert max_diff(a["image"], b["image"]) <= 1
