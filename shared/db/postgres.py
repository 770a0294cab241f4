"""The production backend: a pool of asyncpg connections to PostgreSQL."""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, ClassVar

import asyncpg

from shared.db import Database, Query, Row
from shared.errors import TransientError


def _redact(dsn: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", dsn)


class _Conn(Query):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: object) -> int:
        status = await self.conn.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1] if isinstance(status, str) else ""
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [dict(r) for r in await self.conn.fetch(sql, *args)]


_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError,
                asyncpg.exceptions.OperatorInterventionError)
"""The server away: refused or lost connections, and shutting down, starting up or restarted
(SQLSTATE class 57: ``pg_ctl stop -m fast`` ends sessions with 57P01)."""


class PostgresDatabase(Database):
    """PostgreSQL through asyncpg; connection errors are transient (retry later)."""

    dialect = "postgres"
    _types: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"TS": "timestamptz", "SERIAL": "bigserial PRIMARY KEY", "JSON": "text"})

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 8) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=self._min_size,
                                                   max_size=self._max_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise TransientError(f"cannot connect to {_redact(self.dsn)}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _pool_or_raise(self) -> asyncpg.Pool:
        if self._pool is None:
            raise TransientError(f"database {_redact(self.dsn)} is not open")
        return self._pool

    async def execute(self, sql: str, *args: object) -> int:
        try:
            async with self._pool_or_raise().acquire() as conn:
                return await _Conn(conn).execute(sql, *args)
        except _UNREACHABLE as exc:
            raise TransientError(f"postgresql: {exc}") from exc

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        try:
            async with self._pool_or_raise().acquire() as conn:
                return await _Conn(conn).fetch(sql, *args)
        except _UNREACHABLE as exc:
            raise TransientError(f"postgresql: {exc}") from exc

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Query]:
        try:
            async with self._pool_or_raise().acquire() as conn:
                try:
                    async with conn.transaction():
                        yield _Conn(conn)
                except asyncpg.InterfaceError as exc:
                    # Rolling back in a session the server ended fails too: say why it ended.
                    cause = exc.__context__
                    if not isinstance(cause, _UNREACHABLE):
                        raise
                    raise TransientError(f"postgresql: {cause}") from exc
        except _UNREACHABLE as exc:
            raise TransientError(f"postgresql: {exc}") from exc

    def transaction(self) -> Any:
        return self._tx()

    async def migrate(self, component: str, migrations: Sequence[str]) -> int:
        async with self.transaction() as tx:
            # Replicas opening at once take turns (a lock per component).
            await tx.execute("SELECT pg_advisory_xact_lock($1)",
                             zlib.crc32(f"tti_migrations:{component}".encode()))
            await tx.execute("CREATE TABLE IF NOT EXISTS tti_migrations (component text NOT "
                             "NULL, version integer NOT NULL, applied_at timestamptz NOT NULL "
                             "DEFAULT now(), PRIMARY KEY (component, version))")
            current = int(await tx.fetch_value(
                "SELECT COALESCE(MAX(version), 0) FROM tti_migrations WHERE component = $1",
                component) or 0)
            for version, script in enumerate(migrations, start=1):
                if version <= current:
                    continue
                await tx.execute(self.ddl(script))
                await tx.execute("INSERT INTO tti_migrations (component, version) VALUES "
                                 "($1, $2)", component, version)
        return max(current, len(migrations))
