"""JT/T 808 connection capacity: 15,000 concurrent heartbeating terminals on one gateway process.

Three processes: this one orchestrates; the gateway (``Jt808Gateway``, ``MemoryBus``,
``SqliteTerminalStore``) runs pinned to one core; the load generator holds every terminal's
socket in another process pinned to the other core (each side then needs ~15k file descriptors;
both raise RLIMIT_NOFILE soft to hard). The gateway pre-registers the terminals in its store
before the memory baseline is taken, so the figure is the connections' cost alone: each terminal
connects, authenticates (0x0102) with its code, then sends a heartbeat (0x0002) every
``--heartbeat-s`` seconds for ``--rounds`` rounds.

Reported per configuration: the gateway's RSS before and after (``/proc/self/statm``), the delta
per connection (target < 10 KB), and heartbeats sent vs answered (must be equal). Baseline, in
the same run: the naive streams gateway of ``bench_jt808_ingest.py`` (``asyncio.start_server``:
a StreamReader, a StreamWriter and a task per connection) under the same load.

Usage: ``.venv/bin/python bench/bench_jt808_connections.py [--terminals 15000]
[--heartbeat-s 5] [--rounds 2] [--configs uvloop,asyncio,naive-uvloop]``. Takes ~2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_jt808_ingest import NaiveGateway, _expect, _pin, _raise_nofile, _run

from services.collector.jt808_gateway import Jt808Gateway
from services.collector.registry import VehicleRegistry
from services.collector.terminals import SqliteTerminalStore
from shared.bus.memory import MemoryBus
from shared.jt808 import (
    RESULT_OK,
    FrameSplitter,
    Heartbeat,
    MsgId,
    PlatformGeneralResponse,
    TerminalAuth,
    decode_frame,
    encode_message,
)

PHONE_BASE = 13_900_000_000


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- gateway process -----------------------------------------------------------------------------


def gateway_process(conn: Connection, loop_kind: str, impl: str, db: str, n: int) -> None:
    """Pre-register ``n`` terminals, serve, answer control requests."""
    _pin(0)
    _raise_nofile()
    _run(loop_kind, _gateway_main(conn, impl, db, n))


async def _gateway_main(conn: Connection, impl: str, db: str, n: int) -> None:
    bus = MemoryBus(partitions=16)
    await bus.start()
    store = SqliteTerminalStore(db)
    await store.open()
    codes = [(await store.register(str(PHONE_BASE + i), f"P{i}", f"T{i}")).auth_code
             for i in range(n)]
    gw: Jt808Gateway | NaiveGateway
    if impl == "naive":
        gw = NaiveGateway(bus=bus, terminals=store, registry=VehicleRegistry())
    else:
        gw = Jt808Gateway(bus=bus, terminals=store, registry=VehicleRegistry())
    await gw.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    # Let the store's thread pool and the loop settle before the baseline.
    for _ in range(3):
        await store.find(str(PHONE_BASE))
        await asyncio.sleep(0.1)
    gc.collect()
    conn.send(("ready", gw.port, codes, _rss_bytes()))
    while True:
        # A thread waits on the pipe: the loop's add_reader would make it non-blocking, and
        # then a large send() fails with EAGAIN.
        req: tuple[Any, ...] = await loop.run_in_executor(None, conn.recv)
        if req[0] == "rss":
            gc.collect()
            sessions = len(gw.sessions) if isinstance(gw, Jt808Gateway) else -1
            conn.send(("rss", _rss_bytes(), sessions))
        elif req[0] == "stop":
            break
    await gw.stop()
    await bus.close()
    await store.close()
    conn.send(("stopped",))


# ---- load generator process ----------------------------------------------------------------------


class _Terminal(asyncio.Protocol):
    def __init__(self, gen: _Generator, index: int, code: str) -> None:
        self.gen = gen
        self.phone = str(PHONE_BASE + index)
        self.code = code
        self.serial = 0
        self.splitter = FrameSplitter()
        self.transport: asyncio.Transport | None = None
        self.authenticated = False

    def _frame(self, msg_id: int, body: object) -> bytes:
        self.serial = (self.serial + 1) & 0xFFFF
        return encode_message(msg_id, body, phone_bcd=self.phone,  # type: ignore[arg-type]
                              serial=self.serial, version=2013)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)
        t.write(self._frame(MsgId.T_AUTH, TerminalAuth(self.code)))

    def data_received(self, data: bytes) -> None:
        for frame in self.splitter.feed(data):
            body = decode_frame(frame).body
            if not isinstance(body, PlatformGeneralResponse):
                continue
            if body.reply_msg_id == MsgId.T_AUTH:
                if body.result == RESULT_OK and not self.authenticated:
                    self.authenticated = True
                    self.gen.authenticated += 1
                    if self.gen.authenticated == self.gen.n:
                        self.gen.all_in.set()
            elif body.reply_msg_id == MsgId.T_HEARTBEAT and body.result == RESULT_OK:
                self.gen.answered += 1

    def heartbeat(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._frame(MsgId.T_HEARTBEAT, Heartbeat()))
            self.gen.sent += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gen.stopping:
            self.gen.lost += 1


class _Generator:
    def __init__(self, n: int) -> None:
        self.n = n
        self.authenticated = self.sent = self.answered = self.lost = 0
        self.stopping = False
        self.all_in = asyncio.Event()


def generator_process(conn: Connection, port: int, codes: list[str], heartbeat_s: float,
                      rounds: int) -> None:
    """Connect and authenticate every terminal, heartbeat ``rounds`` times, report counts."""
    _pin(1)
    _raise_nofile()
    _run("uvloop", _generator_main(conn, port, codes, heartbeat_s, rounds))


async def _generator_main(conn: Connection, port: int, codes: list[str], heartbeat_s: float,
                          rounds: int) -> None:
    loop = asyncio.get_running_loop()
    gen = _Generator(len(codes))
    terms: list[_Terminal] = []
    sem = asyncio.Semaphore(500)  # connect in waves: the listen backlog is finite
    failures = 0

    async def connect(i: int) -> None:
        nonlocal failures
        async with sem:
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(
                        lambda: _Terminal(gen, i, codes[i]), "127.0.0.1", port)
                    terms.append(proto)
                    return
                except OSError:
                    await asyncio.sleep(0.2 * (attempt + 1))
            failures += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(connect(i) for i in range(len(codes))))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gen.all_in.wait(), 120)
    connect_s = time.perf_counter() - t0
    # Heartbeats spread evenly over each period, as a real fleet's would be.
    rng = random.Random(1)
    for _ in range(rounds):
        start = loop.time()
        for t in terms:
            loop.call_at(start + rng.uniform(0, heartbeat_s), t.heartbeat)
        await asyncio.sleep(heartbeat_s)
    deadline = loop.time() + 10
    while gen.answered < gen.sent and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polls the protocols' shared counter
    conn.send(("loaded", len(terms), gen.authenticated, failures, connect_s, gen.sent,
               gen.answered, gen.lost))
    await loop.run_in_executor(None, conn.recv)  # "close"
    gen.stopping = True
    for t in terms:
        if t.transport is not None:
            t.transport.close()
    await asyncio.sleep(0.5)
    conn.send(("closed",))


# ---- orchestration -------------------------------------------------------------------------------


def run_config(loop_kind: str, impl: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measured run; returns its figures."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tti-bench-") as tmp:
        gw_conn, gw_child = ctx.Pipe()
        gw = ctx.Process(name="gateway", target=gateway_process, args=(
            gw_child, loop_kind, impl, str(Path(tmp) / "terminals.db"), args.terminals))
        gw.start()
        _, port, codes, rss0 = _expect(gw_conn, "ready", 300, (gw,))
        gen_conn, gen_child = ctx.Pipe()
        gen = ctx.Process(name="load generator", target=generator_process,
                          args=(gen_child, port, codes, args.heartbeat_s, args.rounds))
        gen.start()
        try:
            (_, conns, authed, failures, connect_s, sent, answered,
             lost) = _expect(gen_conn, "loaded", 600, (gw, gen))
            gw_conn.send(("rss",))
            _, rss1, sessions = _expect(gw_conn, "rss")
            gen_conn.send(("close",))
            _expect(gen_conn, "closed", 60)
            gw_conn.send(("stop",))
            _expect(gw_conn, "stopped", 60)
        finally:
            for p in (gen, gw):
                p.join(10)
                if p.is_alive():
                    p.kill()
    return {"loop": loop_kind, "impl": impl, "connections": conns, "authenticated": authed,
            "failures": failures, "connect_s": connect_s, "sent": sent, "answered": answered,
            "lost": lost, "rss0": rss0, "rss1": rss1, "sessions": sessions}


def main() -> None:
    """Run every configuration and print the figures and ratios."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--terminals", type=int, default=15_000)
    ap.add_argument("--heartbeat-s", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default="uvloop,asyncio,naive-uvloop")
    args = ap.parse_args()
    print(f"{args.terminals:,} terminals, heartbeat every {args.heartbeat_s:g} s for "
          f"{args.rounds} rounds; gateway and load generator in separate processes "
          f"(cpus available: {len(os.sched_getaffinity(0))})\n")
    rows = {}
    for cfg in args.configs.split(","):
        impl, _, loop_kind = cfg.rpartition("-")
        impl = impl or "gateway"
        r = run_config(loop_kind, impl, args)
        rows[(impl, loop_kind)] = r
        per_conn = (r["rss1"] - r["rss0"]) / max(1, r["authenticated"])
        r["per_conn"] = per_conn
        ok = (r["authenticated"] == args.terminals and r["sent"] == r["answered"]
              and not r["lost"])
        print(f"{impl:>8} {loop_kind:<8} connected {r['connections']:,} (authenticated "
              f"{r['authenticated']:,}, failed {r['failures']}, in {r['connect_s']:.1f} s), "
              f"heartbeats {r['sent']:,} sent / {r['answered']:,} answered, "
              f"lost {r['lost']}  {'OK' if ok else 'MISMATCH'}")
        print(f"{'':>17} RSS {r['rss0'] / 2**20:.1f} → {r['rss1'] / 2**20:.1f} MiB: "
              f"{per_conn / 1024:.2f} KiB per connection (target < 10 KB: "
              f"{'met' if per_conn < 10_000 else 'MISSED'})")
    naive = rows.get(("naive", "uvloop"))
    if naive is not None:
        print()
        for (impl, loop_kind), r in rows.items():
            if impl == "gateway":
                print(f"{loop_kind:<8} gateway uses ×{r['per_conn'] / naive['per_conn']:.2f} the "
                      f"memory per connection of the naive streams gateway (uvloop)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
