"""The one SQLite and PostgreSQL plumbing: connections, transactions, numbered migrations.

A service's store writes its SQL once, in PostgreSQL's style (``$1`` parameters), with three
placeholders in its DDL that each backend fills in: ``{TS}`` an aware UTC time (``timestamptz``;
ISO 8601 text in SQLite, read back as an aware ``datetime``), ``{SERIAL}`` an auto-increment
primary key, ``{JSON}`` a JSON document (text in both: stores encode with orjson); a literal
brace in DDL is written twice (``{{``). Migrations are
numbered per component in one table, ``tti_migrations (component, version, applied_at)``, and
applied in one transaction on open (PostgreSQL under an advisory lock, so replicas starting
together do not race). Rows come back as dicts.

``sqlite:///path`` is the embedded run's database (plain sqlite3 in a thread, one connection, WAL);
``postgresql://…`` a pool of asyncpg connections. Both run the same contract tests
(``tests/shared/test_db_contract.py``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import Any, ClassVar

from shared.errors import ConfigError

Row = dict[str, Any]


class Query(abc.ABC):
    """Statements inside one connection or transaction."""

    @abc.abstractmethod
    async def execute(self, sql: str, *args: object) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: object) -> list[Row]:
        """Every row of a query."""

    async def fetch_one(self, sql: str, *args: object) -> Row | None:
        """The first row of a query, or None."""
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetch_value(self, sql: str, *args: object) -> Any:
        """The first column of the first row, or None."""
        row = await self.fetch_one(sql, *args)
        return None if row is None else next(iter(row.values()))


class Database(Query):
    """A database the services' stores share (one per deployment)."""

    dialect: str = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Query]:
        """``async with db.transaction() as tx``: all or nothing."""

    @abc.abstractmethod
    async def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply the component's migrations not applied yet (1-based); returns its version."""

    def ddl(self, sql: str) -> str:
        """Fill in the ``{TS}``, ``{SERIAL}`` and ``{JSON}`` placeholders for this backend."""
        return sql.format(**self._types)

    _types: ClassVar[Mapping[str, str]] = MappingProxyType({})


def database_from_url(url: str) -> Database:
    """``sqlite:///path`` (or ``sqlite://:memory:``) or ``postgresql://…`` → a Database."""
    if url == "sqlite://:memory:" or url.startswith("sqlite:///"):
        from shared.db.sqlite import SqliteDatabase

        return SqliteDatabase(":memory:" if url == "sqlite://:memory:"
                              else url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql:", "postgres:")):
        from shared.db.postgres import PostgresDatabase

        return PostgresDatabase(url)
    raise ConfigError(f"unsupported database URL {url!r}: use sqlite:///PATH or postgresql://…")
