"""JT/T 808 gateway: an asyncio TCP server speaking 2011/2013/2019 to vehicle terminals.

Per connection (an ``asyncio.Protocol``): split the stream into frames, decode, answer. A terminal
registers (0x0100 → 0x8100 with an auth code kept in the terminal store) and authenticates
(0x0102) before its positions count. A location report (0x0200) or batch (0x0704) is
acknowledged with 0x8001 only after the bus has taken the resulting ``VehiclePosition`` (and
``TerminalAlarm``) events, so an acknowledged report is never lost; when the bus refuses them
the terminal gets result 1 and keeps the report. A driver identity report (0x0702, IC card in
or out; mapped by ``driver_identity.py``) is published as ``DriverIdentity`` on
``tti.driver.identity.<p>`` the same way before its 0x8001. Replies echo the raw phone digits
and the header layout of the frame they answer (a 2019 terminal gets 2019 replies).

Bad input loses nothing else: a frame with a bad check code (a missing check byte included) or
body length gets 0x8001 result 2, however often, and the connection carries on; garbage, an
oversize frame or a run of frames whose header cannot be read closes that connection only. A
report whose coordinates are encrypted (status bit 5) is acknowledged but not published as a
position (its alarm bits still are). Registrations (0x0100) share one gateway-wide token
bucket, so a flood of new connections cannot hammer the terminal store. Each connection is
bounded: frames per second (token bucket; reading pauses when it runs dry), frames waiting for
the bus (reading pauses), bytes waiting to be written to a terminal that does not read (reading
pauses, then the connection is dropped), and split messages in reassembly. Silent connections
are closed after ``heartbeat_s * idle_factor``.

Platform commands (0x8300 text, 0x8201 position query, 0x8203 alarm confirmation) are routed
to the connection holding the terminal by ``services/collector/commands.py``; the gateway writes
them (``send_downlink``: the session's layout, its own serial) and hands the terminal's 0x0001
and 0x0201 answers back to it.

Shutdown (``drain``): readiness turns false, the listener closes (new terminals are refused and
reconnect through the balancer to another replica), and the open connections are closed in
even batches over the drain period, each once the frames in hand are answered; ``stop`` then
closes whatever is left. No 0x8105 "connect to a specified server" is sent: that command
switches a terminal to a supervision platform in an emergency state, for a time limit, and is
not a load-balancing tool; a closed TCP connection is what every terminal reconnects after.

Time: every check and timer reads the gateway's clock (``shared/clock.py``): the future/stale
time check of a report, the server time of 0x8004, idle and close timeouts, the frame budget,
split-message reassembly and 0x8003 resend requests. Under a clock at rate 10 the gateway
behaves in clock seconds exactly as it does at rate 1 (a replayed fleet reports ten times as
often per real second, and its frame budget is ten times larger per real second too).

Hot path: ``data_received`` decodes every frame of one read synchronously; only frames that need
the bus or the terminal store start a per-connection task, which then also works through the
frames behind them, in order. Replies of one loop iteration go out in one ``write``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import struct
import uuid
from collections import deque
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import Counter, Gauge

from services.collector.driver_identity import RejectedCard, identity_event
from services.collector.registry import VehicleRegistry
from services.collector.terminals import TerminalStore
from shared.bus import EventBus
from shared.clock import Clock
from shared.errors import BusError
from shared.events import (
    DRIVER_IDENTITY,
    TERMINAL_ALARM,
    VEHICLE_POSITION,
    DriverIdentity,
    TerminalAlarm,
    VehiclePosition,
)
from shared.jt808 import (
    GMT8,
    MAX_FRAME_SIZE,
    REGISTER_OK,
    REGISTER_TERMINAL_UNKNOWN,
    RESULT_BAD_MESSAGE,
    RESULT_FAILURE,
    RESULT_OK,
    RESULT_UNSUPPORTED,
    AssemblyKey,
    BatchLocationUpload,
    Body,
    FrameError,
    FrameSplitter,
    Header,
    Jt808Error,
    LocationReport,
    Message,
    MsgId,
    PositionReply,
    RegisterResponse,
    ResendRequest,
    ServerTimeReply,
    SubpacketAssembler,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalRegister,
    bcd_time_to_utc,
    datetime_to_bcd_time,
    decode_body,
    decode_frame,
    decode_header,
    encode_message,
    encode_reply,
    escape,
    unescape,
    xor_checksum,
)
from shared.jt808 import (
    DriverIdentity as DriverCard,
)
from shared.jt808._fast import fast_constructor

if TYPE_CHECKING:
    from services.collector.commands import CommandRouter

log = logging.getLogger("tti.collector.jt808")

FRAMES = Counter("tti_jt808_frames_total", "Frames received by message id", ["msg_id"])
ERRORS = Counter("tti_jt808_errors_total", "Rejected frames and connections by kind", ["kind"])
POSITIONS = Counter("tti_jt808_positions_total", "Location records by outcome", ["outcome"])
CONNECTIONS = Gauge("tti_jt808_connections", "Open terminal connections")
AUTHENTICATED = Gauge("tti_jt808_authenticated_sessions", "Authenticated terminal sessions")
DRAINED = Counter("tti_jt808_drained_connections_total",
                  "Terminal connections closed by the shutdown drain (to reconnect elsewhere)")
DRAIN_LEFT = Gauge("tti_jt808_drain_connections_left",
                   "Terminal connections the running shutdown drain has still to close")

KNOWN_IDS = frozenset(int(m) for m in MsgId)
# Bound children once: ``labels()`` costs about a microsecond, which the hot path cannot spare.
_FRAMES_BY_ID = {mid: FRAMES.labels(f"0x{mid:04X}") for mid in KNOWN_IDS}
_FRAMES_OTHER = FRAMES.labels("other")
_PUBLISHED = POSITIONS.labels("published")
_ENCRYPTED = POSITIONS.labels("encrypted_position")
_FRAMES_LOCATION = _FRAMES_BY_ID[MsgId.T_LOCATION]
_ERRORS: dict[str, Any] = {}


def _error(kind: str) -> Any:
    """The error counter child for ``kind`` (kinds are a fixed set: bounded label values)."""
    child = _ERRORS.get(kind)
    if child is None:
        child = _ERRORS[kind] = ERRORS.labels(kind)
    return child


MAX_CONSECUTIVE_ERRORS = 8
"""Frames in a row that could not be framed or whose header could not be read (so could not
be answered) before the connection is closed: a peer that does not speak JT/T 808. A frame
answered with result 2 (bad check code, body length or body) never counts: a real terminal
module that drops the check byte whenever the XOR is below 0x10 must keep its link."""
STATUS_ENCRYPTED = 1 << 5
"""0x0200 status bit 5: latitude/longitude encrypted by the privacy plug-in (not WGS-84)."""
MAX_JUNK_BYTES = 8192
"""Bytes outside any frame since the last good frame before the connection is closed."""
MAX_BACKLOG_FRAMES = 256
"""Frames waiting behind a bus publish or a store query before reading pauses."""
MAX_RESEND_REQUESTS = 3
"""0x8003 requests per stalled split message before it is given up."""
DRAIN_MIN_INTERVAL_S = 0.1
"""Batches of a drain are at least this far apart (clock seconds): ten a second at most."""
MAX_FUTURE = timedelta(minutes=10)
MAX_PAST = timedelta(days=7)
# Split messages we reassemble; packets of anything else are answered "unsupported" unstored.
_ASSEMBLED_IDS = frozenset({MsgId.T_LOCATION, MsgId.T_BATCH_LOCATION, MsgId.T_REGISTER,
                            MsgId.T_AUTH})

# Why reading is paused (a bit each; reading resumes when none is left).
_PAUSE_RATE = 1
_PAUSE_BACKLOG = 2
_PAUSE_WRITE = 4
_PAUSE_STOP = 8


class RejectedPosition(ValueError):
    """A location record with impossible values; ``kind`` labels the metric."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# VehiclePosition is frozen: its __init__ stores 14 fields through object.__setattr__ (~2 µs).
