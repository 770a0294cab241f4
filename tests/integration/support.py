"""Support for the multi-process integration tests: ports, HTTP probes, the ``tti serve``
processes (one or several replicas of each service), private NATS and PostgreSQL servers a test
may stop and start again, a fleet of JT/T 808 terminals that resend what is not acknowledged,
and readers of the JetStream stream.

The private servers run on their own ports and data directories (never the machine's shared
servers on 4222 and 5432). A missing binary skips on a developer machine and fails in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.error import HTTPError, URLError

import nats
import nats.errors
import nats.js.api
import orjson

from services.simulator.world import Vehicle, World
from shared.codec import Envelope, decode_envelope
from shared.demo import DemoRegion
from shared.events import Subject
from shared.jt808 import (
    FrameSplitter,
    LocationReport,
    MsgId,
    PlatformGeneralResponse,
    datetime_to_bcd_time,
    decode_frame,
)
from tests.collector.jt808_support import Terminal
from tests.conftest import unavailable

SERVICES = ("collector", "bigdata", "warning", "publisher")
PG_BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin")


def free_port() -> int:
    """A TCP port nobody listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout_s: float = 10.0) -> tuple[int, object]:
    """GET ``url``: its status and JSON body (error statuses too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, orjson.loads(resp.read())
    except HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def readyz(port: int) -> tuple[int, dict[str, object]]:
    """A service's ``/readyz`` (status, body); (0, {}) while it does not answer."""
    try:
        status, body = get_json(f"http://127.0.0.1:{port}/readyz", timeout_s=5.0)
    except (URLError, ConnectionError, TimeoutError):
        return 0, {}
    return status, body if isinstance(body, dict) else {}


