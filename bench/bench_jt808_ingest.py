"""JT/T 808 ingest throughput: 1,000 terminals over loopback TCP → gateway → memory bus → consumer.

Three processes: this one orchestrates; the gateway (``Jt808Gateway`` with a ``MemoryBus``, a
counting consumer on ``tti.position`` and a ``SqliteTerminalStore``) runs in its own process pinned
to one core; the load generator runs in another process pinned to the other core. Every terminal
registers (0x0100) and authenticates (0x0102) over TCP, then sends 0x0200 reports, one frame per
``write``, keeping ``--window`` unacknowledged reports in flight, until it has sent its share.

Reported per configuration:

* wall throughput: reports acknowledged per second, as the load generator sees it;
* per gateway CPU-second: reports / CPU time the gateway process used in the same interval. The
  machine is shared, so this is the steadier "reports/s on the gateway's core" figure;
* that nothing was lost: reports sent = acks with result 0 = positions the consumer counted.

Baseline, measured in the same run on the same core: ``naive`` — a straightforward gateway written
the way a first version usually is, and built like the previous version of this gateway
(``asyncio.start_server`` streams, ``wait_for(reader.read())`` per read for the idle timeout, and
per frame ``decode_frame`` → ``VehiclePosition`` → ``await bus.publish`` → ``encode_reply`` →
``write`` → ``await drain()``). Same codec, same bus, same consumer, same store, same
validation; only the connection handling and the hot path differ. Also printed: the CPU cost of
the memory bus alone per event (publish + consume in the gateway process, no sockets), to show
how much of each report is the bus's and how much the gateway's.

Every configuration runs ``--repeat`` times, interleaved; medians and ranges are printed.

Usage: ``.venv/bin/python bench/bench_jt808_ingest.py [--terminals 1000] [--reports 200000]
[--window 8] [--repeat 3] [--configs uvloop,asyncio,naive-uvloop,naive-asyncio]``. Takes ~4
minutes with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing as mp
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled

from services.collector.jt808_gateway import Jt808Gateway, position_from_report
from services.collector.registry import VehicleRegistry
from services.collector.terminals import SqliteTerminalStore, TerminalStore
from shared.bus.memory import MemoryBus
from shared.codec import Envelope
from shared.events import VEHICLE_POSITION, VehiclePosition
from shared.jt808 import (
    RESULT_FAILURE,
    RESULT_OK,
    FrameSplitter,
    Jt808Error,
    LocationReport,
    MsgId,
    PlatformGeneralResponse,
    RegisterResponse,
    TerminalAuth,
    TerminalRegister,
    datetime_to_bcd_time,
    decode_frame,
    encode_message,
    encode_reply,
)

PHONE_BASE = 13_800_000_000


def _pin(index: int) -> None:
    """Pin this process to the index-th allowed CPU (when there are at least two)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(loop_kind: str, main: Coroutine[Any, Any, None]) -> None:
    if loop_kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---- baseline: the naive per-report gateway ----------------------------------------------------


