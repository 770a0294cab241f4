"""NATS and PostgreSQL restarted during ingest lose nothing (issue 14 §1).

The four services run as ``tti serve`` processes on a private nats-server (JetStream, its own
port and store directory) and a private PostgreSQL with PostGIS (its own port and data
directory), never the machine's shared servers. A fleet of JT/T 808 terminals (the project's
test terminal, driving the demo city with the simulator's world) reports once a second and
resends, as the standard's terminals do, every report that got no result-0 ``0x8001``.

- NATS killed (SIGTERM, then SIGKILL) for a few seconds: while it is down the collector's
  ``/readyz`` is 503 naming the bus and no report gets a result 0; then every service is ready
  again by itself, and every acknowledged report is in the stream and consumed by bigdata.
- PostgreSQL stopped (``pg_ctl stop -m fast``) for a few seconds: bigdata's and the warning
  service's ``/readyz`` say the database is away, positions are still acknowledged, and every
  speed window of the outage reaches the speed history once the database is back.
"""

from __future__ import annotations

import asyncio
import functools
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.simulator.world import World
from shared.events import SEGMENT_SPEED, VEHICLE_POSITION
from shared.roadnet import RoadNetwork
from tests.integration.support import (
    SERVICES,
    AckingFleet,
    PrivateNats,
    PrivatePostgres,
    ServiceProcesses,
    all_ready,
    consumers_behind,
    demo_stack_env,
    free_port,
    metric_value,
    readyz,
    stream_payloads,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WINDOW_S = 4
"""Speed window of the run (TTI_SPEED_WINDOW_S), so windows close within seconds."""
VEHICLES = 40
READY_BOUND_S = 60.0
"""Every service must be ready again this long after the server came back (generous)."""


# ---- the stack ------------------------------------------------------------------------------

@dataclass
class Stack:
    nats: PrivateNats
    pg: PrivatePostgres
    services: ServiceProcesses
    jt808_port: int
    network: RoadNetwork

    @property
    def ports(self) -> dict[str, int]:
        return self.services.ports

    def fleet(self, n: int = VEHICLES) -> AckingFleet:
        world = World(self.network, seed=7)
        return AckingFleet([self.jt808_port], world, world.make_fleet(n))


def _more_acked(fleet: AckingFleet, n: int) -> bool:
    return len(fleet.acked()) > n


async def _bigdata_caught_up(url: str) -> bool:
    """Whether bigdata's position consumers have had, and acked, everything in the stream."""
    return not await consumers_behind(url, "bigdata-tti-position-")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Private NATS and PostgreSQL, the four services on them; everything stopped after."""
    from shared.demo import generate_demo_region

    region = generate_demo_region(tmp_path / "demo")
    pg = PrivatePostgres()
    nats_server = PrivateNats(tmp_path / "jetstream", tmp_path / "nats-server.log")
    services: ServiceProcesses | None = None
    try:
        pg.init()
        nats_server.start()
        ports = {s: free_port() for s in SERVICES}
        jt808 = free_port()
        env = demo_stack_env(tmp_path, region, nats_server.url, pg.dsn, ports,
                             token="faults-test-token", TTI_SPEED_WINDOW_S=str(WINDOW_S),
                             TTI_JT808_PORT=str(jt808))
        services = ServiceProcesses(env, ports, tmp_path)
        services.start()
        services.wait_ready()
        yield Stack(nats_server, pg, services, jt808, RoadNetwork.from_osm(region.osm_path))
    finally:
        if services is not None:
            services.stop()
        nats_server.stop(signal.SIGKILL)
        pg.destroy()


# ---- NATS restarted -------------------------------------------------------------------------

async def test_nats_restarted_during_ingest_loses_no_acknowledged_report(stack: Stack) -> None:
    fleet = stack.fleet()
    loop = asyncio.get_running_loop()
    logs = stack.services.logs
    await fleet.start()
    try:
        await wait_until("ingest running", lambda: len(fleet.acked()) >= 4 * VEHICLES, 30,
                         logs("collector"))
        # Down for less, then for more, than a publish waits for its PubAck (10 s): terminals
        # get no answer at all, then (the second time) result 1 too.
        for sig, down_s in ((signal.SIGTERM, 6.0), (signal.SIGKILL, 12.0)):
            await asyncio.to_thread(stack.nats.stop, sig)
            gone_at = loop.time()
            refused: list[tuple[int, dict[str, object]]] = []
            while loop.time() < gone_at + down_s:
                await asyncio.sleep(0.5)
                refused.append(await asyncio.to_thread(readyz, stack.ports["collector"]))
            sent_while_down = [r for r in fleet.reports if r.first_sent >= gone_at]
            up_at = loop.time()
            await asyncio.to_thread(stack.nats.start)

            # While the bus was down the collector said so, and no report was acknowledged
            # (0.2 s for an answer already on its way when the server went).
            assert refused and all(status == 503 for status, _ in refused), refused
            assert all(body["checks"]["bus"]["ready"] is False  # type: ignore[index]
                       for _, body in refused), refused
            assert sent_while_down, "the fleet sent nothing during the outage"
            assert fleet.ok_answers_between(gone_at + 0.2, up_at) == 0
            await wait_until(f"every service ready after NATS came back ({sig.name})",
                             lambda: all_ready(stack.ports), READY_BOUND_S, logs())
            ready_after = loop.time() - up_at
            acked_before = len(fleet.acked())
            await wait_until("acknowledgments again",
                             functools.partial(_more_acked, fleet, acked_before + 40),
                             30, logs("collector"))
            assert all(r.acked_at is None or r.acked_at >= up_at for r in sent_while_down)
            print(f"NATS {sig.name}: down {up_at - gone_at:.1f} s, {len(sent_while_down)} "
                  f"reports sent meanwhile, 0 acknowledged while down, "
                  f"{sum(1 for at, res in fleet.answers if gone_at <= at <= up_at and res)} "
                  f"refused (result 1); every service ready {ready_after:.1f} s after restart")

        # The terminals resend what was not acknowledged until it is.
        fleet.sending = False
        await wait_until("every report acknowledged", lambda: not fleet.unacked(), 60,
                         logs("collector"))
        resent = [r for r in fleet.reports if r.sends > 1]
        assert resent, "no report needed a resend"
    finally:
        await fleet.stop()
    assert not fleet.errors, fleet.errors

    # Every acknowledged report is in the stream, and bigdata consumed the whole stream.
    await wait_until("bigdata consumed every position",
                     lambda: _bigdata_caught_up(stack.nats.url),
                     60, logs("bigdata"))
    stored = {(p.vehicle_id, p.observed_at)
              for p in await stream_payloads(stack.nats.url, "tti.position.*",
                                              VEHICLE_POSITION)}
    lost = [r for r in fleet.acked() if (r.vehicle_id, r.observed_at) not in stored]
    print(f"NATS: {len(fleet.reports)} reports, {len(resent)} resent, all acknowledged; "
          f"{len(stored)} positions in the stream, {len(lost)} acknowledged ones missing")
    assert not lost, f"{len(lost)} of {len(fleet.acked())} acknowledged reports lost"
    bigdata = stack.ports["bigdata"]
    assert metric_value(bigdata, "tti_bus_handled_total", subject="tti.position",
                        outcome="term") == 0
    handled = metric_value(bigdata, "tti_bus_handled_total", subject="tti.position",
                           outcome="ack")
    assert handled >= len(fleet.reports)


# ---- PostgreSQL restarted -------------------------------------------------------------------

async def _stored_windows(dsn: str) -> dict[datetime, int]:
    """Speed values in the history per window start."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT window_start, count(*) AS n FROM segment_speeds "
                                "GROUP BY window_start")
    finally:
        await conn.close()
    return {r["window_start"].astimezone(UTC): r["n"] for r in rows}


