"""Texts to drivers, the one way the warning service talks to a terminal (JT/T 808 0x8300).

Every text the service sends — a department's (``POST /v1/dept/vehicles/{id}/messages``) or a
safety rule's — is built here (`text_command`: checked, GBK, deterministic ``command_id``) and
travels as a ``TerminalCommand`` on ``tti.terminal.command.<p>``; the collector replica holding
the terminal's connection sends it and publishes each step as a ``CommandOutcome``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter

from services.warning.workflow.store import REQUESTED, AuditNote, CommandRecord, WorkflowStore
from shared.bus import EventBus, Subscription
from shared.codec import Envelope
from shared.errors import TtiError
from shared.events import (
    COMMAND_OUTCOME,
    COMMAND_STATUSES,
    TERMINAL_COMMAND,
    TEXT_FLAGS,
    CommandOutcome,
    TerminalCommand,
    Warning,
    WarningKind,
)

log = logging.getLogger("tti.warning.driver_messages")

MAX_TEXT_CHARS = 200
"""At most this many characters in a text to a driver (a TTS terminal reads ~4 a second)."""

MAX_TEXT_GBK_BYTES = 1021
"""What one 0x8300 frame carries (1023-byte body less the flag and 2019 type bytes)."""

DEFAULT_FLAGS: tuple[str, ...] = ("display", "tts")
DEFAULT_TTL_S = 600.0


class BadText(TtiError):
    """A text a terminal cannot be sent (HTTP 422): empty, too long, not GBK, a bad flag."""

    code = "bad_text"
    http_status = 422


def check_text(text: object, flags: object = DEFAULT_FLAGS) -> tuple[str, tuple[str, ...]]:
    """The text (stripped) and flags (deduplicated, in order), or :class:`BadText` saying why."""
    if not isinstance(text, str) or not text.strip():
        raise BadText("text must be a non-empty string", code="empty_text")
    text = text.strip()
    if len(text) > MAX_TEXT_CHARS:
        raise BadText(f"text is {len(text)} characters; at most {MAX_TEXT_CHARS}",
                      code="text_too_long")
    bad = sorted({c for c in text if not c.isprintable() and c != "\n"})
    if bad:
        raise BadText("text has control characters: " + ", ".join(f"U+{ord(c):04X}" for c in bad),
                      code="text_control_chars")
    try:
        encoded = text.encode("gbk")
    except UnicodeEncodeError as exc:
        raise BadText(f"text cannot be written in GBK (the terminal's encoding): "
                      f"{text[exc.start:exc.end]!r} at character {exc.start + 1}",
                      code="text_not_gbk") from None
    if len(encoded) > MAX_TEXT_GBK_BYTES:
        raise BadText(f"text is {len(encoded)} GBK bytes; one message carries at most "
                      f"{MAX_TEXT_GBK_BYTES}", code="text_too_long")
    if isinstance(flags, str) or not isinstance(flags, Iterable):
        raise BadText("flags must be a list of " + ", ".join(TEXT_FLAGS), code="bad_flags")
    items = tuple(flags)
    if not all(isinstance(f, str) for f in items):
        raise BadText("flags must be a list of strings", code="bad_flags")
    names: tuple[str, ...] = tuple(dict.fromkeys(items))
    unknown = [f for f in names if f not in TEXT_FLAGS]
    if unknown:
        raise BadText(f"unknown flags {unknown!r}; use any of " + ", ".join(TEXT_FLAGS),
                      code="bad_flags")
    return text, names


def command_id_for(vehicle_id: str, *parts: str, prefix: str = "txt") -> str:
    """A deterministic command id: the same vehicle and parts always make the same id."""
    digest = hashlib.blake2b("\x1f".join((vehicle_id, *parts)).encode(), digest_size=12)
    return f"{prefix}-{digest.hexdigest()}"


def text_command(vehicle_id: str, text: str, *, correlation: str, requested_by: str,
                 now: datetime, flags: Iterable[str] = DEFAULT_FLAGS,
                 ttl_s: float = DEFAULT_TTL_S, key: str = "", text_type: int = 1
                 ) -> TerminalCommand:
    """A 0x8300 text for ``vehicle_id``'s driver, checked (:class:`BadText` if it cannot go).

    ``correlation`` is the warning the text is about (the alarm's id; empty for none): every
    outcome is recorded on that warning. ``requested_by`` says who asks (``rule:<name>`` for a
    rule, the user's name for a department). The ``command_id`` is deterministic from the
    vehicle, ``correlation``, ``key`` and the text, so a rule that decides the same text for the
    same alarm again (a replay, another replica) makes the same command, which the collector
    sends once; pass a different ``key`` (e.g. the alarm's version) to send it again on purpose.
    ``ttl_s`` is how long it may wait for an offline terminal (``TTI_DRIVER_TEXT_TTL_S``).
    """
    body, names = check_text(text, flags)
    if not vehicle_id:
        raise BadText("vehicle_id must not be empty", code="bad_vehicle")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    return TerminalCommand(
        command_id=command_id_for(vehicle_id, correlation, key, body), vehicle_id=vehicle_id,
        kind="text", requested_at=now, expires_at=now + timedelta(seconds=ttl_s),
        requested_by=requested_by, text=body, flags=names, text_type=text_type,
        correlation=correlation)


CONFIRMABLE_ALARMS: dict[str, int] = {
    "emergency": 0, "danger_warning": 3, "area_in_out": 20, "route_in_out": 21,
    "road_section_time_abnormal": 22, "illegal_ignition": 27, "illegal_movement": 28,
}
"""Alarm bits a platform clears by hand with 0x8203 (JT/T 808-2013 table 24: the others clear
when their cause ends), by the names ``TerminalAlarm.alarms`` uses."""


def alarm_confirm_command(w: Warning, *, requested_by: str, now: datetime,
                          ttl_s: float = DEFAULT_TTL_S) -> TerminalCommand | None:
    """The 0x8203 confirmation of a terminal's own alarm (an SOS) that a department
    acknowledged, or None when ``w`` is not such an alarm or its bit is not confirmed by hand.

    ``alarm_serial`` 0 confirms every report of that alarm (the warning spans many reports);
    the id is deterministic from the warning, so a repeated acknowledgment sends it once.
    """
    if w.kind is not WarningKind.VEHICLE_ALARM or w.details.get("rule") != "terminal_alarm":
        return None
    vehicle_id, name = w.details.get("vehicle_id"), w.details.get("alarm")
    if not isinstance(vehicle_id, str) or not vehicle_id or name not in CONFIRMABLE_ALARMS:
        return None
    bit = CONFIRMABLE_ALARMS[str(name)]
    return TerminalCommand(
        command_id=command_id_for(vehicle_id, w.warning_id, str(name), prefix="cfm"),
        vehicle_id=vehicle_id, kind="alarm_confirm", requested_at=now,
        expires_at=now + timedelta(seconds=ttl_s), requested_by=requested_by,
        alarm_serial=0, alarm_type=1 << bit, correlation=w.warning_id)


def position_query_command(vehicle_id: str, *, requested_by: str, now: datetime, key: str,
                           correlation: str = "", ttl_s: float = DEFAULT_TTL_S
                           ) -> TerminalCommand:
    """A 0x8201 position query; the terminal's 0x0201 answer is the outcome's ``position``.
    ``key`` makes the id (one per request: a query asked again is a new query)."""
    if not vehicle_id:
        raise BadText("vehicle_id must not be empty", code="bad_vehicle")
    return TerminalCommand(
        command_id=command_id_for(vehicle_id, correlation, key, prefix="pos"),
        vehicle_id=vehicle_id, kind="position_query", requested_at=now,
        expires_at=now + timedelta(seconds=ttl_s), requested_by=requested_by,
        correlation=correlation)


# --- following what became of them ------------------------------------------------------------

SUMMARY: dict[str, tuple[str, str]] = {
    REQUESTED: ("已请求下发", "requested"),
    "offline_waiting": ("终端不在线，等待上线", "terminal offline: waiting"),
    "sent": ("已下发", "text sent"),
    "acknowledged": ("终端已确认", "terminal acknowledged"),
    "failed": ("失败", "failed"),
    "unsupported": ("终端不支持", "unsupported by the terminal"),
    "expired": ("已过期，未能下发", "expired before it could be sent"),
}
"""Status → (Chinese, English) words the audit trail and the console show."""

RECORDED = Counter("tti_warning_terminal_commands_total",
                   "Terminal commands logged by vehicle, by who asked (rule, department, other)",
                   ["source"])
OUTCOMES = Counter("tti_warning_command_outcomes_total",
                   "Command outcomes heard, by status (other: not a known status) and whether "
                   "they were new or heard already", ["status", "new"])


def summary(outcome: CommandOutcome) -> tuple[str, str]:
    """What an outcome means, in Chinese and English, e.g. "terminal acknowledged (0x0001
    result 0)", "failed: no reply within 30 s"."""
    zh, en = SUMMARY.get(outcome.status, (outcome.status, outcome.status))
    if outcome.status == "acknowledged" and outcome.kind == "position_query":
        return "终端已报告位置", "terminal reported its position (0x0201)"
    if outcome.result is not None and outcome.status in ("acknowledged", "failed",
                                                         "unsupported"):
        zh, en = f"{zh}（0x0001 结果 {outcome.result}）", f"{en} (0x0001 result {outcome.result})"
    elif outcome.status in ("failed", "unsupported") and outcome.detail:
        zh, en = f"{zh}：{outcome.detail}", f"{en}: {outcome.detail}"
    return zh, en


def action_of(kind: str) -> str:
    """The audit action of a command of this kind (``driver_text`` for 0x8300 texts)."""
    return "driver_text" if kind == "text" else f"terminal_{kind}"


def _source(requested_by: str) -> str:
    """Who asked, as a bounded label and audit role: ``rule`` for ``rule:…``, else ``dept``."""
    return "rule" if requested_by.startswith("rule:") else "dept"


def command_json(record: CommandRecord) -> dict[str, Any]:
    """A logged command as the department API shows it."""
    cmd = record.command
    latest = record.latest
    zh, en = summary(latest) if latest is not None else SUMMARY[REQUESTED]
    return {
        "command_id": cmd.command_id, "vehicle_id": cmd.vehicle_id, "kind": cmd.kind,
        "text": cmd.text, "flags": list(cmd.flags), "requested_at": cmd.requested_at,
        "expires_at": cmd.expires_at, "requested_by": cmd.requested_by,
        "warning_id": cmd.correlation or None, "status": record.status,
        "status_at": record.status_at, "summary": zh, "summary_en": en,
        "outcomes": [{"status": o.status, "at": o.at, "detail": o.detail, "result": o.result,
                      "result_text": o.result_text, "replica": o.replica,
                      "position": None if o.position is None else {
                          "lon": o.position.lon, "lat": o.position.lat,
                          "observed_at": o.position.observed_at,
                          "speed_kmh": o.position.speed_kmh,
                          "heading_deg": o.position.heading_deg},
                      "summary": summary(o)[0], "summary_en": summary(o)[1]}
                     for o in record.outcomes],
    }


class DriverMessages:
    """Sends commands to terminals and follows their outcomes into the workflow store.

    Every command on ``tti.terminal.command`` (the departments', the rules', anyone's) is logged
    by vehicle; every ``CommandOutcome`` is recorded once per (command, status), and when the
    command's ``correlation`` names a warning, as an audit entry on that warning ("text sent",
    "terminal acknowledged (0x0001 result 0)", "failed: no reply within 30 s"). Every replica
    consumes every partition (its own durable) and writes idempotently, so a replica that dies
    loses nothing and two replicas record each step once between them.
    """

    def __init__(self, bus: EventBus, store: WorkflowStore, *, durable: str,
                 ttl_s: float = DEFAULT_TTL_S) -> None:
        self.bus = bus
        self.store = store
        self.durable = durable
        self.ttl_s = ttl_s
        self._subs: list[Subscription] = []

    async def subscribe(self) -> None:
        """Start following commands and outcomes (every partition)."""
        self._subs.append(await self.bus.subscribe(TERMINAL_COMMAND, self.on_command,
                                                   durable=self.durable))
        self._subs.append(await self.bus.subscribe(COMMAND_OUTCOME, self.on_outcome,
                                                   durable=self.durable))

    async def unsubscribe(self) -> None:
        """Stop following (in-flight events finish first)."""
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.stop()

    async def send(self, cmd: TerminalCommand, *, request_key: str | None = None,
                   note: AuditNote | None = None) -> bool:
        """Log ``cmd`` (with ``note`` audited, if it is new) and publish it; False if it was
        logged already (it is published again all the same: the collector sends it once)."""
        added = await self.store.record_command(cmd, request_key=request_key, note=note)
        if added:
            RECORDED.labels(_source(cmd.requested_by)).inc()
        await self.bus.publish(TERMINAL_COMMAND, cmd, key=cmd.vehicle_id,
                               correlation_id=cmd.correlation or cmd.command_id,
                               event_id=f"cmd:{cmd.command_id}")
        return added

    async def on_command(self, env: Envelope[TerminalCommand]) -> None:
        """Bus handler: log a command; one nobody logged before (a rule's) is audited."""
        cmd = env.payload
        source = _source(cmd.requested_by)
        note = None if not cmd.correlation else AuditNote(
            user=cmd.requested_by, role=source, action=action_of(cmd.kind),
            warning_id=cmd.correlation, outcome=REQUESTED,
            details={"command_id": cmd.command_id, "vehicle_id": cmd.vehicle_id,
                     "text": cmd.text, "flags": list(cmd.flags),
                     "expires_at": cmd.expires_at.isoformat(),
                     "summary": SUMMARY[REQUESTED][0], "summary_en": SUMMARY[REQUESTED][1]})
        if await self.store.record_command(cmd, note=note):
            RECORDED.labels(source).inc()

    async def on_outcome(self, env: Envelope[CommandOutcome]) -> None:
        """Bus handler: record one step; on the warning it concerns, once."""
        o = env.payload
        zh, en = summary(o)
        note = None if not o.correlation else AuditNote(
            user=f"terminal {o.vehicle_id}", role="jt808", action=action_of(o.kind),
            warning_id=o.correlation, outcome=o.status,
            details={"command_id": o.command_id, "vehicle_id": o.vehicle_id,
                     "summary": zh, "summary_en": en, "detail": o.detail, "result": o.result,
                     "result_text": o.result_text, "replica": o.replica})
        added = await self.store.record_outcome(o, note=note)
        status = o.status if o.status in COMMAND_STATUSES else "other"
        OUTCOMES.labels(status, "yes" if added else "no").inc()
        if status == "other":
            log.warning("command %s: unknown outcome status %r (recorded, "
                        "not taken as final)",
                        o.command_id, o.status)
