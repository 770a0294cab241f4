"""The workflow's persistence (``shared/db``): users, sessions, warning messages, the audit trail.

- ``dept_users``: name, role, the SHA-256 of the bearer token (tokens are 256-bit random, so a
  plain hash suffices; the token itself is shown once and never stored or logged), revoked_at.
- ``dept_sessions``: the console's sign-ins (hash of the cookie value, its CSRF token, expiry).
- ``warning_log``: every warning message as published, numbered (``seq``): the live stream's
  log, which a console that reconnects with ``Last-Event-ID`` replays from.
- ``warnings_current``: the latest message of each warning (what a restarted service resumes).
- ``dept_audit``: who (user, role), when, what (action, warning), from which address, outcome.
- ``terminal_commands``: every command sent to a vehicle's terminal (texts to drivers from the
  departments and the rules), with its latest outcome; ``terminal_command_outcomes`` each step
  once (``(command_id, status)`` is the key, so a redelivered outcome is recorded once).

Everything is kept ``RETENTION_DAYS`` (180) days and then pruned.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from shared.codec import dumps, payload_from_dict
from shared.db import Database, Query
from shared.errors import BadRequest, NotFound
from shared.events import DEPARTMENT_ROLES, CommandOutcome, TerminalCommand, Warning

RETENTION_DAYS = 180
SESSION_HOURS = 12

MIGRATIONS = [
    """
    CREATE TABLE dept_users (name TEXT PRIMARY KEY, role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE, created_at {TS} NOT NULL, revoked_at {TS});
    CREATE TABLE dept_sessions (id_hash TEXT PRIMARY KEY, name TEXT NOT NULL,
        csrf TEXT NOT NULL, created_at {TS} NOT NULL, expires_at {TS} NOT NULL);
    CREATE TABLE warning_log (seq {SERIAL}, event_id TEXT NOT NULL UNIQUE,
        warning_id TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
        at {TS} NOT NULL, body {JSON} NOT NULL);
    CREATE INDEX warning_log_warning ON warning_log (warning_id, seq);
    CREATE INDEX warning_log_at ON warning_log (at);
    CREATE TABLE warnings_current (warning_id TEXT PRIMARY KEY, kind TEXT NOT NULL,
        active INTEGER NOT NULL, version INTEGER NOT NULL, updated_at {TS} NOT NULL,
        body {JSON} NOT NULL);
    CREATE INDEX warnings_current_active ON warnings_current (active, updated_at);
    CREATE TABLE dept_audit (seq {SERIAL}, at {TS} NOT NULL, user_name TEXT NOT NULL,
        role TEXT NOT NULL, action TEXT NOT NULL, warning_id TEXT, address TEXT,
        outcome TEXT NOT NULL, details {JSON} NOT NULL);
    CREATE INDEX dept_audit_warning ON dept_audit (warning_id, seq);
    CREATE INDEX dept_audit_at ON dept_audit (at)
    """,
    """
    CREATE TABLE terminal_commands (command_id TEXT PRIMARY KEY, vehicle_id TEXT NOT NULL,
        kind TEXT NOT NULL, requested_at {TS} NOT NULL, expires_at {TS} NOT NULL,
        requested_by TEXT NOT NULL, correlation TEXT NOT NULL, request_key TEXT,
        status TEXT NOT NULL, status_at {TS} NOT NULL, body {JSON} NOT NULL);
    CREATE INDEX terminal_commands_vehicle ON terminal_commands (vehicle_id, requested_at);
    CREATE INDEX terminal_commands_request ON terminal_commands (vehicle_id, request_key);
    CREATE INDEX terminal_commands_at ON terminal_commands (requested_at);
    CREATE TABLE terminal_command_outcomes (command_id TEXT NOT NULL, status TEXT NOT NULL,
        vehicle_id TEXT NOT NULL, at {TS} NOT NULL, body {JSON} NOT NULL,
        PRIMARY KEY (command_id, status));
    CREATE INDEX terminal_command_outcomes_at ON terminal_command_outcomes (at)
    """,
]

REQUESTED = "requested"
"""The status of a command no outcome has been heard of yet."""

_RANK = {REQUESTED: 0, "offline_waiting": 1, "sent": 2, "acknowledged": 3, "failed": 3,
         "unsupported": 3, "expired": 3}
"""How far a command got (3: final); a status this service does not know ranks as sent."""


def _rank(status: str) -> int:
    return _RANK.get(status, 2)


def token_hash(token: str) -> str:
    """What is stored of a token or a session cookie."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    """A department user."""

    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether the user may still sign in."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Session:
    """A console sign-in: the user and the CSRF token writes must echo."""

    user: User
    csrf: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One warning message in the stream's log."""

    seq: int
    warning: Warning


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action."""

    seq: int
    at: datetime
    user: str
    role: str
    action: str
    warning_id: str | None
    address: str | None
    outcome: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An audit entry written together with a command or an outcome (not by a request)."""

    user: str
    role: str
    action: str
    warning_id: str | None
    outcome: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command sent to a vehicle's terminal, its latest status and every outcome heard."""

    command: TerminalCommand
    status: str
    status_at: datetime
    outcomes: tuple[CommandOutcome, ...] = ()

    @property
    def latest(self) -> CommandOutcome | None:
        """The outcome that decided ``status`` (None while only requested)."""
        return next((o for o in reversed(self.outcomes) if o.status == self.status), None)


