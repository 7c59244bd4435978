"""A mixed-integer linear program with named columns and rows, solved by scipy.optimize.milp (HiGHS).

Names make a model one can read: `to_lp()` writes it in the CPLEX LP format (any MILP solver, and a person, can
read it), `to_dict()` / `from_dict()` keep it as JSON (a test fixture solves the very model that showed a solver
bug). Columns and rows keep the order they were added in, which is the order HiGHS sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp
from scipy.sparse import coo_array

Coefs = Mapping[int, float] | Iterable[tuple[int, float]]
"""A row's terms: column index -> coefficient (zeros are left out)."""

_LP_UNSAFE = re.compile(r"[^A-Za-z0-9_.,()!\"#$%&/;?@`'{}|~]")


def lp_name(*parts: object) -> str:
    """A name the LP format accepts: `kind(part,part,...)`, other characters replaced by `_`."""
    kind, *rest = parts
    text = f"{kind}({','.join(str(p) for p in rest)})" if rest else str(kind)
    return _LP_UNSAFE.sub("_", text)


@dataclass
class Model:
    """Columns (cost, bounds, integrality, owner) and sparse rows (lb <= a x <= ub), each with a name."""

    columns: list[str] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    """The workload whose decision a column is (-1: shared by all, e.g. a pool's GPUs): stage 1 fixes by it."""
    rows: list[str] = field(default_factory=list)
    row_lb: list[float] = field(default_factory=list)
    row_ub: list[float] = field(default_factory=list)
    entries: tuple[list[int], list[int], list[float]] = field(default_factory=lambda: ([], [], []))
    """(row, column, value) of every nonzero."""

    def var(self, name: str, cost: float, lb: float, ub: float, integer: bool, owner: int = -1) -> int:
        """Add a column; returns its index."""
        self.columns.append(name)
        self.cost.append(cost)
        self.lower.append(lb)
        self.upper.append(ub)
        self.integer.append(1 if integer else 0)
        self.owner.append(owner)
        return len(self.cost) - 1

    def row(self, name: str, coefs: Coefs, lb: float, ub: float) -> None:
        """Add a row lb <= sum coef * column <= ub."""
        r = len(self.rows)
        rows, cols, vals = self.entries
        for c, v in coefs.items() if isinstance(coefs, Mapping) else coefs:
            if v != 0:
                rows.append(r)
                cols.append(c)
                vals.append(v)
        self.rows.append(name)
        self.row_lb.append(lb)
        self.row_ub.append(ub)

    # ---- solving ----------------------------------------------------------------------------------------

    def constraints(self) -> list[LinearConstraint]:
        """The rows as one scipy constraint (none for a model without rows)."""
        if not self.rows:
            return []
        rows, cols, vals = self.entries
        a = coo_array((vals, (rows, cols)), shape=(len(self.rows), len(self.columns))).tocsr()
        return [LinearConstraint(a, np.array(self.row_lb), np.array(self.row_ub))]

    def solve(
        self,
        options: Mapping[str, Any],
        *,
        relax: bool = False,
        lower: NDArray[np.float64] | None = None,
        upper: NDArray[np.float64] | None = None,
        constraints: list[LinearConstraint] | None = None,
    ) -> OptimizeResult:
        """scipy.optimize.milp on the model: `relax` drops integrality (the LP relaxation), `lower` / `upper`
        replace the column bounds (columns fixed by stage 1), `constraints` reuses `constraints()`."""
        integrality = np.zeros(len(self.cost)) if relax else np.array(self.integer)
        return milp(
            c=np.array(self.cost),
            constraints=self.constraints() if constraints is None else constraints,
            integrality=integrality,
            bounds=Bounds(
                np.array(self.lower) if lower is None else lower, np.array(self.upper) if upper is None else upper
            ),
            options=dict(options),
        )

    # ---- reading and writing ----------------------------------------------------------------------------

    def to_lp(self) -> str:
        """The model in the CPLEX LP format: objective, rows, bounds, integer columns."""
        terms: list[list[tuple[int, float]]] = [[] for _ in self.rows]
        for r, c, v in zip(*self.entries, strict=True):
            terms[r].append((c, v))

        def expr(pairs: Iterable[tuple[int, float]]) -> str:
            text = " ".join(f"{'-' if v < 0 else '+'} {abs(v):.17g} {self.columns[c]}" for c, v in pairs)
            return text or "0"

        lines = ["Minimize", f" obj: {expr((c, v) for c, v in enumerate(self.cost) if v != 0)}", "Subject To"]
        for name, pairs, lb, ub in zip(self.rows, terms, self.row_lb, self.row_ub, strict=True):
            body = expr(pairs)
            if lb == ub:
                lines.append(f" {name}: {body} = {lb:.17g}")
                continue
            if np.isfinite(lb):
                lines.append(f" {name}{'_lo' if np.isfinite(ub) else ''}: {body} >= {lb:.17g}")
            if np.isfinite(ub):
                lines.append(f" {name}{'_hi' if np.isfinite(lb) else ''}: {body} <= {ub:.17g}")
        lines.append("Bounds")
        for name, lo, hi in zip(self.columns, self.lower, self.upper, strict=True):
            low = f"{lo:.17g}" if np.isfinite(lo) else "-inf"
            high = f"{hi:.17g}" if np.isfinite(hi) else "+inf"
            lines.append(f" {low} <= {name} <= {high}")
        generals = [name for name, k in zip(self.columns, self.integer, strict=True) if k]
        if generals:
            lines += ["General", *(f" {name}" for name in generals)]
        lines.append("End")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The model as plain JSON-able data (`from_dict` reads it back)."""
        rows, cols, vals = self.entries
        return {
            "columns": self.columns,
            "cost": self.cost,
            "lower": [_finite(v) for v in self.lower],
            "upper": [_finite(v) for v in self.upper],
            "integer": self.integer,
            "owner": self.owner,
            "rows": self.rows,
            "row_lb": [_finite(v) for v in self.row_lb],
            "row_ub": [_finite(v) for v in self.row_ub],
            "entries": [rows, cols, vals],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Model:
        def num(values: Iterable[float | str]) -> list[float]:
            return [float(v) for v in values]

        rows, cols, vals = data["entries"]
        return cls(
            columns=list(data["columns"]),
            cost=num(data["cost"]),
            lower=num(data["lower"]),
            upper=num(data["upper"]),
            integer=[int(v) for v in data["integer"]],
            owner=[int(v) for v in data["owner"]],
            rows=list(data["rows"]),
            row_lb=num(data["row_lb"]),
            row_ub=num(data["row_ub"]),
            entries=([int(v) for v in rows], [int(v) for v in cols], num(vals)),
        )


def _finite(value: float) -> float | str:
    """JSON has no infinity: "inf" / "-inf" strings, which float() reads back."""
    return value if np.isfinite(value) else ("inf" if value > 0 else "-inf")
