"""The `planner recommend` tests' shared store: migrated and seeded with the catalogs and the shipped reference
measurements (one per test module), and the settings that say so. A module opts in with
`pytestmark = pytest.mark.usefixtures("reference_settings")` and asks for `reference_url`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from planner.core.config import get_settings
from planner.crud.seed import seed
from planner.db import migrate
from planner.db.session import make_engine


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An embedded store migrated and seeded with the catalogs and the shipped reference measurements."""
    url = f"sqlite:///{tmp_path_factory.mktemp('ref') / 'planner.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    seed(engine, reference=True)
    engine.dispose()
    return url


@pytest.fixture
def reference_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests plan from the shipped data: the settings must say so (their cache is cleared both ways)."""
    monkeypatch.setenv("PLANNER_SEED_REFERENCE_DATA", "true")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
