"""Test support for the JT/T 808 gateway: a real TCP terminal built from the codec (it also reads
and answers platform commands), a gateway running on port 0 with a real ``MemoryBus`` and a
``SqliteTerminalStore``, and a cluster of gateway replicas with command routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from services.collector.commands import CommandRouter
from services.collector.jt808_gateway import Jt808Gateway
from services.collector.registry import VehicleRegistry
from services.collector.terminals import SqliteTerminalStore, TerminalStore
from shared.bus import EventBus
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.events import (
    COMMAND_OUTCOME,
    TERMINAL_ALARM,
    TERMINAL_COMMAND,
    VEHICLE_POSITION,
    CommandOutcome,
    TerminalAlarm,
    TerminalCommand,
    VehiclePosition,
)
from shared.jt808 import (
    FrameSplitter,
    LocationReport,
    Message,
    MsgId,
    PlatformGeneralResponse,
    PositionReply,
    RegisterResponse,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalRegister,
    Version,
    datetime_to_bcd_time,
    decode_frame,
    encode_message,
)

WUHAN_LAT_E6 = 30_512_345
WUHAN_LON_E6 = 114_412_345


def metric(name: str, **labels: str) -> float:
    """Current value of a Prometheus sample (0 when never set)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def report_at(moment: datetime | None = None, **fields: Any) -> LocationReport:
    """A positioned location report in Wuhan at ``moment`` (default: now, whole seconds)."""
    moment = moment or datetime.now(UTC).replace(microsecond=0)
    values: dict[str, Any] = dict(alarm=0, status=0x3, lat_e6=WUHAN_LAT_E6,
                                  lon_e6=WUHAN_LON_E6, altitude_m=25, speed_0_1kmh=653,
                                  direction_deg=87, time_bcd=datetime_to_bcd_time(moment))
    values.update(fields)
    return LocationReport(**values)


