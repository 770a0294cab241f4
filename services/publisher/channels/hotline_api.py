"""The hotline desk API for the 12328 (transport service supervision) and 12122 (police
expressway) lines: spoken answers, tickets, and tickets' status.

- ``GET /api/v1/hotline/answer?q=…[&line=12328|12122][&near=LON,LAT]``: the resolver's answer
  (:mod:`~services.publisher.channels.query`) in one to three sentences for text-to-speech
  and for the agent (:mod:`~services.publisher.channels.hotline`).
- ``POST /api/v1/hotline/tickets``: a caller's enquiry, complaint, report, suggestion or plea
  for help becomes a :class:`~shared.events.CitizenReport` on ``tti.citizen.report`` (channel
  ``hotline_12328``/``hotline_12122``), numbered as the app's reports are; the caller's number
  travels masked only. Idempotent on ``Idempotency-Key`` or the agent's ``reference``.
- ``GET /api/v1/hotline/tickets/{number}``: its status, from its owner, the warning service.

Only department users of role ``hotline`` or ``admin`` may call it (``Authorization: Bearer``
with a token from ``tti users add``), checked against the warning service's ``/v1/dept/me``;
a valid identity is remembered for :attr:`HotlineAuth.ttl_s` (keyed by a digest of the
credential, never the credential). 401 without or with a bad credential, 403 for another role,
429 after too many bad credentials from one address, 503 when the warning service is away.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from services.publisher.answers import Answers
from services.publisher.api import ANSWERS, coords_of, json_body, point, text
from services.publisher.channels.hotline import sentences
from services.publisher.channels.query import resolve
from services.publisher.reports import (
    PayloadTooLarge,
    Submitted,
    read_form,
    report_number,
    report_point,
    report_status,
    status_of,
)
from shared.clients.warning import WarningClient
from shared.clock import Clock
from shared.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    TransientError,
    TtiError,
    Unauthorized,
)
from shared.events import (
    CITIZEN_REPORT,
    CITIZEN_REPORT_KINDS,
    CitizenReport,
    report_id_for,
)

LINES = {"12328": "hotline_12328", "12122": "hotline_12122"}
"""Hotline → the report channel its tickets carry."""
CATEGORIES = {"咨询": "enquiry", "投诉": "complaint", "举报": "report", "建议": "suggestion",
              "求助": "help"}
"""A ticket's category, by its Chinese name → the English one (both accepted)."""
CATEGORY_NAMES = {en: zh for zh, en in CATEGORIES.items()}
EVENT_KINDS = ("congestion", "accident", "road_damage", "closure", "bus", "other")
"""What a 举报 (report) may be about: the road-event kinds of the citizen reports."""
PLACED_KINDS = frozenset({"congestion", "accident", "road_damage", "closure"})
"""Road events a report must say where of."""
ROLES = frozenset({"hotline", "admin"})
MAX_TEXT = 2000

assert set(EVENT_KINDS) <= set(CITIZEN_REPORT_KINDS)
assert {"enquiry", "complaint", "suggestion", "help"} <= set(CITIZEN_REPORT_KINDS)

AUTH = Counter("tti_publisher_hotline_auth_total",
               "Hotline credential checks, by result (ok, cached, unauthorized, forbidden, "
               "limited, unavailable)", ["result"])
ANSWERED = Counter("tti_publisher_hotline_answers_total", "Hotline answers, by kind", ["kind"])
TICKETS = Counter("tti_publisher_hotline_tickets_total", "Hotline tickets, by result",
                  ["result"])


class TooManyAttempts(TtiError):
    """Too many bad credentials from one address (HTTP 429)."""

    code = "too_many_attempts"
    http_status = 429


@dataclass(frozen=True, slots=True)
class Agent:
    """Who is calling the desk API: a department user and their role."""

    user: str
    role: str


