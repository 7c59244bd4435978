"""Predicted p95 latency of a stage group: batch formation + queueing + service.

A group's replicas share one queue (the routing table sends the group's whole rate there); a free replica
takes up to its batch b. With arrival rate lambda (images/s) at the group:

- batch formation: a batch is dispatched when b requests wait or when the oldest has waited
  tau = (b - 1) / lambda (the batch timeout the plan hands the scheduler), so formation adds at most tau;
- queueing: batches arrive at lambda / b and each occupies a replica for S = T (1 + u) (service time of a
  full batch, inflated by the estimate's uncertainty u). Batches formed from Poisson arrivals have Erlang-b
  inter-arrival times (squared coefficient of variation c_a^2 = 1/b); the service is deterministic
  (c_s^2 = 0). The Allen-Cunneen approximation for GI/G/c scales the M/M/c wait by
  kappa = (c_a^2 + c_s^2) / 2, and the tail of the wait is taken as the M/M/c tail so scaled:
      P(Wq > t) ~= C(c, a) exp(-(c - a) t / (kappa S)),   a = lambda S / b  (offered load, in replicas)
      Wq_p95 = kappa S ln(C / 0.05) / (c - a)   if C(c, a) > 0.05 else 0,
  with C(c, a) the Erlang C probability of waiting;
- service: the request's own batch at its p95, T_p95 (1 + u).
p95 ~= tau + Wq_p95 + T_p95 (1 + u); summing the parts' quantiles over-states the p95 of the sum, the safe
side. A workload's p95 is the sum over its topology's groups (hops between pools are not modelled).
The scheduler's workers batch greedily rather than wait out tau; `planner.solver.simulate` runs that policy, and
`benchmarks/p95_model.py` compares the two (docs/benchmarks.md): -8% to +37% of the policy assumed here; against
the greedy one mostly conservative, and optimistic by up to 3.3% at realistic fixed shares with many replicas near
full load.

Shared GPUs (several low-rate groups time-sharing one card) are an M/G/1 queue of every tenant's batches:
Pollaczek-Khinchine mean wait Wq = sum_i lambda_i E[S_i^2] / (2 (1 - rho)) with the exponential tail
P(W > t) ~= rho exp(-rho t / Wq), so Wq_p95 = (Wq / rho) ln(rho / 0.05) when rho > 0.05. Tenants share a
GPU only within a service-time class (batches of 0.25 x 4^(k-1) to 0.25 x 4^k s), so before the packing is
known the check uses the class bound in place of every co-tenant's service time; that bound holds after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import special

P95_TAIL = 0.05
FloatArray = NDArray[np.float64]


def erlang_c(servers: FloatArray, load: FloatArray) -> FloatArray:
    """Erlang C probability of waiting, `servers` replicas at offered `load` (vectorised; 1 if load >= c)."""
    c = np.asarray(servers, dtype=np.float64)
    a = np.asarray(load, dtype=np.float64)
    out = np.ones(np.broadcast(c, a).shape, dtype=np.float64)
    ok = (a < c) & (a > 0)
    if not np.any(ok):
        return np.where(a <= 0, 0.0, out)
    cc, aa = np.broadcast_to(c, out.shape)[ok], np.broadcast_to(a, out.shape)[ok]
    # Erlang B = Poisson pmf(c; a) / cdf(c; a), computed in log space for large c.
    log_pmf = cc * np.log(aa) - aa - special.gammaln(cc + 1)
    cdf = special.pdtr(cc, aa)
    erlang_b = np.exp(log_pmf) / np.maximum(cdf, 1e-300)
    out[ok] = cc * erlang_b / (cc - aa * (1 - erlang_b))
    out = np.where(np.broadcast_to(a, out.shape) <= 0, 0.0, out)
    return np.clip(out, 0.0, 1.0)


def queue_wait_p95_s(servers: FloatArray, load: FloatArray, service_s: FloatArray, batch: FloatArray) -> FloatArray:
    """p95 wait for a free replica (Allen-Cunneen GI/D/c, module docstring); inf when load >= servers."""
    c = np.asarray(servers, dtype=np.float64)
    a = np.asarray(load, dtype=np.float64)
    s = np.asarray(service_s, dtype=np.float64)
    kappa = 0.5 / np.asarray(batch, dtype=np.float64)
    prob = erlang_c(c, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = kappa * s * np.log(prob / P95_TAIL) / (c - a)
    wait = np.where(prob > P95_TAIL, wait, 0.0)
    return np.where(a >= c, np.inf, wait)


def formation_wait_s(batch: FloatArray, rate: float | FloatArray) -> FloatArray:
    """Batch timeout tau = (b - 1) / lambda: the most a request waits for its batch to fill."""
    b = np.asarray(batch, dtype=np.float64)
    return (b - 1.0) / np.asarray(rate, dtype=np.float64)


def pool_p95_s(
    rate: float | FloatArray,
    batch: FloatArray,
    service_s: FloatArray,
    own_p95_s: FloatArray,
    servers: FloatArray,
) -> FloatArray:
    """p95 of a pool of `servers` identical replicas carrying `rate` images/s (vectorised over options)."""
    b = np.asarray(batch, dtype=np.float64)
    s = np.asarray(service_s, dtype=np.float64)
    load = rate * s / b
    return formation_wait_s(b, rate) + queue_wait_p95_s(servers, load, s, b) + np.asarray(own_p95_s)


def min_replicas_for_latency(
    rate: float | FloatArray,
    batch: FloatArray,
    service_s: FloatArray,
    own_p95_s: FloatArray,
    start: FloatArray,
    budget_s: FloatArray,
    max_extra: int = 64,
) -> FloatArray:
    """Smallest replica count >= start whose pool p95 fits the budget; inf if none within max_extra more.

    `rate` is one rate for every element or one per element (options of many workloads checked at once)."""
    c = np.asarray(start, dtype=np.float64).copy()
    budget = np.asarray(budget_s, dtype=np.float64)
    rates = np.broadcast_to(np.asarray(rate, dtype=np.float64), c.shape)
    result = np.full(c.shape, np.inf)
    floor = formation_wait_s(batch, rates) + own_p95_s
    pending = floor <= budget
    for _ in range(max_extra + 1):
        if not np.any(pending):
            break
        idx = np.nonzero(pending)[0]
        p95 = pool_p95_s(rates[idx], batch[idx], service_s[idx], own_p95_s[idx], c[idx])
        fits = p95 <= budget[idx]
        result[idx[fits]] = c[idx[fits]]
        pending[idx[fits]] = False
        c[idx[~fits]] += 1
    return result


def shared_wait_p95_s(utilization: float, second_moment_s2: float, batch_rate: float) -> float:
    """p95 wait on a time-shared GPU (M/G/1, Pollaczek-Khinchine with an exponential tail)."""
    if utilization >= 1:
        return math.inf
    if utilization <= P95_TAIL or batch_rate <= 0:
        return 0.0
    mean_wait = batch_rate * second_moment_s2 / (2 * (1 - utilization))
    return mean_wait / utilization * math.log(utilization / P95_TAIL)


@dataclass(frozen=True)
class Tenant:
    """One group time-sharing a GPU: its image rate, batch, occupancy per batch and own p95 service."""

    rate: float
    batch: int
    service_s: float
    own_p95_s: float


def shared_p95_s(tenants: Sequence[Tenant]) -> list[float]:
    """Each tenant's p95 on a shared GPU: its batch timeout + the shared queue's p95 wait + its service."""
    batch_rates = [t.rate / t.batch for t in tenants]
    total = sum(batch_rates)
    rho = sum(r * t.service_s for r, t in zip(batch_rates, tenants, strict=True))
    second = sum(r * t.service_s**2 for r, t in zip(batch_rates, tenants, strict=True))
    wait = shared_wait_p95_s(rho, second / total if total else 0.0, total)
    return [(t.batch - 1) / t.rate + wait + t.own_p95_s for t in tenants]


SHARE_CLASS_BASE_S = 0.25
SHARE_CLASS_STEP = 4.0


def share_class(service_s: FloatArray) -> NDArray[np.int64]:
    """The service-time class of a shared tenant: k with 0.25 x 4^(k-1) < S <= 0.25 x 4^k seconds (k >= 0).

    Tenants share a GPU only within a class, so every co-tenant's batch takes at most the class bound, which
    is what makes the pre-solve latency check hold for whatever tenants the packing puts together."""
    s = np.asarray(service_s, dtype=np.float64)
    k = np.ceil(np.log(np.maximum(s, 1e-12) / SHARE_CLASS_BASE_S) / np.log(SHARE_CLASS_STEP) - 1e-12)
    out: NDArray[np.int64] = np.maximum(k, 0).astype(np.int64)
    return out


def share_class_bound_s(klass: NDArray[np.int64] | int) -> FloatArray:
    """The longest batch service time of a class."""
    out: FloatArray = SHARE_CLASS_BASE_S * SHARE_CLASS_STEP ** np.asarray(klass, dtype=np.float64)
    return out


def shared_check_p95_s(
    rate: FloatArray, batch: FloatArray, own_p95_s: FloatArray, bound_s: FloatArray, utilization: float
) -> FloatArray:
    """Pre-solve p95 of a tenant on a shared GPU filled to `utilization` by tenants whose batches take at most
    `bound_s`: Pollaczek-Khinchine with E[S^2] <= bound x E[S], so Wq <= rho bound / (2 (1 - rho))."""
    bound = np.asarray(bound_s, dtype=np.float64)
    if utilization <= P95_TAIL:
        wait = np.zeros_like(bound)
    else:
        mean_wait = utilization * bound / (2 * (1 - utilization))
        wait = mean_wait / utilization * math.log(utilization / P95_TAIL)
    return formation_wait_s(batch, rate) + wait + np.asarray(own_p95_s)
