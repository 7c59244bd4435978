"""Engines and sessions from the settings; SQLite gets foreign keys and WAL, PostgreSQL a pool."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from planner.core.config import default_data_dir, get_settings
from planner.core.errors import InputError

URL_HINT = (
    "check --database-url (or PLANNER_DATABASE_URL): e.g. sqlite:///path/to/planner.db or "
    "postgresql://user@host:5432/planner"
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def _sqlite_explicit_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def normalise_url(url: str) -> str:
    """Let users write postgresql:// (the usual form) and still get psycopg 3, not psycopg2."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _masked(url: str) -> str:
    """A URL that did not parse, for an error message: whatever sits between `:` and `@` (a password) hidden."""
    return re.sub(r":[^:@/]*@", ":***@", url)


def parse_url(url: str) -> URL:
    """The URL parsed, or an InputError that names it (password hidden) and says what a good one looks like."""
    try:
        return make_url(normalise_url(url))
    except (ArgumentError, ValueError) as exc:
        raise InputError(f"database URL {_masked(url)!r} is not a URL SQLAlchemy can read ({exc}); {URL_HINT}") from exc


def _sqlite_directory(database: str) -> None:
    """Create the embedded default's directory (a fresh machine just works); refuse any other missing one.

    A path the user typed whose directory is missing is most likely a typo: creating it would hide the typo and
    scatter stores over the disk, so the error names the directory and the user creates it on purpose.
    """
    parent = Path(database).expanduser().absolute().parent
    if parent.is_dir():
        return
    if parent == default_data_dir().expanduser().absolute():
        parent.mkdir(parents=True, exist_ok=True)
        return
    raise InputError(
        f"database URL sqlite:///{database}: the directory {parent} does not exist; create it (mkdir -p {parent}) "
        "or point --database-url (or PLANNER_DATABASE_URL) at a file in an existing directory."
    )


def make_engine(url: str, *, sqlite_savepoints: bool = False, **kwargs: Any) -> Engine:
    """An engine for a URL; creates the embedded default's directory so a fresh machine just works.

    A malformed URL, an unknown backend, or a SQLite file in a missing directory (other than the default's) is
    an InputError naming the URL, not a traceback.

    `sqlite_savepoints` hands SQLite's transactions to SQLAlchemy (explicit BEGIN, the documented pysqlite
    recipe) so SAVEPOINTs work, which the tests' roll-back-everything sessions need. The store's own code uses
    no savepoints and keeps pysqlite's default (reads outside transactions, a write lock only when writing),
    under which concurrent workers on one embedded file do not lock each other out.
    """
    parsed = parse_url(url)
    url = normalise_url(url)
    try:
        backend = parsed.get_backend_name()
        parsed.get_dialect()
    except ArgumentError as exc:  # NoSuchModuleError: no such backend or driver
        raise InputError(
            f"database URL {parsed.render_as_string(hide_password=True)!r}: unknown backend {parsed.drivername!r} "
            f"({exc}); {URL_HINT}"
        ) from exc
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _sqlite_directory(parsed.database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        if sqlite_savepoints:
            event.listen(engine, "connect", _sqlite_explicit_transactions)
            event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """One engine per URL per process (engines own connection pools)."""
    return make_engine(url)


def default_engine() -> Engine:
    return engine_for(get_settings().database_url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any error, so nothing is half-written."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
