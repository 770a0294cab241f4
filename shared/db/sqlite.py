"""The embedded backend: plain sqlite3 on one connection, in a worker thread, WAL journal."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from shared.db import Database, Query, Row
from shared.errors import TransientError

R = TypeVar("R")

_PARAM = re.compile(r"\$(\d+)")
_TS_TYPE = "TTI_TS"


def _to_datetime(raw: bytes) -> datetime:
    dt = datetime.fromisoformat(raw.decode())
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# Columns declared {TS} come back as aware datetimes (sqlite3's converters are keyed by the
# declared type name; this one is ours alone).
sqlite3.register_converter(_TS_TYPE, _to_datetime)


def _arg(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def _sql(sql: str) -> str:
    """PostgreSQL's ``$n`` parameters → SQLite's numbered ``?n``."""
    return _PARAM.sub(r"?\1", sql)


class _Conn(Query):
    """Statements on the connection (the caller holds the lock)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def execute(self, sql: str, *args: object) -> int:
        return await self.db._call(lambda c: c.execute(_sql(sql), tuple(map(_arg, args)))
                                   .rowcount, locked=True)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self.db._call(lambda c: _rows(c.execute(_sql(sql),
                                                             tuple(map(_arg, args)))),
                                   locked=True)


def _rows(cur: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


class SqliteDatabase(Database):
    """SQLite through the standard library; every call runs in a thread under one lock."""

    dialect = "sqlite"
    _types: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"TS": _TS_TYPE, "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT", "JSON": "TEXT"})

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._conn is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30, detect_types=sqlite3.PARSE_DECLTYPES)
            try:
                for attempt in range(100):
                    try:
                        # Switching to WAL takes an exclusive lock without waiting for it:
                        # another store opening the same file at that moment gets "locked".
                        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                            conn.execute("PRAGMA journal_mode=WAL")
                        conn.execute("PRAGMA synchronous=NORMAL")
                        return conn
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) or attempt == 99:
                            raise
                        time.sleep(0.01 + 0.001 * attempt)
            except BaseException:
                conn.close()
                raise
            raise AssertionError("unreachable")

        try:
            self._conn = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise TransientError(f"sqlite {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            async with self._lock:
                await asyncio.to_thread(conn.close)

    async def _call(self, fn: Callable[[sqlite3.Connection], R], *, locked: bool = False) -> R:
        conn = self._conn
        if conn is None:
            raise TransientError(f"database {self.path} is not open")
        try:
            if locked:
                return await asyncio.to_thread(fn, conn)
            async with self._lock:
                return await asyncio.to_thread(fn, conn)
        except sqlite3.OperationalError as exc:  # locked, busy, disk: worth a retry
            raise TransientError(f"sqlite: {exc}") from exc

    async def execute(self, sql: str, *args: object) -> int:
        return await self._call(lambda c: c.execute(_sql(sql), tuple(map(_arg, args))).rowcount)

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self._call(lambda c: _rows(c.execute(_sql(sql), tuple(map(_arg, args)))))

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Query]:
        async with self._lock:
            await self._call(lambda c: c.execute("BEGIN IMMEDIATE"), locked=True)
            try:
                yield _Conn(self)
            except BaseException:
                await self._call(lambda c: c.execute("ROLLBACK"), locked=True)
                raise
            await self._call(lambda c: c.execute("COMMIT"), locked=True)

    def transaction(self) -> Any:
        return self._tx()

    async def migrate(self, component: str, migrations: Sequence[str]) -> int:
        await self.execute("CREATE TABLE IF NOT EXISTS tti_migrations (component TEXT NOT NULL, "
                           f"version INTEGER NOT NULL, applied_at {_TS_TYPE} NOT NULL, "
                           "PRIMARY KEY (component, version))")
        async with self.transaction() as tx:
            current = int(await tx.fetch_value(
                "SELECT COALESCE(MAX(version), 0) FROM tti_migrations WHERE component = $1",
                component) or 0)
            for version, script in enumerate(migrations, start=1):
                if version <= current:
                    continue
                for statement in _statements(self.ddl(script)):
                    await tx.execute(statement)
                await tx.execute("INSERT INTO tti_migrations VALUES ($1, $2, $3)", component,
                                 version, datetime.now(UTC))
        return max(current, len(migrations))


def _statements(script: str) -> list[str]:
    """A migration split into statements (executescript would commit the transaction)."""
    return [s.strip() for s in script.split(";") if s.strip()]
