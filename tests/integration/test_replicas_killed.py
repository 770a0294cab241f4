"""Two replicas of every service, one of each SIGKILLed mid-stream and restarted (issue 14 §1).

Two collectors, two bigdata replicas (replica 0 and 1 of 2), two warning replicas (one holds
the lease) and two publishers run as ``tti serve`` processes on a private nats-server and a
private PostgreSQL with PostGIS. 2,000 JT/T 808 terminals (the simulator's world, the
project's test terminal: a report every ``INTERVAL_S``, resent until acknowledged, reconnecting
to the other collector when their connection is lost) drive the demo city, half through each
collector; a slowdown on the demo incident segment raises a congestion warning. Mid-stream the
second collector, the second bigdata replica, the *active* warning replica and the second
publisher are killed at once (SIGKILL) and started again.

What must hold:

- every acknowledged report is stored in the stream once (by event id: a resend is dropped as
  a duplicate), and bigdata's position consumers have had and acked all of them;
- the speeds of windows more than "2 minutes" from the kill equal a single-replica run of the
  same input within 2 % (vehicle counts within one). The windows here are ``WINDOW_S``
  (10 s), not 60 s, so the run stays short: 2 minutes of 60 s windows is two windows, and the
  windows compared are those closed (end + grace + the merger's slack) more than two windows
  (20 s) before the kill or begun more than 20 s after every killed process was ready again
  and bigdata had worked off what came while its replica was down (fewer than 500 positions
  pending: until then the restarted replica handles positions late, as any restart does),
  leaving out the first window after the fleet starts and the last before it stops (all
  2,000 vehicles starting, or falling silent, at once: their first and last fixes are decided
  on whichever flush tick comes first, timing the runs do not share).
  Every one with 5 or more vehicles must agree, and 98 % of all (a window of a few vehicles
  shows where the flush ticks fell against the data, which the runs do not share: seen up to
  7 % on one vehicle, 3 % on three).
  The single-replica run is the same code (``Bigdata`` on the memory bus, one replica) fed
  every VehiclePosition the stream stored, in stream order, under a clock that follows the
  data (each envelope's publication time), flushed on the same tick;
- every acknowledged fix of a 两客一危 vehicle (coach, tourist bus, dangerous goods) has its
  MatchedPosition in the stream exactly once, those the killed bigdata held undecided too
  (``Bigdata.recover``);
- no warning is lost or doubled: every warning id's versions run 1, 2, … without a gap (a
  version the killed holder decided but never sent is sent by the standby, which held it
  back, on taking over), each version is one decision (status, segments, severity, cause)
  whoever published it, the incident's warning was raised before the kill and carried on
  after it by the replica that took over, every warning the active replica holds at the end
  is in the stream, and the replica that was killed and restarted (now the standby, rebuilt
  from the workflow store and its durable consumers) holds what the active one holds: its
  engine's memory (recent normal windows, the rules' episodes) begins at its ack floors, so it
  follows the versions the active replica publishes (``WarningEngine.follow``). Two replicas
  may publish at different moments (the lease changes hands within its ttl), so the check is
  on what each version says, not on when it went out.
"""

from __future__ import annotations

