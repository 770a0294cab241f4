"""The ``tti`` command: the composition root, the only module that imports every service.

``tti run`` starts all four services in one process (memory bus, SQLite, generated demo region,
fleet simulator); ``tti serve <service>`` starts one alone with the bus and database the
configuration selects; ``tti simulate`` drives virtual JT/T 808 terminals against a collector;
``tti import-osm FILE`` loads a road network and its features into the geodatabase;
``tti import-gtfs FILE`` loads a GTFS static feed; ``tti import-detectors FILE`` the registry of
roadside detectors and cameras (which segment each watches).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from shared.bus import EventBus, bus_from_url
from shared.clock import Clock
from shared.config import SERVICE_PORTS, Config, load_config
from shared.errors import TtiError
from shared.service import READINESS, configure_logging

if TYPE_CHECKING:
    from services.bigdata.store import GeoStore

T = TypeVar("T")

log = logging.getLogger("tti.cli")

SERVICES = ("collector", "bigdata", "warning", "publisher")


def _add_config_flags(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per Config field (``--speed-window-s`` ↔ ``TTI_SPEED_WINDOW_S``)."""
    for f in dataclasses.fields(Config):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else ()
        if isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, action="append", default=None,
                                help=f"repeatable (env TTI_{f.name.upper()}, comma-separated)")
        elif isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, default=None,
                                type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                                help=f"true/false (env TTI_{f.name.upper()}, default {default})")
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=type(default),
                                help=f"env TTI_{f.name.upper()} (default {default!r})")


def _config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    names = {f.name for f in dataclasses.fields(Config)}
    overrides: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k in names and v is not None:
            overrides[k] = tuple(v) if isinstance(v, list) else v
    # Service defaults (a port per service) yield to explicit flags and TTI_* variables.
    overrides.update({k: v for k, v in extra.items()
                      if k not in overrides and f"TTI_{k.upper()}" not in os.environ})
    return load_config(**overrides)


def make_bus(config: Config, clock: Clock) -> EventBus:
    """The configured bus backend (not started); ``clock`` stamps its envelopes."""
    kwargs: dict[str, Any] = {"partitions": config.partitions, "prefix": config.bus_prefix,
                              "clock": clock}
    if not config.bus_url.startswith("memory:"):
        kwargs["stream"] = config.bus_stream
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


