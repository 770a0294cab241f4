"""The ``tti`` command: with ``services/runtime.py`` the composition root, the only modules
that import every service.

``tti run`` starts all four services in one process (memory bus, SQLite, generated demo
region, fleet simulator; ``--safety-demo``: the 两客一危 scenario of
``services/simulator/safety_demo.py`` on a fast clock); ``tti serve <service>`` starts one
alone with the bus and database the configuration selects; ``tti simulate`` drives virtual
JT/T 808 terminals against a collector;
``tti import-osm FILE`` loads a road network and its features into the geodatabase;
``tti import-gtfs FILE`` loads a GTFS static feed; ``tti import-detectors FILE`` the registry of
roadside detectors and cameras (which segment each watches); ``tti import-geofences FILE`` the
geofences of 两客一危 monitoring (GeoJSON: restricted zones and roads, assigned routes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.runtime import (
    SAFETY_DEMO_COMMAND_TIMEOUT_S,
    SAFETY_DEMO_DIR,
    ensure_demo,
    run_embedded,
    serve_one,
    with_store,
)
from shared.clock import Clock
from shared.config import (
    GROUPS,
    SERVICE_PORTS,
    Config,
    load_config,
    setting_group,
    setting_help,
    settings_for,
)
from shared.errors import TtiError
from shared.events import DEPARTMENT_ROLES
from shared.service import configure_logging

if TYPE_CHECKING:
    pass


log = logging.getLogger("tti.cli")

SERVICES = ("collector", "bigdata", "warning", "publisher")


SERVICE_HELP = {
    "collector": "JT/T 808 gateway, GTFS-rt polling and sensor inputs (HTTP 8081, TCP 6808)",
    "bigdata": "geodatabase, map matching, segment speeds, bus arrivals (HTTP 8082)",
    "warning": "congestion levels, incidents, warnings, routing (HTTP 8083)",
    "publisher": "citizen API and web page (HTTP 8080)",
}

_METAVARS = {bool: "BOOL", int: "N", float: "NUM", str: "TEXT", tuple: "A,B"}


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {raw!r} (true or false)")


def _add_config_flags(parser: argparse.ArgumentParser,
                      fields: Sequence[dataclasses.Field[Any]]) -> dict[str, Any]:
    """One flag per setting (``--speed-window-s`` ↔ ``TTI_SPEED_WINDOW_S``), grouped by service.

    Returns the argument groups by name, so commands can add their own flags beside them.
    """
    groups: dict[str, Any] = {}
    for name, title in GROUPS.items():
        mine = [f for f in fields if setting_group(f) == name]
        if not mine:
            continue
        group = groups[name] = parser.add_argument_group(title)
        for f in mine:
            default = f.default
            env = f"TTI_{f.name.upper()}"
            if isinstance(default, tuple):
                where = f"{env}, comma-separated; the flag is repeatable"
            elif default in ("", None) or not f.metadata.get("show_default", True):
                where = env
            else:
                where = f"{env}, default {default}"
            kwargs: dict[str, Any] = {"dest": f.name, "default": None,
                                      "metavar": _METAVARS.get(type(default), "X"),
                                      "help": f"{setting_help(f)} [{where}]"}
            if isinstance(default, tuple):
                kwargs["action"] = "append"
            elif isinstance(default, bool):
                kwargs["type"] = _bool
            else:
                kwargs["type"] = type(default)
            group.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return groups


def _explicit(args: argparse.Namespace, name: str) -> bool:
    """Whether a setting was given, as a flag or a TTI_* variable (not left at its default)."""
    return getattr(args, name, None) is not None or f"TTI_{name.upper()}" in os.environ


def _config_from_args(args: argparse.Namespace, *, region_db: bool = False,
                      region_osm: str | None = None, **extra: Any) -> Config:
    """Settings from TTI_* variables and flags, then the command's defaults.

    ``region_db``: without an explicit TTI_DB_URL, use the region's own SQLite file (the
    region of ``region_osm``, else of TTI_OSM, else the demo city), so two regions never mix.
    """
    names = {f.name for f in dataclasses.fields(Config)}
    overrides: dict[str, Any] = {}
    for k, v in vars(args).items():
        if k in names and v is not None:
            # A repeated flag may also carry comma-separated values, like its variable.
            overrides[k] = (tuple(p.strip() for item in v for p in str(item).split(",")
                                  if p.strip()) if isinstance(v, list) else v)
    # Service defaults (a port per service) yield to explicit flags and TTI_* variables.
    overrides.update({k: v for k, v in extra.items()
                      if k not in overrides and f"TTI_{k.upper()}" not in os.environ})
    config = load_config(**overrides)
    if region_db and not _explicit(args, "db_url"):
        config = config.replace(db_url=config.region_db_url(region_osm))
    return config


def safety_demo_config(config: Config, args: argparse.Namespace) -> tuple[Config, Path | None]:
    """``tti run --safety-demo`` settings, each yielding to an explicit flag or TTI_* variable:
    the clock at rate 150 from 02:00 local today, the four scenario vehicles only, its own
    database under ``var/safety-demo/`` (recreated each run; returned to delete), the coach
    routes CSV the demo writes, a command timeout for a fast clock."""
    from services.simulator.safety_demo import CLOCK_RATE, clock_start

    if config.osm:
        raise TtiError("--safety-demo runs on the demo city: leave out --osm", code="bad_input")
    folder = config.var_path / SAFETY_DEMO_DIR
    changes: dict[str, Any] = {}
    if not _explicit(args, "clock_rate"):
        changes["clock_rate"] = CLOCK_RATE
    if not _explicit(args, "clock_start"):
        changes["clock_start"] = clock_start(Clock().now()).isoformat()
    if not _explicit(args, "sim_vehicles"):
        changes["sim_vehicles"] = 0
    if not _explicit(args, "coach_routes"):
        changes["coach_routes"] = str(folder / "coach_routes.csv")
    if not _explicit(args, "jt808_command_timeout_s"):
        changes["jt808_command_timeout_s"] = SAFETY_DEMO_COMMAND_TIMEOUT_S
    if not _explicit(args, "sim_truth"):
        changes["sim_truth"] = str(folder / "truth.jsonl")
    fresh: Path | None = None
    if not _explicit(args, "db_url"):
        fresh = folder / "tti.db"
        changes["db_url"] = f"sqlite:///{fresh}"
    return config.replace(**changes), fresh


async def import_osm(config: Config, path: str) -> None:
    """``tti import-osm FILE``: roads and features of one OSM file, in one transaction.

    Progress goes to stderr, the summary to stdout. A missing, unreadable or road-less file is
    rejected (TtiError → exit code 2) before anything is written; the same file again is a no-op.
    """
    from services.bigdata.osm_features import import_osm_file, stderr_progress

    summary = await with_store(config, lambda store: import_osm_file(
        store, path, progress=stderr_progress()))
    print(summary.describe())


async def import_gtfs(config: Config, path: str, feed_id: str | None) -> None:
    """``tti import-gtfs FILE``: validate a GTFS static feed and store it (idempotent).

    A feed with errors is rejected with every reason on stderr (exit code 2), nothing written;
    warnings are printed and the feed imported.
    """
    from services.bigdata.gtfs_import import import_gtfs_file
    from services.bigdata.osm_features import stderr_progress

    summary = await with_store(config, lambda store: import_gtfs_file(
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

    result = await with_store(config, lambda store: import_detectors_csv(store, path))
    for reason in result.errors:
        print(f"  skipped: {reason}", file=sys.stderr)
    print(f"detectors: {result.applied} of {result.rows} rows imported"
          + ("" if result.changed else " (unchanged)"))


async def import_geofences(config: Config, path: str) -> None:
    """``tti import-geofences FILE``: a GeoJSON FeatureCollection of geofences.

    Features with bad properties or geometry, or naming unknown road segments, are listed on
    stderr by index and skipped; the rest are stored in one transaction, replacing what this
    file imported before. No usable feature: rejected (exit code 2), nothing written.
    """
    from services.bigdata.geofences import import_geofences_file

    result = await with_store(config, lambda store: import_geofences_file(store, path))
    for reason in result.errors:
        print(f"  skipped: {reason}", file=sys.stderr)
    print(f"geofences: {result.applied} of {result.features} features imported")


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


async def users(config: Config, args: argparse.Namespace) -> None:
    """``tti users add|list|revoke``: department users in the deployment's database.

    ``add`` prints the user's token once, on stdout (only its hash is stored); every change is
    audited as done by ``cli`` from ``local``.
    """
    from services.warning.workflow.store import WorkflowStore
    from shared.db import database_from_url

    store = WorkflowStore(database_from_url(config.db_url))
    await store.open()
    now = config.make_clock().now()
    try:
        if args.users_command == "add":
            token = await store.add_user(args.name, args.role, now)
            await store.audit(at=now, user="cli", role="admin", action="user_add",
                              warning_id=None, address="local", outcome="ok",
                              details={"name": args.name, "role": args.role})
            print(f"user {args.name} ({args.role}) added; the token is shown only now:",
                  file=sys.stderr)
            print(token)
        elif args.users_command == "revoke":
            await store.revoke_user(args.name, now)
            await store.audit(at=now, user="cli", role="admin", action="user_revoke",
                              warning_id=None, address="local", outcome="ok",
                              details={"name": args.name})
            print(f"user {args.name} revoked")
        else:
            for u in await store.list_users():
                state = "active" if u.active else f"revoked {u.revoked_at:%Y-%m-%d %H:%M}Z"
                print(f"{u.name}\t{u.role}\tcreated {u.created_at:%Y-%m-%d %H:%M}Z\t{state}")
    finally:
        await store.close()


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


_IMPORT_SETTINGS = ("db_url", "var_dir", "osm", "demo_size", "log_level", "log_format")


def _only(*names: str) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(Config) if f.name in names]


def _add_sim_aliases(groups: dict[str, Any]) -> None:
    sim = groups["simulator"]
    sim.add_argument("--incident", dest="sim_incidents", action="append", metavar="INCIDENT",
                     help="same as --sim-incidents: SEGMENT_ID@START+DURATION:SPEED_KMH or "
                          "demo (repeatable)")
    sim.add_argument("--vehicles", dest="sim_vehicles", type=int, metavar="N",
                     help="same as --sim-vehicles")


def build_parser() -> argparse.ArgumentParser:
    """The ``tti`` command line: each command lists the settings it reads, by service."""
    parser = argparse.ArgumentParser(
        prog="tti", description=__doc__.split("\n\n")[0],
        epilog="Every setting is also an environment variable TTI_<NAME>; flags win.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_run = sub.add_parser(
        "run", usage="tti run [SETTINGS]", help="run the whole system in one process (embedded)",
        description="Everything in one process: the four services on HTTP --http-port (8080), "
                    "JT/T 808 on --jt808-port (6808), the demo city (or --osm FILE) and the "
                    "simulated fleet. Listens on 127.0.0.1 unless --http-host/--jt808-host say "
                    "otherwise.")
    run_groups = _add_config_flags(p_run, dataclasses.fields(Config))
    _add_sim_aliases(run_groups)
    run_groups["simulator"].add_argument(
        "--safety-demo", dest="safety_demo", action="store_true",
        help="the 两客一危 scenario: four coaches and dangerous-goods trucks, each breaking one "
             "rule once (speeding, night driving, a closed tunnel, 4.5 h without rest), on a "
             "clock at rate 150 from 02:00 local, with its own database under "
             "var/safety-demo/ (recreated each run)")
    p_serve = sub.add_parser("serve", help="run one service (production)",
                             description="One service in its own process, with the bus and "
                                         "database the settings select.")
    serve_sub = p_serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name in SERVICES:
        p_one = serve_sub.add_parser(name, help=SERVICE_HELP[name],
                                     usage=f"tti serve {name} [SETTINGS]",
                                     description=f"tti serve {name}: {SERVICE_HELP[name]}. "
                                                 "Shows the general settings and this "
                                                 "service's.")
        _add_config_flags(p_one, settings_for(["general", name]))
    p_sim = sub.add_parser("simulate", usage="tti simulate [SETTINGS]",
                           help="run the fleet simulator against a collector",
                           description="Virtual JT/T 808 terminals driving the demo city (or "
                                       "--osm FILE), against the collector at --sim-host and "
                                       "--jt808-port.")
    _add_sim_aliases(_add_config_flags(p_sim, settings_for(["general", "simulator"])))
    p_imp = sub.add_parser("import-osm", help="import an OpenStreetMap .osm/.osm.pbf file")
    p_imp.add_argument("file")
    _add_config_flags(p_imp, _only("db_url", "var_dir", "log_level", "log_format"))
    p_gtfs = sub.add_parser("import-gtfs", help="import a GTFS static feed (.zip)",
                            description="Without --db-url the feed goes to the database of the "
                                        "region --osm names (default: the demo city's).")
    p_gtfs.add_argument("file")
    p_gtfs.add_argument("--feed-id", dest="feed_id", default=None,
                        help="feed id (default: the file name without extension)")
    _add_config_flags(p_gtfs, _only(*_IMPORT_SETTINGS))
    p_det = sub.add_parser("import-detectors",
                           help="import the roadside detector and camera registry (.csv)",
                           description="Without --db-url the registry goes to the database of "
                                       "the region --osm names (default: the demo city's).")
    p_det.add_argument("file")
    _add_config_flags(p_det, _only(*_IMPORT_SETTINGS))
    p_geo = sub.add_parser("import-geofences",
                           help="import geofences: restricted zones and roads, assigned routes "
                                "(.geojson)",
                           description="A GeoJSON FeatureCollection, one Feature per geofence. "
                                       "Without --db-url the geofences go to the database of "
                                       "the region --osm names (default: the demo city's).")
    p_geo.add_argument("file")
    _add_config_flags(p_geo, _only(*_IMPORT_SETTINGS))
    p_users = sub.add_parser(
        "users", help="department users (police, transport, safety, hotline, admin)",
        description="Users of the departments' API and console, in the deployment's database "
                    "(without --db-url: the region --osm names, default the demo city's, as "
                    "tti run uses).")
    users_sub = p_users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    u_add = users_sub.add_parser("add", help="add a user and print their token once")
    u_add.add_argument("name")
    u_add.add_argument("--role", required=True, choices=DEPARTMENT_ROLES)
    u_list = users_sub.add_parser("list", help="list the users")
    u_revoke = users_sub.add_parser("revoke", help="revoke a user's token and sessions")
    u_revoke.add_argument("name")
    for p in (u_add, u_list, u_revoke):
        _add_config_flags(p, _only(*_IMPORT_SETTINGS))
    return parser


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError that ends a command, with the setting to change when we know it."""
    text = exc.strerror or str(exc)  # asyncio puts the address in strerror; skip "[Errno 98]"
    if exc.filename is not None:
        text = f"{text}: {exc.filename}"
    if exc.errno == errno.EADDRINUSE:
        text += "; choose other ports (TTI_HTTP_PORT, TTI_JT808_PORT)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tti`` console script."""
    args = build_parser().parse_args(argv)

    try:
        if args.command == "serve":
            config = _config_from_args(args, http_port=SERVICE_PORTS[args.service])
            problems = config.production_problems(args.service)
            for problem in problems:
                print(f"tti: error: {problem}", file=sys.stderr)
            if problems:
                return 2
        elif args.command == "import-osm":
            config = _config_from_args(args, region_db=True, region_osm=args.file)
        else:
            config = _config_from_args(args, region_db=args.command != "simulate")
        configure_logging(config.log_level, config.log_format)
        _install_uvloop()
        if args.command == "run":
            fresh_db = None
            if args.safety_demo:
                config, fresh_db = safety_demo_config(config, args)
            asyncio.run(run_embedded(config, safety_demo=args.safety_demo, fresh_db=fresh_db))
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
        elif args.command == "import-geofences":
            asyncio.run(import_geofences(config, args.file))
        elif args.command == "users":
            asyncio.run(users(config, args))
    except TtiError as exc:
        print(f"tti: error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a folder we may not write: say so, no traceback
        print(f"tti: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