def _warning(body: str) -> Warning:
    return payload_from_dict(Warning, orjson.loads(body))


class WorkflowStore:
    """Users, sessions, warning messages and the audit trail in the deployment's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.also_prune: list[Callable[[datetime], Awaitable[int]]] = []
        """Other keepers of the same database, pruned with it (citizens' reports)."""

    async def open(self) -> None:
        """Open the database and apply the workflow's migrations."""
        await self.db.open()
        await self.db.migrate("warning-workflow", MIGRATIONS)

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    # --- users ---

    async def add_user(self, name: str, role: str, now: datetime) -> str:
        """Create a user (or give a revoked one a new token); returns the token, once."""
        if role not in DEPARTMENT_ROLES:
            raise BadRequest(f"role must be one of {', '.join(DEPARTMENT_ROLES)}")
        if not name or len(name) > 64 or not name.isprintable() or name.strip() != name:
            raise BadRequest("a user name is 1-64 printable characters without outer spaces")
        token = secrets.token_urlsafe(32)
        held = await self.db.fetch_one("SELECT revoked_at FROM dept_users WHERE name = $1", name)
        if held is not None and held["revoked_at"] is None:
            raise BadRequest(f"user {name!r} exists; revoke it first to issue a new token",
                             code="user_exists")
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM dept_users WHERE name = $1", name)
            await tx.execute("INSERT INTO dept_users (name, role, token_hash, created_at) "
                             "VALUES ($1, $2, $3, $4)", name, role, token_hash(token), now)
        return token

    async def list_users(self) -> list[User]:
        """Every user, revoked ones included, by name."""
        rows = await self.db.fetch("SELECT name, role, created_at, revoked_at FROM dept_users "
                                   "ORDER BY name")
        return [User(r["name"], r["role"], r["created_at"], r["revoked_at"]) for r in rows]

    async def revoke_user(self, name: str, now: datetime) -> None:
        """Revoke a user's token and end their sessions; NotFound when no such active user."""
        async with self.db.transaction() as tx:
            changed = await tx.execute("UPDATE dept_users SET revoked_at = $2 WHERE name = $1 "
                                       "AND revoked_at IS NULL", name, now)
            await tx.execute("DELETE FROM dept_sessions WHERE name = $1", name)
        if not changed:
            raise NotFound(f"no active user {name!r}")

    async def user_for_token(self, token: str) -> User | None:
        """The active user holding this bearer token, or None."""
        row = await self.db.fetch_one(
            "SELECT name, role, created_at, revoked_at FROM dept_users WHERE token_hash = $1 "
            "AND revoked_at IS NULL", token_hash(token))
        return None if row is None else User(row["name"], row["role"], row["created_at"])

    # --- sessions ---

    async def new_session(self, user: User, now: datetime) -> tuple[str, Session]:
        """A console session for a signed-in user: (cookie value, session)."""
        cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        expires = now + timedelta(hours=SESSION_HOURS)
        await self.db.execute("INSERT INTO dept_sessions VALUES ($1, $2, $3, $4, $5)",
                              token_hash(cookie), user.name, csrf, now, expires)
        return cookie, Session(user, csrf, expires)

    async def session(self, cookie: str, now: datetime) -> Session | None:
        """The live session behind a cookie, or None (expired, revoked, unknown)."""
        row = await self.db.fetch_one(
            "SELECT s.csrf, s.expires_at, u.name, u.role, u.created_at FROM dept_sessions s "
            "JOIN dept_users u ON u.name = s.name AND u.revoked_at IS NULL "
            "WHERE s.id_hash = $1 AND s.expires_at > $2", token_hash(cookie), now)
        if row is None:
            return None
        return Session(User(row["name"], row["role"], row["created_at"]), row["csrf"],
                       row["expires_at"])

    async def end_session(self, cookie: str) -> None:
        """Sign out."""
        await self.db.execute("DELETE FROM dept_sessions WHERE id_hash = $1", token_hash(cookie))

    # --- warnings ---

    async def save_warning(self, w: Warning, event_id: str) -> bool:
        """Log one warning message and make it the warning's current state (once per event id).

        Returns False for a message already logged (a replay, or the other replica's copy).
        """
        body = dumps(w).decode()
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO warning_log (event_id, warning_id, version, kind, at, body) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                event_id, w.warning_id, w.version, w.kind.value, w.updated_at, body)
            if not added:
                return False
            await tx.execute(
                "INSERT INTO warnings_current (warning_id, kind, active, version, updated_at, "
                "body) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (warning_id) DO UPDATE SET "
                "kind = excluded.kind, active = excluded.active, version = excluded.version, "
                "updated_at = excluded.updated_at, body = excluded.body "
                "WHERE excluded.version >= warnings_current.version",
                w.warning_id, w.kind.value, 1 if w.active else 0, w.version, w.updated_at, body)
        return True

    async def active_warnings(self) -> list[Warning]:
        """Every warning whose latest message is active (to resume after a restart)."""
        rows = await self.db.fetch("SELECT body FROM warnings_current WHERE active = 1 "
                                   "ORDER BY updated_at")
        return [_warning(r["body"]) for r in rows]

    async def find_warning(self, warning_id: str) -> Warning | None:
        """A warning's latest message, or None."""
        row = await self.db.fetch_one("SELECT body FROM warnings_current WHERE warning_id = $1",
                                      warning_id)
        return None if row is None else _warning(row["body"])

    async def log_after(self, seq: int, *, kinds: frozenset[str] | None = None,
                        limit: int = 500) -> list[LogEntry]:
        """Warning messages after ``seq``, oldest first (of these kinds only, if given)."""
        rows = await self.db.fetch("SELECT seq, kind, body FROM warning_log WHERE seq > $1 "
                                   "ORDER BY seq LIMIT $2", seq, limit)
        return [LogEntry(int(r["seq"]), _warning(r["body"])) for r in rows
                if kinds is None or r["kind"] in kinds]

    async def last_seq(self) -> int:
        """The newest message's number (0 when none)."""
        return int(await self.db.fetch_value("SELECT COALESCE(MAX(seq), 0) FROM warning_log"))

    async def history(self, warning_id: str) -> list[LogEntry]:
        """Every message about one warning, oldest first."""
        rows = await self.db.fetch("SELECT seq, body FROM warning_log WHERE warning_id = $1 "
                                   "ORDER BY seq", warning_id)
        return [LogEntry(int(r["seq"]), _warning(r["body"])) for r in rows]

    # --- audit ---

    async def audit(self, *, at: datetime, user: str, role: str, action: str,
                    warning_id: str | None, address: str | None, outcome: str,
                    details: dict[str, Any] | None = None) -> None:
        """Record one action (sign-ins and refusals too)."""
        await self.db.execute(
            "INSERT INTO dept_audit (at, user_name, role, action, warning_id, address, outcome, "
            "details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", at, user, role, action,
            warning_id, address, outcome, dumps(details or {}).decode())

    async def audit_of(self, warning_id: str) -> list[AuditEntry]:
        """The audit trail of one warning, oldest first."""
        rows = await self.db.fetch("SELECT * FROM dept_audit WHERE warning_id = $1 ORDER BY seq",
                                   warning_id)
        return [AuditEntry(int(r["seq"]), r["at"], r["user_name"], r["role"], r["action"],
                           r["warning_id"], r["address"], r["outcome"],
                           orjson.loads(r["details"])) for r in rows]

    # --- commands to terminals ---

    async def record_command(self, cmd: TerminalCommand, *, request_key: str | None = None,
                             note: AuditNote | None = None) -> bool:
        """Log a command sent to a vehicle (once per command id); False if logged already.

        ``note`` is audited with it, only when it is new. Outcomes heard before the command
        (the subjects are consumed apart) already count towards its status.
        """
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO terminal_commands (command_id, vehicle_id, kind, requested_at, "
                "expires_at, requested_by, correlation, request_key, status, status_at, body) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $4, $10) "
                "ON CONFLICT (command_id) DO NOTHING", cmd.command_id, cmd.vehicle_id, cmd.kind,
                cmd.requested_at, cmd.expires_at, cmd.requested_by, cmd.correlation,
                request_key, REQUESTED, dumps(cmd).decode())
            if not added:
                return False
            rows = await tx.fetch("SELECT status, at FROM terminal_command_outcomes WHERE "
                                  "command_id = $1", cmd.command_id)
            if rows:
                best = max(rows, key=lambda r: (_rank(r["status"]), r["at"]))
                await tx.execute("UPDATE terminal_commands SET status = $2, status_at = $3 "
                                 "WHERE command_id = $1", cmd.command_id, best["status"],
                                 best["at"])
            if note is not None:
                await self._note(tx, note, cmd.requested_at)
        return True

    async def record_outcome(self, outcome: CommandOutcome, *, note: AuditNote | None = None
                             ) -> bool:
        """Record one step of a command (once per command and status); False if heard already.

        The command's status moves on only forward (requested → waiting → sent → final), so a
        late redelivery of ``sent`` never hides ``acknowledged``. ``note`` is audited with it.
        """
        async with self.db.transaction() as tx:
            added = await tx.execute(
                "INSERT INTO terminal_command_outcomes (command_id, status, vehicle_id, at, "
                "body) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (command_id, status) DO NOTHING",
                outcome.command_id, outcome.status, outcome.vehicle_id, outcome.at,
                dumps(outcome).decode())
            if not added:
                return False
            row = await tx.fetch_one("SELECT status, status_at FROM terminal_commands WHERE "
                                     "command_id = $1", outcome.command_id)
            if row is not None and (_rank(outcome.status), outcome.at) > (
                    _rank(row["status"]), row["status_at"]):
                await tx.execute("UPDATE terminal_commands SET status = $2, status_at = $3 "
                                 "WHERE command_id = $1", outcome.command_id, outcome.status,
                                 outcome.at)
            if note is not None:
                await self._note(tx, note, outcome.at)
        return True

    @staticmethod
    async def _note(tx: Query, note: AuditNote, at: datetime) -> None:
        await tx.execute(
            "INSERT INTO dept_audit (at, user_name, role, action, warning_id, address, outcome, "
            "details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", at, note.user, note.role,
            note.action, note.warning_id, None, note.outcome, dumps(note.details).decode())

    async def find_command_for_request(self, vehicle_id: str, request_key: str
                                       ) -> CommandRecord | None:
        """The newest command a request with this key made for the vehicle, or None."""
        row = await self.db.fetch_one(
            "SELECT command_id FROM terminal_commands WHERE vehicle_id = $1 AND request_key = $2 "
            "ORDER BY requested_at DESC LIMIT 1", vehicle_id, request_key)
        return None if row is None else await self.find_command(row["command_id"])

    async def find_command(self, command_id: str) -> CommandRecord | None:
        """One command with its outcomes, or None."""
        found = await self._commands("WHERE command_id = $1", command_id, limit=1)
        return found[0] if found else None

    async def commands_of(self, vehicle_id: str, *, limit: int = 100) -> list[CommandRecord]:
        """The commands sent to a vehicle, newest first, each with its outcomes (oldest first)."""
        return await self._commands("WHERE vehicle_id = $1", vehicle_id, limit=limit)

    async def _commands(self, where: str, arg: str, *, limit: int) -> list[CommandRecord]:
        rows = await self.db.fetch(
            f"SELECT command_id, status, status_at, body FROM terminal_commands {where} "
            "ORDER BY requested_at DESC, command_id LIMIT $2", arg, limit)
        if not rows:
            return []
        ids = [r["command_id"] for r in rows]
        marks = ", ".join(f"${i}" for i in range(1, len(ids) + 1))
        heard: dict[str, list[CommandOutcome]] = {}
        for o in await self.db.fetch(
                f"SELECT command_id, body FROM terminal_command_outcomes WHERE command_id IN "
                f"({marks}) ORDER BY at", *ids):
            heard.setdefault(o["command_id"], []).append(
                payload_from_dict(CommandOutcome, orjson.loads(o["body"])))
        return [CommandRecord(payload_from_dict(TerminalCommand, orjson.loads(r["body"])),
                              r["status"], r["status_at"],
                              tuple(sorted(heard.get(r["command_id"], ()),
                                           key=lambda o: (o.at, _rank(o.status)))))
                for r in rows]

    # --- retention ---

    async def prune(self, now: datetime, *, days: int = RETENTION_DAYS) -> int:
        """Delete what is older than the retention period (ended warnings, log, audit)."""
        cutoff = now - timedelta(days=days)
        async with self.db.transaction() as tx:
            n = await tx.execute("DELETE FROM warning_log WHERE at < $1", cutoff)
            n += await tx.execute("DELETE FROM warnings_current WHERE active = 0 AND "
                                  "updated_at < $1", cutoff)
            n += await tx.execute("DELETE FROM dept_audit WHERE at < $1", cutoff)
            n += await tx.execute("DELETE FROM terminal_commands WHERE requested_at < $1",
                                  cutoff)
            n += await tx.execute("DELETE FROM terminal_command_outcomes WHERE at < $1", cutoff)
            n += await tx.execute("DELETE FROM dept_sessions WHERE expires_at < $1", now)
        for prune in self.also_prune:
            n += await prune(now)
        return n
