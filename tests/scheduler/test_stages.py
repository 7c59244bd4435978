"""The worker's stage code on the catalog's tiny models (CPU), every architecture, two recipes per stage.

text_encoder -> denoiser (2 steps) -> vae_decoder gives uint8 (64, 64, 3) images, the same for a seed, other
for another seed; each stage keeps its recipe's precision on the CPU; a split topology (the intermediates'
bytes between two separately built groups, as between two workers) gives the co-located result.
"""

from __future__ import annotations

import numpy as np
import pytest

from scheduler import codec
from tests.scheduler.stage_helpers import ALL, BF16, FP32, MIXED, MODELS, group, items

torch = pytest.importorskip("torch")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["bf16", "mixed"])
@pytest.mark.parametrize("model", MODELS)
def test_every_architecture_serves_images(model: str, variant: str) -> None:
    recipes = BF16 if variant == "bf16" else MIXED[model]
    runner = group(model, recipes)
    batch = items(2)
    out = runner.run([runner.prepare(i) for i in batch])
    for o in out:
        assert o["image"].shape == (64, 64, 3)
        assert o["image"].dtype == np.uint8
        assert set(o) == {*batch[0], "image", "weights"}  # conditioning and latents do not leak into the result
        assert o["weights"] == "synthetic"
    again = runner.run([runner.prepare(i) for i in batch])
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(out, again, strict=True))
    swapped = runner.run([runner.prepare(i) for i in reversed(batch)])  # other batch order: same images
    assert np.abs(out[0]["image"].astype(int) - swapped[1]["image"].astype(int)).max() <= 1
    assert not np.array_equal(out[0]["image"], out[1]["image"])  # another seed (and prompt), another image
    # the recipe's precision is kept on the CPU (fp32 only where the recipe says fp32)
    for stage, fn in zip(ALL, runner.fns, strict=True):
        precision = dict(recipes)[stage].split("-")[0]
        params = [p for m in fn.modules.values() for p in m.parameters()]  # type: ignore[attr-defined]
        assert {p.dtype for p in params} == {DTYPES[precision]}, (stage, dict(recipes)[stage])


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_split_topology_matches_co_located(model: str) -> None:
    whole = group(model, FP32)
    first = group(model, FP32, ("text_encoder",))
    rest = group(model, FP32, ("denoiser", "vae_decoder"))
    batch = items(2)
    together = whole.run([whole.prepare(i) for i in batch])
    # through the intermediates' bytes, as between two workers
    handed = [codec.unpack(codec.pack(o)) for o in first.run([first.prepare(i) for i in batch])]
    apart = rest.run(handed)
    for a, b in zip(together, apart, strict=True):
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).max() <= 1


def test_recipe_names_the_tiny_vae() -> None:
    runner = group("sd15", (("vae_decoder", "bf16-tiny-vae"),), ("vae_decoder",))
    vae = runner.fns[0]
    assert type(next(iter(vae.modules.values()))).__name__ == "AutoencoderTiny"  # type: ignore[attr-defined]
