"""Texts to drivers from the departments: ``/v1/dept/vehicles/{vehicle_id}/messages``.

- ``POST`` ``{"text", "flags"?, "warning_id"?}`` → 202 ``{"command_id", "status", ...}``: a
  JT/T 808 0x8300 text built by ``driver_messages.text_command`` (at most 200 characters, GBK;
  flags of ``TEXT_FLAGS``, default display + TTS; else 422 with the reason), logged, audited and
  published as a ``TerminalCommand`` (``requested_by`` the user, ``correlation`` the warning,
  ``expires_at`` after ``TTI_DRIVER_TEXT_TTL_S``). Idempotent: the same ``Idempotency-Key``
  from the same user is the same command (another body with it: 409); without one, the same
  text from the same user to the same vehicle about the same warning is the same command while
  it is pending or delivered and unexpired (a failed or expired one is sent anew).
- ``GET`` → the commands sent to the vehicle (newest first, ``limit`` ≤ 200, default 50), each
  with its latest status and every outcome heard.

Roles (``roles.may_text``): safety, transport and admin text any vehicle; police only about a
warning they see (``warning_id`` required) and read only those commands; hotline neither (403).
A warning that names a vehicle (``details.vehicle_id``) must name this one (422).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from services.warning.api.dept import (
    ACTIONS,
    DEPT,
    DeptContext,
    Principal,
    _audit,
    _body,
    _json,
    authenticate,
)
from services.warning.driver_messages import (
    BadText,
    DriverMessages,
    alarm_confirm_command,
    command_json,
    position_query_command,
    text_command,
)
from services.warning.workflow import roles
from shared.errors import BadRequest, Conflict, Forbidden, NotFound, TtiError
from shared.events import Warning, WarningAction

MESSAGES = web.AppKey("warning_driver_messages", DriverMessages)

_VEHICLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,63}")
_FINAL_FAILURES = frozenset({"failed", "expired", "unsupported"})
MAX_LIMIT = 200


def _vehicle_id(request: web.Request) -> str:
    vid = request.match_info["vehicle_id"]
    if not _VEHICLE_ID.fullmatch(vid):
        raise BadRequest("vehicle_id is 1-64 letters, digits and :._- (a terminal's phone "
                         "number without leading zeros, or <feed>:<id>)", code="bad_vehicle")
    return vid


async def _lookup(ctx: DeptContext, warning_id: str) -> Warning | None:
    return (ctx.engine.find_warning(warning_id) or ctx.engine.silenced.get(warning_id)
            or await ctx.store.find_warning(warning_id))


def _request_key(p: Principal, request: web.Request, vehicle_id: str, text: str,
                 flags: tuple[str, ...], warning_id: str) -> tuple[str, bool]:
    """What makes two requests the same command, and whether the client named it."""
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        if not 1 <= len(key) <= 128 or not key.isprintable():
            raise BadRequest("Idempotency-Key is 1-128 printable characters")
        parts: tuple[str, ...] = ("key", p.user.name, key)
    else:
        parts = ("req", p.user.name, vehicle_id, text, ",".join(flags), warning_id)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32], key is not None


def _check_warning(p: Principal, w: Warning | None, vehicle_id: str) -> None:
    if not roles.may_text(p.role, None if w is None else w.kind):
        if w is None and p.role == "police":
            raise Forbidden("police text a driver only about a warning they see: give "
                            "warning_id")
        raise Forbidden(f"role {p.role} may not text drivers"
                        + ("" if w is None else f" about {w.kind.value} warnings"))
    if w is not None and w.details.get("vehicle_id") not in (None, "", vehicle_id):
        raise BadText(f"warning {w.warning_id} concerns vehicle {w.details['vehicle_id']}, "
                      f"not {vehicle_id}", code="other_vehicle")


async def _send(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    messages = request.app[MESSAGES]
    p = await authenticate(request, write=True)
    vid = _vehicle_id(request)
    body = await _body(request)
    warning_id = body.get("warning_id") or ""
    try:
        if not isinstance(warning_id, str):
            raise BadRequest("warning_id must be a string")
        w = None
        if warning_id:
            w = await _lookup(ctx, warning_id)
            if w is None:
                raise NotFound(f"no warning {warning_id!r}")
        _check_warning(p, w, vid)
        flags = body.get("flags", None)
        now = ctx.clock.now()
        draft = text_command(vid, body.get("text"),  # type: ignore[arg-type]  # checked there
                             correlation=warning_id, requested_by=p.user.name, now=now,
                             **({} if flags is None else {"flags": flags}),
                             ttl_s=messages.ttl_s)
        key, named = _request_key(p, request, vid, draft.text, draft.flags, warning_id)
        earlier = await ctx.store.find_command_for_request(vid, key)
        if earlier is not None and named:
            same = (earlier.command.text, earlier.command.flags, earlier.command.correlation)
            if same != (draft.text, draft.flags, draft.correlation):
                raise Conflict("this Idempotency-Key was used for another message",
                               code="idempotency_key_reused")
        elif earlier is not None and (earlier.status in _FINAL_FAILURES
                                      or earlier.command.expires_at <= now):
            earlier = None  # the same text again after it failed or expired: a new command
        if earlier is not None:
            cmd, duplicate = earlier.command, True
        else:
            cmd = text_command(vid, draft.text, correlation=warning_id,
                               requested_by=p.user.name, now=now, flags=draft.flags,
                               ttl_s=messages.ttl_s,
                               key=key if named else f"{key}@{now.isoformat()}")
            duplicate = False
        await messages.send(cmd, request_key=key)
    except TtiError as exc:
        ACTIONS.labels("driver_text", exc.code).inc()
        await _audit(ctx, p, request, "driver_text", warning_id or None, exc.code,
                     {"message": exc.message, "vehicle_id": vid})
        raise
    ACTIONS.labels("driver_text", "duplicate" if duplicate else "ok").inc()
    await _audit(ctx, p, request, "driver_text", warning_id or None,
                 "duplicate" if duplicate else "ok",
                 {"command_id": cmd.command_id, "vehicle_id": vid, "text": cmd.text,
                  "flags": list(cmd.flags), "expires_at": cmd.expires_at.isoformat()})
    record = await ctx.store.find_command(cmd.command_id)
    out: dict[str, Any] = {"command_id": cmd.command_id, "duplicate": duplicate,
                           "status": record.status if record else "requested",
                           "expires_at": cmd.expires_at}
    if record is not None:
        out["command"] = command_json(record)
    resp = _json(out, status=202)
    resp.headers["Location"] = f"messages?command_id={cmd.command_id}"
    return resp


async def _list(request: web.Request) -> web.Response:
    ctx = request.app[DEPT]
    p = await authenticate(request)
    vid = _vehicle_id(request)
    if p.role not in roles.TEXTS_ANY_VEHICLE and p.role != "police":
        raise Forbidden(f"role {p.role} does not read drivers' messages")
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1-{MAX_LIMIT}")
    records = await ctx.store.commands_of(vid, limit=int(raw))
    wanted = request.query.get("command_id")
    if wanted:
        records = [r for r in records if r.command.command_id == wanted]
    if p.role not in roles.TEXTS_ANY_VEHICLE:  # police: what concerns their warnings only
        kept = []
        for r in records:
            w = await _lookup(ctx, r.command.correlation) if r.command.correlation else None
            if w is not None and roles.sees(p.role, w.kind):
                kept.append(r)
        records = kept
    return _json({"vehicle_id": vid, "commands": [command_json(r) for r in records],
                  "count": len(records)})


async def _position_query(request: web.Request) -> web.Response:
    """``POST /v1/dept/vehicles/{vehicle_id}/position-query``: a 0x8201 to the terminal; its
    0x0201 answer arrives as the command's ``acknowledged`` outcome with ``position``."""
    ctx = request.app[DEPT]
    messages = request.app[MESSAGES]
    p = await authenticate(request, write=True)
    vid = _vehicle_id(request)
    try:
        if p.role not in roles.TEXTS_ANY_VEHICLE:
            raise Forbidden(f"role {p.role} may not query a vehicle's position")
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        if not 1 <= len(key) <= 128 or not key.isprintable():
            raise BadRequest("Idempotency-Key is 1-128 printable characters")
        cmd = position_query_command(vid, requested_by=p.user.name, now=ctx.clock.now(),
                                     key=f"{p.user.name}\x1f{key}", ttl_s=messages.ttl_s)
        added = await messages.send(cmd)
    except TtiError as exc:
        ACTIONS.labels("position_query", exc.code).inc()
        await _audit(ctx, p, request, "terminal_position_query", None, exc.code,
                     {"message": exc.message, "vehicle_id": vid})
        raise
    ACTIONS.labels("position_query", "ok" if added else "duplicate").inc()
    await _audit(ctx, p, request, "terminal_position_query", None,
                 "ok" if added else "duplicate", {"command_id": cmd.command_id,
                                                  "vehicle_id": vid})
    record = await ctx.store.find_command(cmd.command_id)
    resp = _json({"command_id": cmd.command_id, "duplicate": not added,
                  "status": record.status if record else "requested",
                  "expires_at": cmd.expires_at,
                  **({"command": command_json(record)} if record is not None else {})},
                 status=202)
    resp.headers["Location"] = f"messages?command_id={cmd.command_id}"
    return resp


def _confirm_on_ack(messages: DriverMessages) -> Callable[[Warning, WarningAction],
                                                          Awaitable[None]]:
    """After a department acknowledged a terminal's own alarm (an SOS), confirm it to the
    terminal (0x8203), which clears the alarm bit; recorded on the warning like a text."""
    async def after(w: Warning, a: WarningAction) -> None:
        if a.action != "ack":
            return
        cmd = alarm_confirm_command(w, requested_by=a.user, now=a.at, ttl_s=messages.ttl_s)
        if cmd is not None:
            await messages.send(cmd)
    return after


def add_message_routes(app: web.Application, messages: DriverMessages) -> None:
    """Register ``/v1/dept/vehicles/{vehicle_id}/messages`` (POST, GET) and
    ``…/position-query`` (POST); acknowledging a terminal's alarm confirms it (0x8203)."""
    app[MESSAGES] = messages
    app[DEPT].after_action.append(_confirm_on_ack(messages))
    app.router.add_post("/v1/dept/vehicles/{vehicle_id}/messages", _send)
    app.router.add_get("/v1/dept/vehicles/{vehicle_id}/messages", _list)
    app.router.add_post("/v1/dept/vehicles/{vehicle_id}/position-query", _position_query)
