"""The device a probe or calibration runs on, with its family, NVML handle and provenance.

Kept apart from the sweep so every command (calibrate, probe, the daemon, the campaign) names the device
and its family the same way: a catalog family when NVML's product name matches one, an explicit
`--gpu-family` when the operator knows better, `unknown-<product>` otherwise, and `cpu` without a GPU.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

import torch

from agent import __version__
from agent.discover import GpuInfo, Inventory, discover
from agent.nvml import Nvml, NvmlUnavailable
from planner.catalog import GpuFamily, gpu_families

CPU_FAMILY = "cpu"


@dataclass
class Target:
    """Where cells run. `family` is None on the CPU and for unknown products (nothing compared to it)."""

    device: torch.device
    family_id: str
    family: GpuFamily | None
    gpu: GpuInfo | None
    inventory: Inventory
    nvml: Nvml | None = None
    handle: Any = None
    ceilings: dict[str, float] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_gib(self) -> float | None:
        """The device's memory: the GPU's (NVML), or on the CPU the host's physical memory. Every row carries
        it as `gpu_memory_gib`, so the agent's own CSV defines its family when imported (the CPU's `cpu`)."""
        if self.gpu is not None:
            return self.gpu.memory_gib
        if self.is_gpu:
            return None
        return host_memory_gib()

    def provenance(self) -> dict[str, str | None]:
        inv = self.inventory
        return {
            "gpu_name": self.gpu.product_name if self.gpu else ("cpu" if not self.is_gpu else None),
            "driver": inv.driver_version,
            "cuda": inv.torch_cuda,
            "torch": inv.torch_version,
            "diffusers": inv.diffusers_version,
            "torchao": inv.torchao_version,
            "agent_version": __version__,
            "host": inv.host or socket.gethostname(),
        }

    def peak_tflops(self, precision: str) -> float | None:
        """Ceiling for a precision: calibrated where measured, else the catalog's, else none."""
        key = "fp8" if precision == "fp8" else "bf16" if precision in ("bf16", "fp16", "int8") else precision
        if key in self.ceilings:
            return self.ceilings[key]
        if self.family is not None:
            return self.family.peak_tflops(precision)
        return self.ceilings.get("bf16")

    def peak_tbps(self) -> float | None:
        if "memory" in self.ceilings:
            return self.ceilings["memory"]
        return self.family.memory_bandwidth_tbps if self.family is not None else None

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.close()
            self.nvml = None


def host_memory_gib() -> float | None:
    """Physical memory of this host in GiB (POSIX sysconf), None where the platform does not say."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    if pages <= 0 or size <= 0:
        return None
    return round(pages * size / 2**30, 2)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:50] or "gpu"


def resolve_target(*, gpu_index: int = 0, family_override: str | None = None, force_cpu: bool = False) -> Target:
    """Pick the device: GPU `gpu_index` when CUDA and NVML see it, else the CPU (development)."""
    try:
        nvml: Nvml | None = Nvml.open()
    except NvmlUnavailable:
        nvml = None
    inventory = discover(nvml)
    use_gpu = not force_cpu and torch.cuda.is_available() and torch.cuda.device_count() > gpu_index
    if not use_gpu:
        if nvml is not None:
            nvml.close()
        return Target(torch.device("cpu"), family_override or CPU_FAMILY, None, None, inventory)
    device = torch.device("cuda", gpu_index)
    torch.cuda.set_device(device)
    gpu = next((g for g in inventory.gpus if g.index == gpu_index), None)
    handle = nvml.handle(gpu_index) if nvml is not None and gpu is not None else None
    if family_override:
        family_id = family_override
    elif gpu is not None and gpu.gpu_family is not None:
        family_id = gpu.gpu_family
    else:
        name = gpu.product_name if gpu is not None else torch.cuda.get_device_name(device)
        family_id = f"unknown-{slug(name)}"
    family = gpu_families().get(family_id)
    return Target(device, family_id, family, gpu, inventory, nvml, handle)
