"""Running TTI: the four services in one process (``tti run``) or one alone (``tti serve``).

The composition root with ``services/cli.py`` (which parses the command line and calls these):
the only modules that import every service. ``tti run --safety-demo`` prepares its scenario
here (files, geodatabase) before any service starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from shared.bus import EventBus, bus_from_url
from shared.clock import Clock
from shared.config import Config
from shared.errors import TtiError
from shared.service import READINESS, listen_socket, make_runner

if TYPE_CHECKING:
    from services.bigdata.store import GeoStore

T = TypeVar("T")

log = logging.getLogger("tti.run")


def make_bus(config: Config, clock: Clock) -> EventBus:
    """The configured bus backend (not started); ``clock`` stamps its envelopes."""
    kwargs: dict[str, Any] = {"partitions": config.partitions, "prefix": config.bus_prefix,
                              "clock": clock}
    if not config.bus_url.startswith("memory:"):
        kwargs["stream"] = config.bus_stream
        kwargs["stream_replicas"] = config.bus_replicas
        kwargs["stream_max_bytes"] = config.bus_stream_max_bytes
    return bus_from_url(config.bus_url, **kwargs)


def ensure_demo(config: Config) -> tuple[Config, Any]:
    """Without ``--osm``, generate the demo region under ``var/`` and use it.

    Returns the configuration pointing at the map, and the demo region's description (bus
    routes, incident segment) or None for a real map.
    """
    if config.osm:
        if not Path(config.osm).is_file():
            raise TtiError(f"OSM file not found: {config.osm}", code="bad_input")
        return config, None
    from shared.demo import generate_demo_region

    out = config.var_path / f"demo-{config.demo_size}"
    region = generate_demo_region(out, size=config.demo_size)
    log.info("demo region ready", extra={"osm": str(region.osm_path),
                                         "segments": region.segment_count})
    return (config.replace(osm=str(region.osm_path), gtfs=config.gtfs or str(region.gtfs_path)),
            region)


async def serve_until_signal(runner: web.AppRunner, socks: list[socket.socket],
                              after_start: Callable[[], Awaitable[None]] | None = None,
                              before_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Start the app, serve on the bound sockets until SIGINT/SIGTERM, then drain and clean up.

    Cleanup runs whatever failed: an app whose startup raised (a JT/T 808 port in use) still
    closes what it opened, so the error is the last thing printed.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    set_up = False
    try:
        await runner.setup()
        set_up = True
        for sock in socks:
            await web.SockSite(runner, sock).start()
        if after_start is not None:
            await after_start()
        await stop.wait()
        log.info("shutting down (draining)")
    finally:
        try:
            if before_stop is not None:
                await before_stop()
            if not set_up:
                # aiohttp skips the shutdown hooks (which cancel background tasks) when startup
                # failed; run them, or those tasks outlive their sessions. The app freezes
                # (signals become sendable) only after a successful startup.
                runner.app.freeze()
                await runner.shutdown()
            await runner.cleanup()
        finally:
            for sock in socks:  # those never handed to a site
                sock.close()


def build_embedded(config: Config, bus: EventBus, clock: Clock
                   ) -> tuple[web.Application, Any]:
    """All four services in one app tree: publisher at ``/``, the others mounted below it.

    Every service reads time through ``clock``: the one clock of the process.
    """
    from services.bigdata.app import create_app as bigdata_app
    from services.collector.app import create_app as collector_app
    from services.publisher.app import create_app as publisher_app
    from services.warning.app import create_app as warning_app

    root = publisher_app(config, bus=bus, clock=clock)
    subapps = {
        "bigdata": bigdata_app(config, bus=bus, clock=clock),
        "warning": warning_app(config, bus=bus, clock=clock),
        "collector": collector_app(config, bus=bus, clock=clock),
    }
    for name, sub in subapps.items():
        root.add_subapp(f"/{name}/", sub)
        # The root /readyz answers for the whole process: every service's checks count.
        for check, fn in sub[READINESS].items():
            root[READINESS][f"{name}.{check}"] = fn
    return root, subapps


async def run_embedded(config: Config, *, safety_demo: bool = False,
                       fresh_db: Path | None = None) -> None:
    """``tti run``: everything in one process until SIGINT/SIGTERM.

    ``safety_demo``: the 两客一危 scenario instead of the ordinary fleet (see
    :func:`safety_demo_config`); ``fresh_db``: a SQLite file to delete first (the scenario's own
    database: it replays the same night, and warning ids are deterministic).
    """
    # Bound first: a port in use fails at once, before the demo city or an import.
    http_sock = listen_socket(config.http_host, config.http_port)
    try:
        await _run_embedded(config, http_sock, safety_demo=safety_demo, fresh_db=fresh_db)
    finally:
        http_sock.close()


SAFETY_DEMO_DIR = "safety-demo"
SAFETY_DEMO_COMMAND_TIMEOUT_S = 300.0
"""The scenario's command reply timeout in clock seconds (2 s of real time at rate 150): a
terminal's TCP round trip does not shrink with the clock."""