class NaiveGateway:
    """The straightforward streams gateway (baseline): one publish, write and drain per frame.

    Also the memory baseline of ``bench_jt808_connections.py`` (a task and a stream pair per
    connection). Handles register, auth, heartbeat and location only.
    """

    def __init__(self, *, bus: MemoryBus, terminals: TerminalStore, registry: VehicleRegistry,
                 heartbeat_s: float = 60.0) -> None:
        self.bus, self.terminals, self.registry = bus, terminals, registry
        self.idle_timeout_s = heartbeat_s * 3
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=4096)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        # Close the sockets rather than cancel the handlers: a cancelled handler task makes
        # asyncio's stream callback log a CancelledError traceback.
        for w in self._writers:
            w.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        splitter = FrameSplitter()
        authenticated = False
        serial = 0
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), self.idle_timeout_s)
                if not data:
                    return
                for frame in splitter.feed(data):
                    msg = decode_frame(frame)
                    mid = msg.msg_id
                    if mid == MsgId.T_REGISTER:
                        assert isinstance(msg.body, TerminalRegister)
                        rec = await self.terminals.register(msg.terminal_phone, msg.body.plate,
                                                            msg.body.terminal_id)
                        out = encode_reply(msg, MsgId.P_REGISTER_RESPONSE, RegisterResponse(
                            msg.header.serial, 0, rec.auth_code), serial=serial)
                    elif mid == MsgId.T_AUTH:
                        assert isinstance(msg.body, TerminalAuth)
                        found = await self.terminals.find(msg.terminal_phone)
                        authenticated = found is not None and found.auth_code == msg.body.auth_code
                        out = encode_reply(msg, MsgId.P_GENERAL_RESPONSE, PlatformGeneralResponse(
                            msg.header.serial, mid, RESULT_OK if authenticated else RESULT_FAILURE),
                            serial=serial)
                    elif mid == MsgId.T_HEARTBEAT:
                        out = encode_reply(msg, MsgId.P_GENERAL_RESPONSE, PlatformGeneralResponse(
                            msg.header.serial, mid, RESULT_OK), serial=serial)
                    else:
                        assert authenticated and isinstance(msg.body, LocationReport)
                        vid = msg.terminal_phone
                        pos = position_from_report(
                            vid, msg.body, vehicle_class=self.registry.vehicle_class(vid),
                            now=datetime.now(UTC))
                        await self.bus.publish(VEHICLE_POSITION, pos, key=vid,
                                               correlation_id=f"{vid}:{msg.header.serial}")
                        out = encode_reply(msg, MsgId.P_GENERAL_RESPONSE, PlatformGeneralResponse(
                            msg.header.serial, mid, RESULT_OK), serial=serial)
                    serial = (serial + 1) & 0xFFFF
                    writer.write(out)
                    await writer.drain()
        except (ConnectionError, TimeoutError, Jt808Error):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# ---- gateway process -----------------------------------------------------------------------------


def gateway_process(conn: Connection, loop_kind: str, impl: str, db: str, profile: bool) -> None:
    """Serve until told to stop; answer control requests on ``conn``."""
    _pin(0)
    _raise_nofile()
    _run(loop_kind, _gateway_main(conn, loop_kind, impl, db, profile))


async def _gateway_main(conn: Connection, loop_kind: str, impl: str, db: str,
                        profile: bool) -> None:
    bus = MemoryBus(partitions=16)
    await bus.start()
    store = SqliteTerminalStore(db)
    await store.open()
    counted = 0

    async def count(env: Envelope[VehiclePosition]) -> None:
        nonlocal counted
        counted += 1

    await bus.subscribe(VEHICLE_POSITION, count, durable="bench")
    gw: Jt808Gateway | NaiveGateway
    if impl == "naive":
        gw = NaiveGateway(bus=bus, terminals=store, registry=VehicleRegistry())
    else:
        gw = Jt808Gateway(bus=bus, terminals=store, registry=VehicleRegistry())
    await gw.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    conn.send(("port", gw.port))
    profiler = cProfile.Profile() if profile else None
    while True:
        # A thread waits on the pipe: the loop's add_reader would make it non-blocking, and
        # then a large send() fails with EAGAIN.
        req: tuple[Any, ...] = await loop.run_in_executor(None, conn.recv)
        if req[0] == "mark":
            if profiler is not None:
                profiler.enable()
            conn.send(("mark", _cpu_s(), counted))
        elif req[0] == "wait_count":
            deadline = time.monotonic() + req[2]
            while counted < req[1] and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # polls the consumers' counter
            conn.send(("count", _cpu_s(), counted))
            if profiler is not None:
                profiler.disable()
                print(f"--- gateway profile ({impl}, {loop_kind}) ---", file=sys.stderr)
                pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        elif req[0] == "bus_alone":
            conn.send(("bus_alone", await _bus_alone(bus, lambda: counted, req[1])))
        elif req[0] == "stop":
            break
    await gw.stop()
    await bus.close()
    await store.close()
    conn.send(("stopped",))


