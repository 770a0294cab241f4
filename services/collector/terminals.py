"""Terminal registrations and auth codes, persisted so every collector replica knows them, and
the session registry: which replica holds each authenticated terminal's connection.

A terminal registers once (0x0100) and receives an auth code (0x8100); on every connection it
authenticates with that code (0x0102). Codes live in the store — SQLite for the embedded run,
PostgreSQL when replicas share them. On authentication the replica claims the terminal's session
(``jt808_sessions``: replica index, a session id naming the connection, a lease renewed while it
lasts), so a command consumed by another replica can be forwarded to the right one.
"""

from __future__ import annotations

import abc
import asyncio
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.clock import Clock
from shared.errors import ConfigError, TransientError


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """One registered terminal."""

    terminal_phone: str
    auth_code: str
    plate: str
    terminal_id: str
    registered_at: datetime


def new_auth_code() -> str:
    """A fresh, unguessable auth code (16 hex digits, ASCII so every version can carry it)."""
    return secrets.token_hex(8).upper()


class TerminalStore(abc.ABC):
    """Where registrations and auth codes persist."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the table when missing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect."""

    @abc.abstractmethod
    async def register(self, terminal_phone: str, plate: str, terminal_id: str) -> TerminalRecord:
        """Register (or re-register) a terminal with a new auth code."""

    @abc.abstractmethod
    async def find(self, terminal_phone: str) -> TerminalRecord | None:
        """The terminal's registration, or None."""

    @abc.abstractmethod
    async def delete(self, terminal_phone: str) -> None:
        """Forget a terminal (deregistration)."""

    # --- session registry -------------------------------------------------------------------
    @abc.abstractmethod
    async def claim_session(self, terminal_phone: str, replica: int, session_id: str,
                            lease_until: float) -> None:
        """Record that ``replica`` holds the terminal's connection now (the newest claim wins)."""

    @abc.abstractmethod
    async def renew_sessions(self, session_ids: Sequence[str], lease_until: float) -> None:
        """Extend the lease of these sessions (epoch seconds on the gateway's clock)."""

    @abc.abstractmethod
    async def release_session(self, terminal_phone: str, session_id: str) -> None:
        """Forget the session, unless a newer connection has claimed the terminal since."""

    @abc.abstractmethod
    async def release_replica(self, replica: int) -> None:
        """Forget every session of ``replica`` (it starts afresh: it holds no connection)."""

    @abc.abstractmethod
    async def find_sessions(self, terminal_phones: Sequence[str], now: float) -> dict[str, int]:
        """Terminal phone → replica index, for the sessions whose lease runs past ``now``."""


