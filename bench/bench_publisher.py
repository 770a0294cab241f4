"""Benchmark: the publisher's answers under load — one segment's status and one stop's arrivals.

Run: ``.venv/bin/python bench/bench_publisher.py [--duration 10] [--connections 100]``.

It generates the demo city (the one ``tti run`` serves, ``--size``), imports it into a SQLite
geodatabase and serves it with the real bigdata app (in this process); starts the publisher in a
process of its own pinned to one core (``taskset -c 0``), which loads the catalogue, stops and
routes from bigdata and is then fed a realistic state as bus events — a live ``RoadStatus`` for
every segment, buses on every route with occupancy, and their arrival predictions at the stops
ahead, some active warnings — through its real handlers; during the measurement every bus
reports and is predicted again every 10 s (live traffic invalidates the answers it changes).
Load comes from ``wrk`` (Debian's, in a separate process on the other core: 100 connections),
against

- ``GET /api/v1/roads/{segment_id}`` (a bridge segment) and
- ``GET /api/v1/stops/{stop_id}/arrivals`` (the busiest stop: live rows and the timetable),
- the sign's ``GET /api/v1/stops/{stop_id}/sign`` of the same stop (for information),

and, measured in the same run on the same core (first and last; the mean is the baseline), a
bare aiohttp app answering one precomputed JSON body of the road answer's size (the floor
aiohttp itself sets). Printed: requests/s, p50, p99 and the ratio to the bare endpoint, and
requests per CPU-second of the server process (from /proc: steadier than wall-clock figures
when other work shares the machine). Targets: ≥ 5,000 req/s, p99 < 50 ms, ≥ 0.5× bare.

Needs ``wrk`` (``apt-get install -y wrk``; run as root the bench installs it) and two cores.
``TTI_BENCH_PROFILE=FILE`` writes a pyinstrument profile of the publisher under load to FILE
(``TTI_BENCH_PROFILE_ALL=1``: with aiohttp's own frames).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled

SERVER_CORE = 0
LOAD_CORE = 1
START = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)  # Tuesday 09:00 in Wuhan: the timetable runs
FEED_EVERY_S = 10.0


# -- wrk ----------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of wrk, installing Debian's package when we may; a clear exit otherwise."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("bench_publisher needs wrk: apt-get install -y wrk (Debian/Ubuntu)")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(raw: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", raw)
    if m is None:
        raise ValueError(f"unreadable wrk latency {raw!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50 and p99 (ms), and non-2xx/3xx responses and socket errors of a wrk run."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"unreadable wrk output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)),
            "p99_ms": _ms(p99.group(1)), "bad": float(bad.group(1)) if bad else 0.0,
            "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_wrk(wrk: str, url: str, *, connections: int, duration_s: int, threads: int,
                  server_pid: int) -> dict[str, float]:
    """One wrk run on the load core (a short warm-up first), with the server's CPU time."""
    base = ["taskset", "-c", str(LOAD_CORE), wrk, f"-t{threads}", f"-c{connections}",
            "--latency", url]
    warm = await asyncio.create_subprocess_exec(*base[:-1], "-d2s", url,
                                                stdout=asyncio.subprocess.DEVNULL)
    await warm.wait()
    cpu0 = cpu_seconds(server_pid)
    proc = await asyncio.create_subprocess_exec(*base[:-1], f"-d{duration_s}s", url,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    cpu = cpu_seconds(server_pid) - cpu0
    result = parse_wrk(out.decode())
    result["per_cpu_s"] = result["rps"] * duration_s / cpu if cpu > 0 else 0.0
    return result


# -- the servers (child processes) ----------------------------------------------------------


def serve_baseline(port: int, body_bytes: int) -> None:
    """A bare aiohttp app: one precomputed JSON body of ``body_bytes`` bytes."""
    import orjson
    import uvloop
    from aiohttp import web

    body = orjson.dumps({"type": "Feature", "padding": "x" * max(0, body_bytes - 40)})

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/json", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("READY", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def until(ready: Callable[[], bool]) -> None:
    """Wait until ``ready()`` (the state is built by background tasks and bus consumers)."""
    for _ in range(12_000):  # ten minutes
        if ready():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the publisher's state was not built in ten minutes")


def serve_publisher(port: int, bigdata_url: str, size: int) -> None:
    """The publisher as ``tti serve publisher`` runs it, fed a realistic state on its bus."""
    import uvloop

    uvloop.run(_publisher_main(port, bigdata_url, size))


async def _publisher_main(port: int, bigdata_url: str, size: int) -> None:
    from aiohttp import web

    from services.publisher.app import PUBLISHER, create_app
    from shared.bus.memory import MemoryBus
    from shared.clock import Clock
    from shared.config import Config
    from shared.service import make_runner

    # No warning service runs here: its index and incidents stay unprimed (retried quietly).
    logging.getLogger("tti.publisher").setLevel(logging.ERROR)
    clock = Clock(start=START)
    bus = MemoryBus(partitions=16)
    await bus.start()
    config = Config(bigdata_url=bigdata_url, warning_url="http://127.0.0.1:9/warning",
                    public_id_key="bench", log_level="WARNING")
    app = create_app(config, bus=bus, clock=clock)
    runner = make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    publisher = app[PUBLISHER]
    await until(lambda: publisher.catalogue is not None and publisher.places is not None)
    demo = await feed_state(publisher, bus, clock, size)
    feeder = asyncio.create_task(keep_feeding(bus, demo, clock, FEED_EVERY_S))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    profile = os.environ.get("TTI_BENCH_PROFILE")  # a file for pyinstrument's report
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    print("READY", flush=True)
    await stop.wait()
    if profiler is not None and profile:
        profiler.stop()
        text = profiler.output_text(unicode=True,
                                    show_all=os.environ.get("TTI_BENCH_PROFILE_ALL") == "1")
        await asyncio.to_thread(Path(profile).write_text, text)
    feeder.cancel()
    await runner.cleanup()
    await bus.close()


async def feed_state(publisher: Any, bus: Any, clock: Any, size: int) -> Any:
    """Road statuses for every segment, buses and predictions on every route, warnings."""
    from shared.demo import generate_demo_region
    from shared.events import (
        ROAD_STATUS,
        WARNING,
        CapCategory,
        CapCertainty,
        CapMsgType,
        CapSeverity,
        CapUrgency,
        RoadStatus,
        Warning,
        WarningKind,
        WarningStatus,
    )
    from shared.levels import LEVEL_NAMES, LEVEL_NAMES_EN

    now = clock.now()
    for i, seg in enumerate(publisher.catalogue.list_segments()):
        level = 1 + (i * 7919) % 5 if i % 4 else 1
        speed = seg.free_flow_kmh * (1.0, 0.8, 0.6, 0.4, 0.2)[level - 1]
        await bus.publish(ROAD_STATUS, RoadStatus(
            segment_id=seg.segment_id, level=level, level_name=LEVEL_NAMES[level],
            level_name_en=LEVEL_NAMES_EN[level], speed_kmh=speed,
            free_flow_kmh=seg.free_flow_kmh, observed_at=now, sample_count=3 + i % 9,
            source="probe", tpi=2.0 * (level - 1)))
    with tempfile.TemporaryDirectory() as tmp:
        demo = generate_demo_region(Path(tmp), size=size)
    await feed_buses(bus, demo, now)
    for j, bridge in enumerate(demo.bridges):
        await bus.publish(WARNING, Warning(
            warning_id=f"bench-{j}", kind=WarningKind.CONGESTION, status=WarningStatus.RAISED,
            category=CapCategory.TRANSPORT, severity=CapSeverity.SEVERE,
            urgency=CapUrgency.IMMEDIATE, certainty=CapCertainty.OBSERVED,
            msg_type=CapMsgType.ALERT, started_at=now, updated_at=now,
            headline=f"{bridge.name} 严重拥堵", headline_en=f"{bridge.name_en} severe congestion",
            cause="severe_congestion", segment_ids=bridge.segment_ids[:2], level=5))
    # The memory bus hands events to the consumers' queues; wait until they are applied.
    await until(lambda: publisher.buses.held > 0
                and len(publisher.roads) >= len(publisher.catalogue))
    await asyncio.sleep(1.0)
    return demo


async def feed_buses(bus: Any, demo: Any, now: datetime) -> int:
    """Three buses per route direction, spread along it, each with its occupancy and its
    predictions at the next ten stops (as bigdata publishes them); returns the event count."""
    from shared.events import (
        ARRIVAL_PREDICTION,
        VEHICLE_POSITION,
        ArrivalPrediction,
        VehiclePosition,
    )

    n = events = 0
    for route in demo.bus_routes:
        for pattern in route.patterns:
            stops = pattern.stops
            for b in range(3):
                n += 1
                phone = f"139{n:08d}"
                at = stops[min(len(stops) - 1, b * len(stops) // 3)]
                await bus.publish(VEHICLE_POSITION, VehiclePosition(
                    vehicle_id=phone, lon=at.lon, lat=at.lat, observed_at=now, speed_kmh=20.0,
                    heading_deg=90.0, vehicle_class="bus", route_id=route.route_id,
                    occupancy=("MANY_SEATS_AVAILABLE", "FEW_SEATS_AVAILABLE",
                               "STANDING_ROOM_ONLY")[n % 3], occupancy_pct=30.0 + n % 60),
                    key=phone)
                events += 1
                first = stops.index(at)
                for k, stop in enumerate(stops[first + 1:first + 11], start=1):
                    await bus.publish(ARRIVAL_PREDICTION, ArrivalPrediction(
                        trip_id=f"{route.route_id}_{pattern.direction_id}_{b}",
                        route_id=route.route_id, stop_id=stop.stop_id,
                        stop_sequence=first + 1 + k, vehicle_id=phone,
                        predicted_arrival=now + timedelta(seconds=90 * k), made_at=now,
                        start_date="20260303", direction_id=pattern.direction_id,
                        scheduled_arrival=now + timedelta(seconds=90 * k - 30)), key=phone)
                    events += 1
    return events


async def keep_feeding(bus: Any, demo: Any, clock: Any, every_s: float) -> None:
    """Live traffic during the measurement: every bus reports and is predicted again."""
    while True:
        await clock.sleep(every_s)
        await feed_buses(bus, demo, clock.now())


# -- orchestration --------------------------------------------------------------------------


async def start_child(*args: str, script: str = __file__) -> asyncio.subprocess.Process:
    """``script`` (this one by default) in a child process on the server core; returns once
    it prints READY."""
    proc = await asyncio.create_subprocess_exec(
        "taskset", "-c", str(SERVER_CORE), sys.executable, script, *args,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    if line.strip() != b"READY":
        raise RuntimeError(f"server {args[0]} did not start: {line!r}")
    return proc


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    await proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(args: argparse.Namespace) -> int:
    wrk = ensure_wrk()
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench_publisher needs two cores: the server on one, wrk on the other")
    os.sched_setaffinity(0, {LOAD_CORE})  # bigdata (here) and wrk share the load core
    async with demo_bigdata("tti-bench-publisher-", args.size) as (demo, bigdata, _):
        print(f"python {platform.python_version()}, uvloop, server pinned to core "
              f"{SERVER_CORE}, wrk on core {LOAD_CORE}: {args.connections} connections, "
              f"{args.threads} threads, {args.duration} s per run")
        results = await _measure(args, wrk, demo, bigdata)
    return _report(results, args)


async def _measure(args: argparse.Namespace, wrk: str, demo: Any, bigdata: Any
                   ) -> dict[str, dict[str, float]]:
    """The bare endpoint, road status, stop arrivals and the sign under wrk."""
    from aiohttp import ClientSession

    results: dict[str, dict[str, float]] = {}
    port, bare_port = free_port(), free_port()
    proc = await start_child("_publisher", str(port), str(bigdata.make_url("")).rstrip("/"),
                             str(args.size))
    bare_proc = None
    try:
        base = f"http://127.0.0.1:{port}"
        async with ClientSession() as http:
            bridges = await (await http.get(f"{base}/api/v1/roads?bridge=true")).json()
            segment = bridges["features"][0]["id"]
            stop = busiest_stop(demo)
            road_url = f"{base}/api/v1/roads/{segment}"
            road_body = await (await http.get(road_url)).read()
            arrivals = await (await http.get(f"{base}/api/v1/stops/{stop}/arrivals")).json()
            live = sum(a["source"] == "live" for a in arrivals["arrivals"])
            print(f"road answer {len(road_body)} B ({segment}); stop {stop}: "
                  f"{len(arrivals['arrivals'])} arrivals ({live} live, timetable "
                  f"{arrivals['timetable']})")
        # Both servers wait on the server core; each is measured while the other idles.
        # The bare endpoint is measured first and last (the machine may be shared) and
        # its mean is the baseline.
        bare_proc = await start_child("_baseline", str(bare_port), str(len(road_body)))
        bare_url = f"http://127.0.0.1:{bare_port}/json"
        runs = (("bare aiohttp (1)", bare_url), ("road status", road_url),
                ("stop arrivals", f"{base}/api/v1/stops/{stop}/arrivals"),
                ("stop sign", f"{base}/api/v1/stops/{stop}/sign"),
                ("bare aiohttp (2)", bare_url))
        for name, url in runs:
            pid = bare_proc.pid if url == bare_url else proc.pid
            results[name] = await run_wrk(wrk, url, connections=args.connections,
                                          duration_s=args.duration, threads=args.threads,
                                          server_pid=pid)
    finally:
        await stop_child(proc)
        if bare_proc is not None:
            await stop_child(bare_proc)
    return results


@contextlib.asynccontextmanager
async def demo_bigdata(prefix: str, size: int) -> AsyncIterator[tuple[Any, Any, Path]]:
    """The demo city of ``size`` imported into SQLite and served by the real bigdata app in
    this process (on the load core): (the demo, its TestServer, a scratch folder)."""
    from aiohttp.test_utils import TestServer

    from services.bigdata.app import create_app as create_bigdata_app
    from services.bigdata.gtfs_import import import_gtfs_file
    from services.bigdata.osm_features import import_osm_file
    from services.bigdata.store import store_from_url
    from shared.bus.memory import MemoryBus
    from shared.clock import Clock
    from shared.config import Config
    from shared.demo import generate_demo_region

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        t0 = time.perf_counter()
        demo = generate_demo_region(tmp / "demo", size=size)
        db = tmp / "geo.db"
        store = store_from_url(f"sqlite:///{db}")
        await store.open()
        try:
            await import_osm_file(store, demo.osm_path)
            await import_gtfs_file(store, demo.gtfs_path)
        finally:
            await store.close()
        bus = MemoryBus(partitions=4)
        await bus.start()
        config = Config(db_url=f"sqlite:///{db}", osm=str(demo.osm_path),
                        gtfs=str(demo.gtfs_path), var_dir=str(tmp), partitions=4,
                        log_level="WARNING")
        bigdata = TestServer(create_bigdata_app(config, bus=bus, clock=Clock(start=START)))
        await bigdata.start_server()
        print(f"demo city size {size}: {demo.segment_count} segments, "
              f"{len(demo.bus_routes)} bus routes; imported in {time.perf_counter() - t0:.1f} s")
        try:
            yield demo, bigdata, tmp
        finally:
            await bigdata.close()
            await bus.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> int:
    bares = [results["bare aiohttp (1)"], results["bare aiohttp (2)"]]
    bare = sum(r["rps"] for r in bares) / 2
    bare_cpu = sum(r["per_cpu_s"] for r in bares) / 2
    print(f"\n{'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'× bare':>9}"
          f"{'req/CPU-s':>11}{'× bare':>9}  errors")
    for name, r in results.items():
        print(f"{name:<18}{r['rps']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['rps'] / bare:>9.2f}{r['per_cpu_s']:>11,.0f}{r['per_cpu_s'] / bare_cpu:>9.2f}"
              f"  {int(r['bad'] + r['errors'])}")
    ok = all(results[n]["rps"] >= 5000 and results[n]["p99_ms"] < 50
             and results[n]["rps"] >= 0.5 * bare and results[n]["bad"] == 0
             for n in ("road status", "stop arrivals"))
    print("\ntargets (road status, stop arrivals): ≥ 5,000 req/s, p99 < 50 ms, ≥ 0.5× bare: "
          + ("met" if ok else "NOT met"))
    return 0 if ok or not args.strict else 1


def busiest_stop(demo: Any) -> str:
    """The stop served by the most route directions (ties: the lowest id)."""
    counts: dict[str, int] = {}
    for route in demo.bus_routes:
        for pattern in route.patterns:
            for stop in pattern.stops:
                counts[stop.stop_id] = counts.get(stop.stop_id, 0) + 1
    return min(counts, key=lambda s: (-counts[s], s))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_publisher":
        serve_publisher(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        serve_baseline(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--size", type=int, default=1, help="demo city size (tti run's: 1)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
