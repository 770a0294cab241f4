"""Scale: 20,000 JT/T 808 terminals reporting every 10 s through the distributed mode (issue 14).

The harness of the fault runs (``tests/integration/support.py``): a private nats-server with
JetStream and a private PostgreSQL/PostGIS, the demo city, and ``tti serve`` processes — by
default two replicas each of collector, bigdata, warning and publisher (``--replicas``).
``--terminals`` terminals (the project's test terminal, ``AckingFleet``: register,
authenticate, a 0x0200 every ``--interval`` s, resent until acknowledged, reconnecting to the
other collector when a connection is lost) connect to the collectors in turn, from two load
processes (one per core; each raises its descriptor limit). Every ``--sample-s`` it samples
each JetStream consumer (pending messages, and its lag: how old the first message of its
subject after its ack floor is, while it has any pending) and each service process (CPU
time, resident memory). After ``--minutes`` the terminals stop reporting, wait for their last
acknowledgments, and the consumers drain; then it prints:

* ingest: reports sent, acknowledged and per second; positions stored in the stream, and
  per second after the warm-up (the logins' ramp, ``--ramp-s``); loss (acknowledged, not
  stored) — must be 0;
* lag per consumer group: p50 / p95 / max over the samples, and how long draining took;
* CPU per service, nats-server and PostgreSQL (cores used on average), reports per CPU-second
  of each and of the four services together;
* memory per service: RSS at the first sample after the warm-up and at the end, and the slope
  over the run in MB per 10 min (the soak's "flat memory").

Baseline, measured in the same run: the same terminals at the same rate through one replica of
each service, for ``--baseline-minutes`` (3); the ratios compare CPU per report and the lag p95 (one
machine of 2 cores runs every process here, so two replicas share the same cores: the figure is
what replication costs, not what it gains on more machines).

    .venv/bin/python bench/bench_scale.py [--terminals 20000] [--interval 10] [--minutes 10]
        [--baseline-minutes 3] [--replicas 2] [--ramp-s 60] [--out /tmp/scale.json]

The one-hour soak: ``--minutes 60 --baseline-minutes 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.simulator.world import World
from shared.demo import generate_demo_region
from shared.roadnet import RoadNetwork
from tests.integration.support import (
    AckingFleet,
    PrivateNats,
    PrivatePostgres,
    ServiceProcesses,
    consumers_behind,
    demo_stack_env,
    free_port,
    jetstream,
    replica_overrides,
    write_registry,
)

SERVICES = ("collector", "bigdata", "warning", "publisher")
POSITION = re.compile(r"^tti\.position\.\d+$")
TICK_S = os.sysconf("SC_CLK_TCK")
SEED = 11


# ---- the load processes ---------------------------------------------------------------------

def _load(osm: str, terminals: int, share: int, shares: int, ports: list[int],
          interval_s: float, ramp_s: float, send_s: float, out: Any) -> None:
    """One load process: its share of the fleet for ``send_s``, then its last acks."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    network = RoadNetwork.from_osm(osm)
    world = World(network, seed=SEED)
    vehicles = world.make_fleet(terminals)[share::shares]

    async def run() -> dict[str, Any]:
        fleet = AckingFleet(ports=ports, world=world, vehicles=vehicles, interval_s=interval_s,
                            reply_timeout_s=5.0, max_timeout_s=30.0, reconnect=True,
                            ramp_s=ramp_s)
        await fleet.start()
        await asyncio.sleep(send_s)
        fleet.sending = False
        for _ in range(90):  # the last reports' acknowledgments (resends included)
            if not fleet.unacked():
                break
            await asyncio.sleep(1.0)
        await fleet.stop()
        acked = fleet.acked()
        waits = sorted(r.acked_at - r.first_sent for r in acked if r.acked_at is not None)
        return {"sent": len(fleet.reports), "acked": len(acked),
                "unacked": len(fleet.unacked()), "sends": sum(r.sends for r in fleet.reports),
                "reconnects": fleet.reconnects, "sessions": fleet.sessions,
                "errors": fleet.errors[:5],
                "ack_p50_s": waits[len(waits) // 2] if waits else None,
                "ack_p95_s": waits[int(len(waits) * 0.95)] if waits else None}

    out.put(asyncio.run(run()))


# ---- sampling -------------------------------------------------------------------------------

def _proc_cpu_rss(pid: int) -> tuple[float, float] | None:
    """CPU seconds (user + system) and resident MB of one process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    cpu = (int(stat[11]) + int(stat[12])) / TICK_S
    rss = next((int(line.split()[1]) / 1024 for line in status.splitlines()
                if line.startswith("VmRSS:")), 0.0)
    return cpu, rss


def _group(consumer: str) -> str:
    """A durable's group, replicas together: ``warning-1-tti-segment-speed`` →
    ``warning-tti-segment-speed``."""
    return re.sub(r"-\d+(?=-|$)", "", consumer)


def _postgres_cpu_rss(data_dir: Path) -> tuple[float, float] | None:
    """PostgreSQL's postmaster and its children (backends, writers): CPU s and MB together."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    cpu = rss = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        if pid == postmaster or int(fields[1]) == postmaster:
            got = _proc_cpu_rss(pid)
            if got is not None:
                cpu += got[0]
                rss += got[1]
    return cpu, rss


@dataclass
class Samples:
    at: list[float] = field(default_factory=list)
    lag_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pending: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    cpu: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rss: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    stored: list[int] = field(default_factory=list)
    """Positions in the stream at each sample."""


async def _sample(url: str, services: ServiceProcesses, s: Samples,
                  servers: dict[str, Any]) -> None:
    now = time.time()
    s.at.append(now)
    async with jetstream(url) as js:
        lag: dict[str, float] = defaultdict(float)
        pending: dict[str, int] = defaultdict(int)
        for info in await js.consumers_info("TTI"):
            name = info.name
            if name is None or info.config.durable_name is None:
                continue  # an ephemeral reader (a recovery replay)
            group = _group(name)
            behind = (info.num_pending or 0) + (info.num_ack_pending or 0)
            pending[group] += behind
            if behind and info.ack_floor is not None:
                head = (info.ack_floor.stream_seq or 0) + 1
                subject = info.config.filter_subject
                try:  # the first message of its subject after its ack floor
                    msg = await (js.get_msg("TTI", head, subject=subject, next=True) if subject
                                 else js.get_msg("TTI", head))
                except Exception:
                    continue
                if msg.time is not None:
                    lag[group] = max(lag[group], now - msg.time.timestamp())
            else:
                lag[group] = max(lag[group], 0.0)
        for group in pending:
            s.lag_s[group].append(lag[group])
            s.pending[group].append(pending[group])
    s.stored.append(await _stream_positions(url))
    procs = {name: _proc_cpu_rss(proc.pid) for name, proc in services.procs.items()}
    nats, pg = servers["nats"], servers["pg"]
    procs["nats-server"] = _proc_cpu_rss(nats.proc.pid) if nats.proc is not None else None
    procs["postgres"] = _postgres_cpu_rss(pg.data)
    for name, got in procs.items():
        if got is not None:
            s.cpu[name].append(got[0])
            s.rss[name].append(got[1])


async def _stream_positions(url: str) -> int:
    async with jetstream(url) as js:
        info = await js.stream_info("TTI", subjects_filter="tti.position.>")
        subjects = info.state.subjects or {}
        return sum(n for subject, n in subjects.items() if POSITION.match(subject))


# ---- one run --------------------------------------------------------------------------------

def _pctl(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))]