class SqliteTerminalStore(TerminalStore):
    """Terminals in the embedded SQLite database."""

    def __init__(self, path: str, *, clock: Clock | None = None) -> None:
        self.path = path
        self.clock = clock or Clock()  # stamps registered_at
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
            try:
                for attempt in range(100):
                    try:
                        # Switching to WAL needs an exclusive lock and does not wait for it
                        # (no busy handler): another process or store opening the same file
                        # at the same moment gets "database is locked". Retry briefly.
                        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                            conn.execute("PRAGMA journal_mode=WAL")
                        conn.execute(
                            "CREATE TABLE IF NOT EXISTS jt808_terminals (terminal_phone TEXT "
                            "PRIMARY KEY, auth_code TEXT NOT NULL, plate TEXT NOT NULL, "
                            "terminal_id TEXT NOT NULL, registered_at TEXT NOT NULL)")
                        conn.execute(_SESSIONS_TABLE.format(lease="REAL"))
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
        except sqlite3.OperationalError as exc:
            raise TransientError(f"sqlite: {exc}") from exc

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

    async def _q(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        if self._conn is None:
            raise TransientError("terminal store is not open")
        conn = self._conn
        async with self._lock:
            try:
                return await asyncio.to_thread(lambda: conn.execute(sql, args).fetchall())
            except sqlite3.OperationalError as exc:
                raise TransientError(f"sqlite: {exc}") from exc

    async def register(self, terminal_phone: str, plate: str, terminal_id: str) -> TerminalRecord:
        rec = TerminalRecord(terminal_phone, new_auth_code(), plate, terminal_id,
                             self.clock.now())
        await self._q("INSERT OR REPLACE INTO jt808_terminals VALUES (?,?,?,?,?)",
                      (rec.terminal_phone, rec.auth_code, rec.plate, rec.terminal_id,
                       rec.registered_at.isoformat()))
        return rec

    async def find(self, terminal_phone: str) -> TerminalRecord | None:
        rows = await self._q("SELECT terminal_phone, auth_code, plate, terminal_id, registered_at"
                             " FROM jt808_terminals WHERE terminal_phone=?", (terminal_phone,))
        if not rows:
            return None
        p, code, plate, tid, at = rows[0]
        return TerminalRecord(str(p), str(code), str(plate), str(tid),
                              datetime.fromisoformat(str(at)))

    async def delete(self, terminal_phone: str) -> None:
        await self._q("DELETE FROM jt808_terminals WHERE terminal_phone=?", (terminal_phone,))

    async def claim_session(self, terminal_phone: str, replica: int, session_id: str,
                            lease_until: float) -> None:
        await self._q("INSERT OR REPLACE INTO jt808_sessions VALUES (?,?,?,?)",
                      (terminal_phone, replica, session_id, lease_until))

    async def renew_sessions(self, session_ids: Sequence[str], lease_until: float) -> None:
        ids = list(session_ids)
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            await self._q(f"UPDATE jt808_sessions SET lease_until=? WHERE session_id IN "
                          f"({','.join('?' * len(chunk))})", (lease_until, *chunk))

    async def release_session(self, terminal_phone: str, session_id: str) -> None:
        await self._q("DELETE FROM jt808_sessions WHERE terminal_phone=? AND session_id=?",
                      (terminal_phone, session_id))

    async def release_replica(self, replica: int) -> None:
        await self._q("DELETE FROM jt808_sessions WHERE replica=?", (replica,))

    async def find_sessions(self, terminal_phones: Sequence[str], now: float) -> dict[str, int]:
        phones = list(terminal_phones)
        found: dict[str, int] = {}
        for i in range(0, len(phones), _CHUNK):
            chunk = phones[i : i + _CHUNK]
            rows = await self._q(
                f"SELECT terminal_phone, replica FROM jt808_sessions WHERE lease_until > ? AND "
                f"terminal_phone IN ({','.join('?' * len(chunk))})", (now, *chunk))
            found.update((str(p), int(r)) for p, r in rows)  # type: ignore[call-overload]
        return found


_CHUNK = 500  # under SQLite's default limit of bound parameters per statement
_SESSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS jt808_sessions (terminal_phone TEXT PRIMARY KEY, "
    "replica INTEGER NOT NULL, session_id TEXT NOT NULL, lease_until {lease} NOT NULL)")


_PG_SCHEMA_LOCK = 0x7461_3830_3874  # advisory lock key ("ta808t"): one schema change at a time


class PostgresTerminalStore(TerminalStore):
    """Terminals in PostgreSQL, shared by every collector replica.

    Errors reaching the server (connection lost, server restarting) become
    :class:`~shared.errors.TransientError`, so callers can answer "try again" instead of failing.
    """

    def __init__(self, dsn: str, *, max_connections: int = 4,
                 clock: Clock | None = None) -> None:
        self.dsn = dsn
        self.clock = clock or Clock()  # stamps registered_at
        self.max_connections = max_connections
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        try:
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.max_connections)
        except (OSError, asyncpg.PostgresError) as exc:
            raise TransientError(f"terminal store: cannot connect to PostgreSQL: {exc}") from exc
        async with pool.acquire() as conn, conn.transaction():
            # Replicas start together: CREATE TABLE IF NOT EXISTS is not safe against a
            # concurrent twin (unique violation on pg_type), so take turns.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PG_SCHEMA_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS jt808_terminals (terminal_phone TEXT PRIMARY KEY, "
                "auth_code TEXT NOT NULL, plate TEXT NOT NULL, terminal_id TEXT NOT NULL, "
                "registered_at TIMESTAMPTZ NOT NULL)")
            await conn.execute(_SESSIONS_TABLE.format(lease="DOUBLE PRECISION"))
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> Any:
        """The connection pool (open() first)."""
        if self._pool is None:
            raise TransientError("terminal store is not open")
        return self._pool

    async def _call(self, method: str, sql: str, *args: object) -> Any:
        import asyncpg

        try:
            return await getattr(self.pool, method)(sql, *args)
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.OperatorInterventionError, asyncpg.TooManyConnectionsError) as exc:
            raise TransientError(f"terminal store: {exc}") from exc

    async def register(self, terminal_phone: str, plate: str, terminal_id: str) -> TerminalRecord:
        rec = TerminalRecord(terminal_phone, new_auth_code(), plate, terminal_id,
                             self.clock.now())
        await self._call(
            "execute",
            "INSERT INTO jt808_terminals VALUES ($1,$2,$3,$4,$5) ON CONFLICT (terminal_phone) "
            "DO UPDATE SET auth_code=$2, plate=$3, terminal_id=$4, registered_at=$5",
            rec.terminal_phone, rec.auth_code, rec.plate, rec.terminal_id, rec.registered_at)
        return rec

    async def find(self, terminal_phone: str) -> TerminalRecord | None:
        row = await self._call(
            "fetchrow",
            "SELECT terminal_phone, auth_code, plate, terminal_id, registered_at "
            "FROM jt808_terminals WHERE terminal_phone=$1", terminal_phone)
        return None if row is None else TerminalRecord(*row)

    async def delete(self, terminal_phone: str) -> None:
        await self._call("execute", "DELETE FROM jt808_terminals WHERE terminal_phone=$1",
                         terminal_phone)

    async def claim_session(self, terminal_phone: str, replica: int, session_id: str,
                            lease_until: float) -> None:
        await self._call(
            "execute",
            "INSERT INTO jt808_sessions VALUES ($1,$2,$3,$4) ON CONFLICT (terminal_phone) "
            "DO UPDATE SET replica=$2, session_id=$3, lease_until=$4",
            terminal_phone, replica, session_id, lease_until)

    async def renew_sessions(self, session_ids: Sequence[str], lease_until: float) -> None:
        if session_ids:
            await self._call("execute", "UPDATE jt808_sessions SET lease_until=$1 "
                             "WHERE session_id = ANY($2::text[])", lease_until, list(session_ids))

    async def release_session(self, terminal_phone: str, session_id: str) -> None:
        await self._call("execute", "DELETE FROM jt808_sessions WHERE terminal_phone=$1 AND "
                         "session_id=$2", terminal_phone, session_id)

    async def release_replica(self, replica: int) -> None:
        await self._call("execute", "DELETE FROM jt808_sessions WHERE replica=$1", replica)

    async def find_sessions(self, terminal_phones: Sequence[str], now: float) -> dict[str, int]:
        if not terminal_phones:
            return {}
        rows = await self._call(
            "fetch", "SELECT terminal_phone, replica FROM jt808_sessions WHERE lease_until > $1 "
            "AND terminal_phone = ANY($2::text[])", now, list(terminal_phones))
        return {str(r[0]): int(r[1]) for r in rows}


def terminal_store_from_url(url: str, *, clock: Clock | None = None) -> TerminalStore:
    """``sqlite:///path`` or ``postgresql://…`` → a terminal store (not yet open)."""
    if url.startswith("sqlite:///"):
        return SqliteTerminalStore(url.removeprefix("sqlite:///"), clock=clock)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresTerminalStore(url, clock=clock)
    raise ConfigError(f"unsupported database URL {url!r}")
