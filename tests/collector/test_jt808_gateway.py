"""JT/T 808 gateway over real TCP: registration, authentication, locations, replies, sessions.

Each test runs the gateway on port 0 with a real ``MemoryBus`` and a ``SqliteTerminalStore`` in
``tmp_path``; the terminal is a TCP client built from the codec (``jt808_support.Terminal``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.collector.jt808_gateway import (
    TerminalConnection,
    _make_position,
    position_from_report,
)
from services.collector.registry import VehicleInfo, VehicleRegistry
from services.collector.terminals import SqliteTerminalStore
from shared.events import VehiclePosition
from shared.jt808 import (
    BATCH_BLIND_ZONE,
    BATCH_NORMAL,
    RESULT_BAD_MESSAGE,
    RESULT_FAILURE,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    BatchLocationUpload,
    Heartbeat,
    MsgId,
    PlatformGeneralResponse,
    QueryServerTime,
    RegisterResponse,
    ServerTimeReply,
    TerminalGeneralResponse,
    TerminalLogout,
    Version,
    decode_frame,
    encode_message,
    encode_reply,
    escape,
    unescape,
)
from tests.collector.jt808_support import (
    WUHAN_LAT_E6,
    WUHAN_LON_E6,
    Harness,
    Terminal,
    hours_ago,
    metric,
    report_at,
    running_gateway,
)

PHONE = "13912345678"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    registry = VehicleRegistry({PHONE: VehicleInfo(PHONE, "鄂A12345", "coach", "Wuhan Coach",
                                                    route_id="K-WH-YC")})
    async with running_gateway(tmp_path, registry=registry) as harness:
        yield harness


# ---- registration and authentication ----------------------------------------------------------


async def test_register_2013_echoes_raw_phone_and_layout(h: Harness) -> None:
    t = await h.terminal("013912345678")
    msg = await t.register()
    assert msg.msg_id == MsgId.P_REGISTER_RESPONSE
    assert msg.header.phone_bcd == "013912345678" and not msg.header.is_2019
    body = msg.body
    assert isinstance(body, RegisterResponse)
    assert body.result == 0 and body.reply_serial == 0 and len(body.auth_code) == 16
    assert (await h.store.find(PHONE)) is not None  # canonical id: leading zeros dropped


async def test_register_2019_gets_2019_replies_with_its_protocol_version(h: Harness) -> None:
    t = await h.terminal("00000000013912345678", version=2019, protocol_version=3)
    msg = await t.register()
    assert msg.header.is_2019 and msg.header.protocol_version == 3
    assert msg.header.phone_bcd == "00000000013912345678"
    assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0
    resp_msg_serial = t.serial
    ack = await t.authenticate(msg.body.auth_code)
    assert ack.result == RESULT_OK and ack.reply_serial == resp_msg_serial
    await t.send(MsgId.T_LOCATION, report_at())
    assert (await t.reply()).result == RESULT_OK
    (pos,) = await h.wait_positions(1)
    assert pos.vehicle_id == PHONE  # the same vehicle as under a 2013 header


async def test_wrong_auth_code_is_refused_right_one_accepted(h: Harness) -> None:
    t = await h.terminal()
    msg = await t.register()
    assert isinstance(msg.body, RegisterResponse)
    bad = await t.authenticate("NOT-THE-CODE")
    assert (bad.result, bad.reply_msg_id) == (RESULT_FAILURE, MsgId.T_AUTH)
    good = await t.authenticate(msg.body.auth_code)
    assert (good.result, good.reply_msg_id) == (RESULT_OK, MsgId.T_AUTH)
    assert PHONE in h.gateway.sessions


async def test_auth_without_registration_is_refused(h: Harness) -> None:
    t = await h.terminal()
    assert (await t.authenticate("0123456789ABCDEF")).result == RESULT_FAILURE


async def test_closed_registration_refuses_unknown_terminals(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, open_registration=False) as h:
        t = await h.terminal()
        msg = await t.register()
        assert isinstance(msg.body, RegisterResponse) and msg.body.result == 4
        assert msg.body.auth_code == ""


async def test_closed_registration_admits_the_registered_vehicles(tmp_path: Path) -> None:
    registry = VehicleRegistry({PHONE: VehicleInfo(PHONE, "鄂A12345", "coach")})
    async with running_gateway(tmp_path, open_registration=False, registry=registry) as h:
        t = await h.terminal()
        msg = await t.register()
        assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0
        assert msg.body.auth_code
        assert (await t.authenticate(msg.body.auth_code)).result == RESULT_OK


async def test_auth_code_survives_a_gateway_restart(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as h:
        code = await (await h.terminal()).login()
    # A new gateway, a new store object on the same database file.
    store = SqliteTerminalStore(str(tmp_path / "terminals.db"))
    await store.open()
    try:
        async with running_gateway(tmp_path, store=store) as h2:
            t = await h2.terminal()
            assert (await t.authenticate(code)).result == RESULT_OK
            await t.send(MsgId.T_LOCATION, report_at())
            assert (await t.reply()).result == RESULT_OK
    finally:
        await store.close()


# ---- locations ---------------------------------------------------------------------------------


async def test_unauthenticated_location_is_refused_and_not_published(h: Harness) -> None:
    t = await h.terminal()
    serial = await t.send(MsgId.T_LOCATION, report_at())
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (serial, 0x0200, RESULT_FAILURE)
    serial = await t.send(MsgId.T_BATCH_LOCATION, BatchLocationUpload(0, (report_at(),)))
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (serial, 0x0704, RESULT_FAILURE)
    await t.send(MsgId.T_LOCATION, report_at(alarm=1))
    assert (await t.reply()).result == RESULT_FAILURE
    await asyncio.sleep(0.1)
    assert h.positions == [] and h.alarms == []


async def test_location_is_published_then_acknowledged(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    observed = hours_ago(1)
    # South and west bits set: the magnitudes are unsigned, the hemisphere is in the status.
    serial = await t.send(MsgId.T_LOCATION, report_at(observed, status=0x3 | 0x4 | 0x8,
                                                       speed_0_1kmh=653, direction_deg=359))
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (serial, 0x0200, RESULT_OK)
    (pos,) = await h.wait_positions(1)
    assert pos.vehicle_id == PHONE and pos.source == "jt808"
    assert pos.lat == pytest.approx(-30.512345) and pos.lon == pytest.approx(-114.412345)
    assert pos.observed_at == observed and pos.observed_at.tzinfo is not None
    assert pos.observed_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert pos.speed_kmh == pytest.approx(65.3) and pos.heading_deg == 359.0
    assert pos.vehicle_class == "coach" and pos.route_id == "K-WH-YC"  # from the registry
    assert pos.status == 0x3 | 0x4 | 0x8 and pos.alarm == 0


async def test_bcd_time_is_read_as_gmt8(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    # The terminal's clock reads Beijing time: UTC + 8 h.
    utc = hours_ago(2)
    bcd = (utc.replace(tzinfo=None) + timedelta(hours=8)).strftime("%y%m%d%H%M%S")
    await t.send(MsgId.T_LOCATION, report_at(time_bcd=bcd))
    assert (await t.reply()).result == RESULT_OK
    (pos,) = await h.wait_positions(1)
    assert pos.observed_at == utc


async def test_unknown_vehicle_is_class_other(h: Harness) -> None:
    t = await h.terminal("13700000001")
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at())
    assert (await t.reply()).result == RESULT_OK
    assert (await h.wait_positions(1))[0].vehicle_class == "other"


async def test_escaped_bytes_in_a_position_round_trip(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    # 0x01D17E7D and 0x06D07E7E hold both flag-like bytes: the frame must carry 7D 02 and 7D 01.
    r = report_at(lat_e6=0x01D17E7D, lon_e6=0x06D07E7E)
    frame = t.frame(MsgId.T_LOCATION, r)
    assert b"\x7d\x02" in frame and b"\x7d\x01" in frame
    await t.send_raw(frame)
    assert (await t.reply()).result == RESULT_OK
    (pos,) = await h.wait_positions(1)
    assert pos.lat == pytest.approx(0x01D17E7D / 1e6) and pos.lon == pytest.approx(0x06D07E7E / 1e6)


async def test_impossible_coordinates_are_rejected_and_counted(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    before = metric("tti_jt808_positions_total", outcome="coordinates_out_of_range")
    # Swapped latitude and longitude (latitude 114° > 90°), as in some libraries' test data.
    await t.send(MsgId.T_LOCATION, report_at(lat_e6=WUHAN_LON_E6, lon_e6=WUHAN_LAT_E6))
    assert (await t.reply()).result == RESULT_BAD_MESSAGE
    after = metric("tti_jt808_positions_total", outcome="coordinates_out_of_range")
    assert after == before + 1
    await t.send(MsgId.T_LOCATION, report_at())  # the connection carries on
    assert (await t.reply()).result == RESULT_OK
    positions = await h.wait_positions(1)
    await asyncio.sleep(0.05)
    assert len(h.positions) == 1 and positions[0].lat == pytest.approx(30.512345)


async def test_future_and_bad_times_are_rejected(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at(hours_ago(-3)))
    assert (await t.reply()).result == RESULT_BAD_MESSAGE
    await t.send(MsgId.T_LOCATION, report_at(time_bcd="251340000000"))  # month 13
    assert (await t.reply()).result == RESULT_BAD_MESSAGE
    await asyncio.sleep(0.05)
    assert h.positions == []


async def test_report_without_a_fix_is_acknowledged_but_not_published(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at(status=0x1, lat_e6=0, lon_e6=0))
    assert (await t.reply()).result == RESULT_OK
    await asyncio.sleep(0.05)
    assert h.positions == []


async def test_alarm_without_a_fix_is_still_raised(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at(alarm=1, status=0x1, lat_e6=0, lon_e6=0))
    assert (await t.reply()).result == RESULT_OK
    await h.wait_for(lambda: len(h.alarms) == 1)
    assert h.alarms[0].payload.alarms == ("emergency",)
    assert h.positions == []


async def test_bit14_trap_frame_is_answered_in_the_2013_layout(h: Harness) -> None:
    # Some 2013 devices set the 2019 version bit by mistake; the reply must not copy it.
    t = await h.terminal("013912345678")
    await t.send_raw(encode_message(MsgId.T_HEARTBEAT, Heartbeat(), phone_bcd="013912345678",
                                    serial=9, version=2013, version_flag=True))
    msg = await t.recv()
    assert not msg.header.is_2019 and not msg.header.version_flag
    assert msg.header.phone_bcd == "013912345678"
    assert msg.body == PlatformGeneralResponse(9, 0x0002, RESULT_OK)


async def test_alarm_bits_become_terminal_alarms_emergency_first(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    alarm = (1 << 0) | (1 << 1) | (1 << 26)  # emergency, overspeed, vehicle stolen
    await t.send(MsgId.T_LOCATION, report_at(alarm=alarm))
    assert (await t.reply()).result == RESULT_OK
    await h.wait_for(lambda: len(h.alarms) == 1)
    a = h.alarms[0].payload
    assert a.alarms == ("emergency", "overspeed", "vehicle_stolen")
    assert a.alarm_bits == alarm and a.vehicle_id == PHONE and a.vehicle_class == "coach"
    (pos,) = await h.wait_positions(1)
    assert pos.alarm == alarm and a.observed_at == pos.observed_at
    # The alarm and its position follow the same report: one correlation id.
    assert h.alarms[0].correlation_id == h.positions[0].correlation_id


async def test_2019_alarm_names(h: Harness) -> None:
    t = await h.terminal("00000000013912345678", version=2019)
    await t.login()
    await t.send(MsgId.T_LOCATION, report_at(alarm=(1 << 3) | (1 << 16)))
    assert (await t.reply()).result == RESULT_OK
    await h.wait_for(lambda: len(h.alarms) == 1)
    assert h.alarms[0].payload.alarms == ("dangerous_driving", "tyre_pressure_warning")


@pytest.mark.parametrize("batch_type", [BATCH_NORMAL, BATCH_BLIND_ZONE])
async def test_batch_publishes_every_valid_item_then_acks(h: Harness, batch_type: int) -> None:
    t = await h.terminal()
    await t.login()
    times = [hours_ago(30), hours_ago(20), hours_ago(10)]  # blind-zone data is old
    items = (report_at(times[0]), report_at(times[1], lat_e6=WUHAN_LON_E6, lon_e6=WUHAN_LAT_E6),
             report_at(times[2], speed_0_1kmh=100))
    serial = await t.send(MsgId.T_BATCH_LOCATION, BatchLocationUpload(batch_type, items))
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (serial, 0x0704, RESULT_OK)
    positions = await h.wait_positions(2)
    assert [p.observed_at for p in positions] == [times[0], times[2]]
    assert positions[1].speed_kmh == 10.0


async def test_identical_reports_get_the_same_event_id(h: Harness) -> None:
    # A terminal resending an unacknowledged report must be deduplicated downstream.
    t = await h.terminal()
    await t.login()
    r = report_at(hours_ago(1))
    await t.send(MsgId.T_LOCATION, r)
    await t.send(MsgId.T_LOCATION, r)
    await t.send(MsgId.T_LOCATION, report_at(hours_ago(2)))
    for _ in range(3):
        assert (await t.reply()).result == RESULT_OK
    await h.wait_positions(3)
    ids = [e.event_id for e in h.positions]
    assert ids[0] == ids[1] != ids[2]


# ---- other messages ----------------------------------------------------------------------------


async def test_heartbeat_is_answered(h: Harness) -> None:
    t = await h.terminal()
    serial = await t.send(MsgId.T_HEARTBEAT, Heartbeat())
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (serial, 0x0002, RESULT_OK)


async def test_server_time_query_2019_is_answered_in_utc(h: Harness) -> None:
    t = await h.terminal("00000000013912345678", version=2019)
    await t.send(MsgId.T_QUERY_SERVER_TIME, QueryServerTime())
    msg = await t.recv()
    assert msg.msg_id == MsgId.P_SERVER_TIME and isinstance(msg.body, ServerTimeReply)
    assert abs((msg.body.time_utc() - datetime.now(UTC)).total_seconds()) < 5


async def test_unknown_message_gets_unsupported(h: Harness) -> None:
    t = await h.terminal()
    await t.send(0x0F0F, b"\x01\x02")
    ack = await t.reply()
    assert (ack.reply_msg_id, ack.result) == (0x0F0F, RESULT_UNSUPPORTED)


async def test_logout_acks_then_closes(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send(MsgId.T_LOGOUT, TerminalLogout())
    ack = await t.reply()
    assert (ack.reply_msg_id, ack.result) == (0x0003, RESULT_OK)
    assert await t.closed_by_peer()
    await h.wait_for(lambda: PHONE not in h.gateway.sessions and not h.gateway.connections)


async def test_another_phone_on_an_authenticated_connection_is_refused(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    other = Terminal("13800000000")
    await t.send_raw(other.frame(MsgId.T_LOCATION, report_at()))
    assert (await t.reply()).result == RESULT_FAILURE
    await asyncio.sleep(0.05)
    assert h.positions == []


async def test_second_connection_replaces_the_first(h: Harness) -> None:
    first = await h.terminal()
    code = await first.login()
    second = await h.terminal()
    assert (await second.authenticate(code)).result == RESULT_OK
    assert await first.closed_by_peer()
    assert h.gateway.sessions[PHONE] is not None and len(h.gateway.connections) == 1
    await second.send(MsgId.T_LOCATION, report_at())
    assert (await second.reply()).result == RESULT_OK


# ---- framing on the stream ---------------------------------------------------------------------


async def test_two_frames_in_one_write_and_one_frame_in_two_writes(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    f1 = t.frame(MsgId.T_LOCATION, report_at(hours_ago(3)))
    f2 = t.frame(MsgId.T_HEARTBEAT, Heartbeat())
    await t.send_raw(f1 + f2)
    assert [(await t.reply()).reply_msg_id for _ in range(2)] == [0x0200, 0x0002]
    f3 = t.frame(MsgId.T_LOCATION, report_at(hours_ago(2)))
    await t.send_raw(f3[:9])
    await t.expect_silence(0.1)
    await t.send_raw(f3[9:])
    assert (await t.reply()).result == RESULT_OK
    assert len(await h.wait_positions(2)) == 2


async def test_bad_checksum_gets_result_2_and_the_connection_stays_usable(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    content = unescape(t.frame(MsgId.T_LOCATION, report_at())[1:-1])
    bad = content[:-1] + bytes((content[-1] ^ 0x01,))  # a wrong check code, escaped properly
    await t.send_raw(b"\x7e" + escape(bad) + b"\x7e")
    ack = await t.reply()
    assert (ack.reply_msg_id, ack.result) == (0x0200, RESULT_BAD_MESSAGE)
    await t.send(MsgId.T_HEARTBEAT, Heartbeat())
    assert (await t.reply()).result == RESULT_OK
    assert h.positions == []


async def test_wrong_body_length_gets_result_2(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    frame = t.frame(MsgId.T_LOCATION, report_at())
    # Insert two 0x00 bytes into the body: the XOR check still matches, the length does not.
    content = unescape(frame[1:-1])
    bad = content[:20] + b"\x00\x00" + content[20:]
    await t.send_raw(b"\x7e" + escape(bad) + b"\x7e")
    ack = await t.reply()
    assert (ack.reply_msg_id, ack.result) == (0x0200, RESULT_BAD_MESSAGE)
    await t.send(MsgId.T_HEARTBEAT, Heartbeat())
    assert (await t.reply()).result == RESULT_OK


async def test_encrypted_frame_gets_unsupported(h: Harness) -> None:
    t = await h.terminal()
    content = bytearray(unescape(t.frame(MsgId.T_HEARTBEAT, Heartbeat())[1:-1]))
    content[2] |= 0x04  # RSA bit (attribute bit 10)
    content[-1] ^= 0x04  # keep the check code right
    await t.send_raw(b"\x7e" + escape(bytes(content)) + b"\x7e")
    assert (await t.reply()).result == RESULT_UNSUPPORTED


@pytest.mark.parametrize("garbage", [
    b"\x7e" + bytes(range(1, 126)) * 30 + b"\x7e",  # an oversize "frame"
    b"\x7e\x00\x02\x7e" * 10,  # a run of frames too short to hold a header
    b"\x55" * 10_000,  # bytes outside any frame
], ids=["oversize", "bad-frames", "junk"])
async def test_garbage_closes_only_that_connection(h: Harness, garbage: bytes) -> None:
    good = await h.terminal()
    await good.login()
    bad = await h.terminal("13800000000")
    await bad.send_raw(garbage)
    assert await bad.closed_by_peer()
    await good.send(MsgId.T_LOCATION, report_at())
    assert (await good.reply()).result == RESULT_OK
    assert len(h.gateway.connections) == 1


async def test_idle_connection_is_closed(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, heartbeat_s=0.1, idle_factor=2.0) as h:
        silent = await h.terminal()
        chatty = await h.terminal("13800000000")
        for _ in range(8):
            await chatty.send(MsgId.T_HEARTBEAT, Heartbeat())
            await chatty.reply()
            await asyncio.sleep(0.05)
        assert await silent.closed_by_peer(2.0)
        assert len(h.gateway.connections) == 1
        before = metric("tti_jt808_errors_total", kind="idle_timeout")
        assert before >= 1


async def test_too_many_connections_are_refused(tmp_path: Path) -> None:
    async with running_gateway(tmp_path, max_connections=2) as h:
        a, b = await h.terminal("13800000001"), await h.terminal("13800000002")
        for t in (a, b):
            await t.send(MsgId.T_HEARTBEAT, Heartbeat())
            await t.reply()
        c = await h.terminal("13800000003")
        assert await c.closed_by_peer()
        await a.send(MsgId.T_HEARTBEAT, Heartbeat())
        assert (await a.reply()).result == RESULT_OK


async def test_stop_acknowledges_what_it_has_taken(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    await t.send_raw(b"".join(t.frame(MsgId.T_LOCATION, report_at(hours_ago(i / 60)))
                              for i in range(20)))
    await asyncio.sleep(0.05)
    await h.gateway.stop()
    acks = []
    while True:
        try:
            acks.append(await t.reply(1.0))
        except (ConnectionError, TimeoutError):
            break
    assert [a.result for a in acks] == [RESULT_OK] * len(acks) and len(acks) == 20
    assert len(await h.wait_positions(20)) == 20


# ---- hot-path shortcuts stay equivalent to the codec ---------------------------------------------


@pytest.mark.parametrize(("phone", "version", "proto"), [
    ("013912345678", 2013, 1), ("00000000013912345678", 2019, 7),
    ("00000000013912345678", 2019, 0x7E)])  # a protocol version byte that must be escaped
async def test_fast_reply_is_byte_identical_to_encode_reply(h: Harness, phone: str,
                                                            version: Version, proto: int) -> None:
    t = Terminal(phone, version=version, protocol_version=proto)
    conn = TerminalConnection(h.gateway)  # not connected: replies stay in its buffer
    for serial in (0, 0x7E7D, 0x7D7E, 0xFFFF):
        msg = decode_frame(t.frame(MsgId.T_HEARTBEAT, Heartbeat(), serial=serial))
        for result in (RESULT_OK, RESULT_BAD_MESSAGE):
            own = conn.serial
            conn._reply(msg.header, result)
            expected = encode_reply(msg, MsgId.P_GENERAL_RESPONSE,
                                    PlatformGeneralResponse(serial, msg.msg_id, result),
                                    serial=own)
            assert conn._out[-1] == expected


def test_fast_position_constructor_matches_the_dataclass() -> None:
    now = datetime.now(UTC)
    r = report_at(now.replace(microsecond=0), status=0x3 | 0x4, alarm=5)
    pos = position_from_report("1", r, vehicle_class="taxi", now=now)
    regular = VehiclePosition(
        vehicle_id="1", lon=pos.lon, lat=pos.lat, observed_at=pos.observed_at,
        speed_kmh=pos.speed_kmh, heading_deg=pos.heading_deg, vehicle_class="taxi",
        source="jt808", alarm=5, status=0x3 | 0x4, received_at=now)
    assert pos == regular and type(pos) is VehiclePosition and hash(pos) == hash(regular)
    assert pos.lat < 0
    # Every field of VehiclePosition is passed by keyword: a new field fails loudly here.
    with pytest.raises(TypeError):
        _make_position(vehicle_id="1")


async def test_terminal_general_response_needs_no_answer(h: Harness) -> None:
    t = await h.terminal()
    await t.login()
    # A terminal acknowledging one of the platform's messages (0x0001): nothing comes back,
    # and the connection carries on.
    await t.send(MsgId.T_GENERAL_RESPONSE, TerminalGeneralResponse(7, 0x8103, RESULT_OK))
    await t.expect_silence(0.3)
    serial = await t.send(MsgId.T_HEARTBEAT, Heartbeat())
    ack = await t.reply()
    assert (ack.reply_serial, ack.reply_msg_id) == (serial, 0x0002)
