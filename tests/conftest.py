"""Shared fixtures: a real store per test session, on SQLite and on PostgreSQL.

Every test that uses the store runs once per backend in PLANNER_TEST_DATABASES (default `sqlite,postgresql`;
`sqlite` alone for a machine without PostgreSQL). Each pytest process (each xdist worker too) gets its own
databases: a SQLite file, or a uniquely named PostgreSQL database created on the loopback server and dropped
at the end. Tests that write run inside a transaction that
is rolled back, so they see a seeded, migrated store and leave it as they found it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from planner.db import migrate
from planner.db.seed import seed_catalogs
from planner.db.session import make_engine, session_scope
from tests.models.tiny_folders import TinyFolders

# Stores opened by the code under test seed the catalogs but not the shipped reference measurements, so each test
# sees exactly the measurements it stores; tests of the reference data ask for it (PLANNER_SEED_REFERENCE_DATA).
os.environ.setdefault("PLANNER_SEED_REFERENCE_DATA", "false")
# rich pins a console's width from COLUMNS when it is set at import (xdist workers may inherit 80): make the CLI's
# tables as wide in every process, so assertions on them do not depend on how a run was started.
os.environ["COLUMNS"] = "200"

BACKENDS = [b.strip() for b in os.environ.get("PLANNER_TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
PG_ADMIN_URL = os.environ.get("PLANNER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]

if not BACKENDS or set(BACKENDS) - {"sqlite", "postgresql"}:
    raise pytest.UsageError(f"PLANNER_TEST_DATABASES must list sqlite and/or postgresql, not {BACKENDS!r}")


def _pg_admin() -> Engine:
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def new_database_url(backend: str, tmp_dir: Path, label: str = "t") -> tuple[str, object]:
    """A fresh empty database on a backend; returns (url, handle to drop it)."""
    if backend == "sqlite":
        path = tmp_dir / f"{label}-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", path
    name = f"planner_test_{label}_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_database(handle: object) -> None:
    if isinstance(handle, Path):
        for suffix in ("", "-wal", "-shm"):
            Path(str(handle) + suffix).unlink(missing_ok=True)
        return
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{handle}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test; every store fixture depends on it, so store tests run on each."""
    return str(request.param)


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A brand-new, unmigrated database (for migration and CLI tests)."""
    url, handle = new_database_url(backend, tmp_path, "empty")
    yield url
    drop_database(handle)


@pytest.fixture(scope="session")
def template_db(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """A migrated store with the catalogs seeded, to clone from (cloning is much cheaper than migrating)."""
    url, handle = seeded_database(backend, tmp_path_factory.mktemp("template"))
    yield url, handle
    drop_database(handle)


def seeded_database(backend: str, tmp_dir: Path) -> tuple[str, object]:
    """A new database of the backend, migrated, with the catalogs seeded: (URL, handle for drop_database)."""
    url, handle = new_database_url(backend, tmp_dir, "tpl")
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as session:
        seed_catalogs(session)
    engine.dispose()
    return url, handle


def clone_database(template: tuple[str, object], tmp_dir: Path, label: str) -> tuple[str, object]:
    url, handle = template
    if isinstance(handle, Path):
        path = tmp_dir / f"{label}-{uuid.uuid4().hex[:8]}.db"
        shutil.copyfile(handle, path)
        return f"sqlite:///{path}", path
    name = f"planner_test_{label}_{uuid.uuid4().hex[:10]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{handle}"'))
    admin.dispose()
    return f"{url.rsplit('/', 1)[0]}/{name}", name


@pytest.fixture
def store_url(template_db: tuple[str, object], tmp_path: Path) -> Iterator[str]:
    """A fresh migrated store with the catalogs seeded (no measurements), for one test to change freely."""
    url, handle = clone_database(template_db, tmp_path, "fresh")
    yield url
    drop_database(handle)


@pytest.fixture(scope="session")
def db_url(template_db: tuple[str, object], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's shared store (migrated, catalogs seeded, no reference measurements); tests roll back."""
    url, handle = clone_database(template_db, tmp_path_factory.mktemp("db"), "s")
    yield url
    drop_database(handle)


@pytest.fixture(scope="session")
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url, sqlite_savepoints=True)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (its commits become savepoints)."""
    conn = engine.connect()
    outer = conn.begin()
    sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield sess
    finally:
        sess.close()
        outer.rollback()
        conn.close()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> TinyFolders:
    """Tiny real-format diffusers folders (tests/models/tiny_folders.py), each built once per session on first use."""
    return TinyFolders(tmp_path_factory.mktemp("tiny-models"))
