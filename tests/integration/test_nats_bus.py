"""NATS JetStream specifics the shared bus contract cannot express (needs a real NATS server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from shared.bus.nats import NatsBus
from shared.codec import Envelope
from shared.errors import BusError
from shared.events import SEGMENT_SPEED, VEHICLE_POSITION, SegmentSpeed, VehiclePosition

pytestmark = pytest.mark.integration

BusFactory = Callable[..., Awaitable[NatsBus]]


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream context for inspecting streams and consumers behind the bus's back."""
    nc = await nats.connect(nats_url)
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def make_bus(nats_url: str, unique_name: str,
                   js: JetStreamContext) -> AsyncIterator[BusFactory]:
    """Started NatsBus instances on a fresh stream/prefix; closed and deleted afterwards."""
    made: list[NatsBus] = []

    async def factory(**overrides: Any) -> NatsBus:
        options: dict[str, Any] = {"partitions": 4, "prefix": unique_name,
                                   "stream": unique_name.upper(), "nak_delay_s": 0.05,
                                   "ack_wait_s": 2.0}
        options.update(overrides)
        bus = NatsBus(nats_url, **options)
        await bus.start()
        made.append(bus)
        return bus

    yield factory
    for bus in made:
        await bus.close()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(unique_name.upper())


def _pos(vid: str, i: int) -> VehiclePosition:
    return VehiclePosition(vehicle_id=vid, lon=114.3, lat=30.5,
                           observed_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
                           speed_kmh=float(i))


def _speed(segment_id: str) -> SegmentSpeed:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    return SegmentSpeed(segment_id=segment_id, window_start=now, observed_at=now, speed_kmh=30.0,
                        sample_count=1)