async def _bus_alone(bus: MemoryBus, counted: Callable[[], int], n: int) -> float:
    """CPU µs per event for the bus alone: publish (as the gateway does, with an event id) and
    consume ``n`` positions in this process, no sockets, no JT/T 808."""
    now = datetime.now(UTC)
    events = [(str(PHONE_BASE + i % 1000),
               VehiclePosition(vehicle_id=str(PHONE_BASE + i % 1000), lon=114.41, lat=30.51,
                               observed_at=now, speed_kmh=42.3, heading_deg=87.0,
                               received_at=now)) for i in range(n)]
    start = counted()
    c0 = _cpu_s()
    for i, (vid, pos) in enumerate(events):
        eid = f"{i:032x}"
        await bus.publish(VEHICLE_POSITION, pos, key=vid, correlation_id=eid, event_id=eid)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # let the consumers run, as the gateway's loop would
    while counted() - start < n:  # noqa: ASYNC110 - polls the consumers' counter
        await asyncio.sleep(0.001)
    return (_cpu_s() - c0) / n * 1e6


# ---- load generator process ----------------------------------------------------------------------


def _report() -> LocationReport:
    return LocationReport(alarm=0, status=0x3, lat_e6=30_512_345, lon_e6=114_412_345,
                          altitude_m=25, speed_0_1kmh=423, direction_deg=87,
                          time_bcd=datetime_to_bcd_time(datetime.now(UTC)))


def _frames(index: int, n: int, serial0: int) -> list[bytes]:
    phone = str(PHONE_BASE + index)
    body = _report()
    return [encode_message(MsgId.T_LOCATION, body, phone_bcd=phone, serial=(serial0 + i) & 0xFFFF,
                           version=2013) for i in range(n)]


class _Terminal(asyncio.Protocol):
    """One simulated terminal: register, authenticate, then pipelined reports."""

    def __init__(self, gen: _Generator, index: int, quota: int) -> None:
        self.gen = gen
        self.index = index
        self.phone = str(PHONE_BASE + index)
        self.quota = quota
        self.frames: list[bytes] = []
        self.sent = 0
        self.answered = 0
        self.splitter = FrameSplitter()
        self.state = "register"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport implements asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        reg = TerminalRegister(42, 100, "TTIBM", "BENCH-808", f"B{self.index:06d}", 1,
                               f"鄂A{self.index:05d}")
        transport.write(encode_message(MsgId.T_REGISTER, reg, phone_bcd=self.phone, serial=0,
                                       version=2013))

    def data_received(self, data: bytes) -> None:
        gen = self.gen
        for frame in self.splitter.feed(data):
            msg = decode_frame(frame)
            body = msg.body
            if self.state == "run":
                assert isinstance(body, PlatformGeneralResponse)
                if body.reply_msg_id != MsgId.T_LOCATION:
                    continue
                self.answered += 1
                if body.result == RESULT_OK:
                    gen.acked += 1
                else:
                    gen.nacked += 1
                if self.sent < self.quota:
                    self._send_one()
                elif self.answered == self.quota:
                    gen.finished += 1
                    if gen.finished == gen.terminals:
                        gen.done.set()
            elif self.state == "register" and isinstance(body, RegisterResponse):
                assert self.transport is not None
                self.state = "auth"
                self.transport.write(encode_message(
                    MsgId.T_AUTH, TerminalAuth(body.auth_code), phone_bcd=self.phone, serial=1,
                    version=2013))
            elif self.state == "auth" and isinstance(body, PlatformGeneralResponse):
                if body.result != RESULT_OK:
                    raise SystemExit(f"terminal {self.phone}: authentication refused")
                self.state = "ready"
                self.frames = _frames(self.index, self.quota, serial0=2)
                gen.ready += 1
                if gen.ready == gen.terminals:
                    gen.all_ready.set()

    def start(self, window: int) -> None:
        self.state = "run"
        for _ in range(min(window, self.quota)):
            self._send_one()

    def _send_one(self) -> None:
        assert self.transport is not None
        self.transport.write(self.frames[self.sent])  # one frame per write, as devices do
        self.sent += 1
        self.gen.sent += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != "done" and not self.gen.done.is_set():
            self.gen.lost += 1


