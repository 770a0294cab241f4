"""The app API under ``/api/v1``: the answers rendered as JSON / GeoJSON, with HTTP caching.

Every GET carries an ``ETag`` (a digest of the answer without its ``generated_at``) and a
``Last-Modified`` (when the data behind it last changed, on the service clock); a request whose
``If-None-Match`` names the current tag gets ``304 Not Modified`` without a body. Coordinates are
WGS-84 unless ``coord=gcj02``, which applies to the points a request sends and to every point
of its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from services.publisher.answers import MAX_LIMIT, MAX_RADIUS_M, Answer, Answers, Coords
from services.publisher.hub import Follower
from services.publisher.roads import parse_min_level
from shared.codec import dumps
from shared.errors import BadRequest, TransientError
from shared.levels import describe_levels
from shared.params import parse_alternatives, parse_bbox, parse_point

ANSWERS = web.AppKey("answers", Answers)
COORD_SYSTEMS = ("wgs84", "gcj02")
_COORDS = {system: Coords(system) for system in COORD_SYSTEMS}
MAX_QUERY_CHARS = 100
STREAM_HEARTBEAT_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- HTTP caching -------------------------------------------------------------------------------


def etag_of(payload: bytes) -> str:
    """A strong entity tag of a body."""
    return '"' + hashlib.blake2b(payload, digest_size=12).hexdigest() + '"'


def not_modified(request: web.Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110)."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


def cached_response(request: web.Request, payload: bytes, *, content_type: str,
                    last_modified: datetime | None, etag: str | None = None,
                    compress: bool = False) -> web.Response:
    """A 200 with ``payload``, or a 304 when the client holds it already."""
    tag = etag or etag_of(payload)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if not_modified(request, tag):
        response = web.Response(status=304, headers=headers)
    else:
        response = web.Response(body=payload, content_type=content_type, headers=headers)
        if compress:
            response.enable_compression()  # only when the client accepts it
    if last_modified is not None:
        response.headers["Last-Modified"] = http_date(last_modified)
    return response


def http_date(at: datetime) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate) of an aware time."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", at.utctimetuple())


def respond(request: web.Request, answer: Answer, *, content_type: str = "application/json",
            compress: bool = False) -> web.Response:
    """An answer as JSON with ``generated_at`` first; its tag leaves ``generated_at`` out, so
    an unchanged answer keeps its tag."""
    rendered = render_answer(request.app[ANSWERS], answer, ())
    return cached_response(request, rendered.payload, content_type=content_type,
                           last_modified=rendered.last_modified, etag=rendered.etag,
                           compress=compress)


@dataclass(frozen=True, slots=True)
class Rendered:
    """An answer rendered once: its JSON bytes (with ``generated_at``), tag and time."""

    stamps: tuple[datetime | None, ...]
    at: float
    payload: bytes
    etag: str
    last_modified: datetime
    last_modified_http: str
    headers: CIMultiDict[str] | None = None
    """The 200's headers, made once (:func:`respond_cached`)."""


