"""NVML access: static GPU facts, telemetry samples, and a sampler thread for power during timed windows.

pynvml (nvidia-ml-py) is imported here only, lazily: the agent must still start on a machine without the
library or without a GPU (development), and say so plainly instead of failing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from types import ModuleType, TracebackType
from typing import Any


@dataclass(frozen=True)
class GpuStatic:
    """What NVML says about one GPU that does not change while the agent runs."""

    index: int
    uuid: str
    product_name: str
    memory_bytes: int
    compute_capability: str | None
    mig_mode: bool
    power_limit_w: float | None
    max_sm_clock_mhz: int | None
    max_mem_clock_mhz: int | None


@dataclass(frozen=True)
class GpuTelemetry:
    """One telemetry sample of a GPU (units in the names); None where NVML does not report it."""

    uuid: str
    utilization_pct: float | None
    memory_used_gib: float | None
    power_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temperature_c: float | None
    clocks_event_reasons: int | None = None
    xid_errors: list[int] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        """The planner's GpuTelemetry body (docs/api.md)."""
        return {
            "uuid": self.uuid,
            "utilization_pct": self.utilization_pct,
            "memory_used_gib": self.memory_used_gib,
            "power_w": self.power_w,
            "sm_clock_mhz": self.sm_clock_mhz,
            "mem_clock_mhz": self.mem_clock_mhz,
            "temperature_c": self.temperature_c,
            "xid_errors": self.xid_errors,
        }


# NVML's clock-event ("throttle") reason bits (nvmlClocksEventReason*), named for a CSV column.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


