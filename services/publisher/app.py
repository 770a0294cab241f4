"""The publisher's composition root: the app API, citizens' reports, open feeds, web page.

It consumes road status, warnings, incidents, the traffic index, bus positions, arrival
predictions and car-park states from the bus, and reads the road, stop, route and place
catalogues from bigdata's HTTP API; see README.md beside this file for endpoints and settings.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from services.publisher.answers import Answers
from services.publisher.api import add_api_routes, with_etag
from services.publisher.basemap import add_basemap_routes
from services.publisher.cap_feed import add_cap_routes
from services.publisher.channels.hotline_api import add_hotline_routes
from services.publisher.channels.wechat import add_wechat_routes
from services.publisher.channels.weibo import add_weibo
from services.publisher.gtfs_rt import add_gtfs_rt_routes
from services.publisher.openapi import build_openapi
from services.publisher.reports import MAX_PHOTO_BYTES, add_report_routes
from services.publisher.signs import add_sign_routes
from services.publisher.state import Publisher
from shared.bus.base import EventBus
from shared.clients.bigdata import BigdataClient
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.codec import dumps
from shared.config import Config
from shared.db import Database
from shared.errors import NotFound
from shared.http_metrics import request_metrics
from shared.service import add_readiness_check, create_base_app, spawn

PUBLISHER = web.AppKey("publisher", Publisher)
OPENAPI_JSON = web.AppKey("openapi_json", bytes)

STATIC_DIR = Path(__file__).resolve().parent / "static"

_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(js|css|svg|png|ico)$")
_STATIC_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
                 "svg": "image/svg+xml", "png": "image/png", "ico": "image/x-icon"}
# Leaflet 1.9.4 from npm (``npm pack leaflet@1.9.4``, BSD-2, LICENSE beside it): exactly these.
VENDOR_FILES: frozenset[str] = frozenset({
    "leaflet/leaflet.js", "leaflet/leaflet.css", "leaflet/images/layers.png",
    "leaflet/images/layers-2x.png", "leaflet/images/marker-icon.png",
    "leaflet/images/marker-icon-2x.png", "leaflet/images/marker-shadow.png",
})
# The page may only talk to this server: the policy makes a stray external URL fail loudly.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def create_app(config: Config, *, bus: EventBus, bigdata: BigdataClient | None = None,
               clock: Clock | None = None, db: Database | None = None) -> web.Application:
    """Wire the publisher (no I/O here): routes, readiness, consumers and the catalogue loader.

    The app owns ``bigdata``'s HTTP session (opened and closed in ``cleanup_ctx``); the bus is
    the caller's to start and close. ``db`` (default ``TTI_DB_URL``, opened only when the
    WeChat channel is on) holds the WeChat followers' subscriptions.
    """
    # A report's photo (2 MiB) and its fields must fit in one request.
    app = create_base_app("publisher", config, client_max_size=MAX_PHOTO_BYTES + (256 << 10),
                          finish=with_etag, observe=request_metrics("publisher").observe)
    publisher = Publisher(config, bus, bigdata or BigdataClient(config.bigdata_url),
                          warning=WarningClient(config.warning_url),
                          clock=clock or config.make_clock())
    app[PUBLISHER] = publisher
    app[OPENAPI_JSON] = dumps(build_openapi())
    add_readiness_check(app, "catalogue", publisher.catalogue_readiness)
    add_readiness_check(app, "places", publisher.places_readiness)
    add_readiness_check(app, "bus", publisher.bus_readiness)
    app.router.add_get("/", _index)
    app.router.add_get("/static/{filename}", _static)
    app.router.add_get("/static/vendor/{path:.+}", _vendor)
    app.router.add_get("/openapi.json", _openapi)
    answers = Answers(publisher)
    add_api_routes(app, answers)
    add_basemap_routes(app, publisher.bigdata, publisher.clock)
    add_sign_routes(app, answers)
    add_report_routes(app)
    add_gtfs_rt_routes(app)
    add_cap_routes(app)
    add_hotline_routes(app, answers)
    add_wechat_routes(app, answers, publisher, db=db)
    add_weibo(app, publisher)
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
    spawn(app, publisher.keep_places(), name="publisher-places")
    spawn(app, publisher.prime_from_warning(), name="publisher-warning-prime")
    spawn(app, publisher.housekeeping(), name="publisher-housekeeping")
    yield
    await publisher.unsubscribe()


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


async def _vendor(request: web.Request) -> web.StreamResponse:
    name = request.match_info["path"]
    if name not in VENDOR_FILES:
        raise NotFound(f"no vendored file {name!r}")
    path = STATIC_DIR / "vendor" / name
    return web.FileResponse(path, headers={"Content-Type": _STATIC_TYPES[path.suffix[1:]],
                                           "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff"})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_JSON], content_type="application/json")


