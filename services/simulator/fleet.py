"""Fleet simulator: virtual vehicles that are real JT/T 808 terminals over TCP.

Each vehicle registers (0x0100), authenticates (0x0102) with the code it was given, then sends a
location report (0x0200) every few seconds and a heartbeat (0x0002) between them, and counts the
platform's 0x8001 acknowledgments. Like real terminals they answer platform commands: a text
(0x8300) with a general reply (0x0001, result 0) — the text is kept (``texts``, the status
route) and counted —, a position query (0x8201) with 0x0201 and the current fix, an alarm
confirmation (0x8203) with 0x0001. Vehicles drive the road graph (``world.py``); incidents slow a
segment down for a while. The fleet lives on the clock it is given (``shared/clock.py``): its
reports carry clock time and it paces itself with the clock's sleep, so under a clock at rate 10
every vehicle drives, reports and heartbeats ten times faster than real time. Ground truth —
each segment traversal with its true speed — goes to a JSON-lines file so matching and speed
accuracy can be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import orjson
from aiohttp import web

from services.simulator.safety_demo import (
    ScenarioVehicle,
    departure,
    plan_scenario,
    scenario_day,
)
from services.simulator.world import Incident, Leg, Vehicle, World, parse_incident
from shared.clock import Clock
from shared.config import Config
from shared.errors import BadRequest
from shared.jt808 import (
    RESULT_OK,
    RESULT_UNSUPPORTED,
    FrameSplitter,
    Heartbeat,
    Jt808Error,
    LocationReport,
    Message,
    MsgId,
    PlatformGeneralResponse,
    PositionReply,
    RegisterResponse,
    TerminalAuth,
    TerminalGeneralResponse,
    TerminalRegister,
    TextMessage,
    datetime_to_bcd_time,
    decode_frame,
    encode_message,
)
from shared.roadnet import RoadNetwork

log = logging.getLogger("tti.simulator")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    """What the simulator needs: where the collector is, the map, the fleet, the incidents."""

    host: str = "127.0.0.1"
    port: int = 6808
    osm: str = ""
    vehicles: int = 120
    interval_s: float = 5.0
    heartbeat_s: float = 30.0
    seed: int = 1
    noise_m: float = 5.0
    incidents: tuple[str, ...] = ()
    truth_path: str = "var/sim/truth.jsonl"
    registry_path: str = "var/sim/vehicles.csv"
    version: int = 2013
    bus_routes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    bus_stops: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    """Per route key, the (segment_id, offset_m) of each stop where its buses dwell."""
    demo_incident_segment: str | None = None
    gtfs_rt_share: float = 0.0
    """Share of the buses that report through the GTFS-rt feed instead of JT/T 808 (each bus
    uses one channel, so no bus is counted twice downstream)."""
    safety_demo: bool = False
    """Add the four scripted vehicles of ``safety_demo.py`` (``tti run --safety-demo``)."""
    tunnel_segment_ids: tuple[str, ...] = ()
    """The demo tunnel's segments (both directions), which the safety demo closes."""


def sim_config_from(config: Config, *, demo: object | None = None) -> SimConfig:
    """SimConfig from the service configuration (and the demo region's routes, if any)."""
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    stops: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    incident_seg = None
    tunnel: tuple[str, ...] = ()
    if demo is not None:
        patterns = [(f"{r.route_id}:{p.direction_id}", p)
                    for r in demo.bus_routes for p in r.patterns]  # type: ignore[attr-defined]
        routes = tuple((key, tuple(p.segment_ids)) for key, p in patterns)
        stops = tuple((key, tuple((st.segment_id, st.offset_m) for st in p.stops))
                      for key, p in patterns)
        incident_seg = demo.incident_segment_id  # type: ignore[attr-defined]
        tunnels = demo.tunnels  # type: ignore[attr-defined]
        tunnel = tuple(tunnels[0].segment_ids) if tunnels else ()
    return SimConfig(
        host=config.sim_host, port=config.jt808_port, osm=config.osm,
        vehicles=config.sim_vehicles, interval_s=config.sim_interval_s, seed=config.sim_seed,
        noise_m=config.sim_noise_m, incidents=config.sim_incidents,
        truth_path=config.sim_truth or str(config.var_path / "sim" / "truth.jsonl"),
        registry_path=str(config.var_path / "sim" / "vehicles.csv"),
        bus_routes=routes, bus_stops=stops, demo_incident_segment=incident_seg,
        tunnel_segment_ids=tunnel)


