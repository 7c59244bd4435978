"""The stage code on the catalog's tiny models (CPU): a split topology gives the co-located result."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler import codec
from scheduler.stages import GroupRunner, GroupSpec, default_build_stage

pytest.importorskip("torch")

ALL = ("text_encoder", "denoiser", "vae_decoder")


def items(n: int) -> list[dict[str, object]]:
    return [
        {"prompt": f"a cat number {i}", "negative_prompt": None, "seed": 100 + i, "height": 64, "width": 64, "steps": 2}
        for i in range(n)
    ]


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_split_topology_matches_co_located(model: str) -> None:
    whole = GroupRunner.build(GroupSpec(model, ALL, (), True, "cpu"), default_build_stage)
    first = GroupRunner.build(GroupSpec(model, ("text_encoder",), (), True, "cpu"), default_build_stage)
    rest = GroupRunner.build(GroupSpec(model, ("denoiser", "vae_decoder"), (), True, "cpu"), default_build_stage)
    batch = items(2)
    together = whole.run([whole.prepare(i) for i in batch])
    # through the intermediates' bytes, as between two workers
    handed = [codec.unpack(codec.pack(o)) for o in first.run([first.prepare(i) for i in batch])]
    apart = rest.run(handed)
    for a, b in zip(together, apart, strict=True):
        assert a["image"].shape == (64, 64, 3)
        assert a["image"].dtype == np.uint8
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).max() <= 1
    # seeds matter, prompts matter
    assert not np.array_equal(together[0]["image"], together[1]["image"])


def test_recipe_names_a_dtype_and_tiny_vae() -> None:
    runner = GroupRunner.build(
        GroupSpec("sd15", ("vae_decoder",), (("vae_decoder", "bf16-tiny-vae"),), True, "cpu"), default_build_stage
    )
    vae = runner.fns[0]
    assert type(next(iter(vae.modules.values()))).__name__ == "AutoencoderTiny"  # type: ignore[attr-defined]
