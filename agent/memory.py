"""Peak memory of a call, and a memory cap that turns an over-budget cell into an out-of-memory cell.

On a GPU both come from the CUDA caching allocator (`max_memory_allocated`, `set_per_process_memory_fraction`).
On the CPU there is no allocator to ask, so a dispatch mode tracks the bytes of live intermediate tensors
(freed when Python drops them): weights + inputs + that peak is the call's footprint. The same tracker
raises `torch.OutOfMemoryError` when the footprint passes a cap, so the sweep's OOM handling is exercised
by CPU tests exactly as a GPU would exercise it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = float(2**30)


def module_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the parameters and buffers of some modules (each storage once)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def tensors_bytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.untyped_storage().nbytes() for t in leaves if isinstance(t, torch.Tensor))


class LiveBytesTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Tracks the bytes of tensors produced by ops and still alive; keeps the peak; enforces a cap."""

    def __init__(self, *, baseline_bytes: int, cap_bytes: int | None, known: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.baseline = baseline_bytes
        self.cap = cap_bytes
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}
        self._known = {t.untyped_storage().data_ptr() for t in known}

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves, _ = tree_flatten(out)
        for t in leaves:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self._known:
                continue
            entry = self._refs.get(ptr)
            if entry is None:
                entry = [storage.nbytes(), 0]
                self._refs[ptr] = entry
                self.live += entry[0]
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        self.peak = max(self.peak, self.live)
        if self.cap is not None and self.baseline + self.live > self.cap:
            raise torch.OutOfMemoryError(
                f"memory cap: the call needs more than {self.cap / GIB:.3f} GiB "
                f"(weights and inputs {self.baseline / GIB:.3f} GiB + {self.live / GIB:.3f} GiB live activations)"
            )
        return out


def cpu_footprint(
    fn: Callable[[], object],
    *,
    modules: Iterable[nn.Module],
    inputs: Any,
    cap_bytes: int | None,
) -> int:
    """Peak bytes of one CPU call (weights + inputs + live activations); raises OutOfMemoryError past the cap."""
    mods = list(modules)
    known = [*(p for m in mods for p in m.parameters()), *(b for m in mods for b in m.buffers())]
    known.extend(t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor))
    baseline = module_bytes(mods) + tensors_bytes(inputs)
    if cap_bytes is not None and baseline > cap_bytes:
        raise torch.OutOfMemoryError(
            f"memory cap: weights and inputs alone need {baseline / GIB:.3f} GiB, over the cap of {cap_bytes / GIB:.3f}"
        )
    tracker = LiveBytesTracker(baseline_bytes=baseline, cap_bytes=cap_bytes, known=known)
    with torch.no_grad(), tracker:
        fn()
    return baseline + tracker.peak


def set_gpu_cap(device: torch.device, cap_gib: float | None) -> None:
    """Cap this process's share of a GPU (the caching allocator raises OutOfMemoryError past it)."""
    if device.type != "cuda" or cap_gib is None:
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GIB / total), device)


def free_gpu(device: torch.device) -> None:
    """Return cached blocks to the driver between models, so the next build starts from an empty GPU."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
