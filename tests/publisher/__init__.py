"""Publisher tests and their helpers: a bigdata stand-in serving its HTTP contract, and a runner.

The stand-in is a test double of another service's HTTP API (``/v1/segments``,
``/v1/segments/{id}``, ``/v1/region``; no stops, routes or places) over real HTTP; the bus is
the real :class:`MemoryBus`. Tests of stops, buses and places run the real bigdata app instead
(:mod:`tests.publisher.stack`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.publisher.app import PUBLISHER, create_app
from services.publisher.state import Publisher
from shared.bus import EventBus, bus_from_url
from shared.clients.bigdata import BigdataClient
from shared.config import Config


def _segment(segment_id: str, name: str | None, name_en: str | None, road_class: str,
             coords: list[list[float]], **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "segment_id": segment_id, "name": name, "name_en": name_en, "road_class": road_class,
        "lanes": 2, "speed_limit_kmh": 60.0, "free_flow_kmh": 50.0, "oneway": True,
        "bridge": False, "tunnel": False, "length_m": 960.0, "coords": coords,
    }
    record.update(extra)
    return record


# Optics Valley (光谷) roads, plus one on the Yangtze bridge ~12 km away.
SEGMENTS: list[dict[str, Any]] = [
    _segment("101:1:2", "珞喻路", "Luoyu Road", "primary", [[114.40, 30.50], [114.41, 30.50]]),
    _segment("101:2:1", "珞喻路", "Luoyu Road", "primary", [[114.41, 30.50], [114.40, 30.50]]),
    _segment("202:3:4", "光谷大道", "Guanggu Avenue", "trunk",
             [[114.42, 30.48], [114.42, 30.485], [114.421, 30.49]], lanes=3),
    _segment("303:5:6", "武汉长江大桥", "Wuhan Yangtze River Bridge", "primary",
             [[114.29, 30.55], [114.30, 30.56]], bridge=True),
    _segment("404:7:8", None, None, "residential", [[114.405, 30.495], [114.406, 30.496]],
             lanes=None, speed_limit_kmh=None),
]
MALFORMED = [{"segment_id": "bad:1:2", "coords": [[114.4, 30.5]]}, "not an object"]
EXTRA = _segment("505:9:10", "新修路", "New Road", "secondary", [[114.43, 30.47], [114.44, 30.47]])
"""Known to bigdata but not in its listing: a road imported after the publisher loaded."""

REGION = {"name": "武汉光谷 demo", "bbox": [114.29, 30.47, 114.44, 30.56], "segment_count": 5}


@dataclass
class BigdataState:
    """What the stand-in serves and how: ``ready`` False answers 503, as during an import."""

    ready: bool = True
    requests: list[str] = field(default_factory=list)


def _intersects(coords: list[list[float]], bbox: list[float]) -> bool:
    lons = [c[0] for c in coords]
    lats = [c[1] for c in coords]
    return not (max(lons) < bbox[0] or min(lons) > bbox[2] or max(lats) < bbox[1]
                or min(lats) > bbox[3])


def make_bigdata_app(state: BigdataState) -> web.Application:
    """A tiny aiohttp app serving bigdata's segment/region contract from :data:`SEGMENTS`."""

    def gate(request: web.Request) -> None:
        state.requests.append(request.path_qs)
        if not state.ready:
            raise web.HTTPServiceUnavailable(text='{"error": {"code": "importing"}}',
                                             content_type="application/json")

    async def segments(request: web.Request) -> web.Response:
        gate(request)
        items: list[Any] = [*SEGMENTS, *MALFORMED]
        if "bbox" in request.query:
            bbox = [float(v) for v in request.query["bbox"].split(",")]
            items = [s for s in SEGMENTS if _intersects(s["coords"], bbox)]
        return web.json_response({"segments": items, "count": len(items)})

    async def segment(request: web.Request) -> web.Response:
        gate(request)
        sid = request.match_info["segment_id"]
        for s in [*SEGMENTS, EXTRA]:
            if s["segment_id"] == sid:
                return web.json_response(s)
        return web.json_response({"error": {"code": "not_found", "message": sid}}, status=404)

    async def region(request: web.Request) -> web.Response:
        gate(request)
        return web.json_response(REGION)

    def empty(key: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            gate(request)
            return web.json_response({key: [], "count": 0})
        return handler

    app = web.Application()
    app.router.add_get("/v1/gtfs/stops", empty("stops"))
    app.router.add_get("/v1/gtfs/routes", empty("routes"))
    app.router.add_get("/v1/features", empty("features"))
    app.router.add_get("/v1/segments", segments)
    app.router.add_get("/v1/segments/{segment_id}", segment)
    app.router.add_get("/v1/region", region)
    return app


@dataclass
class Env:
    """A running publisher with its bus, stand-in state and HTTP client."""

    client: TestClient[Any, Any]
    bus: EventBus
    app: web.Application
    bigdata: BigdataState

    @property
    def publisher(self) -> Publisher:
        """The publisher's state object."""
        return self.app[PUBLISHER]


async def wait_for(predicate: Callable[[], Any], within_s: float = 5.0) -> None:
    """Poll an (async or sync) predicate until it is truthy; fail after ``within_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def is_ready(client: TestClient[Any, Any]) -> bool:
    """Whether ``/readyz`` answers 200."""
    resp = await client.get("/readyz")
    return resp.status == 200


@contextlib.asynccontextmanager
async def running_publisher(*, ready: bool = True, wait_ready: bool = True,
                            tweak: Callable[[Publisher], None] | None = None
                            ) -> AsyncIterator[Env]:
    """Start a bigdata stand-in, a MemoryBus and the publisher; close them all afterwards."""
    state = BigdataState(ready=ready)
    bigdata_server = TestServer(make_bigdata_app(state))
    await bigdata_server.start_server()
    bus = bus_from_url("memory://", partitions=4)
    await bus.start()
    config = Config(bigdata_url=str(bigdata_server.make_url("/")))
    app = create_app(config, bus=bus, bigdata=BigdataClient(config.bigdata_url))
    publisher = app[PUBLISHER]
    publisher.retry_initial_s = 0.02
    publisher.retry_max_s = 0.1
    if tweak is not None:
        tweak(publisher)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        if wait_ready:
            await wait_for(lambda: is_ready(client))
        yield Env(client=client, bus=bus, app=app, bigdata=state)
    finally:
        await client.close()
        await bus.close()
        await bigdata_server.close()
