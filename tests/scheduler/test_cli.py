"""The `scheduler` command as an operator runs it (a subprocess): the routing decision and the dead letter."""

from __future__ import annotations

import json

from sqlalchemy import Engine

from scheduler.config import SchedulerSettings
from tests.helpers import run_cli
from tests.scheduler.conftest import PoolDef, create_plan, settings_env

ALL = ["text_encoder", "denoiser", "vae_decoder"]


def test_route_shows_the_decision_and_the_table(settings: SchedulerSettings, engine: Engine, fleet_name: str) -> None:
    big = PoolDef("w1", 0, "h100-sxm-80gb", "sd15", ALL, capacity=9.0)
    small = PoolDef("w1", 0, "l4-24gb", "sd15", ALL, capacity=1.0)
    plan_id = create_plan(engine, fleet_name, [big, small], sizes={"w1": (512, 512, 20)})
    proc = run_cli("scheduler", "route", "--workload", "w1", "--table", env=settings_env(settings))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["pools"] == [big.name]
    assert (out["plan_id"], out["version"]) == (plan_id, plan_id)
    assert {row["pool"] for row in out["table"]} == {big.name, small.name}
    bad = run_cli("scheduler", "route", "--workload", "nope", env=settings_env(settings))
    assert bad.returncode == 2
    assert "nope" in bad.stderr


def test_dead_letter_lists_nothing_on_a_fresh_prefix(settings: SchedulerSettings) -> None:
    proc = run_cli("scheduler", "dead-letter", env=settings_env(settings))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