class Terminal:
    """A JT/T 808 terminal over a real TCP connection (asyncio streams + the codec)."""

    def __init__(self, phone: str = "13912345678", *, version: Version = 2013,
                 protocol_version: int = 1) -> None:
        self.phone = phone
        self.version: Version = version
        self.protocol_version = protocol_version
        self.serial = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.splitter = FrameSplitter()
        self.inbox: list[Message] = []

    async def connect(self, port: int, host: str = "127.0.0.1") -> Terminal:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def next_serial(self) -> int:
        s = self.serial
        self.serial = (s + 1) & 0xFFFF
        return s

    def frame(self, msg_id: int, body: object, *, serial: int | None = None) -> bytes:
        """A wire frame from this terminal (its phone, version and next serial)."""
        return encode_message(msg_id, body,  # type: ignore[arg-type]
                              phone_bcd=self.phone,
                              serial=self.next_serial() if serial is None else serial,
                              version=self.version, protocol_version=self.protocol_version)

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, msg_id: int, body: object) -> int:
        """Send one message; returns its serial."""
        serial = self.next_serial()
        await self.send_raw(self.frame(msg_id, body, serial=serial))
        return serial

    async def recv(self, wait_s: float = 5.0) -> Message:
        """The next frame from the gateway, decoded."""
        assert self.reader is not None
        async with asyncio.timeout(wait_s):
            while not self.inbox:
                data = await self.reader.read(4096)
                if not data:
                    raise ConnectionError("gateway closed the connection")
                self.inbox.extend(decode_frame(f) for f in self.splitter.feed(data))
        return self.inbox.pop(0)

    async def reply(self, wait_s: float = 5.0) -> PlatformGeneralResponse:
        """The next 0x8001 body."""
        msg = await self.recv(wait_s)
        assert isinstance(msg.body, PlatformGeneralResponse), msg
        return msg.body

    async def command(self, wait_s: float = 5.0) -> Message:
        """The next platform command (anything but a 0x8001), skipping general responses."""
        async with asyncio.timeout(wait_s):
            while True:
                msg = await self.recv(wait_s)
                if msg.msg_id != MsgId.P_GENERAL_RESPONSE:
                    return msg

    async def answer(self, command: Message, result: int = 0) -> int:
        """Answer ``command`` with 0x0001 ``result``; returns the answer's serial."""
        return await self.send(MsgId.T_GENERAL_RESPONSE,
                               TerminalGeneralResponse(command.header.serial, command.msg_id,
                                                       result))

    async def answer_position(self, query: Message, report: LocationReport) -> int:
        """Answer a 0x8201 position query with 0x0201."""
        return await self.send(MsgId.T_POSITION_REPLY,
                               PositionReply(query.header.serial, report))

    async def expect_silence(self, seconds: float = 0.2) -> None:
        """Nothing arrives within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            msg = await self.recv(seconds)
            raise AssertionError(f"unexpected frame {msg}")

    async def closed_by_peer(self, wait_s: float = 5.0) -> bool:
        """True once the gateway has closed the connection (read returns EOF or resets)."""
        assert self.reader is not None
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False

    def register_body(self) -> TerminalRegister:
        model = "TTI-TEST-2019" if self.version == 2019 else "TTI-TEST"
        return TerminalRegister(42, 100, "TTITS", model, f"T{self.phone[-6:]}", 1, "鄂A12345")

    async def register(self) -> Message:
        await self.send(MsgId.T_REGISTER, self.register_body())
        return await self.recv()

    async def authenticate(self, code: str) -> PlatformGeneralResponse:
        auth = (TerminalAuth(code, "860000000000001", "1.0.7") if self.version == 2019
                else TerminalAuth(code))
        await self.send(MsgId.T_AUTH, auth)
        return await self.reply()

    async def login(self) -> str:
        """Register and authenticate; returns the auth code."""
        msg = await self.register()
        assert isinstance(msg.body, RegisterResponse) and msg.body.result == 0, msg
        resp = await self.authenticate(msg.body.auth_code)
        assert resp.result == 0, resp
        return msg.body.auth_code


@dataclass
class Harness:
    """A running gateway and what reached the bus."""

    gateway: Jt808Gateway
    bus: EventBus
    store: TerminalStore
    positions: list[Envelope[VehiclePosition]] = field(default_factory=list)
    alarms: list[Envelope[TerminalAlarm]] = field(default_factory=list)
    terminals: list[Terminal] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.gateway.port

    async def terminal(self, phone: str = "13912345678", **kwargs: Any) -> Terminal:
        t = await Terminal(phone, **kwargs).connect(self.port)
        self.terminals.append(t)
        return t

    async def wait_for(self, predicate: Callable[[], bool], wait_s: float = 5.0) -> None:
        async with asyncio.timeout(wait_s):
            while not predicate():  # noqa: ASYNC110 - polls state that several tasks change
                await asyncio.sleep(0.005)

    async def wait_positions(self, n: int, wait_s: float = 5.0) -> list[VehiclePosition]:
        await self.wait_for(lambda: len(self.positions) >= n, wait_s)
        return [e.payload for e in self.positions]


@contextlib.asynccontextmanager
async def running_gateway(tmp_path: Path, *, bus: EventBus | None = None,
                          store: TerminalStore | None = None,
                          registry: VehicleRegistry | None = None,
                          subscribe: bool = True, close_bus: bool = True,
                          start_bus: bool = True, **kwargs: Any) -> AsyncIterator[Harness]:
    """A gateway on 127.0.0.1:0 with a memory bus (unless given) and a SQLite store."""
    bus = bus or MemoryBus(partitions=4)
    if start_bus:
        await bus.start()
    own_store = store is None
    store = store or SqliteTerminalStore(str(tmp_path / "terminals.db"))
    if own_store:
        await store.open()
    gw = Jt808Gateway(bus=bus, terminals=store, registry=registry or VehicleRegistry(),
                      **kwargs)
    h = Harness(gw, bus, store)
    if subscribe:
        async def on_position(env: Envelope[VehiclePosition]) -> None:
            h.positions.append(env)

        async def on_alarm(env: Envelope[TerminalAlarm]) -> None:
            h.alarms.append(env)

        await bus.subscribe(VEHICLE_POSITION, on_position, durable="test")
        await bus.subscribe(TERMINAL_ALARM, on_alarm, durable="test")
    await gw.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        for t in h.terminals:
            await t.close()
        await gw.stop()
        if close_bus:
            await bus.close()
        if own_store:
            await store.close()


def hours_ago(hours: float) -> datetime:
    """A whole-second UTC time ``hours`` ago."""
    return (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)


@dataclass
class Cluster:
    """Collector replicas (gateway + command router each) on one bus and one terminal store
    file, and every command outcome that reached the bus."""

    bus: EventBus
    replicas: list[Harness]
    routers: list[CommandRouter]
    outcomes: list[CommandOutcome] = field(default_factory=list)

    async def publish(self, cmd: TerminalCommand) -> None:
        await self.bus.publish(TERMINAL_COMMAND, cmd, key=cmd.vehicle_id,
                               event_id=cmd.command_id)

    def statuses(self, command_id: str) -> list[str]:
        return [o.status for o in self.outcomes if o.command_id == command_id]

    async def outcome(self, command_id: str, status: str, wait_s: float = 5.0) -> CommandOutcome:
        """The first outcome ``status`` of the command, once it has arrived."""
        async with asyncio.timeout(wait_s):
            while True:
                for o in self.outcomes:
                    if o.command_id == command_id and o.status == status:
                        return o
                await asyncio.sleep(0.005)


def text_command(vehicle_id: str, command_id: str = "cmd-1", *, ttl_s: float = 60.0,
                 **fields: Any) -> TerminalCommand:
    """A TTS + display text command for ``vehicle_id``, valid for ``ttl_s``."""
    now = datetime.now(UTC)
    values: dict[str, Any] = dict(
        command_id=command_id, vehicle_id=vehicle_id, kind="text", requested_at=now,
        expires_at=now + timedelta(seconds=ttl_s), requested_by="test",
        text="您已连续驾驶4小时，请立即休息", flags=("tts", "display"), correlation="w-1")
    values.update(fields)
    return TerminalCommand(**values)


@contextlib.asynccontextmanager
async def command_cluster(tmp_path: Path, *, replicas: int = 1,
                          buses: list[EventBus] | None = None, timeout_s: float = 30.0,
                          poll_s: float = 0.02, replica_count: int | None = None,
                          **router_kwargs: Any) -> AsyncIterator[Cluster]:
    """``replicas`` gateways with routers (replica i of N) sharing one SQLite file.

    N is ``replica_count`` (default ``replicas``): more than run, as under an autoscaler whose
    ceiling the StatefulSet's TTI_REPLICA_COUNT is.

    Without ``buses`` every replica uses one memory bus (started and closed here); with them,
    replica i uses ``buses[i]`` (started and closed by the caller), e.g. one NATS connection
    each. Commands are published and outcomes collected through the first bus.
    """
    own = buses is None
    if buses is None:
        buses = [MemoryBus(partitions=4)] * replicas
        await buses[0].start()
    cluster = Cluster(buses[0], [], [])

    async def on_outcome(env: Envelope[CommandOutcome]) -> None:
        cluster.outcomes.append(env.payload)

    outcomes = await buses[0].subscribe(COMMAND_OUTCOME, on_outcome, durable="test-outcomes")
    stack = contextlib.AsyncExitStack()
    try:
        for i in range(replicas):
            bus = buses[i]
            store = SqliteTerminalStore(str(tmp_path / "terminals.db"))
            await store.open()
            stack.push_async_callback(store.close)
            h = await stack.enter_async_context(running_gateway(
                tmp_path, bus=bus, store=store, subscribe=False, close_bus=False,
                start_bus=False))
            router = CommandRouter(h.gateway, bus=bus, store=store, replica_index=i,
                                   replica_count=replica_count or replicas,
                                   timeout_s=timeout_s, poll_s=poll_s,
                                   **router_kwargs)
            await router.start()
            stack.push_async_callback(router.stop)
            cluster.replicas.append(h)
            cluster.routers.append(router)
        yield cluster
    finally:
        await stack.aclose()
        await outcomes.stop()
        if own:
            await buses[0].close()