async def _wait_for(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_duplicate_event_id_is_stored_and_delivered_once(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus()
    got: list[str] = []

    async def handler(env: Envelope[SegmentSpeed]) -> None:
        got.append(env.payload.segment_id)

    await bus.subscribe(SEGMENT_SPEED, handler, durable="dedup")
    first = await bus.publish(SEGMENT_SPEED, _speed("first"), event_id="evt-1")
    # A retry after a lost PubAck reuses the event id: the server must drop it.
    again = await bus.publish(SEGMENT_SPEED, _speed("retry"), event_id="evt-1")
    await bus.publish(SEGMENT_SPEED, _speed("other"), event_id="evt-2")
    assert first == again == "evt-1"
    await _wait_for(lambda: len(got) >= 2)
    await asyncio.sleep(0.3)
    assert got == ["first", "other"]
    assert (await js.stream_info(bus.stream)).state.messages == 2


_CRASHING_MEMBER = textwrap.dedent("""
    import asyncio, sys
    from shared.bus.nats import NatsBus
    from shared.events import VEHICLE_POSITION

    async def main(url, prefix, stream, handle):
        bus = NatsBus(url, partitions=4, prefix=prefix, stream=stream, ack_wait_s=2.0)
        await bus.start()

        async def handler(env):
            if env.payload.speed_kmh >= handle:
                print("blocked", flush=True)
                await asyncio.Event().wait()  # hangs until the parent kills us

        await bus.subscribe(VEHICLE_POSITION, handler, durable="crash")
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
""")


async def test_unacked_messages_go_to_the_next_member_after_a_crash(
        make_bus: BusFactory, js: JetStreamContext, nats_url: str, unique_name: str) -> None:
    total, acked = 30, 10
    publisher = await make_bus()
    vid = "13800000042"
    for i in range(total):
        await publisher.publish(VEHICLE_POSITION, _pos(vid, i), key=vid)
    consumer = publisher.consumer_name(VEHICLE_POSITION, "crash",
                                       publisher.partition_for(VEHICLE_POSITION, vid))

    # A separate process takes the first messages, acks ten, hangs on the eleventh and is killed.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHING_MEMBER, nats_url, unique_name, publisher.stream,
        str(acked), stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line.strip() == b"blocked"

        async def acked_by_server() -> bool:
            info = await js.consumer_info(publisher.stream, consumer)
            return info.ack_floor.stream_seq == acked

        deadline = asyncio.get_running_loop().time() + 5
        while not await acked_by_server():
            assert asyncio.get_running_loop().time() < deadline, "acks never reached the server"
            await asyncio.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()

    survivor = await make_bus()
    got: list[int] = []

    async def handler(env: Envelope[VehiclePosition]) -> None:
        got.append(int(env.payload.speed_kmh or 0))

    await survivor.subscribe(VEHICLE_POSITION, handler, durable="crash")
    await _wait_for(lambda: len(got) >= total - acked, within_s=15)
    await asyncio.sleep(0.3)
    assert got == list(range(acked, total)), "acked ones came back, or unacked ones were lost"
    info = await js.consumer_info(publisher.stream, consumer)
    assert info.delivered.consumer_seq > total, "the survivor saw redeliveries"


async def test_stuck_handler_is_released_on_close_after_the_drain_timeout(
        make_bus: BusFactory) -> None:
    stuck = await make_bus(drain_timeout_s=0.3)
    entered = asyncio.Event()

    async def hang(env: Envelope[SegmentSpeed]) -> None:
        entered.set()
        await asyncio.Event().wait()

    await stuck.subscribe(SEGMENT_SPEED, hang, durable="stuck")
    await stuck.publish(SEGMENT_SPEED, _speed("s1"))
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.wait_for(stuck.close(), 5)

    got: list[str] = []

    async def handler(env: Envelope[SegmentSpeed]) -> None:
        got.append(env.payload.segment_id)

    # ack_wait is long here: the message must come back because close() handed it back.
    other = await make_bus(ack_wait_s=30.0)
    await other.subscribe(SEGMENT_SPEED, handler, durable="stuck")
    await _wait_for(lambda: got == ["s1"], within_s=5)


async def test_garbage_on_the_wire_is_terminated_and_counted(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus()
    got: list[str] = []

    async def handler(env: Envelope[SegmentSpeed]) -> None:
        got.append(env.payload.segment_id)

    labels = {"subject": SEGMENT_SPEED.name}
    failures = _metric("tti_bus_handler_failures_total", kind="not_json", **labels)
    terms = _metric("tti_bus_handled_total", outcome="term", **labels)
    await bus.subscribe(SEGMENT_SPEED, handler, durable="garbage")
    await js.publish(bus.wire_subject(SEGMENT_SPEED), b"\xff\x00 not an envelope")
    await bus.publish(SEGMENT_SPEED, _speed("good"))
    await _wait_for(lambda: got == ["good"])
    assert _metric("tti_bus_handler_failures_total", kind="not_json", **labels) == failures + 1
    assert _metric("tti_bus_handled_total", outcome="term", **labels) == terms + 1
    await asyncio.sleep(0.2)
    info = await js.consumer_info(bus.stream, bus.consumer_name(SEGMENT_SPEED, "garbage"))
    assert info.num_ack_pending == 0
    # One delivery each: terminated garbage is not redelivered.
    assert info.delivered.consumer_seq == 2


async def test_publish_returns_after_the_stream_stored_the_event(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus()
    for n in range(1, 6):
        await bus.publish(VEHICLE_POSITION, _pos(str(n), n), key=str(n))
        assert (await js.stream_info(bus.stream)).state.messages == n
    await asyncio.gather(*(bus.publish(VEHICLE_POSITION, _pos(str(n), n), key=str(n))
                           for n in range(500)))
    assert (await js.stream_info(bus.stream)).state.messages == 505


async def test_publish_fails_loudly_when_no_stream_takes_it(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus(publish_timeout_s=2.0)
    await js.delete_stream(bus.stream)
    with pytest.raises(BusError):
        await bus.publish(SEGMENT_SPEED, _speed("lost"))


async def test_slow_handler_keeps_its_message_with_in_progress_acks(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus(ack_wait_s=1.0)
    calls: list[str] = []

    async def slow(env: Envelope[SegmentSpeed]) -> None:
        calls.append(env.payload.segment_id)
        if env.payload.segment_id == "slow":
            await asyncio.sleep(3.0)  # three times ack_wait

    await bus.subscribe(SEGMENT_SPEED, slow, durable="slow")
    await bus.publish(SEGMENT_SPEED, _speed("slow"))
    await bus.publish(SEGMENT_SPEED, _speed("queued"))  # held behind it for as long
    await _wait_for(lambda: len(calls) >= 2, within_s=10)
    await asyncio.sleep(1.5)
    assert calls == ["slow", "queued"]
    info = await js.consumer_info(bus.stream, bus.consumer_name(SEGMENT_SPEED, "slow"))
    assert info.delivered.consumer_seq == 2, "a message was redelivered behind the handler"


async def test_partitioned_groups_get_one_single_filter_consumer_per_partition(
        make_bus: BusFactory, js: JetStreamContext) -> None:
    bus = await make_bus()

    async def handler(env: Envelope[VehiclePosition]) -> None:
        return None

    await bus.subscribe(VEHICLE_POSITION, handler, durable="matcher")
    await bus.subscribe(VEHICLE_POSITION, handler, durable="alarms")
    consumers = await js.consumers_info(bus.stream)
    assert len(consumers) == 8
    expected = {bus.consumer_name(VEHICLE_POSITION, group, p): bus.wire_subject(VEHICLE_POSITION, p)
                for group in ("matcher", "alarms") for p in range(4)}
    assert {c.name: c.config.filter_subject for c in consumers} == expected
    assert "matcher-tti-position-3" in expected
    for c in consumers:
        assert not c.config.filter_subjects
        assert c.config.durable_name == c.name
        assert c.config.ack_policy == nats.js.api.AckPolicy.EXPLICIT
        assert c.config.max_deliver == bus.max_deliver


async def test_two_members_of_a_group_share_the_work_without_duplicates(
        make_bus: BusFactory) -> None:
    # Small pulls so that neither member can grab the whole backlog in one request.
    first = await make_bus(fetch_batch=8, max_ack_pending=64)
    second = await make_bus(fetch_batch=8, max_ack_pending=64)
    seen: dict[str, list[str]] = {"first": [], "second": []}

    def handler_for(member: str) -> Callable[[Envelope[SegmentSpeed]], Awaitable[None]]:
        async def handler(env: Envelope[SegmentSpeed]) -> None:
            seen[member].append(env.payload.segment_id)
            await asyncio.sleep(0.001)

        return handler

    await first.subscribe(SEGMENT_SPEED, handler_for("first"), durable="shared")
    await second.subscribe(SEGMENT_SPEED, handler_for("second"), durable="shared")
    await asyncio.gather(*(first.publish(SEGMENT_SPEED, _speed(f"s{n}")) for n in range(200)))
    await _wait_for(lambda: len(seen["first"]) + len(seen["second"]) >= 200)
    await asyncio.sleep(0.3)
    both = seen["first"] + seen["second"]
    assert sorted(both) == sorted(f"s{n}" for n in range(200)), "lost or duplicated events"
    assert seen["first"] and seen["second"], "one member got nothing"
