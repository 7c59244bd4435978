"""Stage execution: the narrow interface between the worker and the code that builds and runs stage modules.

    build_stage(model_id, stage, recipe, tiny, device) -> StageFn

A `StageFn` takes a batch of item dicts and returns one dict per item (the inputs with its outputs merged in);
it synchronises the device before returning. It may carry `prepare(item) -> item`, the stage's CPU work
(tokenizing), which the worker runs in the job's own thread, off the GPU's critical path; `static_shapes`
(True for a compiled stage: one graph per batch size, so `GroupRunner` pads its batches to the sizes it was
warmed at); and `example_items(n, height, width, steps)`, inputs of its own kind for the warm-up of a group
that begins with it.

Item keys (what flows between stages, and between groups through the intermediates):
- in: `prompt`, `negative_prompt`, `seed`, `height`, `width`, `steps`;
- text_encoder adds `prompt_embeds` (+ `pooled_prompt_embeds` for SDXL and Flux, and the `negative_*` pair for
  CFG models): one tensor per item, (tokens, width); Qwen-Image's and Z-Image's are each prompt's own length;
- denoiser adds `latents`: as the model's pipeline leaves them with `output_type="latent"` (packed tokens for
  Flux and Qwen-Image; (channels, height / 8, width / 8) otherwise), on real and synthetic weights alike;
- vae_decoder adds `image`: (H, W, 3) uint8 numpy array;
- every stage sets `weights`: `real`, or `synthetic` once any stage ran on random weights (the PNG records it).

The stage code is the stage package's (DESIGN.md: the worker runs the same stage code that the agent probes):
`stage_builder(sources)` builds each stage with `stagekit.serving.build_stage` from the model's folder on this
host (`stagekit.sources`: `--model-dir`, `GFP_MODEL_DIRS`), or on random weights where `--synthetic` was asked
for. A no-op builder (`noop_builder`) exercises the whole scheduler without torch (benchmarks, fault tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.core.batching import padded_size
from stagekit.errors import JobError
from stagekit.interface import Item, StageFn
from stagekit.sources import ModelSource, ModelSources

__all__ = [
    "BuildStage",
    "GroupRunner",
    "GroupSpec",
    "Item",
    "NoopStage",
    "StageBuilder",
    "StageFn",
    "default_build_stage",
    "stage_builder",
]

log = logging.getLogger("scheduler.stages")


BuildStage = Callable[[str, str, str, bool, str], StageFn]
"""build_stage(model_id, stage, recipe, tiny, device)."""


@dataclass(frozen=True)
class StageBuilder:
    """Builds a pool's stages from the model folders of this host (imports torch only when called).

    `check(model_id)` resolves and checks the model's folder without loading it (start-up: a pool whose model is
    missing or broken is refused before its queue is taken); it raises `ModelSourceError` naming path and part.
    """

    sources: ModelSources

    def __call__(self, model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
        from stagekit.serving import build_stage

        source = self.sources.source(model_id)
        log.info(
            "model %s stage %s: weights=%s%s",
            model_id,
            stage,
            source.weights,
            f" from {source.folder}" * bool(source.folder),
        )
        return build_stage(model_id, stage, recipe, tiny, device, source=source)

    def check(self, model_id: str) -> ModelSource:
        """The model's source after its folder's layout check (`weights` real or synthetic, `folder`)."""
        return self.sources.source(model_id)


def stage_builder(sources: ModelSources | None = None) -> StageBuilder:
    """The builder for these model sources (default: `GFP_MODEL_DIRS`, no random weights)."""
    return StageBuilder(sources if sources is not None else ModelSources.from_options())


def default_build_stage(model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
    """A stage from the model folders named by `GFP_MODEL_DIRS` (read when called)."""
    return stage_builder()(model_id, stage, recipe, tiny, device)


@dataclass
class NoopStage:
    """A stage that only takes time: `ms` per batch plus `item_ms` per item (a stand-in for GPU work, whose
    time grows with the batch: `busy_s`), then passes items on.

    For exercising the failure paths, a prompt starting with `!fail` makes the batch raise a RuntimeError (as a
    CUDA error would: retried) and one starting with `!bad` a JobError (the request's fault: failed at once).
    """

    stage: str
    ms: float
    calls: int = 0
    static_shapes: bool = False
    sizes: list[int] = field(default_factory=list)  # the batch size of each call
    item_ms: float = 0.0

    def busy_s(self, n: int) -> float:
        """Seconds a call on a batch of n takes."""
        return (self.ms + self.item_ms * n) / 1000

    def __call__(self, batch: Sequence[Item]) -> list[Item]:
        self.calls += 1
        self.sizes.append(len(batch))
        busy = self.busy_s(len(batch))
        if busy > 0:
            time.sleep(busy)
        prompts = [str(item.get("prompt") or "") for item in batch]
        if any(p.startswith("!bad") for p in prompts):
            raise JobError(f"{self.stage}: the request cannot be served (a test's `!bad` prompt)")
        if any(p.startswith("!fail") for p in prompts):
            raise RuntimeError(f"{self.stage}: a transient failure (a test's `!fail` prompt)")
        out = []
        for item in batch:
            item = dict(item)
            if self.stage == "vae_decoder":
                item["image"] = np.full((8, 8, 3), item.get("seed", 0) % 256, dtype=np.uint8)
            else:
                item[f"{self.stage}_done"] = True
            out.append(item)
        return out


def noop_builder(ms: float, item_ms: float = 0.0) -> BuildStage:
    def build(model_id: str, stage: str, recipe: str, tiny: bool, device: str) -> StageFn:
        return NoopStage(stage, ms, item_ms=item_ms)

    return build


@dataclass(frozen=True)
class GroupSpec:
    """What a worker loads for one pool: a model's consecutive stages with one recipe each."""

    model: str
    stages: tuple[str, ...]
    recipes: tuple[tuple[str, str], ...]
    tiny: bool
    device: str

    def recipe(self, stage: str) -> str:
        return dict(self.recipes).get(stage, "fp32" if self.device == "cpu" else "bf16")


def example_items(fn: StageFn, n: int, *, height: int, width: int, steps: int) -> list[Item]:
    """`n` inputs for a group that begins with `fn`: its own `example_items`, or requests (prompt, seed, shape)."""
    own = getattr(fn, "example_items", None)
    if own is not None:
        return list(own(n, height=height, width=width, steps=steps))
    return [
        {"prompt": "a warm-up image", "seed": i, "height": height, "width": width, "steps": steps} for i in range(n)
    ]


@dataclass
class GroupRunner:
    """A pool's stages, built once, run in order on each batch.

    `batch_sizes` (set by the worker from the plan's batch, see `scheduler.batching.shape_batches`) are the sizes
    a static-shape stage runs at: a shorter batch is padded with copies of its last item up to the next size
    for that stage alone, and the copies' outputs are dropped. Eager stages run the batch as it is. A size whose
    warm-up failed (out of memory, a compile error) is not tried again and no batch is padded up to it.
    """

    spec: GroupSpec
    fns: list[StageFn] = field(default_factory=list)
    batch_sizes: tuple[int, ...] = ()
    warmed: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)  # size -> why its warm-up failed

    @classmethod
    def build(cls, spec: GroupSpec, build_stage: BuildStage) -> GroupRunner:
        fns = [build_stage(spec.model, s, spec.recipe(s), spec.tiny, spec.device) for s in spec.stages]
        return cls(spec, fns)

    def prepare(self, item: Item) -> Item:
        """The group's CPU work on one item, in the job's thread."""
        for fn in self.fns:
            prep = getattr(fn, "prepare", None)
            if prep is not None:
                item = prep(item)
        return item

    @property
    def static_shapes(self) -> bool:
        return any(getattr(fn, "static_shapes", False) for fn in self.fns)

    def to_warm(self) -> list[int]:
        """The sizes `warm` would run now: none for a group with no static-shape stage."""
        if not (self.static_shapes and self.fns):
            return []
        return [n for n in self.batch_sizes if n not in self.warmed and n not in self.failed]

    def run(self, batch: Sequence[Item]) -> list[Item]:
        items = list(batch)
        sizes = [s for s in self.batch_sizes if s not in self.failed]
        for fn in self.fns:
            n = len(items)
            size = padded_size(n, sizes) if getattr(fn, "static_shapes", False) else n
            padded = items + [dict(items[-1]) for _ in range(size - n)]
            items = fn(padded)[:n]
        return items

    def warm(self, *, height: int, width: int, steps: int) -> list[int]:
        """Run one batch of each size in `batch_sizes` not run yet (compiling a static-shape stage's graph for it),
        so that no compile happens while jobs wait. Returns the sizes it ran; none for a group with no
        static-shape stage (an eager stage has nothing to compile). A size whose batch fails is noted in `failed`
        and left out (serving then runs such batches at their own size, as without a warm-up)."""
        ran = []
        for n in self.to_warm():
            try:
                self.run(example_items(self.fns[0], n, height=height, width=width, steps=steps))
            except Exception as exc:
                self.failed[n] = f"{type(exc).__name__}: {exc}"
                log.error("%s: the warm-up at batch %d failed: %s", "+".join(self.spec.stages), n, self.failed[n])
                continue
            self.warmed.add(n)
            ran.append(n)
        return ran

    def unload(self) -> None:
        for fn in self.fns:
            close = getattr(fn, "unload", None)
            if close is not None:
                close()
        self.fns.clear()
