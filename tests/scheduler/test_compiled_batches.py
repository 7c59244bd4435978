"""Compiled stages run at a fixed set of batch sizes, compiled before the worker takes jobs.

A compiled stage holds one static-shape graph per batch size: before this, every short batch the batcher formed
under light load compiled a new graph while its jobs waited (the H100 e2e run of 2026-11-26: batches of 2 and 6
each recompiled SDXL's denoiser). Now a worker warms its compiled stages at `shape_batches` and pads a short
batch up to the next warmed size for those stages only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import redis
from sqlalchemy import Engine

from planner.core.batching import padded_size, shape_batches
from scheduler.batching import BatchKey
from scheduler.config import SchedulerSettings
from scheduler.stages import BuildStage, GroupRunner, GroupSpec, Item, NoopStage, StageFn
from scheduler.worker import WorkerRuntime
from tests.scheduler.conftest import PoolDef, create_plan, in_process_worker
from tests.scheduler.stage_helpers import ALL, items


@pytest.mark.parametrize(
    ("limit", "policy", "sizes"),
    [
        (8, "pow2", (1, 2, 4, 8)),
        (6, "pow2", (1, 2, 4, 6)),
        (1, "pow2", (1,)),
        (16, "pow2", (1, 2, 4, 8, 16)),
        (6, "plan", (6,)),
        (6, "off", ()),
    ],
)
def test_shape_batches(limit: int, policy: Any, sizes: tuple[int, ...]) -> None:
    assert shape_batches(limit, policy) == sizes


def test_padded_size_is_the_smallest_size_that_holds_the_batch() -> None:
    assert [padded_size(n, (1, 2, 4, 6)) for n in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    assert padded_size(3, ()) == 3  # no sizes: no padding
    assert padded_size(9, (1, 2, 4, 8)) == 9  # beyond the sizes: as it is


def _noop_group(*, static: str) -> GroupRunner:
    fns: list[StageFn] = [NoopStage(s, 0, static_shapes=s == static) for s in ALL]
    return GroupRunner(GroupSpec("sd15", tuple(ALL), (), True, "cpu"), fns)


def test_only_the_static_stage_is_padded_and_the_padding_is_dropped() -> None:
    runner = _noop_group(static="denoiser")
    runner.batch_sizes = (1, 2, 4, 8)
    batch = items(5)
    out = runner.run(batch)
    te, dn, vae = runner.fns
    assert (te.sizes, dn.sizes, vae.sizes) == ([5], [8], [5])  # type: ignore[attr-defined]
    assert [o["seed"] for o in out] == [b["seed"] for b in batch]


def test_warm_runs_each_size_once_and_only_for_static_stages() -> None:
    runner = _noop_group(static="denoiser")
    runner.batch_sizes = (1, 2, 4)
    assert runner.warm(height=64, width=64, steps=2) == [1, 2, 4]
    runner.batch_sizes = (1, 2, 4, 8)  # the plan raised the batch: only the new size is compiled
    assert runner.warm(height=64, width=64, steps=2) == [8]
    assert runner.fns[1].sizes == [1, 2, 4, 8]  # type: ignore[attr-defined]
    eager = _noop_group(static="none")
    eager.batch_sizes = (1, 2, 4)
    assert eager.warm(height=64, width=64, steps=2) == []
    assert eager.fns[0].calls == 0  # type: ignore[attr-defined]


def _compiled_pool_worker(
    settings: SchedulerSettings,
    engine: Engine,
    redis_client: redis.Redis,
    build: BuildStage,
    *,
    concurrency: int,
) -> tuple[PoolDef, WorkerRuntime]:
    """An in-process worker for one sd15 pool of batch 4 whose denoiser is compiled (`build` makes its stages)."""
    pooldef = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, batch=4, recipes={"denoiser": "bf16-compile"})
    runtime = in_process_worker(
        settings, engine, redis_client, pooldef, build, name="compiled@t", concurrency=concurrency
    )
    return pooldef, runtime


@pytest.mark.redis
def test_worker_warms_before_taking_jobs_and_follows_the_plans_batch(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, redis_client: redis.Redis
) -> None:
    made: list[NoopStage] = []

    def build(model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
        made.append(NoopStage(stage, 0, static_shapes=recipe.endswith("compile")))
        return made[-1]

    pooldef, runtime = _compiled_pool_worker(settings, engine, redis_client, build, concurrency=32)
    runtime.start(preload=True)
    try:
        te, dn, vae = made
        assert dn.sizes == [1, 2, 4]  # compiled at every size before the first job
        key = BatchKey(pooldef.name, 64, 64, 2)
        assert runtime.pools.prepare(key) == 0.0  # nothing left to warm
        out = runtime.pools.run_batch(key, items(3))
        assert len(out) == 3
        assert (te.sizes[-1], dn.sizes[-1], vae.sizes[-1]) == (3, 4, 3)
        create_plan(engine, fleet_name, [PoolDef(**{**pooldef.__dict__, "batch": 16})])
        runtime.tick()
        runtime.pools.prepare(key)  # before the next batch: only the sizes the larger batch adds
        added = [n for n in shape_batches(runtime.pools.max_batch(pooldef.name), "pow2") if n > 4]
        assert added
        assert dn.sizes == [1, 2, 4, 4, *added]
    finally:
        runtime.stop()


class _OomAt(NoopStage):
    """A compiled stage that runs out of memory at batches of `oom_at` or more."""

    oom_at = 4

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        if len(batch) >= self.oom_at:
            self.sizes.append(len(batch))
            raise RuntimeError(f"CUDA out of memory (a batch of {len(batch)})")
        return super().__call__(batch)


@pytest.mark.redis
@pytest.mark.parametrize("preload", [True, False], ids=["at-start", "at-swap"])
def test_a_warm_up_that_fails_at_one_size_leaves_the_sizes_that_fit_serving(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, redis_client: redis.Redis, preload: bool
) -> None:
    """Warming the plan's batch fails (out of memory, a compile error): the worker still serves the batches that
    fit, as it did before warm-ups (it neither fails to start nor fails every batch of the pool retrying the
    warm-up), and does not pad a short batch up to the size that failed."""
    made: list[NoopStage] = []

    def build(model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
        compiled = recipe.endswith("compile")
        made.append(_OomAt(stage, 0, static_shapes=True) if compiled else NoopStage(stage, 0))
        return made[-1]

    pooldef, runtime = _compiled_pool_worker(settings, engine, redis_client, build, concurrency=8)
    runtime.start(preload=preload)
    try:
        key = BatchKey(pooldef.name, 64, 64, 2)
        for n in (1, 3, 2):
            runtime.pools.prepare(key)
            out = runtime.pools.run_batch(key, items(n))
            assert len(out) == n
        dn = made[1]
        assert dn.sizes.count(4) == 1  # the failed size was tried once, at the warm-up
        assert dn.sizes[-3:] == [1, 3, 2]  # the batch of 3 ran as it is, not padded to the size that failed
    finally:
        runtime.stop()


torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from stagekit import serving  # noqa: E402
from stagekit.recipes import RecipeOptions  # noqa: E402


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sd15", "flux-dev"])
def test_a_short_batch_after_warm_up_compiles_nothing(model: str) -> None:
    """The real tiny models, the denoiser compiled (dynamo's eager backend: the same guards and graphs as
    inductor, no code generation): warmed at 1, 2, 4, a batch of 3 runs padded to 4 with no new graph, and
    its images are those of the same jobs run unpadded."""
    torch._dynamo.reset()
    options = RecipeOptions(compile_backend="eager")
    fns: list[StageFn] = [
        serving.build_stage(model, "text_encoder", "bf16", True, "cpu"),
        serving.build_stage(model, "denoiser", "bf16-compile", True, "cpu", options=options),
        serving.build_stage(model, "vae_decoder", "bf16", True, "cpu"),
    ]
    assert [getattr(fn, "static_shapes", False) for fn in fns] == [False, True, False]
    runner = GroupRunner(GroupSpec(model, tuple(ALL), (), True, "cpu"), fns)
    runner.batch_sizes = (1, 2, 4)
    assert runner.warm(height=64, width=64, steps=2) == [1, 2, 4]
    warmed = _graphs()
    assert warmed > 0
    batch = [runner.prepare(i) for i in items(3, negative="blurry")]
    padded = runner.run(batch)
    assert _graphs() == warmed  # the batch of 3 ran on the graphs compiled for 4
    assert len(padded) == 3
    runner.batch_sizes = ()  # the old behaviour: the batch runs at its own size, and compiles for it
    unpadded = runner.run(batch)
    assert _graphs() > warmed
    for a, b in zip(padded, unpadded, strict=True):
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).max() <= 2
    torch._dynamo.reset()


def test_text_bucket() -> None:
    assert [serving.text_bucket(n, 16) for n in (1, 16, 17, 32, 33, 100)] == [16, 16, 32, 32, 64, 128]
    assert serving.text_bucket(5000, 16) == 5000  # beyond the longest sequence: as it is


@pytest.mark.slow
def test_qwen_image_compiled_denoiser_sees_few_text_lengths() -> None:
    """Qwen-Image's conditioning is each prompt's own length; a compiled denoiser gets it padded (masked) to the
    probe's text length or a doubling of it, so prompts of new lengths within a bucket compile nothing, and the
    images are the unpadded ones."""
    torch._dynamo.reset()
    options = RecipeOptions(compile_backend="eager")
    te: Any = serving.build_stage("qwen-image", "text_encoder", "bf16", True, "cpu")
    dn = serving.build_stage("qwen-image", "denoiser", "bf16-compile", True, "cpu", options=options)
    vae = serving.build_stage("qwen-image", "vae_decoder", "bf16", True, "cpu")
    compiled = GroupRunner(GroupSpec("qwen-image", tuple(ALL), (), True, "cpu"), [te, dn, vae])
    compiled.batch_sizes = (2,)
    compiled.warm(height=64, width=64, steps=2)
    base = te.prepared.runner.setup.text_tokens

    def batch(words: int) -> list[dict[str, Any]]:
        return [dict(i, prompt=" ".join(["fox"] * words) + f" {k}") for k, i in enumerate(items(2))]

    def length(b: list[dict[str, Any]]) -> int:
        """The longest prompt conditioning of the batch (its tokens and the template's closing ones)."""
        return max(int(o["prompt_embeds"].shape[0]) for o in te(b))

    short = [batch(2), batch(base // 2)]  # both within the probe's length
    long = [batch(base + 2), batch(base + base // 2)]  # both within its double
    assert len({length(b) for b in short}) == 2
    assert all(length(b) <= base for b in short)
    assert len({length(b) for b in long}) == 2
    assert all(base < length(b) <= 2 * base for b in long)
    warmed = _graphs()
    out = [compiled.run([compiled.prepare(i) for i in b]) for b in short]
    assert _graphs() == warmed  # the warm-up's length served both
    out += [compiled.run([compiled.prepare(i) for i in long[0]])]
    doubled = _graphs()
    assert doubled == warmed + 1  # one graph for the doubled length
    out += [compiled.run([compiled.prepare(i) for i in long[1]])]
    assert _graphs() == doubled
    assert len(out) == 4
    torch._dynamo.reset()


def test_qwen_image_padded_text_gives_the_unpadded_images() -> None:
    """The padding is masked: in fp32, a denoiser that pads the text (as a compiled one does) gives the images of
    one that does not (unmasked zeros would move them: mean 0.37 per pixel on the tiny model)."""
    te = serving.build_stage("qwen-image", "text_encoder", "fp32", True, "cpu")
    vae = serving.build_stage("qwen-image", "vae_decoder", "fp32", True, "cpu")
    plain = serving.build_stage("qwen-image", "denoiser", "fp32", True, "cpu")
    padded: Any = serving.build_stage("qwen-image", "denoiser", "fp32", True, "cpu")
    padded.static_shapes = True
    batch = [dict(i, prompt=f"fox fox {k}") for k, i in enumerate(items(2))]
    images = []
    for dn in (plain, padded):
        runner = GroupRunner(GroupSpec("qwen-image", tuple(ALL), (), True, "cpu"), [te, dn, vae])
        images.append([o["image"].astype(int) for o in runner.run([runner.prepare(i) for i in batch])])
    for a, b in zip(*images, strict=True):
        assert np.abs(a - b).max() <= 1
        assert np.abs(a - b).mean() < 0.01


@pytest.mark.slow
def test_compiled_sdxl_text_encoder_with_some_negative_prompts_compiles_nothing() -> None:
    """SDXL encodes negatives only for the items that have one (an absent one is zeros): a compiled text
    encoder warmed at 1, 2, 4 must not see a negative pass of 3 rows when 3 of a batch of 4 have one."""
    torch._dynamo.reset()
    options = RecipeOptions(compile_backend="eager")
    te: StageFn = serving.build_stage("sdxl", "text_encoder", "bf16-compile", True, "cpu", options=options)
    runner = GroupRunner(GroupSpec("sdxl", ("text_encoder",), (), True, "cpu"), [te])
    runner.batch_sizes = (1, 2, 4)
    assert runner.warm(height=64, width=64, steps=2) == [1, 2, 4]
    warmed = _graphs()
    batch = items(4, negative="blurry")
    batch[0]["negative_prompt"] = None  # three of four have a negative prompt
    out = runner.run([runner.prepare(i) for i in batch])
    assert len(out) == 4
    assert _graphs() == warmed, f"{_graphs() - warmed} graph(s) compiled while serving"
    torch._dynamo.reset()


@pytest.mark.slow
def test_compiled_qwen_image_text_encoder_compiles_nothing_for_new_prompt_lengths() -> None:
    """Qwen-Image's tokenizer pads a batch to its longest prompt: a compiled text encoder warmed at load must
    serve prompts of other lengths (and the empty negative prompt) on the warmed graphs."""
    torch._dynamo.reset()
    options = RecipeOptions(compile_backend="eager")
    te: StageFn = serving.build_stage("qwen-image", "text_encoder", "bf16-compile", True, "cpu", options=options)
    runner = GroupRunner(GroupSpec("qwen-image", ("text_encoder",), (), True, "cpu"), [te])
    runner.batch_sizes = (2,)
    assert runner.warm(height=64, width=64, steps=2) == [2]
    warmed = _graphs()
    for words in (1, 3, 6):
        batch = [dict(i, prompt=" ".join(["fox"] * words)) for i in items(2)]
        assert len(runner.run([runner.prepare(i) for i in batch])) == 2
    assert _graphs() == warmed, f"{_graphs() - warmed} graph(s) compiled while serving"
    torch._dynamo.reset()


@pytest.mark.parametrize("model", ["sdxl", "qwen-image"])
def test_a_static_shape_text_encoder_gives_the_plain_ones_embeddings(model: str) -> None:
    """What a compiled text encoder does to keep its shapes (negatives of the whole batch, Qwen-Image's ids padded
    to a bucket) leaves each item's embeddings as they were (fp32)."""
    plain: Any = serving.build_stage(model, "text_encoder", "fp32", True, "cpu")
    static: Any = serving.build_stage(model, "text_encoder", "fp32", True, "cpu")
    static.static_shapes = True
    batch = items(3, negative="blurry")
    batch[1]["negative_prompt"] = None
    a, b = (fn(batch) for fn in (plain, static))
    for x, y in zip(a, b, strict=True):
        assert sorted(x) == sorted(y)
        for k, v in x.items():
            if isinstance(v, torch.Tensor):
                assert v.shape == y[k].shape, k
                assert torch.allclose(v, y[k], atol=1e-5), k
