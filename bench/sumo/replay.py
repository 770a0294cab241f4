"""Probe vehicles of a SUMO run replayed as JT/T 808 terminals through TTI's real gateway.

Each probe (a vehicle with SUMO's FCD device) becomes a terminal with its own phone number: it
connects just before its vehicle enters the network, registers (0x0100), authenticates
(0x0102), sends a 0x0200 location report every ``interval_s`` from its 1-s trace (position with
GPS-like noise, SUMO's speed and heading, the time stamped in GMT+8 BCD) and hangs up when the
vehicle leaves. SUMO second ``t`` is clock time ``t0 + t`` on the one clock TTI runs on
(``shared/clock.py``), so a clock at rate 10 replays ten times faster than real time and rate 1
is a real-time replay; each report goes out when the clock reaches its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bench.sumo.simulate import Fix
from shared.clock import Clock
from shared.jt808 import (
    FrameSplitter,
    LocationReport,
    MsgId,
    PlatformGeneralResponse,
    RegisterResponse,
    TerminalAuth,
    TerminalRegister,
    datetime_to_bcd_time,
    decode_frame,
    encode_message,
)

__all__ = ["Replay", "ReplayStats", "Report", "phone_of", "schedule"]

log = logging.getLogger("tti.bench.sumo")


@dataclass(frozen=True, slots=True)
class Report:
    """One report a probe sends: the fix it was made from (true position) and what it says."""

    vehicle: str
    fix: Fix
    lon: float
    lat: float
    speed_kmh: float


@dataclass(slots=True)
class ReplayStats:
    """What the replay did, for the table's header and the test."""

    terminals: int = 0
    registered: int = 0
    authenticated: int = 0
    reports_sent: int = 0
    reports_acked: int = 0
    reports_nacked: int = 0
    late_s_max: float = 0.0
    """Largest delay (clock seconds) of a report behind its SUMO time: the replay keeping up."""
    failures: list[str] = field(default_factory=list)


def phone_of(index: int) -> str:
    """The 12-digit terminal phone of probe number ``index`` (vehicle id: no leading zeros)."""
    return f"{13_900_000_000 + index:012d}"


def schedule(fcd: dict[str, list[Fix]], *, interval_s: float, noise_m: float,
             seed: int) -> dict[str, list[Report]]:
    """Every ``interval_s`` of each probe's trace from its first second, as reports."""
    rng = random.Random(seed)
    out: dict[str, list[Report]] = {}
    for vehicle in sorted(fcd):
        fixes, reports, next_t = fcd[vehicle], [], -math.inf
        for fix in fixes:
            if fix.t + 1e-6 < next_t:
                continue
            next_t = fix.t + interval_s
            lat = fix.lat + rng.gauss(0, noise_m) / 110_574
            lon = fix.lon + rng.gauss(0, noise_m) / (111_320 * math.cos(math.radians(fix.lat)))
            reports.append(Report(vehicle, fix, lon, lat, round(fix.speed_ms * 36) / 10))
        if reports:
            out[vehicle] = reports
    return out


