"""Commands to terminals: route each ``TerminalCommand`` to the collector replica holding the
terminal's connection, send it there (0x8300 text, 0x8201 position query, 0x8203 alarm
confirmation), and publish what became of it (``CommandOutcome``).

Every replica consumes every command partition through one shared durable
(``collector-commands``: each command reaches one of them), so replicas may come and go at any
time — an autoscaler's — without a partition left unconsumed; the replica index only names a
replica's own subject and the sessions it holds. Behind a load balancer the replica that takes a
command is rarely the one its terminal connected to. So each replica, on authentication, claims
the terminal's session in the terminal store (replica index, a lease it renews while
connected); the replica that took the command looks the session up and forwards it to that
replica's own subject ``tti.terminal.command.replica.<i>`` (one durable per replica), or sends it
itself. Two commands to one vehicle may be taken by two replicas and reach the terminal in
either order; each is answered and reported on its own. The holder
writes the frame with its next serial, remembers serial → command and turns the terminal's
0x0001 (0x0201 for a position query) into the outcome. A command for a terminal with no session
waits in a bounded per-replica queue until the terminal authenticates anywhere (the queue polls
the registry) or ``expires_at`` passes; an unanswered one fails after ``timeout_s``. Every
timer reads the gateway's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from services.collector.terminals import TerminalStore
from shared.bus import EventBus
from shared.bus.base import Subscription
from shared.codec import Envelope
from shared.events import (
    COMMAND_KINDS,
    COMMAND_OUTCOME,
    TERMINAL_COMMAND,
    CommandOutcome,
    Subject,
    TerminalCommand,
    VehiclePosition,
)
from shared.jt808 import (
    RESULT_BAD_MESSAGE,
    RESULT_FAILURE,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    AlarmConfirm,
    Body,
    EncodeError,
    MsgId,
    PositionQuery,
    PositionReply,
    TerminalGeneralResponse,
    TextMessage,
    text_flags,
)

if TYPE_CHECKING:
    from services.collector.jt808_gateway import Jt808Gateway, TerminalConnection

log = logging.getLogger("tti.collector.commands")

OUTCOMES = Counter("tti_jt808_command_outcomes_total", "Terminal command outcomes",
                   ["kind", "status"])
FORWARDED = Counter("tti_jt808_commands_forwarded_total",
                    "Commands forwarded to the replica holding the terminal's connection")
WAITING = Gauge("tti_jt808_commands_waiting", "Commands waiting for their terminal to connect")
INFLIGHT = Gauge("tti_jt808_commands_inflight", "Commands sent and not yet answered")

DURABLE = "collector-commands"
REPLICA_DURABLE = "collector-commands-replica"

RESULT_TEXT = {RESULT_OK: "success", RESULT_FAILURE: "failure",
               RESULT_BAD_MESSAGE: "bad message", RESULT_UNSUPPORTED: "unsupported"}
"""0x0001 result code → meaning."""

_MSG_IDS = {"text": MsgId.P_TEXT_MESSAGE, "position_query": MsgId.P_POSITION_QUERY,
            "alarm_confirm": MsgId.P_ALARM_CONFIRM}


def replica_subject(index: int) -> Subject[TerminalCommand]:
    """The subject only replica ``index`` consumes: commands for terminals it holds."""
    return Subject(f"{TERMINAL_COMMAND.name}.replica.{index}", TerminalCommand)


def command_body(cmd: TerminalCommand, is_2019: bool) -> tuple[int, Body]:
    """The message id and body of ``cmd`` in the terminal's layout (2019 or 2011/2013)."""
    if cmd.kind == "text":
        return MsgId.P_TEXT_MESSAGE, TextMessage(text_flags(cmd.flags), cmd.text,
                                                 cmd.text_type if is_2019 else None)
    if cmd.kind == "position_query":
        return MsgId.P_POSITION_QUERY, PositionQuery()
    if cmd.kind == "alarm_confirm":
        return MsgId.P_ALARM_CONFIRM, AlarmConfirm(cmd.alarm_serial, cmd.alarm_type)
    raise EncodeError("unsupported", f"unknown command kind {cmd.kind!r}")


