"""Citizens' reports and hotline tickets, owned by the warning service (``shared/db``).

- ``citizen_reports``: one row per report (``report_id`` from the channel's own message id, so
  a resent report is one row), its public ``number`` (``shared.events.report_number``), what it
  says (the ``CitizenReport`` as received), its ``status`` (``REPORT_STATUSES``) with the public
  ``reply`` a department wrote, who set it and when, and the warning it led to, if any.
- ``citizen_report_numbers``: every number a report was given (a resend on a later day is
  numbered anew by the publisher that takes it; each number finds the one report).
- ``citizen_report_log``: every status change (``seq``), with the user, role and an internal
  ``note`` that is never shown to the public.

Statuses only move forward (``REPORT_STATUS_NEXT``); setting the status a report already has
with the same reply is a no-op (an idempotent retry), anything else backwards is a conflict.
Kept ``RETENTION_DAYS`` (the workflow's) and then pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from services.warning.workflow.store import RETENTION_DAYS
from shared.codec import dumps, payload_from_dict
from shared.db import Database
from shared.errors import BadRequest, Conflict, NotFound
from shared.events import REPORT_STATUS_NEXT, REPORT_STATUSES, CitizenReport, report_number

MIGRATIONS = [
    """
    CREATE TABLE citizen_reports (report_id TEXT PRIMARY KEY, number TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL, kind TEXT NOT NULL, reported_at {TS} NOT NULL,
        received_at {TS} NOT NULL, status TEXT NOT NULL, status_at {TS} NOT NULL,
        status_by TEXT, reply TEXT NOT NULL, warning_id TEXT, body {JSON} NOT NULL);
    CREATE INDEX citizen_reports_status ON citizen_reports (status, reported_at);
    CREATE INDEX citizen_reports_at ON citizen_reports (reported_at);
    CREATE TABLE citizen_report_log (seq {SERIAL}, report_id TEXT NOT NULL, at {TS} NOT NULL,
        user_name TEXT NOT NULL, role TEXT NOT NULL, status TEXT NOT NULL,
        reply TEXT NOT NULL, note TEXT NOT NULL, warning_id TEXT);
    CREATE INDEX citizen_report_log_report ON citizen_report_log (report_id, seq)
    """,
    # 2: every number a report was given (a resend on a later day is numbered anew by the
    # publisher that takes it: each number given out must find the one report)
    """
    CREATE TABLE citizen_report_numbers (number TEXT PRIMARY KEY, report_id TEXT NOT NULL);
    CREATE INDEX citizen_report_numbers_report ON citizen_report_numbers (report_id);
    INSERT INTO citizen_report_numbers (number, report_id)
        SELECT number, report_id FROM citizen_reports
    """,
]

_BY_NUMBER = ("SELECT r.* FROM citizen_report_numbers n JOIN citizen_reports r ON "
              "r.report_id = n.report_id WHERE n.number = $1")

MAX_REPLY = 500
MAX_NOTE = 2000


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One step of a report's handling."""

    seq: int
    at: datetime
    user: str
    role: str
    status: str
    reply: str
    note: str
    warning_id: str | None


@dataclass(frozen=True, slots=True)
class ReportRecord:
    """A report as the warning service holds it."""

    number: str
    report: CitizenReport
    received_at: datetime
    status: str
    status_at: datetime
    status_by: str | None
    reply: str
    warning_id: str | None

    def public(self) -> dict[str, Any]:
        """What anyone holding the number may read: no contact, no internal notes, no user."""
        r = self.report
        zh, en = REPORT_STATUSES[self.status]
        return {"number": self.number, "status": self.status, "status_name": zh,
                "status_name_en": en, "status_at": self.status_at, "final":
                not REPORT_STATUS_NEXT[self.status], "reply": self.reply or None,
                "warning_id": self.warning_id, "kind": r.kind, "channel": r.channel,
                "reported_at": r.reported_at, "occurred_at": r.occurred_at, "lon": r.lon,
                "lat": r.lat, "segment_id": r.segment_id, "text": r.text,
                "photo": None if r.photo is None else {
                    "url": r.photo.url, "content_type": r.photo.content_type,
                    "size_bytes": r.photo.size_bytes, "sha256": r.photo.sha256,
                    "width": r.photo.width, "height": r.photo.height},
                "status_owner": "warning"}

    def full(self) -> dict[str, Any]:
        """What a department reads: the public status plus contact, details and who set it."""
        return {**self.public(), "report_id": self.report.report_id,
                "contact": self.report.contact, "details": self.report.details,
                "received_at": self.received_at, "status_by": self.status_by}


def _record(row: Any) -> ReportRecord:
    return ReportRecord(number=row["number"],
                        report=payload_from_dict(CitizenReport, orjson.loads(row["body"])),
                        received_at=row["received_at"], status=row["status"],
                        status_at=row["status_at"], status_by=row["status_by"],
                        reply=row["reply"], warning_id=row["warning_id"])


