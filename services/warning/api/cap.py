"""Warnings as OASIS CAP 1.2 XML, rendered by the one renderer in ``shared/cap.py``.

``GET /v1/cap/{warning_id}.xml[?version=N]`` (public: traffic warnings) and
``GET /v1/dept/cap/{warning_id}.xml`` (departments: whatever their role sees; vehicle alarms
with a Restricted scope). The latest message by default, or the one of a version from the
warning's log; a department's acknowledgment is an Ack referencing the message it acknowledges.
"""

from __future__ import annotations

from aiohttp import web

from services.warning.api.dept import DEPT, authenticate
from services.warning.workflow import roles
from shared.cap import (
    CAP_CONTENT_TYPE,
    PUBLIC_SENDER,
    PUBLIC_SENDER_NAME,
    PUBLIC_SENDER_NAME_EN,
    CapReference,
    message_reference,
    render_cap,
)
from shared.errors import BadRequest, Forbidden, NotFound
from shared.events import CapMsgType, Warning, WarningKind

RESTRICTED = "仅限交通、公安、安监部门 departments only"


async def _messages(request: web.Request, warning_id: str) -> list[Warning]:
    ctx = request.app[DEPT]
    history = [e.warning for e in await ctx.store.history(warning_id)]
    current = ctx.engine.find_warning(warning_id) or ctx.engine.silenced.get(warning_id)
    if current is not None and (not history or history[-1] != current):
        history.append(current)  # a standby's latest, not logged by it
    if not history:
        raise NotFound(f"no warning {warning_id!r}")
    return history


def _pick(history: list[Warning], raw: str | None) -> tuple[Warning, list[CapReference]]:
    if raw is None:
        chosen = len(history) - 1
    else:
        if not raw.isdigit():
            raise BadRequest("version must be a positive integer")
        matches = [i for i, w in enumerate(history) if w.version == int(raw)]
        if not matches:
            raise NotFound(f"no version {raw} of this warning")
        chosen = matches[0]  # the version's decision; its analysis, if any, follows it
    w = history[chosen]
    refs: list[CapReference] = []
    if w.msg_type in (CapMsgType.ACK, CapMsgType.ERROR) and chosen > 0:
        refs = [message_reference(history[chosen - 1], sender=PUBLIC_SENDER)]
    elif w.msg_type in (CapMsgType.ACK, CapMsgType.ERROR):
        refs = [message_reference(w, sender=PUBLIC_SENDER)]
    return w, refs


def _render(w: Warning, refs: list[CapReference], *, restricted: bool) -> web.Response:
    body = render_cap(w, sender=PUBLIC_SENDER, sender_name=PUBLIC_SENDER_NAME,
                      sender_name_en=PUBLIC_SENDER_NAME_EN, references=refs or None,
                      restriction=RESTRICTED if restricted else None)
    return web.Response(body=body, content_type=CAP_CONTENT_TYPE, charset="utf-8")


def _warning_id(request: web.Request) -> str:
    name = request.match_info["name"]
    if not name.endswith(".xml") or len(name) <= 4:
        raise NotFound("CAP documents are at /v1/cap/{warning_id}.xml")
    return name[:-4]


async def _public_cap(request: web.Request) -> web.Response:
    wid = _warning_id(request)
    history = await _messages(request, wid)
    if history[-1].kind == WarningKind.VEHICLE_ALARM:
        raise NotFound(f"no public warning {wid!r}")
    w, refs = _pick(history, request.query.get("version"))
    return _render(w, refs, restricted=False)


async def _dept_cap(request: web.Request) -> web.Response:
    p = await authenticate(request)
    wid = _warning_id(request)
    history = await _messages(request, wid)
    if not roles.sees(p.role, history[-1].kind):
        raise Forbidden(f"role {p.role} does not see {history[-1].kind.value} warnings")
    w, refs = _pick(history, request.query.get("version"))
    return _render(w, refs, restricted=w.kind == WarningKind.VEHICLE_ALARM)


def add_cap_routes(app: web.Application) -> None:
    """Register the CAP documents (after the departments' routes, whose context they use)."""
    app.router.add_get("/v1/cap/{name}", _public_cap)
    app.router.add_get("/v1/dept/cap/{name}", _dept_cap)
