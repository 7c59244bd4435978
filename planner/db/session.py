"""Engines and sessions from the settings; SQLite gets foreign keys and WAL, PostgreSQL a pool."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import threading
import time
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


def timeout_kwargs(url: str, *, connect_s: float, statement_s: float, pool_s: float) -> dict[str, Any]:
    """Engine arguments that bound every wait on a PostgreSQL store (none for SQLite: it is a local file).

    - connect: libpq's `connect_timeout` (whole seconds, at least 2, libpq's floor), which covers the TCP
      connection and the start-up exchange, so a server that accepts and never answers costs that long;
    - statement: the server's `statement_timeout`, sent as a start-up option, plus a client-side watchdog
      (`install_watchdog`) that cuts a connection whose answer has not come 2 s after it, for a server that
      stopped answering at all (a hung host, a black-holed route): the server cannot cancel what it never saw;
    - pool: how long a request waits for a pooled connection (`pool_timeout`).
    Each surfaces as an OperationalError or TimeoutError, which the API answers 503 with Retry-After.
    """
    if parse_url(url).get_backend_name() == "sqlite":
        return {}
    return {
        "connect_args": {
            "connect_timeout": max(2, math.ceil(connect_s)),
            "options": f"-c statement_timeout={int(statement_s * 1000)}",
        },
        "pool_timeout": pool_s,
    }


WATCHDOG_GRACE_S = 2.0


def install_watchdog(engine: Engine, *, statement_s: float) -> None:
    """Cut a PostgreSQL connection whose statement has had no answer for `statement_s` + 2 s.

    `statement_timeout` is the server's: a server (or a route to it) that stopped answering never sends the
    cancellation, and psycopg would wait forever. The watchdog shuts the connection's socket down, the wait
    ends with an OperationalError, SQLAlchemy invalidates the connection, and the next request connects anew:
    the service recovers without a restart once the database is back.
    """
    if engine.dialect.name != "postgresql":
        return
    limit = statement_s + WATCHDOG_GRACE_S

    def _arm(conn: Any, _cursor: Any, _stmt: Any, _params: Any, _context: Any, _many: Any) -> None:
        try:
            fd = int(conn.connection.dbapi_connection.fileno())
        except Exception:  # a closed connection: nothing to guard
            return
        conn.info["watchdog"] = _WATCHDOG.arm(fd, limit)

    def _disarm(conn: Any, *_args: Any) -> None:
        token = conn.info.pop("watchdog", None)
        if token is not None:
            _WATCHDOG.disarm(token)

    def _on_error(ctx: Any) -> None:
        if ctx.connection is not None:
            _disarm(ctx.connection)

    event.listen(engine, "before_cursor_execute", _arm)
    event.listen(engine, "after_cursor_execute", _disarm)
    event.listen(engine, "handle_error", _on_error)


class _Watchdog:
    """One daemon thread for the process: arming a statement is a dict insert (the heartbeat's hot path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, int]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, fd: int, limit_s: float) -> int:
        with self._lock:
            self._next += 1
            self._armed[self._next] = (time.monotonic() + limit_s, fd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
            return self._next

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                due = [(t, fd) for t, (deadline, fd) in self._armed.items() if deadline <= now]
                for token, _ in due:
                    del self._armed[token]
            for _, fd in due:
                _cut(fd)


_WATCHDOG = _Watchdog()


def _cut(fd: int) -> None:
    """Shut a connection's socket down (both ways): the blocked read returns at once."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


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
