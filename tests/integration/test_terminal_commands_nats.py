"""Commands to terminals across collector replicas on NATS JetStream: two gateways, two NatsBus
connections, one terminal store; a command taken by either replica (both consume every
partition) reaches the terminal connected to replica 1, and its outcomes come back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from shared.bus.nats import NatsBus
from shared.jt808 import MsgId, TextMessage
from tests.collector.jt808_support import command_cluster, report_at, text_command


@pytest.fixture
async def buses(nats_url: str, unique_name: str) -> AsyncIterator[list[NatsBus]]:
    """Two started NatsBus connections on a fresh stream; the stream is deleted afterwards."""
    made = [NatsBus(nats_url, partitions=4, prefix=unique_name, stream=unique_name.upper(),
                    nak_delay_s=0.05, ack_wait_s=2.0) for _ in range(2)]
    for bus in made:
        await bus.start()
    yield made
    for bus in made:
        await bus.close()
    nc = await nats.connect(nats_url)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(unique_name.upper())
    await nc.close()


async def test_command_reaches_the_terminal_on_the_other_replica(
        tmp_path: Path, buses: list[NatsBus]) -> None:
    async with command_cluster(tmp_path, replicas=2, buses=list(buses)) as c:
        phone = "13900000007"
        t = await c.replicas[1].terminal(phone, version=2019)
        await t.login()
        await c.publish(text_command(phone, "nats-text"))
        msg = await t.command(wait_s=15)
        assert msg.msg_id == MsgId.P_TEXT_MESSAGE and isinstance(msg.body, TextMessage)
        assert msg.body.text == "您已连续驾驶4小时，请立即休息" and msg.body.text_type == 1
        await t.answer(msg)
        done = await c.outcome("nats-text", "acknowledged", wait_s=15)
        assert done.replica == 1 and done.result == 0
        assert c.statuses("nats-text") == ["sent", "acknowledged"]

        # A position query the same way: the outcome carries what the 0x0201 reported.
        await c.publish(text_command(phone, "nats-query", kind="position_query", text="",
                                     flags=()))
        query = await t.command(wait_s=15)
        assert query.msg_id == MsgId.P_POSITION_QUERY
        await t.answer_position(query, report_at())
        answered = await c.outcome("nats-query", "acknowledged", wait_s=15)
        assert answered.position is not None and answered.position.vehicle_id == phone


async def test_offline_command_waits_on_nats_until_the_terminal_connects(
        tmp_path: Path, buses: list[NatsBus]) -> None:
    async with command_cluster(tmp_path, replicas=2, buses=list(buses)) as c:
        phone = "13800000007"
        await c.publish(text_command(phone, "nats-late"))
        waiting = await c.outcome("nats-late", "offline_waiting", wait_s=15)
        other = 1 - waiting.replica  # the terminal connects to the replica not holding it
        t = await c.replicas[other].terminal(phone)
        await t.login()
        msg = await t.command(wait_s=15)
        await t.answer(msg)
        assert (await c.outcome("nats-late", "acknowledged", wait_s=15)).replica == other
