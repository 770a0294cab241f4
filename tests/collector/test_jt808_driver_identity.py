"""0x0702 driver identity over a real TCP gateway: the real frames of
``../shared/data/jt808/downlink_vectors.json`` (2011, 2013 and 2019 layouts) become
``DriverIdentity`` events on the vehicle's partition before their 0x8001 result 0; malformed,
untimely or unauthenticated ones are refused with a reason and counted, and the link carries on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shared.clock import Clock
from shared.codec import Envelope
from shared.events import DRIVER_IDENTITY, DriverIdentity, partition_of
from shared.jt808 import (
    GMT8,
    RESULT_BAD_MESSAGE,
    RESULT_FAILURE,
    RESULT_OK,
    Heartbeat,
    MsgId,
    RawBody,
)
from tests.collector.jt808_support import Harness, Terminal, metric, running_gateway
from tests.collector.test_jt808_gateway_bus import GatedBus
from tests.shared.jt808 import Vector, downlink_params, require_downlink

CARD_VECTORS = downlink_params(lambda v: v["msg_id"] == "0x0702")
FRAME_VECTORS = downlink_params(lambda v: v["msg_id"] == "0x0702" and v["kind"] == "frame")
BODY_VECTORS = downlink_params(lambda v: v["msg_id"] == "0x0702" and v["kind"] == "body")


def card_time(body: dict[str, Any]) -> datetime | None:
    """The expected card time (GMT+8 in the vector) in UTC, None for the 2011 layout."""
    raw = body.get("time")
    if raw is None:
        return None
    return datetime.strptime(raw, "%Y-%m-%d %H:%M:%S").replace(tzinfo=GMT8).astimezone(UTC)


def clock_after(moment: datetime | None) -> Clock:
    """A gateway clock a minute after ``moment`` (the vectors' cards are years apart)."""
    return Clock(start=(moment or datetime.now(UTC)) + timedelta(minutes=1))


async def identities(h: Harness, vehicle_id: str) -> list[Envelope[DriverIdentity]]:
    """Collect the vehicle's DriverIdentity events from its own partition only."""
    got: list[Envelope[DriverIdentity]] = []

    async def on_identity(env: Envelope[DriverIdentity]) -> None:
        got.append(env)

    await h.bus.subscribe(DRIVER_IDENTITY, on_identity, durable="test-identity",
                          partitions=[partition_of(vehicle_id, h.bus.partitions)])
    return got


def frame_terminal(v: Vector) -> Terminal:
    hdr = v["expected"]["header"]
    return Terminal(hdr["phone_bcd"], version=2019 if hdr["version_flag"] else 2013,
                    protocol_version=hdr.get("protocol_version", 1))


def expected_event(vehicle_id: str, body: dict[str, Any], observed: datetime) -> DriverIdentity:
    """What the vector's card must become (blank texts None, an all-zero expiry None)."""
    expiry = body.get("cert_expiry")
    digits = expiry.replace("-", "") if expiry else None

    def text(key: str) -> str | None:
        return (body.get(key) or "").strip() or None

    return DriverIdentity(
        vehicle_id=vehicle_id, observed_at=observed,
        state={None: "card_in", 1: "card_in", 2: "card_out"}[body.get("status")],
        driver_id=text("qualification_code"), driver_name=text("driver_name"),
        authority=text("issuing_agency"),
        valid_until=digits if digits and digits.strip("0") else None,
        id_card=text("driver_id"),  # 2011 and 2019: the identity card number
        ic_result=body.get("ic_read_result"))


@pytest.mark.parametrize("vector", FRAME_VECTORS)
async def test_real_card_frame_is_published_then_acknowledged(tmp_path: Path,
                                                               vector: Vector | None) -> None:
    v = require_downlink(vector)
    body = v["expected"]["body"]
    moment = card_time(body)
    clock = clock_after(moment)
    async with running_gateway(tmp_path, clock=clock) as h:
        t = frame_terminal(v)
        await t.connect(h.port)
        h.terminals.append(t)
        await t.login()
        vid = t.phone.lstrip("0")
        got = await identities(h, vid)
        await t.send_raw(bytes.fromhex(v["hex"]))
        ack = await t.reply()
        assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (
            v["expected"]["header"]["serial"], MsgId.T_DRIVER_IDENTITY, RESULT_OK)
        # Acknowledged only once the bus took it: the event is already there.
        await h.wait_for(lambda: len(got) == 1)
        event = got[0].payload
        if moment is None:  # 2011: the gateway's clock, just read
            assert timedelta(0) <= clock.now() - event.observed_at < timedelta(minutes=5)
            moment = event.observed_at
        assert event == expected_event(vid, body, moment)
        # The same card report again (its ack lost) carries the same event id.
        await t.send_raw(bytes.fromhex(v["hex"]))
        assert (await t.reply()).result == RESULT_OK
        await h.wait_for(lambda: len(got) == 2)
        assert got[0].event_id == got[1].event_id


@pytest.mark.parametrize("vector", BODY_VECTORS)
async def test_card_bodies_removed_and_read_failure(tmp_path: Path,
                                                    vector: Vector | None) -> None:
    v = require_downlink(vector)
    body = v["expected"]["body"]
    moment = card_time(body)
    assert moment is not None
    async with running_gateway(tmp_path, clock=clock_after(moment)) as h:
        t = await h.terminal("13800000702")
        await t.login()
        got = await identities(h, "13800000702")
        serial = await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(bytes.fromhex(v["hex"])))
        ack = await t.reply()
        assert (ack.reply_serial, ack.result) == (serial, RESULT_OK)
        await h.wait_for(lambda: len(got) == 1)
        event = got[0].payload
        assert event == expected_event("13800000702", body, moment)
        # A removed card names nobody; a card that could not be read names nobody either.
        assert event.driver_id is None
        assert event.state == ("card_out" if body["status"] == 2 else "card_in")


