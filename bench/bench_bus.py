"""Bus throughput: pipelined JetStream publishes vs. one-at-a-time, and the memory bus.

Publishes N ``VehiclePosition`` events from many concurrent publishers (each publish returns only
once the bus has taken the event: PubAck for JetStream, enqueued for memory) while a counting
subscriber consumes all 16 partitions, and prints publish and end-to-end throughput. The baseline
is the same bus publishing one event at a time, each awaited before the next, measured in the same
run. Usage: ``python bench/bench_bus.py [--n 50000] [--concurrency 1000] [--url nats://…]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from shared.bus import EventBus
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.codec import Envelope
from shared.events import VEHICLE_POSITION, VehiclePosition

PARTITIONS = 16
VEHICLES = 5000


def _positions(n: int) -> list[tuple[str, VehiclePosition]]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        vid = f"1380{i % VEHICLES:07d}"
        out.append((vid, VehiclePosition(vehicle_id=vid, lon=114.3 + (i % 997) * 1e-5,
                                         lat=30.5, observed_at=now, speed_kmh=float(i % 90),
                                         heading_deg=90.0)))
    return out


async def _run(bus: EventBus, events: list[tuple[str, VehiclePosition]],
               concurrency: int) -> tuple[float, float]:
    """(publish seconds, end-to-end seconds) for all events through a counting subscriber."""
    n = len(events)
    count = 0
    done = asyncio.Event()

    async def handler(env: Envelope[VehiclePosition]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    sub = await bus.subscribe(VEHICLE_POSITION, handler, durable="bench")

    async def publisher(start: int) -> None:
        for i in range(start, n, concurrency):
            vid, pos = events[i]
            await bus.publish(VEHICLE_POSITION, pos, key=vid)

    t0 = time.perf_counter()
    await asyncio.gather(*(publisher(w) for w in range(min(concurrency, n))))
    t_pub = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), timeout=max(60.0, n / 500))
    t_e2e = time.perf_counter() - t0
    await sub.stop()
    return t_pub, t_e2e


def _nats_up(url: str) -> bool:
    parts = urlsplit(url.split(",")[0])
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), 2):
            return True
    except OSError:
        return False


async def _delete_streams(url: str, names: list[str]) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    for name in names:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
    await nc.close()


def _row(label: str, n: int, t_pub: float, t_e2e: float) -> str:
    return f"  {label:<34}{n / t_pub:>12,.0f}{n / t_e2e:>14,.0f}"


async def main() -> None:
    """Run the benchmark and print figures with ratios."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="events per concurrent run")
    ap.add_argument("--concurrency", type=int, default=1000, help="concurrent publishers")
    ap.add_argument("--baseline-n", type=int, default=5000,
                    help="events for the one-at-a-time baseline")
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    args = ap.parse_args()
    events = _positions(args.n)
    base = events[: args.baseline_n]
    c = args.concurrency
    print(f"VehiclePosition events, {PARTITIONS} partitions, {VEHICLES} vehicles, one counting "
          f"subscriber;\nN = {args.n:,} for concurrent runs, {len(base):,} for one at a time\n")
    print(f"  {'':<34}{'publish ev/s':>12}{'end-to-end ev/s':>16}")

    results: dict[str, tuple[float, float]] = {}
    for label, evs, conc in (("memory", events, c), ("memory-seq", base, 1)):
        mem = MemoryBus(partitions=PARTITIONS)
        await mem.start()
        results[label] = await _run(mem, evs, conc)
        await mem.close()
    print(_row(f"memory, {c} concurrent", args.n, *results["memory"]))
    print(_row("memory, one at a time", len(base), *results["memory-seq"]))

    if not _nats_up(args.url):
        print(f"\nNATS not reachable at {args.url}: JetStream figures skipped")
        return
    tag = uuid.uuid4().hex[:8]
    streams: list[str] = []
    try:
        for label, evs, conc in (("nats", events, c), ("nats-seq", base, 1)):
            stream = f"BENCH{label.upper().replace('-', '')}{tag.upper()}"
            streams.append(stream)
            bus = NatsBus(args.url, stream=stream, prefix=f"bench{tag}{len(streams)}",
                          partitions=PARTITIONS)
            await bus.start()
            try:
                results[label] = await _run(bus, evs, conc)
            finally:
                await bus.close()
    finally:
        await _delete_streams(args.url, streams)
    print(_row(f"JetStream, {c} concurrent", args.n, *results["nats"]))
    print(_row("JetStream, one at a time (baseline)", len(base), *results["nats-seq"]))

    def rate(label: str, i: int) -> float:
        n = args.n if label in ("memory", "nats") else len(base)
        return n / results[label][i]

    print("\nratios (publish / end to end)")
    print(f"  JetStream concurrent vs one at a time   {rate('nats', 0) / rate('nats-seq', 0):6.1f}x"
          f" {rate('nats', 1) / rate('nats-seq', 1):6.1f}x")
    print(f"  memory vs JetStream, concurrent         {rate('memory', 0) / rate('nats', 0):6.1f}x"
          f" {rate('memory', 1) / rate('nats', 1):6.1f}x")
    print("JetStream publish figures count an event only once its PubAck arrived (stored).")


if __name__ == "__main__":
    asyncio.run(main())