@dataclass(slots=True)
class TerminalStats:
    """Counters the simulator keeps (also the load generator's output)."""

    connected: int = 0
    registered: int = 0
    authenticated: int = 0
    reports_sent: int = 0
    reports_acked: int = 0
    reports_nacked: int = 0
    heartbeats_sent: int = 0
    reconnects: int = 0
    texts_received: int = 0
    """0x8300 text messages received (each answered 0x0001 result 0)."""
    position_queries: int = 0
    """0x8201 position queries answered with 0x0201."""
    alarm_confirmations: int = 0
    """0x8203 alarm confirmations answered with 0x0001."""
    commands_unsupported: int = 0
    """Other platform commands, answered 0x0001 result 3 (unsupported)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivedText:
    """A 0x8300 text a simulated terminal received (and answered)."""

    vehicle_id: str
    text: str
    flags: tuple[str, ...]
    serial: int
    received_at: datetime
    """Clock time, UTC."""


_PLATFORM_ANSWERS = frozenset({MsgId.P_GENERAL_RESPONSE, MsgId.P_RESEND_REQUEST,
                               MsgId.P_SERVER_TIME, MsgId.P_REGISTER_RESPONSE})
"""Platform messages that answer the terminal (nothing to answer back); the rest are commands."""
SETTLE_S = 600.0
"""Scenario vehicles leave no earlier than this many clock seconds after the fleet starts."""
MAX_TEXTS = 1000
"""Texts kept for the status route (the newest; the counter counts them all)."""


@dataclass(slots=True)
class _Terminal:
    vehicle: Vehicle
    auth_code: str = ""
    serial: int = 0
    pending: dict[int, int] = field(default_factory=dict)  # serial -> msg id awaiting a reply
    texts: list[str] = field(default_factory=list)

    def next_serial(self) -> int:
        s = self.serial
        self.serial = (s + 1) & 0xFFFF
        return s


@dataclass(frozen=True, slots=True, kw_only=True)
class BusFix:
    """Where one bus of the fleet is now (true position), for the simulator's GTFS-rt feed."""

    vehicle_id: str
    plate: str
    route_id: str
    direction_id: int | None
    lon: float
    lat: float
    speed_kmh: float
    heading_deg: float
    observed_at: datetime
    route_progress: float | None  # share of its route pattern driven; None while off the route