class _Generator:
    def __init__(self, terminals: int) -> None:
        self.terminals = terminals
        self.ready = self.finished = self.sent = self.acked = self.nacked = self.lost = 0
        self.all_ready = asyncio.Event()
        self.done = asyncio.Event()


def generator_process(conn: Connection, port: int, terminals: int, reports: int,
                      window: int) -> None:
    """Connect, register and authenticate every terminal; on "go", send; report counts."""
    _pin(1)
    _raise_nofile()
    _run("uvloop", _generator_main(conn, port, terminals, reports, window))


async def _generator_main(conn: Connection, port: int, terminals: int, reports: int,
                          window: int) -> None:
    loop = asyncio.get_running_loop()
    gen = _Generator(terminals)
    quotas = [reports // terminals + (1 if i < reports % terminals else 0)
              for i in range(terminals)]
    terms: list[_Terminal] = []
    sem = asyncio.Semaphore(200)  # connect in waves so the listen backlog never overflows

    async def connect(i: int) -> None:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: _Terminal(gen, i, quotas[i]), "127.0.0.1", port)
            terms.append(proto)

    await asyncio.gather(*(connect(i) for i in range(terminals)))
    await asyncio.wait_for(gen.all_ready.wait(), 120)
    conn.send(("ready",))
    await loop.run_in_executor(None, conn.recv)  # "go"
    t0 = time.perf_counter()
    for t in terms:
        t.start(window)
    with contextlib.suppress(TimeoutError):  # a shortfall shows up in the counts
        await asyncio.wait_for(gen.done.wait(), max(120.0, reports / 2000))
    elapsed = time.perf_counter() - t0
    for t in terms:
        t.state = "done"
        if t.transport is not None:
            t.transport.close()
    conn.send(("result", gen.sent, gen.acked, gen.nacked, gen.lost, elapsed))


# ---- orchestration -----------------------------------------------------------------------------


def _expect(conn: Connection, tag: str, timeout: float = 300.0,
            procs: tuple[mp.process.BaseProcess, ...] = ()) -> tuple[Any, ...]:
    """The next control message, which must be ``tag``; fails fast if a process died."""
    deadline = time.monotonic() + timeout
    while not conn.poll(1.0):
        dead = [p.name for p in procs if not p.is_alive()]
        if dead:
            raise SystemExit(f"{', '.join(dead)} died while waiting for {tag!r}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {tag!r}")
    msg: tuple[Any, ...] = conn.recv()
    if msg[0] != tag:
        raise SystemExit(f"expected {tag!r}, got {msg!r}")
    return msg


