"""The departments' API under ``/v1/dept/``: sign-in, warnings and alarms, actions, audit, stream.

Credentials: ``Authorization: Bearer TOKEN`` (API clients), or the console's session cookie
``tti_session`` (HttpOnly, SameSite=Strict) got by ``POST /v1/dept/session`` with the token once;
a write with the cookie must echo the session's CSRF token in ``X-CSRF-Token``. No or bad
credentials: 401; a role that may not see or act on a warning: 403 (``roles.py``). Sign-in
attempts are rate-limited per address (429). Every action, refusals included, is audited with the
user, role, time and address. Times are UTC.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge

from services.warning.engine import WarningEngine, warning_json
from services.warning.service import WarningService
from services.warning.workflow import roles
from services.warning.workflow.actions import apply_action, raised_warning
from services.warning.workflow.store import Session, User, WorkflowStore
from shared.bus import EventBus
from shared.clock import Clock
from shared.codec import dumps
from shared.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    TransientError,
    TtiError,
    Unauthorized,
)
from shared.events import WARNING_ACTION, Warning, WarningAction, WarningKind

log = logging.getLogger("tti.warning.dept")

COOKIE = "tti_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY = 16 * 1024
ACTION_TIMEOUT_S = 10.0
MAX_STREAMS = 200
STREAM_POLL_S = 1.0
STREAM_HEARTBEAT_S = 15.0

SIGN_INS = Counter("tti_warning_dept_sign_ins_total", "Department sign-in attempts, by outcome",
                   ["outcome"])
ACTIONS = Counter("tti_warning_dept_actions_total", "Department actions, by action and outcome",
                  ["action", "outcome"])
STREAMS = Gauge("tti_warning_dept_streams", "Open department event streams")


class TooManyAttempts(TtiError):
    """Too many sign-in attempts from one address (HTTP 429)."""

    code = "too_many_attempts"
    http_status = 429


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, and how they proved it."""

    user: User
    session: Session | None = None

    @property
    def role(self) -> str:
        return self.user.role


class AttemptLimiter:
    """A token bucket per address: ``rate`` attempts per minute, ``burst`` at once."""

    def __init__(self, clock: Clock, *, per_minute: float = 5.0, burst: float = 5.0,
                 addresses: int = 10_000) -> None:
        self.clock = clock
        self.rate = per_minute / 60.0
        self.burst = burst
        self.addresses = addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, address: str) -> bool:
        """Whether one more attempt from ``address`` is allowed now."""
        now = self.clock.monotonic()
        tokens, at = self._buckets.pop(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[address] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.addresses:
            self._buckets.popitem(last=False)
        return ok


@dataclass
class DeptContext:
    """What the handlers need (one per app)."""

    store: WorkflowStore
    engine: WarningEngine
    service: WarningService
    bus: EventBus
    clock: Clock
    limiter: AttemptLimiter
    streams: int = 0
    after_action: list[Callable[[Warning, WarningAction], Awaitable[None]]] = field(
        default_factory=list)
    """Run after an action was applied (with the warning as it became), e.g. the 0x8203
    confirmation of an acknowledged SOS."""


DEPT = web.AppKey("warning_dept", DeptContext)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data), status=status, content_type="application/json")


def _address(request: web.Request) -> str:
    return request.remote or "unknown"


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes", code="too_large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY} bytes", code="too_large")
    if not raw.strip():
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


async def authenticate(request: web.Request, *, write: bool = False) -> Principal:
    """The principal behind a request: 401 without valid credentials, 403 on a bad CSRF token."""
    ctx = request.app[DEPT]
    auth = request.headers.get("Authorization", "")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("use Authorization: Bearer TOKEN")
        user = await ctx.store.user_for_token(token.strip())
        if user is None:
            raise Unauthorized("the token is not valid (unknown or revoked)")
        return Principal(user)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        session = await ctx.store.session(cookie, ctx.clock.now())
        if session is None:
            raise Unauthorized("the session has ended; sign in again", code="session_ended")
        if write and not secrets.compare_digest(request.headers.get(CSRF_HEADER, ""),
                                                session.csrf):
            raise Forbidden(f"a write from the console needs the {CSRF_HEADER} header",
                            code="csrf")
        return Principal(session.user, session)
    raise Unauthorized("credentials required: Authorization: Bearer TOKEN, or sign in")


async def _audit(ctx: DeptContext, p: Principal | None, request: web.Request, action: str,
                 warning_id: str | None, outcome: str, details: dict[str, Any] | None = None
                 ) -> None:
    await ctx.store.audit(at=ctx.clock.now(), user=p.user.name if p else "-",
                          role=p.role if p else "-", action=action, warning_id=warning_id,
                          address=_address(request), outcome=outcome, details=details)


# --- sessions ----------------------------------------------------------------------------


