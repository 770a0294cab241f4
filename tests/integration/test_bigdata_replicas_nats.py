"""Two bigdata replicas over real NATS JetStream merge their shares exactly (needs NATS).

Each replica is a pod of its own: its own bus connection, its own copy of the geodatabase,
replica index 0 or 1 of 2. A third connection publishes positions and detector readings as the
collector does. The SegmentSpeeds they publish together must equal what one replica computes
from every vehicle (the same events on the embedded memory bus), and so must the
MatchedPositions of the 两客一危 vehicles among them, each in its vehicle's partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
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
from shared.events import (
    MATCHED_POSITION,
    SEGMENT_SPEED,
    TWO_PASSENGER_ONE_DANGER,
    DetectorReading,
    MatchedPosition,
    VehiclePosition,
    partition_of,
)
from shared.roadnet import RoadNetwork
from tests.bigdata.test_bigdata_live import (  # noqa: F401 - fixtures used by name
    PARTITIONS,
    T0,
    WINDOW_S,
    Clock,
    Event,
    Run,
    Sink,
    detector,
    drive,
    fleet,
    imported_db,
    make_run,
    net,
    positions,
    reading,
    readings_at,
    region,
)

pytestmark = pytest.mark.integration


async def _wait_for(cond: Callable[[], bool], what: str, within_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Pods:
    """Replicas on their own NATS connections, and counts of what went through the bus."""

    def __init__(self) -> None:
        self.buses: list[NatsBus] = []
        self.stores: list[GeoStore] = []
        self.replicas: list[Bigdata] = []
        self.sent = {"position": 0, "reading": 0}
        self.handled = {"position": 0, "reading": 0}

    def count(self, kind: str, handler: Callable[[Envelope[Any]], Awaitable[None]]
              ) -> Callable[[Envelope[Any]], Awaitable[None]]:
        async def counted(env: Envelope[Any]) -> None:
            await handler(env)
            self.handled[kind] += 1

        return counted

    async def settle(self) -> None:
        """Wait until every replica has handled what was sent and merged every share."""
        def done() -> bool:
            merged = sum(bd.partials_merged + bd.merger.late_partials for bd in self.replicas)
            return (self.handled["position"] == self.sent["position"]
                    and self.handled["reading"] == self.sent["reading"] * len(self.replicas)
                    and merged == sum(bd.partials_published for bd in self.replicas))

        await _wait_for(done, "the replicas to catch up")


@pytest.fixture
async def pods(nats_url: str, unique_name: str) -> AsyncIterator[Pods]:
    made = Pods()
    yield made
    for bd in made.replicas:
        with contextlib.suppress(Exception):
            await bd.stop()
    for bus in made.buses:
        await bus.close()
    for store in made.stores:
        await store.close()
    nc = await nats.connect(nats_url)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(unique_name.upper())
    await nc.close()


async def test_two_replicas_merge_over_jetstream(
        pods: Pods, make_run: Callable[..., Awaitable[Run]], net: RoadNetwork,  # noqa: F811
        imported_db: Path, tmp_path: Path, nats_url: str, unique_name: str) -> None:  # noqa: F811
    traces = fleet(net, count=24, duration_s=420.0, seed=9)
    reference = await make_run()
    await drive(reference, positions(traces))
    busiest = max(reference.sink.by_window().items(), key=lambda kv: kv[1].sample_count)
    (seg_a, start_a), _ = busiest
    window_a = round((start_a.timestamp() - T0) / WINDOW_S)
    loop = [detector("LOOP-A", net, seg_a)]
    events: list[Event] = positions(traces) + readings_at(
        [reading("LOOP-A", window_a, count=9, speed_kmh=45.0)])

    single = await make_run(detectors=loop)
    single_matched: list[Envelope[MatchedPosition]] = []

    async def on_single(env: Envelope[MatchedPosition]) -> None:
        single_matched.append(env)

    await single.bus.subscribe(MATCHED_POSITION, on_single, durable="test-matched")
    await drive(single, events)
    expected = single.sink.by_window()
    assert expected[(seg_a, start_a)].source == "probe+detector"
    assert len(expected) > 80

    def nats_bus(name: str) -> NatsBus:
        return NatsBus(nats_url, partitions=PARTITIONS, prefix=unique_name,
                       stream=unique_name.upper(), name=name, nak_delay_s=0.05)

    feeder = nats_bus("collector")
    await feeder.start()
    pods.buses.append(feeder)
    sink = Sink()
    await feeder.subscribe(SEGMENT_SPEED, sink.on_speed, durable="test-sink")
    matched: dict[int, list[Envelope[MatchedPosition]]] = {p: [] for p in range(PARTITIONS)}
    for part in range(PARTITIONS):
        async def on_matched(env: Envelope[MatchedPosition], part: int = part) -> None:
            matched[part].append(env)

        await feeder.subscribe(MATCHED_POSITION, on_matched, durable=f"test-matched-{part}",
                               partitions=[part])
    clock = Clock()
    for index in range(2):
        db = tmp_path / f"pod{index}.db"
        shutil.copy(imported_db, db)
        store = store_from_url(f"sqlite:///{db}")
        await store.open()
        pods.stores.append(store)
        await store.import_features("detectors", "test", ["detector"], loop)
        bus = nats_bus(f"bigdata-{index}")
        await bus.start()
        pods.buses.append(bus)
        bd = Bigdata(Config(speed_window_s=WINDOW_S, partitions=PARTITIONS, replica_count=2,
                            replica_index=index), bus, store, clock=clock)
        await bd.load_network()
        await bd.load_gtfs()
        await bd.load_detectors()
        # Count what each pod handled, so the test knows when the bus has caught up.
        bd.on_position = pods.count(  # type: ignore[method-assign,assignment]
            "position", bd.on_position)
        bd.on_detector_reading = pods.count(  # type: ignore[method-assign,assignment]
            "reading", bd.on_detector_reading)
        pods.replicas.append(bd)
    for bd in pods.replicas:
        await bd.start()

    class FeederPublish:
        """The feeder bus, counting what it hands over."""

        async def publish(self, subject: Any, payload: Any, *, key: str | None = None) -> str:
            pods.sent["reading" if isinstance(payload, DetectorReading) else "position"] += 1
            assert isinstance(payload, VehiclePosition | DetectorReading)
            return await feeder.publish(subject, payload, key=key)

    run = Run(FeederPublish(), pods.stores[0], pods.replicas, clock, sink,  # type: ignore[arg-type]
              pods.settle)
    await drive(run, events)
    await _wait_for(lambda: len(sink.speeds) >= len(expected), "every SegmentSpeed")
    await asyncio.sleep(0.3)  # nothing more may come
    assert sink.by_window() == expected
    assert all(bd.partials_published > 0 and bd.partials_merged > 0 for bd in pods.replicas)
    assert all(bd.merger.late_partials == 0 for bd in pods.replicas)
    for index in (0, 1):  # each published the segments of its own partitions, and only those
        assert run.flushed[index]
        assert all(partition_of(s.segment_id, PARTITIONS) % 2 == index
                   for s in run.flushed[index])
    # The 两客一危 vehicles' positions on their roads: what one process publishes, each fix once,
    # in its vehicle's partition and in order.
    monitored = {t.vehicle_id: len(t.points) for t in traces
                 if t.vehicle_class in TWO_PASSENGER_ONE_DANGER}
    assert monitored and len(monitored) < len(traces)
    want = sum(monitored.values())
    assert len(single_matched) == want
    await _wait_for(lambda: sum(map(len, matched.values())) >= want, "every MatchedPosition")
    got = [env for envs in matched.values() for env in envs]
    assert len(got) == want
    assert (sorted((e.event_id, e.payload) for e in got)
            == sorted((e.event_id, e.payload) for e in single_matched))
    for part, envs in matched.items():
        by_vehicle: dict[str, list[float]] = {}
        for env in envs:
            assert partition_of(env.payload.vehicle_id, PARTITIONS) == part
            by_vehicle.setdefault(env.payload.vehicle_id, []).append(
                env.payload.observed_at.timestamp())
        assert all(ts == sorted(ts) for ts in by_vehicle.values())
    # Every replica knows every segment's latest value, whichever replica merged it.
    await _wait_for(lambda: pods.replicas[0].latest.keys() == pods.replicas[1].latest.keys(),
                    "both replicas to know every latest value")
