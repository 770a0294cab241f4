"""TTI_BUS_REPLICAS reaches JetStream: the stream and the key-value buckets keep three copies on a
three-node cluster (started here on loopback ports), and a restarted service, which updates the
stream, keeps them; a single server refuses three copies instead of quietly keeping one."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from services.runtime import make_bus
from shared.bus.kv import kv_for_bus
from shared.bus.lease import lease_for_bus
from shared.bus.nats import NatsBus
from shared.config import load_config
from shared.errors import BusError, ConfigError
from tests.conftest import unavailable

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """Three JetStream servers routed to each other; yields their client URLs (comma-joined)."""
    if not Path(NATS_SERVER).is_file():
        unavailable(f"nats-server not found at {NATS_SERVER}")
    client = _free_ports(3)
    routes = _free_ports(3)
    procs = []
    try:
        for i in range(3):
            peers = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(3) if j != i)
            procs.append(subprocess.Popen(
                [NATS_SERVER, "-a", "127.0.0.1", "-p", str(client[i]), "-js",
                 "-sd", str(tmp_path / f"n{i}"), "-n", f"n{i}", "--cluster_name", "t",
                 "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", peers],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield ",".join(f"nats://127.0.0.1:{p}" for p in client)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


async def _start(bus: NatsBus, *, within_s: float = 30.0) -> None:
    """Start the bus once the cluster has elected its JetStream leader (bounded wait)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within_s
    while True:
        try:
            await bus.start()
            return
        except BusError:
            await bus.close()
            if loop.time() > until:
                raise
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _jsm(url: str) -> AsyncIterator[object]:
    nc = await nats.connect(url.split(",")[0])
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def test_the_setting_reaches_the_nats_bus() -> None:
    config = load_config({"TTI_BUS_URL": "nats://127.0.0.1:4222", "TTI_BUS_REPLICAS": "3"})
    bus = make_bus(config, config.make_clock())
    assert isinstance(bus, NatsBus) and bus.stream_replicas == 3
    assert load_config({}).bus_replicas == 1
    with pytest.raises(ConfigError, match="TTI_BUS_REPLICAS"):
        load_config({"TTI_BUS_REPLICAS": "0"})


async def test_three_copies_of_the_stream_and_buckets_survive_a_restart(cluster: str) -> None:
    bus = NatsBus(cluster, stream="R3", prefix="r3", stream_replicas=3)
    await _start(bus)
    try:
        kv = kv_for_bus(bus, "state", ttl_s=60)
        await kv.put("k", b"v")
        lease = lease_for_bus(bus, "leader", "me", ttl_s=5, renew_s=1, poll_s=1)
        await lease.start()
        await lease.stop()
    finally:
        await bus.close()
    # Every service updates the stream at start: one started again must not scale it down.
    again = NatsBus(cluster, stream="R3", prefix="r3", stream_replicas=3)
    await _start(again)
    await again.close()
    async with _jsm(cluster) as js:
        for stream in ("R3", "KV_R3_state", "KV_R3_leases"):
            info = await js.stream_info(stream)  # type: ignore[attr-defined]
            assert info.config.num_replicas == 3, stream
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream


async def test_a_single_server_refuses_three_copies(nats_url: str, unique_name: str) -> None:
    bus = NatsBus(nats_url, stream=unique_name.upper(), prefix=unique_name, stream_replicas=3)
    try:
        with pytest.raises(BusError, match=r"(?i)replica|cluster|resources"):
            await bus.start()
    finally:
        await bus.close()
