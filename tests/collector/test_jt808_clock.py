"""The JT/T 808 gateway reads time through its clock: a replay a day ahead, a fast clock.

A gateway under a clock started a day ahead takes a report stamped a day ahead (to it, now) and
refuses one stamped two days ahead (more than ten minutes in its future), while a real-time
gateway refuses the first. Its server time (0x8004) is the clock's; its idle timeout counts
clock seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.collector.jt808_gateway import MAX_FUTURE
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.jt808 import RESULT_BAD_MESSAGE, RESULT_OK, MsgId, QueryServerTime, ServerTimeReply
from tests.collector.jt808_support import metric, report_at, running_gateway

DAY = timedelta(days=1)


def _whole_seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


async def test_future_time_check_follows_a_clock_started_a_day_ahead(tmp_path: Path) -> None:
    clock = Clock(start=datetime.now(UTC) + DAY)
    bus = MemoryBus(partitions=4, clock=clock)  # composed as tti does: one clock for both
    async with running_gateway(tmp_path, bus=bus, clock=clock) as h:
        t = await h.terminal()
        await t.login()
        tomorrow = _whole_seconds(clock.now())
        await t.send(MsgId.T_LOCATION, report_at(tomorrow))
        assert (await t.reply()).result == RESULT_OK
        [pos] = await h.wait_positions(1)
        assert pos.observed_at == tomorrow
        # Received "now" on the gateway's clock, not on the machine's.
        assert pos.received_at is not None and pos.received_at >= tomorrow
        assert h.positions[0].created_at >= tomorrow  # the bus stamps with its own clock

        rejected = metric("tti_jt808_positions_total", outcome="future_time")
        await t.send(MsgId.T_LOCATION, report_at(_whole_seconds(clock.now() + DAY)))
        assert (await t.reply()).result == RESULT_BAD_MESSAGE
        assert metric("tti_jt808_positions_total", outcome="future_time") == rejected + 1

        # Just inside the allowed clock skew, on the gateway's clock: taken.
        await t.send(MsgId.T_LOCATION, report_at(
            _whole_seconds(clock.now() + MAX_FUTURE - timedelta(minutes=1))))
        assert (await t.reply()).result == RESULT_OK


async def test_a_real_time_gateway_refuses_a_report_a_day_ahead(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, clock=Clock()) as h:
        t = await h.terminal()
        await t.login()
        await t.send(MsgId.T_LOCATION, report_at(_whole_seconds(datetime.now(UTC) + DAY)))
        assert (await t.reply()).result == RESULT_BAD_MESSAGE


async def test_server_time_is_the_clock_time(tmp_path: Path) -> None:
    start = datetime(2019, 6, 3, 8, 0, tzinfo=UTC)
    clock = Clock(start=start)
    async with running_gateway(tmp_path, clock=clock) as h:
        t = await h.terminal("00000000013912345678", version=2019)
        await t.send(MsgId.T_QUERY_SERVER_TIME, QueryServerTime())
        msg = await t.recv()
        assert isinstance(msg.body, ServerTimeReply)
        assert start <= msg.body.time_utc() <= clock.now()


async def test_idle_timeout_counts_clock_seconds(tmp_path: Path) -> None:
    # 180 clock seconds of silence at rate 600 take 0.3 s; on a real-time clock, three minutes.
    clock = Clock(600.0)
    async with running_gateway(tmp_path, clock=clock, heartbeat_s=60.0, idle_factor=3.0) as h:
        t = await h.terminal()
        # Before the login's last frame: the gateway's silence starts when it read that frame,
        # earlier than its reply reaches us (at rate 600 a millisecond is 0.6 clock seconds).
        silent_from = clock.monotonic()
        await t.login()
        assert await t.closed_by_peer(wait_s=30.0)
        assert clock.monotonic() - silent_from >= h.gateway.idle_timeout_s