class ReportStore:
    """Reports and their handling, in the workflow's database (opened by the workflow store)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def migrate(self) -> None:
        """Apply the reports' migrations (the database is open)."""
        await self.db.migrate("warning-reports", MIGRATIONS)

    async def add(self, report: CitizenReport, received_at: datetime) -> bool:
        """Keep a report as ``received`` (once per report id); False when it was held already.

        A resend numbered anew (on a later day) keeps the first report and its status; its
        number is remembered as another name of it.
        """
        number = report_number(report.report_id, report.reported_at)
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO citizen_reports (report_id, number, channel, kind, reported_at, "
                "received_at, status, status_at, status_by, reply, warning_id, body) VALUES "
                "($1, $2, $3, $4, $5, $6, 'received', $6, NULL, '', NULL, $7) "
                "ON CONFLICT (report_id) DO NOTHING", report.report_id, number,
                report.channel, report.kind, report.reported_at, received_at,
                dumps(report).decode())
            await tx.execute("INSERT INTO citizen_report_numbers (number, report_id) VALUES "
                             "($1, $2) ON CONFLICT (number) DO NOTHING", number,
                             report.report_id)
        return bool(added)

    async def find(self, number: str) -> ReportRecord | None:
        """A report by any number it was given, or None."""
        row = await self.db.fetch_one(_BY_NUMBER, number)
        return None if row is None else _record(row)

    async def recent(self, *, statuses: frozenset[str] | None = None,
                   channels: frozenset[str] | None = None, limit: int = 100,
                   before: datetime | None = None) -> list[ReportRecord]:
        """Reports newest first (of these statuses and channels, reported before ``before``)."""
        where: list[str] = []
        args: list[object] = []
        for column, values in (("status", statuses), ("channel", channels)):
            if values:
                marks = ", ".join(f"${len(args) + i}" for i in range(1, len(values) + 1))
                where.append(f"{column} IN ({marks})")
                args.extend(sorted(values))
        if before is not None:
            args.append(before)
            where.append(f"reported_at < ${len(args)}")
        args.append(limit)
        sql = ("SELECT * FROM citizen_reports" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY reported_at DESC, number LIMIT ${len(args)}")
        return [_record(r) for r in await self.db.fetch(sql, *args)]

    async def set_status(self, number: str, status: str, *, user: str, role: str,
                         at: datetime, reply: str = "", note: str = "",
                         warning_id: str | None = None) -> tuple[ReportRecord, bool]:
        """Move a report on; (the report as it became, whether anything changed).

        :class:`BadRequest` for an unknown status or over-long texts, :class:`NotFound` for an
        unknown number, :class:`Conflict` for a step the lifecycle does not allow.
        """
        if status not in REPORT_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(REPORT_STATUSES)}",
                             code="bad_field")
        if len(reply) > MAX_REPLY or len(note) > MAX_NOTE:
            raise BadRequest(f"reply is at most {MAX_REPLY} characters, note {MAX_NOTE}",
                             code="bad_field")
        async with self.db.transaction() as tx:
            row = await tx.fetch_one(_BY_NUMBER, number)
            if row is None:
                raise NotFound(f"no report {number!r}")
            held = _record(row)
            if held.status == status and held.reply == reply and (
                    warning_id is None or warning_id == held.warning_id):
                return held, False
            if status not in REPORT_STATUS_NEXT[held.status] and status != held.status:
                raise Conflict(f"report {number} is {held.status}; it cannot become {status}",
                               code="bad_transition")
            if not REPORT_STATUS_NEXT[held.status] and status == held.status:
                raise Conflict(f"report {number} is {held.status} (final)",
                               code="bad_transition")
            link = warning_id if warning_id is not None else held.warning_id
            await tx.execute(
                "UPDATE citizen_reports SET status = $2, status_at = $3, status_by = $4, "
                "reply = $5, warning_id = $6 WHERE report_id = $1", held.report.report_id,
                status, at, user, reply, link)
            await tx.execute(
                "INSERT INTO citizen_report_log (report_id, at, user_name, role, status, reply, "
                "note, warning_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                held.report.report_id, at, user, role, status, reply, note, link)
            row = await tx.fetch_one("SELECT * FROM citizen_reports WHERE report_id = $1",
                                     held.report.report_id)
        return _record(row), True

    async def history(self, number: str) -> list[StatusChange]:
        """Every status change of a report, oldest first (empty for an unknown number)."""
        rows = await self.db.fetch(
            "SELECT l.* FROM citizen_report_log l JOIN citizen_report_numbers n ON "
            "n.report_id = l.report_id WHERE n.number = $1 ORDER BY l.seq", number)
        return [StatusChange(int(r["seq"]), r["at"], r["user_name"], r["role"], r["status"],
                             r["reply"], r["note"], r["warning_id"]) for r in rows]

    async def prune(self, now: datetime, *, days: int = RETENTION_DAYS) -> int:
        """Delete reports (and their log) reported before the retention period."""
        cutoff = now - timedelta(days=days)
        async with self.db.transaction() as tx:
            n = await tx.execute("DELETE FROM citizen_report_log WHERE report_id IN (SELECT "
                                 "report_id FROM citizen_reports WHERE reported_at < $1)",
                                 cutoff)
            n += await tx.execute("DELETE FROM citizen_report_numbers WHERE report_id IN (SELECT "
                                  "report_id FROM citizen_reports WHERE reported_at < $1)",
                                  cutoff)
            n += await tx.execute("DELETE FROM citizen_reports WHERE reported_at < $1", cutoff)
        return n
