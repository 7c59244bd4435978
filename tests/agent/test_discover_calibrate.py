"""Inventory from NVML (a fake NVML library here) matched to catalog families, and calibration flagging."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from agent.calibrate import CalibrationResult, calibrate, compare
from agent.discover import cpu_model, discover, family_of
from agent.nvml import Nvml, PowerSampler, clock_event_names


class FakeNvmlError(Exception):
    pass


def fake_pynvml(names: list[str]) -> Any:
    """The few pynvml functions the agent calls, over a list of product names."""

    def unsupported(*_: Any) -> Any:
        raise FakeNvmlError("not supported")

    energy = {"mj": 1_000_000}

    def total_energy(_h: int) -> int:
        energy["mj"] += 50_000  # 50 J between two reads
        return energy["mj"]

    return SimpleNamespace(
        NVMLError=FakeNvmlError,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0,
        nvmlEventTypeXidCriticalError=8,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"580.65.06",
        nvmlSystemGetCudaDriverVersion=lambda: 13000,
        nvmlDeviceGetCount=lambda: len(names),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h:04d}",
        nvmlDeviceGetName=lambda h: names[h],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=85520809984, used=2**30),
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetMigMode=lambda h: [0, 0],
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
        nvmlDeviceGetMaxClockInfo=lambda h, t: 1980 if t == 1 else 2619,
        nvmlDeviceGetClockInfo=lambda h, t: 1755,
        nvmlDeviceGetPowerUsage=lambda h: 350_000,
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=97, memory=40),
        nvmlDeviceGetTemperature=lambda h, s: 61,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0,
        nvmlEventSetCreate=unsupported,
    )


def test_inventory_matches_families_and_reports_unknown_products() -> None:
    nvml = Nvml(fake_pynvml(["NVIDIA H100 80GB HBM3", "NVIDIA Imaginary X9"]))
    inv = discover(nvml)
    assert inv.driver_version == "580.65.06"
    assert inv.cuda_version == "13.0"
    known, unknown = inv.gpus
    assert known.gpu_family == "h100-sxm-80gb"
    assert known.memory_gib == pytest.approx(79.65, abs=0.01)
    assert known.compute_capability == "9.0"
    assert known.power_limit_w == 700.0
    assert not known.mig_mode
    assert unknown.gpu_family is None  # never guessed
    assert inv.note is not None
    assert "NVIDIA Imaginary X9" in inv.note
    assert unknown.to_api()["gpu_family"] is None


def test_family_of() -> None:
    assert family_of("NVIDIA H100 80GB HBM3") == "h100-sxm-80gb"
    assert family_of("NVIDIA GeForce Potato") is None


def test_telemetry_and_power_sampler() -> None:
    nvml = Nvml(fake_pynvml(["NVIDIA H100 80GB HBM3"]))
    (sample,) = nvml.telemetry()
    assert sample.to_api() == {
        "uuid": "GPU-0000",
        "utilization_pct": 97.0,
        "memory_used_gib": 1.0,
        "power_w": 350.0,
        "sm_clock_mhz": 1755,
        "mem_clock_mhz": 1755,
        "temperature_c": 61.0,
        "xid_errors": [],
    }
    with PowerSampler(nvml, 0, interval_s=0.001) as sampler:
        sampler.resume()
        torch.randn(64, 64) @ torch.randn(64, 64)
        sampler.pause()
    summary = sampler.summary()
    assert summary.energy_j == pytest.approx(50.0)  # from the energy counter, not sampled power
    assert summary.mean_utilization_pct in (None, 97.0)


def test_power_sampler_reads_clock_and_throttle_reasons_at_each_window_end() -> None:
    """Per cell: the mean SM clock of the window ends, and every clock-event reason seen there but `gpu_idle` (the
    queue has just drained when they are read), named for the CSV."""
    fake = fake_pynvml(["NVIDIA H100 80GB HBM3"])
    clocks, reasons = iter([1980, 1755]), iter([0x1, 0x1 | 0x4 | 0x8])
    fake.nvmlDeviceGetClockInfo = lambda h, t: next(clocks)
    fake.nvmlDeviceGetCurrentClocksEventReasons = lambda h: next(reasons)
    with PowerSampler(Nvml(fake), 0) as sampler:
        for _ in range(2):
            sampler.resume()
            sampler.pause()
    summary = sampler.summary()
    assert summary.mean_sm_clock_mhz == pytest.approx((1980 + 1755) / 2)
    assert summary.clocks_event_reasons == 0x4 | 0x8
    assert clock_event_names(summary.clocks_event_reasons) == "sw_power_cap+hw_slowdown"
    assert clock_event_names(0) == "none"
    assert clock_event_names(0x1 | 0x800) == "gpu_idle+bit_0x800"


def test_cpu_model_names_the_host_processor() -> None:
    assert cpu_model()


def _family() -> Any:
    from planner.catalog import gpu_families

    return gpu_families()["h100-sxm-80gb"]


def test_compare_flags_a_gpu_far_below_its_family() -> None:
    fam = _family()
    healthy = CalibrationResult(device="cuda:0", bf16_tflops=780.0, memory_tbps=2.9, power_limit_w=700.0)
    ok = compare(
        healthy,
        peak_bf16=fam.peak_tflops("bf16"),
        peak_fp8=fam.peak_tflops("fp8"),
        peak_tbps=fam.memory_bandwidth_tbps,
        tdp_w=fam.tdp_w,
        flag_ratio=0.6,
    )
    assert not ok.flagged
    assert ok.ratios["bf16"] == pytest.approx(780.0 / fam.peak_tflops("bf16"))
    throttled = CalibrationResult(
        device="cuda:0", bf16_tflops=300.0, memory_tbps=2.9, power_limit_w=400.0, clocks_event_reasons=0x8
    )
    bad = compare(
        throttled,
        peak_bf16=fam.peak_tflops("bf16"),
        peak_fp8=None,
        peak_tbps=fam.memory_bandwidth_tbps,
        tdp_w=fam.tdp_w,
        flag_ratio=0.6,
    )
    assert bad.flagged
    assert bad.flag_reason is not None
    assert "bf16 at 30%" in bad.flag_reason
    assert "power limit 400 W" in bad.flag_reason
    assert "0x8" in bad.flag_reason
    assert bad.to_api()["flagged"] is True


def test_cpu_calibration_runs_and_compares_nothing() -> None:
    result = calibrate(torch.device("cpu"))
    assert result.bf16_tflops is not None
    assert result.bf16_tflops > 0
    assert result.memory_tbps is not None
    assert result.memory_tbps > 0
    assert result.fp8_tflops is None
    assert result.h2d_gbps is None
    assert result.ratios == {}
    assert not result.flagged
