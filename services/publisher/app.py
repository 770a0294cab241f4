"""The publisher's composition root: citizen REST API, web page and OpenAPI document.

It consumes ``tti.road.status`` and ``tti.warning`` from the bus and reads the road catalogue
from bigdata's HTTP API; see README.md beside this file for endpoints and settings.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter, Histogram

from services.publisher.openapi import build_openapi
from services.publisher.roads import Catalogue, parse_bbox, parse_min_level, road_feature
from services.publisher.state import Publisher
from services.publisher.warning_board import STATUS_FILTERS, warning_to_dict
from shared.bus.base import EventBus
from shared.clients.bigdata import BigdataClient
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.codec import dumps
from shared.config import Config
from shared.errors import BadRequest, NotFound, TransientError
from shared.levels import describe_levels
from shared.params import parse_alternatives, parse_point
from shared.service import add_readiness_check, create_base_app, spawn

PUBLISHER = web.AppKey("publisher", Publisher)
OPENAPI_JSON = web.AppKey("openapi_json", bytes)

STATIC_DIR = Path(__file__).resolve().parent / "static"

_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(js|css|svg|png|ico)$")
_STATIC_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
                 "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon"}
# The page may only talk to this server: the policy makes a stray external URL fail loudly.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

HTTP_REQUESTS = Counter("tti_publisher_http_requests_total", "HTTP requests by route and status",
                        ["route", "method", "status"])
HTTP_LATENCY = Histogram("tti_publisher_http_request_seconds",
                         "Time to produce a response (headers), by route", ["route"])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(config: Config, *, bus: EventBus, bigdata: BigdataClient | None = None,
               clock: Clock | None = None) -> web.Application:
    """Wire the publisher (no I/O here): routes, readiness, consumers and the catalogue loader.

    The app owns ``bigdata``'s HTTP session (opened and closed in ``cleanup_ctx``); the bus is
    the caller's to start and close.
    """
    app = create_base_app("publisher", config)
    publisher = Publisher(config, bus, bigdata or BigdataClient(config.bigdata_url),
                          warning=WarningClient(config.warning_url),
                          clock=clock or config.make_clock())
    app[PUBLISHER] = publisher
    app[OPENAPI_JSON] = dumps(build_openapi())
    # Outermost, so it sees the status the error middleware turned exceptions into.
    app.middlewares.insert(0, _metrics_middleware)
    add_readiness_check(app, "catalogue", publisher.catalogue_readiness)
    add_readiness_check(app, "bus", publisher.bus_readiness)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{filename}", _static)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/api/v1/roads", _list_roads)
    app.router.add_get("/api/v1/roads/{segment_id}", _get_road)
    app.router.add_get("/api/v1/warnings", _list_warnings)
    app.router.add_get("/api/v1/region", _get_region)
    app.router.add_get("/api/v1/levels", _list_levels)
    app.router.add_get("/api/v1/route", _get_route)
    app.cleanup_ctx.append(_bigdata_ctx)
    app.cleanup_ctx.append(_feeds_ctx)
    return app


async def _bigdata_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = app[PUBLISHER]
    await publisher.bigdata.start()
    await publisher.warning.start()
    yield
    await publisher.warning.close()
    await publisher.bigdata.close()


async def _feeds_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = app[PUBLISHER]
    await publisher.subscribe()
    # Loaded in the background, not awaited here: in the embedded run bigdata is served by this
    # very server, which starts listening only after startup has finished.
    spawn(app, publisher.keep_catalogue(), name="publisher-catalogue")
    spawn(app, publisher.housekeeping(), name="publisher-housekeeping")
    yield
    await publisher.unsubscribe()


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        # The route template, never the raw path, keeps label values bounded.
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


def _json(data: object, *, content_type: str = "application/json",
          compress: bool = False) -> web.Response:
    response = web.Response(body=dumps(data), content_type=content_type)
    if compress:
        response.enable_compression()  # only when the client accepts it
    return response


def _catalogue(publisher: Publisher) -> Catalogue:
    if publisher.catalogue is None:
        raise TransientError("the road catalogue is still loading from bigdata; retry shortly",
                             code="catalogue_loading")
    return publisher.catalogue


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={**_PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["filename"]
    match = _STATIC_NAME.match(name)
    path = STATIC_DIR / name
    if match is None or not path.is_file():
        raise NotFound(f"no static file {name!r}")
    return web.FileResponse(path, headers={"Content-Type": _STATIC_TYPES[match.group(1)],
                                           "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


async def _list_roads(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    bbox = parse_bbox(request.query.get("bbox"))
    min_level = parse_min_level(request.query.get("min_level"))
    segments = _catalogue(publisher).list_segments(bbox)
    if min_level is None and len(segments) > publisher.max_features:
        raise BadRequest(f"the request selects {len(segments)} roads, more than "
                         f"{publisher.max_features}: pass a smaller bbox or a min_level")
    now = request.app[PUBLISHER].clock.now()
    features = []
    for segment in segments:
        status = publisher.road_status(segment, now)
        if min_level is not None and (status is None or status.source == "none"
                                      or status.level is None or status.level < min_level):
            continue
        features.append(road_feature(segment, status))
    if len(features) > publisher.max_features:
        raise BadRequest(f"the request selects {len(features)} roads, more than "
                         f"{publisher.max_features}: pass a smaller bbox or a higher min_level")
    return _json({"type": "FeatureCollection", "generated_at": now, "count": len(features),
                  "features": features}, content_type="application/geo+json", compress=True)


async def _get_road(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    segment_id = request.match_info["segment_id"]
    segment = _catalogue(publisher).find(segment_id)
    if segment is None:
        # The catalogue is refreshed only every few minutes; bigdata may know a newer road.
        segment = await publisher.bigdata.find_segment(segment_id)
        if segment is None:
            raise NotFound(f"unknown road segment {segment_id!r}")
    status = publisher.road_status(segment, request.app[PUBLISHER].clock.now())
    return _json(road_feature(segment, status, detail=True), content_type="application/geo+json")


async def _list_warnings(request: web.Request) -> web.Response:
    status = request.query.get("status", "active")
    if status not in STATUS_FILTERS:
        raise BadRequest(f"status must be one of {', '.join(STATUS_FILTERS)}")
    warnings = request.app[PUBLISHER].warnings.list_warnings(status)
    return _json({"warnings": [warning_to_dict(w) for w in warnings], "count": len(warnings),
                  "generated_at": request.app[PUBLISHER].clock.now()})


async def _get_region(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    region = _catalogue(publisher).region
    if region is None:
        raise TransientError("the region is not known yet", code="catalogue_loading")
    return _json({"name": region.name, "bbox": region.bbox, "segment_count": region.segment_count,
                  "generated_at": request.app[PUBLISHER].clock.now()})


async def _list_levels(request: web.Request) -> web.Response:
    return _json({"levels": describe_levels()})


async def _get_route(request: web.Request) -> web.Response:
    q = request.query
    origin, destination = parse_point(q.get("from"), "from"), parse_point(q.get("to"), "to")
    answer = await request.app[PUBLISHER].warning.route(
        origin, destination, alternatives=parse_alternatives(q.get("alternatives")))
    return _json(answer)
