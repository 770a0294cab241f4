"""``/v1/route``, ``/v1/warnings``, ``/v1/incidents``, ``/v1/index`` and the OpenAPI document.

Times are UTC (RFC 3339, ``Z``). Bad parameters get HTTP 400 with ``{"error": {"code",
"message"}}``; a route query before the network is loaded gets 503 (``network_loading``).
"""

from __future__ import annotations

from aiohttp import web

from services.warning.api.openapi import build_openapi
from services.warning.engine import WarningEngine, warning_json
from services.warning.service import WarningService
from shared.codec import dumps
from shared.errors import BadRequest, NotFound, TransientError
from shared.events import WarningKind
from shared.params import parse_alternatives, parse_point
from shared.roadnet.routing import Route

SERVICE = web.AppKey("warning_service", WarningService)
ENGINE = web.AppKey("warning_engine", WarningEngine)

MAX_ALTERNATIVES = 3
WARNING_FILTERS = ("active", "ended", "all")
INCIDENT_FILTERS = ("active", "cleared", "all")


def _json(data: object) -> web.Response:
    return web.Response(body=dumps(data), content_type="application/json")


def route_json(route: Route) -> dict[str, object]:
    """One route as the API answers it."""
    return {"travel_time_s": round(route.travel_time_s, 1), "length_m": round(route.length_m, 1),
            "segment_ids": list(route.segment_ids), "geometry": route.geojson()}


async def _route(request: web.Request) -> web.Response:
    q = request.query
    origin = parse_point(q.get("from"), "from")
    destination = parse_point(q.get("to"), "to")
    alternatives = parse_alternatives(q.get("alternatives"), most=MAX_ALTERNATIVES)
    routing = request.app[SERVICE].routing
    if routing is None:
        raise TransientError("the road network is still loading; retry shortly",
                             code="network_loading")
    routes, weights = await routing.route(origin, destination, alternatives=alternatives)
    return _json({"routes": [route_json(r) for r in routes], "as_of": weights.as_of,
                  "time_zone": "UTC"})


async def _warnings(request: web.Request) -> web.Response:
    status = request.query.get("status", "active")
    if status not in WARNING_FILTERS:
        raise BadRequest(f"status must be one of {', '.join(WARNING_FILTERS)}")
    kind = request.query.get("kind")
    if kind is not None and kind not in {k.value for k in WarningKind}:
        raise BadRequest(f"kind must be one of {', '.join(k.value for k in WarningKind)}")
    items = [w for w in request.app[ENGINE].list_warnings(status)
             if kind is None or w.kind == kind]
    return _json({"warnings": [warning_json(w) for w in items], "count": len(items)})


async def _warning(request: web.Request) -> web.Response:
    wid = request.match_info["warning_id"]
    w = request.app[ENGINE].find_warning(wid)
    if w is None:
        raise NotFound(f"no warning {wid!r}")
    return _json(warning_json(w))


async def _incidents(request: web.Request) -> web.Response:
    status = request.query.get("status", "active")
    if status not in INCIDENT_FILTERS:
        raise BadRequest(f"status must be one of {', '.join(INCIDENT_FILTERS)}")
    items = request.app[ENGINE].incidents.list_incidents(status)
    return _json({"incidents": items, "count": len(items)})


async def _index(request: web.Request) -> web.Response:
    index = request.app[ENGINE].index
    network = index.get("network")
    areas = [a for aid, a in sorted(index.items()) if aid != "network"]
    return _json({"network": network, "areas": areas,
                  "observed_at": None if network is None else network.observed_at})


def add_routes(app: web.Application) -> None:
    """Register the public ``/v1`` API and ``/openapi.json``."""
    doc = dumps(build_openapi())

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=doc, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/v1/route", _route)
    app.router.add_get("/v1/warnings", _warnings)
    app.router.add_get("/v1/warnings/{warning_id}", _warning)
    app.router.add_get("/v1/incidents", _incidents)
    app.router.add_get("/v1/index", _index)
