"""Validate the agent's numbers against plain, independent timings of the same work, on one GPU, in one call.

1. SDXL denoiser (UNet, bf16, 1024x1024, batch 1 = 2 latents with CFG, synthetic weights): the agent's probe
   sweep (stable windows, CUDA events) vs a plain loop written here (same config, seed and input shapes,
   CUDA events around each call, median). Pass: within 5%.
2. The calibration's bf16 matmul TFLOP/s vs a plain timed 8192^3 bf16 matmul, run just before and just after
   the calibration (mean of the two). Pass: within 10%.
Dense bf16 matmuls on an H100 run at its power limit, and its SM clock moves with power and temperature, so a
plain loop timed seconds away from the calibration can run in another clock state (the misses this caused:
benchmarks/results/h100-campaign/README.md). Bracketing the calibration compares the two timers, not two clock
states; the
mean SM clock, power and temperature of each phase (NVML, sampled every 100 ms on a side thread, never during
the UNet timings) are recorded so a reader can see the clock state each number was taken in.
Prints both ratios and the machine (GPU, driver, torch); writes validation.json to $OUT when set.

    PYTHONPATH=. python3 benchmarks/agent_validation.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def plain_unet_ms(calls: int = 30, warmup: int = 5) -> float:
    """Median ms of one SDXL UNet call, built and timed with nothing from the agent."""
    import torch
    from diffusers import UNet2DConditionModel

    cfg = json.loads((REPO / "planner/catalog/data/configs/sdxl/unet.json").read_text())
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        unet = UNet2DConditionModel.from_config(cfg).eval()
        torch.set_default_dtype(torch.float32)
    dev, dt = torch.device("cuda"), torch.bfloat16
    sample = torch.randn(2, 4, 128, 128, device=dev, dtype=dt)
    ehs = torch.randn(2, 77, 2048, device=dev, dtype=dt)
    added = {
        "text_embeds": torch.randn(2, 1280, device=dev, dtype=dt),
        "time_ids": torch.tensor([[1024, 1024, 0, 0, 1024, 1024]] * 2, device=dev, dtype=dt),
    }
    t = torch.tensor(499.5, device=dev)
    times: list[float] = []
    with torch.inference_mode():
        # At least `warmup` calls and 1.5 s, as the agent warms up: a GPU fresh from idle needs that to clock up.
        t_end = time.perf_counter() + 1.5
        done = 0
        while done < warmup or time.perf_counter() < t_end:
            unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)
            done += 1
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
        for i in range(calls):
            starts[i].record()
            unet(sample, t, encoder_hidden_states=ehs, added_cond_kwargs=added, return_dict=False)
            ends[i].record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    del unet
    torch.cuda.empty_cache()
    return float(statistics.median(times))


def plain_matmul_tflops(n: int = 8192, calls: int = 400, warmup_s: float = 1.5) -> float:
    """A plain timed loop of 400 products after `warmup_s` of warm-up.

    A burst of 60 products (85 ms) after 10 warm-up calls read 755-791 TFLOP/s on an H100 whose calibration
    (1.5 s warm-up, then ~1 s of windows) read 659-718 in the same call; a GPU near its power limit lowers its
    clocks after a while. Warming up the same way compares the two timers rather than two clock states."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t_end = time.perf_counter() + warmup_s
    while time.perf_counter() < t_end:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        a @ b
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / calls
    return 2.0 * n**3 / (ms / 1000.0) / 1e12