import asyncio
import math
import signal
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.bigdata.app import Bigdata
from services.bigdata.store import store_from_url
from services.simulator.world import Incident, World
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.config import Config
from shared.demo import DemoRegion, generate_demo_region
from shared.events import (
    MATCHED_POSITION,
    SEGMENT_SPEED,
    TWO_PASSENGER_ONE_DANGER,
    VEHICLE_POSITION,
    WARNING,
    SegmentSpeed,
    VehiclePosition,
    Warning,
)
from shared.roadnet import RoadNetwork
from tests.conftest import ManualClock
from tests.integration.support import (
    AckingFleet,
    PrivateNats,
    PrivatePostgres,
    ServiceProcesses,
    consumers_behind,
    demo_stack_env,
    free_port,
    get_json,
    metric_value,
    replica_overrides,
    stream_envelopes,
    wait_until,
    write_registry,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WINDOW_S = 10
"""Speed window of the run (TTI_SPEED_WINDOW_S)."""
VEHICLES = 2000
INTERVAL_S = 2.0
"""Each terminal reports every 2 s: 1,000 reports a second over the two collectors."""
KILL_AT_S = 70.0
"""Fleet time of the kill; the slowdown runs from INCIDENT_AT_S for INCIDENT_S."""
INCIDENT_AT_S = 20.0
INCIDENT_S = 70.0
DRIVE_S = 105.0
AWAY_S = 2 * WINDOW_S
"""Windows this close to [kill, all ready again] may differ (the issue's 2 minutes at 60 s)."""
TOLERANCE = 0.02
CAUGHT_UP = 500
"""bigdata's position consumers are caught up with fewer messages pending (half a second)."""
BUSY = 5
"""Windows with this many vehicles must all agree; of all, 98 % must."""
REPLICAS = ("collector", "bigdata", "warning", "publisher")
KILLED = ("collector-1", "bigdata-1", "publisher-1")
"""Killed with the active warning replica, whichever that is."""


@dataclass
class Stack:
    nats: PrivateNats
    services: ServiceProcesses
    jt808: list[int]
    region: DemoRegion
    network: RoadNetwork
    registry: dict[str, str]  # vehicle id -> class


def _world(stack: Stack) -> World:
    seg = stack.region.incident_segment_id
    world = World(stack.network, seed=11, hot_segment=seg, hot_share=0.25)
    world.incidents.append(Incident(seg, INCIDENT_AT_S, INCIDENT_S, 5.0))
    return world


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Private NATS and PostgreSQL; two processes of each service on them, stopped after."""
    region = generate_demo_region(tmp_path / "demo")
    network = RoadNetwork.from_osm(region.osm_path)
    registry = write_registry(tmp_path / "vehicles.csv",
                              World(network, seed=11, hot_segment=region.incident_segment_id),
                              VEHICLES)
    pg = PrivatePostgres()
    nats_server = PrivateNats(tmp_path / "jetstream", tmp_path / "nats-server.log")
    services: ServiceProcesses | None = None
    try:
        pg.init()
        nats_server.start()
        ports = {f"{s}-{i}": free_port() for s in REPLICAS for i in range(2)}
        jt808 = [free_port(), free_port()]
        env = demo_stack_env(tmp_path, region, nats_server.url, pg.dsn, ports,
                             token="replicas-test-token", TTI_SPEED_WINDOW_S=str(WINDOW_S),
                             TTI_VEHICLE_REGISTRY=str(tmp_path / "vehicles.csv"),
                             TTI_REPLICA_COUNT="2", TTI_LEASE_TTL_S="3")
        overrides = replica_overrides(2, jt808, REPLICAS)
        services = ServiceProcesses(env, ports, tmp_path, overrides=overrides)
        services.start()
        services.wait_ready(120)
        yield Stack(nats_server, services, jt808, region, network, registry)
    finally:
        if services is not None:
            services.stop()
        nats_server.stop(signal.SIGKILL)
        pg.destroy()


async def _true(value: Any, test: Any) -> bool:
    return bool(test(await value))


def _active_warning(stack: Stack) -> str:
    """The warning replica that holds the lease (publishes)."""
    active = [name for name in ("warning-0", "warning-1")
              if metric_value(stack.services.ports[name], "tti_warning_active_replica") == 1]
    assert len(active) == 1, active
    return active[0]


def _active_warnings(port: int, *, alarms: bool = False) -> dict[str, int]:
    """A warning replica's active warnings (id → version): of the roads, or (``alarms``) the
    两客一危 rules' vehicle alarms."""
    status, body = get_json(f"http://127.0.0.1:{port}/v1/warnings")
    assert status == 200, body
    return {w["warning_id"]: w["version"] for w in body["warnings"]  # type: ignore[index]
            if (w["kind"] == "vehicle_alarm") == alarms}


# ---- the single-replica run -----------------------------------------------------------------

async def _single_replica(stack: Stack, tmp_path: Path,
                          envs: list[Envelope[VehiclePosition]]) -> list[SegmentSpeed]:
    """Every stored position through one bigdata on the memory bus, in stream order, the clock
    following the data (each envelope's publication time) and the flush on the service's tick."""
    store = store_from_url(f"sqlite:///{tmp_path}/single.db")
    await store.open()
    bus = MemoryBus()
    await bus.start()
    first = min(e.created_at.timestamp() for e in envs)
    clock = ManualClock(first)
    bd = Bigdata(Config(speed_window_s=WINDOW_S, osm=str(stack.region.osm_path),
                        gtfs=str(stack.region.gtfs_path)), bus, store, clock=clock)
    out: list[SegmentSpeed] = []
    try:
        await bd.load_network()
        await bd.load_gtfs()
        tick = bd.flush_interval_s
        next_flush = math.floor(first / tick) * tick + tick
        for env in envs:
            at = env.created_at.timestamp()
            while next_flush <= at:
                clock.at = next_flush
                out += await bd.flush(next_flush)
                next_flush += tick
            clock.at = max(clock.at, at)
            await bd.on_position(env)
        for _ in range(math.ceil(4 * WINDOW_S / tick)):
            clock.at = next_flush
            out += await bd.flush(next_flush)
            next_flush += tick
    finally:
        await bus.close()
        await store.close()
    return out


# ---- the test -------------------------------------------------------------------------------

async def test_one_replica_of_each_killed_mid_stream(stack: Stack, tmp_path: Path) -> None:
    url = stack.nats.url
    services = stack.services
    logs = services.logs
    loop = asyncio.get_running_loop()
    world = _world(stack)
    fleet = AckingFleet(stack.jt808, world, world.make_fleet(VEHICLES), interval_s=INTERVAL_S,
                        reconnect=True)
    await fleet.start()
    start_wall = datetime.now(UTC).timestamp()
    try:
        t0 = loop.time()
        await wait_until("ingest running", lambda: len(fleet.acked()) >= VEHICLES, 60,
                         lambda: logs("collector-0", "collector-1"))
        incident = stack.region.incident_segment_id

        def raised() -> bool:
            for name in ("warning-0", "warning-1"):
                status, body = get_json(f"http://127.0.0.1:{services.ports[name]}/v1/warnings")
                if status == 200 and any(incident in w["segment_ids"]
                                         for w in body["warnings"]):  # type: ignore[index]
                    return True
            return False

        await asyncio.sleep(max(0.0, t0 + KILL_AT_S - loop.time()))
        await wait_until("the incident's warning before the kill",
                         lambda: asyncio.to_thread(raised), 40,
                         lambda: logs("warning-0", "warning-1"))
        active = await asyncio.to_thread(_active_warning, stack)
        killed = (*KILLED, active)
        kill_wall = datetime.now(UTC).timestamp()
        for name in killed:
            services.kill(name)
        services.start(list(killed))
        await asyncio.to_thread(services.wait_ready, 120.0, list(killed))
        # The restarted bigdata replica (its recovery re-matches its partitions' recent
        # positions first) works off what came meanwhile: the kill's effects end when it has.
        async def positions_behind() -> int:
            return sum(a + b for a, b in
                       (await consumers_behind(url, "bigdata-tti-position-")).values())

        await wait_until("the restarted bigdata replica caught up",
                         lambda: _true(positions_behind(), lambda n: n < CAUGHT_UP), 90,
                         lambda: logs("bigdata-1"))
        ready_wall = datetime.now(UTC).timestamp()
        end = max(t0 + DRIVE_S, loop.time() + AWAY_S + 4 * WINDOW_S)
        await asyncio.sleep(max(0.0, end - loop.time()))
        fleet.sending = False
        stop_wall = datetime.now(UTC).timestamp()
        await wait_until("every report acknowledged", lambda: not fleet.unacked(), 60,
                         lambda: logs("collector-0", "collector-1"))
    finally:
        await fleet.stop()
    assert not fleet.errors, fleet.errors[:5]

    async def caught_up() -> bool:
        return not await consumers_behind(url, "bigdata-tti-position-")

    await wait_until("bigdata consumed every position", caught_up, 90,
                     lambda: logs("bigdata-0", "bigdata-1"))
    await asyncio.sleep(3 * WINDOW_S)  # the last windows close, the warning resolves

    # -- positions: every acknowledged one stored once, and consumed ------------------------
    stored = await stream_envelopes(url, "tti.position.*", VEHICLE_POSITION)
    ids = [env.event_id for _, env in stored]
    assert len(ids) == len(set(ids)), "a position stored twice"
    by_fix = {(env.payload.vehicle_id, env.payload.observed_at) for _, env in stored}
    acked = fleet.acked()
    lost = [r for r in acked if (r.vehicle_id, r.observed_at) not in by_fix]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged reports not in the stream"
    assert fleet.reconnects > 0, "no terminal lost its collector"

    # -- MatchedPositions: every acknowledged 两客一危 fix once --------------------------------
    matched = await stream_envelopes(url, "tti.position.matched.*", MATCHED_POSITION)
    matched_ids = [env.event_id for _, env in matched]
    assert len(matched_ids) == len(set(matched_ids)), "a MatchedPosition published twice"
    matched_fixes = {(env.payload.vehicle_id, env.payload.observed_at) for _, env in matched}
    monitored = [r for r in acked if stack.registry.get(r.vehicle_id)
                 in TWO_PASSENGER_ONE_DANGER]
    unmatched = [r for r in monitored if (r.vehicle_id, r.observed_at) not in matched_fixes]
    assert monitored
    assert not unmatched, (f"{len(unmatched)} of {len(monitored)} acknowledged 两客一危 fixes "
                           f"without a MatchedPosition\n{logs('bigdata-1')}")

    # -- speeds: windows away from the kill equal one replica's -------------------------------
    envs = [env for _, env in stored]
    expected = {(s.segment_id, s.window_start): s
                for s in await _single_replica(stack, tmp_path, envs)}
    published = [env.payload for _, env in await stream_envelopes(url, "tti.segment.speed",
                                                                  SEGMENT_SPEED)]

    def away(start: datetime) -> bool:
        """Closed (end + grace + the merger's slack) AWAY_S before the kill, or begun AWAY_S
        after every killed process was ready again."""
        begin = start.timestamp()
        closed = begin + WINDOW_S + min(WINDOW_S, Bigdata.MAX_GRACE_S) + Bigdata.MERGE_SLACK_S
        if begin + 2 * WINDOW_S > stop_wall or begin < start_wall + WINDOW_S:
            return False  # the input's first and last window: every vehicle starts or stops
        return closed <= kill_wall - AWAY_S or begin >= ready_wall + AWAY_S

    live: dict[tuple[str, datetime], list[SegmentSpeed]] = defaultdict(list)
    for s in published:
        live[(s.segment_id, s.window_start)].append(s)
    compared = {k for k in expected if away(k[1])}
    doubled = [k for k in compared if len(live.get(k, ())) > 1]
    missing = [k for k in compared if k not in live]
    extra = [k for k in live if away(k[1]) and k not in expected]
    worst = worst_busy = 0.0
    off: list[tuple[Any, ...]] = []
    for k in compared - set(missing):
        got, want = live[k][0], expected[k]
        diff = abs(got.speed_kmh - want.speed_kmh) / max(want.speed_kmh, 1.0)
        worst = max(worst, diff)
        if want.sample_count >= BUSY:
            worst_busy = max(worst_busy, diff)
        if diff > TOLERANCE or abs(got.sample_count - want.sample_count) > 1:
            off.append((k, got.speed_kmh, want.speed_kmh, got.sample_count, want.sample_count))
    busy_off = [o for o in off if o[4] >= BUSY]
    windows = sorted({k[1] for k in compared})
    print(f"{len(fleet.reports)} reports, {len(acked)} acknowledged, {len(stored)} stored "
          f"({fleet.reconnects} reconnects); {len(monitored)} 两客一危 fixes, "
          f"{len(matched)} MatchedPositions; {len(compared)} segment windows compared in "
          f"{len(windows)} windows, worst speed difference {worst:.2%} ({worst_busy:.2%} "
          f"with >= {BUSY} vehicles), {len(off)} beyond {TOLERANCE:.0%} or off by more "
          f"than one vehicle; "
          f"restarted and caught up {ready_wall - kill_wall:.1f} s after the kill")
    per_window = defaultdict(int)
    for k, *_ in off:
        per_window[k[1].isoformat()] += 1
    print(f"windows {[w.isoformat() for w in windows]}, kill {kill_wall:.1f}, ready "
          f"{ready_wall:.1f}; differing per window {dict(per_window)}; {off[:10]}")
    assert not doubled, doubled[:5]
    # A window of a few vehicles may be missing on either side for the same reason as below.
    busy_missing = [k for k in missing if expected[k].sample_count >= BUSY]
    busy_extra = [k for k in extra if live[k][0].sample_count >= BUSY]
    assert not busy_missing, f"{len(busy_missing)} windows missing: {busy_missing[:5]}"
    assert not busy_extra, f"{len(busy_extra)} windows one replica had not: {busy_extra[:5]}"
    off += [(k, None, expected[k].speed_kmh) for k in missing]
    off += [(k, live[k][0].speed_kmh, None) for k in extra]
    # A window's fixes are decided at the matcher's lag, or on a flush tick when the window
    # closes first (SettleSchedule): where the ticks fall against the data is timing the two
    # runs do not share, and a window of one or two vehicles shows it (a piece decided
    # earlier, or just too late), as does the count of a busy window (a vehicle's piece at
    # its edge). With BUSY vehicles or more every window must agree within the tolerance.
    assert not busy_off, f"{len(busy_off)} windows with >= {BUSY} vehicles differ: {busy_off[:5]}"
    assert len(off) <= 0.02 * len(compared), f"{len(off)} of {len(compared)} differ: {off[:5]}"
    assert any(w.timestamp() < kill_wall for w in windows), (windows, kill_wall)
    assert any(w.timestamp() > ready_wall for w in windows), (windows, ready_wall)

    # -- warnings: none lost or doubled -------------------------------------------------------
    warnings = [env for _, env in await stream_envelopes(url, "tti.warning", WARNING)]
    versions: dict[str, dict[int, tuple[object, ...]]] = defaultdict(dict)
    for env in warnings:
        w: Warning = env.payload
        facts = (w.status, w.kind, w.severity, w.cause, w.segment_ids)
        held = versions[w.warning_id].setdefault(w.version, facts)
        assert held == facts, f"{w.warning_id} version {w.version}: {held} and {facts}"
    gaps = {wid: sorted(v) for wid, v in versions.items()
            if sorted(v) != list(range(1, max(v) + 1))}
    # A holder that dies may have decided a version and not sent it: the standby held it back
    # and sends it on taking over (LeaseOutput.catch_up).
    assert not gaps, f"version gaps in {len(gaps)} warnings: {dict(list(gaps.items())[:3])}"
    ours = [env for env in warnings if incident in env.payload.segment_ids]
    assert ours, f"no warning on the incident segment\n{logs('warning-0', 'warning-1')}"
    # The replicas held it before the kill (waited for above); the one killed may have died
    # before its message went out: then the one that took over published it.
    assert any(env.payload.version == 1 for env in ours)
    assert max(env.created_at.timestamp() for env in ours) > ready_wall, \
        "the incident's warning was not carried on after the kill"
    now_active = await asyncio.to_thread(_active_warning, stack)
    assert now_active != active, "the lease stayed with a killed replica"
    async def warning_caught_up() -> bool:
        return not await consumers_behind(url, "warning-")

    await wait_until("both warning replicas consumed everything", warning_caught_up, 90,
                     lambda: logs("warning-0", "warning-1"))
    held = {w: {**await asyncio.to_thread(_active_warnings, services.ports[w]),
                **await asyncio.to_thread(_active_warnings, services.ports[w], alarms=True)}
            for w in ("warning-0", "warning-1")}
    # Nothing the active replica holds is missing from the stream (no warning lost).
    assert all(v in versions.get(wid, {}) for wid, v in held[now_active].items()), held
    # The restarted replica began its memory at its consumers' ack floors (it has not seen the
    # normal windows that made a queue abnormal, nor the first fixes of a coach's night
    # drive): it follows what the active replica publishes (WarningEngine.follow), so it holds
    # the same, within its follow interval.
    async def held_by(w: str) -> dict[str, int]:
        port = services.ports[w]
        return {**await asyncio.to_thread(_active_warnings, port),
                **await asyncio.to_thread(_active_warnings, port, alarms=True)}

    holding: dict[str, dict[str, int]] = {}

    async def held_alike() -> bool:
        for w in ("warning-0", "warning-1"):
            holding[w] = await held_by(w)
        return holding[now_active] == holding[active]

    try:
        await wait_until("the restarted replica holds what the active one holds", held_alike, 30)
        held_same = True
    except AssertionError:
        held_same = False
    only_active = set(holding[now_active]) - set(holding[active])
    differ = {wid: (holding[now_active].get(wid), holding[active].get(wid))
              for wid in set(holding[now_active]) | set(holding[active])
              if holding[now_active].get(wid) != holding[active].get(wid)}
    print(f"warnings: {len(versions)} ids, {len(warnings)} messages, "
          f"{sum(len(v) for v in versions.values())} versions; incident warning "
          f"{len({e.payload.warning_id for e in ours})} id(s); "
          f"{len(holding[now_active])} active at the end, the restarted replica "
          f"{'holds the same' if held_same else 'differs on'} "
          f"{len(differ) or ''} ({len(only_active)} only on the active one); "
          f"the lease moved {active} -> {now_active}")
    assert set(services.stop().values()) == {0}
    assert held_same, (f"(active, restarted) versions differ for {len(differ)} warnings, e.g. "
                       f"{dict(list(differ.items())[:4])}")