async def run_once(replicas: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One layout: start, drive the fleet, sample, drain; the figures."""
    region = generate_demo_region(tmp / "demo")
    network = RoadNetwork.from_osm(region.osm_path)
    write_registry(tmp / "vehicles.csv", World(network, seed=SEED), args.terminals,
                   operator="TTI bench")
    pg = PrivatePostgres()
    nats = PrivateNats(tmp / "jetstream", tmp / "nats-server.log")
    services: ServiceProcesses | None = None
    load: list[Any] = []
    try:
        pg.init()
        nats.start()
        ports = {f"{s}-{i}": free_port() for s in SERVICES for i in range(replicas)}
        jt808 = [free_port() for _ in range(replicas)]
        env = demo_stack_env(
            tmp, region, nats.url, pg.dsn, ports, token="bench-scale-token",
            TTI_VEHICLE_REGISTRY=str(tmp / "vehicles.csv"), TTI_LOG_LEVEL="WARNING",
            TTI_REPLICA_COUNT=str(replicas),
            # Every position of the run stays in the stream (an hour is ≈ 6 GB), so what is
            # stored can be counted against what was acknowledged at the end.
            TTI_BUS_STREAM_MAX_BYTES=str(16 << 30),
            # A fleet connecting at once: the per-gateway registration limit (50/s, a guard
            # against a flood) would spread 20,000 first logins over minutes.
            TTI_JT808_MAX_REGISTRATIONS_PER_S="5000")
        overrides = replica_overrides(replicas, jt808)
        services = ServiceProcesses(env, ports, tmp, overrides=overrides)
        services.start()
        services.wait_ready(180)
        started = time.monotonic()
        send_s = args.minutes * 60.0
        results: Any = mp.get_context("spawn").Queue()
        shares = 2
        for k in range(shares):
            p = mp.get_context("spawn").Process(
                target=_load, args=(str(region.osm_path), args.terminals, k, shares, jt808,
                                    args.interval, args.ramp_s, send_s, results),
                daemon=True)
            p.start()
            load.append(p)
        samples = Samples()
        servers = {"nats": nats, "pg": pg}
        warm_until = started + max(args.ramp_s + 2 * args.interval, min(120.0, send_s / 4))
        first_after_warmup: int | None = None
        while time.monotonic() - started < send_s:
            await asyncio.sleep(args.sample_s)
            await _sample(nats.url, services, samples, servers)
            if first_after_warmup is None and time.monotonic() >= warm_until:
                first_after_warmup = len(samples.at) - 1
        sending_ended = time.monotonic()
        w = first_after_warmup if first_after_warmup is not None else 0
        steady = ((samples.stored[-1] - samples.stored[w]) / (samples.at[-1] - samples.at[w])
                  if len(samples.at) - 1 > w else None)
        fleets = [results.get(timeout=300) for _ in load]
        drain_started = time.monotonic()
        for _ in range(300):  # ≤ 10 min for every consumer to work off what it has
            if not await consumers_behind(nats.url, ""):
                break
            await asyncio.sleep(2.0)
        drained_s = time.monotonic() - drain_started
        await _sample(nats.url, services, samples, servers)
        stored = await _stream_positions(nats.url)
        still_behind = await consumers_behind(nats.url, "")
        wall = sending_ended - started
    finally:
        for p in load:
            if p.is_alive():
                p.kill()
        codes = services.stop() if services is not None else {}
        nats.stop(signal.SIGKILL)
        pg.destroy()
    acked = sum(f["acked"] for f in fleets)
    cpu_s = {name: xs[-1] - xs[0] for name, xs in samples.cpu.items() if len(xs) > 1}
    span = samples.at[-1] - samples.at[0] if len(samples.at) > 1 else 1.0
    by_service: dict[str, float] = defaultdict(float)
    for name, c in cpu_s.items():
        by_service[re.sub(r"-\d+$", "", name)] += c
    ours = {k: v for k, v in by_service.items() if k in SERVICES}
    w0 = first_after_warmup or 0
    memory = {}
    for name, xs in samples.rss.items():
        ts = samples.at[:len(xs)]
        tail = list(zip(ts[w0:], xs[w0:], strict=False))
        slope = (statistics.linear_regression([t for t, _ in tail], [x for _, x in tail]).slope
                 * 600 if len(tail) > 2 else None)
        memory[name] = {"after_warmup_mb": round(xs[min(w0, len(xs) - 1)], 1),
                        "end_mb": round(xs[-1], 1),
                        "slope_mb_per_10min": None if slope is None else round(slope, 1)}
    return {
        "replicas": replicas, "terminals": args.terminals, "interval_s": args.interval,
        "minutes": args.minutes if replicas == args.replicas else args.baseline_minutes,
        "fleet": fleets, "sent": sum(f["sent"] for f in fleets), "acked": acked,
        "acked_per_s": round(acked / wall, 1), "stored": stored,
        "stored_per_s_steady": None if steady is None else round(steady, 1),
        "lost": max(0, acked - stored), "still_behind": still_behind,
        "lag_s": {g: {"p50": _pctl(xs, 0.5), "p95": _pctl(xs, 0.95), "max": max(xs)}
                  for g, xs in samples.lag_s.items()},
        "pending_max": {g: max(xs) for g, xs in samples.pending.items()},
        "drained_s": round(drained_s, 1),
        "cores": {s: round(c / span, 2) for s, c in by_service.items()},
        "reports_per_cpu_s": {s: round(acked / c, 0) for s, c in by_service.items() if c},
        "reports_per_cpu_s_all": round(acked / sum(ours.values()), 0) if ours else None,
        "reports_per_cpu_s_with_servers": round(acked / sum(by_service.values()), 0)
        if by_service else None,
        "memory": memory, "exit_codes": codes,
    }


def _print(r: dict[str, Any]) -> None:
    print(f"\n== {r['replicas']} replica(s) of each service: {r['terminals']} terminals every "
          f"{r['interval_s']:g} s for {r['minutes']:g} min")
    print(f"  reports: sent {r['sent']}, acknowledged {r['acked']} ({r['acked_per_s']}/s over the "
          f"run, ramp included), stored {r['stored']} ({r['stored_per_s_steady']}/s after the "
          f"warm-up), lost {r['lost']}; still behind {r['still_behind'] or 'none'}")
    for f in r["fleet"]:
        print(f"  load process: {f['acked']} acked, {f['unacked']} not, {f['sends']} sends, "
              f"{f['reconnects']} reconnects, ack p50/p95 {1000 * f['ack_p50_s']:.0f}/"
              f"{1000 * f['ack_p95_s']:.0f} ms" if f["ack_p50_s"] is not None
              else f"  load: {f}")
    lags = sorted(r["lag_s"].items(), key=lambda kv: (-kv[1]["p95"], -kv[1]["max"], kv[0]))
    for g, lag in lags[:8]:
        print(f"  lag {g:<40} p50 {lag['p50']:6.1f} s  p95 {lag['p95']:6.1f} s  "
              f"max {lag['max']:6.1f} s  (pending max {r['pending_max'][g]})")
    rest = lags[8:]
    if rest:
        print(f"  lag of the other {len(rest)} consumer groups: p95 ≤ "
              f"{max(lag['p95'] for _, lag in rest):.1f} s")
    print(f"  drained in {r['drained_s']} s after the fleet stopped")
    for s, c in sorted(r["cores"].items()):
        print(f"  cpu {s:<10} {c:5.2f} cores  {r['reports_per_cpu_s'].get(s, 0):>8.0f} "
              f"reports per CPU-second")
    print(f"  the four services: {r['reports_per_cpu_s_all']} reports per CPU-second; with "
          f"nats-server and PostgreSQL {r['reports_per_cpu_s_with_servers']}")
    for name, m in sorted(r["memory"].items()):
        print(f"  rss {name:<12} {m['after_warmup_mb']:7.1f} MB -> {m['end_mb']:7.1f} MB "
              f"(slope {m['slope_mb_per_10min']} MB / 10 min)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--terminals", type=int, default=20_000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--baseline-minutes", type=float, default=3.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--ramp-s", type=float, default=60.0,
                    help="the terminals' first logins spread over this long")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; "
          f"target {args.terminals / args.interval:.0f} reports/s")
    runs = []
    if args.baseline_minutes > 0:
        base = argparse.Namespace(**{**vars(args), "minutes": args.baseline_minutes})
        with tempfile.TemporaryDirectory(prefix="tti-scale-") as tmp:
            runs.append(asyncio.run(run_once(1, base, Path(tmp))))
        _print(runs[-1])
    with tempfile.TemporaryDirectory(prefix="tti-scale-") as tmp:
        runs.append(asyncio.run(run_once(args.replicas, args, Path(tmp))))
    _print(runs[-1])
    if len(runs) == 2:
        single, dist = runs
        cpu_ratio = (single["reports_per_cpu_s_all"] / dist["reports_per_cpu_s_all"]
                     if dist["reports_per_cpu_s_all"] else None)
        p95 = {g: (lag["p95"], single["lag_s"].get(g, {}).get("p95"))
               for g, lag in dist["lag_s"].items()}
        print(f"\n== ratio: CPU per report, {args.replicas} replicas / 1 = "
              f"{cpu_ratio:.2f}" if cpu_ratio else "\n== ratio: n/a")
        worst = max((v for v, _ in p95.values() if v is not None), default=None)
        worst_base = max((b for _, b in p95.values() if b is not None), default=None)
        print(f"   worst consumer lag p95: {worst:.1f} s with {args.replicas} replicas, "
              f"{worst_base:.1f} s with 1 (target < 30 s)"
              if worst is not None and worst_base is not None else "   lag: n/a")
    if args.out is not None:
        args.out.write_text(json.dumps(runs, indent=1,
                                       default=str))


if __name__ == "__main__":
    main()
