"""The OpenAPI document matches the server: schemathesis generates requests from it and checks
every answer against it (no 5xx but the documented 503, documented status codes and content
types, bodies matching their schemas).

The publisher runs for real (aiohttp on a port of its own, in a thread with its own event loop)
over the bigdata stand-in and a MemoryBus, with a road status and a warning held.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.publisher.app import PUBLISHER, create_app
from services.publisher.openapi import build_openapi
from shared.bus import bus_from_url
from shared.clients.bigdata import BigdataClient
from shared.config import Config
from shared.events import ROAD_STATUS, RoadStatus
from tests.publisher import BigdataState, make_bigdata_app, wait_for

schema = schemathesis.openapi.from_dict(build_openapi()).exclude(
    path="/api/v1/stream")  # an endless stream: covered by the SSE tests

CHECKS = [content_type_conformance, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Run the publisher in a thread; yield its URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()

    async def main() -> None:
        bigdata = TestServer(make_bigdata_app(BigdataState()))
        await bigdata.start_server()
        bus = bus_from_url("memory://", partitions=4)
        await bus.start()
        config = Config(bigdata_url=str(bigdata.make_url("/")))
        app = create_app(config, bus=bus, bigdata=BigdataClient(config.bigdata_url))
        app[PUBLISHER].retry_initial_s = 0.02
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await wait_for(lambda: app[PUBLISHER].catalogue is not None
                       and app[PUBLISHER].places is not None, within_s=20.0)
        await bus.publish(ROAD_STATUS, RoadStatus(
            segment_id="101:1:2", level=4, level_name="中度拥堵",
            level_name_en="moderate congestion", speed_kmh=15.0, free_flow_kmh=50.0,
            observed_at=datetime.now(UTC), sample_count=5, source="probe", tpi=6.5))
        url.append(f"http://127.0.0.1:{port}")
        ready.set()
        await stop.wait()
        await runner.cleanup()
        await bus.close()
        await bigdata.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "publisher did not start"
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


@schema.parametrize()
@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_the_server_answers_as_its_openapi_document_says(case: schemathesis.Case,
                                                         base_url: str) -> None:
    response = case.call(base_url=base_url)
    assert response.status_code < 500 or response.status_code == 503, response.text
    case.validate_response(response, checks=CHECKS)