class ClockSampler:
    """NVML SM clock (MHz), power (W) and temperature (C) of the target GPU, sampled on a side thread while a
    phase runs (agent.nvml's reads; without NVML the phase is timed all the same, without clocks)."""

    def __init__(self, nvml: Any, handle: Any, period_s: float = 0.1) -> None:
        import threading

        self.nvml, self.handle, self.period_s = nvml, handle, period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            t = self.nvml.sample(self.handle)
            if t.sm_clock_mhz is not None and t.power_w is not None and t.temperature_c is not None:
                self.samples.append((float(t.sm_clock_mhz), t.power_w, t.temperature_c))

    def __enter__(self) -> ClockSampler:
        if self.nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.nvml is not None:
            self._thread.join()

    def summary(self) -> dict[str, float | int | None]:
        if not self.samples:
            return {"samples": 0, "sm_mhz": None, "power_w": None, "temp_c": None}
        clk, pw, tc = zip(*self.samples, strict=True)
        return {
            "samples": len(self.samples),
            "sm_mhz": statistics.fmean(clk),
            "sm_mhz_min": min(clk),
            "power_w": statistics.fmean(pw),
            "temp_c": max(tc),
        }


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("agent_validation: no GPU here; this script validates GPU timings (run it on the device machine)")
        return 2
    from agent.calibrate import calibrate
    from agent.probe import ProbeOptions, Sweep
    from agent.target import resolve_target

    t0 = time.monotonic()
    target = resolve_target()
    machine = {
        "gpu": torch.cuda.get_device_name(),
        "driver": target.inventory.driver_version,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": target.inventory.diffusers_version,
        "family": target.family_id,
    }
    print("machine:", json.dumps(machine))

    # 1. The denoiser: agent vs plain (plain both before and after, to bracket clock drift).
    plain_before = plain_unet_ms()
    state = Sweep(
        ProbeOptions(model="sdxl", recipes=("bf16",), batches=(1,), stages=("denoiser",), quality=False), target
    ).run()
    row = state.rows[0]
    if row.status != "ok" or row.latency_ms is None:
        print(f"agent probe failed: {row.status} {row.error}")
        return 1
    plain_after = plain_unet_ms()
    plain_ms = (plain_before + plain_after) / 2
    unet_ratio = row.latency_ms / plain_ms
    print(
        f"SDXL UNet bf16 b1 1024^2: agent {row.latency_ms:.2f} ms (spread {row.latency_spread:.3f}, "
        f"{row.windows} windows), plain {plain_before:.2f}/{plain_after:.2f} ms -> ratio {unet_ratio:.4f}"
    )

    # 2. Calibration matmul vs a plain 8192^3 matmul, just before and just after it.
    clocks: dict[str, dict[str, float | int | None]] = {}
    with ClockSampler(target.nvml, target.handle) as sampler:
        plain_before_tf = plain_matmul_tflops()
    clocks["plain_before"] = sampler.summary()
    with ClockSampler(target.nvml, target.handle) as sampler:
        cal = calibrate(target.device, family=target.family)
    clocks["calibration"] = sampler.summary()
    with ClockSampler(target.nvml, target.handle) as sampler:
        plain_after_tf = plain_matmul_tflops()
    clocks["plain_after"] = sampler.summary()
    plain_tf = (plain_before_tf + plain_after_tf) / 2
    mm_ratio = (cal.bf16_tflops or 0.0) / plain_tf
    print(
        f"bf16 matmul 8192^3: calibration {cal.bf16_tflops:.1f} TFLOP/s, plain {plain_before_tf:.1f}/"
        f"{plain_after_tf:.1f} -> ratio {mm_ratio:.4f}"
    )
    print("clocks:", json.dumps(clocks))
    print(
        f"calibration: memory {cal.memory_tbps:.3f} TB/s, fp8 {cal.fp8_tflops}, h2d {cal.h2d_gbps} GB/s, "
        f"ratios {cal.ratios}, flagged {cal.flagged} {cal.flag_reason or ''}"
    )

    ok = abs(unet_ratio - 1.0) <= 0.05 and abs(mm_ratio - 1.0) <= 0.10
    result: dict[str, Any] = {
        "machine": machine,
        "unet": {
            "agent_ms": row.latency_ms,
            "agent_p95_ms": row.latency_p95_ms,
            "spread": row.latency_spread,
            "windows": row.windows,
            "plain_ms_before": plain_before,
            "plain_ms_after": plain_after,
            "ratio": unet_ratio,
            "peak_mem_gib": row.peak_mem_gib,
            "power_w": row.power_w,
            "achieved_tflops": row.achieved_tflops,
            "bound": row.bound,
            "pass": abs(unet_ratio - 1) <= 0.05,
        },
        "matmul": {
            "calibration_tflops": cal.bf16_tflops,
            "plain_tflops": plain_tf,
            "plain_tflops_before": plain_before_tf,
            "plain_tflops_after": plain_after_tf,
            "clocks": clocks,
            "ratio": mm_ratio,
            "pass": abs(mm_ratio - 1) <= 0.10,
        },
        "calibration": cal.model_dump(),
        "pass": ok,
        "elapsed_s": time.monotonic() - t0,
    }
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "validation.json").write_text(json.dumps(result, indent=2, default=str))
    print(
        "PASS" if ok else "FAIL",
        f"(unet ratio {unet_ratio:.4f} within 5%: {abs(unet_ratio - 1) <= 0.05}; "
        f"matmul ratio {mm_ratio:.4f} within 10%: {abs(mm_ratio - 1) <= 0.10})",
    )
    target.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
