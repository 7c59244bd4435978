"""Inventory of this host: its GPUs (from NVML) matched to catalog families, and the software that measures.

An unknown product is reported with `gpu_family: null`, never guessed: a wrong family would put this GPU's
measurements under another card's prices. Without NVML or a GPU the inventory says so and lists none.
"""

from __future__ import annotations

import importlib.metadata
import platform
import socket
from typing import Any

from pydantic import BaseModel, Field

from agent import __version__
from agent.nvml import GpuStatic, Nvml, NvmlUnavailable


class GpuInfo(BaseModel):
    """One GPU as the planner registers it (docs/api.md `Gpu`), plus what calibration and reports need."""

    uuid: str
    index: int
    product_name: str
    gpu_family: str | None = Field(description="catalog family id; None when the product matches no family")
    memory_gib: float
    compute_capability: str | None
    mig_mode: bool
    power_limit_w: float | None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(exclude={"max_sm_clock_mhz", "max_mem_clock_mhz"})


class Inventory(BaseModel):
    """This host: name, versions, GPUs, and a plain note when there is no GPU to use."""

    host: str
    driver_version: str | None
    cuda_version: str | None = Field(description="the CUDA version the driver supports")
    torch_version: str | None
    torch_cuda: str | None = Field(description="the CUDA runtime torch was built with")
    diffusers_version: str | None
    torchao_version: str | None
    agent_version: str = __version__
    python: str = platform.python_version()
    gpus: list[GpuInfo] = Field(default_factory=list)
    note: str | None = None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)


def cpu_model() -> str | None:
    """The host CPU's model name (/proc/cpuinfo on Linux): launch-bound cells measure the host as much as the GPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()[:200] or None
    except OSError:
        pass
    return platform.processor()[:200] or None


def package_version(name: str) -> str | None:
    """An installed distribution's version, or None (torchao is optional; diffusers may be absent)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_versions() -> tuple[str | None, str | None]:
    """torch's version and the CUDA runtime it was built with, read without importing torch (seconds)."""
    import sys

    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        return str(torch.__version__), torch.version.cuda
    version = package_version("torch")
    if version is None:
        return None, None
    local = version.partition("+")[2]
    cuda = None
    if local.startswith("cu") and local[2:].isdigit():
        digits = local[2:]
        cuda = f"{digits[:-1]}.{digits[-1]}"
    return version, cuda


def family_of(product_name: str) -> str | None:
    """The catalog family id of an NVML product name, or None when no single family matches."""
    from planner.catalog import match_family

    fam = match_family(product_name)
    return fam.id if fam is not None else None


def gpu_info(static: GpuStatic) -> GpuInfo:
    return GpuInfo(
        uuid=static.uuid,
        index=static.index,
        product_name=static.product_name,
        gpu_family=family_of(static.product_name),
        memory_gib=round(static.memory_bytes / 2**30, 3),
        compute_capability=static.compute_capability,
        mig_mode=static.mig_mode,
        power_limit_w=static.power_limit_w,
        max_sm_clock_mhz=static.max_sm_clock_mhz,
        max_mem_clock_mhz=static.max_mem_clock_mhz,
    )


def discover(nvml: Nvml | None = None) -> Inventory:
    """Take the inventory; `nvml` may be an open session (the daemon keeps one), else one is opened here."""
    torch_version, torch_cuda = torch_versions()
    base: dict[str, Any] = {
        "host": socket.gethostname(),
        "torch_version": torch_version,
        "torch_cuda": torch_cuda,
        "diffusers_version": package_version("diffusers"),
        "torchao_version": package_version("torchao"),
    }
    own = nvml is None
    try:
        session = nvml or Nvml.open()
    except NvmlUnavailable as exc:
        return Inventory(
            **base,
            driver_version=None,
            cuda_version=None,
            note=f"No GPU found: {exc}. The agent runs on the CPU (development only; CPU timings are not "
            "fleet measurements).",
        )
    try:
        gpus = [gpu_info(session.static(i)) for i in range(session.count())]
        note = None
        if not gpus:
            note = "No GPU found: NVML started but lists no device. The agent runs on the CPU (development only)."
        unknown = [g.product_name for g in gpus if g.gpu_family is None]
        if unknown:
            extra = (
                f"Unknown GPU product(s) {sorted(set(unknown))}: no catalog family matches; reported as unknown. "
                "Add the family to planner/catalog/data/gpu_families.yaml or pass --gpu-family to probe."
            )
            note = extra if note is None else f"{note} {extra}"
        return Inventory(
            **base,
            driver_version=session.driver_version(),
            cuda_version=session.cuda_driver_version(),
            gpus=gpus,
            note=note,
        )
    finally:
        if own:
            session.close()