class Replay:
    """Sends the scheduled reports of every probe to ``host:port`` on ``clock``."""

    def __init__(self, reports: dict[str, list[Report]], *, host: str, port: int, clock: Clock,
                 t0: datetime, version: int = 2013, phones: dict[str, str] | None = None) -> None:
        self.reports = reports
        self.host, self.port, self.clock, self.t0 = host, port, clock, t0
        self.version = version
        self.stats = ReplayStats(terminals=len(reports))
        # ``phones``: terminals a registry lists (the buses); else probe numbers in id order.
        self.phones = ({v: phones[v] for v in reports} if phones is not None
                       else {v: phone_of(i + 1) for i, v in enumerate(sorted(reports))})

    def vehicle_ids(self) -> dict[str, str]:
        """TTI vehicle id (the phone without leading zeros) → SUMO vehicle id."""
        return {p.lstrip("0"): v for v, p in self.phones.items()}

    async def run(self) -> None:
        """Replay everything; returns when the last terminal has hung up."""
        tasks = [asyncio.create_task(self._terminal(v, r), name=f"probe:{v}")
                 for v, r in self.reports.items()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _at(self, t: float) -> float:
        return (self.t0 + timedelta(seconds=t)).timestamp()

    async def _sleep_until(self, when: float) -> None:
        await self.clock.sleep(when - self.clock.time())

    async def _terminal(self, vehicle: str, reports: list[Report]) -> None:
        phone = self.phones[vehicle]
        await self._sleep_until(self._at(reports[0].fix.t) - 3.0)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            self.stats.failures.append(f"{vehicle}: connect: {exc}")
            return
        serial = 0
        pending: set[int] = set()
        splitter = FrameSplitter()

        def frame(msg_id: int, body: object) -> bytes:
            nonlocal serial
            serial = (serial + 1) & 0xFFFF
            return encode_message(msg_id, body, phone_bcd=phone, serial=serial,  # type: ignore
                                  version=self.version)  # type: ignore[arg-type]

        async def answer(want: int) -> object:
            while True:
                data = await asyncio.wait_for(reader.read(4096), 30.0)
                if not data:
                    raise ConnectionError("the gateway closed the connection")
                for f in splitter.feed(data):
                    msg = decode_frame(f)
                    if msg.msg_id == want:
                        return msg.body

        acks: asyncio.Task[None] | None = None
        try:
            writer.write(frame(MsgId.T_REGISTER, TerminalRegister(
                42, 100, "SUMO", "SUMO-808", f"S{phone[-6:]}", 1, f"鄂A{phone[-5:]}")))
            reg = await answer(MsgId.P_REGISTER_RESPONSE)
            if not isinstance(reg, RegisterResponse) or reg.result != 0:
                raise ConnectionError(f"registration refused: {reg}")
            self.stats.registered += 1
            writer.write(frame(MsgId.T_AUTH, TerminalAuth(reg.auth_code)))
            auth = await answer(MsgId.P_GENERAL_RESPONSE)
            if not isinstance(auth, PlatformGeneralResponse) or auth.result != 0:
                raise ConnectionError("authentication refused")
            self.stats.authenticated += 1
            acks = asyncio.create_task(self._count_acks(reader, splitter, pending))
            for rep in reports:
                when = self._at(rep.fix.t)
                await self._sleep_until(when)
                self.stats.late_s_max = max(self.stats.late_s_max, self.clock.time() - when)
                moment = datetime.fromtimestamp(when, self.t0.tzinfo)
                body = LocationReport(
                    alarm=0, status=0x3, lat_e6=round(abs(rep.lat) * 1e6),
                    lon_e6=round(abs(rep.lon) * 1e6), altitude_m=30,
                    speed_0_1kmh=round(rep.speed_kmh * 10),
                    direction_deg=round(rep.fix.angle_deg) % 360,
                    time_bcd=datetime_to_bcd_time(moment))
                writer.write(frame(MsgId.T_LOCATION, body))
                pending.add(serial)
                self.stats.reports_sent += 1
                await writer.drain()
            # Give the last acknowledgments a moment (clock seconds) before hanging up.
            for _ in range(20):
                if not pending:
                    break
                await self.clock.sleep(1.0)
        except (OSError, ConnectionError, TimeoutError) as exc:
            self.stats.failures.append(f"{vehicle}: {exc}")
        finally:
            if acks is not None:
                acks.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await acks
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _count_acks(self, reader: asyncio.StreamReader, splitter: FrameSplitter,
                          pending: set[int]) -> None:
        while True:
            data = await reader.read(4096)
            if not data:
                return
            for f in splitter.feed(data):
                msg = decode_frame(f)
                body = msg.body
                if isinstance(body, PlatformGeneralResponse) and body.reply_serial in pending:
                    pending.discard(body.reply_serial)
                    if body.result == 0:
                        self.stats.reports_acked += 1
                    else:
                        self.stats.reports_nacked += 1
