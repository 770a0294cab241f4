"""shared/db on PostgreSQL: a session the server ends (``pg_ctl stop -m fast``, a restart, an
administrator) is a transient error, inside a transaction too, and the pool carries on after.

The server ends a session with SQLSTATE 57P01 (``AdminShutdownError``), which asyncpg does not
class as a connection error; ``pg_terminate_backend`` ends it the same way without stopping the
shared server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from shared.db.postgres import PostgresDatabase
from shared.errors import TransientError

pytestmark = pytest.mark.integration


async def _ended_while_running(dsn: str, db: PostgresDatabase,
                               work: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run ``work`` (a long query), end its session from another connection, await it."""
    pid = await db.fetch_value("SELECT pg_backend_pid()")  # the pool's one connection
    task = asyncio.create_task(work())
    admin = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(10):
            while not await admin.fetchval(  # noqa: ASYNC110 - polls the server's sessions
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 "
                    "AND query LIKE '%pg_sleep%'", pid):
                await asyncio.sleep(0.02)
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await task


async def test_a_session_ended_by_the_server_is_transient(pg_dsn: str) -> None:
    db = PostgresDatabase(pg_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        async def in_transaction() -> None:
            async with db.transaction() as tx:
                await tx.execute("SELECT pg_sleep(30)")

        with pytest.raises(TransientError, match="terminating connection"):
            await _ended_while_running(pg_dsn, db, in_transaction)
        with pytest.raises(TransientError, match="terminating connection"):
            await _ended_while_running(pg_dsn, db, lambda: db.fetch("SELECT pg_sleep(30)"))
        # The pool opens a new session for the next statement.
        assert await db.fetch_value("SELECT 41 + 1") == 42
    finally:
        await db.close()
