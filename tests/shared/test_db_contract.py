"""shared/db: the same contract on SQLite and PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.db import Database, database_from_url
from shared.errors import ConfigError
from tests.conftest import fresh_pg_database

MIGRATIONS = [
    """CREATE TABLE notes (seq {SERIAL}, author TEXT NOT NULL, at {TS} NOT NULL,
       body {JSON} NOT NULL);
       CREATE INDEX notes_author ON notes (author)""",
    "ALTER TABLE notes ADD COLUMN score INTEGER",
]
T = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    database = database_from_url(url)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str
             ) -> AsyncIterator[Database]:
    """Each contract test runs on both backends."""
    if request.param == "sqlite":
        async with opened(f"sqlite:///{tmp_path}/test.db") as database:
            yield database
    else:
        async with fresh_pg_database(unique_name) as dsn, opened(dsn) as database:
            yield database


async def test_migrations_apply_once_per_component(db: Database) -> None:
    assert await db.migrate("notes", MIGRATIONS[:1]) == 1
    assert await db.migrate("notes", MIGRATIONS) == 2
    assert await db.migrate("notes", MIGRATIONS) == 2  # nothing new: nothing runs
    assert await db.migrate("other", []) == 0
    rows = await db.fetch("SELECT component, version FROM tti_migrations ORDER BY version")
    assert [(r["component"], r["version"]) for r in rows] == [("notes", 1), ("notes", 2)]


async def test_rows_times_and_serials_round_trip(db: Database) -> None:
    await db.migrate("notes", MIGRATIONS)
    for i, who in enumerate(("张三", "li")):
        assert await db.execute("INSERT INTO notes (author, at, body, score) VALUES "
                                "($1, $2, $3, $4)", who, T + timedelta(seconds=i), "{}", i) == 1
    rows = await db.fetch("SELECT seq, author, at, score FROM notes WHERE at >= $1 ORDER BY seq",
                          T)
    assert [r["author"] for r in rows] == ["张三", "li"]
    assert rows[0]["at"] == T and rows[0]["at"].tzinfo is not None
    assert rows[1]["seq"] > rows[0]["seq"]
    assert await db.fetch_value("SELECT COUNT(*) FROM notes WHERE author = $1", "li") == 1
    assert await db.fetch_one("SELECT * FROM notes WHERE author = $1", "nobody") is None
    # Parameters are numbered, so one may be used twice and in any order.
    assert await db.fetch_value("SELECT COUNT(*) FROM notes WHERE score = $2 OR author = $1",
                                "li", 0) == 2


async def test_a_failed_transaction_leaves_nothing(db: Database) -> None:
    await db.migrate("notes", MIGRATIONS)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO notes (author, at, body) VALUES ($1, $2, $3)", "a",
                             T, "{}")
            assert await tx.fetch_value("SELECT COUNT(*) FROM notes") == 1
            raise RuntimeError("boom")
    assert await db.fetch_value("SELECT COUNT(*) FROM notes") == 0
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO notes (author, at, body) VALUES ($1, $2, $3)", "b", T,
                         "{}")
    assert await db.fetch_value("SELECT COUNT(*) FROM notes") == 1


def test_unknown_urls_are_refused() -> None:
    with pytest.raises(ConfigError):
        database_from_url("mysql://x")
