"""Terminal store contract (registrations and auth codes), run against SQLite here and against
PostgreSQL in ``tests/integration/test_terminal_store_postgres.py``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.collector.terminals import (
    PostgresTerminalStore,
    SqliteTerminalStore,
    TerminalStore,
    terminal_store_from_url,
)
from shared.errors import ConfigError, TransientError

StoreFactory = Callable[[], TerminalStore]


async def contract_register_find_delete(make: StoreFactory) -> None:
    store = make()
    await store.open()
    try:
        assert await store.find("13912345678") is None
        rec = await store.register("13912345678", "鄂A12345", "T345678")
        assert re.fullmatch(r"[0-9A-F]{16}", rec.auth_code)
        found = await store.find("13912345678")
        assert found is not None
        assert (found.auth_code, found.plate, found.terminal_id) == (rec.auth_code, "鄂A12345",
                                                                     "T345678")
        assert found.registered_at.utcoffset() is not None
        again = await store.register("13912345678", "鄂A12345", "T345678")
        assert again.auth_code != rec.auth_code  # re-registration issues a new code
        assert (await store.find("13912345678")).auth_code == again.auth_code  # type: ignore[union-attr]
        await store.delete("13912345678")
        assert await store.find("13912345678") is None
        await store.delete("13912345678")  # deleting twice is fine
    finally:
        await store.close()


async def contract_codes_persist_and_are_shared(make: StoreFactory) -> None:
    a, b = make(), make()
    await asyncio.gather(a.open(), b.open())  # two replicas starting together
    try:
        recs = await asyncio.gather(*(a.register(f"1380000{i:04d}", f"P{i}", f"T{i}")
                                      for i in range(20)))
        for rec in recs:
            found = await b.find(rec.terminal_phone)
            assert found is not None and found.auth_code == rec.auth_code
    finally:
        await a.close()
        await b.close()
    c = make()
    await c.open()
    try:
        assert (await c.find(recs[0].terminal_phone)).auth_code == recs[0].auth_code  # type: ignore[union-attr]
    finally:
        await c.close()


async def contract_session_registry(make: StoreFactory) -> None:
    """Which replica holds a terminal: claimed, leased, renewed, released, shared by replicas."""
    a, b = make(), make()
    await asyncio.gather(a.open(), b.open())
    try:
        await a.release_replica(0)
        await a.release_replica(1)
        assert await a.find_sessions([], 0.0) == {}
        await a.claim_session("13900000001", 0, "s-1", lease_until=100.0)
        await a.claim_session("13900000002", 0, "s-2", lease_until=100.0)
        assert await b.find_sessions(["13900000001", "13900000002", "1"], 50.0) == {
            "13900000001": 0, "13900000002": 0}
        assert await b.find_sessions(["13900000001"], 100.0) == {}  # the lease ran out
        await a.renew_sessions(["s-1"], lease_until=200.0)
        assert await b.find_sessions(["13900000001", "13900000002"], 150.0) == {
            "13900000001": 0}
        # The terminal reconnects to replica 1; the old connection's late release is ignored.
        await b.claim_session("13900000001", 1, "s-3", lease_until=300.0)
        await a.release_session("13900000001", "s-1")
        assert await a.find_sessions(["13900000001"], 150.0) == {"13900000001": 1}
        await b.release_session("13900000001", "s-3")
        assert await a.find_sessions(["13900000001"], 150.0) == {}
        # A restarted replica forgets what it claimed before.
        await a.claim_session("13900000004", 0, "s-4", lease_until=300.0)
        await b.claim_session("13900000005", 1, "s-5", lease_until=300.0)
        await a.release_replica(0)
        assert await b.find_sessions(["13900000004", "13900000005"], 0.0) == {"13900000005": 1}
        many = [f"1380{i:07d}" for i in range(1200)]  # more than one statement's parameters
        for i, phone in enumerate(many):
            await b.claim_session(phone, 1, f"m-{i}", lease_until=10.0)
        await b.renew_sessions([f"m-{i}" for i in range(1200)], lease_until=400.0)
        assert len(await a.find_sessions(many, 350.0)) == 1200
        await b.release_replica(1)
    finally:
        await a.close()
        await b.close()


CONTRACT: list[Callable[[StoreFactory], Awaitable[None]]] = [
    contract_register_find_delete, contract_codes_persist_and_are_shared,
    contract_session_registry]


@pytest.fixture
async def sqlite_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    yield lambda: SqliteTerminalStore(str(tmp_path / "db" / "terminals.db"))


@pytest.mark.parametrize("contract", CONTRACT, ids=lambda c: c.__name__)
async def test_sqlite_store_contract(sqlite_factory: StoreFactory,
                                     contract: Callable[[StoreFactory], Awaitable[None]]) -> None:
    await contract(sqlite_factory)


async def test_closed_store_is_a_transient_error(tmp_path: Path) -> None:
    store = SqliteTerminalStore(str(tmp_path / "t.db"))
    with pytest.raises(TransientError):
        await store.find("1")
    pg = PostgresTerminalStore("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(TransientError):
        await pg.find("1")
    with pytest.raises(TransientError):
        await pg.open()  # nothing listens on port 1


def test_store_from_url() -> None:
    assert isinstance(terminal_store_from_url("sqlite:///var/x.db"), SqliteTerminalStore)
    assert isinstance(terminal_store_from_url("postgresql://u@h/db"), PostgresTerminalStore)
    with pytest.raises(ConfigError):
        terminal_store_from_url("mysql://u@h/db")
