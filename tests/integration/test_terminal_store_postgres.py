"""PostgresTerminalStore against a real PostgreSQL (a fresh database per test): the store contract,
and two gateways sharing auth codes through it. Fails in CI when PostgreSQL is missing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.collector.terminals import PostgresTerminalStore
from shared.jt808 import RESULT_OK, MsgId, RegisterResponse
from tests.collector.jt808_support import Terminal, report_at, running_gateway
from tests.collector.test_jt808_terminal_store import CONTRACT, StoreFactory

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("contract", CONTRACT, ids=lambda c: c.__name__)
async def test_postgres_store_contract(pg_dsn: str,
                                       contract: Callable[[StoreFactory], Awaitable[None]]) -> None:
    await contract(lambda: PostgresTerminalStore(pg_dsn))


async def test_two_gateways_share_auth_codes(pg_dsn: str, tmp_path: Path) -> None:
    store_a, store_b = PostgresTerminalStore(pg_dsn), PostgresTerminalStore(pg_dsn)
    await store_a.open()
    await store_b.open()
    try:
        async with running_gateway(tmp_path / "a", store=store_a) as a, \
                running_gateway(tmp_path / "b", store=store_b) as b:
            # Register through replica A...
            t1 = await a.terminal("013912345678")
            msg = await t1.register()
            assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0
            code = msg.body.auth_code
            await t1.close()
            # ...reconnect to replica B (as after a pod restart) with the same code.
            t2 = await b.terminal("013912345678")
            assert (await t2.authenticate(code)).result == RESULT_OK
            await t2.send(MsgId.T_LOCATION, report_at())
            assert (await t2.reply()).result == RESULT_OK
            assert (await b.wait_positions(1))[0].vehicle_id == "13912345678"
            # A 2019 header for the same SIM is the same terminal (canonical id).
            t3 = await a.terminal("00000000013912345678", version=2019)
            assert (await t3.authenticate(code)).result == RESULT_OK
            # Re-registering on B invalidates the old code everywhere.
            t4 = Terminal("013912345678")
            await t4.connect(b.port)
            b.terminals.append(t4)
            assert isinstance((await t4.register()).body, RegisterResponse)
            t5 = await a.terminal("013912345678")
            assert (await t5.authenticate(code)).result != RESULT_OK
    finally:
        await store_a.close()
        await store_b.close()