# The codec's fast constructor fills the same slots directly. It is called with keywords, so a
# field added to VehiclePosition fails loudly (missing argument) instead of shifting values;
# tests/collector/test_jt808_gateway.py checks it against the regular constructor.
_make_position = fast_constructor(VehiclePosition)


def position_from_report(vehicle_id: str, report: LocationReport, *, vehicle_class: str,
                         now: datetime) -> VehiclePosition:
    """Map a decoded 0x0200 body to a ``VehiclePosition``; reject impossible values.

    The codec returns raw fields; here latitude beyond 90°, longitude beyond 180°, an
    invalid, far-future or more than a week old time are refused (some real test frames carry
    swapped coordinates). ``now`` is UTC; the report's BCD time is GMT+8.
    """
    try:
        observed = bcd_time_to_utc(report.time_bcd, GMT8)
    except Jt808Error as exc:
        raise RejectedPosition("bad_time", str(exc)) from exc
    return _position(vehicle_id, report, vehicle_class, observed, now)


def _position(vehicle_id: str, report: LocationReport, vehicle_class: str, observed: datetime,
              now: datetime, route_id: str | None = None) -> VehiclePosition:
    lat_e6, lon_e6, status = report.lat_e6, report.lon_e6, report.status
    if lat_e6 > 90_000_000 or lon_e6 > 180_000_000:
        raise RejectedPosition("coordinates_out_of_range",
                               f"lat {lat_e6 / 1e6} lon {lon_e6 / 1e6} impossible")
    if observed > now + MAX_FUTURE:
        raise RejectedPosition("future_time", f"time {observed.isoformat()} is in the future")
    if observed < now - MAX_PAST:
        raise RejectedPosition("stale_time", f"time {observed.isoformat()} is too old")
    # Unsigned magnitudes; the hemispheres are status bits 2 (south) and 3 (west).
    lat = -lat_e6 / 1e6 if status & 0x4 else lat_e6 / 1e6
    lon = -lon_e6 / 1e6 if status & 0x8 else lon_e6 / 1e6
    return _make_position(
        vehicle_id=vehicle_id, lon=lon, lat=lat, observed_at=observed,
        speed_kmh=report.speed_0_1kmh / 10, heading_deg=float(report.direction_deg % 360),
        vehicle_class=vehicle_class, source="jt808", alarm=report.alarm, status=status,
        trip_id=None, route_id=route_id, occupancy=None, occupancy_pct=None, received_at=now)


def report_event_id(vehicle_id: str, raw_report: bytes, kind: bytes = b"pos") -> str:
    """A stable event id from the report's bytes: a terminal resending an unacknowledged
    report produces the same id, so JetStream (``Nats-Msg-Id``) drops the duplicate."""
    h = hashlib.blake2b(raw_report, digest_size=16, person=kind)
    h.update(vehicle_id.encode())
    return h.hexdigest()


def batch_item_bytes(body: bytes) -> list[bytes]:
    """The raw bytes of each item of a (well-formed) 0x0704 body, for stable event ids."""
    out = []
    pos = 3
    for _ in range(int.from_bytes(body[0:2], "big")):
        size = int.from_bytes(body[pos : pos + 2], "big")
        out.append(body[pos + 2 : pos + 2 + size])
        pos += 2 + size
    return out


class _TimeCache:
    """BCD (GMT+8) → UTC datetime, memoised: a fleet's reports share few distinct seconds."""

    __slots__ = ("_times",)

    def __init__(self) -> None:
        self._times: dict[str, datetime] = {}

    def utc(self, time_bcd: str) -> datetime:
        got = self._times.get(time_bcd)
        if got is None:
            try:
                got = bcd_time_to_utc(time_bcd, GMT8)
            except Jt808Error as exc:
                raise RejectedPosition("bad_time", str(exc)) from exc
            if len(self._times) >= 4096:
                self._times.clear()
            self._times[time_bcd] = got
        return got


_REPLY_TAIL = struct.Struct(">HHHB")  # own serial, then the body: reply serial, reply id, result

_Publish = tuple[Header, VehiclePosition, str]
"""The hot path's pending work: publish this position (event id), then ack that header."""
_Action = Coroutine[Any, Any, None] | _Publish
"""What a frame still needs after its synchronous part: a coroutine, or a plain publish."""


class _PacketInfo:
    """Per split message: what a 0x8003 request needs, and how often it was asked."""

    __slots__ = ("asked_at", "asks", "first", "header")

    def __init__(self, header: Header) -> None:
        self.header = header
        self.first = (header.pkg_index or 1, header.serial)  # lowest (index, serial) seen
        self.asked_at = 0.0
        self.asks = 0