def _event_id(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class _Inflight:
    command: TerminalCommand
    msg_id: int
    conn: TerminalConnection
    deadline: float


class CommandRouter:
    """One collector replica's share of the command traffic (see the module docstring)."""

    def __init__(self, gateway: Jt808Gateway, *, bus: EventBus, store: TerminalStore,
                 replica_index: int = 0, replica_count: int = 1, timeout_s: float = 30.0,
                 lease_s: float = 60.0, poll_s: float = 1.0, max_waiting: int = 10_000,
                 max_done: int = 100_000) -> None:
        if not 0 <= replica_index < replica_count:
            raise ValueError(f"replica_index {replica_index} outside 0..{replica_count - 1}")
        if not (timeout_s > 0 and lease_s > 0 and poll_s > 0):
            raise ValueError("timeout_s, lease_s and poll_s must be positive")
        self.gateway = gateway
        self.bus = bus
        self.store = store
        self.index = replica_index
        self.count = replica_count
        self.timeout_s = timeout_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.max_waiting = max_waiting
        self.max_done = max_done
        self.clock = gateway.clock
        # Every partition, shared with the other replicas: none depends on how many there are.
        self.partitions = list(range(bus.partitions))
        # vehicle → command id → command; bounded by max_waiting in total.
        self._waiting: dict[str, dict[str, TerminalCommand]] = {}
        self._waiting_count = 0
        self._inflight: dict[tuple[str, int], _Inflight] = {}
        # Commands sent or finished here: a redelivered or duplicated one is not sent twice.
        self._done: OrderedDict[str, None] = OrderedDict()
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        # Sessions whose claim the store refused: claimed again on the next rounds.
        self._unclaimed: set[TerminalConnection] = set()

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Attach to the gateway, forget this replica's stale sessions, start consuming."""
        self.gateway.commands = self
        try:
            # A restarted replica holds no connection: whatever it claimed before is stale.
            await self.store.release_replica(self.index)
        except Exception as exc:
            log.warning("terminal store: cannot clear replica %d's old sessions: %s",
                        self.index, exc)
        self._subs.append(await self.bus.subscribe(
            TERMINAL_COMMAND, self._on_command, durable=DURABLE, partitions=self.partitions))
        self._subs.append(await self.bus.subscribe(
            replica_subject(self.index), self._on_forwarded, durable=REPLICA_DURABLE))
        self._loop_task = asyncio.create_task(self._run(), name="jt808-commands")

    async def stop(self) -> None:
        """Stop consuming; commands still waiting or unanswered fail visibly."""
        for sub in self._subs:
            await sub.stop()
        self._subs.clear()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for cmds in list(self._waiting.values()):
            for cmd in cmds.values():
                await self._emit(cmd, "failed", detail="collector replica stopping")
        self._waiting.clear()
        self._waiting_count = 0
        for inf in list(self._inflight.values()):
            await self._emit(inf.command, "failed",
                             detail="collector replica stopping before the reply")
        self._inflight.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._gauges()
        if self.gateway.commands is self:
            self.gateway.commands = None

    # ---- bus handlers ---------------------------------------------------------------------
    async def _on_command(self, env: Envelope[TerminalCommand]) -> None:
        await self._route(env.payload, forwarded=False)

    async def _on_forwarded(self, env: Envelope[TerminalCommand]) -> None:
        await self._route(env.payload, forwarded=True)

    async def _route(self, cmd: TerminalCommand, *, forwarded: bool) -> None:
        if cmd.command_id in self._done:
            return
        if cmd.kind not in COMMAND_KINDS:
            self._finish(cmd.command_id)
            await self._emit(cmd, "unsupported", detail=f"unknown command kind {cmd.kind!r}")
            return
        if cmd.expires_at <= self.clock.now():
            self._finish(cmd.command_id)
            await self._emit(cmd, "expired", detail="expired before it could be sent")
            return
        conn = self.gateway.sessions.get(cmd.vehicle_id)
        if conn is not None:
            await self._deliver(conn, cmd)
            return
        if not forwarded:
            # A store error raises: the bus redelivers the command later (nak with delay).
            holders = await self.store.find_sessions([cmd.vehicle_id], self.clock.time())
            holder = holders.get(cmd.vehicle_id)
            if holder is not None and holder != self.index:
                await self._forward(cmd, holder)
                return
        await self._wait(cmd)

    async def _forward(self, cmd: TerminalCommand, replica: int) -> None:
        # A fresh event id: the same command may travel to the same replica again later
        # (the terminal moved back), which JetStream's duplicate window must not swallow.
        await self.bus.publish(replica_subject(replica), cmd, correlation_id=cmd.command_id,
                               event_id=_event_id(cmd.command_id, "forward", str(replica),
                                                  uuid.uuid4().hex))
        FORWARDED.inc()
        log.debug("command %s for %s forwarded to replica %d", cmd.command_id,
                  cmd.vehicle_id, replica)

    async def _wait(self, cmd: TerminalCommand) -> None:
        queued = self._waiting.setdefault(cmd.vehicle_id, {})
        if cmd.command_id in queued:
            return
        if self._waiting_count >= self.max_waiting:
            if not queued:
                del self._waiting[cmd.vehicle_id]
            self._finish(cmd.command_id)
            await self._emit(cmd, "failed", detail=f"terminal offline and the replica's "
                                                   f"queue is full ({self.max_waiting})")
            return
        queued[cmd.command_id] = cmd
        self._waiting_count += 1
        self._gauges()
        await self._emit(cmd, "offline_waiting",
                         detail="no session for the terminal: waiting until it authenticates "
                                f"or {cmd.expires_at.isoformat()}")

    # ---- sending and replies --------------------------------------------------------------
    async def _deliver(self, conn: TerminalConnection, cmd: TerminalCommand) -> None:
        """Write ``cmd`` to the terminal on ``conn`` and publish ``sent``."""
        self._finish(cmd.command_id)
        try:
            msg_id, body = command_body(cmd, conn.session_is_2019)
            serial = conn.send_downlink(msg_id, body)
        except EncodeError as exc:
            status = "unsupported" if exc.kind == "unsupported" else "failed"
            await self._emit(cmd, status, detail=f"cannot encode the command: {exc}")
            return
        except ConnectionError:
            await self._wait(cmd)  # closing under our feet: wait for the next session
            return
        key = (cmd.vehicle_id, serial)
        old = self._inflight.pop(key, None)
        if old is not None:  # 65536 commands later the serial comes round again
            await self._emit(old.command, "failed", detail="no reply (serial reused)")
        self._inflight[key] = _Inflight(cmd, msg_id, conn,
                                        self.clock.monotonic() + self.timeout_s)
        self._gauges()
        await self._emit(cmd, "sent", detail=f"0x{msg_id:04X} serial {serial}")

    def on_reply(self, conn: TerminalConnection, body: TerminalGeneralResponse | PositionReply,
                 ) -> None:
        """The terminal on ``conn`` answered: 0x0001 or 0x0201 (called by the gateway)."""
        phone = conn.phone
        if phone is None:
            return
        key = (phone, body.reply_serial)
        inf = self._inflight.get(key)
        if inf is None or inf.conn is not conn:
            return
        cmd = inf.command
        if isinstance(body, PositionReply):
            if inf.msg_id != MsgId.P_POSITION_QUERY:
                return
            del self._inflight[key]
            position, detail = self._position(phone, body)
            self._spawn(self._emit(cmd, "acknowledged", result=RESULT_OK,
                                   result_text="position reported", position=position,
                                   detail=detail))
        else:
            if body.reply_msg_id != inf.msg_id:
                return
            if inf.msg_id == MsgId.P_POSITION_QUERY and body.result == RESULT_OK:
                return  # some terminals acknowledge first; the 0x0201 is what counts
            del self._inflight[key]
            result = body.result
            status = ("acknowledged" if result == RESULT_OK else
                      "unsupported" if result == RESULT_UNSUPPORTED else "failed")
            self._spawn(self._emit(cmd, status, result=result,
                                   result_text=RESULT_TEXT.get(result, f"result {result}"),
                                   detail=f"terminal answered 0x0001 result {result}"))
        self._gauges()

    def _position(self, phone: str, body: PositionReply) -> tuple[VehiclePosition | None, str]:
        from services.collector.jt808_gateway import RejectedPosition, position_from_report

        gw = self.gateway
        try:
            return position_from_report(phone, body.location,
                                        vehicle_class=gw.registry.vehicle_class(phone),
                                        now=gw.clock.now()), ""
        except RejectedPosition as exc:
            return None, f"position not usable ({exc.kind}): {exc}"

    # ---- sessions (called by the gateway) -------------------------------------------------
    async def claim(self, conn: TerminalConnection) -> None:
        """Record ``conn``'s session in the store, so every replica routes commands here.

        Called before the terminal is told it is authenticated: a command published after the
        0x8001 finds the session from any replica."""
        phone = conn.phone
        assert phone is not None
        try:
            await self.store.claim_session(phone, self.index, conn.session_id,
                                           self.clock.time() + self.lease_s)
        except Exception as exc:
            # The connection works regardless; only commands from other replicas miss it
            # until a later round manages to claim it.
            log.warning("terminal store: cannot record %s's session: %s", phone, exc)
            self._unclaimed.add(conn)

    async def session_opened(self, conn: TerminalConnection) -> None:
        """``conn`` authenticated and was answered: deliver what waits for the terminal."""
        phone = conn.phone
        assert phone is not None
        waiting = self._waiting.pop(phone, None)
        if waiting:
            self._waiting_count -= len(waiting)
            self._gauges()
            for cmd in waiting.values():
                if conn.closing:
                    await self._wait(cmd)
                else:
                    await self._route_waiting(cmd, conn)

    async def _route_waiting(self, cmd: TerminalCommand, conn: TerminalConnection) -> None:
        if cmd.expires_at <= self.clock.now():
            self._finish(cmd.command_id)
            await self._emit(cmd, "expired", detail="terminal did not connect in time")
        else:
            await self._deliver(conn, cmd)

    def session_closed(self, conn: TerminalConnection) -> None:
        """``conn`` lost its session: release it; its unanswered commands fail."""
        phone = conn.phone
        self._unclaimed.discard(conn)
        if phone is None:
            return
        self._spawn(self._release(phone, conn.session_id))
        for key, inf in list(self._inflight.items()):
            if inf.conn is conn:
                del self._inflight[key]
                self._spawn(self._emit(inf.command, "failed",
                                       detail="connection closed before the terminal answered"))
        self._gauges()

    async def _release(self, phone: str, session_id: str) -> None:
        try:
            await self.store.release_session(phone, session_id)
        except Exception as exc:
            log.warning("terminal store: cannot release %s's session (its lease runs out): %s",
                        phone, exc)

    # ---- the timer loop -------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await self.clock.sleep(self.poll_s)
            try:
                await self._tick()
            except Exception:  # a store outage must not stop timeouts and expiries for good
                log.exception("command routing round failed")

    async def _tick(self) -> None:
        mono = self.clock.monotonic()
        for key, inf in list(self._inflight.items()):
            if inf.deadline <= mono:
                del self._inflight[key]
                await self._emit(inf.command, "failed",
                                 detail=f"no reply within {self.timeout_s:g} s")
        now = self.clock.now()
        for vid, cmds in list(self._waiting.items()):
            for cid, cmd in list(cmds.items()):
                if cmd.expires_at <= now:
                    del cmds[cid]
                    self._waiting_count -= 1
                    self._finish(cid)
                    await self._emit(cmd, "expired", detail="terminal did not connect in time")
            if not cmds:
                del self._waiting[vid]
        if self._waiting:
            await self._place_waiting()
        if mono - self._renewed_at >= self.lease_s / 3:
            await self._renew()
            self._renewed_at = mono
        self._gauges()

    async def _place_waiting(self) -> None:
        """Deliver or forward waiting commands whose terminal has a session now."""
        gw = self.gateway
        local = [vid for vid in self._waiting if vid in gw.sessions]
        for vid in local:
            conn = gw.sessions[vid]
            cmds = self._waiting.pop(vid)
            self._waiting_count -= len(cmds)
            for cmd in cmds.values():
                await self._route_waiting(cmd, conn)
        if not self._waiting:
            return
        holders = await self.store.find_sessions(list(self._waiting), self.clock.time())
        for vid, replica in holders.items():
            if replica == self.index or vid not in self._waiting:
                continue  # a stale claim of ours: the terminal is not here, keep waiting
            cmds = self._waiting.pop(vid)
            self._waiting_count -= len(cmds)
            for cmd in cmds.values():
                await self._forward(cmd, replica)

    async def _renew(self) -> None:
        for conn in list(self._unclaimed):
            if conn.phone is None or self.gateway.sessions.get(conn.phone) is not conn:
                self._unclaimed.discard(conn)
                continue
            await self.store.claim_session(conn.phone, self.index, conn.session_id,
                                           self.clock.time() + self.lease_s)
            self._unclaimed.discard(conn)
        sessions = list(self.gateway.sessions.values())
        if not sessions:
            return
        await self.store.renew_sessions([c.session_id for c in sessions],
                                        self.clock.time() + self.lease_s)

    # ---- outcomes -------------------------------------------------------------------------
    async def _emit(self, cmd: TerminalCommand, status: str, *, detail: str = "",
                    result: int | None = None, result_text: str = "",
                    position: VehiclePosition | None = None) -> None:
        OUTCOMES.labels(cmd.kind if cmd.kind in COMMAND_KINDS else "other", status).inc()
        outcome = CommandOutcome(
            command_id=cmd.command_id, vehicle_id=cmd.vehicle_id, kind=cmd.kind, status=status,
            at=self.clock.now(), replica=self.index, detail=detail, result=result,
            result_text=result_text, position=position, correlation=cmd.correlation)
        try:
            # One id per (command, status): a repeated step is stored once by JetStream.
            await self.bus.publish(COMMAND_OUTCOME, outcome, key=cmd.vehicle_id,
                                   correlation_id=cmd.correlation or cmd.command_id,
                                   event_id=_event_id(cmd.command_id, status))
        except Exception as exc:
            log.warning("cannot publish outcome %s of command %s: %s", status, cmd.command_id,
                        exc)

    def _finish(self, command_id: str) -> None:
        done = self._done
        done[command_id] = None
        done.move_to_end(command_id)
        while len(done) > self.max_done:
            done.popitem(last=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _gauges(self) -> None:
        WAITING.set(self._waiting_count)
        INFLIGHT.set(len(self._inflight))
