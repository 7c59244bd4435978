"""The migrations build the models' schema exactly, both ways, on the backend under test."""

from __future__ import annotations

from sqlalchemy import inspect

from planner.db import migrate
from planner.db.base import Base
from planner.db.session import make_engine


def test_upgrade_downgrade_upgrade_and_no_drift(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.check(empty_db_url)  # raises if the models and the migrations disagree
    engine = make_engine(empty_db_url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables

    migrate.downgrade(empty_db_url, "base")
    left = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert left == set()

    migrate.upgrade(empty_db_url)
    migrate.check(empty_db_url)
    assert migrate.current_revision(engine) == migrate.head_revision(empty_db_url)
    engine.dispose()


def test_check_detects_drift(empty_db_url: str) -> None:
    """`alembic check` must be able to fail: a store one migration behind reports drift."""
    import pytest
    from alembic.util.exc import CommandError

    migrate.upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    with pytest.raises(CommandError):
        migrate.check(empty_db_url)