async def _sign_in(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    if not ctx.limiter.take(_address(request)):
        SIGN_INS.labels("limited").inc()
        raise TooManyAttempts("too many sign-in attempts from this address; wait a minute")
    body = await _body(request)
    token = body.get("token")
    user = await ctx.store.user_for_token(token) if isinstance(token, str) and token else None
    if user is None:
        SIGN_INS.labels("refused").inc()
        await ctx.store.audit(at=ctx.clock.now(), user="-", role="-", action="sign_in",
                              warning_id=None, address=_address(request), outcome="refused")
        raise Unauthorized("the token is not valid (unknown or revoked)")
    cookie, session = await ctx.store.new_session(user, ctx.clock.now())
    SIGN_INS.labels("ok").inc()
    p = Principal(user, session)
    await _audit(ctx, p, request, "sign_in", None, "ok")
    resp = _json({"user": user.name, "role": user.role, "csrf": session.csrf,
                  "expires_at": session.expires_at})
    resp.set_cookie(COOKIE, cookie, httponly=True, samesite="Strict", secure=request.secure,
                    path="/", max_age=int((session.expires_at - ctx.clock.now())
                                          .total_seconds()))
    return resp


async def _sign_out(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    p = await authenticate(request, write=True)
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await ctx.store.end_session(cookie)
    await _audit(ctx, p, request, "sign_out", None, "ok")
    resp = _json({"signed_out": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def _me(request: web.Request) -> web.Response:
    p = await authenticate(request)
    return _json({"user": p.user.name, "role": p.role,
                  "csrf": p.session.csrf if p.session else None,
                  "sees": sorted(k.value for k in roles.VISIBLE[p.role]),
                  "raises": sorted(k.value for k in roles.RAISES[p.role])})


# --- warnings ----------------------------------------------------------------------------


def _visible(p: Principal, w: Warning) -> bool:
    return roles.sees(p.role, w.kind)


async def _list(request: web.Request, *, kinds: frozenset[WarningKind] | None = None
                ) -> web.Response:
    p = await authenticate(request)
    status = request.query.get("status", "active")
    if status not in ("active", "ended", "all"):
        raise BadRequest("status must be one of active, ended, all")
    kind = request.query.get("kind")
    if kind is not None and kind not in {k.value for k in WarningKind}:
        raise BadRequest("kind must be one of " + ", ".join(k.value for k in WarningKind))
    items = [w for w in request.app[DEPT].engine.list_warnings(status)
             if _visible(p, w) and (kind is None or w.kind == kind)
             and (kinds is None or w.kind in kinds)]
    return _json({"warnings": [warning_json(w) for w in items], "count": len(items)})


async def _list_warnings(request: web.Request) -> web.Response:
    return await _list(request)


async def _list_alarms(request: web.Request) -> web.Response:
    p = await authenticate(request)
    if not roles.sees(p.role, WarningKind.VEHICLE_ALARM):
        raise Forbidden(f"role {p.role} does not see vehicle alarms")
    return await _list(request, kinds=frozenset({WarningKind.VEHICLE_ALARM}))


def _find(ctx: DeptContext, warning_id: str) -> Warning:
    w = ctx.engine.find_warning(warning_id) or ctx.engine.silenced.get(warning_id)
    if w is None:
        raise NotFound(f"no warning {warning_id!r}")
    return w


async def _submit(ctx: DeptContext, a: WarningAction) -> Warning:
    """Put the action on the bus and wait until this replica's engine has applied it."""
    fut = ctx.engine.expect_action(a.action_id)
    try:
        await ctx.bus.publish(WARNING_ACTION, a, event_id=a.action_id)
        return await asyncio.wait_for(fut, ACTION_TIMEOUT_S)
    except TimeoutError:
        raise TransientError("the action was sent but not applied yet; look at the warning "
                             "shortly", code="action_pending") from None
    finally:
        ctx.engine.forget_action(a.action_id)


async def _act(request: web.Request, action: str) -> web.Response:
    ctx = request.app[DEPT]
    p = await authenticate(request, write=True)
    wid = request.match_info["warning_id"]
    body = await _body(request)
    note = body.get("note", "")
    assignee = body.get("assignee")
    if not isinstance(note, str) or (assignee is not None and not isinstance(assignee, str)):
        raise BadRequest("note and assignee must be strings")
    try:
        w = _find(ctx, wid)
        if not _visible(p, w):
            raise Forbidden(f"role {p.role} does not act on {w.kind.value} warnings")
        a = WarningAction(action_id=uuid.uuid4().hex, action=action, warning_id=wid,
                          user=p.user.name, role=p.role, at=ctx.clock.now(), note=note,
                          assignee=assignee, address=_address(request))
        apply_action(w, a)  # refuse what the state refuses before it goes on the bus
        result = await _submit(ctx, a)
    except TtiError as exc:
        ACTIONS.labels(action, exc.code).inc()
        await _audit(ctx, p, request, action, wid, exc.code, {"message": exc.message})
        raise
    ACTIONS.labels(action, "ok").inc()
    await _audit(ctx, p, request, action, wid, "ok",
                 {"note": note, "assignee": assignee, "version": result.version,
                  "status": result.status.value})
    for after in ctx.after_action:
        await after(result, a)
    return _json(warning_json(result))


async def _raise(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    p = await authenticate(request, write=True)
    body = await _body(request)
    note = body.pop("note", "")
    if not isinstance(note, str):
        raise BadRequest("note must be a string")
    a = WarningAction(action_id=uuid.uuid4().hex, action="raise", warning_id="",
                      user=p.user.name, role=p.role, at=ctx.clock.now(), note=note,
                      address=_address(request), details=body)
    try:
        w = raised_warning(a, ctx.engine.network)  # facts checked before the bus
        if not roles.may_raise(p.role, w.kind):
            raise Forbidden(f"role {p.role} may not raise {w.kind.value} warnings")
        a = WarningAction(action_id=a.action_id, action="raise", warning_id=w.warning_id,
                          user=a.user, role=a.role, at=a.at, note=a.note, address=a.address,
                          details=a.details)
        result = await _submit(ctx, a)
    except TtiError as exc:
        ACTIONS.labels("raise", exc.code).inc()
        await _audit(ctx, p, request, "raise", a.warning_id or None, exc.code,
                     {"message": exc.message})
        raise
    ACTIONS.labels("raise", "ok").inc()
    await _audit(ctx, p, request, "raise", result.warning_id, "ok",
                 {"kind": result.kind.value, "headline": result.headline})
    return _json(warning_json(result), status=201)


async def _audit_trail(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    p = await authenticate(request)
    wid = request.match_info["warning_id"]
    w = ctx.engine.find_warning(wid) or ctx.engine.silenced.get(wid) or \
        await ctx.store.find_warning(wid)
    if w is None:
        raise NotFound(f"no warning {wid!r}")
    if not _visible(p, w):
        raise Forbidden(f"role {p.role} does not see {w.kind.value} warnings")
    entries = await ctx.store.audit_of(wid)
    history = await ctx.store.history(wid)
    return _json({
        "warning_id": wid,
        "audit": [{"seq": e.seq, "at": e.at, "user": e.user, "role": e.role,
                   "action": e.action, "address": e.address, "outcome": e.outcome,
                   "details": e.details} for e in entries],
        "messages": [{"seq": h.seq, "version": h.warning.version,
                      "status": h.warning.status.value, "msg_type": h.warning.msg_type.value,
                      "updated_at": h.warning.updated_at} for h in history],
    })


# --- the live stream ---------------------------------------------------------------------


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("Last-Event-ID must be a message number")
    return int(raw)


async def _stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[DEPT]
    p = await authenticate(request)
    if ctx.streams >= MAX_STREAMS:
        raise TransientError("too many open streams on this replica; retry shortly",
                             code="too_many_streams")
    kinds = frozenset(k.value for k in roles.VISIBLE[p.role])
    last = _last_event_id(request)
    seq = await ctx.store.last_seq() if last is None else last
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    ctx.streams += 1
    STREAMS.set(ctx.streams)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    try:
        await resp.write(b"retry: 3000\n\n")
        while True:
            entries = await ctx.store.log_after(seq, kinds=None)
            for e in entries:
                seq = e.seq
                if e.warning.kind.value not in kinds:
                    continue
                data = dumps(warning_json(e.warning)).decode()
                await resp.write(f"id: {e.seq}\nevent: warning\ndata: {data}\n\n".encode())
                quiet_since = loop.time()
            if len(entries) < 500:
                if loop.time() - quiet_since >= STREAM_HEARTBEAT_S:
                    await resp.write(f": keep-alive {seq}\n\n".encode())
                    quiet_since = loop.time()
                await asyncio.sleep(STREAM_POLL_S)
    except ConnectionResetError:
        pass  # the console went away; it resumes with Last-Event-ID
    finally:
        ctx.streams -= 1
        STREAMS.set(ctx.streams)
    return resp


def add_dept_routes(app: web.Application, ctx: DeptContext) -> None:
    """Register ``/v1/dept/…``."""
    app[DEPT] = ctx
    r = app.router
    r.add_post("/v1/dept/session", _sign_in)
    r.add_delete("/v1/dept/session", _sign_out)
    r.add_get("/v1/dept/me", _me)
    r.add_get("/v1/dept/warnings", _list_warnings)
    r.add_post("/v1/dept/warnings", _raise)
    r.add_get("/v1/dept/alarms", _list_alarms)
    r.add_get("/v1/dept/stream", _stream)
    r.add_get("/v1/dept/warnings/{warning_id}/audit", _audit_trail)
    for action, path in (("ack", "ack"), ("assign", "assign"), ("note", "notes"),
                         ("close", "close"), ("cancel", "cancel")):
        async def handler(request: web.Request, action: str = action) -> web.Response:
            return await _act(request, action)
        r.add_post(f"/v1/dept/warnings/{{warning_id}}/{path}", handler)
