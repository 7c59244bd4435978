"""Performance model: measured cells, batch interpolation and roofline transfer to other GPU families."""

from planner.perf.model import CellEstimate, CellKey, PerfModel, PerfSettings, QualityMetric
from planner.perf.roofline import Calibration, Ceilings, ceilings_for, flops_per_call, split_time, transfer_ms

__all__ = [
    "Calibration",
    "Ceilings",
    "CellEstimate",
    "CellKey",
    "PerfModel",
    "PerfSettings",
    "QualityMetric",
    "ceilings_for",
    "flops_per_call",
    "split_time",
    "transfer_ms",
]