class AnswerCache:
    """Rendered answers by request, reused until the data behind them changes.

    An entry holds while the ``changed`` stamps of the topics its answer is made of are those
    it was rendered under, and for at most ``ttl_s`` of the service clock (answers that count
    minutes or age values out depend on the time, too). The hot GETs then cost a dict lookup
    instead of building and encoding the answer: the same bytes and tag for every client.
    """

    def __init__(self, *, ttl_s: float = 1.0, max_entries: int = 20_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._held: dict[Hashable, Rendered] = {}
        self._pending: dict[Hashable, asyncio.Future[Rendered]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def find(self, key: Hashable, stamps: tuple[datetime | None, ...], mono: float
             ) -> Rendered | None:
        """The rendered answer for ``key`` if still current, else None."""
        held = self._held.get(key)
        if held is None or held.stamps != stamps or mono - held.at > self.ttl_s:
            return None
        return held

    def keep(self, key: Hashable, rendered: Rendered) -> Rendered:
        """Hold a rendered answer (all of them are dropped when the cache is full)."""
        if len(self._held) >= self.max_entries:
            self._held.clear()
        self._held[key] = rendered
        return rendered

    async def render_once(self, key: Hashable, render: Callable[[], Awaitable[Rendered]]
                          ) -> Rendered:
        """Render ``key``'s answer; requests that miss while it renders wait for that one
        (a burst of 100 clients must not ask bigdata 100 times for one timetable)."""
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Rendered] = asyncio.get_running_loop().create_future()
        # Retrieved even when nobody waited, so a failure is not reported as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending[key] = future
        try:
            rendered = self.keep(key, await render())
        except asyncio.CancelledError:
            future.cancel()  # only at shutdown: aiohttp does not cancel handlers otherwise
            raise
        except Exception as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(rendered)
            return rendered
        finally:
            del self._pending[key]


ANSWER_CACHE = web.AppKey("answer_cache", AnswerCache)


def render_answer(answers: Answers, answer: Answer, stamps: tuple[datetime | None, ...],
                  content_type: str | None = None) -> Rendered:
    """An answer as JSON with ``generated_at`` first; its tag leaves ``generated_at`` out, so
    an unchanged answer keeps its tag. With ``content_type``, the 200's headers too."""
    body, changed = answer
    payload = dumps(body)
    tag = etag_of(payload)
    now = answers.p.clock.now()
    stamp = b'{"generated_at":' + dumps(now)
    payload = stamp + b"}" if payload == b"{}" else stamp + b"," + payload[1:]
    last_modified = changed or now
    modified = http_date(last_modified)
    headers = None if content_type is None else CIMultiDict({
        "ETag": tag, "Cache-Control": "no-cache", "Last-Modified": modified,
        "Content-Type": content_type})
    return Rendered(stamps=stamps, at=answers.p.clock.monotonic(), payload=payload, etag=tag,
                    last_modified=last_modified, last_modified_http=modified, headers=headers)


async def respond_cached(request: web.Request, key: Hashable, topics: tuple[str, ...],
                         compute: Callable[[], Awaitable[Answer]], *,
                         content_type: str = "application/json",
                         compress: bool = False) -> web.Response:
    """Like :func:`respond`, rendering the answer only when ``topics`` changed (see
    :class:`AnswerCache`); an answer that raises is not cached."""
    answers = request.app[ANSWERS]
    cache = request.app[ANSWER_CACHE]
    p = answers.p
    stamps = tuple(map(p.changed.get, topics))
    rendered = cache.find(key, stamps, p.clock.monotonic())
    if rendered is None:

        async def render() -> Rendered:
            return render_answer(answers, await compute(), stamps, content_type)

        rendered = await cache.render_once(key, render)
    if not_modified(request, rendered.etag):
        return web.Response(status=304, headers={
            "ETag": rendered.etag, "Cache-Control": "no-cache",
            "Last-Modified": rendered.last_modified_http})
    response = web.Response(body=rendered.payload, headers=rendered.headers)
    if compress:
        response.enable_compression()
    return response


def with_etag(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Give every other GET 200 with a body in memory an ETag, and honour If-None-Match (the
    service middleware's ``finish``)."""
    if (response.status == 200 and request.method in ("GET", "HEAD")
            and isinstance(response, web.Response) and "ETag" not in response.headers
            and isinstance(response.body, bytes)):
        tag = etag_of(response.body)
        response.headers["ETag"] = tag
        response.headers.setdefault("Cache-Control", "no-cache")
        if not_modified(request, tag):
            return web.Response(status=304, headers={k: v for k, v in response.headers.items()
                                                     if k in ("ETag", "Cache-Control",
                                                              "Last-Modified")})
    return response


# -- parameters ---------------------------------------------------------------------------------


def coords_of(query: Mapping[str, str]) -> Coords:
    """``coord=wgs84|gcj02`` (default wgs84)."""
    coords = _COORDS.get(query.get("coord", "wgs84").lower())
    if coords is None:
        raise BadRequest("coord must be wgs84 or gcj02")
    return coords


def flag(query: Mapping[str, str], name: str) -> bool | None:
    """A boolean parameter: true/false (1/0); None when absent."""
    raw = query.get(name)
    if raw is None:
        return None
    value = raw.lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise BadRequest(f"{name} must be true or false")


def number(query: Mapping[str, str], name: str, lo: float, hi: float, default: float) -> float:
    """A number within [lo, hi]."""
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}")
    return value


def count(query: Mapping[str, str], name: str, default: int, most: int = MAX_LIMIT) -> int:
    """An integer from 1 to ``most``."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise BadRequest(f"{name} must be an integer from 1 to {most}")
    return int(raw)


def text(query: Mapping[str, str], name: str) -> str | None:
    """A search text: stripped, at most 100 characters; None when absent."""
    raw = query.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        raise BadRequest(f"{name} must not be empty")
    if len(value) > MAX_QUERY_CHARS:
        raise BadRequest(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return value


def point(query: Mapping[str, str], name: str, coords: Coords, *, required: bool = True
          ) -> tuple[float, float] | None:
    """``LON,LAT`` in the request's system, as WGS-84."""
    if not required and query.get(name) is None:
        return None
    return coords.inbound(parse_point(query.get(name), name))


def _answers(request: web.Request) -> Answers:
    return request.app[ANSWERS]


# -- handlers -----------------------------------------------------------------------------------


async def list_roads(request: web.Request) -> web.Response:
    """``GET /api/v1/roads``."""
    q = request.query
    coords = coords_of(q)
    answer = _answers(request).roads(
        bbox=coords.inbound_bbox(parse_bbox(q.get("bbox"))), q=text(q, "q"),
        bridge=flag(q, "bridge"), tunnel=flag(q, "tunnel"),
        min_level=parse_min_level(q.get("min_level")), coords=coords)
    return respond(request, answer, content_type="application/geo+json", compress=True)


async def get_road(request: web.Request) -> web.Response:
    """``GET /api/v1/roads/{segment_id}``."""
    segment_id, coords = request.match_info["segment_id"], coords_of(request.query)
    return await respond_cached(
        request, ("road", segment_id, coords.system), ("roads", "catalogue"),
        lambda: _answers(request).road(segment_id, coords), content_type="application/geo+json")


async def list_warnings(request: web.Request) -> web.Response:
    """``GET /api/v1/warnings``."""
    q = request.query
    return respond(request, _answers(request).warnings(q.get("status", "active"), coords_of(q)))


async def list_incidents(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents``."""
    q = request.query
    return respond(request, _answers(request).incidents(q.get("status", "active"),
                                                        coords_of(q)))


async def get_index(request: web.Request) -> web.Response:
    """``GET /api/v1/index``."""
    return respond(request, _answers(request).index())


async def get_region(request: web.Request) -> web.Response:
    """``GET /api/v1/region``."""
    answers = _answers(request)
    region = answers.catalogue().region
    if region is None:
        raise TransientError("the region is not known yet", code="catalogue_loading")
    return respond(request, ({"name": region.name, "name_en": region.name_en,
                              "bbox": list(region.bbox),
                              "segment_count": region.segment_count},
                             answers.p.changed.get("catalogue")))


async def list_levels(request: web.Request) -> web.Response:
    """``GET /api/v1/levels``."""
    return cached_response(request, dumps({"levels": describe_levels()}),
                           content_type="application/json", last_modified=None)


async def list_routes(request: web.Request) -> web.Response:
    """``GET /api/v1/routes``."""
    return respond(request, _answers(request).routes())


async def list_route_vehicles(request: web.Request) -> web.Response:
    """``GET /api/v1/routes/{route_id}/vehicles``."""
    return respond(request, _answers(request).route_vehicles(
        request.match_info["route_id"], coords_of(request.query)))


async def list_vehicles(request: web.Request) -> web.Response:
    """``GET /api/v1/vehicles``."""
    q = request.query
    coords = coords_of(q)
    return respond(request, _answers(request).vehicles(
        bbox=coords.inbound_bbox(parse_bbox(q.get("bbox"))), route_id=q.get("route_id"),
        coords=coords))


async def list_stops(request: web.Request) -> web.Response:
    """``GET /api/v1/stops``."""
    q = request.query
    coords = coords_of(q)
    return respond(request, _answers(request).stops(
        q=text(q, "q"), near=point(q, "near", coords, required=False),
        radius_m=number(q, "radius_m", 1, MAX_RADIUS_M, 500.0), limit=count(q, "limit", 20),
        coords=coords))


async def list_arrivals(request: web.Request) -> web.Response:
    """``GET /api/v1/stops/{stop_id}/arrivals``."""
    q = request.query
    stop_id, limit, coords = request.match_info["stop_id"], count(q, "limit", 20), coords_of(q)
    return await respond_cached(
        request, ("arrivals", stop_id, limit, coords.system), ("buses", "places"),
        lambda: _answers(request).arrivals(stop_id, limit=limit, coords=coords))


async def list_parking(request: web.Request) -> web.Response:
    """``GET /api/v1/parking``."""
    q = request.query
    coords = coords_of(q)
    near = point(q, "near", coords)
    assert near is not None
    return respond(request, _answers(request).parking(
        near, radius_m=number(q, "radius_m", 1, MAX_RADIUS_M, 1000.0),
        limit=count(q, "limit", 20), coords=coords))


async def list_places(request: web.Request) -> web.Response:
    """``GET /api/v1/places``."""
    q = request.query
    query = text(q, "q")
    if query is None:
        raise BadRequest("q is required: a name to look for")
    raw_kinds = q.get("kinds")
    kinds = None if not raw_kinds else frozenset(k.strip() for k in raw_kinds.split(",")
                                                 if k.strip())
    return respond(request, _answers(request).search_places(
        query, kinds=kinds or None, limit=count(q, "limit", 20), coords=coords_of(q)))


async def get_directions(request: web.Request) -> web.Response:
    """``GET /api/v1/directions`` (and its older name ``/api/v1/route``)."""
    q = request.query
    coords = coords_of(q)
    origin, destination = point(q, "from", coords), point(q, "to", coords)
    assert origin is not None and destination is not None
    answer = await _answers(request).directions(
        origin, destination, alternatives=parse_alternatives(q.get("alternatives")),
        coords=coords)
    return respond(request, answer)


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/stream?bbox=|stop=|route=``: Server-Sent Events of changes."""
    q = request.query
    coords = coords_of(q)
    chosen = [k for k in ("bbox", "stop", "route") if q.get(k)]
    if len(chosen) != 1:
        raise BadRequest("follow exactly one of bbox=, stop= or route=")
    answers = _answers(request)
    follower = Follower()
    if chosen[0] == "bbox":
        follower.bbox = coords.inbound_bbox(parse_bbox(q["bbox"]))
    elif chosen[0] == "stop":
        places = answers.places()
        if q["stop"] not in places.stop_by_id:
            raise BadRequest(f"no stop {q['stop']!r}", code="not_found")
        follower.stop_ids = frozenset(places.stop_ids_for(q["stop"]))
    else:
        places = answers.places()
        if q["route"] not in places.route_by_id:
            raise BadRequest(f"no bus route {q['route']!r}", code="not_found")
        follower.route_id = q["route"]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    hub = answers.p.hub
    hub.follow(follower)
    try:
        await response.write(b"retry: 3000\nevent: hello\ndata: "
                             + dumps({"following": chosen[0],
                                      "at": answers.p.clock.now()}) + b"\n\n")
        while True:
            try:
                change = await asyncio.wait_for(follower.queue.get(), STREAM_HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if change.kind in ("overflow", "closing"):
                await response.write(b"event: " + change.kind.encode() + b"\ndata: {}\n\n")
                break
            data = coords.item(dict(change.data)) if coords.gcj02 else change.data
            await response.write(b"event: " + change.kind.encode() + b"\ndata: "
                                 + dumps(data) + b"\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.leave(follower)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


def add_api_routes(app: web.Application, answers: Answers) -> None:
    """Register the ``/api/v1`` endpoints (reports are registered by their own module)."""
    app[ANSWERS] = answers
    app[ANSWER_CACHE] = AnswerCache()

    async def close_answers(app: web.Application) -> None:
        await answers.close()

    # First of the cleanups (cleanup_ctx unwinds in one of them): the refreshes end before
    # bigdata's session closes.
    app.on_cleanup.insert(0, close_answers)

    async def end_streams(app: web.Application) -> None:
        answers.p.hub.close_all()

    app.on_shutdown.append(end_streams)
    r = app.router
    r.add_get("/api/v1/roads", list_roads)
    r.add_get("/api/v1/roads/{segment_id}", get_road)
    r.add_get("/api/v1/warnings", list_warnings)
    r.add_get("/api/v1/incidents", list_incidents)
    r.add_get("/api/v1/index", get_index)
    r.add_get("/api/v1/region", get_region)
    r.add_get("/api/v1/levels", list_levels)
    r.add_get("/api/v1/routes", list_routes)
    r.add_get("/api/v1/routes/{route_id}/vehicles", list_route_vehicles)
    r.add_get("/api/v1/vehicles", list_vehicles)
    r.add_get("/api/v1/stops", list_stops)
    r.add_get("/api/v1/stops/{stop_id}/arrivals", list_arrivals)
    r.add_get("/api/v1/parking", list_parking)
    r.add_get("/api/v1/places", list_places)
    r.add_get("/api/v1/directions", get_directions)
    r.add_get("/api/v1/route", get_directions)
    r.add_get("/api/v1/stream", stream)


def json_body(data: Any, status: int = 200) -> web.Response:
    """A JSON response (for the non-cached answers: POSTs, errors)."""
    return web.Response(body=dumps(data), status=status, content_type="application/json")