def metric_value(port: int, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples matching ``labels`` on a service's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def tti_binary() -> str:
    """The ``tti`` console script of this virtualenv."""
    return str(Path(sys.executable).with_name("tti"))


def demo_stack_env(tmp: Path, region: DemoRegion, nats_url: str, db_url: str,
                   ports: Mapping[str, int], *, token: str, **extra: str) -> dict[str, str]:
    """The environment ``tti serve`` processes share on a private NATS and database: the
    demo city, a var directory in ``tmp``, bigdata and warning found at the ports of
    ``bigdata[-0]`` and ``warning[-0]``, text logs on loopback, a sensor token, terminals
    allowed to register themselves; ``extra`` (``TTI_*`` names) added last."""
    def port(service: str) -> int:
        return ports[service] if service in ports else ports[f"{service}-0"]

    return {**os.environ, "TTI_BUS_URL": nats_url, "TTI_DB_URL": db_url,
            "TTI_VAR_DIR": str(tmp / "var"), "TTI_OSM": str(region.osm_path),
            "TTI_GTFS": str(region.gtfs_path),
            "TTI_BIGDATA_URL": f"http://127.0.0.1:{port('bigdata')}",
            "TTI_WARNING_URL": f"http://127.0.0.1:{port('warning')}",
            "TTI_LOG_FORMAT": "text", "TTI_HTTP_HOST": "127.0.0.1",
            "TTI_SENSOR_TOKENS": token, "TTI_ALLOW_OPEN_REGISTRATION": "true", **extra}


def replica_overrides(replicas: int, jt808: Sequence[int],
                      services: Sequence[str] = SERVICES) -> dict[str, dict[str, str]]:
    """Each ``<service>-<i>`` process's own variables: its replica index, and collector i's
    JT/T 808 port ``jt808[i]``."""
    overrides = {f"{s}-{i}": {"TTI_REPLICA_INDEX": str(i)}
                 for s in services for i in range(replicas)}
    for i in range(replicas):
        overrides[f"collector-{i}"]["TTI_JT808_PORT"] = str(jt808[i])
    return overrides


def write_registry(path: Path, world: World, n: int, operator: str = "TTI test"
                   ) -> dict[str, str]:
    """The vehicle registry CSV of ``world``'s first ``n`` vehicles (what the simulator
    writes); each vehicle's class by id."""
    vehicles = world.make_fleet(n)
    lines = ["terminal_phone,plate,vehicle_class,operator,route_id"]
    lines += [f"{v.phone},{v.plate},{v.vehicle_class},{operator}," for v in vehicles]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {v.vehicle_id: v.vehicle_class for v in vehicles}


def service_of(process: str) -> str:
    """The service a process name runs: ``bigdata-1`` → ``bigdata``, ``warning`` → ``warning``."""
    base, _, suffix = process.rpartition("-")
    return base if base and suffix.isdigit() else process


class ServiceProcesses:
    """Services as ``tti serve <service>`` processes, one HTTP port each.

    ``ports`` names the processes: a service's name (one process of it) or ``<service>-<i>``
    for replica i. ``env`` is shared by all of them (bus, database, map), ``overrides`` adds a
    process's own variables (its replica index, its JT/T 808 port); each gets its own
    TTI_HTTP_PORT and a log file ``<process>.log`` in ``log_dir`` (a restart appends to it).
    """

    START_ORDER = ("bigdata", "warning", "collector", "publisher")
    """bigdata first: it imports the map the others rely on."""

    def __init__(self, env: Mapping[str, str], ports: Mapping[str, int], log_dir: Path, *,
                 overrides: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.env = dict(env)
        self.ports = dict(ports)
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def start(self, names: Sequence[str] | None = None) -> None:
        """Start the named processes (default: all, in ``START_ORDER`` of their services)."""
        if names is None:
            names = sorted(self.ports, key=lambda n: (self.START_ORDER.index(service_of(n)), n))
        for name in names:
            log = (self.log_dir / f"{name}.log").open("ab")
            self._logs.append(log)
            self.procs[name] = subprocess.Popen(
                [tti_binary(), "serve", service_of(name)],
                env={**self.env, **self.overrides.get(name, {}),
                     "TTI_HTTP_PORT": str(self.ports[name])},
                stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        """SIGKILL one process (a pod lost with its node) and wait until it is gone."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def spawn(self, args: list[str], log_name: str,
              env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Another ``tti`` process (the simulator) stopped with the services."""
        log = (self.log_dir / f"{log_name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen([tti_binary(), *args], env=dict(env or self.env), stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs[log_name] = proc
        return proc

    def wait_ready(self, timeout_s: float = 90.0, names: Sequence[str] | None = None) -> None:
        """Until every (named) process's /readyz is 200 (AssertionError with its log tail if
        not)."""
        deadline = time.monotonic() + timeout_s
        for name in names or tuple(self.ports):
            while readyz(self.ports[name])[0] != 200:
                proc = self.procs.get(name)
                assert proc is None or proc.poll() is None, f"{name} exited: {self.logs(name)}"
                assert time.monotonic() < deadline, f"{name} not ready: {self.logs(name)}"
                time.sleep(0.5)

    def logs(self, *names: str, tail: int = 2000) -> str:
        """The last ``tail`` characters of the named logs (every log by default)."""
        out = []
        for name in names or tuple(self.procs):
            path = self.log_dir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name}.log\n{text[-tail:]}")
        return "\n".join(out)

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM to every process, then their exit codes (killed after ``timeout_s``)."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes[name] = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        return codes


def _wait_port(port: int, timeout_s: float, up: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class PrivateNats:
    """A nats-server with JetStream of its own (port, store directory), stoppable mid-test."""

    def __init__(self, store_dir: Path, log_path: Path, *, port: int | None = None) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.access(binary, os.X_OK):
            unavailable("nats-server is not installed (apt-get install nats-server)")
        self.binary = binary
        self.store_dir = store_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (again) on the same port and store directory; returns once it listens."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1",
                 "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        if not _wait_port(self.port, 20.0):
            self.stop(signal.SIGKILL)
            raise AssertionError(f"nats-server did not listen on {self.port}: "
                                 + self.log_path.read_text()[-2000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server with ``sig`` and wait for the process to end."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PrivatePostgres:
    """A PostgreSQL cluster of its own (data directory, port) with PostGIS in database ``tti``.

    PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user
    (``runuser``) in a directory it owns; otherwise as the test's own user. Local connections
    are trusted (user ``postgres``), on 127.0.0.1 only.
    """

    DATABASE = "tti"

    def __init__(self, *, port: int | None = None) -> None:
        pg_ctl = next((f"{d}/pg_ctl" for d in PG_BIN_DIRS if os.access(f"{d}/pg_ctl", os.X_OK)),
                      None)
        # /usr/local/bin holds links to some of the binaries; psql lives beside the real ones.
        bindir = Path(pg_ctl).resolve().parent if pg_ctl else None
        if bindir is None or not all(os.access(bindir / b, os.X_OK)
                                     for b in ("initdb", "postgres", "psql")):
            unavailable(f"PostgreSQL's initdb, pg_ctl and psql not found in "
                        f"{', '.join(PG_BIN_DIRS)}")
        self.bindir = str(bindir)
        self.port = port or free_port()
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="tti-pg-"))
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no postgres user to run PostgreSQL")
            if not shutil.which("runuser"):
                unavailable("running as root and runuser is missing")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.DATABASE}"

    def _run(self, *args: str, timeout_s: float = 60.0) -> str:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        if done.returncode:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): "
                                 f"{done.stdout[-1000:]}{done.stderr[-1000:]}")
        return done.stdout

    def init(self) -> None:
        """initdb, start, and create the database with PostGIS."""
        self._run(f"{self.bindir}/initdb", "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-instructions")
        self.start()
        self._run(f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                  f"CREATE DATABASE {self.DATABASE}")
        self._run(f"{self.bindir}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "-d", self.DATABASE, "-v", "ON_ERROR_STOP=1", "-c",
                  "CREATE EXTENSION postgis")

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-l", str(self.log_path),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                  "-c fsync=off -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` (a no-op when it is not running)."""
        if (self.data / "postmaster.pid").exists():
            self._run(f"{self.bindir}/pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        """Stop (immediately) and remove the data directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- waiting and reading the stream ----------------------------------------------------------

async def wait_until(what: str, predicate: Callable[[], object], timeout_s: float,
                     logs: str | Callable[[], str] = "") -> None:
    """Poll ``predicate`` (sync or async) every 0.25 s until true; fail after ``timeout_s``
    with ``logs`` (or what calling it returns) in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = predicate()
        if isinstance(ok, Awaitable):
            ok = await ok
        if ok:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} within {timeout_s:g}s\n"
                                 f"{logs() if callable(logs) else logs}")
        await asyncio.sleep(0.25)


async def all_ready(ports: Mapping[str, int]) -> bool:
    """Whether every service on ``ports`` answers /readyz with 200."""
    statuses = await asyncio.gather(*(asyncio.to_thread(readyz, p) for p in ports.values()))
    return all(status == 200 for status, _ in statuses)


@contextlib.asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[Any]:
    """A JetStream context on a connection of its own, closed afterwards."""
    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def stream_envelopes(url: str, wire: str, subject: Subject[Any], *, stream: str = "TTI"
                           ) -> list[tuple[int, Envelope[Any]]]:
    """Every message stored in ``stream`` on ``wire`` (a subject filter), oldest first: its
    stream sequence and envelope. Read through a durable of its own without acks (deleted
    after), in batches as large as the server hands out."""
    out: list[tuple[int, Envelope[Any]]] = []
    name = "check-" + os.urandom(4).hex()
    config = nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE,
                                        deliver_policy=nats.js.api.DeliverPolicy.ALL)
    async with jetstream(url) as js:
        last = (await js.stream_info(stream)).state.last_seq
        psub = await js.pull_subscribe(wire, durable=name, stream=stream, config=config)
        try:
            while True:
                try:
                    msgs = await psub.fetch(10_000, timeout=2)
                except TimeoutError:
                    # Nothing more on this subject: nats-py raises its own TimeoutError (a
                    # subclass) or, when the wait runs out on a later path, asyncio's, which CI
                    # once saw escape the narrower except of before.
                    break
                for m in msgs:
                    out.append((m.metadata.sequence.stream,
                                decode_envelope(subject, m.data)))
                if out and out[-1][0] >= last:
                    break
        finally:
            await js.delete_consumer(stream, name)
    return out


async def stream_payloads(url: str, wire: str, subject: Subject[Any], *, stream: str = "TTI"
                          ) -> list[Any]:
    """Every payload stored in ``stream`` on ``wire`` (a subject filter), oldest first."""
    return [env.payload for _, env in await stream_envelopes(url, wire, subject, stream=stream)]


async def consumers_behind(url: str, prefix: str, *, stream: str = "TTI") -> dict[str, tuple[
        int, int]]:
    """The durable consumers named ``prefix…`` that have not had, and acked, everything:
    name → (num_pending, num_ack_pending). Empty when they are all caught up."""
    behind: dict[str, tuple[int, int]] = {}
    async with jetstream(url) as js:
        for info in await js.consumers_info(stream):
            if info.name.startswith(prefix) and (info.num_pending or info.num_ack_pending):
                behind[info.name] = (info.num_pending, info.num_ack_pending)
    return behind


# ---- the fleet ---------------------------------------------------------------------------------

@dataclass(eq=False)
class Report:
    """One 0x0200 report of one terminal, and what the platform answered to each send."""

    vehicle_id: str
    observed_at: datetime
    body: LocationReport
    first_sent: float  # loop time
    sends: int = 0
    due: float = math.inf  # when to resend if still unacknowledged
    acked_at: float | None = None  # loop time of the first result 0


@dataclass
class AckingFleet:
    """JT/T 808 terminals over real TCP that keep each report until it gets 0x8001 result 0.

    Each vehicle registers and authenticates (0x0100/0x0102) with a collector — vehicle i with
    ``ports[i % len(ports)]`` — then sends a 0x0200 every ``interval_s`` (its position in
    ``world``). A report without an answer is sent again after a reply timeout that grows as
    JT/T 808's retransmission does (T(n+1) = T(n) × (n+1), capped here to keep the run short);
    one answered with a result other than 0 (the platform did not take it) is sent again after
    the same wait. A resend is the same body, so the collector gives it the same event id.

    With ``reconnect`` a lost connection is what a balancer in front of the collectors does:
    the terminal connects to the next port (after a short random wait), authenticates with the
    code it was given, and resends every report still unacknowledged; without it the loss is
    an error (``errors``).
    """

    ports: Sequence[int]
    world: World
    vehicles: list[Vehicle]
    interval_s: float = 1.0
    reply_timeout_s: float = 2.0
    max_timeout_s: float = 6.0
    reconnect: bool = False
    ramp_s: float = 0.0
    """The terminals' first connections spread over this long (at least one interval)."""
    reports: list[Report] = field(default_factory=list)
    answers: list[tuple[float, int]] = field(default_factory=list)  # (loop time, result)
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    sessions: int = 0  # authenticated connections so far
    sending: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _t0: float = 0.0

    async def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        self._tasks = [asyncio.create_task(self._run(v, i, i / len(self.vehicles)))
                       for i, v in enumerate(self.vehicles)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def acked(self) -> list[Report]:
        return [r for r in self.reports if r.acked_at is not None]

    def unacked(self) -> list[Report]:
        return [r for r in self.reports if r.acked_at is None]

    def ok_answers_between(self, start: float, end: float) -> int:
        """Result-0 answers to reports received in [start, end] (loop time)."""
        return sum(1 for at, result in self.answers if start <= at <= end and result == 0)

    def _report(self, v: Vehicle, now: datetime) -> LocationReport:
        fix = self.world.fix(v, asyncio.get_running_loop().time() - self._t0)
        self.world.drop_past(v, asyncio.get_running_loop().time() - self._t0 - 60)
        return LocationReport(
            alarm=0, status=0x3 if fix.ignition else 0x2, lat_e6=round(fix.lat * 1e6),
            lon_e6=round(fix.lon * 1e6), altitude_m=30, speed_0_1kmh=round(fix.speed_kmh * 10),
            direction_deg=round(fix.heading_deg) % 360, time_bcd=datetime_to_bcd_time(now))

    async def _run(self, v: Vehicle, index: int, phase: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(phase * max(self.interval_s, self.ramp_s))
        port_at = index % len(self.ports)
        auth_code: str | None = None
        mine: list[Report] = []  # this vehicle's reports not yet acknowledged
        last_second: datetime | None = None
        next_tick = loop.time()
        while True:
            term = Terminal(v.phone)
            reader: asyncio.Task[None] | None = None
            wake = asyncio.Event()
            try:
                await term.connect(self.ports[port_at])
                if auth_code is not None:
                    resp = await term.authenticate(auth_code)
                    assert resp.result == 0, resp
                else:
                    auth_code = await term.login()
                self.sessions += 1
                in_flight: dict[int, Report] = {}
                reader = asyncio.create_task(self._read(term, in_flight, wake))
                reader.add_done_callback(lambda _t, w=wake: w.set())  # type: ignore[misc]
                mine = [r for r in mine if r.acked_at is None]
                for r in mine:  # what the last connection left unanswered
                    await self._send(term, r, in_flight)
                while not reader.done():
                    now = loop.time()
                    if self.sending and now >= next_tick:
                        next_tick += self.interval_s
                        second = datetime.now(UTC).replace(microsecond=0)
                        if second != last_second:  # one report per vehicle and second
                            last_second = second
                            r = Report(v.vehicle_id, second, self._report(v, second), now)
                            self.reports.append(r)
                            mine.append(r)
                            await self._send(term, r, in_flight)
                    for r in list(in_flight.values()):
                        if r.acked_at is None and r.due <= now:
                            await self._send(term, r, in_flight)
                    if len(mine) > 64:
                        mine = [r for r in mine if r.acked_at is None]
                    wake_at = min((r.due for r in in_flight.values() if r.acked_at is None),
                                  default=math.inf)
                    if self.sending:
                        wake_at = min(wake_at, next_tick)
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(1.0, max(0.0, wake_at - loop.time()))):
                            await wake.wait()
                reader.result()
            except (OSError, ConnectionError, TimeoutError, AssertionError) as exc:
                if not self.reconnect:
                    self.errors.append(f"{v.vehicle_id}: {exc!r}")
                    return
                self.reconnects += 1
                port_at = (port_at + 1) % len(self.ports)
                await asyncio.sleep(random.uniform(0.2, 1.0))
            finally:
                if reader is not None:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await reader
                await term.close()

    async def _send(self, term: Terminal, r: Report, in_flight: dict[int, Report]) -> None:
        for serial in [s for s, other in in_flight.items() if other is r]:
            del in_flight[serial]  # only the newest send of a report is waited for
        serial = await term.send(MsgId.T_LOCATION, r.body)
        r.sends += 1
        wait = self.reply_timeout_s
        for n in range(1, r.sends):
            wait = min(self.max_timeout_s, wait * (n + 1))
        r.due = asyncio.get_running_loop().time() + wait
        in_flight[serial] = r

    async def _read(self, term: Terminal, in_flight: dict[int, Report],
                    wake: asyncio.Event) -> None:
        assert term.reader is not None
        loop = asyncio.get_running_loop()
        splitter = FrameSplitter()
        while True:
            data = await term.reader.read(65536)
            if not data:
                raise ConnectionError("collector closed the connection")
            for frame in splitter.feed(data):
                msg = decode_frame(frame)
                body = msg.body
                if not isinstance(body, PlatformGeneralResponse) \
                        or body.reply_msg_id != MsgId.T_LOCATION:
                    continue
                at = loop.time()
                self.answers.append((at, body.result))
                r = in_flight.pop(body.reply_serial, None)
                if r is None or r.acked_at is not None:
                    continue
                if body.result == 0:
                    r.acked_at = at
                else:  # not taken: the terminal keeps it and resends it after the timeout
                    r.due = min(r.due, at + self.reply_timeout_s)
                    in_flight[body.reply_serial] = r
                    wake.set()