async def _serve_until_signal(runner: web.AppRunner, sites: list[web.BaseSite],
                              after_start: Callable[[], Awaitable[None]] | None = None,
                              before_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    for site in sites:
        await site.start()
    try:
        if after_start is not None:
            await after_start()
        await stop.wait()
        log.info("shutting down (draining)")
    finally:
        if before_stop is not None:
            await before_stop()
        await runner.cleanup()


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


async def run_embedded(config: Config) -> None:
    """``tti run``: everything in one process until SIGINT/SIGTERM."""
    from services.simulator.fleet import Simulator, add_incident_routes, sim_config_from
    from services.simulator.gtfs_rt_feed import (
        FEED_PATH,
        SimGtfsRtFeed,
        add_gtfs_rt_feed_route,
        load_timetable,
    )

    config, demo = ensure_demo(config)
    clock = config.make_clock()  # the one clock: services, bus envelopes and the fleet
    # Half the buses report through the simulator's GTFS-rt feed, the rest as JT/T 808 terminals.
    sim = Simulator(dataclasses.replace(sim_config_from(config, demo=demo), gtfs_rt_share=0.5),
                    clock=clock)
    await asyncio.to_thread(sim.prepare)  # writes the fleet's vehicle registry
    config = config.replace(bigdata_url=f"http://127.0.0.1:{config.http_port}/bigdata",
                            warning_url=f"http://127.0.0.1:{config.http_port}/warning",
                            vehicle_registry=config.vehicle_registry
                            or sim.config.registry_path,
                            # The collector polls the simulator's GTFS-rt feed unless told others,
                            # as often as buses report: sparser fixes of the same buses would
                            # blur the probe speeds the JT/T 808 reports give.
                            gtfs_rt_urls=config.gtfs_rt_urls
                            or (f"sim=http://127.0.0.1:{config.http_port}{FEED_PATH}",),
                            gtfs_rt_poll_s=config.gtfs_rt_poll_s if config.gtfs_rt_urls
                            else min(config.gtfs_rt_poll_s, config.sim_interval_s))
    bus = make_bus(config, clock)
    await bus.start()
    root, _ = build_embedded(config, bus, clock)
    add_incident_routes(root, sim)
    timetable = await asyncio.to_thread(load_timetable, config.gtfs) if demo is not None else None
    add_gtfs_rt_feed_route(root, SimGtfsRtFeed(sim.bus_fixes, timetable=timetable,
                                               refresh_s=config.sim_interval_s, clock=clock))
    runner = web.AppRunner(root, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.http_host, config.http_port)

    async def start_sim() -> None:
        await sim.start()
        log.info("TTI running", extra={"http": f"http://127.0.0.1:{config.http_port}/",
                                        "jt808_port": config.jt808_port,
                                        "vehicles": config.sim_vehicles,
                                        "clock": repr(clock)})

    try:
        await _serve_until_signal(runner, [site], after_start=start_sim, before_stop=sim.stop)
    finally:
        await bus.close()


async def serve_one(service: str, config: Config) -> None:
    """``tti serve <service>``: one service, its own HTTP port, the configured bus and store."""
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
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await _serve_until_signal(runner, [web.TCPSite(runner, config.http_host,
                                                       config.http_port)])
    finally:
        await bus.close()


async def _with_store(config: Config, work: Callable[[GeoStore], Awaitable[T]]) -> T:
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


async def import_osm(config: Config, path: str) -> None:
    """``tti import-osm FILE``: roads and features of one OSM file, in one transaction.

    Progress goes to stderr, the summary to stdout. A missing, unreadable or road-less file is
    rejected (TtiError → exit code 2) before anything is written; the same file again is a no-op.
    """
    from services.bigdata.osm_features import import_osm_file, stderr_progress

    summary = await _with_store(config, lambda store: import_osm_file(
        store, path, progress=stderr_progress()))
    print(summary.describe())


async def import_gtfs(config: Config, path: str, feed_id: str | None) -> None:
    """``tti import-gtfs FILE``: validate a GTFS static feed and store it (idempotent).

    A feed with errors is rejected with every reason on stderr (exit code 2), nothing written;
    warnings are printed and the feed imported.
    """
    from services.bigdata.gtfs_import import import_gtfs_file
    from services.bigdata.osm_features import stderr_progress

    summary = await _with_store(config, lambda store: import_gtfs_file(
        store, path, feed_id=feed_id, progress=stderr_progress()))
    for warning in summary.warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    print(summary.describe())


async def import_detectors(config: Config, path: str) -> None:
    """``tti import-detectors FILE``: the detector registry CSV, checked against the roads.

    ``detector_id,segment_id,lon,lat[,type,name,name_en,direction]``; rows with an unknown
    segment or bad values are listed on stderr and skipped, the rest replace the previous
    registry in one transaction. No usable row: rejected (exit code 2), nothing written.
    """
    from services.bigdata.store.features import import_detectors_csv

    result = await _with_store(config, lambda store: import_detectors_csv(store, path))
    for reason in result.errors:
        print(f"  skipped: {reason}", file=sys.stderr)
    print(f"detectors: {result.applied} of {result.rows} rows imported"
          + ("" if result.changed else " (unchanged)"))


async def simulate(config: Config) -> None:
    """``tti simulate``: the fleet simulator alone, against a running collector."""
    from services.simulator.fleet import Simulator, sim_config_from

    config, demo = ensure_demo(config)
    # Run the collector with the same TTI_CLOCK_RATE/START, or its time checks refuse reports.
    sim = Simulator(sim_config_from(config, demo=demo), clock=config.make_clock())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await sim.start()
    try:
        await stop.wait()
    finally:
        await sim.stop()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tti`` console script."""
    parser = argparse.ArgumentParser(prog="tti", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run the whole system in one process (embedded)")
    _add_config_flags(p_run)
    p_run.add_argument("--incident", dest="sim_incidents", action="append",
                       help="SEGMENT_ID@START+DURATION:SPEED_KMH or 'demo' (repeatable)")
    p_run.add_argument("--vehicles", dest="sim_vehicles", type=int)
    p_serve = sub.add_parser("serve", help="run one service")
    p_serve.add_argument("service", choices=SERVICES)
    _add_config_flags(p_serve)
    p_sim = sub.add_parser("simulate", help="run the fleet simulator against a collector")
    _add_config_flags(p_sim)
    p_sim.add_argument("--incident", dest="sim_incidents", action="append",
                       help="SEGMENT_ID@START+DURATION:SPEED_KMH or 'demo' (repeatable)")
    p_sim.add_argument("--vehicles", dest="sim_vehicles", type=int)
    p_imp = sub.add_parser("import-osm", help="import an OpenStreetMap .osm/.osm.pbf file")
    p_imp.add_argument("file")
    _add_config_flags(p_imp, only=["db_url", "log_level", "log_format"])
    p_gtfs = sub.add_parser("import-gtfs", help="import a GTFS static feed (.zip)")
    p_gtfs.add_argument("file")
    p_gtfs.add_argument("--feed-id", dest="feed_id", default=None,
                        help="feed id (default: the file name without extension)")
    _add_config_flags(p_gtfs, only=["db_url", "log_level", "log_format"])
    p_det = sub.add_parser("import-detectors",
                           help="import the roadside detector and camera registry (.csv)")
    p_det.add_argument("file")
    _add_config_flags(p_det, only=["db_url", "log_level", "log_format"])
    args = parser.parse_args(argv)

    try:
        if args.command == "serve":
            config = _config_from_args(args, http_port=SERVICE_PORTS[args.service])
        else:
            config = _config_from_args(args)
        configure_logging(config.log_level, config.log_format)
        _install_uvloop()
        if args.command == "run":
            asyncio.run(run_embedded(config))
        elif args.command == "serve":
            asyncio.run(serve_one(args.service, config))
        elif args.command == "simulate":
            asyncio.run(simulate(config))
        elif args.command == "import-osm":
            asyncio.run(import_osm(config, args.file))
        elif args.command == "import-gtfs":
            asyncio.run(import_gtfs(config, args.file, args.feed_id))
        elif args.command == "import-detectors":
            asyncio.run(import_detectors(config, args.file))
    except TtiError as exc:
        print(f"tti: error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a folder we may not write: say so, no traceback
        print(f"tti: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