class TerminalConnection(asyncio.Protocol):
    """One terminal's TCP connection: framing, session state, limits, replies."""

    __slots__ = ("_flush_handle", "_locations_seen", "_out", "_packets", "_published",
                 "_reply_key", "_reply_prefix", "_reply_xor", "assembler", "authenticated",
                 "backlog", "closed", "closing", "closing_at", "errors", "gateway", "junk",
                 "last_seen", "paused", "phone", "serial", "session_header", "session_id",
                 "splitter", "tokens", "tokens_at", "transport", "worker")

    def __init__(self, gateway: Jt808Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.splitter = FrameSplitter()
        self.phone: str | None = None
        """Canonical terminal phone once authenticated (the vehicle id)."""
        self.authenticated = False
        self.session_header: Header | None = None
        """The header of the accepted 0x0102: platform commands echo its phone and layout."""
        self.session_id = ""
        """Names this connection's session in the registry (a newer connection replaces it)."""
        self.serial = 0
        self.errors = 0
        self.junk = 0
        self.last_seen = gateway._mono()
        self.tokens = gateway.frame_burst
        self.tokens_at = self.last_seen
        self.paused = 0
        self.closing = False
        self.closing_at = 0.0
        self.closed = False
        # Created on demand: most connections never need them, and 15,000 of each add up.
        self.backlog: deque[bytes] | None = None
        self.worker: asyncio.Task[None] | None = None
        self.assembler: SubpacketAssembler | None = None
        self._packets: dict[AssemblyKey, _PacketInfo] | None = None
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._reply_key: tuple[str, int | None] | None = None
        self._reply_prefix = b""
        self._reply_xor = 0
        # Hot-path counts, added to the Prometheus counters once per batch of frames.
        self._locations_seen = 0
        self._published = 0

    # ---- transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = t = cast(asyncio.Transport, transport)
        gw = self.gateway
        if len(gw.connections) >= gw.max_connections or gw.stopping or gw.draining:
            _error("shutting_down" if gw.stopping or gw.draining
                   else "too_many_connections").inc()
            self.closing = self.closed = True
            t.abort()
            return
        t.set_write_buffer_limits(high=gw.max_write_buffer, low=gw.max_write_buffer // 4)
        gw.connections.add(self)
        CONNECTIONS.set(len(gw.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.closing = True
        self.gateway._forget(self)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()

    def pause_writing(self) -> None:
        # The terminal is not reading its replies: stop reading its frames (which make more).
        _error("write_paused").inc()
        self._pause(_PAUSE_WRITE)

    def resume_writing(self) -> None:
        self._resume(_PAUSE_WRITE)

    def eof_received(self) -> bool | None:
        # Half-close: answer the frames in hand, then close (True: we close it ourselves).
        self._close_when_idle()
        return True

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        gw = self.gateway
        now = gw._mono()
        self.last_seen = now
        fatal = False
        try:
            frames = self.splitter.feed(data)
        except FrameError as exc:
            _error(exc.kind).inc()
            log.debug("closing %s: %s", self._peer(), exc)
            frames, fatal = list(exc.frames), True
        if not frames:
            if not fatal and not self.splitter.buffered:
                self.junk += len(data)  # all of it fell outside any frame
                if self.junk > MAX_JUNK_BYTES:
                    _error("garbage").inc()
                    self.close()
            if fatal:
                self.close()
            return
        # Token bucket: what was read is still handled, but reading pauses until the budget
        # has refilled, so TCP flow control slows the terminal down.
        tokens = min(gw.frame_burst, self.tokens + (now - self.tokens_at) * gw.max_frames_per_s)
        tokens -= len(frames)
        self.tokens, self.tokens_at = tokens, now
        if tokens < 0:
            _error("rate_limited").inc()
            self._pause(_PAUSE_RATE)
            gw._loop.call_later(gw.clock.real_seconds(-tokens / gw.max_frames_per_s),
                                self._resume, _PAUSE_RATE)
        if self.worker is not None:
            backlog = self.backlog
            assert backlog is not None
            backlog.extend(frames)
            if len(backlog) > MAX_BACKLOG_FRAMES:
                self._pause(_PAUSE_BACKLOG)
        else:
            self._run(frames)
        if fatal:
            self._close_when_idle()

    # ---- frame processing -----------------------------------------------------------------
    def _run(self, frames: list[bytes]) -> None:
        """Handle frames synchronously until one needs the bus or the store."""
        n = len(frames)
        for i in range(n):
            action = self._frame(frames[i])
            if self.closing:
                break
            if action is not None:
                self.backlog = deque(frames[i + 1 :])
                self.worker = self.gateway._loop.create_task(self._work(action))
                return
        self._end_batch()

    async def _work(self, first: _Action) -> None:
        """Finish ``first``, then every frame queued behind it, in order."""
        action: _Action | None = first
        bus = self.gateway.bus
        backlog = self.backlog
        try:
            while True:
                if type(action) is tuple:
                    # The hot path, inline: one plain position, no alarm.
                    header, pos, eid = cast(_Publish, action)
                    try:
                        await bus.publish(VEHICLE_POSITION, pos, key=pos.vehicle_id,
                                          correlation_id=eid, event_id=eid)
                    except Exception as exc:
                        POSITIONS.labels("bus_unavailable").inc()
                        self.gateway._bus_failed(exc)
                        self._reply(header, RESULT_FAILURE)
                    else:
                        self._published += 1
                        self._reply(header, RESULT_OK)
                else:
                    try:
                        await cast(Coroutine[Any, Any, None], action)
                    except Exception:
                        _error("internal").inc()
                        log.exception("JT/T 808 frame handling failed for %s", self._peer())
                action = None
                while action is None and backlog and not self.closed:
                    action = self._frame(backlog.popleft())
                    if self.paused & _PAUSE_BACKLOG and len(backlog) <= MAX_BACKLOG_FRAMES // 2:
                        self._resume(_PAUSE_BACKLOG)
                if action is None:
                    break
        finally:
            self.worker = None
            self.backlog = None
            self._resume(_PAUSE_BACKLOG)
            self._end_batch()

    def _end_batch(self) -> None:
        """After a batch of frames: add up the metrics, close after too many bad frames."""
        if self._locations_seen:
            _FRAMES_LOCATION.inc(self._locations_seen)
            self._locations_seen = 0
        if self._published:
            if self.gateway._bus_failing:
                self.gateway._bus_ok()
            _PUBLISHED.inc(self._published)
            self._published = 0
        if self.errors >= MAX_CONSECUTIVE_ERRORS and not self.closing:
            _error("too_many_errors").inc()
            self.close()

    def _frame(self, frame: bytes) -> _Action | None:
        """Decode and answer one frame; return what is left to do when it must wait."""
        try:
            msg = decode_frame(frame)
        except Jt808Error as exc:
            self._bad_frame(frame, exc)
            return None
        self.errors = 0
        self.junk = 0
        header = msg.header
        mid = header.msg_id
        phone = header.terminal_phone
        try:
            if mid == 0x0200 and self.authenticated and phone == self.phone \
                    and not header.subpackage:
                # Hot path: an authenticated terminal's location report.
                self._locations_seen += 1
                r = cast(LocationReport, msg.body)
                if not r.alarm and not r.status & STATUS_ENCRYPTED:
                    try:
                        pos = self._position(phone, r)
                    except RejectedPosition as exc:
                        POSITIONS.labels(exc.kind).inc()
                        self._reply(header, RESULT_BAD_MESSAGE)
                        return None
                    if pos is not None:
                        return (header, pos, report_event_id(phone, msg.body_bytes))
                # Alarms, and reports without a fix, take the general path.
                return self._locations(header, msg.version, (r,), (msg.body_bytes,))
            (_FRAMES_BY_ID.get(mid) or _FRAMES_OTHER).inc()
            if self.phone is not None and phone != self.phone:
                # One connection speaks for one terminal; another phone here is a spoof.
                _error("phone_mismatch").inc()
                self._reply(header, RESULT_FAILURE)
                return None
            if header.subpackage:
                return self._subpacket(msg)
            return self._dispatch(msg, msg.body, msg.body_bytes)
        except Exception:  # a bug must cost this frame, not the connection or the server
            _error("internal").inc()
            log.exception("JT/T 808 frame 0x%04X from %s failed", mid, self._peer())
            self._reply(header, RESULT_FAILURE)
            return None

    def _position(self, vid: str, r: LocationReport) -> VehiclePosition | None:
        """The position of a plain report; None when it has no fix (nothing to publish).

        Reports with encrypted coordinates never reach here (the hot path sends them on to
        ``_locations``, which counts them).
        """
        if not r.status & 0x2 and not (r.lat_e6 or r.lon_e6):
            return None
        gw = self.gateway
        info = gw.registry.find(vid)
        return _position(vid, r, info.vehicle_class if info else "other",
                         gw._times.utc(r.time_bcd), gw.clock.now(),
                         info.route_id if info else None)

    def _bad_frame(self, frame: bytes, exc: Jt808Error) -> None:
        """Count a rejected frame; answer it when its header can be read, else count it
        towards ``MAX_CONSECUTIVE_ERRORS``."""
        _error(exc.kind).inc()
        header = exc.header
        if header is None and exc.kind in ("length_mismatch", "bad_checksum"):
            # A missing check byte makes the last body byte the "check code" and the body one
            # byte short: the header is still there to answer.
            header = _lenient_header(frame)
        if header is not None and (self.phone is None or header.terminal_phone == self.phone):
            self.errors = 0  # a JT/T 808 speaker, however garbled this frame
            self._reply(header, RESULT_UNSUPPORTED if exc.kind == "encrypted"
                        else RESULT_BAD_MESSAGE)
        else:
            # Unanswerable (no header, or another terminal's phone on this link).
            self.errors += 1

    def _dispatch(self, msg: Message, body: object, body_bytes: bytes) -> _Action | None:
        header = msg.header
        mid = header.msg_id
        if mid == MsgId.T_LOCATION and isinstance(body, LocationReport):
            return self._locations(header, msg.version, (body,), (body_bytes,))
        if mid == MsgId.T_HEARTBEAT:
            self._reply(header, RESULT_OK)
        elif mid == MsgId.T_BATCH_LOCATION and isinstance(body, BatchLocationUpload):
            return self._locations(header, msg.version, body.items, batch_item_bytes(body_bytes))
        elif mid == MsgId.T_REGISTER and isinstance(body, TerminalRegister):
            if not self.gateway._take_registration():
                # 0x8100 has no "try later" result (0-4 all say something false about the
                # terminal): close without touching the store; the terminal reconnects later.
                _error("registration_rate").inc()
                self.close()
                return None
            return self._register(msg, body)
        elif mid == MsgId.T_AUTH and isinstance(body, TerminalAuth):
            return self._authenticate(msg, body)
        elif mid == MsgId.T_DRIVER_IDENTITY and isinstance(body, DriverCard):
            return self._driver_identity(header, body, body_bytes)
        elif mid == MsgId.T_LOGOUT:
            self._reply(header, RESULT_OK)
            self._forget_session()
            self._close_when_idle()
        elif mid == MsgId.T_GENERAL_RESPONSE or mid == MsgId.T_POSITION_REPLY:
            # The terminal answering one of ours: nothing to answer back.
            commands = self.gateway.commands
            if commands is not None and self.authenticated \
                    and isinstance(body, TerminalGeneralResponse | PositionReply):
                commands.on_reply(self, body)
        elif mid == MsgId.T_QUERY_SERVER_TIME:
            # The one UTC time (2019), on the clock the future-time check uses too.
            now = datetime_to_bcd_time(self.gateway.clock.now(), UTC)
            self._send(encode_reply(msg, MsgId.P_SERVER_TIME, ServerTimeReply(now),
                                    serial=self._next_serial()))
        else:
            self._reply(header, RESULT_UNSUPPORTED)
        return None

    def _locations(self, header: Header, version: int, reports: tuple[LocationReport, ...],
                   raws: list[bytes] | tuple[bytes, ...]) -> Coroutine[Any, Any, None] | None:
        if not self.authenticated:
            _error("unauthenticated").inc()
            POSITIONS.labels("unauthenticated").inc(len(reports))
            self._reply(header, RESULT_FAILURE)
            return None
        gw = self.gateway
        vid = header.terminal_phone
        info = gw.registry.find(vid)
        vclass = info.vehicle_class if info else "other"
        route = info.route_id if info else None  # the registry's route (coach route lengths)
        now = gw.clock.now()
        times = gw._times
        events: list[tuple[VehiclePosition | None, LocationReport, str]] = []
        impossible = False
        for r, raw in zip(reports, raws, strict=True):
            pos: VehiclePosition | None = None  # an alarm matters even without a position
            if r.status & STATUS_ENCRYPTED:
                # The privacy plug-in scrambled lat/lon (status bit 5): not a WGS-84 place.
                # Received fine, so acknowledged; only its alarm (if any) is published.
                _ENCRYPTED.inc()
            elif not r.status & 0x2 and not (r.lat_e6 or r.lon_e6):
                # Not positioned and no last known fix: (0, 0) is no place to put it.
                POSITIONS.labels("not_positioned").inc()
            else:
                try:
                    pos = _position(vid, r, vclass, times.utc(r.time_bcd), now, route)
                except RejectedPosition as exc:
                    POSITIONS.labels(exc.kind).inc()
                    impossible = True
            if pos is not None or r.alarm:
                events.append((pos, r, report_event_id(vid, raw)))
        if not events:
            # Impossible records get "bad message" so the terminal does not resend them; a
            # report without a fix was received fine, there is just nothing to publish.
            self._reply(header, RESULT_BAD_MESSAGE if impossible else RESULT_OK)
            return None
        return self._publish(header, version, vid, vclass, events)

    async def _publish(self, header: Header, version: int, vid: str, vclass: str,
                       events: list[tuple[VehiclePosition | None, LocationReport, str]]) -> None:
        bus = self.gateway.bus
        published = 0
        try:
            for pos, r, eid in events:
                if pos is not None:
                    await bus.publish(VEHICLE_POSITION, pos, key=vid, correlation_id=eid,
                                      event_id=eid)
                    published += 1
                if r.alarm:
                    alarm = _alarm(vid, vclass, pos, r, version, self.gateway.clock.now())
                    await bus.publish(TERMINAL_ALARM, alarm,
                                      key=vid, correlation_id=eid,
                                      event_id=report_event_id(vid, eid.encode(), b"alarm"))
        except Exception as exc:
            # Not taken by the bus: no ack, so the terminal keeps the report and resends it
            # (what was published already comes back with the same event ids: deduplicated).
            POSITIONS.labels("bus_unavailable").inc(
                sum(1 for p, _, _ in events if p is not None) - published)
            self.gateway._bus_failed(exc)
            self._reply(header, RESULT_FAILURE)
            return
        self._published += published
        self._reply(header, RESULT_OK)

    def _driver_identity(self, header: Header, card: DriverCard,
                         raw: bytes) -> Coroutine[Any, Any, None] | None:
        """0x0702: a driver signing in or out, published as ``DriverIdentity`` before the ack."""
        if not self.authenticated:
            _error("unauthenticated").inc()
            self._reply(header, RESULT_FAILURE)
            return None
        vid = header.terminal_phone
        try:
            event = identity_event(vid, card, now=self.gateway.clock.now())
        except RejectedCard as exc:
            _error(exc.kind).inc()
            log.debug("0x0702 from %s refused: %s", vid, exc)
            self._reply(header, RESULT_BAD_MESSAGE)
            return None
        return self._publish_identity(header, event, report_event_id(vid, raw, b"driver"))

    async def _publish_identity(self, header: Header, event: DriverIdentity, eid: str) -> None:
        try:
            await self.gateway.bus.publish(DRIVER_IDENTITY, event, key=event.vehicle_id,
                                           correlation_id=eid, event_id=eid)
        except Exception as exc:
            # Not taken: result 1, so the terminal keeps the card report and sends it again.
            _error("driver_identity_bus_unavailable").inc()
            self.gateway._bus_failed(exc)
            self._reply(header, RESULT_FAILURE)
            return
        self._reply(header, RESULT_OK)

    async def _register(self, msg: Message, body: TerminalRegister) -> None:
        gw = self.gateway
        phone = msg.terminal_phone
        try:
            # Closed registration admits the terminals the departments listed (the vehicle
            # registry, TTI_VEHICLE_REGISTRY) and those registered before; nobody else.
            known = gw.open_registration or gw.registry.find(phone.lstrip("0")) is not None \
                or await gw.terminals.find(phone) is not None
            if not known:
                _error("unknown_terminal").inc()
                resp = RegisterResponse(msg.header.serial, REGISTER_TERMINAL_UNKNOWN)
            else:
                rec = await gw.terminals.register(phone, body.plate, body.terminal_id)
                resp = RegisterResponse(msg.header.serial, REGISTER_OK, rec.auth_code)
        except Exception as exc:
            # 0x8100 has no "try later" result; without a reply the terminal retries.
            _error("store_unavailable").inc()
            log.warning("terminal store failed registering %s: %s", phone, exc)
            return
        self._send(encode_reply(msg, MsgId.P_REGISTER_RESPONSE, resp,
                                serial=self._next_serial()))

    async def _authenticate(self, msg: Message, body: TerminalAuth) -> None:
        gw = self.gateway
        phone = msg.terminal_phone
        try:
            rec = await gw.terminals.find(phone)
        except Exception as exc:
            _error("store_unavailable").inc()
            log.warning("terminal store failed authenticating %s: %s", phone, exc)
            self._reply(msg.header, RESULT_FAILURE)
            return
        if rec is None or not hmac.compare_digest(rec.auth_code.encode(),
                                                  body.auth_code.encode()):
            _error("auth_failed").inc()
            self._reply(msg.header, RESULT_FAILURE)
            return
        if self.closing:
            return
        self.phone = phone
        self.session_id = uuid.uuid4().hex
        if gw.commands is not None:
            # Before the reply: once told it is authenticated, the terminal is found by the
            # commands of every replica.
            await gw.commands.claim(self)
            if self.closing:
                gw.commands.session_closed(self)  # closed meanwhile: release the claim
                return
        old = gw.sessions.get(phone)
        if old is not None and old is not self:
            # A second connection for the same terminal replaces the first (digest section 5).
            _error("replaced").inc()
            old._forget_session()
            old.close()
        self.authenticated = True
        self.session_header = msg.header
        gw.sessions[phone] = self
        AUTHENTICATED.set(len(gw.sessions))
        self._reply(msg.header, RESULT_OK)
        if gw.commands is not None:
            # After the reply: commands that waited for this terminal follow its 0x8001.
            await gw.commands.session_opened(self)

    # ---- split messages -------------------------------------------------------------------
    def _subpacket(self, msg: Message) -> _Action | None:
        header = msg.header
        if header.msg_id not in _ASSEMBLED_IDS:
            self._reply(header, RESULT_UNSUPPORTED)
            return None
        if not self.authenticated and header.msg_id in (MsgId.T_LOCATION,
                                                        MsgId.T_BATCH_LOCATION):
            # Reassembly holds memory: only for terminals that proved who they are.
            _error("unauthenticated").inc()
            self._reply(header, RESULT_FAILURE)
            return None
        gw = self.gateway
        asm = self.assembler
        if asm is None:
            asm = self.assembler = SubpacketAssembler(
                timeout_s=gw.subpacket_timeout_s, max_assemblies=4,
                max_assembly_bytes=gw.max_split_bytes, max_total_bytes=gw.max_split_bytes)
            self._packets = {}
        packets = self._packets
        assert packets is not None
        key = AssemblyKey.of(header)
        try:
            whole = asm.add(header, msg.body_bytes, gw._mono())
        except Jt808Error as exc:
            _error(exc.kind).inc()
            packets.pop(key, None)
            self._reply(header, RESULT_BAD_MESSAGE)
            return None
        if whole is None:
            info = packets.get(key)
            if info is None:
                packets[key] = _PacketInfo(header)
            else:
                info.header = header
                if (header.pkg_index or 1) < info.first[0]:
                    info.first = (header.pkg_index or 1, header.serial)
            for gone in [k for k in packets if k not in asm]:  # evicted or expired
                del packets[gone]
            self._reply(header, RESULT_OK)
            return None
        packets.pop(key, None)
        try:
            body = decode_body(header.msg_id, whole, msg.version)
        except Jt808Error as exc:
            _error(exc.kind).inc()
            self._reply(header, RESULT_BAD_MESSAGE)
            return None
        # The packet completing the message is answered once the bus has taken it.
        return self._dispatch(msg, body, whole)

    def _ask_resends(self, now: float) -> None:
        """Ask for the missing packets of split messages that stalled (0x8003)."""
        asm, packets = self.assembler, self._packets
        if asm is None or packets is None or not len(asm):
            return
        gw = self.gateway
        for key in asm.expire(now):
            _error("subpacket_timeout").inc()
            packets.pop(key, None)
        for key in asm.idle(now, gw.resend_after_s):
            info = packets.get(key)
            if info is None or now - info.asked_at < gw.resend_after_s:
                continue
            if info.asks >= MAX_RESEND_REQUESTS:
                _error("subpacket_abandoned").inc()
                asm.discard(key)
                del packets[key]
                continue
            info.asks += 1
            info.asked_at = now
            h = info.header
            index, serial = info.first
            # The request names packet 1's serial; when packet 1 itself is missing, count back
            # from the lowest packet seen (the standard numbers the packets consecutively).
            first_serial = (serial - (index - 1)) & 0xFFFF
            # As many as one body holds: 2013 counts in a BYTE, 2019 in a WORD (4 + 2n ≤ 1023).
            missing = asm.missing(key)[: 509 if h.is_2019 else 255]
            _error("resend_requested").inc()
            self._send(encode_message(
                MsgId.P_RESEND_REQUEST, ResendRequest(first_serial, tuple(missing)),
                phone_bcd=h.phone_bcd, serial=self._next_serial(),
                version=2019 if h.is_2019 else 2013, protocol_version=h.protocol_version or 1))

    # ---- platform commands ----------------------------------------------------------------
    @property
    def session_is_2019(self) -> bool:
        """Whether the terminal authenticated with a 2019 header (then it gets 2019 bodies)."""
        return self.session_header is not None and self.session_header.is_2019

    def send_downlink(self, msg_id: int, body: Body) -> int:
        """Write a platform command to the authenticated terminal; returns its serial.

        A 2011/2013 terminal gets the 2013 layout, a 2019 one the 2019 layout (its header's
        protocol version), always with the raw phone digits it authenticated with.
        """
        h = self.session_header
        if h is None or self.closing:
            raise ConnectionError("no authenticated session on this connection")
        serial = self.serial
        frame = encode_message(msg_id, body, phone_bcd=h.phone_bcd, serial=serial,
                               version=2019 if h.is_2019 else 2013,
                               protocol_version=h.protocol_version or 1)
        self.serial = (serial + 1) & 0xFFFF  # only once the frame is built
        self._send(frame)
        return serial

    # ---- replies --------------------------------------------------------------------------
    def _next_serial(self) -> int:
        """The platform's own serial number for this connection (wraps at 0xFFFF)."""
        s = self.serial
        self.serial = (s + 1) & 0xFFFF
        return s

    def _reply(self, header: Header, result: int) -> None:
        """0x8001 answering ``header``, in its layout, echoing its raw phone digits.

        Same bytes as ``encode_reply`` (checked by the tests), built from a cached header
        prefix in about a third of its time: every frame gets one.
        """
        key = (header.phone_bcd, header.protocol_version)
        if key != self._reply_key:
            proto = header.protocol_version
            if proto is None:
                prefix = struct.pack(">HH6s", MsgId.P_GENERAL_RESPONSE, 5,
                                     bytes.fromhex(header.phone_bcd))
            else:
                prefix = struct.pack(">HHB10s", MsgId.P_GENERAL_RESPONSE, 0x4000 | 5, proto,
                                     bytes.fromhex(header.phone_bcd))
            self._reply_key, self._reply_prefix = key, prefix
            self._reply_xor = xor_checksum(prefix)
        serial = self.serial
        self.serial = (serial + 1) & 0xFFFF
        hserial, mid = header.serial, header.msg_id
        # XOR is linear: fold the three words first, then their two bytes, then the result.
        x = serial ^ hserial ^ mid
        check = self._reply_xor ^ ((x >> 8) ^ x ^ result) & 0xFF
        tail = _REPLY_TAIL.pack(serial, hserial, mid, result) + bytes((check,))
        self._send(b"\x7e" + escape(self._reply_prefix + tail) + b"\x7e")

    def _send(self, data: bytes) -> None:
        if self.closing:
            return
        self._out.append(data)
        if self._flush_handle is None:
            # One write per connection per loop iteration, however many frames it answered.
            self._flush_handle = self.gateway._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        out = self._out
        t = self.transport
        if not out or t is None or t.is_closing():
            out.clear()
            return
        t.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        if t.get_write_buffer_size() > 4 * self.gateway.max_write_buffer:
            # Reading paused at the high-water mark, yet queued frames kept adding replies.
            _error("write_buffer_overflow").inc()
            self.abort()

    # ---- state ----------------------------------------------------------------------------
    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and not self.closing and self.transport is not None:
            self.last_seen = self.gateway._mono()  # our pause is not the terminal's silence
            self.transport.resume_reading()

    def _forget_session(self) -> None:
        gw = self.gateway
        if self.phone is not None and gw.sessions.get(self.phone) is self:
            del gw.sessions[self.phone]
            AUTHENTICATED.set(len(gw.sessions))
        if self.authenticated and gw.commands is not None:
            gw.commands.session_closed(self)
        self.authenticated = False

    def _close_when_idle(self) -> None:
        """Close once the frames in hand are answered (logout, oversize frame)."""
        if self.worker is None:
            self.close()
        else:
            self.worker.add_done_callback(lambda _t: self.close())
            self._pause(_PAUSE_STOP)

    def close(self) -> None:
        """Send the replies in hand, then close."""
        if self.closing:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        self.closing = True
        self.closing_at = self.gateway._mono()
        if self.transport is not None:
            self.transport.close()  # the sweeper aborts it if the terminal never reads the rest

    def abort(self) -> None:
        """Close at once, dropping unsent replies."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _peer(self) -> str:
        return str(self.transport.get_extra_info("peername")) if self.transport else "?"


def _still_open(c: TerminalConnection) -> bool:
    """Neither closing nor told to close once its frames in hand are answered."""
    return not c.closing and not c.paused & _PAUSE_STOP


def _lenient_header(frame: bytes) -> Header | None:
    """The header of a frame whose body length or check code is wrong, to answer it."""
    try:
        return decode_header(unescape(frame[1:-1]))
    except Jt808Error:
        return None


def _alarm(vid: str, vclass: str, pos: VehiclePosition | None, r: LocationReport,
           version: int, now: datetime) -> TerminalAlarm:
    observed = pos.observed_at if pos is not None else now
    return TerminalAlarm(
        vehicle_id=vid, lon=pos.lon if pos is not None else 0.0,
        lat=pos.lat if pos is not None else 0.0, observed_at=observed,
        alarms=tuple(r.alarm_flags(version)), alarm_bits=r.alarm, vehicle_class=vclass)


class Jt808Gateway:
    """The TCP server and its sessions."""

    def __init__(self, *, bus: EventBus, terminals: TerminalStore, registry: VehicleRegistry,
                 heartbeat_s: float = 60.0, idle_factor: float = 3.0,
                 max_connections: int = 20_000, open_registration: bool = True,
                 resend_after_s: float = 10.0, subpacket_timeout_s: float = 120.0,
                 max_frames_per_s: float = 100.0, max_write_buffer: int = 64 * 1024,
                 max_split_bytes: int = 256 * 1024, max_registrations_per_s: float = 50.0,
                 clock: Clock | None = None) -> None:
        if max_frames_per_s <= 0 or max_write_buffer < 1024 or heartbeat_s <= 0:
            raise ValueError("max_frames_per_s, max_write_buffer and heartbeat_s must be "
                             "positive (write buffer at least 1 KiB)")
        if not max_registrations_per_s > 0:  # also refuses NaN
            raise ValueError(f"max_registrations_per_s must be positive, not "
                             f"{max_registrations_per_s!r}")
        self.bus = bus
        self.terminals = terminals
        self.registry = registry
        self.clock = clock or Clock()
        # Bound once: the hot path reads it for every read of every connection.
        self._mono = self.clock.monotonic
        self.idle_timeout_s = heartbeat_s * idle_factor
        self.max_connections = max_connections
        self.open_registration = open_registration
        self.resend_after_s = resend_after_s
        self.subpacket_timeout_s = max(subpacket_timeout_s, resend_after_s)
        self.close_grace_s = min(5.0, self.idle_timeout_s)
        self.max_frames_per_s = float(max_frames_per_s)
        # A burst of two seconds' budget (at least one full read of small frames) is allowed.
        self.frame_burst = max(2 * self.max_frames_per_s, 64.0)
        self.max_write_buffer = max_write_buffer
        self.max_split_bytes = max(max_split_bytes, MAX_FRAME_SIZE)
        # One bucket for the whole gateway: each registration writes to the terminal store, and
        # a flood of fresh connections registering once each passes every per-connection limit.
        self.max_registrations_per_s = float(max_registrations_per_s)
        self.registration_burst = max(3 * self.max_registrations_per_s, 1.0)
        self._registration_tokens = self.registration_burst
        self._registration_at = self._mono()
        self.sessions: dict[str, TerminalConnection] = {}
        """Authenticated connections by canonical terminal phone."""
        self.commands: CommandRouter | None = None
        """Routes platform commands to terminals (set by ``CommandRouter.start``)."""
        self.connections: set[TerminalConnection] = set()
        self.stopping = False
        self.draining = False
        """Set by :meth:`drain`: no new connections, the open ones are being closed."""
        self._drain_total = 0
        self._drain_period_s = 0.0
        self._drained = False
        self._drain_empty: asyncio.Event | None = None
        self._times = _TimeCache()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)
        self._bus_failing = False

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting terminals."""
        self._loop = asyncio.get_running_loop()
        self.stopping = self.draining = self._drained = False
        self._server = await self._loop.create_server(
            lambda: TerminalConnection(self), host, port, backlog=4096, reuse_address=True)
        self._sweeper = self._loop.create_task(self._sweep(), name="jt808-sweeper")

    def readiness(self) -> tuple[bool, str]:
        """Readiness check ``jt808``: false once :meth:`drain` has begun (or the gateway stopped),
        so Kubernetes takes the pod out of the balancer while its terminals move away."""
        if self.draining:
            return False, (f"draining: {self._drain_left()} of {self._drain_total} connections "
                           f"left to close over {self._drain_period_s:g} s; no new connections")
        if self.stopping or self._drained:
            return False, "stopped"
        if self._server is None:
            return False, "not started"
        return True, "listening"

    def _drain_left(self) -> int:
        return sum(1 for c in self.connections if _still_open(c))

    async def drain(self, period_s: float) -> None:
        """Stop accepting; close the open connections in even batches over ``period_s``.

        Each connection closes only once the frames in hand are answered: a report the bus took
        is acknowledged before the close, one it did not take is not (the terminal resends it,
        to another replica). Terminals reconnect through the balancer. Batches are
        ``DRAIN_MIN_INTERVAL_S`` apart at least, each closing its share of what is still open
        (connections their terminal closes meanwhile leave the schedule); the drain ends early
        when none is left. ``period_s`` ≤ 0 closes every connection at once. Clock seconds: a
        faster clock drains faster, never slower. Once only; :meth:`stop` then finishes.
        """
        if not period_s >= 0:  # also refuses NaN
            raise ValueError(f"drain period must be 0 or more seconds, not {period_s!r}")
        if self._server is None or self.draining or self._drained or self.stopping:
            return  # never started, or drained (or stopped) already
        self.draining = True
        self._drain_empty = asyncio.Event()
        self._server.close()  # the listening socket goes: new connections are refused
        clock = self.clock
        started = clock.monotonic()
        total = self._drain_total = self._drain_left()
        self._drain_period_s = period_s
        steps = max(1, min(total, int(period_s / DRAIN_MIN_INTERVAL_S + 1e-9)))
        interval = period_s / steps if period_s > 0 else 0.0
        log.info("JT/T 808 drain: closing %d connections over %g s (not ready, no new "
                 "connections)", total, period_s,
                 extra={"connections": total, "drain_s": period_s, "batches": steps})
        closed = 0
        try:
            for step in range(steps):
                if step:
                    await self._drain_sleep(started + step * interval - clock.monotonic())
                # Unauthenticated ones first: they hold no session yet.
                left = sorted((c for c in self.connections if _still_open(c)),
                              key=lambda c: c.authenticated)
                if not left:
                    break
                share = -(-len(left) // (steps - step))  # ceil: the last batch takes the rest
                for c in left[:share]:
                    c._close_when_idle()
                    closed += 1
                DRAINED.inc(share)
                DRAIN_LEFT.set(len(left) - share)
            await self._drain_sleep(None)  # the last closes: answers flushed, FIN sent
        finally:
            self.draining = False
            self._drained = True
            DRAIN_LEFT.set(0)
            log.info("JT/T 808 drain done: %d connections closed, %d gone on their own, in "
                     "%.1f s", closed, total - closed, clock.monotonic() - started,
                     extra={"closed": closed, "gone_on_their_own": total - closed,
                            "still_open": len(self.connections)})

    async def _drain_sleep(self, seconds: float | None) -> None:
        """Sleep ``seconds`` of the clock (None: at most the close grace in real time), or less
        when no connection is left."""
        empty = self._drain_empty
        assert empty is not None
        if not self.connections:
            return
        waiter = asyncio.ensure_future(empty.wait())
        if seconds is None:
            timer = asyncio.ensure_future(asyncio.sleep(
                self.clock.real_seconds(self.close_grace_s + 1.0)))
        else:
            timer = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (waiter, timer):
                t.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)

    async def stop(self) -> None:
        """Stop accepting; answer (and ack) the frames in hand; close every connection."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for c in list(self.connections):
            c._pause(_PAUSE_STOP)
        workers = [c.worker for c in self.connections if c.worker is not None]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=5.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for c in list(self.connections):
            c.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def _take_registration(self) -> bool:
        """Take one token from the gateway-wide registration bucket; False when it is empty."""
        now = self._mono()
        tokens = min(self.registration_burst, self._registration_tokens
                     + (now - self._registration_at) * self.max_registrations_per_s)
        self._registration_at = now
        if tokens < 1.0:
            self._registration_tokens = tokens
            return False
        self._registration_tokens = tokens - 1.0
        return True

    def _forget(self, conn: TerminalConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            CONNECTIONS.set(len(self.connections))
            if not self.connections and self._drain_empty is not None:
                self._drain_empty.set()
        conn._forget_session()

    async def _sweep(self) -> None:
        """Close silent connections; ask for stalled split messages' missing packets."""
        interval = min(max(min(self.idle_timeout_s, self.resend_after_s) / 4, 0.01), 1.0)
        clock = self.clock
        while True:
            await clock.sleep(interval)
            now = clock.monotonic()
            idle_before = now - self.idle_timeout_s
            abort_before = now - self.close_grace_s
            for c in list(self.connections):
                try:
                    self._sweep_one(c, now, idle_before, abort_before)
                except Exception:  # one connection's bug must not stop the sweeps
                    _error("internal").inc()
                    log.exception("JT/T 808 sweep failed for %s", c._peer())

    def _sweep_one(self, c: TerminalConnection, now: float, idle_before: float,
                   abort_before: float) -> None:
        if c.closing:
            # close() waits for the write buffer to drain; a terminal that does not read
            # would hold the connection forever.
            if c.closing_at < abort_before:
                _error("close_timeout").inc()
                c.abort()
        elif c.last_seen < idle_before and not c.paused & (_PAUSE_RATE | _PAUSE_BACKLOG):
            _error("idle_timeout").inc()
            if c.paused & _PAUSE_WRITE:
                c.abort()  # it does not read: no point in flushing
            else:
                c.close()
        elif c.assembler is not None:
            c._ask_resends(now)

    def _bus_failed(self, exc: Exception) -> None:
        if not self._bus_failing:
            self._bus_failing = True
            if isinstance(exc, BusError):
                log.warning("bus refused positions; terminals get result 1 and resend: %s", exc)
            else:
                log.error("publishing positions failed; terminals get result 1", exc_info=exc)

    def _bus_ok(self) -> None:
        if self._bus_failing:
            self._bus_failing = False
            log.warning("bus takes positions again")
