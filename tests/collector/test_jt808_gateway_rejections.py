"""Closed by default, loud on bad input: encrypted positions, missing check bytes, the gateway-wide
registration budget. Real TCP against a real gateway (``jt808_support``), real frames from
``../shared/data/jt808/vectors.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.collector.jt808_gateway import MAX_CONSECUTIVE_ERRORS, Jt808Gateway
from services.collector.registry import VehicleRegistry
from services.collector.terminals import SqliteTerminalStore
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.jt808 import (
    RESULT_BAD_MESSAGE,
    RESULT_OK,
    BatchLocationUpload,
    Heartbeat,
    MsgId,
    RegisterResponse,
    decode_frame,
    escape,
    unescape,
)
from tests.collector.jt808_support import Harness, metric, report_at, running_gateway
from tests.shared.jt808 import get_vector

ENCRYPTED = 0x23  # ACC on, positioned, status bit 5: lat/lon encrypted by the privacy plug-in


class ManualClock(Clock):
    """A real clock whose monotonic time only moves when the test says so."""

    __slots__ = ("mono",)

    def __init__(self) -> None:
        super().__init__()
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_gateway(tmp_path) as harness:
        yield harness


def _encrypted_count() -> float:
    return metric("tti_jt808_positions_total", outcome="encrypted_position")


def _real_frame(vector_id: str) -> bytes:
    return bytes.fromhex(get_vector(vector_id)["hex"])


def _without_check_byte(frame: bytes) -> bytes:
    """``frame`` as the faulty module sends it: no check code, so the last body byte takes
    its place and the body is one byte short of its length field."""
    return b"\x7e" + escape(unescape(frame[1:-1])[:-1]) + b"\x7e"


# ---- 1. encrypted coordinates ---------------------------------------------------------------


async def test_encrypted_report_is_acknowledged_counted_and_not_published(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    before = _encrypted_count()
    await t.send(MsgId.T_LOCATION, report_at(status=ENCRYPTED))
    assert (await t.reply()).result == RESULT_OK  # received; just not a usable fix
    assert _encrypted_count() == before + 1
    await t.send(MsgId.T_LOCATION, report_at())  # a plain one behind it still flows
    assert (await t.reply()).result == RESULT_OK
    [pos] = await h.wait_positions(1)
    assert pos.status & 0x20 == 0
    assert h.alarms == []


async def test_encrypted_report_with_an_alarm_publishes_the_alarm_only(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at(status=ENCRYPTED, alarm=0x1))  # emergency
    assert (await t.reply()).result == RESULT_OK
    await h.wait_for(lambda: len(h.alarms) == 1)
    alarm = h.alarms[0].payload
    assert alarm.alarms[0] == "emergency" and alarm.alarm_bits == 1
    assert (alarm.lat, alarm.lon) == (0.0, 0.0)  # no usable place, as for a report without fix
    assert h.positions == []


async def test_encrypted_items_of_a_batch_are_not_published(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    before = _encrypted_count()
    batch = BatchLocationUpload(0, (report_at(status=ENCRYPTED), report_at(speed_0_1kmh=400),
                                    report_at(status=ENCRYPTED, lat_e6=1)))
    await t.send(MsgId.T_BATCH_LOCATION, batch)
    assert (await t.reply()).result == RESULT_OK
    [pos] = await h.wait_positions(1)
    assert pos.speed_kmh == 40.0
    assert _encrypted_count() == before + 2


async def test_a_batch_of_only_encrypted_items_is_acknowledged(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_BATCH_LOCATION, BatchLocationUpload(0, (report_at(status=ENCRYPTED),)))
    assert (await t.reply()).result == RESULT_OK
    await t.expect_silence(0.05)
    assert h.positions == []


# ---- 2. a missing check byte ------------------------------------------------------------------


@pytest.mark.parametrize("vector_id", [
    "sc-0200-2013-real-device",  # a real terminal's location report
    "yz-0200-2019",  # 2019 layout
    "yz-8100-2019",  # its XOR is 0x0C: the very case of the faulty module
])
async def test_missing_check_byte_is_answered_every_time_and_the_link_stays(
        h: Harness, vector_id: str) -> None:
    real = _real_frame(vector_id)
    header = decode_frame(real).header
    broken = _without_check_byte(real)
    t = await h.terminal()
    before = metric("tti_jt808_errors_total", kind="bad_checksum")
    closes = metric("tti_jt808_errors_total", kind="too_many_errors")
    n = 4 * MAX_CONSECUTIVE_ERRORS
    await t.send_raw(broken * (n // 2))  # half in one write, half one by one
    for _ in range(n // 2):
        await t.send_raw(broken)
    for _ in range(n):
        msg = await t.recv()
        assert msg.msg_id == MsgId.P_GENERAL_RESPONSE
        assert msg.header.phone_bcd == header.phone_bcd  # echoed in the frame's own layout
        assert msg.header.is_2019 == header.is_2019
        body = msg.body
        assert (body.reply_serial, body.reply_msg_id, body.result) == (  # type: ignore[union-attr]
            header.serial, header.msg_id, RESULT_BAD_MESSAGE)
    assert metric("tti_jt808_errors_total", kind="bad_checksum") == before + n
    assert metric("tti_jt808_errors_total", kind="too_many_errors") == closes
    # Still open: a good real frame afterwards is taken.
    await t.send_raw(_real_frame("sc-0002-2013"))
    ack = await t.reply()
    assert (ack.reply_msg_id, ack.result) == (MsgId.T_HEARTBEAT, RESULT_OK)
    assert len(h.gateway.connections) == 1


async def test_frames_without_a_readable_header_still_close_the_connection(h: Harness) -> None:
    t = await h.terminal()
    closes = metric("tti_jt808_errors_total", kind="too_many_errors")
    await t.send_raw(_without_check_byte(_real_frame("sc-0002-2013")))
    assert (await t.reply()).result == RESULT_BAD_MESSAGE  # answerable: does not count
    # A run of frames too short to hold a header is not JT/T 808: it closes the connection.
    await t.send_raw(b"\x7e\x00\x02\x00\x7e" * MAX_CONSECUTIVE_ERRORS)
    assert await t.closed_by_peer()
    assert metric("tti_jt808_errors_total", kind="too_many_errors") == closes + 1


async def test_an_authenticated_terminal_keeps_its_session_through_bad_checksums(
        h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    frame = t.frame(MsgId.T_LOCATION, report_at())
    for _ in range(2 * MAX_CONSECUTIVE_ERRORS):
        await t.send_raw(_without_check_byte(frame))
        assert (await t.reply()).result == RESULT_BAD_MESSAGE
    await t.send_raw(frame)  # the terminal resends it whole
    assert (await t.reply()).result == RESULT_OK
    assert len(await h.wait_positions(1)) == 1


# ---- 3. the gateway-wide registration budget ------------------------------------------------


async def test_registrations_beyond_the_global_rate_are_refused_unstored(tmp_path: Path) -> None:
    clock = ManualClock()
    async with running_gateway(tmp_path, clock=clock, max_registrations_per_s=1.0) as h:
        assert h.gateway.registration_burst == 3.0  # a few seconds' worth
        refused = metric("tti_jt808_errors_total", kind="registration_rate")
        # Each connection registers once: no per-connection limit is ever reached.
        for i in range(3):
            msg = await (await h.terminal(f"1380000000{i}")).register()
            assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0
        late = await h.terminal("13800000009")
        await late.send(MsgId.T_REGISTER, late.register_body())
        assert await late.closed_by_peer()  # no 0x8100 result means "try later"
        assert await h.store.find("13800000009") is None
        assert metric("tti_jt808_errors_total", kind="registration_rate") == refused + 1
        # Other traffic is not limited by it.
        hb = await h.terminal("13800000008")
        await hb.send(MsgId.T_HEARTBEAT, Heartbeat())
        assert (await hb.reply()).result == RESULT_OK
        # One clock second later there is one token again.
        clock.mono += 1.0
        again = await h.terminal("13800000009")
        msg = await again.register()
        assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0
        assert await h.store.find("13800000009") is not None


async def test_the_registration_rate_must_be_positive(tmp_path: Path) -> None:
    store = SqliteTerminalStore(str(tmp_path / "t.db"))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_registrations_per_s"):
            Jt808Gateway(bus=MemoryBus(), terminals=store, registry=VehicleRegistry(),
                         max_registrations_per_s=bad)


def test_the_setting_exists_with_its_default() -> None:
    from shared.config import Config

    assert Config().jt808_max_registrations_per_s == 50.0