async def test_postgres_restarted_during_ingest_loses_no_speed_window(stack: Stack) -> None:
    fleet = stack.fleet()
    loop = asyncio.get_running_loop()
    logs = stack.services.logs
    await fleet.start()
    try:
        await wait_until("speeds in the history", lambda: _stored_windows(stack.pg.dsn), 40,
                         logs("bigdata"))
        await asyncio.to_thread(stack.pg.stop, "fast")
        gone_at, down_wall = loop.time(), time.time()
        acked_before = len(fleet.acked())
        seen: dict[str, list[tuple[int, dict[str, object]]]] = {"bigdata": [], "warning": []}
        while loop.time() < gone_at + 8:
            await asyncio.sleep(1.0)
            for name, polls in seen.items():
                polls.append(await asyncio.to_thread(readyz, stack.ports[name]))
        acked_while_down = len(fleet.acked()) - acked_before
        up_wall = time.time()
        await asyncio.to_thread(stack.pg.start)
        await wait_until("every service ready after PostgreSQL came back",
                         lambda: all_ready(stack.ports), READY_BOUND_S, logs())
        # Windows of the outage close WINDOW_S + grace after they end: let them and a few
        # more close, then stop and let the last ones close too.
        await asyncio.sleep(3 * WINDOW_S)
        fleet.sending = False
        await wait_until("every report acknowledged", lambda: not fleet.unacked(), 30,
                         logs("collector"))
        stop_wall = time.time()
        await asyncio.sleep(3 * WINDOW_S)
    finally:
        await fleet.stop()
    assert not fleet.errors, fleet.errors

    # Readiness named the database while it was away (after a probe interval or two).
    for name, polls in seen.items():
        later = polls[3:]
        assert later and all(status == 503 for status, _ in later), (name, polls)
        assert all(body["checks"]["database"]["ready"] is False  # type: ignore[index]
                   for _, body in later), (name, later)
    # Positions do not need the database: terminals were acknowledged throughout.
    assert acked_while_down > 0

    # Every window from the first stored one to the end of ingest has speeds in the history,
    # those of the outage included; and every value published on the bus was stored.
    windows = await _stored_windows(stack.pg.dsn)
    first = min(windows).timestamp()
    last = math.floor(stop_wall / WINDOW_S) * WINDOW_S - WINDOW_S
    missing = [datetime.fromtimestamp(b, UTC).isoformat()
               for b in range(int(first), int(last), WINDOW_S)
               if datetime.fromtimestamp(b, UTC) not in windows]
    assert not missing, f"windows without speeds: {missing}\n{logs('bigdata')}"
    # Those a flush closed while the database was down (a window closes WINDOW_S of grace
    # after its end) were refused at first: they are there too.
    outage = [w for w in windows if down_wall + 1 <= w.timestamp() + 2 * WINDOW_S < up_wall]
    assert outage, (down_wall, up_wall, sorted(windows))
    conn = await asyncpg.connect(stack.pg.dsn)
    try:
        rows = await conn.fetch("SELECT segment_id, window_start, source FROM segment_speeds")
    finally:
        await conn.close()
    history = {(r["segment_id"], r["window_start"].astimezone(UTC), r["source"]) for r in rows}
    published = await stream_payloads(stack.nats.url, "tti.segment.speed", SEGMENT_SPEED)
    unstored = [s for s in published
                if (s.segment_id, s.window_start, s.source) not in history]
    assert published and not unstored, f"{len(unstored)} of {len(published)} not in history"
    # The history's writes were refused and retried, none dropped.
    bigdata = stack.ports["bigdata"]
    retried = metric_value(bigdata, "tti_bigdata_speed_history_total", result="retried")
    assert retried > 0
    assert metric_value(bigdata, "tti_bigdata_speed_history_total", result="dropped") == 0
    print(f"PostgreSQL: down {up_wall - down_wall:.1f} s; {acked_while_down} reports "
          f"acknowledged meanwhile; {len(outage)} windows closed while it was down in the "
          f"history ({sum(windows[w] for w in outage)} values), {len(windows)} windows in all, "
          f"none "
          f"missing; {len(published)} values on the bus, all stored; {retried:.0f} writes "
          f"retried; readiness: {seen['bigdata'][-1][1]['checks']['database']}")  # type: ignore[index]
