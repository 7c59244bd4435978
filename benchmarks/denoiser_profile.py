"""Where does a denoiser step's time go? Kernel time by kind (GEMM, convolution, attention, norms, fused and
elementwise passes), next to the FLOPs of each kind, for the recipes behind the SDXL and Flux aims.

Why: the speed aims (docs/benchmarks.md) stop short with the denoiser well under the matmul ceiling; this says
which part of the step is not matmul work (the runs: benchmarks/results/denoiser-profile/README.md).

It builds the denoiser as the probe does (synthetic weights, the catalog's recipe applied by
stagekit.recipes.prepare), times one call (wall clock, median of 3 windows of 3 calls after 3
warm-up calls), then profiles 2 calls with torch.profiler and sums each kernel's device time into a kind by its
name. FLOPs per kind come from torch's FlopCounterMode on the eager module (1 MAC = 2 FLOPs), so each kind gets
an achieved TFLOP/s. A variant is a catalog recipe id (`bf16`, `bf16-compile`, `fp8-compile`, ...), or a recipe
id followed by `-compile-whole`: that recipe with the whole module compiled (default mode, static shapes);
either may end in modifiers: `+fast-gemm` (fp8 layers with fast accumulation and the bias in the GEMM),
`+cudagraphs` (compile mode "reduce-overhead") and `+static-scales` (fp8 activation scales fixed ahead of time:
benchmarks/fp8_static.py), e.g. `fp8-compile-whole+fast-gemm+cudagraphs`.
The default variants are SDXL's:

- `bf16`: eager bf16 (the shipped `bf16` cells);
- `bf16-compile`: the shipped `bf16-compile` recipe: diffusers' regional compile (`compile_repeated_blocks`),
  which for a UNet compiles only the transformer blocks; the ResNet blocks (GroupNorm, SiLU, convolutions)
  stay eager;
- `bf16-compile-whole`: bf16 with the whole module compiled;
- `bf16-channels-last-compile-whole`: channels_last memory format, then the whole module compiled.

    PYTHONPATH=. python3 benchmarks/denoiser_profile.py [--model sdxl] [--batches 16] [--variants ...] [--out DIR]

A recipe this machine cannot run (fp8 without an fp8 GPU) is reported and left out. On a machine without a GPU
it refuses, unless `--tiny` (the catalog's tiny config on the CPU, for tests: kinds from the CPU operators' self
time). Writes denoiser-profile.json (with the machine and every kernel's time) to $OUT or --out; `--report FILE`
prints a saved one as a markdown table, kinds re-derived from the kernels (`--plot PNG` draws it too).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_VARIANTS = ("bf16", "bf16-compile", "bf16-compile-whole", "bf16-channels-last-compile-whole")

KINDS: list[tuple[str, re.Pattern[str]]] = [
    # First match wins. Inductor's generated kernels first: they are named after the ops they fuse, so
    # "triton_poi_fused_add_convolution_3" is a conv's bias add and "triton_red_fused__fused_rms_norm__scaled_
    # dot_product_cudnn_attention_..." Flux's QK-norm and RoPE before attention, not a convolution or attention.
    # Then attention before GEMM (flash kernels are GEMMs too), convolution before GEMM (cuDNN's implicit-GEMM
    # convolutions say "gemm"), and the layout copies cuDNN puts around a convolution on their own.
    ("quantize (triton)", re.compile(r"^triton.*amax", re.I)),  # fp8/int8 per-row scales, with what they fuse
    ("norm", re.compile(r"^triton.*norm", re.I)),
    ("fused (triton)", re.compile(r"^triton", re.I)),
    ("attention", re.compile(r"flash|fmha|sdpa|attention|attn", re.I)),
    ("conv layout", re.compile(r"nchwtonhwc|nhwctonchw|nchw_to_nhwc|nhwc_to_nchw", re.I)),
    ("convolution", re.compile(r"conv|fprop|winograd|implicit_?gemm", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cublas|cutlass|matmul|s16816|tensorop|aten::(addmm|mm|bmm|baddbmm)\b", re.I)),
    ("norm", re.compile(r"norm|moments", re.I)),  # RowwiseMomentsCUDAKernel: eager GroupNorm's statistics
    ("memcpy/memset", re.compile(r"memcpy|memset", re.I)),
    ("elementwise/reduce", re.compile(r"elementwise|vectorized|unrolled|reduce|copy|cat|index|fill|aten::", re.I)),
]
DISPLAY_ORDER = [
    "gemm",
    "convolution",
    "conv layout",
    "attention",
    "norm",
    "quantize (triton)",
    "fused (triton)",
    "elementwise/reduce",
    "memcpy/memset",
    "other",
    "(gpu idle)",
]
PROFILED_CALLS = 2
TOP_KERNELS = 12
FLOP_KINDS = {
    "convolution": "convolution",
    "mm": "gemm",
    "addmm": "gemm",
    "bmm": "gemm",
    "baddbmm": "gemm",
    "_scaled_mm": "gemm",  # the agent's fp8 layers
    "_int_mm": "gemm",  # the agent's int8 layers
}
WHOLE = "-compile-whole"
MODIFIERS = ("fast-gemm", "cudagraphs", "static-scales")
"""`+fast-gemm`: the agent's fp8 layers with fast accumulation and the bias in the GEMM (`Recipe.fast_gemm`, as
in the catalog's fp8-fast-compile recipes); `+cudagraphs`: the recipe's compile in mode "reduce-overhead" (CUDA
graphs); `+static-scales`: the fp8 layers with per-tensor activation scales fixed by one calibration call
(benchmarks/fp8_static.py: an experiment, not a recipe)."""


def kind_of(kernel: str) -> str:
    """The kind of one kernel (or, on the CPU, one aten operator) by its name; "other" when nothing matches."""
    for kind, pattern in KINDS:
        if pattern.search(kernel):
            return kind
    return "other"


def flop_kind(op: str) -> str:
    """The kind an aten operator's FLOPs count towards ("aten.convolution" -> "convolution")."""
    name = op.split(".")[-1]
    if "attention" in name:
        return "attention"
    return FLOP_KINDS.get(name, "other")


