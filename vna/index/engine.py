"""Opening the index: one engine per process, migrated to the current schema.

SQLite runs in WAL mode with synchronous=FULL: a commit that returned is on
disk, which the ingest relies on before it removes a drop file. PostgreSQL is
reached through psycopg 3.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import StaticPool

from vna.errors import SettingsError, TargetUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration; a test checks it against Alembic's own view. Knowing it
# lets a process that finds the schema current skip importing Alembic at all.
SCHEMA_HEAD = "0005"

logger = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)
# The Azure SDK logs every HTTP request and its headers at INFO: one line per request is noise
# in an admin's log (and costs time), not information.
logging.getLogger("azure").setLevel(logging.WARNING)


SQLITE_CACHE_KIB = 65536  # page cache per connection, for the ingest's and replicator's few


@dataclass(frozen=True)
class Pooling:
    """Connections for a process whose many threads each hold one (the DICOMweb gateway):
    `size` kept open, `overflow` more when needed, and on SQLite a smaller page cache
    per connection, since the operating system caches the file once for all of them."""

    size: int
    overflow: int
    sqlite_cache_kib: int = SQLITE_CACHE_KIB


def create(url: str, pooling: Pooling | None = None) -> Engine:
    """An engine for `url`, with the per-connection settings each backend needs."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(f"index.url: {url!r} is not a database URL") from None
    backend = parsed.get_backend_name()
    pool: dict[str, Any] = (
        {"pool_size": pooling.size, "max_overflow": pooling.overflow} if pooling else {}
    )
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60}, **pool)
        else:
            # An in-memory database lives in its connection: every thread (the ingest's
            # commit thread, the gateway's) must share that one, not get one of its own.
            args = {"timeout": 60, "check_same_thread": False}
            engine = create_engine(url, connect_args=args, poolclass=StaticPool)
        cache_kib = pooling.sqlite_cache_kib if pooling else SQLITE_CACHE_KIB

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            _sqlite_pragmas(dbapi_conn, cache_kib)

        event.listen(engine, "connect", pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            raise SettingsError("index.url: use the psycopg 3 driver (postgresql+psycopg://)")
        return create_engine(url, pool_pre_ping=True, **pool)
    raise SettingsError(f"index.url: backend {backend!r} is not supported (sqlite, postgresql)")


def _sqlite_pragmas(dbapi_conn: Any, cache_kib: int) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN, so writers take the lock up front.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    """BEGIN IMMEDIATE for a writer (the write lock up front), a deferred BEGIN for a reader.

    A reader's BEGIN goes to the driver's connection: through SQLAlchemy's execution
    machinery it cost as much as a whole index lookup (a third of a small search's time
    in the index). A writer's may wait for the lock and fail: it goes through SQLAlchemy,
    whose errors (OperationalError) the callers handle; so does a reader's failure.
    """
    if conn.info.get("write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        return
    dbapi = conn.dialect.loaded_dbapi
    try:
        conn.connection.driver_connection.execute("BEGIN")
    except dbapi.Error as exc:
        raise DBAPIError.instance("BEGIN", (), exc, dbapi.Error, dialect=conn.dialect) from exc


@contextmanager
def write_transaction(engine: Engine, durable: bool = True) -> Iterator[Connection]:
    """A transaction that means to write: on SQLite it takes the write lock at BEGIN, so
    two writers never deadlock upgrading read locks; elsewhere a plain transaction.

    `durable=False` is for bookkeeping that a power cut may roll back without harm
    (a lease, a copy recorded as verified: lost, the copy is checked again): its
    commit does not wait for the disk (SQLite synchronous=NORMAL, which in WAL mode
    still never corrupts; PostgreSQL synchronous_commit off). On SQLite only the
    operating system going down can lose it; on PostgreSQL a crash of the server too.
    The connection is discarded if it cannot be set back to durable commits, so the
    setting never reaches a transaction that must be durable.
    """
    with engine.connect() as conn:
        conn.info["write"] = True
        relaxed = not durable and conn.dialect.name == "sqlite"
        try:
            if relaxed:
                _sqlite_synchronous(conn, "NORMAL")
            with conn.begin():
                if not durable and not relaxed:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                yield conn
        finally:
            conn.info.pop("write", None)
            if relaxed:
                try:
                    _sqlite_synchronous(conn, "FULL")
                except Exception:
                    conn.invalidate()
                    raise


def _sqlite_synchronous(conn: Connection, level: str) -> None:
    """Set on the driver's connection: through SQLAlchemy it would begin a transaction."""
    driver = conn.connection.driver_connection
    if driver is not None:
        driver.execute(f"PRAGMA synchronous={level}")


def alembic_config(engine: Engine) -> Config:
    """Alembic configured in code: the migrations ship inside the package."""
    from alembic.config import Config

    cfg = Config()
    location = resources.files("vna.index") / "migrations"
    cfg.set_main_option("script_location", str(location))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    try:
        if current_revision(engine) == SCHEMA_HEAD:
            return
    except OperationalError as exc:
        raise TargetUnavailable(f"index database unreachable: {exc.orig}") from None
    from alembic import command

    cfg = alembic_config(engine)
    try:
        if engine.dialect.name == "postgresql":
            # Several processes may start at once against one database.
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(7243610)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        else:
            command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise TargetUnavailable(f"index database unreachable: {exc.orig}") from None


def open_index(url: str) -> Engine:
    """Create the engine and migrate: what every process does at start."""
    engine = create(url)
    upgrade(engine)
    return engine