def _open_append(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _terminal_id(v: Vehicle) -> str:
    return f"T{v.phone[-6:]}"


class Simulator:
    """Runs the fleet against a collector; ``start``/``stop`` around its lifetime."""

    def __init__(self, config: SimConfig, *, network: RoadNetwork | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.network = network
        self.clock = clock or Clock()
        self.world: World | None = None
        self.fleet: list[Vehicle] = []
        self.feed_buses: set[str] = set()
        self.scenario: list[tuple[ScenarioVehicle, Vehicle]] = []
        """The safety demo's scripted vehicles (empty without ``safety_demo``)."""
        self.scenario_departures: dict[str, datetime] = {}
        self.stats = TerminalStats()
        self.texts: deque[ReceivedText] = deque(maxlen=MAX_TEXTS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._truth: IO[bytes] | None = None
        self._t0 = self.clock.monotonic()  # reset by start(); so bus_fixes() works before
        self._epoch = self.clock.now()
        self._running = False
        self._route_offsets: dict[str, tuple[dict[str, float], float]] = {}

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load the map, build the fleet, write the vehicle registry (idempotent)."""
        if self.world is not None:
            return
        if self.network is None:
            if not self.config.osm:
                raise BadRequest("the simulator needs a road network (--osm FILE)")
            self.network = RoadNetwork.from_osm(self.config.osm)
        hot = self.config.demo_incident_segment or self._busy_segment()
        self.world = World(self.network, seed=self.config.seed, bus_routes=self.config.bus_routes,
                           bus_stops={k: dict(v) for k, v in self.config.bus_stops},
                           hot_segment=hot)
        self.demo_incident_segment = hot
        for spec in self.config.incidents:
            self.world.incidents.append(parse_incident(spec, self.network, default_segment=hot))
        self.fleet = self.world.make_fleet(self.config.vehicles)
        buses = [v for v in self.fleet if v.route_id]
        if self.config.safety_demo:
            if not self.config.tunnel_segment_ids:
                raise BadRequest("the safety demo needs the demo city (its tunnel)")
            for sv in plan_scenario(self.network, self.config.tunnel_segment_ids):
                v = Vehicle(phone=sv.phone, plate=sv.plate, vehicle_class=sv.vehicle_class,
                            route_id=sv.route_id)
                self.scenario.append((sv, v))
                self.fleet.append(v)
        n_feed = round(len(buses) * self.config.gtfs_rt_share)
        # Every other bus, so both channels cover every route.
        self.feed_buses = {v.vehicle_id for v in buses[1::2][:n_feed]}
        if len(self.feed_buses) < n_feed:
            self.feed_buses |= {v.vehicle_id for v in buses[::2][:n_feed - len(self.feed_buses)]}
        self._write_registry()

    def _busy_segment(self) -> str:
        """For a map without demo metadata: a long segment of the highest class near the centre."""
        assert self.network is not None
        rank = {"motorway": 0, "trunk": 1, "primary": 2, "secondary": 3, "tertiary": 4}
        min_lon, min_lat, max_lon, max_lat = self.network.bbox()
        cx, cy = (min_lon + max_lon) / 2, (min_lat + max_lat) / 2

        def key(seg_id: str) -> tuple[int, float]:
            s = self.network.segments[seg_id]  # type: ignore[union-attr]
            mx, my = s.coords[len(s.coords) // 2]
            return (rank.get(s.road_class, 9), math.hypot(mx - cx, my - cy) * 1e5 - s.length_m)

        return min(self.network.segments, key=key)

    def _write_registry(self) -> None:
        path = Path(self.config.registry_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["terminal_phone,plate,vehicle_class,operator,route_id"]
        for v in self.fleet:
            route = (v.route_id or "").split(":")[0]
            lines.append(f"{v.phone},{v.plate},{v.vehicle_class},TTI Sim,{route}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def add_incident(self, spec: str) -> Incident:
        """Add an incident now; its start is relative to the simulator's start."""
        self.prepare()
        assert self.world is not None and self.network is not None
        inc = parse_incident(spec, self.network, default_segment=self.demo_incident_segment)
        self.world.incidents.append(inc)
        log.info("incident added", extra={"segment": inc.segment_id, "speed_kmh": inc.speed_kmh,
                                          "start_s": inc.start_s, "duration_s": inc.duration_s})
        return inc

    def sim_time(self) -> float:
        """Clock seconds since the simulator started."""
        return self.clock.monotonic() - self._t0

    def bus_fixes(self) -> list[BusFix]:
        """Current true positions of the buses (vehicles on a route), for the GTFS-rt feed."""
        if self.world is None or self.network is None:
            return []
        t = self.sim_time()
        now = self._epoch + timedelta(seconds=t)
        out = []
        for v in self.fleet:
            if v.vehicle_id not in self.feed_buses or not v.route_id:
                continue
            fix = self.world.fix(v, t)
            self._record_truth(v, self.world.drop_past(v, t))
            route_id, sep, direction = v.route_id.rpartition(":")  # "<route_id>:<direction_id>"
            if not sep or not direction.isdigit():
                route_id, direction = v.route_id, ""
            offsets, total = self._route_offsets_of(v)
            done = offsets.get(fix.segment_id)
            out.append(BusFix(
                vehicle_id=v.vehicle_id, plate=v.plate, route_id=route_id,
                direction_id=int(direction) if direction else None, lon=fix.lon, lat=fix.lat,
                speed_kmh=fix.speed_kmh, heading_deg=fix.heading_deg, observed_at=now,
                route_progress=None if done is None or total <= 0 else done / total))
        return out

    def _route_offsets_of(self, v: Vehicle) -> tuple[dict[str, float], float]:
        """Distance from the route's start to each of its segments, and the route's length."""
        key = v.route_id or ""
        if key not in self._route_offsets:
            assert self.network is not None
            offsets: dict[str, float] = {}
            acc = 0.0
            for sid in v.route_segments:
                offsets.setdefault(sid, acc)
                acc += self.network.get_segment(sid).length_m
            self._route_offsets[key] = (offsets, acc)
        return self._route_offsets[key]

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect every terminal (staggered) and start driving."""
        await asyncio.to_thread(self.prepare)
        self._t0 = self.clock.monotonic()
        self._epoch = self.clock.now()
        self._plan_scenario()
        self._truth = await asyncio.to_thread(_open_append, Path(self.config.truth_path))
        self._running = True
        rng = random.Random(self.config.seed)
        for v in self.fleet:
            phase = rng.uniform(0, self.config.interval_s)
            if v.vehicle_id in self.feed_buses:
                continue  # reports through the GTFS-rt feed only
            t = asyncio.create_task(self._run_terminal(_Terminal(v), phase),
                                    name=f"sim:{v.vehicle_id}")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        log.info("simulator started", extra={"vehicles": len(self.fleet),
                                             "collector": f"{self.config.host}:{self.config.port}"})

    def _plan_scenario(self) -> None:
        """Script the scenario's vehicles from local clock times (they leave on schedule, or at
        once when the start came later)."""
        assert self.world is not None
        day = scenario_day(self._epoch)
        # Every service must be consuming before the first violation: seconds of real start-up
        # are minutes of a fast clock.
        earliest = self._epoch + timedelta(seconds=SETTLE_S)
        for sv, v in self.scenario:
            at = max(departure(sv, day), earliest)
            self.scenario_departures[v.vehicle_id] = at
            self.world.plan_script(v, max(0.0, (at - self._epoch).total_seconds()), sv.path)
            log.info("scenario vehicle %s (%s, %s) leaves at %s: %s", v.vehicle_id, sv.key,
                     sv.vehicle_class, at.isoformat(), sv.description)

    async def stop(self) -> None:
        """Disconnect every terminal and close the truth file."""
        self._running = False
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._truth is not None:
            self._truth.close()
            self._truth = None

    # ---- one terminal --------------------------------------------------------------------
    async def _run_terminal(self, term: _Terminal, phase: float) -> None:
        # Reports are staggered in clock time; reconnect backoff stays real (it paces TCP).
        await self.clock.sleep(phase)
        backoff = 1.0
        while self._running:
            try:
                reader, writer = await asyncio.open_connection(self.config.host,
                                                               self.config.port)
            except OSError:
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            self.stats.connected += 1
            try:
                await self._session(term, reader, writer)
                backoff = 1.0
            except (OSError, asyncio.IncompleteReadError, Jt808Error, TimeoutError) as exc:
                # One line per terminal per outage, not one per retry.
                level = logging.DEBUG if backoff > 1.0 else logging.WARNING
                log.log(level, "terminal %s disconnected: %s", term.vehicle.vehicle_id, exc)
            finally:
                self.stats.connected -= 1
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if self._running:
                self.stats.reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)

    def _frame(self, term: _Terminal, msg_id: int, body: object) -> bytes:
        serial = term.next_serial()
        term.pending[serial] = msg_id
        if len(term.pending) > 1024:  # replies that never came: keep memory bounded
            term.pending.pop(next(iter(term.pending)))
        return encode_message(msg_id, body, phone_bcd=term.vehicle.phone,  # type: ignore[arg-type]
                              serial=serial, version=self.config.version)  # type: ignore[arg-type]

    async def _request(self, term: _Terminal, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, splitter: FrameSplitter, frame: bytes,
                       want: int) -> object:
        writer.write(frame)
        await writer.drain()
        while True:
            data = await asyncio.wait_for(reader.read(4096), 10.0)
            if not data:
                raise ConnectionError("collector closed the connection")
            for f in splitter.feed(data):
                msg = decode_frame(f)
                if msg.msg_id == want:
                    return msg.body

    async def _session(self, term: _Terminal, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        v = term.vehicle
        splitter = FrameSplitter()
        if not term.auth_code:
            reg = TerminalRegister(42, 100, "TTISM", "SIM-808", _terminal_id(v), 1, v.plate)
            resp = await self._request(term, reader, writer, splitter,
                                       self._frame(term, MsgId.T_REGISTER, reg),
                                       MsgId.P_REGISTER_RESPONSE)
            if not isinstance(resp, RegisterResponse) or resp.result != 0:
                raise ConnectionError(f"registration refused: {resp}")
            term.auth_code = resp.auth_code
            self.stats.registered += 1
        resp = await self._request(term, reader, writer, splitter,
                                   self._frame(term, MsgId.T_AUTH, TerminalAuth(term.auth_code)),
                                   MsgId.P_GENERAL_RESPONSE)
        if not isinstance(resp, PlatformGeneralResponse) or resp.result != 0:
            term.auth_code = ""  # forget it and register again next time
            raise ConnectionError("authentication refused")
        self.stats.authenticated += 1
        term.pending.clear()
        acks = asyncio.create_task(self._read_acks(term, reader, writer, splitter))
        try:
            clock = self.clock
            last_hb = next_t = clock.monotonic()
            while self._running and not acks.done():
                writer.write(self._frame(term, MsgId.T_LOCATION, self._report(v)))
                self.stats.reports_sent += 1
                if clock.monotonic() - last_hb >= self.config.heartbeat_s:
                    writer.write(self._frame(term, MsgId.T_HEARTBEAT, Heartbeat()))
                    self.stats.heartbeats_sent += 1
                    last_hb = clock.monotonic()
                await writer.drain()
                next_t += self.config.interval_s
                await clock.sleep(next_t - clock.monotonic())
        finally:
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await acks

    async def _read_acks(self, term: _Terminal, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter, splitter: FrameSplitter) -> None:
        """Count the platform's 0x8001 answers; answer its commands as a terminal does."""
        while True:
            data = await reader.read(4096)
            if not data:
                return
            for f in splitter.feed(data):
                msg = decode_frame(f)
                body = msg.body
                if isinstance(body, PlatformGeneralResponse):
                    sent = term.pending.pop(body.reply_serial, None)
                    if sent == MsgId.T_LOCATION:
                        if body.result == 0:
                            self.stats.reports_acked += 1
                        else:
                            self.stats.reports_nacked += 1
                elif msg.msg_id >= 0x8000 and msg.msg_id not in _PLATFORM_ANSWERS:
                    writer.write(self._answer(term, msg))
            await writer.drain()

    def _answer(self, term: _Terminal, msg: Message) -> bytes:
        """The terminal's answer to a platform command (0x8300, 0x8201, 0x8203, others)."""
        mid, serial = msg.msg_id, msg.header.serial
        if mid == MsgId.P_POSITION_QUERY:
            self.stats.position_queries += 1
            return self._reply_frame(term, MsgId.T_POSITION_REPLY,
                                     PositionReply(serial, self._report(term.vehicle)))
        result = RESULT_OK
        if mid == MsgId.P_TEXT_MESSAGE and isinstance(msg.body, TextMessage):
            self.stats.texts_received += 1
            text = msg.body.text
            term.texts.append(text)
            del term.texts[:-16]  # a terminal's screen keeps the last few
            self.texts.append(ReceivedText(
                vehicle_id=term.vehicle.vehicle_id, text=text, flags=tuple(msg.body.flags),
                serial=serial, received_at=self.clock.now()))
            log.info("terminal %s received text %r", term.vehicle.vehicle_id, text)
        elif mid == MsgId.P_ALARM_CONFIRM:
            self.stats.alarm_confirmations += 1
        else:
            self.stats.commands_unsupported += 1
            result = RESULT_UNSUPPORTED
        return self._reply_frame(term, MsgId.T_GENERAL_RESPONSE,
                                 TerminalGeneralResponse(serial, mid, result))

    def _reply_frame(self, term: _Terminal, msg_id: int, body: object) -> bytes:
        """A frame answering the platform: the platform does not answer it back."""
        return encode_message(msg_id, body, phone_bcd=term.vehicle.phone,  # type: ignore[arg-type]
                              serial=term.next_serial(),
                              version=self.config.version)  # type: ignore[arg-type]

    def _report(self, v: Vehicle) -> LocationReport:
        assert self.world is not None
        t = self.sim_time()
        fix = self.world.fix(v, t)
        self._record_truth(v, self.world.drop_past(v, t))
        noise = self.config.noise_m
        rng = self.world.rng
        lat = fix.lat + rng.gauss(0, noise) / 110_574
        lon = fix.lon + rng.gauss(0, noise) / (111_320 * math.cos(math.radians(fix.lat)))
        now = self._epoch + timedelta(seconds=t)
        # Positioned, north latitude, east longitude; bit 0: ACC (ignition) on.
        status = 0x3 if fix.ignition else 0x2
        return LocationReport(
            alarm=0, status=status, lat_e6=round(abs(lat) * 1e6), lon_e6=round(abs(lon) * 1e6),
            altitude_m=30, speed_0_1kmh=round(fix.speed_kmh * 10),
            direction_deg=round(fix.heading_deg) % 360, time_bcd=datetime_to_bcd_time(now))

    def _record_truth(self, v: Vehicle, legs: Sequence[Leg]) -> None:
        if self._truth is None or not legs:
            return
        for leg in legs:
            self._truth.write(orjson.dumps({
                "vehicle_id": v.vehicle_id, "vehicle_class": v.vehicle_class,
                "segment_id": leg.segment.segment_id,
                "enter": self._epoch + timedelta(seconds=leg.enter_s),
                "exit": self._epoch + timedelta(seconds=leg.exit_s),
                "speed_kmh": round(leg.speed_kmh, 3),
            }, option=orjson.OPT_UTC_Z) + b"\n")
        self._truth.flush()


SIMULATOR = web.AppKey("simulator", Simulator)


async def _post_incident(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("body must be JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    spec = body.get("spec")
    if spec is None:
        try:
            seg = body.get("segment_id") or sim.demo_incident_segment
            start = float(body.get("start_s", sim.sim_time()))
            duration = float(body["duration_s"])
            speed = float(body["speed_kmh"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BadRequest("give either spec (SEGMENT_ID@START+DURATION:SPEED_KMH) or "
                             "segment_id, duration_s, speed_kmh [, start_s]") from exc
        spec = f"{seg}@{start}+{duration}:{speed}"
    if not isinstance(spec, str):
        raise BadRequest("spec must be a string")
    inc = sim.add_incident(spec)
    return web.json_response({"segment_id": inc.segment_id, "start_s": inc.start_s,
                              "duration_s": inc.duration_s, "speed_kmh": inc.speed_kmh,
                              "sim_time_s": round(sim.sim_time(), 1)}, status=201)


async def _get_sim(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    s = sim.stats
    return web.json_response({
        "vehicles": len(sim.fleet), "sim_time_s": round(sim.sim_time(), 1),
        "connected": s.connected, "authenticated": s.authenticated,
        "reports_sent": s.reports_sent, "reports_acked": s.reports_acked,
        "reports_nacked": s.reports_nacked, "heartbeats_sent": s.heartbeats_sent,
        "texts_received": s.texts_received, "position_queries": s.position_queries,
        "alarm_confirmations": s.alarm_confirmations,
        "commands_unsupported": s.commands_unsupported,
        "texts": [{"vehicle_id": t.vehicle_id, "text": t.text, "flags": list(t.flags),
                   "received_at": t.received_at.isoformat()} for t in sim.texts],
        "demo_incident_segment": sim.demo_incident_segment,
        "scenario": [{"key": sv.key, "vehicle_id": v.vehicle_id, "plate": v.plate,
                      "vehicle_class": v.vehicle_class, "route_id": v.route_id,
                      "expected_rule": sv.expected_rule, "description": sv.description,
                      "departs_at": sim.scenario_departures[v.vehicle_id].isoformat()
                      if v.vehicle_id in sim.scenario_departures else None}
                     for sv, v in sim.scenario],
        "incidents": [{"segment_id": i.segment_id, "start_s": i.start_s,
                       "duration_s": i.duration_s, "speed_kmh": i.speed_kmh}
                      for i in (sim.world.incidents if sim.world else [])]})


def add_incident_routes(app: web.Application, sim: Simulator) -> None:
    """Embedded run only: ``POST /api/v1/sim/incidents`` and ``GET /api/v1/sim``."""
    app[SIMULATOR] = sim
    app.router.add_post("/api/v1/sim/incidents", _post_incident)
    app.router.add_get("/api/v1/sim", _get_sim)