def clock_event_names(mask: int) -> str:
    """`+`-joined names of the set reason bits (`none` for none; an unknown bit as `bit_0x...`)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_EVENT_REASONS)
    names += [f"bit_{1 << i:#x}" for i in range(unknown.bit_length()) if unknown >> i & 1]
    return "+".join(names) or "none"


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here: no library, no driver or no GPU. The message says which."""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """An initialised NVML session. Use `Nvml.open()`; every getter returns None where NVML says unsupported."""

    def __init__(self, module: ModuleType) -> None:
        self._nv = module
        self._xid_set: Any = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls) -> Nvml:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency of the agent extra
            raise NvmlUnavailable(f"the NVML Python module is not installed ({exc}); pip install nvidia-ml-py") from exc
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not start ({exc}): no NVIDIA driver or no GPU on this machine") from exc
        return cls(pynvml)

    def close(self) -> None:
        try:
            if self._xid_set is not None:
                self._nv.nvmlEventSetFree(self._xid_set)
            self._nv.nvmlShutdown()
        except self._nv.NVMLError:  # pragma: no cover - shutdown errors are not actionable
            pass

    def __enter__(self) -> Nvml:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _try(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self._nv, fn)(*args)
        except (self._nv.NVMLError, AttributeError):
            return None

    def driver_version(self) -> str | None:
        value = self._try("nvmlSystemGetDriverVersion")
        return None if value is None else _text(value)

    def cuda_driver_version(self) -> str | None:
        """The CUDA version the driver supports, as `12.8` (NVML gives 12080)."""
        value = self._try("nvmlSystemGetCudaDriverVersion")
        if value is None:
            return None
        return f"{int(value) // 1000}.{(int(value) % 1000) // 10}"

    def count(self) -> int:
        value = self._try("nvmlDeviceGetCount")
        return int(value) if value is not None else 0

    def handle(self, index: int) -> Any:
        return self._nv.nvmlDeviceGetHandleByIndex(index)

    def handle_by_uuid(self, uuid: str) -> Any:
        for i in range(self.count()):
            h = self.handle(i)
            if _text(self._nv.nvmlDeviceGetUUID(h)) == uuid:
                return h
        raise NvmlUnavailable(f"no GPU with UUID {uuid} on this host")

    def static(self, index: int) -> GpuStatic:
        h = self.handle(index)
        mem = self._try("nvmlDeviceGetMemoryInfo", h)
        cc = self._try("nvmlDeviceGetCudaComputeCapability", h)
        mig = self._try("nvmlDeviceGetMigMode", h)
        limit = self._try("nvmlDeviceGetEnforcedPowerLimit", h) or self._try("nvmlDeviceGetPowerManagementLimit", h)
        return GpuStatic(
            index=index,
            uuid=_text(self._nv.nvmlDeviceGetUUID(h)),
            product_name=_text(self._nv.nvmlDeviceGetName(h)),
            memory_bytes=int(mem.total) if mem is not None else 0,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc is not None else None,
            mig_mode=bool(mig[0]) if mig is not None else False,
            power_limit_w=float(limit) / 1000.0 if limit is not None else None,
            max_sm_clock_mhz=self._try("nvmlDeviceGetMaxClockInfo", h, self._nv.NVML_CLOCK_SM),
            max_mem_clock_mhz=self._try("nvmlDeviceGetMaxClockInfo", h, self._nv.NVML_CLOCK_MEM),
        )

    def power_w(self, handle: Any) -> float | None:
        value = self._try("nvmlDeviceGetPowerUsage", handle)
        return float(value) / 1000.0 if value is not None else None

    def energy_j(self, handle: Any) -> float | None:
        """The board's energy counter since driver load (Volta and later); None where unsupported."""
        value = self._try("nvmlDeviceGetTotalEnergyConsumption", handle)
        return float(value) / 1000.0 if value is not None else None

    def utilization_pct(self, handle: Any) -> float | None:
        value = self._try("nvmlDeviceGetUtilizationRates", handle)
        return float(value.gpu) if value is not None else None

    def sm_clock_mhz(self, handle: Any) -> int | None:
        value = self._try("nvmlDeviceGetClockInfo", handle, self._nv.NVML_CLOCK_SM)
        return int(value) if value is not None else None

    def clocks_event_reasons(self, handle: Any) -> int | None:
        value = self._try("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if value is None:
            value = self._try("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return int(value) if value is not None else None

    def _poll_xids(self) -> dict[str, list[int]]:
        """XID errors seen since the last poll, per GPU UUID (empty where events are unsupported)."""
        found: dict[str, list[int]] = {}
        with self._lock:
            if self._xid_set is None:
                self._xid_set = self._try("nvmlEventSetCreate")
                if self._xid_set is None:
                    return found
                for i in range(self.count()):
                    self._try(
                        "nvmlDeviceRegisterEvents",
                        self.handle(i),
                        self._nv.nvmlEventTypeXidCriticalError,
                        self._xid_set,
                    )
            for _ in range(64):
                data = self._try("nvmlEventSetWait_v2", self._xid_set, 0)
                if data is None:
                    break
                uuid = _text(self._try("nvmlDeviceGetUUID", data.device) or "")
                found.setdefault(uuid, []).append(int(data.eventData))
        return found

    def sample(self, handle: Any, xids: dict[str, list[int]] | None = None) -> GpuTelemetry:
        """One telemetry sample of one GPU (`xids`: XID errors by GPU UUID, from one poll)."""
        uuid = _text(self._nv.nvmlDeviceGetUUID(handle))
        mem = self._try("nvmlDeviceGetMemoryInfo", handle)
        temp = self._try("nvmlDeviceGetTemperature", handle, self._nv.NVML_TEMPERATURE_GPU)
        return GpuTelemetry(
            uuid=uuid,
            utilization_pct=self.utilization_pct(handle),
            memory_used_gib=float(mem.used) / 2**30 if mem is not None else None,
            power_w=self.power_w(handle),
            sm_clock_mhz=self.sm_clock_mhz(handle),
            mem_clock_mhz=self._try("nvmlDeviceGetClockInfo", handle, self._nv.NVML_CLOCK_MEM),
            temperature_c=float(temp) if temp is not None else None,
            clocks_event_reasons=self.clocks_event_reasons(handle),
            xid_errors=list((xids or {}).get(uuid, [])),
        )

    def telemetry(self) -> list[GpuTelemetry]:
        """One sample of every GPU, for the daemon's heartbeat."""
        xids = self._poll_xids()
        return [self.sample(self.handle(i), xids) for i in range(self.count())]


@dataclass(frozen=True)
class PowerSummary:
    """Power over a measured interval: mean power (W), energy (J), mean utilization (%), sample count."""

    mean_power_w: float | None
    energy_j: float | None
    mean_utilization_pct: float | None
    samples: int
    seconds: float
    mean_sm_clock_mhz: float | None = None
    clocks_event_reasons: int | None = None
    """The reason bits seen at the window ends, OR-ed, without `gpu_idle` (the GPU has just drained its queue
    when they are read); None where NVML gave none."""


class PowerSampler:
    """Samples one GPU's power and utilization on a thread while a block of timed work runs.

    Energy comes from the board's energy counter when the GPU has one (exact, not sampled): then no thread
    runs at all, and utilization is read once per window (NVML averages it over its own sample period). A
    polling thread competes for the GIL with the launch-bound work being timed (an SDXL UNet at batch 1
    measured 25% slower with a 20 ms poller), so it is only the fallback for GPUs without the counter, at a
    slow interval. Pause it between windows (`pause()`/`resume()`) so the host-side gaps between windows do not
    dilute the mean. The SM clock and the clock-event (throttle) reasons are read at each window's end, right
    after the host has synchronised with the GPU: the clock is still the one the window ran at, and no thread
    polls while calls are timed.
    """

    def __init__(self, nvml: Nvml | None, handle: Any, interval_s: float = 0.2) -> None:
        self._nvml = nvml
        self._handle = handle
        self._interval = interval_s
        self._power: list[float] = []
        self._util: list[float] = []
        self._active = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_j = 0.0
        self._energy_ok = nvml is not None and nvml.energy_j(handle) is not None
        self._seconds = 0.0
        self._t0 = 0.0
        self._e0: float | None = None
        self._clocks: list[int] = []
        self._reasons: int | None = None

    def __enter__(self) -> PowerSampler:
        if self._nvml is not None and not self._energy_ok:
            self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._active.is_set():
            self.pause()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def resume(self) -> None:
        self._t0 = time.perf_counter()
        if self._nvml is not None and self._energy_ok:
            self._e0 = self._nvml.energy_j(self._handle)
        self._active.set()

    def pause(self) -> None:
        self._active.clear()
        self._seconds += time.perf_counter() - self._t0
        if self._nvml is not None:
            clock = self._nvml.sm_clock_mhz(self._handle)
            if clock is not None:
                self._clocks.append(clock)
            reasons = self._nvml.clocks_event_reasons(self._handle)
            if reasons is not None:
                self._reasons = (self._reasons or 0) | (reasons & ~0x1)
        if self._nvml is not None and self._energy_ok and self._e0 is not None:
            e1 = self._nvml.energy_j(self._handle)
            if e1 is not None:
                self._energy_j += e1 - self._e0
            u = self._nvml.utilization_pct(self._handle)
            if u is not None:
                self._util.append(u)

    def _run(self) -> None:
        assert self._nvml is not None
        while not self._stop.is_set():
            if self._active.wait(timeout=0.05):
                p = self._nvml.power_w(self._handle)
                u = self._nvml.utilization_pct(self._handle)
                if p is not None:
                    self._power.append(p)
                if u is not None:
                    self._util.append(u)
                time.sleep(self._interval)

    def summary(self) -> PowerSummary:
        mean_p = sum(self._power) / len(self._power) if self._power else None
        energy: float | None
        if self._energy_ok and self._energy_j > 0:
            energy = self._energy_j
            mean_p = energy / self._seconds if self._seconds > 0 else mean_p
        else:
            energy = mean_p * self._seconds if mean_p is not None else None
        util = sum(self._util) / len(self._util) if self._util else None
        clock = sum(self._clocks) / len(self._clocks) if self._clocks else None
        return PowerSummary(mean_p, energy, util, len(self._power), self._seconds, clock, self._reasons)
