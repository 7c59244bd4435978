"""Does 8-bit attention pay on this GPU? SageAttention (INT8 Q.K^T) in place of bf16 SDPA in a whole denoiser step.

Why: bf16 attention is a large share of a Flux-dev step in the profiles behind the speed aims
(docs/benchmarks.md). sageattention 1.0.6 is pure Triton (INT8 Q and K per block, fp16 P.V), the 8-bit attention a
package offers for torch 2.11 / CUDA 13 (FlashAttention-3's fp8 path and SageAttention 2 are source builds there;
diffusers' "sage" backends ask for >= 2.1.1). This times one denoiser call of each model (synthetic weights, built by
the agent's own code, as the probe does) with torch's SDPA, then with every SDPA call the model makes routed to
`sageattn` (masked, causal-free, head dims 64/96/128 only; any other call stays on SDPA and is counted), in the
same process on the same inputs; and the output's drift against the SDPA call (PSNR of one step's prediction).

    PYTHONPATH=. python3 benchmarks/attention_8bit.py [--cases flux-dev:bf16:1,sdxl:bf16:16] [--out DIR]

A case is model:recipe:batch; a compiled recipe (e.g. fp8-fast-compile) is compiled once per variant (dynamo reset
between). Prints one line per case and variant (median ms, p95 ms, calls, ratio to SDPA, PSNR, SDPA calls
routed/kept) and writes attention-8bit.json under --out (default $OUT) with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


@contextlib.contextmanager
def sage_sdpa(counts: dict[str, int]) -> Iterator[None]:
    """torch.nn.functional.scaled_dot_product_attention routed to sageattn where it can take the call."""
    from sageattention import sageattn  # type: ignore[import-not-found]

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def routed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        plain = (
            not args
            and kwargs.get("attn_mask") is None
            and not kwargs.get("dropout_p")
            and not kwargs.get("is_causal")
            and not kwargs.get("enable_gqa")
            and q.dim() == 4
            and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] in (64, 96, 128)
            and q.shape[1] == k.shape[1]
        )
        if not plain:
            counts["kept"] = counts.get("kept", 0) + 1
            return sdpa(q, k, v, *args, **kwargs)
        counts["routed"] = counts.get("routed", 0) + 1
        out: torch.Tensor = sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=kwargs.get("scale"))
        return out

    torch.nn.functional.scaled_dot_product_attention = routed  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa


def _caller(runner: Any) -> Callable[[int], object]:
    def call(_i: int) -> object:
        return runner.call()

    return call


def run_case(model: str, recipe_id: str, batch: int, device: torch.device) -> list[dict[str, Any]]:
    from agent import quality
    from agent.probe import ProbeOptions, sizes
    from agent.timing import TimerOptions, measure
    from planner.catalog import known_model, recipes
    from stagekit.recipes import RecipeOptions, prepare

    spec = known_model(model)
    recipe = recipes()[recipe_id]
    h, w, t = sizes(spec, ProbeOptions(model=model, recipes=(recipe_id,)))
    timer = TimerOptions(warmup_calls=3, warmup_s=1.0, min_window_s=0.3, max_windows=10, max_cell_s=40.0)
    results: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    for variant in ("sdpa", "sage"):
        torch._dynamo.reset()
        prepared = prepare(
            spec,
            "denoiser",
            recipe,
            device=device,
            tiny=False,
            height=h,
            width=w,
            text_tokens=t,
            options=RecipeOptions(),
        )
        runner = prepared.runner
        runner.prepare(batch, seed=0)
        counts: dict[str, int] = {}
        ctx: contextlib.AbstractContextManager[None] = (
            sage_sdpa(counts) if variant == "sage" else contextlib.nullcontext()
        )
        row: dict[str, Any] = {"model": model, "recipe": recipe_id, "batch": batch, "variant": variant}
        try:
            with ctx:
                if prepared.compile_pending is not None and not prepared.compiled:
                    prepared.apply_compile()
                timing = measure(_caller(runner), device, timer)
                out = runner.call().float()
            torch.cuda.synchronize(device)
            if reference is None:
                reference = out
            row.update(
                median_ms=timing.median_ms,
                p95_ms=timing.p95_ms if timing.p95_measured else None,
                calls=timing.calls,
                spread=timing.spread,
                stable=timing.stable,
                first_call_s=timing.first_call_s,
                sdpa_calls_routed=counts.get("routed", 0),
                sdpa_calls_kept=counts.get("kept", 0),
                psnr_vs_sdpa=float(quality.psnr(out, reference)) if variant != "sdpa" else None,
            )
        except Exception as exc:  # one variant failing (a kernel refusing a shape) must not lose the other
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        results.append(row)
        prepared = runner = None  # type: ignore[assignment]
        torch.cuda.empty_cache()
    base = results[0].get("median_ms")
    for r in results:
        if base and r.get("median_ms"):
            r["ratio_to_sdpa"] = r["median_ms"] / base
        print(json.dumps(r), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="flux-dev:bf16:1,sdxl:bf16:16,flux-dev:fp8-fast-compile:1")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    p.add_argument("--budget-s", type=float, default=400.0, help="no case starts past this many seconds")
    args = p.parse_args(argv)
    from benchmarks.campaign import machine_record

    device = torch.device("cuda")
    record: dict[str, Any] = {"machine": machine_record("synthetic"), "command": " ".join(sys.argv), "cases": []}
    with contextlib.suppress(Exception):
        import importlib.metadata

        record["sageattention"] = importlib.metadata.version("sageattention")
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    for case in (c.strip() for c in args.cases.split(",") if c.strip()):
        if time.monotonic() - t0 > args.budget_s:
            print(f"budget spent: {case} not run", flush=True)
            record["cases"].append({"case": case, "error": "not run: budget spent"})
            continue
        model, recipe_id, batch = case.split(":")
        try:
            record["cases"].extend(run_case(model, recipe_id, int(batch), device))
        except Exception as exc:
            print(f"{case}: {type(exc).__name__}: {exc}", flush=True)
            record["cases"].append({"case": case, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        (args.out / "attention-8bit.json").write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
