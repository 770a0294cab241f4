"""JT/T 808 gateway: an asyncio TCP server speaking 2011/2013/2019 to vehicle terminals.

Per connection: split the stream into frames, decode, answer. A terminal registers (0x0100 →
0x8100 with an auth code kept in the terminal store) and authenticates (0x0102) before its
positions count. A location report (0x0200) or batch (0x0704) is acknowledged with 0x8001 only
after the bus has taken the resulting ``VehiclePosition`` events, so an acknowledged report is
never lost. Garbage closes that connection only; a frame with a bad check code or length gets
0x8001 result 2 when its header can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge

from services.collector.registry import VehicleRegistry
from services.collector.terminals import TerminalStore
from shared.bus import EventBus
from shared.errors import BusError
from shared.events import TERMINAL_ALARM, VEHICLE_POSITION, TerminalAlarm, VehiclePosition
from shared.jt808 import (
    REGISTER_OK,
    REGISTER_TERMINAL_UNKNOWN,
    RESULT_BAD_MESSAGE,
    RESULT_FAILURE,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    BatchLocationUpload,
    FrameError,
    FrameSplitter,
    Header,
    Jt808Error,
    LocationReport,
    Message,
    MsgId,
    PlatformGeneralResponse,
    RegisterResponse,
    ResendRequest,
    SubpacketAssembler,
    TerminalAuth,
    TerminalRegister,
    decode_body,
    decode_frame,
    encode_message,
    encode_reply,
)

log = logging.getLogger("tti.collector.jt808")

FRAMES = Counter("tti_jt808_frames_total", "Frames received by message id", ["msg_id"])
ERRORS = Counter("tti_jt808_errors_total", "Rejected frames and connections by kind", ["kind"])
POSITIONS = Counter("tti_jt808_positions_total", "Location records by outcome", ["outcome"])
CONNECTIONS = Gauge("tti_jt808_connections", "Open terminal connections")
AUTHENTICATED = Gauge("tti_jt808_authenticated_sessions", "Authenticated terminal sessions")

KNOWN_IDS = {int(m) for m in MsgId}
MAX_CONSECUTIVE_ERRORS = 8
MAX_FUTURE = timedelta(minutes=10)
MAX_PAST = timedelta(days=7)


class RejectedPosition(ValueError):
    """A location record with impossible values; ``kind`` labels the metric."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def position_from_report(vehicle_id: str, report: LocationReport, *, vehicle_class: str,
                         now: datetime, version: int = 2013) -> VehiclePosition:
    """Map a decoded 0x0200 body to a ``VehiclePosition``; reject impossible values.

    The codec returns raw fields; here latitude beyond 90°, longitude beyond 180°, an
    invalid or far-future time are refused (some real test frames carry swapped coordinates).
    """
    if not report.coordinates_in_range:
        raise RejectedPosition("coordinates_out_of_range",
                               f"lat {report.lat_e6 / 1e6} lon {report.lon_e6 / 1e6} impossible")
    try:
        observed = report.time_utc()
    except Jt808Error as exc:
        raise RejectedPosition("bad_time", str(exc)) from exc
    if observed > now + MAX_FUTURE:
        raise RejectedPosition("future_time", f"time {observed.isoformat()} is in the future")
    if observed < now - MAX_PAST:
        raise RejectedPosition("stale_time", f"time {observed.isoformat()} is too old")
    return VehiclePosition(
        vehicle_id=vehicle_id, lon=report.lon_deg, lat=report.lat_deg, observed_at=observed,
        speed_kmh=report.speed_kmh, heading_deg=float(report.direction_deg % 360),
        vehicle_class=vehicle_class, source="jt808", alarm=report.alarm, status=report.status,
        received_at=now,
    )


@dataclass(eq=False)
class Session:
    """One terminal connection."""

    writer: asyncio.StreamWriter
    peer: str
    phone: str | None = None
    authenticated: bool = False
    serial: int = 0
    consecutive_errors: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    assembler: SubpacketAssembler = field(default_factory=lambda: SubpacketAssembler(
        timeout_s=120.0, max_assemblies=8))
    closing: bool = False
    raw_header: Header | None = None
    """The last good header: replies we originate echo its phone digits and version."""

    def next_serial(self) -> int:
        """The platform's own serial number for this connection (wraps at 0xFFFF)."""
        s = self.serial
        self.serial = (s + 1) & 0xFFFF
        return s


