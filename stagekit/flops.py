"""What one call costs in arithmetic and memory traffic, and which of the two bounds it.

FLOPs come from torch's FlopCounterMode (matmul, conv, SDPA; 1 MAC = 2 FLOPs). Bytes are counted by a
dispatch mode that adds up the tensors each non-view op reads and writes: the traffic of eager execution
(no fusion, no cache reuse), an upper bound for compiled code. Achieved rates against the calibrated
ceilings then class a cell compute-bound, memory-bound, or overhead-bound (neither ceiling approached).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

OVERHEAD_FRACTION = 0.1
"""Below this fraction of both ceilings, a cell is bound by launch/host overhead, not by the GPU."""

_NO_TRAFFIC = {
    "view",
    "_unsafe_view",
    "reshape",
    "expand",
    "permute",
    "transpose",
    "t",
    "squeeze",
    "unsqueeze",
    "slice",
    "select",
    "as_strided",
    "alias",
    "detach",
    "split",
    "split_with_sizes",
    "unbind",
    "chunk",
    "narrow",
    "empty",
    "empty_like",
    "empty_strided",
    "lift_fresh",
    "_to_copy_noop",
}


if torch.ops.aten._int_mm not in flop_registry:

    @register_flop_formula(torch.ops.aten._int_mm)
    def _int_mm_flop(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        """int8 matmul (our int8 dynamic layers): 2 M N K, like any matmul."""
        m, k = a_shape
        _, n = b_shape
        return 2 * int(m) * int(n) * int(k)


def _tensor_bytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


class ByteCounter(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Sums the bytes that ops read and write (views and allocations excluded)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.bytes = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        if name not in _NO_TRAFFIC:
            self.bytes += _tensor_bytes(args) + _tensor_bytes(kwargs or {}) + _tensor_bytes(out)
        return out


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one call."""

    flops: int
    bytes: int

    @property
    def tflop(self) -> float:
        return self.flops / 1e12


COUNTING_ATTENTION: ContextVar[bool] = ContextVar("counting_attention", default=False)
"""Set while a refused count is retried on the math backend: a recipe that pins an SDPA backend
(stagekit.recipes._CallContext) leaves attention alone then, since its own pin, entered inside `fn`, would
otherwise win over the retry's. FLOPs do not depend on the attention kernel, only the time does."""


def count_cost(fn: Callable[[], object]) -> Cost:
    """Run `fn` once, counting FLOPs and bytes (slow: do it outside the timed windows).

    torch's SDPA FLOP formula refuses grouped-query attention (Qwen3: fewer key/value heads than query heads);
    the math backend runs the same attention as plain matmuls, which the counter does count, so a refusal is
    retried there, whatever backend the recipe pins (COUNTING_ATTENTION).
    """
    try:
        return _count(fn)
    except (AssertionError, RuntimeError, NotImplementedError):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        token = COUNTING_ATTENTION.set(True)
        try:
            with sdpa_kernel(SDPBackend.MATH):
                return _count(fn)
        finally:
            COUNTING_ATTENTION.reset(token)


def _count(fn: Callable[[], object]) -> Cost:
    counter = FlopCounterMode(display=False)
    traffic = ByteCounter()
    with torch.no_grad(), counter, traffic:
        fn()
    return Cost(int(counter.get_total_flops()), int(traffic.bytes))


def classify(
    achieved_tflops: float | None,
    achieved_tbps: float | None,
    peak_tflops: float | None,
    peak_tbps: float | None,
) -> str | None:
    """compute / memory / overhead by which ceiling the cell comes closer to; None without ceilings."""
    if achieved_tflops is None or achieved_tbps is None or not peak_tflops or not peak_tbps:
        return None
    fc = achieved_tflops / peak_tflops
    fm = achieved_tbps / peak_tbps
    if max(fc, fm) < OVERHEAD_FRACTION:
        return "overhead"
    return "compute" if fc >= fm else "memory"
