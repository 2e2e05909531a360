"""Database engine, sessions and schema migrations (SQLite by default, any SQLAlchemy URL by configuration).

The schema is owned by Alembic migrations (ercp_node/storage/migrations), applied on open: a node upgraded in
place migrates its database before it serves.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def private_dir(path: str | Path) -> Path:
    """`mkdir -p` in which every directory created gets mode 0700 (Path.mkdir gives the parents it creates the
    umask's default, typically 0755). Existing directories are left as the operator made them."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    return path


def sqlite_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'ercp-node.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        private_dir(path.parent)
        if not path.exists():
            # Owner-only from the first byte: the database holds study and instance UIDs.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: readers never block the writer; one writer waits, not fails
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration. Nodes starting together on one database migrate it one after the
    other (PostgreSQL: an advisory lock held to the end of the migration's transaction; SQLite: a lock file beside
    the database), so the second finds the schema current instead of creating the same tables again."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _sqlite_migration_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


MIGRATION_LOCK = 0x65726370  # "ercp"


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine):
    db = engine.url.database if engine.dialect.name == "sqlite" else None
    if not db or db == ":memory:":
        yield
        return
    import fcntl

    fd = os.open(f"{db}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when closed, after the migration committed
        yield
    finally:
        os.close(fd)


def open_database(url: str):
    """Engine with the schema migrated, and a session factory."""
    engine = make_engine(url)
    upgrade(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