def run_config(loop_kind: str, impl: str, args: argparse.Namespace,
               bus_alone: bool = False) -> dict[str, Any]:
    """One measured run; returns its figures."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tti-bench-") as tmp:
        gw_conn, gw_child = ctx.Pipe()
        gw = ctx.Process(name="gateway", target=gateway_process,
                         args=(gw_child, loop_kind, impl, str(Path(tmp) / "terminals.db"),
                               args.profile))
        gw.start()
        port = _expect(gw_conn, "port", 60, (gw,))[1]
        gen_conn, gen_child = ctx.Pipe()
        gen = ctx.Process(name="load generator", target=generator_process,
                          args=(gen_child, port, args.terminals, args.reports, args.window))
        gen.start()
        try:
            both = (gw, gen)
            _expect(gen_conn, "ready", 300, both)
            gw_conn.send(("mark",))
            _, cpu0, count0 = _expect(gw_conn, "mark", 60, both)
            gen_conn.send(("go",))
            _, sent, acked, nacked, lost, elapsed = _expect(gen_conn, "result", 600, both)
            gw_conn.send(("wait_count", count0 + sent, 30.0))
            _, cpu1, count1 = _expect(gw_conn, "count")
            out = {"loop": loop_kind, "impl": impl, "sent": sent, "acked": acked,
                   "nacked": nacked, "lost": lost, "consumed": count1 - count0,
                   "elapsed": elapsed, "cpu": cpu1 - cpu0}
            if bus_alone:
                gw_conn.send(("bus_alone", 50_000))
                out["bus_us"] = _expect(gw_conn, "bus_alone")[1]
            gw_conn.send(("stop",))
            _expect(gw_conn, "stopped", 30)
        finally:
            for p in (gen, gw):
                p.join(10)
                if p.is_alive():
                    p.kill()
    return out


def _spread(values: list[float]) -> str:
    """Median and range of repeated measurements (the machine is shared: expect noise)."""
    v = sorted(values)
    med = statistics.median(v)
    return f"{med:>9,.0f} [{v[0]:,.0f}–{v[-1]:,.0f}]" if len(v) > 1 else f"{med:>9,.0f}"


def main() -> None:
    """Run every configuration (interleaved, ``--repeat`` times); print figures and ratios."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--reports", type=int, default=150_000, help="reports per optimised run")
    ap.add_argument("--naive-reports", type=int, default=60_000, help="reports per naive run")
    ap.add_argument("--window", type=int, default=8, help="unacknowledged reports per terminal")
    ap.add_argument("--configs", default="uvloop,asyncio,naive-uvloop,naive-asyncio")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the gateway during the measured interval (slows it down)")
    args = ap.parse_args()
    print(f"{args.terminals} terminals over loopback TCP, window {args.window}, one frame per "
          f"write; gateway pinned to one core, load generator to another "
          f"(cpus available: {len(os.sched_getaffinity(0))}); {args.repeat} runs each, "
          f"median [min–max]\n")
    configs = []
    for cfg in args.configs.split(","):
        impl, _, loop_kind = cfg.rpartition("-")
        configs.append((impl or "gateway", loop_kind))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(args.repeat):
        for impl, loop_kind in configs:
            run_args = argparse.Namespace(**vars(args))
            if impl == "naive":
                run_args.reports = args.naive_reports
            r = run_config(loop_kind, impl, run_args, bus_alone=(impl == "gateway"))
            r["ok"] = (r["sent"] == r["acked"] == r["consumed"] and not r["nacked"]
                       and not r["lost"])
            r["per_cpu"] = r["consumed"] / r["cpu"]
            r["wall"] = r["acked"] / r["elapsed"]
            runs[(impl, loop_kind)].append(r)
            print(f"  run: {impl:>7} {loop_kind:<8} {r['per_cpu']:>7,.0f} reports per gateway "
                  f"CPU-second, {r['wall']:>7,.0f}/s wall; sent {r['sent']:,} acked "
                  f"{r['acked']:,} consumed {r['consumed']:,} nacked {r['nacked']} lost "
                  f"{r['lost']} {'OK' if r['ok'] else 'MISMATCH'}", flush=True)
    print(f"\n  {'':<17}{'reports per gateway CPU-s':>34}{'reports/s wall':>32}  no loss")
    for (impl, loop_kind), rs in runs.items():
        print(f"  {impl:>7} {loop_kind:<9}{_spread([r['per_cpu'] for r in rs]):>34}"
              f"{_spread([r['wall'] for r in rs]):>32}  "
              f"{'yes' if all(r['ok'] for r in rs) else 'NO'}")
    print()
    for loop_kind, target in (("uvloop", 40_000), ("asyncio", 20_000)):
        fast, naive = runs.get(("gateway", loop_kind)), runs.get(("naive", loop_kind))
        if not fast:
            continue
        per_cpu = statistics.median(r["per_cpu"] for r in fast)
        bus_us = statistics.median(r["bus_us"] for r in fast)
        line = (f"{loop_kind:<8} gateway {per_cpu:,.0f} reports per CPU-second "
                f"(target ≥ {target:,}: {'met' if per_cpu >= target else 'MISSED'})")
        if naive:
            base = statistics.median(r["per_cpu"] for r in naive)
            line += f"; ×{per_cpu / base:.2f} the naive baseline"
        print(line)
        print(f"{'':<9}per report {1e6 / per_cpu:.1f} µs of gateway CPU, of which the memory bus "
              f"alone (publish + consume, measured in-process) {bus_us:.1f} µs")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