class HotlineAuth:
    """Checks a caller's bearer credential with the warning service, remembering valid ones.

    At most ``max_entries`` identities are held, each for ``ttl_s`` (a revoked token keeps
    working that long here). An address that sent ``max_failures`` bad credentials within
    ``window_s`` is refused (429) without asking the warning service, until the window passes.
    """

    def __init__(self, warning: WarningClient, clock: Clock, *, ttl_s: float = 60.0,
                 max_entries: int = 1024, max_failures: int = 20,
                 window_s: float = 60.0) -> None:
        self.warning = warning
        self.clock = clock
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_failures = max_failures
        self.window_s = window_s
        self._known: OrderedDict[bytes, tuple[float, Agent]] = OrderedDict()
        self._failures: dict[str, tuple[float, int]] = {}

    async def agent(self, request: web.Request) -> Agent:
        """The agent behind ``request``, of a role that may use the desk API."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or len(header) > 512:
            AUTH.labels("unauthorized").inc()
            raise Unauthorized("use Authorization: Bearer TOKEN (a hotline user's token)")
        address = request.remote or "unknown"
        mono = self.clock.monotonic()
        key = hashlib.sha256(header.encode()).digest()
        held = self._known.get(key)
        if held is not None and mono < held[0]:
            AUTH.labels("cached").inc()
            return self._allowed(held[1])
        self._known.pop(key, None)
        failed = self._failures.get(address)
        if failed is not None and mono - failed[0] < self.window_s and \
                failed[1] >= self.max_failures:
            AUTH.labels("limited").inc()
            raise TooManyAttempts("too many bad credentials from this address; wait a minute")
        try:
            me = await self.warning.whoami(header)
        except (BadRequest, NotFound) as exc:
            if isinstance(exc, NotFound):  # no /v1/dept/me: a misconfigured warning URL
                AUTH.labels("unavailable").inc()
                raise TransientError("the warning service cannot check credentials",
                                     code="warning_unavailable") from None
            self._fail(address, mono)
            AUTH.labels("unauthorized").inc()
            raise Unauthorized("the token is not valid (unknown or revoked)") from None
        except TransientError:
            AUTH.labels("unavailable").inc()
            raise TransientError("the warning service, which checks credentials, cannot be "
                                 "reached; retry shortly", code="warning_unavailable") from None
        user, role = me.get("user"), me.get("role")
        if not isinstance(user, str) or not isinstance(role, str):
            AUTH.labels("unavailable").inc()
            raise TransientError("the warning service answered without a user and role",
                                 code="warning_unavailable")
        agent = Agent(user, role)
        self._known[key] = (mono + self.ttl_s, agent)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)
        AUTH.labels("ok").inc()
        return self._allowed(agent)

    def _allowed(self, agent: Agent) -> Agent:
        if agent.role not in ROLES:
            AUTH.labels("forbidden").inc()
            raise Forbidden(f"role {agent.role!r} may not use the hotline desk API "
                            "(hotline or admin)")
        return agent

    def _fail(self, address: str, mono: float) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        since, n = self._failures.get(address, (mono, 0))
        self._failures[address] = (since, n + 1) if mono - since < self.window_s else (mono, 1)


HOTLINE_AUTH = web.AppKey("hotline_auth", HotlineAuth)


# -- parameters --------------------------------------------------------------------------------


def parse_line(raw: object, *, required: bool) -> str | None:
    """``12328`` or ``12122``; :class:`BadRequest` otherwise (None when optional and absent)."""
    if raw is None or raw == "":
        if required:
            raise BadRequest("line is required: 12328 or 12122", code="bad_field")
        return None
    value = str(raw).strip()
    if value not in LINES:
        raise BadRequest("line must be 12328 or 12122", code="bad_field")
    return value


def parse_category(raw: object) -> str:
    """The English category of 咨询/投诉/举报/建议/求助 or enquiry/complaint/report/…"""
    value = str(raw).strip().lower() if isinstance(raw, str) else ""
    category = CATEGORIES.get(value, value)
    if category not in CATEGORY_NAMES:
        raise BadRequest("category must be one of 咨询 enquiry, 投诉 complaint, 举报 report, "
                         "建议 suggestion, 求助 help", code="bad_field")
    return category


_PHONE = re.compile(r"^\+?[0-9][0-9 -]{3,22}$")


def mask_phone(raw: object) -> str | None:
    """A caller's number as kept: ``138****5678`` (a landline ``87****21``); None if absent."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _PHONE.match(raw.strip()):
        raise BadRequest("caller must be a phone number (digits, spaces, dashes, a leading +)",
                         code="bad_field")
    digits = re.sub(r"\D", "", raw)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    if not 5 <= len(digits) <= 15:
        raise BadRequest("caller must have 5 to 15 digits", code="bad_field")
    if len(digits) >= 11:
        return digits[:3] + "****" + digits[-4:]
    return digits[:2] + "****" + digits[-2:]


