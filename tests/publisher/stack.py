"""The publisher over the real bigdata and warning apps, on one real MemoryBus.

bigdata runs on SQLite with the generated demo region (roads, bridges, car parks, hotels, GTFS
stops and routes) imported once per module; the warning service on its own SQLite file. All
three share one clock started at 09:00 Beijing time on a Tuesday, when the demo timetable runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from services.bigdata.app import create_app as create_bigdata_app
from services.bigdata.gtfs_import import import_gtfs_file
from services.bigdata.osm_features import import_osm_file
from services.bigdata.store import store_from_url
from services.publisher.app import PUBLISHER, create_app
from services.publisher.state import Publisher
from services.warning.app import create_app as create_warning_app
from shared.bus.memory import MemoryBus
from shared.clock import Clock
from shared.config import Config
from shared.demo import DemoRegion
from tests.publisher import is_ready, wait_for

START = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)  # Tuesday 09:00 in Wuhan


def import_demo(demo: DemoRegion, path: Path) -> Path:
    """A SQLite geodatabase with the demo region imported (done once, copied per test)."""

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
class Stack:
    """The running publisher, its HTTP client, the bus and the clock."""

    client: TestClient[Any, Any]
    publisher: Publisher
    bus: MemoryBus
    clock: Clock
    bigdata: TestClient[Any, Any]
    warning: TestClient[Any, Any]
    warning_db: str
    """The warning service's database URL (its department users live there)."""


@contextlib.asynccontextmanager
async def running_stack(demo: DemoRegion, imported: Path, tmp_path: Path,
                        **publisher_settings: Any) -> AsyncIterator[Stack]:
    """Start bigdata, warning and the publisher (``publisher_settings``: Config fields for
    it alone); stop them all afterwards."""
    db = tmp_path / "geo.db"
    shutil.copy(imported, db)
    clock = Clock(start=START)
    bus = MemoryBus(partitions=4)
    await bus.start()
    config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path), gtfs=str(demo.gtfs_path),
                    var_dir=str(tmp_path), partitions=4, public_id_key="test-key")
    bigdata: TestClient[Any, Any] = TestClient(TestServer(
        create_bigdata_app(config, bus=bus, clock=clock)))
    await bigdata.start_server()
    config = config.replace(bigdata_url=str(bigdata.make_url("")).rstrip("/"))
    warning_db = f"sqlite:///{tmp_path / 'warning.db'}"
    warning: TestClient[Any, Any] = TestClient(TestServer(create_warning_app(
        config.replace(db_url=warning_db), bus=bus, clock=clock)))
    await warning.start_server()
    config = config.replace(warning_url=str(warning.make_url("")).rstrip("/"))
    app = create_app(config.replace(**publisher_settings), bus=bus, clock=clock)
    app[PUBLISHER].retry_initial_s = 0.05
    app[PUBLISHER].retry_max_s = 0.2
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        await wait_for(lambda: is_ready(client), within_s=60.0)
        yield Stack(client=client, publisher=app[PUBLISHER], bus=bus, clock=clock,
                    bigdata=bigdata, warning=warning, warning_db=warning_db)
    finally:
        await client.close()
        await warning.close()
        await bigdata.close()
        await bus.close()
