"""What a department action does to a warning: the lifecycle's transitions, as pure functions.

raised/updated → ``ack`` → acknowledged → ``assign`` → assigned → ``close`` → closed (also
from resolved: a department closes what the traffic already ended); ``cancel`` an active one
that should not have been raised; ``note`` at any step. ``raise`` makes a warning by hand (a
closure, an event), with an id derived from the action's id so every replica makes the same.
Refusals are :class:`~shared.errors.Conflict` (409) for the state, BadRequest (400) for facts.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime
from typing import Any

from services.warning.incidents import CATEGORY, area_of
from shared.errors import BadRequest, Conflict
from shared.events import (
    Area,
    CapCertainty,
    CapMsgType,
    CapSeverity,
    CapUrgency,
    Warning,
    WarningAction,
    WarningKind,
    WarningStatus,
)
from shared.roadnet import RoadNetwork

MAX_NOTE_CHARS = 2000
MAX_NOTES = 200

_ACKABLE = frozenset({WarningStatus.RAISED, WarningStatus.UPDATED})
_FINAL = frozenset({WarningStatus.CLOSED, WarningStatus.CANCELLED})


def manual_warning_id(action_id: str) -> str:
    """The id of a warning a department raised by hand."""
    return "dept-" + hashlib.sha1(action_id.encode()).hexdigest()[:20]


def _notes(w: Warning, a: WarningAction, text: str) -> dict[str, object]:
    notes = list(w.details.get("notes", []))  # type: ignore[call-overload]
    if text:
        if len(notes) >= MAX_NOTES:
            raise Conflict(f"warning {w.warning_id} has {MAX_NOTES} notes already")
        notes.append({"user": a.user, "role": a.role, "at": a.at.isoformat(), "text": text})
    return {**w.details, "notes": notes}


def _next(w: Warning, a: WarningAction, **changes: Any) -> Warning:
    return replace(w, version=w.version + 1, updated_at=max(w.updated_at, a.at), **changes)


def apply_action(w: Warning, a: WarningAction) -> Warning:
    """The warning after an ``ack``, ``assign``, ``note``, ``close`` or ``cancel``."""
    text = a.note.strip()
    if len(text) > MAX_NOTE_CHARS:
        raise BadRequest(f"a note is at most {MAX_NOTE_CHARS} characters")
    if a.action == "ack":
        if w.status not in _ACKABLE:
            raise Conflict(f"warning {w.warning_id} is {w.status.value}: only a raised or "
                           "updated warning can be acknowledged")
        return _next(w, a, status=WarningStatus.ACKNOWLEDGED, msg_type=CapMsgType.ACK,
                     details={**_notes(w, a, text), "acknowledged_by": a.user,
                              "acknowledged_at": a.at.isoformat()})
    if a.action == "assign":
        if not w.active:
            raise Conflict(f"warning {w.warning_id} is {w.status.value}: it cannot be assigned")
        if not a.assignee or len(a.assignee) > 64:
            raise BadRequest("assign needs an assignee (a unit or user, at most 64 characters)")
        return _next(w, a, status=WarningStatus.ASSIGNED, msg_type=CapMsgType.UPDATE,
                     details={**_notes(w, a, text), "assigned_to": a.assignee,
                              "assigned_by": a.user, "assigned_at": a.at.isoformat()})
    if a.action == "note":
        if not text:
            raise BadRequest("a note needs text")
        return _next(w, a, details=_notes(w, a, text))
    if a.action == "close":
        if w.status in _FINAL:
            raise Conflict(f"warning {w.warning_id} is {w.status.value} already")
        return _next(w, a, status=WarningStatus.CLOSED, msg_type=CapMsgType.UPDATE,
                     urgency=CapUrgency.PAST, ended_at=w.ended_at or a.at,
                     details={**_notes(w, a, text), "closed_by": a.user,
                              "closed_at": a.at.isoformat()})
    if a.action == "cancel":
        if not w.active:
            raise Conflict(f"warning {w.warning_id} is {w.status.value}: only an active "
                           "warning can be cancelled")
        return _next(w, a, status=WarningStatus.CANCELLED, msg_type=CapMsgType.CANCEL,
                     urgency=CapUrgency.PAST, ended_at=a.at,
                     details={**_notes(w, a, text), "cancelled_by": a.user,
                              "cancelled_at": a.at.isoformat()})
    raise BadRequest(f"unknown action {a.action!r}")


def _text(d: dict[str, Any], key: str, *, required: bool = False, most: int = 500) -> str:
    value = d.get(key) or ""
    if not isinstance(value, str) or len(value) > most or (required and not value.strip()):
        raise BadRequest(f"{key} must be {'a non-empty ' if required else 'a '}string of at "
                         f"most {most} characters")
    return value.strip()


def raised_warning(a: WarningAction, network: RoadNetwork | None) -> Warning:
    """A warning a department raises by hand, from the action's ``details``.

    ``kind`` (closure, incident, weather, vehicle_alarm), ``headline`` (+ ``headline_en``,
    ``description``, ``description_en``), ``segment_ids`` and/or ``lon``, ``lat``
    (+ ``radius_m``), ``severity`` (CAP), ``cause``, ``expected_end`` (ISO time).
    """
    d = a.details
    try:
        kind = WarningKind(str(d.get("kind")))
    except ValueError:
        raise BadRequest("kind must be one of " + ", ".join(k.value for k in WarningKind)
                         ) from None
    if kind == WarningKind.CONGESTION:
        raise BadRequest("congestion is measured, not raised by hand")
    try:
        severity = CapSeverity(d.get("severity", "Moderate"))
    except ValueError:
        raise BadRequest("severity must be one of " + ", ".join(s.value for s in CapSeverity)
                         ) from None
    raw_segments = d.get("segment_ids") or []
    if not isinstance(raw_segments, list) or not all(isinstance(s, str) for s in raw_segments) \
            or len(raw_segments) > 500:
        raise BadRequest("segment_ids must be a list of at most 500 segment ids")
    segments = tuple(dict.fromkeys(raw_segments))
    unknown = [s for s in segments if network is not None and s not in network]
    if unknown:
        raise BadRequest(f"unknown segment ids: {', '.join(unknown[:5])}", code="unknown_segment")
    lon, lat = d.get("lon"), d.get("lat")
    area: Area | None = None
    headline = _text(d, "headline", required=True)
    if segments and network is not None:
        area = area_of(network, segments, [network.get_segment(s).name for s in segments])
        mid = network.get_segment(segments[0]).coords[0]
        lon, lat = (mid[0], mid[1]) if lon is None else (lon, lat)
    if lon is not None or lat is not None:
        if not all(isinstance(v, int | float) for v in (lon, lat)) \
                or not (-180 <= float(lon) <= 180 and -90 <= float(lat) <= 90):  # type: ignore
            raise BadRequest("lon and lat must be WGS-84 degrees")
        radius = d.get("radius_m", 300.0)
        if not isinstance(radius, int | float) or not 0 < radius <= 50_000:
            raise BadRequest("radius_m must be a number in (0, 50000]")
        circle = (float(lon), float(lat), float(radius))  # type: ignore[arg-type]
        area = replace(area, circle=circle) if area is not None else Area(
            description=headline, circle=circle)
    if area is None:
        raise BadRequest("a warning needs segment_ids or lon and lat")
    expected: datetime | None = None
    if d.get("expected_end"):
        try:
            expected = datetime.fromisoformat(str(d["expected_end"]).replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest("expected_end must be an ISO 8601 time") from None
        if expected.tzinfo is None:
            raise BadRequest("expected_end needs a time zone (e.g. +08:00 or Z)")
    return Warning(
        warning_id=manual_warning_id(a.action_id), kind=kind, status=WarningStatus.RAISED,
        category=CATEGORY[kind], severity=severity, urgency=CapUrgency.IMMEDIATE,
        certainty=CapCertainty.OBSERVED, msg_type=CapMsgType.ALERT, started_at=a.at,
        updated_at=a.at, expected_end=expected, headline=headline,
        headline_en=_text(d, "headline_en"), description=_text(d, "description", most=4000),
        description_en=_text(d, "description_en", most=4000),
        cause=_text(d, "cause", most=64) or kind.value, segment_ids=segments, area=area,
        lon=None if lon is None else float(lon), lat=None if lat is None else float(lat),
        details={"raised_by": a.user, "role": a.role,
                 **({"notes": [{"user": a.user, "role": a.role, "at": a.at.isoformat(),
                                "text": a.note.strip()}]} if a.note.strip() else {})})