def _field(fields: dict[str, Any], name: str, most: int) -> str | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadRequest(f"{name} must be text", code="bad_field")
    value = raw.strip()
    if len(value) > most:
        raise BadRequest(f"{name} is longer than {most} characters", code="bad_field")
    return value or None


def ticket_id(channel: str, key: str | None) -> str:
    """The report id of a ticket: from the agent's idempotency key or reference (a resend is
    the same ticket), else new (``shared.events.report_id_for``, as the app's reports)."""
    return report_id_for(channel, key)


def build_ticket(fields: dict[str, Any], *, agent: Agent, now: datetime,
                 idempotency_key: str | None, known_segment: bool | None,
                 point_wgs84: tuple[float, float] | None) -> CitizenReport:
    """A hotline ticket as a CitizenReport; :class:`BadRequest` naming the first bad field."""
    line = parse_line(fields.get("line"), required=True)
    assert line is not None
    channel = LINES[line]
    category = parse_category(fields.get("category"))
    raw_kind = _field(fields, "kind", 32)
    if category == "report":
        kind = raw_kind or "other"
        if kind not in EVENT_KINDS:
            raise BadRequest(f"kind of a 举报 must be one of {', '.join(EVENT_KINDS)}",
                             code="bad_field")
    elif raw_kind is not None and raw_kind != category:
        raise BadRequest("kind is only for a 举报 (report) of a road event", code="bad_field")
    else:
        kind = category
    body = _field(fields, "text", MAX_TEXT)
    if body is None:
        raise BadRequest("text is required: what the caller said", code="bad_field")
    segment_id = _field(fields, "segment_id", 200)
    if segment_id is not None and known_segment is False:
        raise BadRequest(f"unknown road segment {segment_id!r}", code="bad_field")
    if kind in PLACED_KINDS and point_wgs84 is None and segment_id is None:
        raise BadRequest("a report of a road event says where: lon and lat, or segment_id",
                         code="bad_field")
    reference = _field(fields, "reference", 64)
    key = idempotency_key or reference
    return CitizenReport(
        report_id=ticket_id(channel, key), channel=channel, kind=kind, reported_at=now,
        text=body, lon=None if point_wgs84 is None else point_wgs84[0],
        lat=None if point_wgs84 is None else point_wgs84[1], segment_id=segment_id,
        contact=mask_phone(fields.get("caller")),
        details={"category": category, "category_name": CATEGORY_NAMES[category],
                 "line": line, "reference": reference, "agent": agent.user})


def ticket_json(item: Submitted) -> dict[str, Any]:
    """A ticket as the desk sees it: its public status plus what the agent entered."""
    details = item.report.details
    return {**report_status(item), "line": details.get("line"),
            "category": details.get("category"), "category_name": details.get("category_name"),
            "reference": details.get("reference"), "caller": item.report.contact}


# -- handlers -----------------------------------------------------------------------------------


def _answers(request: web.Request) -> Answers:
    return request.app[ANSWERS]