class Jt808Gateway:
    """The TCP server and its sessions."""

    def __init__(self, *, bus: EventBus, terminals: TerminalStore, registry: VehicleRegistry,
                 heartbeat_s: float = 60.0, idle_factor: float = 3.0,
                 max_connections: int = 20_000, open_registration: bool = True,
                 resend_after_s: float = 10.0) -> None:
        self.bus = bus
        self.terminals = terminals
        self.registry = registry
        self.idle_timeout_s = heartbeat_s * idle_factor
        self.max_connections = max_connections
        self.open_registration = open_registration
        self.resend_after_s = resend_after_s
        self.sessions: dict[str, Session] = {}
        self.connections: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting terminals."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=1 << 16,
                                                  backlog=4096)

    async def stop(self) -> None:
        """Stop accepting, let in-flight reports finish (and be acked), close connections."""
        if self._server is not None:
            self._server.close()
        for s in list(self.connections):
            s.closing = True
        if self._handlers:
            _, pending = await asyncio.wait(self._handlers, timeout=5.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for s in list(self.connections):
            s.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ---- connection loop ---------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peer = str(writer.get_extra_info("peername"))
        session = Session(writer, peer)
        try:
            if len(self.connections) >= self.max_connections:
                ERRORS.labels("too_many_connections").inc()
                return
            self.connections.add(session)
            CONNECTIONS.set(len(self.connections))
            await self._serve(session, reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            self.connections.discard(session)
            CONNECTIONS.set(len(self.connections))
            if session.phone and self.sessions.get(session.phone) is session:
                del self.sessions[session.phone]
                AUTHENTICATED.set(len(self.sessions))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, session: Session, reader: asyncio.StreamReader) -> None:
        splitter = FrameSplitter()
        while not session.closing:
            try:
                data = await asyncio.wait_for(reader.read(65536), self.idle_timeout_s)
            except TimeoutError:
                ERRORS.labels("idle_timeout").inc()
                return
            if not data:
                return
            session.last_seen = time.monotonic()
            fatal = False
            try:
                frames = splitter.feed(data)
            except FrameError as exc:
                ERRORS.labels(exc.kind).inc()
                log.info("closing %s: %s", session.peer, exc)
                frames, fatal = list(exc.frames), True
            for frame in frames:
                await self._frame(session, frame)
                if session.closing:
                    break
            self._ask_resends(session)
            await session.writer.drain()
            if fatal or session.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                if not fatal:
                    ERRORS.labels("too_many_errors").inc()
                return

    def _send(self, session: Session, data: bytes) -> None:
        session.writer.write(data)

    def _reply(self, session: Session, msg: Message, result: int) -> None:
        body = PlatformGeneralResponse(msg.header.serial, msg.header.msg_id, result)
        self._send(session, encode_reply(msg, MsgId.P_GENERAL_RESPONSE, body,
                                         serial=session.next_serial()))

    def _reply_to_header(self, session: Session, header: Header, result: int) -> None:
        body = PlatformGeneralResponse(header.serial, header.msg_id, result)
        self._send(session, encode_message(
            MsgId.P_GENERAL_RESPONSE, body, phone_bcd=header.phone_bcd,
            serial=session.next_serial(), version=2019 if header.is_2019 else 2013,
            protocol_version=header.protocol_version or 1))

    async def _frame(self, session: Session, frame: bytes) -> None:
        try:
            msg = decode_frame(frame)
        except Jt808Error as exc:
            ERRORS.labels(exc.kind).inc()
            session.consecutive_errors += 1
            if exc.header is not None:
                self._reply_to_header(session, exc.header, RESULT_BAD_MESSAGE)
            return
        session.consecutive_errors = 0
        FRAMES.labels(f"0x{msg.msg_id:04X}" if msg.msg_id in KNOWN_IDS else "other").inc()
        if session.phone is not None and msg.terminal_phone != session.phone:
            # One connection speaks for one terminal; another phone here is a spoofing attempt.
            ERRORS.labels("phone_mismatch").inc()
            self._reply(session, msg, RESULT_FAILURE)
            return
        if msg.header.subpackage:
            await self._subpacket(session, msg)
            return
        await self._dispatch(session, msg, msg.body)

    async def _subpacket(self, session: Session, msg: Message) -> None:
        header = msg.header
        whole = session.assembler.add(header, msg.body_bytes, time.monotonic())
        if whole is None:
            self._reply(session, msg, RESULT_OK)
            return
        try:
            body = decode_body(header.msg_id, whole, msg.version)
        except Jt808Error as exc:
            ERRORS.labels(exc.kind).inc()
            self._reply(session, msg, RESULT_BAD_MESSAGE)
            return
        # The packet completing the message is answered by the handler, after the bus took it.
        await self._dispatch(session, msg, body)

    def _ask_resends(self, session: Session) -> None:
        """Ask for missing packets of split messages that stalled (0x8003)."""
        asm = session.assembler
        if not len(asm) or session.phone is None:
            return
        now = time.monotonic()
        for key in asm.idle(now, self.resend_after_s):
            req = asm.resend_request(key)
            if req is not None:
                self._send(session, self._platform_frame(session, MsgId.P_RESEND_REQUEST, req))
        for _key in asm.expire(now):
            ERRORS.labels("subpacket_timeout").inc()

    def _platform_frame(self, session: Session, msg_id: int, body: ResendRequest) -> bytes:
        raw = session.raw_header
        assert raw is not None
        return encode_message(msg_id, body, phone_bcd=raw.phone_bcd,
                              serial=session.next_serial(),
                              version=2019 if raw.is_2019 else 2013,
                              protocol_version=raw.protocol_version or 1)

    async def _dispatch(self, session: Session, msg: Message, body: object, *,
                        acked: bool = False) -> None:
        session.raw_header = msg.header
        mid = msg.msg_id
        if mid == MsgId.T_HEARTBEAT:
            self._reply(session, msg, RESULT_OK)
        elif mid == MsgId.T_REGISTER and isinstance(body, TerminalRegister):
            await self._register(session, msg, body)
        elif mid == MsgId.T_AUTH and isinstance(body, TerminalAuth):
            await self._authenticate(session, msg, body)
        elif mid == MsgId.T_LOGOUT:
            self._reply(session, msg, RESULT_OK)
            session.closing = True
        elif mid == MsgId.T_GENERAL_RESPONSE:
            pass  # the terminal acknowledging one of ours: nothing to answer
        elif mid == MsgId.T_LOCATION and isinstance(body, LocationReport):
            await self._locations(session, msg, [body], acked)
        elif mid == MsgId.T_BATCH_LOCATION and isinstance(body, BatchLocationUpload):
            await self._locations(session, msg, list(body.items), acked)
        elif not acked:
            self._reply(session, msg, RESULT_UNSUPPORTED)

    async def _register(self, session: Session, msg: Message, body: TerminalRegister) -> None:
        phone = msg.terminal_phone
        known = await self.terminals.find(phone)
        if known is None and not self.open_registration:
            ERRORS.labels("unknown_terminal").inc()
            resp = RegisterResponse(msg.header.serial, REGISTER_TERMINAL_UNKNOWN)
        else:
            rec = await self.terminals.register(phone, body.plate, body.terminal_id)
            resp = RegisterResponse(msg.header.serial, REGISTER_OK, rec.auth_code)
        self._send(session, encode_reply(msg, MsgId.P_REGISTER_RESPONSE, resp,
                                         serial=session.next_serial()))

    async def _authenticate(self, session: Session, msg: Message, body: TerminalAuth) -> None:
        phone = msg.terminal_phone
        rec = await self.terminals.find(phone)
        if rec is None or rec.auth_code != body.auth_code:
            ERRORS.labels("auth_failed").inc()
            self._reply(session, msg, RESULT_FAILURE)
            return
        old = self.sessions.get(phone)
        if old is not None and old is not session:
            # A second connection for the same terminal replaces the first.
            old.closing = True
            old.writer.close()
        session.phone = phone
        session.authenticated = True
        self.sessions[phone] = session
        AUTHENTICATED.set(len(self.sessions))
        self._reply(session, msg, RESULT_OK)

    async def _locations(self, session: Session, msg: Message, reports: list[LocationReport],
                         acked: bool) -> None:
        if not session.authenticated:
            ERRORS.labels("unauthenticated").inc()
            POSITIONS.labels("unauthenticated").inc(len(reports))
            if not acked:
                self._reply(session, msg, RESULT_FAILURE)
            return
        vid = msg.terminal_phone
        vclass = self.registry.vehicle_class(vid)
        now = datetime.now(UTC)
        good: list[tuple[VehiclePosition, LocationReport]] = []
        for r in reports:
            try:
                good.append((position_from_report(vid, r, vehicle_class=vclass, now=now,
                                                  version=msg.version), r))
            except RejectedPosition as exc:
                POSITIONS.labels(exc.kind).inc()
        if not good and reports:
            if not acked:
                self._reply(session, msg, RESULT_BAD_MESSAGE)
            return
        corr = f"{vid}:{msg.header.serial}"
        try:
            for pos, r in good:
                await self.bus.publish(VEHICLE_POSITION, pos, key=vid, correlation_id=corr)
                if r.alarm:
                    await self.bus.publish(TERMINAL_ALARM, TerminalAlarm(
                        vehicle_id=vid, lon=pos.lon, lat=pos.lat, observed_at=pos.observed_at,
                        alarms=tuple(r.alarm_flags(msg.version)), alarm_bits=r.alarm,
                        vehicle_class=vclass), key=vid, correlation_id=corr)
        except BusError:
            # Not taken by the bus: no ack, so the terminal keeps the report and resends it.
            POSITIONS.labels("bus_unavailable").inc(len(good))
            if not acked:
                self._reply(session, msg, RESULT_FAILURE)
            return
        POSITIONS.labels("published").inc(len(good))
        if not acked:
            self._reply(session, msg, RESULT_OK)
