"""The feature catalogue, end to end: bigdata publishes it, the collector checks states with it.

Both real apps run on one MemoryBus that serialises like JetStream (bigdata on SQLite over the
demo region); the collector never sees bigdata's store, only the bus.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import shapely
from aiohttp.test_utils import TestClient, TestServer

from services.bigdata.app import BIGDATA, catalogue_chunks
from services.bigdata.app import create_app as bigdata_app
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.osm_features import import_osm_file
from services.bigdata.store import Feature, store_from_url
from services.collector.app import CATALOGUE
from services.collector.app import create_app as collector_app
from services.collector.feature_state import FeatureCatalogueView
from shared.bus.memory import MemoryBus
from shared.codec import Envelope, decode_envelope, encode_envelope
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    FEATURE_CATALOGUE,
    FEATURE_CATALOGUE_REQUEST,
    FEATURE_KINDS,
    CatalogueEntry,
    CatalogueRequest,
    FeatureCatalogue,
)

URL = "/api/v1/features/{}/{}/state"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRegion:
    return generate_demo_region(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def imported_db(demo: DemoRegion, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "geo.db"

    async def load() -> None:
        store = store_from_url(f"sqlite:///{path}")
        await store.open()
        try:
            await import_osm_file(store, demo.osm_path)
            await import_gtfs_file(store, demo.gtfs_path)
        finally:
            await store.close()

    asyncio.run(load())
    return path


@dataclass
class Services:
    bus: MemoryBus
    bigdata: TestClient[Any, Any]
    collector: TestClient[Any, Any]

    @property
    def view(self) -> FeatureCatalogueView:
        return self.collector.app[CATALOGUE]

    async def post(self, kind: str, feature_id: str, body: object) -> tuple[int, Any]:
        resp = await self.collector.post(URL.format(kind, feature_id), json=body)
        return resp.status, await resp.json()

    async def live(self, kind: str, feature_id: str) -> Any:
        resp = await self.bigdata.get(f"/v1/features/{kind}/{feature_id}")
        assert resp.status == 200
        return (await resp.json())["live"]


async def eventually(what: str, cond: Callable[[], object]) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def settle(bus: MemoryBus) -> None:
    """Until every queue of the memory bus is handled."""
    await asyncio.sleep(0)
    for groups in bus._groups.values():
        for consumers in groups.values():
            for c in consumers:
                await c.queue.join()


@pytest.fixture
async def services(demo: DemoRegion, imported_db: Path, tmp_path: Path
                   ) -> AsyncIterator[Services]:
    db = tmp_path / "geo.db"
    shutil.copy(imported_db, db)
    bus = MemoryBus(partitions=4, serialize=True)
    await bus.start()
    config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path), gtfs=str(demo.gtfs_path),
                    var_dir=str(tmp_path), speed_window_s=1.0, partitions=4, jt808_port=0,
                    jt808_host="127.0.0.1")
    # Bigdata first, as `tti run` starts it: its catalogue at load goes out before the
    # collector listens, and a memory bus keeps nothing; the collector's request fetches it.
    bigdata: TestClient[Any, Any] = TestClient(TestServer(bigdata_app(config, bus=bus)))
    await bigdata.start_server()
    collector: TestClient[Any, Any] = TestClient(TestServer(collector_app(
        config.replace(db_url=f"sqlite:///{tmp_path}/terminals.db"), bus=bus)))
    await collector.start_server()
    try:
        yield Services(bus, bigdata, collector)
    finally:
        await collector.close()
        await bigdata.close()
        await bus.close()


async def test_the_catalogue_reaches_the_collector_and_states_are_checked_end_to_end(
        services: Services) -> None:
    await eventually("the catalogue at the collector", lambda: services.view.complete)
    store = services.bigdata.app[BIGDATA].store
    stored = await store.list_feature_catalogue()
    parking = stored["parking"]
    assert {e.capacity for e in parking} >= {300, 120}  # the demo's car parks
    for kind in FEATURE_KINDS:
        for entry in stored.get(kind, ()):
            assert services.view.find(kind, entry.feature_id) == entry
    lot = next(e for e in parking if e.capacity == 120)

    # The examples: both refused at the edge, with the reason.
    status, answer = await services.post("parking", lot.feature_id,
                                          {"values": {"free_spaces": -5}})
    assert (status, answer["error"]["code"]) == (422, "implausible_value")
    assert "-5" in answer["error"]["message"]
    status, answer = await services.post("parking", "no-such-lot",
                                          {"values": {"free_spaces": 5}})
    assert (status, answer["error"]["code"]) == (404, "unknown_feature")
    status, answer = await services.post("parking", lot.feature_id,
                                          {"values": {"free_spaces": 121}})
    assert (status, answer["error"]["code"]) == (422, "implausible_value")
    assert "capacity of 120" in answer["error"]["message"]

    observed = (datetime.now(UTC) - timedelta(seconds=30)).replace(microsecond=0)
    status, answer = await services.post("parking", lot.feature_id, {
        "observed_at": observed.isoformat(), "values": {"free_spaces": 37, "open": True}})
    assert (status, answer) == (202, {"accepted": 1})
    await settle(services.bus)
    for _ in range(200):  # the store writes in a thread
        if await services.live("parking", lot.feature_id) == {"free_spaces": 37, "open": True}:
            break
        await asyncio.sleep(0.01)
    assert await services.live("parking", lot.feature_id) == {"free_spaces": 37, "open": True}


async def test_an_import_reaches_the_collector_with_the_next_publication(
        services: Services, demo: DemoRegion) -> None:
    await eventually("the catalogue at the collector", lambda: services.view.complete)
    bd = services.bigdata.app[BIGDATA]
    lon, lat = demo.center
    await bd.store.import_features("parking-registry", "p1", ["parking"], [
        Feature(kind="parking", feature_id="P-900", geometry=shapely.Point(lon, lat),
                name="新停车场", attrs={"capacity": 50})])
    assert (await services.post("parking", "P-900", {"values": {"free_spaces": 5}}))[0] == 404
    # What the periodic check does when it finds the catalogue changed.
    assert await bd.publish_catalogue("refresh", only_if_changed=True)
    assert not await bd.publish_catalogue("refresh", only_if_changed=True)  # unchanged: quiet
    await eventually("P-900 at the collector", lambda: services.view.find("parking", "P-900"))
    assert services.view.find("parking", "P-900") == CatalogueEntry(feature_id="P-900",
                                                                    capacity=50)
    assert (await services.post("parking", "P-900", {"values": {"free_spaces": 5}}))[0] == 202
    assert (await services.post("parking", "P-900", {"values": {"free_spaces": 51}}))[0] == 422


async def test_requests_made_before_the_last_publication_are_not_answered_again(
        services: Services) -> None:
    await eventually("the catalogue at the collector", lambda: services.view.complete)
    await settle(services.bus)  # the collector's own request has been answered
    bd = services.bigdata.app[BIGDATA]
    got: list[FeatureCatalogue] = []

    async def on_catalogue(env: Envelope[FeatureCatalogue]) -> None:
        got.append(env.payload)

    await services.bus.subscribe(FEATURE_CATALOGUE, on_catalogue, durable="probe")
    published = bd.catalogue_published_at
    # A request replayed from the stream, older than the last publication: already answered.
    old = datetime.fromtimestamp(published - 60, UTC)
    await services.bus.publish(FEATURE_CATALOGUE_REQUEST,
                               CatalogueRequest(requested_by="collector-7", requested_at=old))
    await services.bus.publish(FEATURE_CATALOGUE_REQUEST, CatalogueRequest(
        requested_by="collector-8", requested_at=bd.clock.now() + timedelta(seconds=1)))
    await eventually("one republication", lambda: len(got) >= len(FEATURE_KINDS))
    await asyncio.sleep(0.05)
    assert sorted(c.kind for c in got) == sorted(FEATURE_KINDS)
    assert bd.catalogue_published_at > published


def test_chunks_stay_under_the_payload_limit_and_assemble_after_the_wire() -> None:
    at = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    entries = [CatalogueEntry(feature_id=f"w{10**9 + i}", capacity=i % 500 or None)
               for i in range(20_000)]
    chunks = catalogue_chunks("parking", entries, published_at=at, max_bytes=64 * 1024)
    assert len(chunks) > 5
    assert {c.chunks for c in chunks} == {len(chunks)}
    assert len({c.version for c in chunks}) == 1
    view = FeatureCatalogueView()
    for c in reversed(chunks):  # order does not matter
        raw = encode_envelope(Envelope.new(FEATURE_CATALOGUE, c))
        assert len(raw) < 64 * 1024
        assert len(orjson.loads(raw)["payload"]["features"]) == len(c.features)
        view.add(decode_envelope(FEATURE_CATALOGUE, raw).payload)
    assert len(view) == len(entries)
    assert view.find("parking", entries[7].feature_id) == entries[7]
    # The same content gives the same version; a changed one another.
    again = catalogue_chunks("parking", entries, published_at=at + timedelta(hours=1))
    changed = catalogue_chunks("parking", entries[1:], published_at=at)
    assert again[0].version == chunks[0].version != changed[0].version
    empty = catalogue_chunks("hotel", [], published_at=at)
    assert [(c.chunk, c.chunks, c.features) for c in empty] == [(0, 1, ())]