def summarize(
    kernel_us: dict[str, float], calls: int, wall_ms: float, flops: dict[str, float]
) -> dict[str, dict[str, float | None]]:
    """Per kind: device ms per call, share of the call's wall time, TFLOP per call and the achieved TFLOP/s."""
    by_kind: dict[str, float] = {}
    for name, us in kernel_us.items():
        kind = kind_of(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + us
    rows: dict[str, dict[str, float | None]] = {}
    for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        ms = us / 1000.0 / calls
        tflop = flops.get(kind, 0.0) / 1e12
        rows[kind] = {
            "ms": ms,
            "share_of_wall": ms / wall_ms,
            "tflop": tflop or None,
            "tflops": tflop / (ms / 1000.0) if tflop and ms else None,
        }
    busy = sum(r["ms"] or 0.0 for r in rows.values())
    rows["(gpu idle)"] = {"ms": max(wall_ms - busy, 0.0), "share_of_wall": max(1 - busy / wall_ms, 0.0)}
    return rows


def time_ms(fn: Callable[[], object], sync: Callable[[], None], *, calls: int = 3, windows: int = 3) -> float:
    """Median ms per call over windows of calls (wall clock between synchronizations), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    per_call = []
    for _ in range(windows):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per_call.append((time.perf_counter() - started) * 1000.0 / calls)
    return float(statistics.median(per_call))


def count_flops(fn: Callable[[], object]) -> dict[str, float]:
    """FLOPs of one call by kind (FlopCounterMode on the eager module)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    flops: dict[str, float] = {}
    for op, n in counter.get_flop_counts()["Global"].items():
        kind = flop_kind(str(op))
        flops[kind] = flops.get(kind, 0.0) + float(n)
    return flops


def profile(fn: Callable[[], object], sync: Callable[[], None], *, cuda: bool, calls: int = 2) -> dict[str, float]:
    """Self device time (us) of each kernel over `calls` calls; on the CPU, each operator's self CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch_profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync()
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda and event.device_type == DeviceType.CUDA:
            us = float(event.self_device_time_total)
        elif not cuda and event.device_type == DeviceType.CPU and event.key.startswith("aten::"):
            us = float(event.self_cpu_time_total)
        else:
            continue
        if us > 0:
            times[event.key] = times.get(event.key, 0.0) + us
    return times


def recipe_for(variant: str) -> Any:
    """The catalog recipe a variant names: `<recipe>`, `<recipe>-compile-whole` (compiled whole, default mode),
    either followed by `+modifier`s (MODIFIERS). Raises KeyError for an unknown recipe, ValueError for a
    modifier that is unknown or does not apply."""
    from planner.catalog import recipes

    name, *mods = variant.split("+")
    table = recipes()
    if name in table:  # catalog ids win: bf16-compile-whole, fp8-fast-compile-whole are recipes of their own
        recipe = table[name]
    elif name.endswith(WHOLE):
        recipe = table[name.removesuffix(WHOLE)].model_copy(update={"compile": "default", "compile_scope": "whole"})
    else:
        raise KeyError(name)
    unknown = [m for m in mods if m not in MODIFIERS]
    if unknown:
        raise ValueError(f"unknown modifier(s) {unknown} in {variant!r}")
    for fp8_only in ("fast-gemm", "static-scales"):
        if fp8_only in mods and not recipe.quantization.startswith("fp8"):
            raise ValueError(f"+{fp8_only} needs an fp8 recipe, not {name!r}")
    if "fast-gemm" in mods:
        recipe = recipe.model_copy(update={"fast_gemm": True})
    if "cudagraphs" in mods:
        if recipe.compile == "none":
            raise ValueError(f"+cudagraphs needs a compiled recipe, not {name!r}")
        recipe = recipe.model_copy(update={"compile": "reduce-overhead"})
    return recipe.model_copy(update={"id": variant})


def build(model: str, variant: str, *, tiny: bool) -> Any:
    """The denoiser in the variant's form, as the probe builds it (uncompiled until apply_compile)."""
    import torch

    from planner.catalog import known_model
    from stagekit.pipelines import tiny_shapes
    from stagekit.recipes import RecipeOptions, prepare

    spec = known_model(model)
    height, width, tokens = tiny_shapes(spec) if tiny else (spec.height, spec.width, spec.text_tokens)
    prepared = prepare(
        spec,
        "denoiser",
        recipe_for(variant),
        device=torch.device("cpu" if tiny else "cuda"),
        tiny=tiny,
        height=height,
        width=width,
        text_tokens=tokens,
        options=RecipeOptions(compile_backend="eager" if tiny else "inductor"),
    )
    if "+static-scales" in variant:
        from benchmarks.fp8_static import make_static

        def calibrate() -> None:
            prepared.runner.prepare(1, seed=1)  # other inputs than the timed calls'
            prepared.runner.call()

        swapped = sum(make_static(module, calibrate) for module in prepared.modules.values())
        prepared.notes.append(f"{swapped} fp8 layers with static per-tensor scales (one calibration call)")
    return prepared


def profile_variant(
    model: str, variant: str, batches: list[int], flops_at: dict[int, dict[str, float]], *, tiny: bool
) -> list[dict[str, Any]]:
    """Build, compile, time and profile one variant at each batch; one row per batch."""
    import torch

    cuda = not tiny

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows: list[dict[str, Any]] = []
    prepared = build(model, variant, tiny=tiny)
    with torch.inference_mode():
        for batch in batches:
            if batch not in flops_at:  # before compile: FlopCounterMode counts the eager module
                prepared.runner.prepare(batch)
                flops_at[batch] = count_flops(prepared.runner.call)
        prepared.apply_compile()
        for batch in batches:
            prepared.runner.prepare(batch)
            started = time.monotonic()
            prepared.runner.call()
            sync()
            first_s = time.monotonic() - started
            wall_ms = time_ms(prepared.runner.call, sync)
            kernel_us = profile(prepared.runner.call, sync, cuda=cuda, calls=PROFILED_CALLS)
            kinds = summarize(kernel_us, PROFILED_CALLS, wall_ms, flops_at[batch])
            total_tflop = sum(flops_at[batch].values()) / 1e12
            row = {
                "model": model,
                "variant": variant,
                "batch": batch,
                "ms": wall_ms,
                "first_call_s": first_s,
                "tflop": total_tflop,
                "tflops": total_tflop / (wall_ms / 1000.0),
                "kinds": kinds,
                "flops_by_kind": flops_at[batch],
                "kernels_ms": {  # every kernel's device ms per call, so the kinds can be re-derived
                    name: us / 1000.0 / PROFILED_CALLS for name, us in sorted(kernel_us.items(), key=lambda kv: -kv[1])
                },
                "notes": prepared.notes,
            }
            rows.append(row)
            print(
                f"{model} b{batch} {variant:<34} {wall_ms:9.2f} ms  {row['tflops']:6.1f} TFLOP/s  "
                f"(first call {first_s:.1f} s)",
                flush=True,
            )
            for kind, k in kinds.items():
                rate = f"{k['tflops']:7.1f} TFLOP/s" if k.get("tflops") else ""
                print(f"    {kind:<20} {k['ms']:9.2f} ms  {100 * (k['share_of_wall'] or 0):5.1f}%  {rate}")
            print("    largest kernels (ms per call, kind):")
            for name, ms in list(row["kernels_ms"].items())[:TOP_KERNELS]:
                print(f"      {ms:8.2f}  {kind_of(name):<18} {name[:110]}")
    return rows


def run(
    model: str, batches: list[int], variants: list[str], *, tiny: bool, save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """Every variant in turn; `save` gets what there is after each one, so a later variant that fails or runs
    past the call's limit loses only itself. A variant that cannot run here (StageUnsupported) or fails is
    recorded with why, and the others still run."""
    import torch

    from stagekit.pipelines import StageUnsupported

    done: dict[str, Any] = {"results": [], "not_run": []}
    flops_at: dict[int, dict[str, float]] = {}
    for variant in variants:
        torch._dynamo.reset()
        try:
            done["results"].extend(profile_variant(model, variant, batches, flops_at, tiny=tiny))
        except StageUnsupported as exc:  # e.g. fp8 without an fp8 GPU
            print(f"{model} {variant}: unsupported here: {exc}", flush=True)
            done["not_run"].append({"variant": variant, "status": "unsupported", "why": str(exc)})
        except Exception as exc:  # a compile or runtime failure of one variant: keep it, go on
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{model} {variant}: failed: {why}", flush=True)
            done["not_run"].append({"variant": variant, "status": "failed", "why": why})
        if not tiny:
            torch.cuda.empty_cache()
        save(done)
    for batch in batches:
        by = {r["variant"]: r["ms"] for r in done["results"] if r["batch"] == batch}
        if by:
            first, base = next(iter(by.items()))
            text = ", ".join(f"{v} {t:.1f} ms ({t / base:.3f}x)" for v, t in by.items())
            print(f"{model} b{batch}, against {first}: {text}")
    return done


def table(results: list[dict[str, Any]]) -> str:
    """A markdown table of one batch's variants side by side, kinds re-derived from each kernel's recorded time
    (so a saved run is read with the classifier as it is now)."""
    kinds_by_variant: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in results:
        kernel_us = {name: ms * 1000.0 for name, ms in r["kernels_ms"].items()}
        kinds_by_variant[r["variant"]] = summarize(kernel_us, 1, r["ms"], r["flops_by_kind"])
    present = [k for k in DISPLAY_ORDER if any(k in v for v in kinds_by_variant.values())]
    head = " | ".join(f"{v} ms | share | TFLOP/s" for v in kinds_by_variant)
    lines = [f"| kind | {head} |", "|---|" + "---:|---:|---:|" * len(kinds_by_variant)]
    for kind in present:
        flops = next((r["flops_by_kind"].get(kind) for r in results if r["flops_by_kind"].get(kind)), None)
        label = f"{kind} ({flops / 1e12:.1f} TFLOP)" if flops else kind
        cells = []
        for rows in kinds_by_variant.values():
            k = rows.get(kind)
            if k is None:
                cells.append("- | | ")
                continue
            rate = f"{k['tflops']:.0f}" if k.get("tflops") else ""
            cells.append(f"{k['ms']:.2f} | {100 * (k['share_of_wall'] or 0):.1f}% | {rate}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    total = " | ".join(f"**{r['ms']:.2f}** | | **{r['tflops']:.0f}**" for r in results)
    lines.append(f"| **step** | {total} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], title: str, path: Path) -> None:
    """One stacked bar per variant: where its step's milliseconds go, kind by kind (same colours in every bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = {
        r["variant"]: summarize({n: ms * 1000.0 for n, ms in r["kernels_ms"].items()}, 1, r["ms"], r["flops_by_kind"])
        for r in results
    }
    palette = plt.get_cmap("tab20")
    colors = {kind: palette(2 * i % 20) for i, kind in enumerate(DISPLAY_ORDER)} | {"(gpu idle)": "#dddddd"}
    fig, ax = plt.subplots(figsize=(1.9 * len(kinds) + 3.5, 4.4))
    bottoms = [0.0] * len(kinds)
    for kind in DISPLAY_ORDER:
        heights = [float(v.get(kind, {}).get("ms") or 0.0) for v in kinds.values()]
        if any(heights):
            ax.bar(list(kinds), heights, bottom=bottoms, label=kind, color=colors[kind])
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, (r, top) in enumerate(zip(results, bottoms, strict=True)):  # kernels profiled can sum past the wall
        ax.text(x, top, f"{r['ms']:.1f} ms", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(bottoms) * 1.08)
    ax.set_ylabel("ms per call")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=7, rotation=12)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sdxl")
    ap.add_argument("--batches", default="16", help="images per call, comma-separated")
    ap.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"catalog recipe ids, each optionally followed by {WHOLE} (whole-module compile) and +modifiers",
    )
    ap.add_argument("--tiny", action="store_true", help="the catalog's tiny config on the CPU (tests)")
    ap.add_argument("--report", type=Path, default=None, help="print a saved denoiser-profile.json as a table")
    ap.add_argument("--plot", type=Path, default=None, help="with --report: also draw it (one PNG per batch)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".device-out/denoiser-profile")))
    args = ap.parse_args(argv)
    import json

    if args.report is not None:
        saved = json.loads(args.report.read_text())["results"]
        batches = sorted({r["batch"] for r in saved})
        for batch in batches:
            rows = [r for r in saved if r["batch"] == batch]
            print(f"batch {batch}:\n" + table(rows))
            if args.plot is not None:
                path = args.plot if len(batches) == 1 else args.plot.with_stem(f"{args.plot.stem}-b{batch}")
                plot(rows, f"{rows[0]['model']} denoiser, batch {batch}: device time per call by kind", path)
                print(f"plot: {path}")
        return 0
    import torch

    variants = [v for v in args.variants.split(",") if v]
    unknown = []
    for v in variants:
        try:
            recipe_for(v)
        except KeyError:
            unknown.append(v)
        except ValueError as exc:
            ap.error(f"{exc}; modifiers: {', '.join('+' + m for m in MODIFIERS)}")
    if unknown:
        from planner.catalog import recipes

        ap.error(
            f"unknown variant(s) {unknown}: use catalog recipe ids ({', '.join(recipes())}), each optionally "
            f"followed by {WHOLE} and by modifiers ({', '.join('+' + m for m in MODIFIERS)})"
        )
    if not args.tiny and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU; run it on the device (or pass --tiny for the CPU smoke run)")
    from benchmarks.campaign import machine_record

    info = machine_record("synthetic (the agent's build)" if not args.tiny else "synthetic, tiny config")
    print(f"machine: {info.get('gpu_name')} ({info.get('gpu_uuid')}), torch {info.get('torch')}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def save(done: dict[str, Any]) -> None:
        (args.out / "denoiser-profile.json").write_text(json.dumps({"machine": info, **done}, indent=2) + "\n")

    done = run(args.model, [int(b) for b in args.batches.split(",")], variants, tiny=args.tiny, save=save)
    return 0 if done["results"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
