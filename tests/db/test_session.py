"""The store's sessions: a rolled-back unit of work leaves nothing, on both backends (SQLite included)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from planner.db import models as m
from planner.db.session import session_scope


def _fleets(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(m.Fleet).where(m.Fleet.name == name)).scalar_one())


def test_commits_inside_an_outer_transaction_roll_back(engine: Engine) -> None:
    """What the `session` fixture relies on: a test's commits become savepoints, undone at the end."""
    conn = engine.connect()
    outer = conn.begin()
    sess = Session(bind=conn, join_transaction_mode="create_savepoint")
    sess.add(m.Fleet(name="isolation-probe"))
    sess.commit()
    assert sess.scalar(select(func.count()).select_from(m.Fleet).where(m.Fleet.name == "isolation-probe")) == 1
    sess.close()
    outer.rollback()
    conn.close()
    assert _fleets(engine, "isolation-probe") == 0


def test_session_scope_rolls_back_on_error(engine: Engine) -> None:
    def half_write() -> None:
        with session_scope(engine) as s:
            s.add(m.Fleet(name="half-written"))
            s.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        half_write()
    assert _fleets(engine, "half-written") == 0


def test_session_scope_commits(engine: Engine) -> None:
    with session_scope(engine) as s:
        s.add(m.Fleet(name="kept"))
    assert _fleets(engine, "kept") == 1
    with session_scope(engine) as s:
        s.delete(s.scalars(select(m.Fleet).where(m.Fleet.name == "kept")).one())
    assert _fleets(engine, "kept") == 0