def first_frame_body(vectors: list[Any], vid: str) -> bytes:
    for p in vectors:
        v = p.values[0]
        if v is not None and v["id"] == vid:
            frame = bytes.fromhex(v["hex"])
            return frame[13:-2]  # 2013 header (12 bytes after 7E), body, check code, 7E
    require_downlink(None)  # skips locally, fails in CI
    raise AssertionError(f"vector {vid} missing")


async def test_malformed_card_gets_result_2_counted_and_the_link_carries_on(
        tmp_path: Path) -> None:
    body = first_frame_body(CARD_VECTORS, "xc-0702-2013")
    async with running_gateway(tmp_path, clock=clock_after(
            datetime(2024, 10, 29, 21, 39, 3, tzinfo=GMT8))) as h:
        t = await h.terminal("13800000702")
        await t.login()
        got = await identities(h, "13800000702")
        truncated = metric("tti_jt808_errors_total", kind="truncated")
        # The card's name runs past a body cut short.
        serial = await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(body[:12]))
        ack = await t.reply()
        assert (ack.reply_serial, ack.reply_msg_id, ack.result) == (
            serial, MsgId.T_DRIVER_IDENTITY, RESULT_BAD_MESSAGE)
        assert metric("tti_jt808_errors_total", kind="truncated") == truncated + 1
        # Status 3 is neither inserted nor removed.
        bad_status = metric("tti_jt808_errors_total", kind="card_bad_status")
        await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(b"\x03" + body[1:]))
        assert (await t.reply()).result == RESULT_BAD_MESSAGE
        assert metric("tti_jt808_errors_total", kind="card_bad_status") == bad_status + 1
        # A card time that is not a date (month 13).
        bad_time = metric("tti_jt808_errors_total", kind="card_bad_time")
        await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(body[:2] + b"\x13" + body[3:]))
        assert (await t.reply()).result == RESULT_BAD_MESSAGE
        assert metric("tti_jt808_errors_total", kind="card_bad_time") == bad_time + 1
        # The connection and the session carry on: a heartbeat, then a good card.
        hb = await t.send(MsgId.T_HEARTBEAT, Heartbeat())
        assert (await t.reply()).reply_serial == hb
        await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(body))
        assert (await t.reply()).result == RESULT_OK
        await h.wait_for(lambda: len(got) == 1)
        await asyncio.sleep(0.05)
        assert [e.payload.driver_id for e in got] == ["11335577992244668800"]


async def test_card_time_outside_the_window_is_refused(tmp_path: Path) -> None:
    body = first_frame_body(CARD_VECTORS, "xc-0702-2013")
    inserted = datetime(2024, 10, 29, 21, 39, 3, tzinfo=GMT8)
    for start, kind in ((inserted - timedelta(minutes=11), "card_future_time"),
                        (inserted + timedelta(days=8), "card_stale_time")):
        async with running_gateway(tmp_path, clock=Clock(start=start)) as h:
            t = await h.terminal("13800000702")
            await t.login()
            got = await identities(h, "13800000702")
            before = metric("tti_jt808_errors_total", kind=kind)
            await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(body))
            assert (await t.reply()).result == RESULT_BAD_MESSAGE
            assert metric("tti_jt808_errors_total", kind=kind) == before + 1
            await t.expect_silence(0.05)
            assert got == []


async def test_unauthenticated_card_is_refused(tmp_path: Path) -> None:
    body = first_frame_body(CARD_VECTORS, "xc-0702-2013")
    async with running_gateway(tmp_path, clock=clock_after(
            datetime(2024, 10, 29, 21, 39, 3, tzinfo=GMT8))) as h:
        got = await identities(h, "13800000702")
        t = await h.terminal("13800000702")
        before = metric("tti_jt808_errors_total", kind="unauthenticated")
        await t.send(MsgId.T_DRIVER_IDENTITY, RawBody(body))
        assert (await t.reply()).result == RESULT_FAILURE
        assert metric("tti_jt808_errors_total", kind="unauthenticated") == before + 1
        await asyncio.sleep(0.05)
        assert got == []


async def test_card_the_bus_refused_gets_result_1_and_is_resent(tmp_path: Path) -> None:
    body = first_frame_body(CARD_VECTORS, "xc-0702-2013")
    bus = GatedBus()
    async with running_gateway(tmp_path, bus=bus, clock=clock_after(
            datetime(2024, 10, 29, 21, 39, 3, tzinfo=GMT8))) as h:
        t = await h.terminal("13800000702")
        await t.login()
        got = await identities(h, "13800000702")
        bus.down = True
        frame = t.frame(MsgId.T_DRIVER_IDENTITY, RawBody(body))
        await t.send_raw(frame)
        assert (await t.reply()).result == RESULT_FAILURE
        assert got == []
        bus.down = False
        await t.send_raw(frame)  # the terminal kept it and sends it again
        assert (await t.reply()).result == RESULT_OK
        await h.wait_for(lambda: len(got) == 1)
        assert got[0].payload.state == "card_in"


def test_frames_of_the_2011_2013_and_2019_layouts_are_covered() -> None:
    layouts = set()
    for p in FRAME_VECTORS:
        v = require_downlink(p.values[0])
        layouts.add(v.get("layout") or v["version"])
    assert layouts == {"2011", "2013", "2019"}