def _delete_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def _prepare_safety_demo(config: Config, demo: Any, fresh_db: Path | None) -> None:
    """Write the scenario's files and load the geodatabase before any service starts: the demo
    city's roads, then the geofence closing its tunnel to dangerous goods (what ``tti
    import-osm`` and ``tti import-geofences`` do), so the warning service finds it at start."""
    from services.bigdata.geofences import import_geofences_file
    from services.bigdata.osm_features import import_osm_file
    from services.simulator.safety_demo import write_files

    if demo is None or not demo.tunnels:
        raise TtiError("--safety-demo needs the demo city's tunnel", code="bad_input")
    if fresh_db is not None:
        await asyncio.to_thread(_delete_sqlite, fresh_db)
    tunnel = demo.tunnels[0]
    routes, fences = await asyncio.to_thread(
        write_files, config.var_path / SAFETY_DEMO_DIR, tunnel_name=tunnel.name,
        tunnel_name_en=tunnel.name_en, tunnel_segment_ids=tunnel.segment_ids)
    if Path(config.coach_routes) != routes:
        log.info("safety demo: coach routes from %s, not the demo's %s", config.coach_routes,
                 routes)

    async def load(store: GeoStore) -> None:
        await import_osm_file(store, config.osm)
        result = await import_geofences_file(store, fences)
        if result.applied != 1:
            raise TtiError(f"safety demo geofence not imported: {result.errors}",
                           code="bad_input")

    await with_store(config, load)
    log.info("safety demo ready", extra={"geofences": str(fences), "coach_routes": str(routes),
                                         "db_url": config.db_url})


async def _run_embedded(config: Config, http_sock: socket.socket, *, safety_demo: bool = False,
                        fresh_db: Path | None = None) -> None:
    from services.simulator.fleet import Simulator, add_incident_routes, sim_config_from
    from services.simulator.gtfs_rt_feed import (
        FEED_PATH,
        SimGtfsRtFeed,
        add_gtfs_rt_feed_route,
        load_timetable,
    )

    config, demo = ensure_demo(config)
    sim_config = sim_config_from(config, demo=demo)
    if safety_demo:
        await _prepare_safety_demo(config, demo, fresh_db)
        folder = config.var_path / SAFETY_DEMO_DIR
        sim_config = dataclasses.replace(sim_config, safety_demo=True,
                                         registry_path=str(folder / "vehicles.csv"))
    clock = config.make_clock()  # the one clock: services, bus envelopes and the fleet
    # Half the buses report through the simulator's GTFS-rt feed, the rest as JT/T 808 terminals.
    sim = Simulator(dataclasses.replace(sim_config, gtfs_rt_share=0.5), clock=clock)
    await asyncio.to_thread(sim.prepare)  # writes the fleet's vehicle registry
    config = config.replace(bigdata_url=f"http://127.0.0.1:{config.http_port}/bigdata",
                            warning_url=f"http://127.0.0.1:{config.http_port}/warning",
                            vehicle_registry=config.vehicle_registry
                            or sim.config.registry_path,
                            # The collector polls the simulator's GTFS-rt feed unless told others,
                            # as often as buses report: sparser fixes of the same buses would
                            # blur the probe speeds the JT/T 808 reports give.
                            gtfs_rt_urls=config.gtfs_rt_urls or (() if safety_demo else (
                                f"sim=http://127.0.0.1:{config.http_port}{FEED_PATH}",)),
                            gtfs_rt_poll_s=config.gtfs_rt_poll_s if config.gtfs_rt_urls
                            else min(config.gtfs_rt_poll_s, config.sim_interval_s))
    bus = make_bus(config, clock)
    await bus.start()
    root, _ = build_embedded(config, bus, clock)
    add_incident_routes(root, sim)
    timetable = await asyncio.to_thread(load_timetable, config.gtfs) if demo is not None else None
    add_gtfs_rt_feed_route(root, SimGtfsRtFeed(sim.bus_fixes, timetable=timetable,
                                               refresh_s=config.sim_interval_s, clock=clock))
    runner = make_runner(root)

    async def start_sim() -> None:
        await sim.start()
        log.info("TTI running", extra={"http": f"http://127.0.0.1:{config.http_port}/",
                                        "jt808_port": config.jt808_port,
                                        "vehicles": len(sim.fleet),
                                        "safety_demo": safety_demo,
                                        "clock": repr(clock)})

    try:
        await serve_until_signal(runner, [http_sock], after_start=start_sim,
                                  before_stop=sim.stop)
    finally:
        await bus.close()


async def serve_one(service: str, config: Config) -> None:
    """``tti serve <service>``: one service, its own HTTP port, the configured bus and store.

    The caller checks :meth:`Config.production_problems` first (``main`` refuses to start).
    """
    http_sock = listen_socket(config.http_host, config.http_port)
    try:
        await _serve_one(service, config, http_sock)
    finally:
        http_sock.close()


async def _serve_one(service: str, config: Config, http_sock: socket.socket) -> None:
    clock = config.make_clock()
    bus = make_bus(config, clock)
    await bus.start()
    if service == "bigdata":
        from services.bigdata.app import create_app as bigdata_app

        app = bigdata_app(config, bus=bus, clock=clock)
    elif service == "collector":
        from services.collector.app import create_app as collector_app

        app = collector_app(config, bus=bus, clock=clock)
    elif service == "warning":
        from services.warning.app import create_app as warning_app

        app = warning_app(config, bus=bus, clock=clock)
    else:
        from services.publisher.app import create_app as publisher_app

        app = publisher_app(config, bus=bus, clock=clock)
    try:
        await serve_until_signal(make_runner(app), [http_sock])
    finally:
        await bus.close()


async def with_store(config: Config, work: Callable[[GeoStore], Awaitable[T]]) -> T:
    """Run an import against the geodatabase; a rejection's reasons go to stderr, one a line."""
    from services.bigdata.store import store_from_url

    store = store_from_url(config.db_url)
    await store.open()
    try:
        return await work(store)
    except TtiError as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        for reason in details.get("errors", []):
            print(f"  error: {reason}", file=sys.stderr)
        raise
    finally:
        await store.close()
