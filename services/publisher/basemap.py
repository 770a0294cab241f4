"""``GET /api/v1/basemap?bbox=&zoom=``: bigdata's base map for the page, cached in memory.

The page asks for the box of the tiles it shows (snapped to the tile grid of its zoom, so panning
within them asks the same box again); each (box, zoom) answer is kept for
:attr:`BasemapCache.ttl_s` seconds, at most :attr:`BasemapCache.max_entries` of them (least
recently used forgotten first), and concurrent requests for the same one wait for a single fetch.
The base map changes only with an OSM import, so a cached answer is as good as a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import datetime

from aiohttp import web
from prometheus_client import Counter

from services.publisher.api import cached_response
from shared.clients.bigdata import BigdataClient
from shared.clock import Clock
from shared.codec import dumps
from shared.errors import BadRequest, NotFound, TransientError
from shared.params import parse_bbox

MAX_ZOOM = 20
MAX_SPAN_DEG = 10.0
"""A box wider or taller than this is refused: the page never asks for more than a city."""

BASEMAP_REQUESTS = Counter("tti_publisher_basemap_requests_total",
                           "Base map requests by how they were answered", ["result"])

Key = tuple[tuple[float, float, float, float], int]


class BasemapCache:
    """(bbox, zoom) → the encoded answer and when it was fetched; LRU, bounded, single-flight."""

    max_entries = 256
    ttl_s = 600.0

    def __init__(self, bigdata: BigdataClient, clock: Clock) -> None:
        self.bigdata = bigdata
        self.clock = clock  # Last-Modified is on the service clock, as every answer's
        self._entries: OrderedDict[Key, tuple[bytes, float, datetime]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[tuple[bytes, datetime]]] = {}

    async def get(self, bbox: tuple[float, float, float, float], zoom: int
                  ) -> tuple[bytes, datetime]:
        """The answer's bytes and when it was fetched (raises what the bigdata client raises)."""
        key: Key = (tuple(round(v, 6) for v in bbox), zoom)  # type: ignore[assignment]
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[1] < self.ttl_s:
            self._entries.move_to_end(key)
            BASEMAP_REQUESTS.labels("hit").inc()
            return entry[0], entry[2]
        pending = self._inflight.get(key)
        if pending is not None:
            BASEMAP_REQUESTS.labels("shared").inc()
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[bytes, datetime]] = (
            asyncio.get_running_loop().create_future())
        self._inflight[key] = future
        try:
            try:
                answer = await self.bigdata.get_basemap(key[0], zoom)
            except NotFound as exc:  # a bigdata without the base map: not the page's 404
                raise TransientError("bigdata serves no base map", code="basemap_unavailable"
                                     ) from exc
            result = (dumps(answer), self.clock.now())
        except BaseException as exc:
            BASEMAP_REQUESTS.labels("error").inc()
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._inflight.pop(key, None)
        BASEMAP_REQUESTS.labels("miss").inc()
        future.set_result(result)
        self._entries[key] = (result[0], time.monotonic(), result[1])
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return result


BASEMAP = web.AppKey("basemap_cache", BasemapCache)


def parse_zoom(raw: str | None) -> int:
    """``zoom``: an integer 0 … :data:`MAX_ZOOM`; BadRequest otherwise."""
    if raw is None or not raw.isdigit() or int(raw) > MAX_ZOOM:
        raise BadRequest(f"zoom is required: an integer from 0 to {MAX_ZOOM}")
    return int(raw)


async def get_basemap(request: web.Request) -> web.Response:
    """The base map in ``bbox`` for ``zoom`` (GeoJSON, bigdata's answer as it came)."""
    bbox = parse_bbox(request.query.get("bbox"))
    if bbox is None:
        raise BadRequest("bbox is required: bbox=minlon,minlat,maxlon,maxlat")
    if bbox[2] - bbox[0] > MAX_SPAN_DEG or bbox[3] - bbox[1] > MAX_SPAN_DEG:
        raise BadRequest(f"bbox may span at most {MAX_SPAN_DEG:g} degrees each way")
    zoom = parse_zoom(request.query.get("zoom"))
    payload, fetched_at = await request.app[BASEMAP].get(bbox, zoom)
    return cached_response(request, payload, content_type="application/geo+json",
                           last_modified=fetched_at, compress=True)


def add_basemap_routes(app: web.Application, bigdata: BigdataClient, clock: Clock) -> None:
    """Register ``/api/v1/basemap`` with its cache over ``bigdata``."""
    app[BASEMAP] = BasemapCache(bigdata, clock)
    app.router.add_get("/api/v1/basemap", get_basemap)
