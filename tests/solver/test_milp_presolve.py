"""HiGHS's presolve (scipy 1.17.1) returns wrong answers on small exact-packing models; the planner solves small
models again without it (planner.solver.milp.solve.PRESOLVE_CHECK_MAX_COLUMNS). The models here are the MILPs of
an exhaustive-test instance (one family, two workloads), dumped with `Model.to_dict`: both have a plan at $12/h
(one cover pattern per workload), and scipy 1.17.1's presolve answers "optimal" at $36/h for the first and
"infeasible" for the second. The assertions hold whether or not a later scipy fixes presolve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from planner.solver.milp import Model
from planner.solver.milp.solve import PRESOLVE_CHECK_MAX_COLUMNS, solve_model

DATA = Path(__file__).parent / "data"
OPTIONS = {"disp": False, "mip_rel_gap": 0.0, "time_limit": 60.0}


def _model(name: str) -> Model:
    return Model.from_dict(json.loads((DATA / name).read_text()))


@pytest.mark.parametrize("name", ["presolve_wrong_optimum.json", "presolve_wrong_infeasible.json"])
def test_the_planner_finds_the_optimum_presolve_misses(name: str) -> None:
    model = _model(name)
    assert len(model.columns) <= PRESOLVE_CHECK_MAX_COLUMNS
    res, _ = solve_model(model, OPTIONS)
    assert res.x is not None
    assert res.fun == pytest.approx(12.0)
    # The answer is a plan of the model: every row and bound holds, integer columns are integral.
    x = np.asarray(res.x)
    a = model.constraints()[0].A
    assert np.all(a @ x >= np.array(model.row_lb) - 1e-7)
    assert np.all(a @ x <= np.array(model.row_ub) + 1e-7)
    integral = np.array(model.integer) == 1
    assert np.allclose(x[integral], np.round(x[integral]))
    chosen = [model.columns[c] for c in np.nonzero(x > 0.5)[0]]
    assert sorted(c.split("(")[0] for c in chosen) == ["y", "y", "z", "z"]
    # Presolve may be fixed one day; it must never claim less than the optimum.
    with_presolve = model.solve(OPTIONS)
    assert with_presolve.x is None or with_presolve.fun >= 12.0 - 1e-9


def test_a_model_dumps_as_readable_lp_text_and_round_trips() -> None:
    model = _model("presolve_wrong_optimum.json")
    text = model.to_lp()
    assert text.startswith("Minimize\n obj: ")
    assert " assign(w0): + 1 z(w0,0) + 1 z(w0,1) = 1\n" in text
    assert "General\n" in text
    assert text.endswith("End\n")
    again = Model.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