async def get_answer(request: web.Request) -> web.Response:
    """``GET /api/v1/hotline/answer``: the spoken answer to ``q``."""
    await request.app[HOTLINE_AUTH].agent(request)
    q = request.query
    query = text(q, "q")
    if query is None:
        raise BadRequest("q is required: a road, bridge, stop or route name")
    line = parse_line(q.get("line"), required=False)
    near = point(q, "near", coords_of(q), required=False)
    answers = _answers(request)
    answer = await resolve(answers, query, near=near)
    said = sentences(answer)
    ANSWERED.labels(answer.kind).inc()
    return json_body({"generated_at": answers.p.clock.now(), "q": query, "line": line,
                      "kind": answer.kind, "sentences": said, "text": "".join(said)})


async def post_ticket(request: web.Request) -> web.Response:
    """``POST /api/v1/hotline/tickets``: check, publish ``tti.citizen.report``; 201 + number."""
    agent = await request.app[HOTLINE_AUTH].agent(request)
    publisher = _answers(request).p
    try:
        fields, photo = await read_form(request)
        if photo:
            raise BadRequest("a hotline ticket has no photo", code="bad_field")
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= 100 and key.isprintable()):
            raise BadRequest("Idempotency-Key must be 1-100 printable characters",
                             code="bad_field")
        coords = coords_of({"coord": str(fields.get("coord") or "wgs84")})
        where = report_point(fields)
        segment_id = fields.get("segment_id")
        known = (None if not isinstance(segment_id, str) or not segment_id.strip()
                 or publisher.catalogue is None
                 else publisher.catalogue.find(segment_id.strip()) is not None)
        now = publisher.clock.now()
        report = build_ticket(fields, agent=agent, now=now, idempotency_key=key,
                              known_segment=known,
                              point_wgs84=None if where is None else coords.inbound(where))
    except PayloadTooLarge:
        TICKETS.labels("rejected_too_large").inc()
        raise
    except BadRequest as exc:
        TICKETS.labels("rejected_bad_json" if exc.code == "bad_json"
                       else "rejected_bad_field").inc()
        raise
    held = publisher.reports.find_by_id(report.report_id)
    if held is not None:
        TICKETS.labels("resent").inc()
        return json_body(ticket_json(held), status=200)
    item = Submitted(number=report_number(report.report_id, now), report=report, photo=None)
    # On the bus before it is answered: a 201 means the warning service will have it.
    await publisher.bus.publish(CITIZEN_REPORT, report, event_id=f"report:{report.report_id}")
    publisher.reports.add(item)
    TICKETS.labels("accepted").inc()
    response = json_body(ticket_json(item), status=201)
    response.headers["Location"] = f"/api/v1/hotline/tickets/{item.number}"
    return response


async def get_ticket(request: web.Request) -> web.Response:
    """``GET /api/v1/hotline/tickets/{number}``: the ticket's status (the warning service's)."""
    await request.app[HOTLINE_AUTH].agent(request)
    number = request.match_info["number"]
    if len(number) > 40:
        raise NotFound("no such ticket")
    status = await status_of(_answers(request).p, number)
    if status is None:
        raise NotFound(f"no ticket {number!r}")
    return json_body(status)


def add_hotline_routes(app: web.Application, answers: Answers) -> None:
    """Register the hotline desk endpoints (the answers must be registered already)."""
    app[HOTLINE_AUTH] = HotlineAuth(answers.p.warning, answers.p.clock)
    app.router.add_get("/api/v1/hotline/answer", get_answer)
    app.router.add_post("/api/v1/hotline/tickets", post_ticket)
    app.router.add_get("/api/v1/hotline/tickets/{number}", get_ticket)


