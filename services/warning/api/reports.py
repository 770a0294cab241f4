"""Citizens' reports and hotline tickets over HTTP: the public status and the departments' desk.

- ``GET /v1/reports/{number}`` (public: whoever holds the number): status (``received``,
  ``reviewing``, ``confirmed``, ``resolved``, ``rejected``) with its Chinese and English names,
  the department's public ``reply``, the warning it led to, and what the report said — never the
  reporter's contact or the departments' notes.
- ``GET /v1/dept/reports?status=a,b&channel=c&limit=N&before=TIME``: newest first (``limit``
  ≤ 200, default 50), each with the contact and details.
- ``GET /v1/dept/reports/{number}``: one report with every status change.
- ``POST /v1/dept/reports/{number}/status`` ``{"status", "reply"?, "note"?, "warning_id"?}``:
  moves it on (forward only, 409 otherwise); ``reply`` is what the citizen reads, ``note`` stays
  inside; the same request again is answered 200 with ``changed: false``.

Roles: police, transport, hotline and admin (safety works on vehicle alarms: 403). Every change,
refusals included, is audited like the departments' other actions.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime

from aiohttp import web

from services.warning.api.dept import ACTIONS, DEPT, _audit, _body, _json, authenticate
from services.warning.workflow.reports import ReportStore
from shared.errors import BadRequest, Forbidden, NotFound, TtiError
from shared.events import CITIZEN_REPORT_CHANNELS, REPORT_STATUSES

REPORTS = web.AppKey("warning_reports", ReportStore)

HANDLES_REPORTS = frozenset({"police", "transport", "hotline", "admin"})
"""Roles that read and handle citizens' reports and hotline tickets."""

NUMBER = re.compile(r"\d{8}-[A-Z2-7]{6}")
MAX_LIMIT = 200


def _number(request: web.Request) -> str:
    number = request.match_info["number"]
    if not NUMBER.fullmatch(number):
        raise NotFound(f"no report {number[:40]!r} (numbers look like 20260303-ABC234)")
    return number


def _set(raw: str | None, allowed: Collection[str], name: str
         ) -> frozenset[str] | None:
    if not raw:
        return None
    values = frozenset(v.strip() for v in raw.split(",") if v.strip())
    unknown = sorted(values - set(allowed))
    if unknown:
        raise BadRequest(f"{name} must be of {', '.join(allowed)}; not {', '.join(unknown)}")
    return values


async def _public(request: web.Request) -> web.Response:
    record = await request.app[REPORTS].find(_number(request))
    if record is None:
        raise NotFound(f"no report {request.match_info['number']!r}")
    return _json(record.public())


async def _list(request: web.Request) -> web.Response:
    p = await authenticate(request)
    if p.role not in HANDLES_REPORTS:
        raise Forbidden(f"role {p.role} does not handle citizens' reports")
    q = request.query
    raw = q.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1-{MAX_LIMIT}")
    before = None
    if q.get("before"):
        try:
            before = datetime.fromisoformat(q["before"].replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("before must be an RFC 3339 time") from None
        if before.tzinfo is None:
            raise BadRequest("before needs a time zone (e.g. Z)")
    records = await request.app[REPORTS].recent(
        statuses=_set(q.get("status"), REPORT_STATUSES, "status"),
        channels=_set(q.get("channel"), CITIZEN_REPORT_CHANNELS, "channel"),
        limit=int(raw), before=before)
    return _json({"reports": [r.full() for r in records], "count": len(records)})


async def _one(request: web.Request) -> web.Response:
    p = await authenticate(request)
    if p.role not in HANDLES_REPORTS:
        raise Forbidden(f"role {p.role} does not handle citizens' reports")
    store = request.app[REPORTS]
    number = _number(request)
    record = await store.find(number)
    if record is None:
        raise NotFound(f"no report {number!r}")
    history = await store.history(number)
    return _json({**record.full(), "history": [
        {"at": h.at, "user": h.user, "role": h.role, "status": h.status, "reply": h.reply,
         "note": h.note, "warning_id": h.warning_id} for h in history]})


def _text(body: dict[str, object], name: str) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code="bad_field")
    return value.strip()


async def _set_status(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    store = request.app[REPORTS]
    p = await authenticate(request, write=True)
    number = _number(request)
    try:
        if p.role not in HANDLES_REPORTS:
            raise Forbidden(f"role {p.role} does not handle citizens' reports")
        body = await _body(request)
        status = body.get("status")
        if not isinstance(status, str):
            raise BadRequest(f"status is required: one of {', '.join(REPORT_STATUSES)}",
                             code="bad_field")
        warning_id = body.get("warning_id")
        if warning_id is not None:
            if not isinstance(warning_id, str) or not warning_id:
                raise BadRequest("warning_id must be a warning's id", code="bad_field")
            if await ctx.store.find_warning(warning_id) is None:
                raise BadRequest(f"no warning {warning_id!r}", code="unknown_warning")
        record, changed = await store.set_status(
            number, status, user=p.user.name, role=p.role, at=ctx.clock.now(),
            reply=_text(body, "reply"), note=_text(body, "note"), warning_id=warning_id)
    except TtiError as exc:
        ACTIONS.labels("report_status", exc.code).inc()
        await _audit(ctx, p, request, "report_status", None, exc.code,
                     {"message": exc.message, "number": number})
        raise
    ACTIONS.labels("report_status", "ok" if changed else "duplicate").inc()
    await _audit(ctx, p, request, "report_status", record.warning_id,
                 "ok" if changed else "duplicate", {"number": number, "status": record.status})
    return _json({**record.full(), "changed": changed})


def add_report_routes(app: web.Application, store: ReportStore) -> None:
    """Register the public report status and the departments' report endpoints."""
    app[REPORTS] = store
    app.router.add_get("/v1/reports/{number}", _public)
    app.router.add_get("/v1/dept/reports", _list)
    app.router.add_get("/v1/dept/reports/{number}", _one)
    app.router.add_post("/v1/dept/reports/{number}/status", _set_status)
