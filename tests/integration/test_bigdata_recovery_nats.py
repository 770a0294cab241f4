"""A bigdata replica that dies loses no MatchedPosition: its successor recovers from the stream.

The matcher decides a fix only after newer ones arrive (its lag), and bigdata acks a position
when its handler returns: the last few fixes of every vehicle are acked but undecided in memory.
Here a replica on real NATS JetStream consumes 两客一危 vehicles' positions and then dies (its
consumers cancelled and its connection cut, no shutdown: what SIGKILL leaves); a new replica
with the same partitions starts, re-reads the span before its consumers' last delivered
positions (``Bigdata.recover``) and goes on with the rest of the positions. Every fix has exactly
one MatchedPosition in the stream (none lost with the dead replica, none published twice), and
no speed window is published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest

from services.bigdata.app import Bigdata
from services.bigdata.store import GeoStore, store_from_url
from shared.bus.nats import NatsBus
from shared.codec import Envelope
from shared.config import Config
from shared.events import MATCHED_POSITION, SEGMENT_SPEED, MatchedPosition, VehiclePosition
from shared.roadnet import RoadNetwork
from tests.bigdata.test_bigdata_live import (  # noqa: F401 - fixtures used by name
    PARTITIONS,
    T0,
    WINDOW_S,
    Clock,
    Event,
    Sink,
    fleet,
    imported_db,
    net,
    positions,
    region,
)
from tests.integration.support import stream_envelopes

pytestmark = pytest.mark.integration


async def _wait_for(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _crash(bus: NatsBus) -> None:
    """What SIGKILL leaves: consumers gone mid-stream (nothing drained, released or acked
    after), the connection cut."""
    for sub in bus._subs:
        for c in sub.consumers:
            for task in (c._task, c._keepalive):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    bus._subs.clear()
    nc = bus._nc_or_raise()
    await nc.close()


class Pod:
    """One bigdata replica (all partitions) on its own connection, counting what it handled."""

    def __init__(self, bd: Bigdata, bus: NatsBus, store: GeoStore) -> None:
        self.bd, self.bus, self.store = bd, bus, store
        self.handled = 0
        inner = bd.on_position

        async def counted(env: Envelope[VehiclePosition]) -> None:
            await inner(env)
            self.handled += 1

        bd.on_position = counted  # type: ignore[method-assign]


@pytest.fixture
async def opened(nats_url: str, unique_name: str) -> AsyncIterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        with contextlib.suppress(Exception):
            await thing.close()
    nc = await nats.connect(nats_url)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(unique_name.upper())
    await nc.close()


async def test_a_replica_killed_mid_stream_loses_no_matched_position(
        opened: list[Any], net: RoadNetwork, imported_db: Path,  # noqa: F811
        tmp_path: Path, nats_url: str, unique_name: str) -> None:
    # Every vehicle a coach or a dangerous-goods truck: each fix owes a MatchedPosition.
    traces = fleet(net, count=10, duration_s=360.0, seed=5)
    events: list[Event] = []
    for i, (at, subject, pos, key) in enumerate(positions(traces)):
        events.append((at, subject, dataclasses.replace(
            pos, vehicle_class="coach" if i % 2 else "dangerous_goods"), key))
    events.sort(key=lambda e: (e[0], e[3] or ""))
    cut = T0 + 200.0
    before = [e for e in events if e[0] < cut]
    after = [e for e in events if e[0] >= cut]
    stream = unique_name.upper()

    def nats_bus(name: str) -> NatsBus:
        return NatsBus(nats_url, partitions=PARTITIONS, prefix=unique_name, stream=stream,
                       name=name, nak_delay_s=0.05)

    feeder = nats_bus("collector")
    await feeder.start()
    opened.append(feeder)
    clock = Clock()
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)

    async def pod(name: str) -> Pod:
        store = store_from_url(f"sqlite:///{db}")
        await store.open()
        opened.append(store)
        bus = nats_bus(name)
        await bus.start()
        opened.append(bus)
        bd = Bigdata(Config(speed_window_s=WINDOW_S, partitions=PARTITIONS), bus, store,
                     clock=clock)
        await bd.load_network()
        await bd.load_gtfs()
        await bd.load_detectors()
        made = Pod(bd, bus, store)
        await bd.start()
        return made

    async def feed(p: Pod, batch: list[Event]) -> None:
        """Publish in 5 s steps of data time, the clock following; flush after each step."""
        sent = 0
        k = 0
        while k < len(batch):
            step_end = batch[k][0] + 5.0
            clock.at = step_end + 1.0
            while k < len(batch) and batch[k][0] < step_end:
                _, subject, payload, key = batch[k]
                await feeder.publish(subject, payload, key=key)
                sent += 1
                k += 1
            await _wait_for(lambda n=sent: p.handled >= n,  # type: ignore[misc]
                            "the replica to handle what was sent")
            await p.bd.flush(clock.at)

    first = await pod("bigdata-a")
    await feed(first, before)
    await _wait_for(lambda: first.handled == len(before), "every position handled")
    await first.bd.flush(clock.at)
    published = {env.event_id for _, env in await stream_envelopes(
        nats_url, f"{unique_name}.position.matched.*", MATCHED_POSITION, stream=stream)}
    # The matcher's lag: each vehicle's newest fixes are acked, yet undecided.
    assert 0 < len(published) < len(before)
    await _crash(first.bus)

    second = await pod("bigdata-b")
    second.handled = 0
    await feed(second, after)
    await _wait_for(lambda: second.handled >= len(after), "every later position handled")
    await second.bd.flush(clock.at, final=True)
    clock.at += 3 * WINDOW_S + 60.0
    await second.bd.flush(clock.at)

    matched = [env for _, env in await stream_envelopes(
        nats_url, f"{unique_name}.position.matched.*", MATCHED_POSITION, stream=stream)]
    ids = [env.event_id for env in matched]
    assert len(ids) == len(set(ids)), "a MatchedPosition published twice"
    want = {(e[2].vehicle_id, e[2].observed_at) for e in events}
    got: set[tuple[str, Any]] = set()
    for env in matched:
        m: MatchedPosition = env.payload
        got.add((m.vehicle_id, m.observed_at))
    lost = want - got
    assert not lost, f"{len(lost)} of {len(want)} fixes without a MatchedPosition"
    assert len(matched) == len(want)
    assert second.bd.recovered == len(before), "the span covers everything published here"
    assert second.bd.matched.known > 0, "fixes the dead replica published are recognised"
    # The replayed fixes did not go into the windows again: no window published twice.
    sink = Sink([env.payload for _, env in await stream_envelopes(
        nats_url, f"{unique_name}.segment.speed", SEGMENT_SPEED, stream=stream)])
    assert sink.by_window()