def openapi_paths() -> dict[str, Any]:
    """The desk API's entries in the publisher's OpenAPI document."""

    def error(text: str) -> dict[str, Any]:
        return {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}

    status = {"$ref": "#/components/schemas/ReportStatus"}
    ticket = {"allOf": [status, {
        "type": "object", "required": ["line", "category", "category_name", "caller"],
        "properties": {
            "line": {"enum": list(LINES)},
            "category": {"enum": list(CATEGORY_NAMES)},
            "category_name": {"enum": list(CATEGORIES)},
            "reference": {"type": ["string", "null"]},
            "caller": {"type": ["string", "null"], "examples": ["138****5678"],
                       "description": "The caller's number, masked (never kept whole)"}}}]}
    auth = {"401": error("No, or a bad, credential (unauthorized)"),
            "403": error("A department user of another role than hotline or admin "
                         "(forbidden)"),
            "429": error("Too many bad credentials from this address (too_many_attempts)"),
            "503": error("The warning service, which checks credentials and owns tickets, "
                         "cannot be reached (warning_unavailable); or the catalogues are "
                         "loading (catalogue_loading)")}
    security: list[dict[str, list[str]]] = [{"bearer": []}]
    line = {"name": "line", "in": "query", "required": False,
            "schema": {"enum": list(LINES)}, "description": "The line asking (12328 or 12122)"}
    return {
        "/api/v1/hotline/answer": {"get": {
            "tags": ["hotline"], "operationId": "getHotlineAnswer", "security": security,
            "summary": "A spoken answer (one to three sentences, Chinese) about a road, bridge, "
                       "tunnel, stop, bus route, car parks or the traffic index",
            "parameters": [
                {"name": "q", "in": "query", "required": True,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 100},
                 "examples": {"bridge": {"value": "江城一桥"},
                              "route": {"value": "1路 解放大道八一路"}}},
                line,
                {"name": "near", "in": "query", "required": False,
                 "description": "The caller's location LON,LAT, when known",
                 "schema": {"type": "string", "examples": ["114.30,30.55"]}},
                {"$ref": "#/components/parameters/coord"}],
            "responses": {"200": {"description": "The answer", "content": {"application/json": {
                "schema": {"type": "object",
                           "required": ["q", "line", "kind", "sentences", "text",
                                        "generated_at"],
                           "properties": {
                               "q": {"type": "string"},
                               "line": {"type": ["string", "null"], "enum": [*LINES, None]},
                               "kind": {"enum": ["stop_arrivals", "route_arrivals",
                                                 "road_status", "parking", "index", "nearby",
                                                 "ambiguous", "not_understood"]},
                               "sentences": {"type": "array", "minItems": 1, "maxItems": 3,
                                             "items": {"type": "string"}},
                               "text": {"type": "string",
                                        "description": "The sentences, one after the other"},
                               "generated_at": {"type": "string", "format": "date-time"}}}}}},
                "400": error("q missing, empty or over 100 characters; a bad line or near"),
                **auth}}},
        "/api/v1/hotline/tickets": {"post": {
            "tags": ["hotline"], "operationId": "postHotlineTicket", "security": security,
            "summary": "A caller's ticket → tti.citizen.report; its number",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 100}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["category", "line", "text"],
                "properties": {
                    "category": {"enum": [*CATEGORIES, *CATEGORY_NAMES]},
                    "line": {"enum": list(LINES)},
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
                    "caller": {"type": "string", "description": "The caller's phone number; "
                               "kept masked only"},
                    "kind": {"enum": list(EVENT_KINDS),
                             "description": "What a 举报 (report) is about"},
                    "lon": {"type": "number"}, "lat": {"type": "number"},
                    "segment_id": {"type": "string"},
                    "reference": {"type": "string", "maxLength": 64,
                                  "description": "The agent's own ticket reference: a resend "
                                                 "is the same ticket"},
                    "coord": {"enum": ["wgs84", "gcj02"]}}}}}},
            "responses": {
                "201": {"description": "Taken; its number", "content": {
                    "application/json": {"schema": ticket}}},
                "200": {"description": "Sent before (same Idempotency-Key or reference)",
                        "content": {"application/json": {"schema": ticket}}},
                "400": error("A missing or bad field (bad_field), not JSON (bad_json)"),
                "413": error("Body over 16 KiB (too_large)"), **auth}}},
        "/api/v1/hotline/tickets/{number}": {"get": {
            "tags": ["hotline"], "operationId": "getHotlineTicket", "security": security,
            "summary": "A ticket's status (its owner's, the warning service's)",
            "parameters": [{"name": "number", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Its status", "content": {
                "application/json": {"schema": status}}},
                "404": error("No such ticket (not_found)"), **auth}}},
    }
