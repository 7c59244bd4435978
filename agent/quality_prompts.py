"""The fixed prompt set of the quality probe (issue 26): varied subjects, so a recipe that hurts one kind of image
(faces, small text, fine texture, flat colour, night scenes) shows it. Fixed and versioned: a changed set changes
every number measured with it, so the probe records `PROMPT_SET` with its results."""

from __future__ import annotations

PROMPT_SET = "gfp-quality-v1"

PROMPTS: tuple[str, ...] = (
    "a close-up portrait of an elderly fisherman with a weathered face, natural window light",
    "a red fox curled up asleep in fresh snow, morning light, shallow depth of field",
    "a street sign that reads OPEN 24 HOURS above a small corner shop at night",
    "a bowl of ramen with a soft-boiled egg, green onions and chili oil, overhead shot",
    "a gothic cathedral facade with intricate stone carvings, symmetrical, overcast sky",
    "a watercolor painting of a lighthouse on a cliff during a storm",
    "a macro photograph of a dragonfly wing showing its fine vein pattern",
    "a vintage red sports car parked on a cobblestone street in the rain",
    "a child flying a yellow kite on a grassy hill under a blue sky with clouds",
    "a flat vector illustration of a rocket launching, three colors, minimal design",
    "a crowded night market with paper lanterns, steam rising from food stalls",
    "a still life of glass bottles and lemons on a linen cloth, oil painting style",
    "an aerial view of a winding river through an autumn forest",
    "a golden retriever puppy wearing a tiny knitted sweater, studio photo",
    "a futuristic city skyline at dusk with flying vehicles and neon reflections",
    "a hand-written chalkboard menu in a cafe listing coffee prices",
    "a snowy mountain range reflected in a perfectly still alpine lake",
    "a pencil sketch of a cat sitting on a windowsill, cross-hatching",
)
